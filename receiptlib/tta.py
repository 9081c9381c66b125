"""Augmented forward passes of a trained run (test-time augmentation), cached in the run folder: the inputs
of the paper's proposed majority vote (section IX, openset.Voting)."""
from __future__ import annotations

import numpy as np
import torch

from . import models
from .common import TTA, stream_generator
from .io import save_npy
from .runs import Run
from .train import CachedImages, Recipe, augment_batch, draw_augment


def tta_outputs(run: Run, split: str = "test", n: int = 8, seed: int = 0, *, device: str = "auto",
                workers: int = 2) -> np.ndarray:
    """Logits of `n` forward passes per image under the run's training augmentation ([N, n, C], float32),
    in the order of `run.outputs(split)`. Cached as outputs/{split}_tta{n}_logits.npy (with _seed{seed}
    when seed != 0)."""
    suffix = f"_seed{seed}" if seed else ""
    cache = run.path / "outputs" / f"{split}_tta{n}{suffix}_logits.npy"
    if cache.is_file():
        return np.load(cache, allow_pickle=False)
    recipe = Recipe(**run.config["recipe"])
    images = CachedImages(run.data_dir, split, run.known_classes, recipe.image_size, workers=workers, **run.normalization)
    expected = run.outputs(split)["paths"] if (run.path / "outputs" / f"{split}_paths.txt").is_file() else images.paths
    if images.paths != expected:
        raise ValueError(f"{run.data_dir}/{split} changed since the run cached its outputs")
    model = run.load_model("best", device)
    dev = next(model.parameters()).device
    fmt = torch.channels_last if recipe.channels_last else torch.contiguous_format
    result = np.zeros((len(images), n, len(run.known_classes)), dtype=np.float32)
    with torch.inference_mode():
        for k in range(n):
            params = draw_augment(len(images), stream_generator(seed, k, TTA), recipe)
            for b in torch.arange(len(images)).split(recipe.eval_batch_size):
                x = augment_batch(images.images[b].to(dev), {key: v[b] for key, v in params.items()}, **run.normalization)
                _, logits = models.features_and_logits(model, x.contiguous(memory_format=fmt))
                result[b.numpy(), k] = logits.float().cpu().numpy()
    save_npy(cache, result)
    return result
