"""Reading a comparison (notebook 05): the table as the report shows it, a conclusion written from its numbers
and intervals, and the figures (transform statistics through training, angle against the photo's rotation,
the transformer's outputs).

    comparison = load_comparison(summary.attrs["out_dir"])
    format_table(summary); conclusion(summary, comparison["config"])
    transform_figure(comparison["checkpoints"]); mechanism_figure(comparison, "staged-seed0")
    snapshot_figure(comparison, "staged-seed0")
"""
from __future__ import annotations

import numpy as np

from .experiment import REFERENCE, snapshot_grid
from .geometry import pixel_scale_angle
from .training import ARMS, STN_ARMS

ARM_NAMES = {"finetune": "A: no transformer", "identity": "A′: transformer frozen at identity",
             "joint": "B: joint (the paper)", "staged": "C: staged",
             "staged_norot": "C without rotation augmentation"}
SLICE_NAMES = {"all": "All test photos", "hard": "Hard slice (rotation ≥ 25°, perspective ≥ 0.04 or receipt ≤ 0.7 of its size)"}
_COLOURS = {"finetune": "#4c72b0", "identity": "#8172b3", "joint": "#dd8452", "staged": "#55a868",
            "staged_norot": "#c44e52"}


def format_table(summary, *, digits: int = 3) -> "pd.DataFrame":
    """``summary`` (from ``compare``) as the report shows it: per (slice, arm) "mean ± std" over seeds, the
    paired 95% interval of the difference to arm A, and the transformer's final mean zoom and |rotation|."""
    import pandas as pd

    f = lambda x: f"{x:.{digits}f}"  # noqa: E731

    def pm(m, s):
        return f"{f(m)} ± {f(s)}" if np.isfinite(s) else f(m)

    rows = []
    for r in summary.itertuples():
        row = {"slice": r.slice, "arm": ARM_NAMES.get(r.arm, r.arm),
               "closed-set accuracy": pm(r.accuracy_mean, r.accuracy_std),
               "Δ acc. vs A (95%)": "—" if r.arm == REFERENCE else
               f"{r.accuracy_diff:+.{digits}f} ({r.accuracy_diff_low:+.{digits}f}, {r.accuracy_diff_high:+.{digits}f})",
               "macro-F1 with Other": pm(r.macro_f1_mean, r.macro_f1_std),
               "Δ F1 vs A (95%)": "—" if r.arm == REFERENCE else
               f"{r.macro_f1_diff:+.{digits}f} ({r.macro_f1_diff_low:+.{digits}f}, {r.macro_f1_diff_high:+.{digits}f})"}
        zoom = getattr(r, "hard_mean_zoom" if r.slice == "hard" else "mean_zoom", float("nan"))
        rot = getattr(r, "hard_mean_abs_rotation_deg" if r.slice == "hard" else "mean_abs_rotation_deg", float("nan"))
        row["mean zoom"] = f"{zoom:.3f}" if np.isfinite(zoom) else "—"
        row["mean |rotation|"] = f"{rot:.1f}°" if np.isfinite(rot) else "—"
        row.update({"seeds": int(r.seeds), "photos": int(r.n_test)})
        rows.append(row)
    return pd.DataFrame(rows).set_index(["slice", "arm"])


def _seed_noise(row, ref, key: str) -> float:
    """Two standard errors of the difference to A from the spread over seeds: the paired interval holds the test
    photos' noise, not the training run's (from the same start, 40 steps on a CPU already turn float rounding
    into logit differences of ~0.5 and macro-F1 differences of ~0.007: notebook 05, A′ against A)."""
    sd = getattr(ref, f"{key}_std")
    if int(ref.seeds) < 2 or sd is None or not np.isfinite(sd):
        return float("nan")  # one seed of A: no spread to judge by; the paired interval alone decides
    return 2 * float(sd) * float(np.sqrt(1 / int(row.seeds) + 1 / int(ref.seeds)))


def _versus(row, ref, key: str, digits: int) -> str:
    """"above A", "below A" or "level with A within noise": above or below only when the paired interval
    excludes 0 and the gap exceeds the seeds' noise (``_seed_noise``)."""
    lo, hi = getattr(row, f"{key}_diff_low"), getattr(row, f"{key}_diff_high")
    d = getattr(row, f"{key}_diff")
    noise = _seed_noise(row, ref, key)
    spread = f"seeds' noise ±{noise:.{digits}f}" if np.isfinite(noise) else "no seeds' spread with one seed of A"
    span = f"{d:+.{digits}f}, 95% interval {lo:+.{digits}f} to {hi:+.{digits}f}, {spread}"
    noise = noise if np.isfinite(noise) else 0.0
    if lo > 0 and d > noise:
        return f"above A ({span})"
    if hi < 0 and -d > noise:
        return f"below A ({span})"
    return f"level with A within noise ({span})"


def _level(row, ref, key: str) -> bool:
    """True when ``_versus`` calls the arm level with A."""
    outside = getattr(row, f"{key}_diff_low") > 0 or getattr(row, f"{key}_diff_high") < 0
    noise = _seed_noise(row, ref, key)
    return not outside or abs(getattr(row, f"{key}_diff")) <= (noise if np.isfinite(noise) else 0.0)


def conclusion(summary, config: dict | None = None, *, digits: int = 3) -> str:
    """Markdown conclusion written from ``summary`` and the comparison's ``config`` (oracle ceiling, the chosen
    localisation rate), whatever they show: per slice, each arm against arm A (a difference only when the paired
    interval excludes 0 and the gap exceeds the seeds' noise, ``_versus``); whether A′ reproduces A (it must);
    whether the paper's joint failure reproduces; whether the transformer moved (|zoom − 1| ≥ 0.2 or |rotation|
    ≥ 5° on the hard slice, the issue's bar)."""
    if summary is None or len(summary) == 0:
        raise ValueError("summary is empty: run rl.stn.compare(...) first")
    paragraphs = []
    oracle = (config or {}).get("oracle")
    if oracle:
        gain, hard_gain = oracle["gain"], oracle["hard_gain"]
        verdict = ("enough for a transformer to show an effect" if max(gain, hard_gain) >= 0.02 else
                   "less than 2 points: no transformer can show an effect on these photos, whatever it learns")
        paragraphs.append(
            f"**Oracle ceiling** (the stage-1 classifier on test photos set upright and sized as an aimed shot by the manifest's "
            f"own geometry): closed-set accuracy {oracle['identity']['accuracy']:.{digits}f} as photographed, "
            f"{oracle['oracle']['accuracy']:.{digits}f} canonicalised ({gain:+.{digits}f}); on the hard slice's "
            f"{oracle['n_hard_known']} known photos {oracle['identity']['hard_accuracy']:.{digits}f} → "
            f"{oracle['oracle']['hard_accuracy']:.{digits}f} ({hard_gain:+.{digits}f}): {verdict}.")
    for slice_name, part in summary.groupby("slice", sort=False):
        rows = {r.arm: r for r in part.itertuples()}
        ref = rows[REFERENCE]
        seeds = sorted({int(r.seeds) for r in rows.values()}, reverse=True)
        fewer = [ARM_NAMES.get(a, a).split(":")[0] for a, r in rows.items() if int(r.seeds) < seeds[0]]
        seed_text = f"{seeds[0]} seed{'' if seeds[0] == 1 else 's'}" + (f" ({', '.join(fewer)}: {seeds[-1]})" if fewer else "")
        lines = [f"**{SLICE_NAMES.get(slice_name, slice_name)}** ({int(part['n_test'].iloc[0])} photos, {seed_text}, "
                 f"arm A {ref.accuracy_mean:.{digits}f} closed-set, {ref.macro_f1_mean:.{digits}f} macro-F1):"]
        for arm, r in rows.items():
            if arm == REFERENCE:
                continue
            lines.append(f"- {ARM_NAMES.get(arm, arm)}: closed-set accuracy {_versus(r, ref, 'accuracy', digits)}; "
                         f"macro-F1 {_versus(r, ref, 'macro_f1', digits)}.")
        if "identity" in rows:
            r = rows["identity"]
            ok = _level(r, ref, "accuracy") and _level(r, ref, "macro_f1")
            lines.append("- A′ reproduces A within noise: the sampler adds no artefact." if ok else
                         "- **A′ differs from A beyond the seeds' noise**: either the identity transformer changes what "
                         "the classifier sees (padding, normalisation, resampling) or training noise is larger than the "
                         "seeds' spread shows (A′ is compared on its seeds only); gaps of this size between the other "
                         "arms are no evidence.")
        if "joint" in rows:
            r = rows["joint"]
            word = "reproduces" if not _level(r, ref, "macro_f1") and r.macro_f1_diff < 0 else "does not reproduce"
            moves = [v.get("transform_move") for k, v in ((config or {}).get("summed_rates") or {}).items()
                     if k.startswith("joint-") and v.get("transform_move") is not None]
            still = ""
            if moves and max(moves) < 0.25:
                still = (f"; but at the classifier's one rate the transform can move by only {max(moves):.3f} in its "
                         "parameters over the whole arm (summed rate x head gain), far below O(0.5): the transformer "
                         "could not move, so this says nothing about joint training itself")
            lines.append(f"- The paper's joint-training failure {word} here (macro-F1 of B against A){still}.")
        if slice_name == "hard" and "staged" in rows:
            r = rows["staged"]
            zoom, rot = getattr(r, "hard_mean_zoom", float("nan")), getattr(r, "hard_mean_abs_rotation_deg", float("nan"))
            moved = abs(zoom - 1) >= 0.2 or rot >= 5
            lines.append(f"- The staged transformer on the hard slice: mean zoom {zoom:.3f}, mean |rotation| {rot:.1f}°: "
                         + ("it moves (|zoom − 1| ≥ 0.2 or ≥ 5°)." if moved else
                            "it barely moves (below |zoom − 1| = 0.2 and 5°), so it has not learnt to undo the geometry."))
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def transform_figure(checkpoints):
    """The transformer through training, every arm with one, mean over seeds: mean zoom (< 1 zooms in), mean
    |rotation|, the share of samples outside the photo, on the fixed val photos."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    cols = (("mean_zoom", "mean zoom (< 1: zoom in)"), ("mean_abs_rotation_deg", "mean |rotation| (°)"),
            ("outside_share", "share of samples outside the photo"))
    for ax, (col, label) in zip(axes, cols):
        for arm in STN_ARMS:
            part = checkpoints[checkpoints["arm"] == arm] if len(checkpoints) else checkpoints
            if not len(part) or col not in part:
                continue
            g = part.groupby("step")[col]
            ax.plot(g.mean().index, g.mean().values, marker="o", ms=3, color=_COLOURS[arm], label=ARM_NAMES[arm])
        ax.set(xlabel="step of stage 2 (0: the stage-1 classifier)", title=label)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def mechanism_figure(comparison: dict, key: str = "staged-seed0"):
    """The transformer's angle against the photo's rotation (manifest) and its zoom against the receipt's
    scale in frame, on the known test photos, for one arm and seed: a transformer that undoes the geometry
    lies on the diagonal of the left panel (angle = −rotation) and rises with scale on the right."""
    import matplotlib.pyplot as plt


    arm, _, seed = key.partition("-seed")
    theta = comparison.get("theta", {}).get(key)
    table = comparison.get("test_table")
    if theta is None or table is None:
        raise KeyError(f"no test theta for {key!r} or no manifest (real photos): "
                       f"thetas for {sorted(comparison.get('theta', {}))}")
    known = table["label"].ne("Other").to_numpy()
    zoom, angle = pixel_scale_angle(theta, aspect=comparison["config"]["aspect"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].scatter(table["rotation_deg"][known], angle[known], s=5, alpha=0.5, color=_COLOURS.get(arm))
    axes[0].plot([-180, 180], [180, -180], color="grey", lw=0.8, ls="--", label="undoes the rotation")
    axes[0].set(xlabel="photo's rotation (°, manifest)", ylabel="transformer's angle (°)", xlim=(-180, 180), ylim=(-180, 180))
    axes[0].legend(fontsize=8)
    axes[1].scatter(table["scale"][known], zoom[known], s=5, alpha=0.5, color=_COLOURS.get(arm))
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set(xlabel="receipt's scale in frame (manifest)", ylabel="transformer's zoom (< 1: zoom in)")
    fig.suptitle(f"{ARM_NAMES.get(arm, arm)}, seed {seed}: does the transformer undo the photo's geometry?")
    fig.tight_layout()
    return fig


def snapshot_figure(comparison: dict, key: str = "staged-seed0"):
    """``snapshot_grid`` drawn with its column titles: the view, then the transformer's output at each checkpoint."""
    import matplotlib.pyplot as plt

    grid, titles = snapshot_grid(comparison, key)
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
    arm, _, seed = key.partition("-seed")
    ax.set_title(f"{ARM_NAMES.get(arm, arm)}, seed {seed}: what the classifier sees", pad=18)
    fig.tight_layout()
    return fig


__all__ = ["ARM_NAMES", "SLICE_NAMES", "ARMS", "format_table", "conclusion", "transform_figure", "mechanism_figure",
           "snapshot_figure"]
