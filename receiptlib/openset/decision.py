"""The one adapter from an Other decision, in any of its forms, to a function of logits (fast, bench, predict)."""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .thresholds import load_thresholds


class Decision:
    """An Other decision on logits [N, C]: ``decision(logits)`` gives labels 0..C (C = Other);
    ``decision.other(logits)`` gives ``(is_other, other_score)``, the ``other_fn`` of receiptlib.predict."""

    def __init__(self, predict: Callable[[np.ndarray], Any], score: Callable[[np.ndarray], Any] | None = None):
        self._predict, self._score = predict, score

    def __call__(self, logits) -> np.ndarray:
        return np.asarray(self._predict(np.asarray(logits)))

    def other(self, logits) -> tuple[np.ndarray, np.ndarray]:
        """Other or not per image, and its Other score (higher = more likely Other; -max logit when the
        decision has no score of its own)."""
        logits = np.asarray(logits)
        is_other = self(logits) == logits.shape[1]
        return is_other, np.asarray(self._score(logits) if self._score is not None else -logits.max(1))


def as_decision(decide: Any) -> Decision:
    """``decide`` as a `Decision`.

    decide: None (argmax, no Other); a fitted detector, or any object with ``predict(logits)`` (its
    ``score(logits)``, when it has one, is the Other score); a callable ``logits -> labels``; the path of a
    thresholds file (`save_thresholds`); or per-class max-logit thresholds, one per known class (a
    prediction whose max logit is below its class's threshold becomes Other, section VI; score = threshold
    minus max logit). A detector that needs more than logits (features, augmented passes) raises ValueError.
    """
    if decide is None:
        return Decision(lambda logits: logits.argmax(1))
    if isinstance(decide, Decision):
        return decide
    needs = getattr(decide, "needs", ())
    if needs:
        raise ValueError(f"{type(decide).__name__} needs {needs}, not only logits: it cannot decide Other inside "
                         "predict, select_fast or bench; use per-class-logit, global-softmax, max-logit, energy, "
                         "max-softmax")
    if hasattr(decide, "predict"):
        return Decision(decide.predict, getattr(decide, "score", None))
    if callable(decide):
        return Decision(decide)
    if isinstance(decide, (str, os.PathLike)):
        return as_decision(load_thresholds(decide))
    thresholds = np.asarray(decide, dtype=np.float64)

    def check(logits: np.ndarray) -> np.ndarray:
        if thresholds.shape != (logits.shape[1],):
            raise ValueError(f"other_threshold has shape {thresholds.shape}; expected ({logits.shape[1]},), "
                             "one threshold per known class")
        return logits.argmax(1)

    def per_class_max_logit(logits: np.ndarray) -> np.ndarray:
        pred = check(logits)
        other = logits[np.arange(len(pred)), pred] < thresholds[pred]
        return np.where(other, logits.shape[1], pred)

    def margin(logits: np.ndarray) -> np.ndarray:
        pred = check(logits)
        return thresholds[pred] - logits[np.arange(len(pred)), pred]

    return Decision(per_class_max_logit, margin)
