"""The training loop after torchvision's references/classification: `train_one_epoch`, `evaluate` under
`torch.inference_mode()`, optimiser, EMA and schedule builders, the seeded batch plan, and `run_epoch`, the one
epoch driver that plain training (fit.py) and the spatial transformer's stages (stn/) share."""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .. import models
from ..common import SHUFFLE, native_bf16, progress, stream_generator
from .distributed import Dist
from .recipe import Recipe


def batch_plan(n: int, batch_size: int, seed: int, epoch: int, *, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """The image indices of each step of `epoch`: a seeded permutation cut into global batches; under
    torchrun each process takes every world-th image of each global batch (a last batch smaller than the
    number of processes is dropped so that all processes take the same number of steps)."""
    perm = torch.randperm(n, generator=stream_generator(seed, epoch, SHUFFLE))
    batches = list(perm.split(batch_size))
    if world > 1:
        batches = [b[rank::world] for b in batches if len(b) >= world]
    return batches


def amp_dtype(recipe_amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a recipe's `amp` on `device` (None: float32). "auto" on a CPU means bf16 only
    where the CPU has bf16 in hardware (common.native_bf16); emulated bf16 is many times slower than fp32."""
    if recipe_amp == "none" or (recipe_amp == "cuda" and device.type != "cuda"):
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

    params: a module (its trainable parameters; with `recipe.backbone_lr_mult` != 1 its final linear layer at
    lr and every other layer at lr x backbone_lr_mult, the fine-tuning split), or parameter groups (dicts; their
    other entries, such as a per-group lr, are kept) or tensors. sgd / adamw: the classes to build, e.g. stn's
    gradient-clipping ones.
    """
    if isinstance(params, nn.Module) and recipe.backbone_lr_mult != 1.0:
        head = {id(p) for p in models.classifier_head(params).parameters()}
        trainable = [p for p in params.parameters() if p.requires_grad]
        params = [{"params": [p for p in trainable if id(p) not in head], "lr": recipe.lr * recipe.backbone_lr_mult,
                   "name": "backbone"},
                  {"params": [p for p in trainable if id(p) in head], "lr": recipe.lr, "name": "head"}]
    elif isinstance(params, nn.Module):
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
    factor = warmup_cosine(total, int(round(recipe.warmup_epochs * steps_per_epoch)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


def warmup_cosine(total: int, warm: int) -> Callable[[int], float]:
    """The rate factor at step t of ``total``: linear warm-up over ``warm`` steps (at most total - 1), then
    cosine to 0."""
    warm = min(total - 1, warm)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return factor


def run_epoch(model: nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer, source, epoch: int, *,
              seed: int, batch_size: int, device: torch.device, schedule: tuple, dtype: torch.dtype | None = None,
              channels_last: bool = False, scaler: torch.amp.GradScaler | None = None, ema=None,
              dist: Dist | None = None, val_batches: Callable[[], Iterable] | None = None,
              eval_model: nn.Module | None = None) -> dict:
    """One epoch of training and its validation: the seeded batch plan of `epoch`, `train_one_epoch` over
    `source.epoch(epoch, plan)`, the per-epoch scheduler step, then `evaluate` of `eval_model` (default
    `model`) on `val_batches()` when given. `schedule`: (scheduler, per_step) from `make_scheduler`.

    Returns the history row: epoch (1-based), train_loss, train_acc (summed over processes under torchrun),
    val_loss, val_acc (NaN without val), lr (the first group's, at the start of the epoch), seconds
    (training + validation) and images_per_second (training only).
    """
    dist = dist or Dist(device=device)
    scheduler, per_step = schedule
    t0 = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    plan = batch_plan(len(source), batch_size, seed, epoch, rank=dist.rank, world=dist.world)
    stats = train_one_epoch(model, criterion, optimizer, source.epoch(epoch, plan), device, epoch,
                            scheduler=scheduler if per_step else None, scaler=scaler, dtype=dtype,
                            channels_last=channels_last, total=len(plan), ema=ema)
    if not per_step:
        scheduler.step()
    t_train = time.perf_counter() - t0
    loss_sum, correct, n = dist.all_sum([stats["loss_sum"], stats["correct"], stats["n"]])
    row = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
           "val_loss": float("nan"), "val_acc": float("nan"), "lr": lr}
    if val_batches is not None:
        ev = evaluate(eval_model if eval_model is not None else model, criterion, val_batches(), device,
                      dtype=dtype, channels_last=channels_last)
        row.update(val_loss=ev["loss"], val_acc=ev["acc"])
    row.update(seconds=time.perf_counter() - t0, images_per_second=n / t_train)
    return row
