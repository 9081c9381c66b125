"""Detecting Other (paper sections VI and IX): detectors on cached outputs, metrics, thresholds file.

Every detector follows one API, after pytorch-ood: ``det.fit(val)`` learns on validation outputs and
returns the detector; ``det.score(data)`` is a float per image, higher = more likely Other;
``det.predict(data)`` gives labels 0..C where C = number of known classes is the reserved Other index.
The known-class prediction is the argmax of the logits (of the vote for `Voting`); the detector only
decides Other. ``data`` is an `Outputs` (or the dict of ``run.outputs(split)``, or a bare logits array).

Threshold rule, one for all score detectors: unless given, ``other_threshold`` is the value on the
val scores that maximises macro-F1 over the C+1 labels on val (its known images and its Other
chains), Other iff score > other_threshold; ``rule="tpr95"`` keeps 95% of the known val images
instead (the OOD literature's operating point, for a val set without Other). Test is never used.
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.special import expit, logsumexp, softmax

from .common import OTHER

SCHEMA, SCHEMA_VERSION = "receiptlib.thresholds", 1


@dataclass
class Outputs:
    """Cached network outputs of one split: logits [N, C], labels [N] (0..C-1 known, C = Other),
    penultimate features [N, D], logits of n augmented passes tta_logits [N, n, C], image paths."""

    logits: np.ndarray
    labels: np.ndarray | None = None
    features: np.ndarray | None = None
    tta_logits: np.ndarray | None = None
    paths: list | None = None

    def __post_init__(self):
        self.logits = np.asarray(self.logits, dtype=np.float64)
        if self.logits.ndim != 2:
            raise ValueError(f"logits must be [N, C], got shape {self.logits.shape}")
        n, c = self.logits.shape
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.int64)
            lo, hi = self.labels.min(initial=0), self.labels.max(initial=0)
            if self.labels.shape != (n,) or lo < 0 or hi > c:
                raise ValueError(f"labels must be [N={n}] ints in 0..{c} ({c} = {OTHER}), got shape "
                                 f"{self.labels.shape}, range {lo}..{hi}")
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float64)
            if self.features.ndim != 2 or len(self.features) != n:
                raise ValueError(f"features must be [N={n}, D], got shape {self.features.shape}")
        if self.tta_logits is not None:
            self.tta_logits = np.asarray(self.tta_logits, dtype=np.float64)
            if self.tta_logits.ndim != 3 or self.tta_logits.shape[::2] != (n, c):
                raise ValueError(f"tta_logits must be [N={n}, n_passes, C={c}], got shape {self.tta_logits.shape}")

    @classmethod
    def from_run(cls, run, split: str, *, tta: int = 0) -> "Outputs":
        """Outputs of ``run.outputs(split)``, plus ``run.tta_outputs(split, n=tta)`` when tta > 0."""
        return as_outputs(run.outputs(split), tta_logits=run.tta_outputs(split, n=tta) if tta else None)

    @property
    def num_known(self) -> int:
        return self.logits.shape[1]


def as_outputs(data, labels=None, **extra) -> Outputs:
    """An `Outputs` from an Outputs, a dict like ``run.outputs(split)`` (extra keys ignored), or logits."""
    if isinstance(data, Outputs):
        if labels is None and not extra:
            return data
        data = {f.name: getattr(data, f.name) for f in fields(Outputs)}
    if isinstance(data, Mapping):
        d = {f.name: data.get(f.name) for f in fields(Outputs)}
    else:
        d = {"logits": data}
    d.update({k: v for k, v in dict(extra, labels=labels).items() if v is not None})
    return Outputs(**d)


# ---------------------------------------------------------------------------------------------
# Threshold fitting on val
# ---------------------------------------------------------------------------------------------
def _f1(tp, predicted, actual):
    den = predicted + actual
    return np.divide(2.0 * tp, den, out=np.zeros(np.broadcast(tp, den).shape), where=den > 0)


def macro_f1_sweep(scores, known_pred, labels, num_known):
    """Macro-F1 over the C+1 labels for every cut "Other iff score > t" of the sorted scores.

    Returns (thresholds, macro_f1), one entry per distinct cut, nothing flagged first. Vectorised
    (cumulative per-class counts), so it costs O(N*C) instead of one sklearn call per threshold.
    """
    C = num_known
    order = np.argsort(-scores, kind="stable")
    s, kp, y = scores[order], known_pred[order], labels[order]
    eye = np.eye(C, dtype=np.int64)
    predicted = np.bincount(kp, minlength=C) - np.vstack([np.zeros(C, np.int64), np.cumsum(eye[kp], 0)])
    hit = np.where((kp == y)[:, None], eye[kp], 0)
    tp = np.bincount(kp[kp == y], minlength=C) - np.vstack([np.zeros(C, np.int64), np.cumsum(hit, 0)])
    actual = np.bincount(y, minlength=C + 1)
    other_tp = np.concatenate([[0], np.cumsum(y == C)])
    f1 = _f1(tp, predicted, actual[:C]).sum(1) + _f1(other_tp, np.arange(len(s) + 1), actual[C])
    cut = np.concatenate([[True], s[:-1] > s[1:], [True]])  # only between distinct scores
    j = np.flatnonzero(cut)
    inner = np.clip(j, 1, len(s) - 1)
    mid = (s[inner - 1] + s[inner]) / 2
    t = np.where(mid < s[inner - 1], mid, s[inner])  # midpoint unless it rounds onto the upper score
    t = np.where(j == 0, s[0], np.where(j == len(s), s[-1] - 1.0, t))
    return t, f1[j] / (C + 1)


def fit_threshold(scores, known_pred, labels, num_known, rule="macro_f1") -> float:
    """The val threshold on an Other score: "macro_f1" (default) or "tpr95" (keep 95% of known val)."""
    scores = np.asarray(scores, dtype=np.float64)
    if rule == "tpr95":
        return float(np.quantile(scores[labels < num_known], 0.95, method="higher"))
    if rule != "macro_f1":
        raise ValueError(f"rule={rule!r}: expected 'macro_f1' or 'tpr95'")
    if not (labels == num_known).any():
        raise ValueError(f"rule='macro_f1' needs {OTHER} images in the val outputs (label {num_known}); "
                         "there are none: use rule='tpr95' or give other_threshold")
    t, f1 = macro_f1_sweep(scores, known_pred, labels, num_known)
    return float(t[np.argmax(f1)])  # first maximum: the fewest images flagged Other


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------
class Detector:
    """Base class: subclasses implement `_score` and, if they learn anything, `_fit`."""

    method = "detector"  # kebab-case name used in files, tables and the CLI
    needs: tuple[str, ...] = ()  # extra Outputs fields required: "features", "tta_logits"
    fit_data = True  # False when the detector can be rebuilt from its threshold alone (thresholds file)
    uses_train = False  # True for distance detectors, whose reference set may be the train outputs

    def __init__(self, *, other_threshold: float | None = None, rule: str = "macro_f1"):
        self.params = {"other_threshold": other_threshold, "rule": rule}
        self.other_threshold_: float | None = None
        self.num_known_: int | None = None

    def __repr__(self):  # only the parameters that differ from the defaults: short table labels
        defaults = {k: p.default for cls in reversed(type(self).__mro__) if "__init__" in vars(cls)
                    for k, p in inspect.signature(cls.__init__).parameters.items()}
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v != defaults.get(k, None) and v != {})
        return f"{type(self).__name__}({args})"

    def _check(self, data: Outputs, what: str):
        for name in self.needs:
            if getattr(data, name) is None:
                raise ValueError(f"{type(self).__name__} needs {name} in the {what} outputs: pass "
                                 f"Outputs({name}=...) (run.outputs(split) / run.tta_outputs(split, n=...))")

    def fit(self, val, labels=None, *, train=None) -> "Detector":
        """Fit on val outputs (with labels, Other = C); ``train`` outputs, when given, are the reference
        distribution of distance detectors instead of the known val images. Returns self."""
        val = as_outputs(val, labels)
        if val.labels is None:
            raise ValueError(f"{type(self).__name__}.fit needs val labels (0..C-1 known, C = {OTHER})")
        self._check(val, "val")
        self.other_threshold_ = None  # unfitted until this fit succeeds
        train = as_outputs(train) if train is not None and self.uses_train else val
        if train is not val:
            self._check(train, "train")
        self.num_known_ = val.num_known
        val_scores = self._fit(val, train)
        given = self._given_threshold()
        if given is not None:
            self.other_threshold_ = float(given)
        else:
            if val_scores is None:
                val_scores = self._decision_scores(val)
            self.other_threshold_ = fit_threshold(val_scores, self._known_prediction(val), val.labels,
                                                  self.num_known_, self.params["rule"])
        return self

    def _given_threshold(self) -> float | None:
        return self.params.get("other_threshold")

    def _fit(self, val: Outputs, train: Outputs):
        """Learn parameters; may return the val decision scores (e.g. leave-one-out)."""

    def _score(self, data: Outputs) -> np.ndarray:
        raise NotImplementedError

    def _decision_scores(self, data: Outputs) -> np.ndarray:
        return self._score(data)

    def _known_prediction(self, data: Outputs) -> np.ndarray:
        return data.logits.argmax(1)

    def _ready(self, data) -> Outputs:
        if self.other_threshold_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(...) first")
        data = as_outputs(data)
        if data.num_known != self.num_known_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.num_known_} known classes, "
                             f"got logits with {data.num_known}")
        self._check(data, "given")
        return data

    def score(self, data) -> np.ndarray:
        """Other score per image: higher = more likely Other."""
        return self._score(self._ready(data))

    def known_prediction(self, data) -> np.ndarray:
        """The closed-set prediction 0..C-1 that Other replaces: argmax (the vote for Voting)."""
        return self._known_prediction(self._ready(data))

    def predict(self, data) -> np.ndarray:
        """Labels 0..C with C = Other: the known prediction, replaced by Other above the threshold."""
        data = self._ready(data)
        pred = self._known_prediction(data).copy()
        pred[self._decision_scores(data) > self.other_threshold_] = self.num_known_
        return pred


class MaxSoftmax(Detector):
    """Hendrycks & Gimpel 2017: score = -max softmax(logits / temperature)."""

    method, fit_data = "max-softmax", False

    def __init__(self, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.params["temperature"] = temperature

    def _score(self, data):
        return -softmax(data.logits / self.params.get("temperature", 1.0), axis=1).max(1)


class GlobalSoftmax(MaxSoftmax):
    """The paper's first try (VI): Other when max softmax < T, one global T = 0.9 (F1 about 0.6)."""

    method = "global-softmax"

    def __init__(self, threshold: float = 0.9):
        super().__init__(other_threshold=-threshold)
        self.params = {"threshold": threshold}

    def fit(self, val, labels=None, *, train=None) -> "GlobalSoftmax":
        """Nothing to learn (T is fixed); records the number of known classes from val."""
        self.num_known_ = as_outputs(val).num_known
        self.other_threshold_ = -float(self.params["threshold"])
        return self


class MaxLogit(Detector):
    """Hendrycks et al. 2022: score = -max logit."""

    method, fit_data = "max-logit", False

    def _score(self, data):
        return -data.logits.max(1)


class Energy(Detector):
    """Liu et al. 2020: score = energy = -T * logsumexp(logits / T) (low energy = known)."""

    method, fit_data = "energy", False

    def __init__(self, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.params["temperature"] = temperature

    def _score(self, data):
        t = self.params["temperature"]
        return -t * logsumexp(data.logits / t, axis=1)


class PerClassLogit(Detector):
    """The paper's method (VI): predict c = argmax, Other if max logit < T_c.

    T_c starts at mean - k*std (ddof=0) of the max logit of correctly classified val images of class c (the
    global statistics of all of them for classes with fewer than ``min_count``); ``rule="macro_f1"``
    then moves each T_c by coordinate ascent to maximise val macro-F1 (the principled version of the
    paper's hand tuning on test images); ``overrides`` {class index or name: T} are fixed last.
    Score = T_c - max logit, so Other iff score > 0.
    """

    method = "per-class-logit"

    def __init__(self, k: float = 2.0, overrides: Mapping | None = None, rule: str = "mean_std", *,
                 classes: Sequence[str] | None = None, min_count: int = 3, max_sweeps: int = 10):
        if rule not in ("mean_std", "macro_f1"):
            raise ValueError(f"rule={rule!r}: expected 'mean_std' or 'macro_f1'")
        super().__init__()
        self.params = {"k": k, "overrides": dict(overrides or {}), "rule": rule}
        self.classes = [c for c in classes if c != OTHER] if classes is not None else None
        self.min_count, self.max_sweeps = min_count, max_sweeps
        self.thresholds_: np.ndarray | None = None

    def _given_threshold(self):
        return 0.0  # the per-class thresholds are in the score: Other iff T_c - max logit > 0

    def _override_indices(self, classes=None) -> dict[int, float]:
        """The overrides as {class index: T}; names are looked up in ``classes`` or self.classes."""
        classes, out = classes or self.classes, {}
        for key, value in self.params["overrides"].items():
            if isinstance(key, str) and not key.lstrip("-").isdigit():
                if classes is None or key not in classes:
                    raise ValueError(f"overrides: class {key!r} is not among the known classes "
                                     f"{classes} (pass classes=... to use names)")
                key = classes.index(key)
            if not 0 <= int(key) < self.num_known_:
                raise ValueError(f"overrides: class index {key} outside 0..{self.num_known_ - 1}")
            out[int(key)] = _finite(value, f"override of class {key}", "PerClassLogit")
        return out

    def _fit(self, val, train):
        C, max_logit, pred = self.num_known_, val.logits.max(1), val.logits.argmax(1)
        correct = (pred == val.labels) & (val.labels < C)
        if not correct.any():
            raise ValueError("PerClassLogit: no correctly classified known image in the val outputs")
        k, fallback = self.params["k"], max_logit[correct]
        t = np.empty(C)
        for c in range(C):
            m = max_logit[correct & (val.labels == c)]
            m = m if len(m) >= self.min_count else fallback
            t[c] = m.mean() - k * m.std()
        fixed = self._override_indices()
        t[list(fixed)] = list(fixed.values())
        if self.params["rule"] == "macro_f1":
            if not (val.labels == C).any():  # without Other, flagging misclassified known images "wins" F1
                raise ValueError(f"PerClassLogit(rule='macro_f1') needs {OTHER} images in the val outputs (label {C}); "
                                 "there are none: use rule='mean_std'")
            t = self._ascend(t, max_logit, pred, val.labels, set(fixed))
        self.thresholds_ = t

    def _ascend(self, t, max_logit, pred, labels, fixed):
        """Coordinate ascent on val macro-F1: each T_c in turn takes its best cut (nearest the current
        one among ties); moving T_c changes only class c's and Other's F1. Deterministic."""
        C = self.num_known_
        actual = np.bincount(labels, minlength=C + 1)
        for _ in range(self.max_sweeps):
            changed = False
            for c in range(C):
                mask = pred == c
                if c in fixed or not mask.any():
                    continue
                rest = ~mask & (max_logit < t[pred])  # images of other classes flagged Other now
                rest_predicted = np.bincount(pred[~mask & ~rest], minlength=C)
                rest_tp = np.bincount(pred[~mask & ~rest & (pred == labels)], minlength=C)
                f1_rest = _f1(rest_tp, rest_predicted, actual[:C])
                const = f1_rest.sum() - f1_rest[c]
                order = np.argsort(max_logit[mask], kind="stable")
                m, y = max_logit[mask][order], labels[mask][order]
                j = np.arange(len(m) + 1)  # the j lowest max logits of class c flagged Other
                tp_c = (y == c).sum() - np.concatenate([[0], np.cumsum(y == c)])
                tp_o = (labels[rest] == C).sum() + np.concatenate([[0], np.cumsum(y == C)])
                f1 = const + _f1(tp_c, len(m) - j, actual[c]) + _f1(tp_o, rest.sum() + j, actual[C])
                valid = np.concatenate([[True], m[1:] > m[:-1], [True]])
                f1 = np.where(valid, f1, -np.inf)
                now = int((m < t[c]).sum())
                best = np.flatnonzero(f1 >= f1.max() - 1e-12)
                if f1[now] >= f1.max() - 1e-12:
                    continue
                b = int(best[np.argmin(np.abs(best - now))])
                if b == 0 or b == len(m):
                    t[c] = m[0] - 1.0 if b == 0 else m[-1] + 1.0
                else:  # the midpoint, unless it rounds onto the lower value: then cut exactly at m[b]
                    mid = (m[b - 1] + m[b]) / 2
                    t[c] = mid if m[b - 1] < mid else m[b]
                changed = True
            if not changed:
                break
        return t

    def _score(self, data):
        return self.thresholds_[data.logits.argmax(1)] - data.logits.max(1)


class Voting(Detector):
    """The paper's first proposal (IX): n augmented passes, majority vote; Other when the agreement
    (votes of the winner / n) is below ``min_agreement`` (fitted on val by macro-F1 unless given).
    Ties between classes go to the higher mean logit. Score = 1 - agreement plus a tie-break in
    [0, 1/(n+1)) that falls with the winner's mean logit, so AUROC sees a continuous score."""

    method, needs = "voting", ("tta_logits",)

    def __init__(self, n: int = 8, min_agreement: float | None = None, rule: str = "macro_f1"):
        super().__init__(rule=rule)
        self.params = {"n": n, "min_agreement": min_agreement, "rule": rule}

    def _given_threshold(self):
        a = self.params["min_agreement"]
        return None if a is None else 1.0 - a

    def _votes(self, data):
        n = self.params["n"]
        if data.tta_logits.shape[1] < n:
            raise ValueError(f"Voting(n={n}) needs {n} augmented passes, tta_logits has {data.tta_logits.shape[1]}")
        tta = data.tta_logits[:, :n]
        votes = np.eye(data.num_known, dtype=np.int64)[tta.argmax(2)].sum(1)
        mean_logit = tta.mean(1)
        winner = np.where(votes == votes.max(1, keepdims=True), mean_logit, -np.inf).argmax(1)
        agreement = votes[np.arange(len(votes)), winner] / n
        return winner, agreement, mean_logit[np.arange(len(votes)), winner]

    @property
    def min_agreement_(self) -> float:
        return 1.0 - self.other_threshold_

    def _known_prediction(self, data):
        return self._votes(data)[0]

    def _decision_scores(self, data):
        return 1.0 - self._votes(data)[1]

    def _score(self, data):
        _, agreement, winner_logit = self._votes(data)
        return 1.0 - agreement + expit(-winner_logit) / (self.params["n"] + 1)


def _covariance(centered: np.ndarray, shrinkage) -> np.ndarray:
    """Covariance of centred rows, shrunk towards a scaled identity: Ledoit-Wolf's weight with
    "auto" (512-D features from a few hundred val images are singular otherwise), else the given one."""
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf

        return ledoit_wolf(centered, assume_centered=True)[0]
    s = centered.T @ centered / max(len(centered), 1)
    return (1.0 - shrinkage) * s + shrinkage * np.trace(s) / len(s) * np.eye(len(s))


def _reference(data: Outputs, num_known: int, *, correct_only: bool, who: str):
    """Known images of the reference set, preferably only the correctly classified ones. A class with no
    correctly classified image (a weak model, a small val set) falls back to all of its images, with a
    warning: a rough reference beats refusing to score."""
    if data.labels is None:
        raise ValueError(f"{who}: the train outputs need labels")
    mask = data.labels < num_known
    missing = sorted(set(range(num_known)) - set(data.labels[mask].tolist()))
    if missing:
        raise ValueError(f"{who}: no reference image of class(es) {missing}; fit on a larger val set or pass train=...")
    if correct_only:
        correct = mask & (data.logits.argmax(1) == data.labels)
        fallback = sorted(set(range(num_known)) - set(data.labels[correct].tolist()))
        if fallback:
            warnings.warn(f"{who}: class(es) {fallback} have no correctly classified reference image; "
                          "using all their images instead", stacklevel=3)
            correct |= mask & np.isin(data.labels, fallback)
        mask = correct
    return mask


class _KthNeighbour:
    """Distance to the k-th nearest row of a bank; leave-one-out for queries that are bank members
    (fitting on val scores val: without it every known val image would find itself at distance 0)."""

    def __init__(self, bank: np.ndarray, k: int):
        from sklearn.neighbors import NearestNeighbors

        if len(bank) < 2:
            raise ValueError(f"k-NN needs at least 2 reference images, got {len(bank)}")
        self.k = min(k, len(bank) - 1)
        self.nn = NearestNeighbors().fit(bank)

    def __call__(self, query: np.ndarray, members: np.ndarray | None = None) -> np.ndarray:
        dist = self.nn.kneighbors(query, n_neighbors=self.k + (members is not None))[0]
        return dist[:, self.k - 1] if members is None else np.where(members, dist[:, self.k], dist[:, self.k - 1])


class LogitDistance(Detector):
    """The paper's second proposal (IX): the logit vector as a point in R^C, judged by its distance to
    the outputs of correctly classified known images (train if given, else val), which keeps the
    correlations between classes that the max discards. "mahalanobis": squared distance to the mean
    of the predicted class (shared or per-class covariance, shrunk); "knn": Euclidean distance to the
    k-th nearest reference logit vector."""

    method, uses_train = "logit-distance", True

    def __init__(self, kind: str = "mahalanobis", k: int = 10, covariance: str = "shared",
                 shrinkage="auto", **kw):
        if kind not in ("mahalanobis", "knn") or covariance not in ("shared", "per_class"):
            raise ValueError(f"kind={kind!r}, covariance={covariance!r}: expected kind 'mahalanobis' or "
                             "'knn' and covariance 'shared' or 'per_class'")
        super().__init__(**kw)
        self.params.update(kind=kind, k=k, covariance=covariance, shrinkage=shrinkage)

    def _fit(self, val, train):
        p, C = self.params, self.num_known_
        ref = _reference(train, C, correct_only=True, who="LogitDistance")
        x, y = train.logits[ref], train.labels[ref]
        if p["kind"] == "knn":
            self.knn_ = _KthNeighbour(x, p["k"])
            return self.knn_(val.logits, ref) if train is val else None
        self.means_ = np.stack([x[y == c].mean(0) for c in range(C)])
        shared = np.linalg.pinv(_covariance(x - self.means_[y], p["shrinkage"]), hermitian=True)
        self.precisions_ = np.stack([
            np.linalg.pinv(_covariance(x[y == c] - self.means_[c], p["shrinkage"]), hermitian=True)
            if p["covariance"] == "per_class" and (y == c).sum() >= 2 else shared for c in range(C)])

    def _score(self, data):
        if self.params["kind"] == "knn":
            return self.knn_(data.logits)
        pred = data.logits.argmax(1)
        diff = data.logits - self.means_[pred]
        return np.einsum("ni,nij,nj->n", diff, self.precisions_[pred], diff)


class Mahalanobis(Detector):
    """Lee et al. 2018 on penultimate features: class means and one shared covariance from the known
    images of the reference set (train if given, else val); score = half the squared Mahalanobis
    distance to the closest class mean. ``shrinkage=0`` is the paper's plain estimate."""

    method, needs, uses_train = "mahalanobis", ("features",), True

    def __init__(self, shrinkage="auto", **kw):
        super().__init__(**kw)
        self.params["shrinkage"] = shrinkage

    def _fit(self, val, train):
        ref = _reference(train, self.num_known_, correct_only=False, who="Mahalanobis")
        z, y = train.features[ref], train.labels[ref]
        self.means_ = np.stack([z[y == c].mean(0) for c in range(self.num_known_)])
        cov = _covariance(z - self.means_[y], self.params["shrinkage"])
        self.precision_ = np.linalg.pinv(cov, hermitian=True)

    def _score(self, data):
        d2 = [np.einsum("ni,ij,nj->n", data.features - mu, self.precision_, data.features - mu) for mu in self.means_]
        return 0.5 * np.min(d2, axis=0)


class KNN(Detector):
    """Sun et al. 2022: distance to the k-th nearest L2-normalised penultimate feature of the known
    images of the reference set (train if given, else val, leave-one-out). k = 50 (theirs for CIFAR, with
    5,000 images per class), capped at half the smallest class of the reference set (``k_``): the k-th
    neighbour of a known image must lie in its own class. With k above the class size (k = 50 over val's
    24 photos per class) a known image's k-th neighbour is in another class, farther than an Other image's,
    and the score turns upside down (AUROC 0.21 in the report before the cap)."""

    method, needs, uses_train = "knn", ("features",), True

    def __init__(self, k: int = 50, **kw):
        super().__init__(**kw)
        self.params["k"] = k

    @staticmethod
    def _normalise(z):
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def _fit(self, val, train):
        ref = _reference(train, self.num_known_, correct_only=False, who="KNN")
        smallest = int(np.bincount(train.labels[ref], minlength=self.num_known_).min())
        self.k_ = max(1, min(self.params["k"], smallest // 2))
        self.knn_ = _KthNeighbour(self._normalise(train.features[ref]), self.k_)
        return self.knn_(self._normalise(val.features), ref) if train is val else None

    def _score(self, data):
        return self.knn_(self._normalise(data.features))


METHODS = {cls.method: cls for cls in (GlobalSoftmax, PerClassLogit, Voting, LogitDistance, MaxSoftmax,
                                       MaxLogit, Energy, Mahalanobis, KNN)}


def make_detector(method: str, **params) -> Detector:
    """A detector by its kebab-case method name (the CLI's --method)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {sorted(METHODS)}")
    return METHODS[method](**params)


def default_detectors() -> list[Detector]:
    """The paper's detectors, its two proposals and the modern anchors, in the table's order."""
    return [GlobalSoftmax(0.9), PerClassLogit(k=2.0), PerClassLogit(k=2.0, rule="macro_f1"), Voting(n=8),
            LogitDistance("mahalanobis"), LogitDistance("knn"), MaxSoftmax(), MaxLogit(), Energy(),
            Mahalanobis(), KNN()]


# ---------------------------------------------------------------------------------------------
# Metrics and protocol
# ---------------------------------------------------------------------------------------------
def metrics(labels, pred, score=None, *, num_known: int, known_pred=None) -> dict:
    """Open-set metrics as a plain dict.

    macro_f1: sklearn's macro F1 over the C+1 labels 0..C (the competition's F1; a label absent from
    both labels and pred counts 0). other_*: Other as one class. known_accuracy: known images given
    their own label (Other counts as wrong); closed_set_accuracy: the known-class prediction
    (``known_pred``, argmax) on known images, None without it. auroc and fpr_at_95_tpr treat Other
    as the positive class and ``score`` (higher = Other) as its detector: FPR@95TPR is the fraction of
    known images with score >= t*, t* the highest threshold flagging at least 95% of the Other images
    (as pytorch-ood and the OOD literature); both None without a score or without both groups.
    confusion: rows = true label, columns = predicted label, both 0..C.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

    C, labels, pred = num_known, np.asarray(labels, np.int64), np.asarray(pred, np.int64)
    if labels.shape != pred.shape:
        raise ValueError(f"labels {labels.shape} and pred {pred.shape} differ in shape")
    every = list(range(C + 1))
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=every, zero_division=0)
    known, other = labels < C, labels == C
    out = {"macro_f1": float(f.mean()), "other_precision": float(p[C]), "other_recall": float(r[C]),
           "other_f1": float(f[C]), "known_accuracy": None, "closed_set_accuracy": None, "auroc": None,
           "fpr_at_95_tpr": None,
           "n": int(len(labels)), "n_other": int(other.sum())}
    if known.any():
        out["known_accuracy"] = float((pred[known] == labels[known]).mean())
    if known_pred is not None and known.any():
        out["closed_set_accuracy"] = float((np.asarray(known_pred)[known] == labels[known]).mean())
    if score is not None and known.any() and other.any():
        score = np.asarray(score, np.float64)
        out["auroc"] = float(roc_auc_score(other, score))
        fpr, tpr, _ = roc_curve(other, score, drop_intermediate=False)
        out["fpr_at_95_tpr"] = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    out["confusion"] = confusion_matrix(labels, pred, labels=every).tolist()
    return out


def evaluate(detector: Detector, data) -> dict:
    """Metrics of a fitted detector on labelled outputs (e.g. test, evaluated once)."""
    data = as_outputs(data)
    if data.labels is None:
        raise ValueError("evaluate needs labelled outputs")
    result = metrics(data.labels, detector.predict(data), detector.score(data), num_known=detector.num_known_,
                     known_pred=detector.known_prediction(data))
    return {"method": detector.method, "detector": repr(detector), **result}


def as_other_fn(detector: Detector):
    """``other_fn(logits) -> (is_other, other_score)`` for receiptlib.predict, from a fitted logits-only
    detector (e.g. ``load_thresholds(path, classes=run.known_classes)``)."""
    if detector.needs:
        raise ValueError(f"{type(detector).__name__} needs {detector.needs}, not only logits: it cannot decide "
                         "Other inside predict; use per-class-logit, global-softmax, max-logit, energy, max-softmax")

    def other_fn(logits):
        return detector.predict(logits) == detector.num_known_, detector.score(logits)

    return other_fn


def fit_and_evaluate(detector: Detector, val, test, *, train=None) -> dict:
    """The protocol: fit on val (train only as a distance reference), evaluate on test once."""
    return evaluate(detector.fit(val, train=train), test)


def detector_table(val, test, detectors: Sequence[Detector] | None = None, *, train=None):
    """One row per detector fitted on val and reported on test. With ``detectors=None``: every default
    detector that the outputs support (Voting needs tta_logits, Mahalanobis/KNN features)."""
    import pandas as pd

    val, test = as_outputs(val), as_outputs(test)
    if detectors is None:
        detectors = [d for d in default_detectors()
                     if all(getattr(val, n) is not None and getattr(test, n) is not None for n in d.needs)]
    cols = ["detector", "macro_f1", "other_precision", "other_recall", "other_f1", "closed_set_accuracy", "auroc",
            "fpr_at_95_tpr"]
    rows = [{k: m[k] for k in cols} for m in (fit_and_evaluate(d, val, test, train=train) for d in detectors)]
    return pd.DataFrame(rows).set_index("detector")


def tune(val, *, k: float = 2.0, overrides: Mapping | None = None, classes: Sequence[str] | None = None,
         rule: str = "mean_std") -> dict:
    """The notebook tuner's logic (section VI): PerClassLogit at (k, overrides) on val, with its
    macro-F1, Other P/R/F1, confusion matrix and thresholds ({name: T} with classes, else a list)."""
    det = PerClassLogit(k, overrides, rule, classes=classes).fit(val)
    m = evaluate(det, val)
    names = det.classes if det.classes is not None else None
    thresholds = dict(zip(names, det.thresholds_.tolist())) if names else det.thresholds_.tolist()
    return {**{key: m[key] for key in ("macro_f1", "other_f1", "other_precision", "other_recall", "confusion")},
            "thresholds": thresholds, "detector": det}


# ---------------------------------------------------------------------------------------------
# Thresholds file
# ---------------------------------------------------------------------------------------------
def _known(classes: Sequence[str]) -> list[str]:
    return [str(c) for c in classes if c != OTHER]


def save_thresholds(path, detector: Detector, *, classes: Sequence[str], run: str | None = None) -> Path:
    """Write a fitted detector's thresholds as versioned JSON (schema receiptlib.thresholds v1).

    classes: the known class names (``known + ["Other"]`` is accepted). Only detectors that are
    rebuilt from their thresholds alone can be saved: per-class-logit, global-softmax, max-softmax,
    max-logit, energy; the others need their fit data and raise.
    """
    path = Path(path)
    if detector.other_threshold_ is None:
        raise RuntimeError(f"{type(detector).__name__} is not fitted; call fit(...) first, then save to {path}")
    known = _known(classes)
    if len(known) != detector.num_known_:
        raise ValueError(f"save_thresholds({path}): {len(known)} class names for a detector fitted on "
                         f"{detector.num_known_} known classes")
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, "method": detector.method,
           "params": dict(detector.params), "classes": known}
    if isinstance(detector, PerClassLogit):
        doc["params"]["overrides"] = {known[i]: t for i, t in detector._override_indices(known).items()}
        doc["thresholds"] = dict(zip(known, detector.thresholds_.tolist()))
    elif isinstance(detector, GlobalSoftmax):
        doc["threshold"] = float(detector.params["threshold"])
        doc["params"] = {}
    elif not detector.fit_data:
        doc["threshold"] = detector.other_threshold_
        doc["params"].pop("other_threshold")
    else:
        raise ValueError(f"{type(detector).__name__} is not serialisable to a thresholds file: it needs its "
                         "fit data (features or reference outputs); refit it from the run's val outputs")
    doc.update(run=run, fitted_on="val")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def _finite(value, where: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {where} must be a finite number, got {value!r}; refit with "
                         "`receiptlib fit-other` or edit the file")
    return float(value)


def load_thresholds(path, *, classes: Sequence[str] | None = None) -> Detector:
    """A fitted detector from a thresholds file, validated; with ``classes`` (the run's known classes,
    "Other" allowed) the file must have been fitted on exactly those classes, in that order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file {path} does not exist; make one with `receiptlib fit-other`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON ({e}); is this a thresholds file?") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a thresholds file (expected \"schema\": \"{SCHEMA}\")")
    if doc.get("version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: thresholds schema version {doc.get('version')!r}; this receiptlib reads "
                         f"version {SCHEMA_VERSION}: refit with `receiptlib fit-other`")
    method, saveable = doc.get("method"), [m for m, c in METHODS.items() if not c.fit_data or c is PerClassLogit]
    if method not in saveable:
        raise ValueError(f"{path}: method {method!r} cannot be loaded from a thresholds file; "
                         f"expected one of {saveable}")
    names = doc.get("classes")
    if not (isinstance(names, list) and names and all(isinstance(c, str) and c for c in names)
            and len(set(names)) == len(names) and OTHER not in names):
        raise ValueError(f"{path}: \"classes\" must be a list of distinct known class names (without {OTHER})")
    if classes is not None and _known(classes) != names:
        run_names = _known(classes)
        only_file, only_run = sorted(set(names) - set(run_names)), sorted(set(run_names) - set(names))
        diff = f"only in the file: {only_file}, only in the run: {only_run}" if only_file or only_run \
            else "same names, different order"
        raise ValueError(f"{path}: fitted on another model's classes ({len(names)} in the file, "
                         f"{len(run_names)} in the run; {diff}); refit the thresholds on this run")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{path}: \"params\" must be an object")
    try:
        if method == PerClassLogit.method:
            det = PerClassLogit(**params, classes=names)
        elif method == GlobalSoftmax.method:
            det = GlobalSoftmax(_finite(doc.get("threshold"), "\"threshold\"", path), **params)
        else:
            det = METHODS[method](**params, other_threshold=_finite(doc.get("threshold"), "\"threshold\"", path))
    except TypeError as e:
        raise ValueError(f"{path}: bad \"params\" for {method}: {e}") from e
    det.num_known_ = len(names)
    if method == PerClassLogit.method:
        thresholds = doc.get("thresholds")
        if not isinstance(thresholds, dict):
            raise ValueError(f"{path}: \"thresholds\" must be an object {{class name: threshold}}")
        unknown, missing = sorted(set(thresholds) - set(names)), [c for c in names if c not in thresholds]
        if unknown:
            raise ValueError(f"{path}: unknown class(es) {unknown} in \"thresholds\" (known: {names})")
        if missing:
            raise ValueError(f"{path}: missing class(es) {missing} in \"thresholds\"; every known class needs one")
        det.thresholds_ = np.array([_finite(thresholds[c], f"threshold of {c!r}", path) for c in names])
        try:
            det._override_indices()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        det.other_threshold_ = 0.0
    else:
        det.other_threshold_ = (-det.params["threshold"] if isinstance(det, GlobalSoftmax)
                                else det.params["other_threshold"])
    det.source_ = {"path": str(path), "run": doc.get("run"), "fitted_on": doc.get("fitted_on")}
    return det
