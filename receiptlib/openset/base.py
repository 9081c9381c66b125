"""The detector protocol: cached outputs (`Outputs`), the val threshold rule, and the `Detector` base class."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from ..common import OTHER


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
    def from_run(cls, run, split: str, *, tta_logits=None) -> "Outputs":
        """Outputs of ``run.outputs(split)``, with ``tta_logits`` ([N, n, C], e.g. ``rl.tta.tta_outputs(run,
        split, n=8)``) for the vote when given."""
        return as_outputs(run.outputs(split), tta_logits=tta_logits)

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
def f1_from_counts(tp, predicted, actual):
    """F1 = 2 tp / (predicted + actual), elementwise; 0 where a label is neither predicted nor present."""
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
    f1 = f1_from_counts(tp, predicted, actual[:C]).sum(1) + f1_from_counts(other_tp, np.arange(len(s) + 1), actual[C])
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
# The base class
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
                                 f"Outputs({name}=...) (run.outputs(split) / rl.tta.tta_outputs(run, split, n=...))")

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


def finite(value, where: str, path) -> float:
    """``value`` as a float, or a ValueError naming ``path`` and ``where`` (a thresholds file's entry)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {where} must be a finite number, got {value!r}; refit with "
                         "`receiptlib fit-other` or edit the file")
    return float(value)

