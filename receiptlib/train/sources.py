"""Where training batches come from: the in-memory uint8 cache (fast pipeline) or per-image torchvision
augmentation in DataLoader workers (the paper's pipeline). Both draw everything from (seed, epoch, index)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from .. import data as rdata
from ..common import AUGMENT, ITEM_OFFSET, SUBSET, progress, stream_generator
from .augment import augment_batch, draw_augment, normalize_batch
from .recipe import Recipe


def subset_indices(n: int, k: int | None, seed: int) -> list[int] | None:
    """A fixed random subset of k of n images (sorted indices; None: all of them), seeded by (seed, SUBSET)."""
    if k is None or k >= n:
        return None
    return sorted(torch.randperm(n, generator=stream_generator(seed, 0, SUBSET))[:k].tolist())


class _ResizeToUint8:
    """Resize to (size, size) exactly as data.eval_transform does, but keep uint8 (4x less memory)."""

    def __init__(self, size: int):
        from torchvision import transforms as T

        self.image_size = size  # ReceiptFolder decodes JPEGs in draft mode at this size
        self.resize = T.Resize((size, size))
        self.to_tensor = T.PILToTensor()

    def __call__(self, img):
        return self.to_tensor(self.resize(img))


class CachedImages:
    """All images of one split decoded once, resized to `size` x `size`, as a uint8 (N, 3, S, S) tensor;
    `mean` / `std` normalise its batches (the backbone's: models.Architecture)."""

    def __init__(self, data_dir: str | Path, split: str, classes: list[str], size: int, *, workers: int = 2,
                 indices: list[int] | None = None, mean: Sequence[float] = rdata.IMAGENET_MEAN,
                 std: Sequence[float] = rdata.IMAGENET_STD):
        self.mean, self.std = tuple(mean), tuple(std)
        ds = rdata.ReceiptFolder(data_dir, split, classes=classes, transform=_ResizeToUint8(size))
        if indices is not None:
            ds.keep(indices)
        self.paths = [p for p, _ in ds.samples]
        self.labels = torch.as_tensor(ds.targets, dtype=torch.long)
        self.images = torch.empty((len(ds), 3, size, size), dtype=torch.uint8)
        loader = rdata.make_loader(ds, batch_size=32, shuffle=False, workers=workers, seed=None, with_index=True)
        for x, _, idx in progress(loader, desc=f"decode {split}", leave=False):
            self.images[idx] = x

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, indices: torch.Tensor | None = None, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised evaluation batches (no augmentation) over `indices` (default: all)."""
        idx = torch.arange(len(self)) if indices is None else indices
        for b in idx.split(batch_size):
            yield normalize_batch(self.images[b], mean=self.mean, std=self.std), self.labels[b]


class CachedTrain:
    """The fast pipeline's training batches: cache lookup + `augment_batch`, randomness from (seed, epoch)."""

    def __init__(self, cache: CachedImages, recipe: Recipe, seed: int, device: torch.device):
        self.cache, self.recipe, self.seed, self.device = cache, recipe, seed, device

    def __len__(self) -> int:
        return len(self.cache)

    def epoch(self, epoch: int, plan: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        params = draw_augment(len(self.cache), stream_generator(self.seed, epoch, AUGMENT), self.recipe)
        for b in plan:
            images = self.cache.images[b].to(self.device, non_blocking=True)  # augment on the GPU if any
            yield (augment_batch(images, {k: v[b] for k, v in params.items()}, mean=self.cache.mean, std=self.cache.std),
                   self.cache.labels[b])


class PerImageTrain:
    """The paper pipeline: torchvision's per-image augmentation (data.train_transform) in DataLoader workers."""

    def __init__(self, data_dir, classes, recipe: Recipe, seed: int, workers: int, indices: list[int] | None = None, *,
                 mean: Sequence[float] = rdata.IMAGENET_MEAN, std: Sequence[float] = rdata.IMAGENET_STD):
        jitter = rdata.Jitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        self.dataset = rdata.ReceiptFolder(data_dir, "train", classes=classes, transform=rdata.train_transform(
            image_size=recipe.image_size, rotation=recipe.rotation, jitter=jitter, mean=mean, std=std))
        if indices is not None:
            self.dataset.keep(indices)
        self.labels = torch.as_tensor(self.dataset.targets, dtype=torch.long)
        self.seed, self.workers = seed, workers

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, plan: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            rdata.SeededView(self.dataset, self.seed, epoch, offset=ITEM_OFFSET), batch_sampler=[b.tolist() for b in plan],
            num_workers=self.workers, collate_fn=rdata.collate_skip_failed)
        for x, y, _, failures in loader:
            if failures:
                f = failures[0]
                raise rdata.ImageReadError(f.path, f.error[len(f.path) + 2:])
            yield x, y
