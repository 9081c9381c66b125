"""The experiment's configuration and its data: ``STNRecipe``, the raw views of every split (``Views``), the
seeded training batches, and the rate schedules.

    recipe = STNRecipe()                                   # the quick preset's: presets.get("quick").stn
    views = Views.load("data/synth-quick-seed0", recipe)   # raw views of every split, decoded once
    for x, y in batches(views, recipe, seed=0, first_epoch=0, steps=10, device="cpu"): ...
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import data as rdata
from .. import models
from .. import train as rtrain
from .geometry import hard_mask, oracle_theta
from .model import TRANSFORMS

@dataclass
class STNRecipe:
    """One configuration of section VII's experiment (the defaults: a small CPU setting; the report's is
    ``rl.presets.get(name).stn``: these fields plus the seeds)."""

    arch: str = models.LITE0        # the stage-1 classifier: the report's pretrained backbone
    weights: str = "auto"           # its initialisation: ImageNet when installed (models.build)
    image_size: int = 64            # px the classifier sees (the transformer's output)
    view_size: int = 192            # px of the square view of the photo the transformer localises on and samples
                                    # from (3 x image_size: a crop at zoom 1/3 still reads full detail)
    loc_size: int = 64              # px of the copy of the view the localisation net looks at
    batch_size: int = 32
    lr: float = 1e-3                # the classifier's peak AdamW rate (stage 1, and joint)
    weight_decay: float = 0.01
    max_train_images: int | None = 1250  # a fixed random subset of train/ (the same for every arm and seed)
    stage1_epochs: int = 2          # stage 1: the classifier alone (shared by finetune, identity and staged)
    stage2_epochs: int = 1          # stage 2: every arm's extra steps (joint trains stage 1 + stage 2 in one go)
    stage2_lr_mult: float = 0.3     # stage 2: the classifier's peak rate as a multiple of lr ("a low rate")
    freeze_share: float = 0.5       # staged: the first share of stage 2 with the classifier frozen
    # the augmentation of stage 2, and of stage 1 when it is trained here (train_stage1): covering the transformer's
    # range (rotation, zoom, shift), so its first moves hand the classifier crops of a kind it has seen. Notebook
    # 03's run (stage1="report") was trained with rotation +-45 only. Colour jitter as the finetune recipe.
    rotation: float = 45.0
    zoom: float = 0.5
    shift: float = 0.15
    transform: str = "rts"          # "rts": rotation + scale + translation (the slides); "affine": 6 numbers
    scale_range: tuple[float, float] = (0.35, 1.25)  # the scale bound: zoom in at most ~3x, out at most 1.25x
    max_translation: float = 0.6    # crop centre within 0.6 of the half-width from the centre
    loc_move: float = 0.5           # how far the transform's parameters may move over the transformer-only phase
                                    # (summed rate x head_gain) at multiplier 1
    loc_lr_mults: tuple[float, ...] = (1.0, 0.3, 0.1)  # candidates, chosen on val (choose_loc_mult)
    loc_warmup: float = 0.2         # the localisation net's own linear warm-up, a share of its steps
    loc_features_mult: float = 0.1  # its feature layers at this x the head's rate (loc_groups)
    stage2_loc_mult: float = 0.3    # staged, both moving: the localisation net's rate x this
    joint_loc_mult: float = 1.0     # joint: the localisation net at the classifier's rate x this (1: the paper)
    joint_start: str = "stage1"     # joint from the stage-1 classifier (the same start and steps as every arm) or
                                    # "imagenet": from the pretrained backbone for stage 1's steps + stage 2's
    loc_max_grad_norm: float | None = 1.0  # clip the localisation net's gradient: one bad batch could throw
                                    # theta into a saturated corner of the bounds, where its gradient vanishes
    guard_weight: float = 1.0       # weight of the soft scale guard ("affine" only)
    snapshots_per_stage: int = 3    # transform statistics and snapshots this many times per stage-2 phase

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"STNRecipe.transform={self.transform!r}: expected one of {sorted(TRANSFORMS)}")
        if self.view_size < self.image_size:
            raise ValueError(f"STNRecipe.view_size={self.view_size} < image_size={self.image_size}: the transformer "
                             "samples the classifier's input from the view; give view_size >= 2 x image_size")
        if not 0 < self.freeze_share < 1:
            raise ValueError(f"STNRecipe.freeze_share={self.freeze_share}: expected a share in (0, 1)")
        if self.stage1_epochs < 1 or self.stage2_epochs < 1:
            raise ValueError(f"STNRecipe: stage1_epochs={self.stage1_epochs}, stage2_epochs={self.stage2_epochs}; "
                             "expected >= 1 each")
        if self.joint_start not in ("stage1", "imagenet"):
            raise ValueError(f"STNRecipe.joint_start={self.joint_start!r}: expected 'stage1' or 'imagenet'")
        if not self.loc_lr_mults or min(self.loc_lr_mults) <= 0:
            raise ValueError(f"STNRecipe.loc_lr_mults={self.loc_lr_mults}: expected positive multipliers")
        self.scale_range = tuple(float(s) for s in self.scale_range)
        self.loc_lr_mults = tuple(float(m) for m in self.loc_lr_mults)
        models.get_architecture(self.arch, where="STNRecipe.arch")

    def augmentation(self, *, rotation: float | None = None) -> rtrain.Recipe:
        """The ``train.Recipe`` whose batched augmentation makes the training views (at view_size)."""
        return rtrain.get_recipe("finetune", image_size=self.view_size, batch_size=self.batch_size, lr=self.lr,
                                 rotation=self.rotation if rotation is None else rotation, zoom=self.zoom,
                                 shift=self.shift)


# ----------------------------------------------------------------------------------------------
# Data: raw views of every split, decoded once
# ----------------------------------------------------------------------------------------------

RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # CachedImages batches in [0, 1]: sample, then normalise


@dataclass
class Views:
    """Square views (uint8, view_size) of train (the recipe's subset), val and test, their photo tables (the
    manifest's rows; None without a manifest) and the photo's aspect (height / width)."""

    data_dir: str
    known: list[str]
    train: rtrain.CachedImages
    val: rtrain.CachedImages
    test: rtrain.CachedImages
    tables: dict
    aspect: float

    @classmethod
    def load(cls, data_dir: str | Path, recipe: STNRecipe, *, workers: int = 2) -> "Views":
        known = rdata.known_classes(data_dir)
        n_train = len(rdata.ReceiptFolder(data_dir, "train", classes=known).samples)
        subset = rtrain.subset_indices(n_train, recipe.max_train_images, 0)  # one subset for every arm and seed
        caches = {split: rtrain.CachedImages(data_dir, split, known, recipe.view_size, workers=workers, **RAW,
                                             indices=subset if split == "train" else None)
                  for split in ("train", "val", "test")}
        tables = {}
        for split, cache in caches.items():
            tables[split] = (rdata.photo_table(data_dir, cache.paths)
                             if (Path(data_dir) / "manifest.csv").is_file() else None)
        from PIL import Image

        with Image.open(caches["test"].paths[0]) as im:
            aspect = im.height / im.width
        return cls(str(data_dir), known, caches["train"], caches["val"], caches["test"], tables, aspect)

    def num_classes(self) -> int:
        return len(self.known)

    def known_val(self) -> torch.Tensor:
        return torch.nonzero(self.val.labels < self.num_classes()).flatten()

    def hard(self) -> np.ndarray | None:
        """The hard slice of test (geometry.hard_mask), None without a manifest."""
        return None if self.tables["test"] is None else hard_mask(self.tables["test"])

    def oracle(self, split: str = "test") -> torch.Tensor | None:
        """The oracle transform of each photo of ``split`` (geometry.oracle_theta), None without a manifest."""
        table = self.tables[split]
        return None if table is None else oracle_theta(table, aspect=self.aspect)


# ----------------------------------------------------------------------------------------------
# Schedules and batches
# ----------------------------------------------------------------------------------------------

def warmup_cosine(total: int, warmup: float) -> Callable[[int], float]:
    """``train.warmup_cosine`` (the plain recipe's schedule) with the warm-up as a share of ``total`` steps."""
    return rtrain.warmup_cosine(total, int(round(warmup * total)))


def summed_rate(lr: float, total: int, warmup: float) -> float:
    """Sum over ``total`` steps of the rate under ``warmup_cosine``: about how far AdamW can move a parameter."""
    f = warmup_cosine(total, warmup)
    return float(lr * sum(f(t) for t in range(total)))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(rtrain.batch_plan(n, batch_size, 0, 0))


def batches(views: Views, recipe: STNRecipe, *, seed: int, first_epoch: int, steps: int, device,
            rotation: float | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` augmented training batches (raw views in [0, 1]) from epoch ``first_epoch`` on, seeded by
    (seed, epoch): the same batches for every arm of a seed."""
    source = rtrain.CachedTrain(views.train, recipe.augmentation(rotation=rotation), seed, device)
    done, epoch = 0, first_epoch
    while done < steps:
        plan = rtrain.batch_plan(len(source), recipe.batch_size, seed, epoch)[: steps - done]
        for x, y in source.epoch(epoch, plan):
            yield x, y
        done += len(plan)
        epoch += 1
