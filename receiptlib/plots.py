"""One look for every figure, and one way to save it: figures/NN_name.png."""
from __future__ import annotations

from pathlib import Path


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
    path = folder / f"{name}.png"
    fig.savefig(path)
    return path


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
