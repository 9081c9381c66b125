"""Reading a comparison (notebook 05): the table as the report shows it, a conclusion written from its numbers,
and the three figures (learning curves, what theta does, the transformer's outputs per epoch).

    comparison = load_comparison(summary.attrs["out_dir"])
    format_table(summary); conclusion(summary, chance=1 / 25)
    learning_curves_figure(comparison["history"]); theta_figure(comparison["history"])
    snapshot_figure(comparison, "staged-seed0")
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .experiment import snapshot_grid
from .training import MODES

METHOD_NAMES = {"resnet": "ResNet alone", "joint": "joint", "staged": "staged"}  # section VII's methods
SLICE_NAMES = {"all": "All test photos", "hard": "Hard slice (large rotation or strong perspective)"}
_METRICS = (("macro_f1", "macro-F1 with Other"), ("accuracy", "closed-set accuracy"))
_COLOURS = {"resnet": "#4c72b0", "joint": "#dd8452", "staged": "#55a868"}
_LINES = {"resnet": "-", "joint": "--", "staged": "-."}  # lines of equal values stay visible on each other


def format_table(summary, *, digits: int = 3) -> "pd.DataFrame":
    """``summary`` (from ``compare``) as the report shows it: one row per (slice, method), "mean ± std"."""
    import pandas as pd

    def pm(m, s):
        return f"{m:.{digits}f} ± {s:.{digits}f}" if np.isfinite(s) else f"{m:.{digits}f}"

    rows = [{"slice": r.slice, "method": METHOD_NAMES.get(r.method, r.method),
             "closed-set accuracy": pm(r.accuracy_mean, r.accuracy_std),
             "macro-F1 with Other": pm(r.macro_f1_mean, r.macro_f1_std),
             "seeds": int(r.seeds), "test photos": int(r.n_test)} for r in summary.itertuples()]
    return pd.DataFrame(rows).set_index(["slice", "method"])


def _spread(std) -> float:
    """A std of NaN (a single seed) counts as no spread; callers say that one seed cannot be judged."""
    return float(std) if std is not None and np.isfinite(std) else 0.0


def _verdict(part, key: str, label: str, digits: int) -> str:
    """One metric on one slice: every method's mean ± std, then who wins, or that the gaps are noise.

    Two methods differ when the gap between their means exceeds the larger of their two stds over seeds;
    otherwise they are level within noise (a deliberately plain rule: with 3 seeds no test is sharper)."""
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    stats = {r.method: (float(getattr(r, f"{key}_mean")), getattr(r, f"{key}_std")) for r in part.itertuples()}
    listing = ", ".join(f"{METHOD_NAMES.get(m, m)} {f(mean)}" + (f" ± {f(std)}" if np.isfinite(std) else "")
                        for m, (mean, std) in stats.items())
    best = max(stats, key=lambda m: stats[m][0])
    name = lambda m: METHOD_NAMES.get(m, m)  # noqa: E731
    if int(part["seeds"].min()) < 2:
        return (f"{label}: {listing}; {name(best)} has the highest mean, but with one seed there is no spread to "
                "judge the gaps against (run more seeds).")
    level, behind = [], []
    for m, (mean, std) in stats.items():
        if m == best:
            continue
        gap, noise = stats[best][0] - mean, max(_spread(stats[best][1]), _spread(std))
        (level if gap <= noise else behind).append((m, gap, noise))
    if not level:
        m, gap, noise = min(behind, key=lambda t: t[1])
        verdict = (f"**{name(best)} is best**, ahead of every other method by more than the stds "
                   f"(smallest gap {f(gap)}, over {name(m)}, against a std of {f(noise)})")
    elif not behind:
        m, gap, noise = max(level, key=lambda t: t[1] - t[2])
        verdict = (f"**no difference within noise**: {name(best)} has the highest mean, but every gap is within "
                   f"the stds (e.g. {f(gap)} over {name(m)} against a std of {f(noise)})")
    else:
        verdict = (f"**{name(best)} has the highest mean**; {' and '.join(name(t[0]) for t in level)} level with it "
                   f"within noise, {' and '.join(name(t[0]) for t in behind)} behind it by more than the stds")
    return f"{label}: {listing}; {verdict}."


def _versus(part, a: str, b: str, key: str = "macro_f1") -> str | None:
    """"above", "below" or "level with": method a against method b by the rule of ``_verdict``."""
    rows = {r.method: r for r in part.itertuples()}
    if a not in rows or b not in rows or int(part["seeds"].min()) < 2:
        return None
    ma, mb = getattr(rows[a], f"{key}_mean"), getattr(rows[b], f"{key}_mean")
    noise = max(_spread(getattr(rows[a], f"{key}_std")), _spread(getattr(rows[b], f"{key}_std")))
    return "level with" if abs(ma - mb) <= noise else ("above" if ma > mb else "below")


def conclusion(summary, *, chance: float | None = None, digits: int = 3) -> str:
    """Markdown conclusion written from ``summary`` (``compare``'s table), whatever it shows.

    Per slice and metric: each method's mean ± std over seeds, then the winner, or "no difference within
    noise" when the gaps are within the stds (rule in ``_verdict``); then the paper's two claims (section VII:
    joint training unsatisfactory; staged training, their reading of Jaderberg et al., the fix) checked on
    macro-F1 with Other. ``chance`` (1 / number of known classes) adds a warning when every method's
    closed-set accuracy is within its std of chance: then the classifiers have not learnt and the comparison
    says nothing about the transformer.
    """
    if summary is None or len(summary) == 0:
        raise ValueError("summary is empty: run rl.stn.compare(...) first")
    paragraphs = []
    for slice_name, part in summary.groupby("slice", sort=False):
        seeds, n = int(part["seeds"].min()), int(part["n_test"].iloc[0])
        head = f"**{SLICE_NAMES.get(slice_name, slice_name)}** ({n} photos, {seeds} seed{'' if seeds == 1 else 's'})"
        lines = [f"{head}:"] + [f"- {_verdict(part, key, label, digits)}" for key, label in _METRICS]
        joint, staged = _versus(part, "joint", "resnet"), _versus(part, "staged", "joint")
        if joint is not None and staged is not None:
            paper = {"below": "the paper's failure reproduced",
                     "level with": "within noise, neither the paper's failure nor a gain",
                     "above": "the paper's failure not reproduced: joint training helps here"}[joint]
            lines.append(f"- Against the paper (macro-F1 with Other): joint training is {joint} ResNet alone "
                         f"({paper}); staged training, the paper's proposed fix, is {staged} joint and "
                         f"{_versus(part, 'staged', 'resnet')} ResNet alone.")
        if chance is not None:
            at_chance = [r.method for r in part.itertuples() if r.accuracy_mean - _spread(r.accuracy_std) <= chance]
            if len(at_chance) == len(part):
                lines.append(f"- Every method's closed-set accuracy is within its std of chance ({chance:.{digits}f}): "
                             "the classifiers have not learnt yet, so this comparison says nothing about the "
                             "transformer; train longer (more epochs, more images) before reading it.")
            elif at_chance:
                lines.append(f"- At chance ({chance:.{digits}f}) within its std: "
                             f"{', '.join(METHOD_NAMES.get(m, m) for m in at_chance)}.")
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _mean_band(ax, history, column: str, methods: Sequence[str], *, label_suffix: str = "") -> None:
    """Per method: the mean over seeds per epoch as a line, +- one std over seeds as a band."""
    for method in methods:
        h = history[history["mode"] == method].dropna(subset=[column])
        if h.empty:
            continue
        g = h.groupby("epoch")[column]
        mean, std = g.mean(), g.std().fillna(0.0)
        colour = _COLOURS.get(method)
        ax.plot(mean.index, mean.values, marker="o", ms=3, color=colour, ls=_LINES.get(method, "-"),
                label=f"{METHOD_NAMES.get(method, method)}{label_suffix}")
        ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=colour, alpha=0.2, lw=0)


def _mark_stage2(ax, history) -> None:
    """Dotted line where staged training puts the transformer in front of the stage-1 classifier."""
    from matplotlib.ticker import MaxNLocator

    stage2 = history[history["stage"] == "stage2"]["epoch"]
    if len(stage2):
        ax.axvline(stage2.min() - 0.5, color=_COLOURS["staged"], ls=":", lw=1.2, label="staged: transformer added")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def learning_curves_figure(history, *, methods: Sequence[str] = MODES):
    """Val accuracy (known photos) and train loss per epoch of every method, mean over seeds +- one std
    (``load_comparison(...)["history"]``); the dotted line is where staged training adds the transformer."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, column, label in zip(axes, ("val_acc", "train_loss"), ("val accuracy (known chains)", "train loss")):
        _mean_band(ax, history, column, methods)
        _mark_stage2(ax, history)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label}, mean ± std over seeds")
    axes[0].legend()
    fig.tight_layout()
    return fig


def theta_figure(history):
    """What the transformer does, per epoch: mean zoom sqrt|det theta| (< 1 zooms in) and mean |rotation|
    over the known val photos, for joint and staged (mean over seeds +- one std)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, column, label in zip(axes, ("theta_scale_mean", "theta_abs_angle_mean"),
                                 ("zoom sqrt|det θ| (< 1: zoom in)", "|rotation| (degrees)")):
        _mean_band(ax, history, column, ("joint", "staged"))
        _mark_stage2(ax, history)
        ax.set(xlabel="epoch", ylabel=label, title=label)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].legend()
    fig.tight_layout()
    return fig


def snapshot_figure(comparison: dict, key: str = "staged-seed0", *, epochs: Sequence[int] | None = None):
    """``snapshot_grid`` drawn with its column titles: input photo, then the transformer's output per epoch."""
    import matplotlib.pyplot as plt

    grid, titles = snapshot_grid(comparison, key, epochs=epochs)
    n_cols = len(titles)
    width = min(14.0, 1.4 * n_cols)
    fig, ax = plt.subplots(figsize=(width, width * grid.shape[0] / grid.shape[1] + 0.6))
    ax.imshow(grid)
    ax.set_xticks([(j + 0.5) * grid.shape[1] / n_cols for j in range(n_cols)], titles, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    method, _, seed = key.partition("-seed")
    ax.set_title(f"{METHOD_NAMES.get(method, method)}, seed {seed}: what the classifier sees", pad=18)
    fig.tight_layout()
    return fig
