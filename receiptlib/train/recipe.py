"""Training recipes (paper section V) and the configuration of one training run.

Two recipes (`RECIPES`):
- "paper": what the paper did: batch 4, SGD with momentum 0.9, cross-entropy, ExponentialLR, 224 px,
  rotation +-30 degrees and ColorJitter, each image decoded and augmented by torchvision in DataLoader
  workers (`data.train_transform`).
- "fast" (default): the same kind of augmentation made cheap for a 2-core CPU: every image decoded and
  resized once into an in-memory uint8 cache, rotation + colour jitter batched on tensors (`augment`),
  channels_last, bf16 autocast where the hardware has bf16, AdamW with warm-up and cosine decay, label
  smoothing, an EMA of the weights. Why each default: docs/decisions.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .. import models


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained (the defaults are the "fast" recipe)."""

    name: str = "fast"
    epochs: int = 10             # overridden per run (TrainConfig.epochs; the report's: presets.py)
    image_size: int = 64         # small enough for a 2-core CPU budget (docs/decisions.md: fast recipe size)
    batch_size: int = 32         # global batch (split across processes under torchrun); more steps per epoch than 64
    optimizer: str = "adamw"     # "sgd" (the paper) or "adamw", which gets going far sooner from scratch
    lr: float = 0.002            # peak learning rate after warm-up
    backbone_lr_mult: float = 1.0  # fine-tuning: every layer but the new head at lr x this (1: one rate for all)
    momentum: float = 0.9        # SGD momentum (the paper); AdamW's beta1
    nesterov: bool = True        # free improvement for short schedules
    weight_decay: float = 0.05   # decoupled (AdamW); for SGD a coupled 5e-5 would be the equivalent
    schedule: str = "warmup_cosine"  # "warmup_cosine" (per step) or "exponential" (per epoch, the paper)
    warmup_epochs: float = 1.0   # linear warm-up from ~0 to lr: large-lr SGD from scratch diverges without it
    gamma: float = 0.9           # ExponentialLR factor per epoch (schedule="exponential" only)
    label_smoothing: float = 0.1 # softer targets converge faster from scratch; paper: plain cross-entropy
    rotation: float = 30.0       # random rotation in [-30, +30] degrees, as the paper (docs/decisions.md: rotation)
    zoom: float = 0.0            # beyond the paper: random zoom by a factor in [1/(1+zoom), 1+zoom] (log-uniform)
    shift: float = 0.0           # and a random shift of up to this fraction of the image, each axis (0: off)
    brightness: float = 0.2      # ColorJitter strengths: data.Jitter (the paper names ColorJitter only; the
    contrast: float = 0.2        # "paper" recipe keeps data.Jitter's defaults 0.4/0.4/0.4/0.1)
    saturation: float = 0.2
    hue: float = 0.05
    amp: str = "auto"            # "auto": bf16 autocast where the hardware has bf16 (else fp32), bf16/fp16 on CUDA;
                                 # "cuda": autocast on CUDA only, fp32 on a CPU; "none": float32; "bf16"/"fp16": always
    channels_last: bool = True   # faster convolutions on CPU (docs/decisions.md: channels_last)
    pipeline: str = "cached"     # "cached": decode once, batched tensor augmentation; "per_image": torchvision in workers
    ema_decay: float = 0.99      # > 0: evaluate and save an EMA of the weights and BatchNorm statistics (steadier
                                 # val accuracy between epochs); 0: the raw weights (the paper)
    eval_batch_size: int = 64

    def __post_init__(self):
        checks = {
            "schedule": (self.schedule, ("warmup_cosine", "exponential")),
            "amp": (self.amp, ("auto", "cuda", "none", "bf16", "fp16")),
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
        if not self.backbone_lr_mult >= 0:
            raise ValueError(f"recipe {self.name!r}: backbone_lr_mult={self.backbone_lr_mult}, expected >= 0")
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
    # The paper's idea with a recipe of ours: an ImageNet-pretrained backbone, every layer fine-tuned at one rate
    # (AdamW, short warm-up, cosine), plain cross-entropy, rotation +-45, 160 px, fp32 on a CPU (depthwise
    # convolutions run slower in bf16 there). Measurements: docs/decisions.md (fine-tuning recipe).
    "finetune": Recipe(name="finetune", epochs=4, image_size=160, batch_size=32, optimizer="adamw", lr=0.001,
                       weight_decay=0.01, warmup_epochs=0.3, label_smoothing=0.0, rotation=45.0, ema_decay=0.0,
                       amp="cuda"),
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
    arch: str = models.ARCH    # a name in models.ARCHITECTURES
    weights: str = "auto"              # "auto" | "none" | "imagenet" | path (see models.resnet18)
    seed: int = 0
    device: str = "auto"               # does not enter the run's identity (same run on CPU or CUDA)
    workers: int = 2                   # decoding processes; results do not depend on it
    max_train_images: int | None = None  # a fixed random subset of train/ (for quick comparisons)
    overrides: dict = field(default_factory=dict)  # any other Recipe field, e.g. {"label_smoothing": 0.0}

    def __post_init__(self):
        models.get_architecture(self.arch, where="TrainConfig.arch")

    def resolved_recipe(self) -> Recipe:
        top = {k: getattr(self, k) for k in ("epochs", "image_size", "batch_size", "lr") if getattr(self, k) is not None}
        clash = sorted(set(top) & set(self.overrides))
        if clash:
            raise ValueError(f"{clash} given both as TrainConfig fields and in overrides; give each once")
        return get_recipe(self.recipe, **top, **self.overrides)


