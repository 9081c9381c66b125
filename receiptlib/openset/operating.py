"""Operating points of the paper's per-class rule (section VI) on val: what `tune` reads out over a grid of k,
and the threshold presets that turn the Other score into a decision.

The grid is what a tuner without a kernel shows (its slider moves over the grid's k values only) and what the
live tuner reads while a slider is dragged; every entry is `tune(val, k=k, classes=...)` at that k. A preset
picks one k of the grid by a stated rule, says where it lands (known photos kept, Other photos caught), and
flags a pick at the grid's edge, where the rule's true optimum or target may lie outside the grid.

Rates, in words rather than TPR/FPR because the two conventions disagree on the positive class:
known_kept is the share of known val photos not called Other (the TPR of "TPR at 95%", known = positive);
other_caught is the share of Other val photos called Other (1 - the FPR of that convention).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .evaluation import tune

READOUT = ("macro_f1", "other_f1", "other_precision", "other_recall")  # tune's numbers a tuner shows
TPR_TARGET = 0.95  # the OOD literature's operating point (rule="tpr95" of the detectors)
REJECT_RATE = 0.02  # a budget of known photos sent to Other (manual review), stricter than TPR95's 5%


def k_grid(lo: float = 0.0, hi: float = 6.0, step: float = 0.1) -> list[float]:
    """The k values lo, lo + step, ..., hi, rounded so that each is the float its decimal reads (0.3, not
    0.30000000000000004): a tuner's slider, the JSON it embeds and `tune` see the same numbers."""
    if step <= 0 or hi < lo:
        raise ValueError(f"k_grid({lo}, {hi}, step={step}): need step > 0 and hi >= lo")
    n = int(round((hi - lo) / step)) + 1
    return [round(lo + i * step, 6) for i in range(n)]


def kept_and_caught(confusion) -> tuple[float | None, float | None]:
    """(known_kept, other_caught) of a confusion matrix (rows true 0..C, columns predicted, C = Other);
    None for a group with no photo."""
    m = np.asarray(confusion, dtype=np.int64)
    known, other = m[:-1].sum(), m[-1].sum()
    kept = 1.0 - m[:-1, -1].sum() / known if known else None
    caught = m[-1, -1] / other if other else None
    return (None if kept is None else float(kept)), (None if caught is None else float(caught))


def tune_grid(val, ks: Sequence[float] | None = None, *, classes: Sequence[str] | None = None) -> list[dict]:
    """`tune(val, k=k, classes=classes)` at every k of ``ks`` (default `k_grid()`), as plain JSON-ready dicts:
    k, macro_f1, other_f1, other_precision, other_recall, known_kept, other_caught and the confusion counts."""
    grid = []
    for k in k_grid() if ks is None else ks:
        r = tune(val, k=float(k), classes=classes)
        kept, caught = kept_and_caught(r["confusion"])
        grid.append({"k": float(k), **{key: r[key] for key in READOUT}, "known_kept": kept, "other_caught": caught,
                     "confusion": r["confusion"]})
    return grid


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold preset: the k it picks on the grid, where that lands on val, and a warning when the pick
    sits on the grid's edge."""

    name: str                   # "tpr95", "youden", "macro_f1", "reject_rate": the preset's key
    label: str                  # what a button says
    k: float
    index: int                  # position in the grid
    known_kept: float | None
    other_caught: float | None
    macro_f1: float
    other_f1: float
    warning: str | None = None  # set when the pick is at the grid's edge and the rule's answer may lie beyond

    @property
    def boundary(self) -> bool:
        """Whether the sweep picked a boundary value of the grid that the rule may want to pass."""
        return self.warning is not None

    def as_dict(self) -> dict:
        return {**asdict(self), "boundary": self.boundary}


def _point(name: str, label: str, grid: list[dict], i: int, warning: str | None) -> OperatingPoint:
    g = grid[i]
    return OperatingPoint(name, label, g["k"], i, g["known_kept"], g["other_caught"], g["macro_f1"], g["other_f1"],
                          warning)


def _best(name: str, label: str, grid: list[dict], values: list[float], what: str) -> OperatingPoint:
    i = int(np.argmax(values))  # first maximum: the lowest k among ties
    warning = None
    if i in (0, len(grid) - 1):
        edge = "lowest" if i == 0 else "highest"
        warning = (f"the best {what} of the sweep is at the grid's {edge} k ({grid[i]['k']:g}): the optimum may lie "
                   f"outside k = {grid[0]['k']:g}..{grid[-1]['k']:g}; widen the grid")
    return _point(name, label, grid, i, warning)


def _keeping(name: str, label: str, grid: list[dict], share: float) -> OperatingPoint:
    """The lowest k that keeps at least ``share`` of the known val photos (higher k only keeps more and catches
    less Other, so the lowest such k catches the most)."""
    kept = [g["known_kept"] for g in grid]
    if kept[0] is None:
        raise ValueError(f"preset {name!r} needs known photos in the val outputs; there are none")
    hits = [i for i, v in enumerate(kept) if v >= share]
    if not hits:
        i = len(grid) - 1
        warning = (f"no k up to {grid[i]['k']:g} keeps {share:.0%} of the known val photos (at most {max(kept):.1%}): "
                   "this is the grid's highest k; widen the grid")
    else:
        i = hits[0]
        warning = None if i > 0 else (
            f"the grid's lowest k ({grid[0]['k']:g}) already keeps {kept[0]:.1%} of the known val photos: a lower k, "
            f"outside the grid, may keep {share:.0%} too and catch more Other; widen the grid")
    return _point(name, label, grid, i, warning)


def threshold_presets(grid: list[dict], *, tpr: float = TPR_TARGET, reject_rate: float = REJECT_RATE
                      ) -> list[OperatingPoint]:
    """The presets on a `tune_grid`: TPR at ``tpr`` of the known val photos, the Youden point (max known_kept +
    other_caught - 1), max macro-F1 on val, and a fixed ``reject_rate`` of known val photos called Other.
    The Youden point needs Other photos in val and is left out without them."""
    if not grid:
        raise ValueError("threshold_presets: empty grid; make one with tune_grid(val)")
    points = [_keeping("tpr95", f"TPR {tpr:.0%} (keep {tpr:.0%} of known)", grid, tpr)]
    if grid[0]["other_caught"] is not None:
        youden = [g["known_kept"] + g["other_caught"] - 1 for g in grid]
        points.append(_best("youden", "Youden point", grid, youden, "Youden J"))
    points.append(_best("macro_f1", "max macro-F1", grid, [g["macro_f1"] for g in grid], "macro-F1"))
    points.append(_keeping("reject_rate", f"reject {reject_rate:.0%} of known", grid, 1.0 - reject_rate))
    return points
