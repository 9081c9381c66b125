"""Intervals on test figures: a paired, stratified cluster bootstrap. Known photos are resampled one by one;
Other photos by their unknown chain, all of a chain's photos together, because photos of one unknown chain
are not independent evidence (test has a handful of such chains). Every detector is scored on the same
resamples, so the interval of a difference between two detectors is paired. Percentile intervals."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .base import Detector, as_outputs, f1_from_counts

N_RESAMPLES = 2000  # the interval's ends settle to about 0.002 between seeds (docs/decisions.md)
LEVEL = 0.95


def bootstrap_weights(labels, num_known: int, *, other_groups: Sequence | None = None, n: int = N_RESAMPLES,
                      seed: int = 0) -> np.ndarray:
    """(n, N) int weights: how often each of the N photos appears in each resample.

    Known photos (label < num_known): as many draws, with replacement, as there are known photos. Other
    photos: as many draws of whole groups (``other_groups[i]``: the chain of photo i; None: each Other photo
    its own group) as there are groups."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    weights = np.zeros((n, len(labels)), dtype=np.int64)
    known = np.flatnonzero(labels < num_known)
    other = np.flatnonzero(labels == num_known)
    if len(known):
        draws = rng.integers(0, len(known), size=(n, len(known)))
        weights[:, known] = _row_counts(draws, len(known))
    if len(other):
        if other_groups is None:
            group_of = np.arange(len(other))
        else:
            groups = np.asarray(other_groups, dtype=object)
            if len(groups) != len(labels):
                raise ValueError(f"other_groups has {len(groups)} entries for {len(labels)} photos")
            if any(g is None or (isinstance(g, float) and np.isnan(g)) for g in groups[other]):
                raise ValueError("other_groups: every Other photo needs its group (its unknown chain)")
            _, group_of = np.unique(groups[other].astype(str), return_inverse=True)
        n_groups = int(group_of.max()) + 1
        counts = _row_counts(rng.integers(0, n_groups, size=(n, n_groups)), n_groups)
        weights[:, other] = counts[:, group_of]
    return weights


def _row_counts(draws: np.ndarray, size: int) -> np.ndarray:
    """Per row, how often each of 0..size-1 was drawn."""
    offsets = draws + size * np.arange(len(draws))[:, None]
    return np.bincount(offsets.ravel(), minlength=size * len(draws)).reshape(len(draws), size)


def weighted_macro_f1(labels, pred, weights: np.ndarray, *, num_known: int) -> np.ndarray:
    """Macro-F1 over the C+1 labels (as `evaluation.macro_f1`) of each weighted resample: (n,) for (n, N) weights."""
    labels, pred = np.asarray(labels, np.int64), np.asarray(pred, np.int64)
    L = num_known + 1
    y, p = np.eye(L)[labels], np.eye(L)[pred]
    w = np.asarray(weights, np.float64)
    return f1_from_counts(w @ (y * p), w @ p, w @ y).mean(axis=1)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(values, np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_macro_f1(labels, predictions: Mapping[str, np.ndarray], *, num_known: int,
                       other_groups: Sequence | None = None, reference: str | None = None, n: int = N_RESAMPLES,
                       seed: int = 0, level: float = LEVEL) -> dict[str, dict]:
    """Macro-F1 of each named prediction with its interval, and with ``reference`` (a name in
    ``predictions``) the paired difference (this minus the reference) with its interval and the share of
    resamples in which this one is better. A plain dict per name."""
    if reference is not None and reference not in predictions:
        raise ValueError(f"reference={reference!r}: not among the predictions {sorted(predictions)}")
    w = bootstrap_weights(labels, num_known, other_groups=other_groups, n=n, seed=seed)
    full = np.ones((1, len(np.asarray(labels))))
    draws = {name: weighted_macro_f1(labels, pred, w, num_known=num_known) for name, pred in predictions.items()}
    out = {}
    for name, pred in predictions.items():
        lo, hi = interval(draws[name], level)
        row = {"macro_f1": float(weighted_macro_f1(labels, pred, full, num_known=num_known)[0]), "low": lo, "high": hi}
        if reference is not None:
            diff = draws[name] - draws[reference]
            row["diff_vs_reference"] = row["macro_f1"] - float(
                weighted_macro_f1(labels, predictions[reference], full, num_known=num_known)[0])
            row["diff_low"], row["diff_high"] = interval(diff, level)
            row["better_share"] = float((diff > 0).mean())
        out[name] = row
    return out


def bootstrap_accuracy(correct, *, n: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """A share (closed-set accuracy over known photos: ``correct`` per photo) with its photo-level interval."""
    correct = np.asarray(correct, np.float64)
    if correct.ndim != 1 or not len(correct):
        raise ValueError("bootstrap_accuracy: expected a non-empty 1-D array of 0/1 per photo")
    rng = np.random.default_rng(seed)
    counts = _row_counts(rng.integers(0, len(correct), size=(n, len(correct))), len(correct))
    lo, hi = interval(counts @ correct / len(correct), level)
    return {"accuracy": float(correct.mean()), "low": lo, "high": hi, "n": int(len(correct))}


def detector_intervals(detectors: Sequence[Detector], test, *, other_groups: Sequence | None = None,
                       reference: str | None = None, n: int = N_RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> dict[str, dict]:
    """`bootstrap_macro_f1` of fitted detectors on ``test``, named as in `detector_table` (``repr``); with
    ``reference`` (one of those names), each one's paired difference to it."""
    test = as_outputs(test)
    predictions = {repr(d): d.predict(test) for d in detectors}
    return bootstrap_macro_f1(test.labels, predictions, num_known=test.num_known, other_groups=other_groups,
                              reference=reference, n=n, seed=seed, level=level)
