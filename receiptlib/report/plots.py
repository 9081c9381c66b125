"""One look for every figure, one way to save it (figures/NN_name.png), and the figures of the report that
take more than one plotting call."""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_write


def setup() -> None:
    """Seaborn's plain theme and a resolution that reads well on screen and in the committed notebooks."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update({"figure.dpi": 90, "savefig.dpi": 110, "savefig.bbox": "tight", "image.interpolation": "antialiased"})


def savefig(fig, name: str, figures_dir: str | Path = "figures") -> Path:
    """Save `fig` as figures_dir/name.png (name like "04_max_logit") and return the path."""
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"figure name {name!r}: give a bare name like '04_max_logit' (no folder, no extension)")
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # format given: the temporary file's name does not end in .png
    return atomic_write(folder / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png"))


def image_grid(images, titles=None, *, ncols: int = 6, size: float = 2.0, suptitle: str | None = None):
    """A grid of images (PIL images, HxWxC arrays or CHW tensors in 0..1) with optional titles; returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    images = list(images)
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 1.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        if hasattr(img, "detach"):  # a CHW tensor
            img = img.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
        axes.flat[i].imshow(np.asarray(img))
        if titles is not None:
            axes.flat[i].set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def learning_curves(history, *, title: str = "", axes=None):
    """Accuracy and loss per epoch, train against val (the paper's Figure 5); `history` is a run's history.csv."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    else:
        fig = axes[0].figure
    for ax, metric in zip(axes, ("acc", "loss")):
        for split, style in (("train", "--"), ("val", "-")):
            ax.plot(history["epoch"], history[f"{split}_{metric}"], style, marker="o", label=split)
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "loss", title=f"{title} {metric}".strip())
        ax.legend()
    fig.tight_layout()
    return fig


def transfer_curves(runs: dict, *, title: str = "val accuracy (known chains)"):
    """Val accuracy per epoch and against training time of named runs (e.g. ImageNet weights against scratch):
    {label: run}, each with a runs.Run `history`."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, run in runs.items():
        h = run.history
        axes[0].plot(h["epoch"], h["val_acc"], marker="o", label=label)
        axes[1].plot(h["seconds"].cumsum(), h["val_acc"], marker="o", label=label)
    axes[0].set(xlabel="epoch", ylabel="accuracy", title=title)
    axes[1].set(xlabel="training time (s, this machine)", ylabel="accuracy", title=f"{title} against time")
    axes[0].legend()
    fig.tight_layout()
    return fig


def confusion(matrix, labels, *, title: str = "", ax=None, normalize: bool = True):
    """A confusion matrix as a heatmap (rows: true class, columns: predicted), row-normalised by default."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    m = np.asarray(matrix, dtype=float)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    if ax is None:
        size = max(5, 0.32 * len(labels))
        _, ax = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(m, xticklabels=labels, yticklabels=labels, cmap="Blues", vmin=0, vmax=1 if normalize else None,
                square=True, cbar_kws={"shrink": 0.6}, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(labelsize=7)
    ax.figure.tight_layout()
    return ax.figure


def operating_curve(grid, presets=(), *, baseline: tuple[str, float] | None = None, title: str = "per-class thresholds on val"):
    """Macro-F1 and Other F1 on val against k of the per-class rule (`openset.tune_grid`), each threshold preset
    (`openset.threshold_presets`) marked where it lands on the macro-F1 curve (red: picked at the grid's edge),
    and an optional horizontal ``baseline`` (label, macro-F1)."""
    import matplotlib.pyplot as plt

    k = [g["k"] for g in grid]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(k, [g["macro_f1"] for g in grid], color="#4c72b0", label="macro-F1")
    ax.plot(k, [g["other_f1"] for g in grid], color="#dd8452", label="Other F1")
    if baseline is not None:
        ax.axhline(baseline[1], color="grey", ls=":", label=baseline[0])
    for i, p in enumerate(presets):
        colour = "#c44e52" if p.boundary else "black"
        ax.plot([p.k], [p.macro_f1], "o", color=colour, ms=5)
        ax.annotate(p.label + (" (grid edge)" if p.boundary else ""), (p.k, p.macro_f1), xytext=(10, -18 - 12 * i),
                    textcoords="offset points", fontsize=7, color=colour, arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5},
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set(title=title, ylabel="F1 on val (0 to 1)",
           xlabel="k: std below each class's mean max logit (higher k = lower thresholds = fewer photos called Other)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def throughput_figure(timings, *, image_size: int, batch_size: int, modes=("model", "end_to_end")):
    """Images per second per backend, one panel per mode, each bar beside its hardware ceiling (red: the
    images/s if every FLOP ran at the measured ceiling, ceiling_gflops / gflop_per_image). `timings` is
    bench.to_frame's table (one row per backend and mode); rows with an error are left out."""
    import matplotlib.pyplot as plt

    ok = timings[timings.error.isna()]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = ok[ok["mode"] == mode]
        ax.barh(rows.backend, rows.images_per_s, color="#4c72b0")
        for y, r in enumerate(rows.itertuples()):
            ceiling = r.ceiling_gflops / r.gflop_per_image
            ax.plot([ceiling, ceiling], [y - 0.4, y + 0.4], color="#c44e52", lw=2)
        ax.set(xlabel="images per second", title=f"{mode.replace('_', ' ')} ({image_size} px, batch {batch_size}); red: ceiling")
    return fig
