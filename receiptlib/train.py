"""Training (paper section V): recipes, the epoch loop, resumable run folders, multi-process training.

    config = rl.train.TrainConfig(data_dir="data/synth-quick-seed0", recipe="fast", epochs=8)
    run = rl.train.train(config, run_dir="data/runs/my-run")         # or rl.runs.get_or_train(config)

Two recipes (`RECIPES`):
- "paper": what the paper did: batch 4, SGD with momentum 0.9, cross-entropy, ExponentialLR, 224 px,
  rotation +-30 degrees and ColorJitter, each image decoded and augmented by torchvision in DataLoader
  workers (`data.train_transform`).
- "fast" (default): the same kind of augmentation (the same +-30 degrees, half the jitter), made cheap for a
  2-core CPU. Every image is decoded and resized ONCE into an in-memory uint8 cache, and rotation + colour
  jitter + normalisation run batched on tensors (`augment_batch`, with `affine_grid`/`grid_sample`):
  decoding a JPEG and augmenting it with PIL costs ~13 ms per image per core, more than the network itself
  at small sizes. channels_last memory, bf16 autocast where the hardware has bf16 (AVX512-BF16/AMX CPUs;
  bf16 or fp16 + GradScaler on CUDA; fp32 elsewhere), larger batches, AdamW with linear warm-up then cosine
  decay, label smoothing, an EMA of the weights (from scratch: no ImageNet weights on this machine).

Determinism: all randomness of an epoch (shuffle order, augmentation) is a pure function of
(seed, epoch, image index), so a run killed at any moment and resumed from its last checkpoint ends, on
CPU, with exactly the metrics of an uninterrupted run; with `torchrun` each process takes its slice of
the same global batches (the recipe's batch size is the global batch size).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as rdata
from . import models
from . import runs as rruns
from .common import OTHER, native_bf16, pick_device, progress, seed_everything

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained (the defaults are the "fast" recipe)."""

    name: str = "fast"
    epochs: int = 10             # overridden per run (TrainConfig.epochs); quick preset: see runs.report_config
    image_size: int = 64         # fast, on the quick data (EPYC AVX2, fp32, best val accuracy): 64 px, batch 32,
                                 # +-30 reached 0.957 in 12 epochs (550 s); 96 px, batch 64, +-15 0.953 in 10 (800 s);
                                 # 64 px, batch 64, +-30 0.947 in 10 (361 s, its first epochs slowed by other work)
    batch_size: int = 32         # global batch (split across processes under torchrun); 32 against 64: twice the
                                 # steps over 2,500 photos for ~1.7x the time per image at 64 px
    optimizer: str = "adamw"     # "sgd" (the paper) or "adamw": from scratch on a few thousand photos AdamW gets
                                 # going in far fewer epochs than SGD here (SGD sat at chance for 3+ epochs)
    lr: float = 0.002            # peak learning rate after warm-up
    momentum: float = 0.9        # SGD momentum (the paper); AdamW's beta1
    nesterov: bool = True        # free improvement for short schedules
    weight_decay: float = 0.05   # decoupled (AdamW); for SGD a coupled 5e-5 would be the equivalent
    schedule: str = "warmup_cosine"  # "warmup_cosine" (per step) or "exponential" (per epoch, the paper)
    warmup_epochs: float = 1.0   # linear warm-up from ~0 to lr: large-lr SGD from scratch diverges without it
    gamma: float = 0.9           # ExponentialLR factor per epoch (schedule="exponential" only)
    label_smoothing: float = 0.1 # softer targets converge faster from scratch; paper: plain cross-entropy
    rotation: float = 30.0       # random rotation in [-30, +30] degrees, as the paper; a third of the val errors
                                 # at +-15 were the few photos turned by more than 10 degrees. +-55 (the quick
                                 # data's widest turn) learnt slower: 0.925 against 0.955 (5 epochs, 5,000 photos)
    zoom: float = 0.0            # beyond the paper: random zoom by a factor in [1/(1+zoom), 1+zoom] (log-uniform)
    shift: float = 0.0           # and a random shift of up to this fraction of the image, each axis (0: off)
    brightness: float = 0.2      # ColorJitter strengths: data.Jitter (the paper names ColorJitter only; the
    contrast: float = 0.2        # "paper" recipe keeps data.Jitter's defaults 0.4/0.4/0.4/0.1)
    saturation: float = 0.2
    hue: float = 0.05
    amp: str = "auto"            # "auto": bf16 autocast on a CPU with AVX512-BF16/AMX (else fp32), bf16/fp16 on
                                 # CUDA; "none": float32; "bf16"/"fp16": always
    channels_last: bool = True   # measured: 2x training speed with bf16 on an AMX CPU, 1.25x in fp32 on an AVX2 one
    pipeline: str = "cached"     # "cached": decode once, batched tensor augmentation; "per_image": torchvision in workers
    ema_decay: float = 0.99      # > 0: evaluate and save an exponential moving average of the weights (and BatchNorm
                                 # statistics), updated every step (fast: steadier val accuracy between epochs);
                                 # 0: the raw weights (the paper)
    eval_batch_size: int = 64

    def __post_init__(self):
        checks = {
            "schedule": (self.schedule, ("warmup_cosine", "exponential")),
            "amp": (self.amp, ("auto", "none", "bf16", "fp16")),
            "pipeline": (self.pipeline, ("cached", "per_image")),
            "optimizer": (self.optimizer, ("sgd", "adamw")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"recipe {self.name!r}: {key}={value!r}, expected one of {list(allowed)}")
        for key in ("epochs", "image_size", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"recipe {self.name!r}: {key}={getattr(self, key)!r}, expected a positive integer")
        if not self.lr > 0:
            raise ValueError(f"recipe {self.name!r}: lr={self.lr}, expected > 0")
        if self.zoom < 0 or not 0 <= self.shift <= 0.5:
            raise ValueError(f"recipe {self.name!r}: zoom={self.zoom}, shift={self.shift}; expected zoom >= 0, 0 <= shift <= 0.5")
        if self.pipeline == "per_image" and (self.zoom or self.shift):
            raise ValueError(f"recipe {self.name!r}: zoom and shift exist in the cached pipeline only; "
                             "use pipeline='cached' or set them to 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"recipe {self.name!r}: ema_decay={self.ema_decay}, expected 0 (off) or in (0, 1)")


RECIPES: dict[str, Recipe] = {
    # Section V as written. Where the paper is silent: lr 0.001 and momentum 0.9 are the values of the
    # PyTorch transfer-learning tutorial whose set-up (ResNet18, batch 4, SGD with momentum) the paper
    # follows; gamma 0.9 per epoch and 10 epochs ("validation above 99.9% after a few epochs").
    # float32, per-image torchvision augmentation in DataLoader workers.
    "paper": Recipe(name="paper", epochs=10, image_size=224, batch_size=4, optimizer="sgd", lr=0.001, momentum=0.9, nesterov=False,
                    weight_decay=0.0, schedule="exponential", warmup_epochs=0.0, gamma=0.9, label_smoothing=0.0,
                    rotation=30.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, ema_decay=0.0,
                    amp="none", channels_last=False, pipeline="per_image", eval_batch_size=32),
    "fast": Recipe(),
}


def get_recipe(name: str, **overrides) -> Recipe:
    """`RECIPES[name]` with some fields replaced; unknown names or fields raise with the valid ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    valid = {f.name for f in fields(Recipe)} - {"name"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown recipe option(s) {unknown}; valid options: {sorted(valid)}")
    return replace(RECIPES[name], **overrides)


@dataclass
class TrainConfig:
    """One training run: data, recipe (plus overrides), seed and weights. Saved in full as config.json."""

    data_dir: str
    recipe: str = "fast"
    epochs: int | None = None          # None: the recipe's
    image_size: int | None = None      # None: the recipe's
    batch_size: int | None = None      # None: the recipe's
    lr: float | None = None            # None: the recipe's
    weights: str = "auto"              # "auto" | "none" | "imagenet" | path (see models.resnet18)
    seed: int = 0
    device: str = "auto"               # does not enter the run's identity (same run on CPU or CUDA)
    workers: int = 2                   # decoding processes; results do not depend on it
    max_train_images: int | None = None  # a fixed random subset of train/ (for quick comparisons)
    overrides: dict = field(default_factory=dict)  # any other Recipe field, e.g. {"label_smoothing": 0.0}

    def resolved_recipe(self) -> Recipe:
        top = {k: getattr(self, k) for k in ("epochs", "image_size", "batch_size", "lr") if getattr(self, k) is not None}
        clash = sorted(set(top) & set(self.overrides))
        if clash:
            raise ValueError(f"{clash} given both as TrainConfig fields and in overrides; give each once")
        return get_recipe(self.recipe, **top, **self.overrides)


# ----------------------------------------------------------------------------------------------
# Randomness as a pure function of (seed, epoch, stream)
# ----------------------------------------------------------------------------------------------

SHUFFLE, AUGMENT, SUBSET, TTA = 0, 1, 2, 3  # independent random streams


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def stream_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, epoch, stream))


def batch_plan(n: int, batch_size: int, seed: int, epoch: int, *, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """The image indices of each step of `epoch`: a seeded permutation cut into global batches; under
    torchrun each process takes every world-th image of each global batch (a last batch smaller than the
    number of processes is dropped so that all processes take the same number of steps)."""
    perm = torch.randperm(n, generator=stream_generator(seed, epoch, SHUFFLE))
    batches = list(perm.split(batch_size))
    if world > 1:
        batches = [b[rank::world] for b in batches if len(b) >= world]
    return batches


# ----------------------------------------------------------------------------------------------
# Batched augmentation on tensors (the fast pipeline; same steps as data.train_transform)
# ----------------------------------------------------------------------------------------------

_MEAN = torch.tensor(rdata.IMAGENET_MEAN).view(1, 3, 1, 1)  # noqa: E305
_STD = torch.tensor(rdata.IMAGENET_STD).view(1, 3, 1, 1)


def draw_augment(n: int, generator: torch.Generator, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Per-image augmentation parameters for n images (angle in degrees, jitter factors)."""
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    return {
        "angle": uniform(-recipe.rotation, recipe.rotation),
        "brightness": uniform(max(0.0, 1 - recipe.brightness), 1 + recipe.brightness),
        "contrast": uniform(max(0.0, 1 - recipe.contrast), 1 + recipe.contrast),
        "saturation": uniform(max(0.0, 1 - recipe.saturation), 1 + recipe.saturation),
        "hue": uniform(-recipe.hue, recipe.hue),
        # drawn after the paper's five, so adding them changed none of those draws
        "zoom": torch.exp(uniform(-math.log1p(recipe.zoom), math.log1p(recipe.zoom))),
        "shift_x": uniform(-recipe.shift, recipe.shift),
        "shift_y": uniform(-recipe.shift, recipe.shift),
    }


_GRAY = torch.tensor([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale weights
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_matrices(params: dict[str, torch.Tensor], channel_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter as one affine colour map per image: x -> M x + offset, shapes (N, 3, 3) and (N, 3).

    brightness scales; contrast blends with the image's mean grey (from `channel_means`, (N, 3)); saturation
    blends each pixel with its grey; hue rotates the chroma plane of YIQ space by hue * 360 degrees (the
    classic linear approximation of torchvision's HSV hue shift). Composed in torchvision's order and
    clamped once at the end instead of after each step: the same family of colour changes in one pass.
    """
    n = channel_means.shape[0]
    b, c, s, h = (params[k].float().view(-1, 1, 1) for k in ("brightness", "contrast", "saturation", "hue"))
    eye = torch.eye(3).expand(n, 3, 3)
    grey_row = _GRAY.view(1, 1, 3).expand(n, 3, 3)  # every output channel reads the grey value
    saturation = s * eye + (1 - s) * grey_row
    angle = -2 * math.pi * h.view(-1)  # sign: positive hue turns red towards yellow, as in torchvision
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    hue = torch.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ
    a = hue @ saturation
    grey_mean = (b.view(-1) * (channel_means.float() @ _GRAY)).view(-1, 1, 1)  # mean grey after brightness
    matrix = c * b * a
    offset = ((1 - c) * grey_mean * a.sum(2, keepdim=True).transpose(1, 2)).view(n, 3)
    return matrix, offset


def augment_batch(images: torch.Tensor, params: dict[str, torch.Tensor], *, out_size: int | None = None) -> torch.Tensor:
    """The paper's augmentation, batched: uint8 (N, 3, H, W) images, already resized -> rotated (bilinear,
    black corners, like RandomRotation; with the optional zoom and shift in the same resampling) ->
    ColorJitter (`colour_matrices`) -> ImageNet-normalised float32 (N, 3, out_size, out_size). About 10x
    cheaper than torchvision's per-image ColorJitter."""
    x = images.float()
    n, _, h, w = x.shape
    out = out_size or h
    angle = torch.deg2rad(params["angle"].float())
    inv_zoom = 1 / params["zoom"].float() if "zoom" in params else torch.ones_like(angle)
    cos, sin = torch.cos(angle) * inv_zoom, torch.sin(angle) * inv_zoom
    tx = params["shift_x"].float() * 2 if "shift_x" in params else torch.zeros_like(cos)  # grid units: [-1, 1]
    ty = params["shift_y"].float() * 2 if "shift_y" in params else torch.zeros_like(cos)
    theta = torch.stack((torch.stack((cos, -sin, tx), 1), torch.stack((sin, cos, ty), 1)), 1)
    grid = F.affine_grid(theta.to(x.device), [n, 3, out, out], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    matrix, offset = colour_matrices(params, x.mean((2, 3)).cpu() / 255)
    # colour map, then clamp to [0, 1] and normalise; 1/255 and the ImageNet std folded into the matrix
    std, mean = _STD.view(3).to(x.device), _MEAN.view(3).to(x.device)
    x = torch.baddbmm(offset.to(x.device).unsqueeze(2), matrix.to(x.device) / 255, x.view(n, 3, -1))
    x = x.clamp_(0, 1).sub_(mean.view(1, 3, 1)).div_(std.view(1, 3, 1))
    return x.view(n, 3, out, out)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> ImageNet-normalised float32: data.eval_transform after its Resize."""
    return (images.float().div_(255) - _MEAN.to(images.device)) / _STD.to(images.device)


# ----------------------------------------------------------------------------------------------
# Data sources
# ----------------------------------------------------------------------------------------------

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
    """All images of one split decoded once, resized to `size` x `size`, as a uint8 (N, 3, S, S) tensor."""

    def __init__(self, data_dir: str | Path, split: str, classes: list[str], size: int, *, workers: int = 2,
                 indices: list[int] | None = None):
        ds = rdata.ReceiptFolder(data_dir, split, classes=classes, transform=_ResizeToUint8(size))
        if indices is not None:
            ds.samples = [ds.samples[i] for i in indices]
            ds.targets = [t for _, t in ds.samples]
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
            yield normalize_batch(self.images[b]), self.labels[b]


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
            yield augment_batch(images, {k: v[b] for k, v in params.items()}), self.cache.labels[b]


class _SeededItems(torch.utils.data.Dataset):
    """Each item's augmentation seeded by (seed, epoch, index): independent of workers and processes."""

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(self.seed, self.epoch, 1000 + int(index)))
                x, y = self.dataset[index]
        except rdata.ImageReadError as e:
            return rdata.Failed(int(index), e.path, str(e))
        return x, y, index


class PerImageTrain:
    """The paper pipeline: torchvision's per-image augmentation (data.train_transform) in DataLoader workers."""

    def __init__(self, data_dir, classes, recipe: Recipe, seed: int, workers: int, indices: list[int] | None = None):
        jitter = rdata.Jitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        self.dataset = rdata.ReceiptFolder(data_dir, "train", classes=classes, transform=rdata.train_transform(
            image_size=recipe.image_size, rotation=recipe.rotation, jitter=jitter))
        if indices is not None:
            self.dataset.samples = [self.dataset.samples[i] for i in indices]
            self.dataset.targets = [t for _, t in self.dataset.samples]
        self.labels = torch.as_tensor(self.dataset.targets, dtype=torch.long)
        self.seed, self.workers = seed, workers

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, plan: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            _SeededItems(self.dataset, self.seed, epoch), batch_sampler=[b.tolist() for b in plan],
            num_workers=self.workers, collate_fn=rdata.collate_skip_failed)
        for x, y, _, failures in loader:
            if failures:
                f = failures[0]
                raise rdata.ImageReadError(f.path, f.error[len(f.path) + 2:])
            yield x, y


# ----------------------------------------------------------------------------------------------
# The loop (after torchvision's references/classification/train.py)
# ----------------------------------------------------------------------------------------------

def amp_dtype(recipe_amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a recipe's `amp` on `device` (None: float32). "auto" on a CPU means bf16 only
    where the CPU has bf16 in hardware (common.native_bf16); emulated bf16 is many times slower than fp32."""
    if recipe_amp == "none":
        return None
    if recipe_amp == "bf16":
        return torch.bfloat16
    if recipe_amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if native_bf16(device) else None
    if recipe_amp == "fp16":
        return torch.float16
    return torch.bfloat16 if native_bf16(device) else torch.float16


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


def train_one_epoch(model: nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, epoch: int, *,
                    scheduler=None, scaler: torch.amp.GradScaler | None = None, dtype: torch.dtype | None = None,
                    channels_last: bool = False, total: int | None = None, ema=None) -> dict:
    """One pass over `batches` of (normalised images, labels). `scheduler`, if given, steps per batch;
    `ema` (a torch.optim.swa_utils.AveragedModel), if given, is updated after every optimiser step.

    Generic over nn.Module; a model with a `regularisation()` method (e.g. stn.STNClassifier) has that
    term added to the loss. Returns loss and accuracy sums (for all-reducing) and the image count.
    """
    model.train()
    reg = getattr(models.unwrap(model), "regularisation", None)
    loss_sum = correct = n = 0.0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for step, (x, y) in enumerate(progress(batches, total=total, desc=f"epoch {epoch + 1}", leave=False)):
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
            loss = criterion(out, y)
            if reg is not None:
                loss = loss + reg()
        if not torch.isfinite(loss):
            lr = optimizer.param_groups[0]["lr"]
            raise NonFiniteLoss(
                f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr={lr:.3g}); "
                "lower the learning rate (--lr / TrainConfig.lr) or lengthen the warm-up")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(models.unwrap(model))
        k = y.numel()
        loss_sum += float(loss.detach()) * k
        correct += float((out.detach().argmax(1) == y).sum())
        n += k
    return {"loss_sum": loss_sum, "correct": correct, "n": n}


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: Callable, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, *, dtype: torch.dtype | None = None, channels_last: bool = False,
             keep_outputs: bool = False) -> dict:
    """Loss and accuracy over images whose label is a known class (label < number of outputs); Other
    images (label == number of outputs) only contribute outputs. With `keep_outputs`, also float32
    numpy `logits`, penultimate `features` and `labels` of every image."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    loss_sum = correct = n = 0.0
    logits, feats, labels = [], [], []
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            f, out = models.features_and_logits(model, x)
        out = out.float()
        known = y < out.shape[1]
        if known.any():
            loss_sum += float(criterion(out[known], y[known])) * int(known.sum())
            correct += float((out[known].argmax(1) == y[known]).sum())
            n += int(known.sum())
        if keep_outputs:
            logits.append(out.cpu())
            feats.append(f.float().cpu())
            labels.append(y.cpu())
    result = {"loss": loss_sum / n if n else float("nan"), "acc": correct / n if n else float("nan"), "n": int(n)}
    if keep_outputs:
        result.update(logits=torch.cat(logits).numpy(), features=torch.cat(feats).numpy(),
                      labels=torch.cat(labels).numpy().astype(np.int64))
    return result


def make_optimizer(params, recipe: Recipe, *, sgd: type = torch.optim.SGD,
                   adamw: type = torch.optim.AdamW) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW; no weight decay on BatchNorm weights and biases.

    params: a module (its trainable parameters), or parameter groups (dicts; their other entries, such as a
    per-group lr, are kept) or tensors. sgd / adamw: the classes to build, e.g. stn's gradient-clipping ones.
    """
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    groups = list(params)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    split = []
    for group in groups:
        for decayed in (True, False):
            chosen = [p for p in group["params"] if (p.ndim > 1) == decayed]
            if chosen:
                split.append({**group, "params": chosen, "weight_decay": recipe.weight_decay if decayed else 0.0})
    if recipe.optimizer == "adamw":
        return adamw(split, lr=recipe.lr, betas=(recipe.momentum, 0.999))
    return sgd(split, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)


def make_ema(model: nn.Module, recipe: Recipe):
    """An exponential moving average of `model`'s weights and buffers, or None when the recipe has none.

    Why: from scratch at a high AdamW rate, the raw weights' validation accuracy jumps by tens of points
    from one epoch to the next (BatchNorm statistics chase weights that move fast); the average of the
    last few hundred steps is steadier and better. Buffers are averaged too, so its BatchNorm statistics
    belong to its own weights.
    """
    if recipe.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    decay = recipe.ema_decay

    def average(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        # warm-up (as TensorFlow's and timm's EMA): a short run is not dominated by its random start
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged + (current - averaged) * (1.0 - d)

    return AveragedModel(models.unwrap(model), avg_fn=average, use_buffers=True)


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int, epochs: int):
    """(scheduler, per_step). warmup_cosine: linear warm-up then cosine to 0, stepped per batch;
    exponential: torch's ExponentialLR stepped per epoch (the paper)."""
    if recipe.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe.gamma), False
    total = max(1, steps_per_epoch * epochs)
    warm = min(total - 1, int(round(recipe.warmup_epochs * steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


# ----------------------------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()


def _setup_dist(device: str) -> _Dist:
    """torchrun sets RANK and WORLD_SIZE: then join the group (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world <= 1:
        return _Dist(device=dev)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:  # share the cores between the local processes instead of oversubscribing them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=dev, owns_group=owns)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def _rng_state() -> dict:
    """RNG states as tensors/lists/numbers so that torch.load(weights_only=True) reads them."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                                   int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, *, classes: list[str] | None = None, arch: str | None = None) -> dict:
    """A run checkpoint (weights_only), checked against the expected class list and architecture."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a receiptlib checkpoint (no 'model' entry)")
    if arch is not None and ckpt.get("arch") != arch:
        raise ValueError(f"{path} holds architecture {ckpt.get('arch')!r}, expected {arch!r}; "
                         "use a checkpoint of the same architecture or start a new run")
    if classes is not None and list(ckpt.get("classes", [])) != list(classes):
        raise ValueError(f"{path} was trained on classes {ckpt.get('classes')}, but this data has {list(classes)}; "
                         "point --data at the data the run was trained on, or start a new run")
    return ckpt


# ----------------------------------------------------------------------------------------------
# train(): a run folder from a config
# ----------------------------------------------------------------------------------------------

def _subset(n: int, k: int | None, seed: int) -> list[int] | None:
    if k is None or k >= n:
        return None
    return sorted(torch.randperm(n, generator=stream_generator(seed, 0, SUBSET))[:k].tolist())


def train(config: TrainConfig, *, run_dir: str | Path | None = None, runs_root: str | Path = "data/runs",
          resume: bool = False, model: nn.Module | None = None, arch: str = models.ARCH, verbose: bool = True) -> "rruns.Run":
    """Train `config` into a run folder (default `runs_root/<recipe>-<hash>`) and return its `runs.Run`.

    resume=True continues from `checkpoint_last.pt` (or starts the run if the folder has none); a folder
    that already holds a run needs resume=True. `model`: train this nn.Module instead of a fresh ResNet18
    (e.g. a spatial transformer wrapper; give its `arch` name, registered in models.ARCHITECTURES for
    `Run.load_model`). Under torchrun (RANK/WORLD_SIZE set), trains with DistributedDataParallel.
    """
    recipe = config.resolved_recipe()
    # absolute, so that outputs/*_paths.txt and Run.tta_outputs work from any working directory
    config = replace(config, data_dir=str(Path(config.data_dir).resolve()))
    known = rdata.known_classes(config.data_dir)
    dist = _setup_dist(config.device)
    device = dist.device
    say = print if (verbose and dist.main) else (lambda *a, **k: None)
    try:
        identity = rruns.config_identity(config, recipe, arch=arch)
        run_dir = Path(run_dir) if run_dir is not None else Path(runs_root) / rruns.run_name(identity)
        last_path, best_path = run_dir / "checkpoint_last.pt", run_dir / "checkpoint_best.pt"
        if (run_dir / "config.json").exists():
            old = rruns.read_json(run_dir / "config.json")
            if not resume:
                raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, "
                                      "or choose another run name")
            rruns.check_same_identity(old.get("identity", {}), identity, run_dir)
        dist.barrier()

        seed_everything(config.seed)
        if model is None:
            model = models.resnet18(len(known), weights=config.weights)
        dtype = amp_dtype(recipe.amp, device)
        full_config = {
            "data_dir": config.data_dir, "recipe_name": config.recipe, "recipe": asdict(recipe),
            "epochs": recipe.epochs, "image_size": recipe.image_size, "batch_size": recipe.batch_size,
            "seed": config.seed, "weights": str(config.weights),
            "weights_source": getattr(model, "weights_source", "custom model"), "arch": arch,
            "device": str(device), "amp_dtype": str(dtype).replace("torch.", "") if dtype else "float32",
            "world_size": dist.world, "workers": config.workers, "max_train_images": config.max_train_images,
            "classes": known + [OTHER], "train_config": asdict(config), "identity": identity,
            "torch_version": torch.__version__,
        }
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            rruns.write_json(run_dir / "config.json", full_config)
            rruns.write_json(run_dir / "classes.json", known + [OTHER])

        memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format)
        optimizer = make_optimizer(model, recipe)
        ema = make_ema(model, recipe)
        eval_model = ema.module if ema is not None else model  # what is evaluated and saved as "model"
        criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        # Data: train images (cached or per image), val images cached once for the per-epoch evaluation.
        t_data = time.perf_counter()
        n_train_all = len(rdata.ReceiptFolder(config.data_dir, "train", classes=known).samples)
        subset = _subset(n_train_all, config.max_train_images, config.seed)
        if recipe.pipeline == "cached":
            source = CachedTrain(CachedImages(config.data_dir, "train", known, recipe.image_size,
                                              workers=config.workers, indices=subset), recipe, config.seed, device)
        else:
            source = PerImageTrain(config.data_dir, known, recipe, config.seed, config.workers, subset)
        val = None
        if dist.main and (Path(config.data_dir) / "val").is_dir():
            val = CachedImages(config.data_dir, "val", known, recipe.image_size, workers=config.workers)
        decode_seconds = time.perf_counter() - t_data
        say(f"[train] {run_dir.name}: {len(source)} train images, {len(val) if val else 0} val images, "
            f"{len(known)} classes, {recipe.name} recipe at {recipe.image_size} px, {device}, "
            f"{full_config['amp_dtype']}, weights {full_config['weights_source']} (data ready in {decode_seconds:.0f} s)")

        steps_per_epoch = len(batch_plan(len(source), recipe.batch_size, config.seed, 0, rank=dist.rank, world=dist.world))
        scheduler, per_step = make_scheduler(optimizer, recipe, steps_per_epoch, recipe.epochs)

        start_epoch, history, best_acc, best_epoch = 0, [], -1.0, 0
        if resume and last_path.is_file():
            ckpt = load_checkpoint(last_path, classes=known + [OTHER], arch=arch)
            models.unwrap(model).load_state_dict(ckpt.get("train_model", ckpt["model"]))
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
            best_acc, best_epoch = float(ckpt["best_val_acc"]), int(ckpt["best_epoch"])
            say(f"[train] resuming {run_dir.name} after epoch {start_epoch}")

        train_model = model
        if dist.world > 1:
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        known_val = torch.nonzero(val.labels < len(known)).flatten() if val is not None else None
        for epoch in range(start_epoch, recipe.epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            plan = batch_plan(len(source), recipe.batch_size, config.seed, epoch, rank=dist.rank, world=dist.world)
            stats = train_one_epoch(train_model, criterion, optimizer, source.epoch(epoch, plan), device, epoch,
                                    scheduler=scheduler if per_step else None, scaler=scaler, dtype=dtype,
                                    channels_last=recipe.channels_last, total=len(plan), ema=ema)
            if not per_step:
                scheduler.step()
            t_train = time.perf_counter() - t0
            loss_sum, correct, n = dist.all_sum([stats["loss_sum"], stats["correct"], stats["n"]])
            row = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
                   "val_loss": float("nan"), "val_acc": float("nan"), "lr": lr}
            if dist.main:
                if val is not None and len(known_val):
                    ev = evaluate(eval_model, criterion, val.batches(known_val, recipe.eval_batch_size), device,
                                  dtype=dtype, channels_last=recipe.channels_last)
                    row.update(val_loss=ev["loss"], val_acc=ev["acc"])
                row.update(seconds=time.perf_counter() - t0, images_per_second=n / t_train)
                history.append(row)
                # the first epoch, or a strictly better val accuracy (no val split: every epoch)
                improved = not (row["val_acc"] <= best_acc)
                if improved:
                    best_acc, best_epoch = (row["val_acc"] if row["val_acc"] == row["val_acc"] else -1.0), epoch + 1
                ckpt = {"model": models.unwrap(eval_model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "epoch": epoch + 1, "rng": _rng_state(), "history": history, "best_val_acc": best_acc,
                        "best_epoch": best_epoch, "classes": known + [OTHER], "arch": arch}
                if ema is not None:  # "model" holds the average (what inference uses); training resumes from these
                    ckpt.update(train_model=models.unwrap(model).state_dict(), ema=ema.state_dict())
                if improved:  # best before last: a kill in between redoes this epoch and rewrites both
                    rruns.save_torch(best_path, ckpt)
                rruns.save_torch(last_path, ckpt)
                rruns.write_history(run_dir / "history.csv", history)
                say(f"[train] epoch {epoch + 1}/{recipe.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}"
                    f" | val loss {row['val_loss']:.3f} acc {row['val_acc']:.4f} | lr {lr:.3g} | {row['seconds']:.0f} s,"
                    f" {row['images_per_second']:.0f} img/s")
            dist.barrier()

        if dist.main:
            _finalize(run_dir, model, config, recipe, known, val, device, arch, decode_seconds)
        dist.barrier()
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()
    return rruns.Run(run_dir)


def _finalize(run_dir: Path, model: nn.Module, config: TrainConfig, recipe: Recipe, known: list[str],
              val: CachedImages | None, device: torch.device, arch: str, decode_seconds: float) -> None:
    """Outputs of the best checkpoint on val and test (all images, Other included), then metrics.json.

    Outputs are computed in float32 (whatever the training precision) so that the open-set thresholds
    see the same logits a float32 deployment would.
    """
    t0 = time.perf_counter()
    ckpt = load_checkpoint(run_dir / "checkpoint_best.pt", classes=known + [OTHER], arch=arch)
    bare = models.unwrap(model)
    bare.load_state_dict(ckpt["model"])
    criterion = nn.CrossEntropyLoss()
    for split in ("val", "test"):
        if not (Path(config.data_dir) / split).is_dir():
            continue
        images = val if split == "val" and val is not None else CachedImages(
            config.data_dir, split, known, recipe.image_size, workers=config.workers)
        out = evaluate(bare, criterion, images.batches(batch_size=recipe.eval_batch_size), device,
                       channels_last=recipe.channels_last, keep_outputs=True)
        rruns.write_outputs(run_dir, split, out["logits"], out["features"], out["labels"], images.paths)
    history = ckpt["history"]
    metrics = {"best_epoch": int(ckpt["best_epoch"]), "epochs": recipe.epochs,
               "train_seconds": float(sum(r["seconds"] for r in history)), "decode_seconds": decode_seconds,
               "final_seconds": time.perf_counter() - t0}
    if (run_dir / "outputs" / "val_logits.npy").exists():
        closed = rruns.closed_set_metrics(rruns.Run(run_dir).outputs("val"), known)
        metrics.update(val_accuracy=closed.pop("accuracy"), **closed)
    rruns.write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run finished


# ----------------------------------------------------------------------------------------------
# Command line (wired by cli.py as `receiptlib train` / `receiptlib evaluate`)
# ----------------------------------------------------------------------------------------------

def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `receiptlib train` flags, added to `p` (a parser or a cli.py subparser)."""
    p.add_argument("--data", required=True, help="data folder with train/ (and val/, test/) of <ClassName>/*.jpg")
    # --run-name: the same, for use under torchrun, whose own parser mistakes --run for its --run-path
    p.add_argument("--run", "--run-name", dest="run", default=None,
                   help="run name under --runs-root (None: <recipe>-<hash of the configuration>)")
    p.add_argument("--recipe", default="fast", choices=sorted(RECIPES), help="training recipe")
    p.add_argument("--epochs", type=int, default=None, help="epochs (None: the recipe's)")
    p.add_argument("--image-size", type=int, default=None, help="square image size in px (None: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (None: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (None: the recipe's)")
    p.add_argument("--weights", default="auto", help="auto | none | imagenet | path to a weights file")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--runs-root", default="data/runs", help="folder holding run folders")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--max-train-images", type=int, default=None, help="train on a fixed random subset of this size")
    return p


def train_from_args(args: argparse.Namespace) -> int:
    config = TrainConfig(data_dir=args.data, recipe=args.recipe, epochs=args.epochs, image_size=args.image_size,
                         batch_size=args.batch_size, lr=args.lr, weights=args.weights, seed=args.seed,
                         device=args.device, workers=args.workers, max_train_images=args.max_train_images)
    run_dir = Path(args.runs_root) / args.run if args.run else None
    run = train(config, run_dir=run_dir, runs_root=args.runs_root, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        m = run.metrics
        print(f"[train] {run.path}: val accuracy {m.get('val_accuracy', float('nan')):.4f} "
              f"(best epoch {m.get('best_epoch')}, {m.get('train_seconds', 0):.0f} s training)")
    return 0


def main_train(argv: list[str] | None = None) -> int:
    """`receiptlib train ...`; also the entry under `torchrun --nproc_per_node=K -m receiptlib.train ...`."""
    p = argparse.ArgumentParser(prog="receiptlib train", description="Train ResNet18 on a receipt folder data set "
                                "into a run folder.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return train_from_args(add_train_arguments(p).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main_train(sys.argv[1:]))
