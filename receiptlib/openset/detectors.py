"""The logit detectors: the paper's (global softmax, per-class max logit, voting) and the modern anchors on
logits (max softmax, max logit, energy); the registry of every detector by its method name."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.special import expit, logsumexp, softmax

from ..common import OTHER
from .base import Detector, as_outputs, f1_from_counts, finite
from .distances import KNN, LogitDistance, Mahalanobis

# The one k of the paper's per-class rule (T_c = mean - k*std) in every notebook, default_detectors, tune and the
# tuners' start: the paper's "a few standard deviations", fixed before any val photo is seen (a k picked on val
# would be a third fit beside the fitted per-class thresholds, which start from this same k).
PAPER_K = 2.0
# The paper's first try: one global threshold on the max softmax of a model trained with plain cross-entropy.
PAPER_SOFTMAX_THRESHOLD = 0.9


class _Tempered(Detector):
    """A detector on logits divided by a temperature, rebuilt from its threshold alone."""

    fit_data = False

    def __init__(self, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.params["temperature"] = temperature


class MaxSoftmax(_Tempered):
    """Hendrycks & Gimpel 2017: score = -max softmax(logits / temperature)."""

    method = "max-softmax"

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


def label_smoothing_of(run) -> float:
    """The label smoothing a run was trained with, read from its recorded recipe (a `runs.Run`, whose
    config.json holds the recipe, or that config as a dict); a ValueError when the recipe does not say."""
    config = getattr(run, "config", run)
    recipe = config.get("recipe") if isinstance(config, Mapping) else None
    if not isinstance(recipe, Mapping) or "label_smoothing" not in recipe:
        where = getattr(run, "path", "the given config")
        raise ValueError(f"{where}: its config records no recipe with label_smoothing; cannot tell whether the "
                         "paper's first try applies (retrain the run, which records its recipe in config.json)")
    return float(recipe["label_smoothing"])


def paper_first_try(run, threshold: float = PAPER_SOFTMAX_THRESHOLD) -> GlobalSoftmax:
    """`GlobalSoftmax(threshold)` for ``run`` as the paper made its first try: on a model trained without label
    smoothing. Label smoothing e over C classes caps the max softmax near 1 - e + e/C (0.904 for 0.1 over 25),
    so T = 0.9 sits just under the cap and rejects known photos the model is sure of, a failure the paper's plain
    cross-entropy model did not have;
    such a run is refused: train the same recipe with ``overrides={"label_smoothing": 0.0}`` for this row.
    The detector records the run's name (``run_``) and its label smoothing (``label_smoothing_``)."""
    smoothing = label_smoothing_of(run)
    if smoothing > 0:
        raise ValueError(f"{getattr(run, 'name', 'this run')} was trained with label_smoothing={smoothing:g}: the "
                         "paper's first try needs the same recipe without it (train with "
                         "overrides={'label_smoothing': 0.0}, e.g. nb.run(overrides=...))")
    det = GlobalSoftmax(threshold)
    det.run_, det.label_smoothing_ = getattr(run, "name", None), smoothing
    return det


class MaxLogit(Detector):
    """Hendrycks et al. 2022: score = -max logit."""

    method, fit_data = "max-logit", False

    def _score(self, data):
        return -data.logits.max(1)


class Energy(_Tempered):
    """Liu et al. 2020: score = energy = -T * logsumexp(logits / T) (low energy = known)."""

    method = "energy"

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

    def __init__(self, k: float = PAPER_K, overrides: Mapping | None = None, rule: str = "mean_std", *,
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

    def override_indices(self, classes=None) -> dict[int, float]:
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
            out[int(key)] = finite(value, f"override of class {key}", "PerClassLogit")
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
        fixed = self.override_indices()
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
                f1_rest = f1_from_counts(rest_tp, rest_predicted, actual[:C])
                const = f1_rest.sum() - f1_rest[c]
                order = np.argsort(max_logit[mask], kind="stable")
                m, y = max_logit[mask][order], labels[mask][order]
                j = np.arange(len(m) + 1)  # the j lowest max logits of class c flagged Other
                tp_c = (y == c).sum() - np.concatenate([[0], np.cumsum(y == c)])
                tp_o = (labels[rest] == C).sum() + np.concatenate([[0], np.cumsum(y == C)])
                f1 = (const + f1_from_counts(tp_c, len(m) - j, actual[c])
                      + f1_from_counts(tp_o, rest.sum() + j, actual[C]))
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
    (votes of the winner / n) is low. Ties between classes go to the higher mean logit. Score = 1 -
    agreement plus a tie-break in [0, 1/(n+1)) that falls with the winner's mean logit: one continuous
    score, which the threshold (fitted on val by macro-F1) decides on and AUROC ranks. ``min_agreement``
    given: Other exactly when the agreement is below it."""

    method, needs = "voting", ("tta_logits",)

    def __init__(self, n: int = 8, min_agreement: float | None = None, rule: str = "macro_f1"):
        super().__init__(rule=rule)
        self.params = {"n": n, "min_agreement": min_agreement, "rule": rule}

    def _given_threshold(self):
        a, n = self.params["min_agreement"], self.params["n"]
        if a is None:
            return None
        # the lowest vote level that is not below a, then the top of its tie-break band: that level stays
        # known, the next one down is Other
        level = math.ceil(a * n - 1e-9) / n
        return 1.0 - level + 1.0 / (n + 1)

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

    def _known_prediction(self, data):
        return self._votes(data)[0]

    def _score(self, data):
        _, agreement, winner_logit = self._votes(data)
        return 1.0 - agreement + expit(-winner_logit) / (self.params["n"] + 1)


class TTAMaxLogit(Detector):
    """Voting's equal-compute baseline: the max of the mean logits over the same n augmented passes
    (score = -max mean logit; prediction = argmax of the mean)."""

    method, needs = "tta-max-logit", ("tta_logits",)

    def __init__(self, n: int = 8, rule: str = "macro_f1"):
        super().__init__(rule=rule)
        self.params = {"n": n, "rule": rule}

    def _mean(self, data):
        n = self.params["n"]
        if data.tta_logits.shape[1] < n:
            raise ValueError(f"TTAMaxLogit(n={n}) needs {n} augmented passes, tta_logits has "
                             f"{data.tta_logits.shape[1]}")
        return data.tta_logits[:, :n].mean(1)

    def _known_prediction(self, data):
        return self._mean(data).argmax(1)

    def _score(self, data):
        return -self._mean(data).max(1)


# ---------------------------------------------------------------------------------------------
# Every detector by its method name
# ---------------------------------------------------------------------------------------------
METHODS = {cls.method: cls for cls in (GlobalSoftmax, PerClassLogit, Voting, TTAMaxLogit, LogitDistance, MaxSoftmax,
                                       MaxLogit, Energy, Mahalanobis, KNN)}


def make_detector(method: str, **params) -> Detector:
    """A detector by its kebab-case method name (the CLI's --method)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {sorted(METHODS)}")
    return METHODS[method](**params)


def default_detectors() -> list[Detector]:
    """The paper's detectors, its two proposals and the modern anchors, in the table's order."""
    return [GlobalSoftmax(PAPER_SOFTMAX_THRESHOLD), PerClassLogit(k=PAPER_K), PerClassLogit(k=PAPER_K, rule="macro_f1"), Voting(n=8),
            TTAMaxLogit(n=8), LogitDistance("mahalanobis"), LogitDistance("knn"), MaxSoftmax(), MaxLogit(), Energy(),
            Mahalanobis(), KNN()]
