"""Spatial Transformer in front of ResNet18: the paper's failed joint training and staged training (section VII).

A spatial transformer (Jaderberg et al. 2015; the Moodstocks slides in shared/seeds) is three pieces:
a localisation net that regresses transformation parameters from the image, a grid generator
(``F.affine_grid``) that maps every output pixel to a point of the input, and a bilinear sampler
(``F.grid_sample``) that reads the input there. The paper put one in front of ResNet and trained both
together from the start ("joint"): unsatisfactory. Their reading of the original paper, train the
classifier first and then the transformer together with it ("staged"), is implemented here too.

    stn = SpatialTransformer("rts")                                  # rotation + scale + translation
    model = STNClassifier(stn, rl.models.resnet18(25, weights="none"), loc_size=64, out_size=96)
    logits = model(images_192px)        # localise on a 64 px copy, crop 96 px from the 192 px input
    model.transformed(images_192px)     # what the classifier sees (the slides' visualisation)
    model.theta                         # (N, 2, 3) of the last forward

Below the model: ``train_stn`` (modes "resnet", "joint", "staged"; configuration ``STNRecipe``) and
``compare``, the three-way experiment of section VII with its table, learning curves and snapshots.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import STN_METHOD_NAMES, pick_device, seed_everything
from .data import ReceiptFolder

TRANSFORMS = {"affine": 6, "rts": 4}  # number of parameters the localisation net regresses


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class SpatialTransformer(nn.Module):
    """Localisation net + affine grid + bilinear sampler, initialised to the identity.

    transform:
      - ``"affine"``: the 6 numbers of the 2x3 matrix theta (the paper's choice, section VII).
      - ``"rts"``: rotation + isotropic scale + translation, 4 numbers (angle, log-scale, tx, ty), as the
        slides' "transformation restriction": no shear and no anisotropic squeeze, so a receipt keeps its
        proportions; the transformer can only turn, zoom and move.

    Coordinates follow ``F.affine_grid``: theta maps an output point (x, y) in [-1, 1]^2 to the input
    point it reads. A scale below 1 therefore zooms IN (reads a smaller region), above 1 zooms out.
    ``align_corners=False`` everywhere, so the identity theta on an output of the input's size reads the
    pixel centres exactly (no blur), and at half the size it averages 2x2 blocks.

    Identity initialisation: the last layer's weight is zero, so at the start every image gets the
    identity transform and the classifier sees the (resized) input unchanged, whatever the localisation
    net's random conv weights; its bias encodes the identity (for "affine" the bias is [1,0,0,0,1,0];
    for "rts" the bias is 0 and the parametrisation below maps 0 to angle 0, scale 1, translation 0).

    Guard against the known failure (the transformer shrinks the image to a dot, or zooms into a
    featureless corner: both destroy the classifier's input, and once the input is blank the gradient
    that could bring the transformer back is ~0, so training never recovers):
      - "rts": a hard bound. scale = exp(m + h * tanh(u + u0)) lies in [scale_range[0], scale_range[1]]
        for every output u of the net (m, h the mid-point and half-width in log space, u0 so that u = 0 is
        scale 1); the translation is max_translation * tanh(u), so the crop centre stays inside the
        image. ``penalty`` is 0.
      - "affine": a hard bound would need a constrained matrix, so a soft one: ``penalty`` (the mean over
        the batch of) the squared amount by which the log singular values of theta's 2x2 part leave
        [log scale_range[0], log scale_range[1]] (this catches a vanishing |det| and a squeeze along one
        axis alike), plus the squared amount by which |tx|, |ty| exceed max_translation (a crop pushed out
        of the image). ``STNClassifier.regularisation()`` adds ``guard_weight * penalty`` to the loss.
    """

    def __init__(self, transform: str = "rts", *, channels: Sequence[int] = (16, 32, 64), pool_size: int = 4,
                 hidden: int = 64, scale_range: tuple[float, float] = (0.4, 1.25), max_translation: float = 0.5):
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform={transform!r}: expected one of {sorted(TRANSFORMS)}")
        s_min, s_max = (float(s) for s in scale_range)
        if not (0 < s_min < 1 < s_max):
            raise ValueError(f"scale_range={scale_range}: expected 0 < min < 1 < max (identity scale 1 must lie inside)")
        if not max_translation > 0:
            raise ValueError(f"max_translation={max_translation}: expected > 0 (in [-1, 1] image coordinates)")
        self.transform = transform
        self.scale_range = (s_min, s_max)
        self.max_translation = float(max_translation)
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:  # small: it only has to find the receipt, not read it
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        # Pooling to a small grid (pool_size=1 is global pooling) keeps WHERE things are, which a
        # translation needs; global pooling alone is nearly translation-invariant.
        layers += [nn.AdaptiveAvgPool2d(pool_size), nn.Flatten(),
                   nn.Linear(c_in * pool_size * pool_size, hidden), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, TRANSFORMS[transform])
        self.reset_identity()
        self.theta: torch.Tensor | None = None     # (N, 2, 3) of the last forward, detached
        self.penalty: torch.Tensor = torch.zeros(())  # guard term of the last forward (0 for "rts")

    def reset_identity(self) -> None:
        """Last layer weight 0 and bias = identity transform (see the class docstring)."""
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            if self.transform == "affine":
                self.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
            else:
                self.head.bias.zero_()

    # -- parameters -> theta ------------------------------------------------------------------------

    def _log_scale_bounds(self) -> tuple[float, float, float]:
        lo, hi = (math.log(s) for s in self.scale_range)
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        return mid, half, math.atanh(-mid / half)  # u0: tanh(u0) = -mid/half, i.e. scale 1 at u = 0

    def theta_from_params(self, params: torch.Tensor) -> torch.Tensor:
        """(N, 6) or (N, 4) raw outputs of the localisation net -> (N, 2, 3) theta for ``affine_grid``."""
        if self.transform == "affine":
            return params.view(-1, 2, 3)
        mid, half, u0 = self._log_scale_bounds()
        angle = params[:, 0]  # radians, unbounded: theta is periodic in it
        scale = torch.exp(mid + half * torch.tanh(params[:, 1] + u0))
        t = self.max_translation * torch.tanh(params[:, 2:4])
        cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
        row0 = torch.stack([cos, -sin, t[:, 0]], dim=1)
        row1 = torch.stack([sin, cos, t[:, 1]], dim=1)
        return torch.stack([row0, row1], dim=1)

    def guard_penalty(self, theta: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the soft scale/translation guard (0 inside the allowed range)."""
        if self.transform == "rts":
            return theta.new_zeros(())
        lo, hi = (math.log(s) for s in self.scale_range)
        sv = torch.linalg.svdvals(theta[:, :, :2].float()).clamp_min(1e-6)
        log_sv = sv.log()
        scale_term = (F.relu(lo - log_sv) ** 2 + F.relu(log_sv - hi) ** 2).sum(1)
        trans_term = (F.relu(theta[:, :, 2].abs() - self.max_translation) ** 2).sum(1)
        return (scale_term + trans_term).mean()

    def localise(self, x_loc: torch.Tensor) -> torch.Tensor:
        """theta (N, 2, 3) from the localisation image; also sets ``self.theta`` and ``self.penalty``."""
        params = self.head(self.features(x_loc))
        theta = self.theta_from_params(params.float())
        self.theta = theta.detach()
        self.penalty = self.guard_penalty(theta)
        return theta

    @staticmethod
    def sample(source: torch.Tensor, theta: torch.Tensor, out_size: int | Sequence[int],
               fill: Sequence[float] | None = None) -> torch.Tensor:
        """Bilinear sample of ``source`` (N, C, H, W) through ``theta`` at ``out_size``.

        Points outside the input read ``fill`` (per channel; default 0), e.g. the normalised value of the
        black corners ``train_transform``'s rotation leaves, so the classifier sees one kind of border.
        """
        h, w = _pair(out_size)
        n, c = source.shape[:2]
        grid = F.affine_grid(theta.to(source.dtype), [n, c, h, w], align_corners=False)
        if fill is None:
            return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        f = torch.as_tensor(fill, dtype=source.dtype, device=source.device).view(1, -1, 1, 1)
        return F.grid_sample(source - f, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + f

    def forward(self, x: torch.Tensor, out_size: int | Sequence[int] | None = None, *,
                source: torch.Tensor | None = None, fill: Sequence[float] | None = None) -> torch.Tensor:
        """Localise on ``x``, sample ``source`` (default ``x``) at ``out_size`` (default x's size)."""
        theta = self.localise(x)
        src = x if source is None else source
        return self.sample(src, theta, out_size if out_size is not None else tuple(x.shape[-2:]), fill)


def _normalised_black() -> tuple[float, ...]:
    from .data import IMAGENET_MEAN, IMAGENET_STD

    return tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


class STNClassifier(nn.Module):
    """A spatial transformer in front of a classifier, localising on a larger image than it classifies.

    The input (N, 3, H, W) is the full-resolution image (e.g. 2 x out_size). The localisation net looks
    at a copy resized to ``loc_size`` (cheap); the crop is sampled from the full-resolution input at
    ``out_size`` and classified. Zooming in (scale < 1) then reads real detail instead of upsampling a
    small image: the reason a transformer can help most on a receipt photo.

    Resizing an input larger than 2 x out_size at identity aliases (bilinear reads 2x2 neighbourhoods);
    keep H about 2 x out_size. Images are assumed square: theta acts in [-1, 1] coordinates per axis, so
    on a non-square image a rotation in theta is not a rigid rotation of the pixels.

    Exposes ``.classifier`` (so ``rl.models.features_and_logits`` hooks its final layer), ``.stn``,
    ``theta`` of the last forward and ``transformed(images)`` for the slides' input/output grid.
    """

    def __init__(self, stn: SpatialTransformer, classifier: nn.Module, *, loc_size: int | Sequence[int],
                 out_size: int | Sequence[int], guard_weight: float = 1.0,
                 fill: Sequence[float] | None | str = "black"):
        super().__init__()
        self.stn = stn
        self.classifier = classifier
        self.loc_size = _pair(loc_size)
        self.out_size = _pair(out_size)
        self.guard_weight = float(guard_weight)  # weight of the soft guard (affine) in the loss
        # padding of the sampler: normalised black, like the rotation corners of data.train_transform
        self.fill = _normalised_black() if fill == "black" else fill

    @property
    def theta(self) -> torch.Tensor | None:
        return self.stn.theta

    freeze_classifier = False  # staged training: classifier fixed (no gradient step, BN statistics frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_classifier:
            self.classifier.eval()  # its BN running statistics stay those of stage 1
        return self

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's output at ``out_size`` (differentiable).

        Runs in float32 even under autocast: the transformer is cheap, and a bf16 theta would move the
        crop by whole pixels (bf16 keeps ~3 significant digits); only the classifier runs in low precision.
        """
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            x_loc = x
            if tuple(x.shape[-2:]) != self.loc_size:
                x_loc = F.interpolate(x, size=self.loc_size, mode="bilinear", align_corners=False, antialias=True)
            return self.stn(x_loc, self.out_size, source=x, fill=self.fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.crop(x))

    def regularisation(self) -> torch.Tensor:
        """The guard term of the last forward to add to the loss (0 for the bounded "rts" transform)."""
        return self.guard_weight * self.stn.penalty

    @torch.no_grad()
    def transformed(self, images: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: transformer outputs (N, 3, out_size) for normalised input images."""
        return self.crop(images)


class ResizeClassifier(nn.Module):
    """The classifier alone on the same full-resolution input, resized to ``out_size``: ResNet without a
    transformer, and stage 1 of staged training.

    The resize is exactly the identity transform of ``STNClassifier`` (bilinear, ``align_corners=False``,
    no antialiasing: at half size both average 2x2 blocks), so at the start of stage 2 the identity-
    initialised transformer hands the classifier the very images it was trained on.
    """

    def __init__(self, classifier: nn.Module, *, out_size: int | Sequence[int]):
        super().__init__()
        self.classifier = classifier
        self.out_size = _pair(out_size)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.out_size:
            return x
        return F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False, antialias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.crop(x))


# ----------------------------------------------------------------------------------------------
# Training: "resnet" (no transformer), "joint" (the paper), "staged" (classifier first)
# ----------------------------------------------------------------------------------------------

MODES = ("resnet", "joint", "staged")


@dataclass
class STNRecipe:
    """One configuration of the section VII experiment, shared by the three modes (same data, same budget).

    The classifier's optimisation is a ``train.RECIPES`` recipe (default "fast": AdamW, linear warm-up then
    cosine, label smoothing, bf16 autocast where the hardware has bf16, batched rotation and colour jitter;
    "paper": SGD with momentum); its optimiser and lr are the base the multipliers below apply to. The recipe's
    EMA of the weights is not used here: the transformer's snapshots show the trained weights themselves. Defaults: the smallest honest setting on the quick data on 2
    CPU cores; raise ``image_size``/``input_size``/``epochs`` for the larger setting.
    """

    recipe: str = "fast"            # train.RECIPES entry for optimiser, schedule, augmentation, precision
    image_size: int = 64            # px the classifier sees (out_size): small for the CPU budget
    input_size: int = 128           # px of the full-resolution input the transformer samples from (2 x image_size)
    loc_size: int = 48              # px the localisation net sees: enough to find a receipt, cheap
    epochs: int = 6                 # every mode trains this many epochs in total (staged and resnet: stage 1
                                    # + stage 2; joint: all of them with the transformer)
    batch_size: int | None = None   # None: the recipe's
    lr: float | None = None         # None: the recipe's peak rate for the classifier
    transform: str = "rts"          # "rts": the slides' restriction (no shear); "affine": the paper's 6 numbers
    loc_lr_mult: float = 0.1        # localisation net rate = lr x this in joint and staged alike, so staging is
                                    # the only difference; Jaderberg et al. also give it a lower rate: a large
                                    # one makes the transform jump faster than the classifier can follow
    stage2_epochs: int = 3          # staged: the last epochs, with the transformer (stage 1 = epochs - this)
    stage2_classifier_lr_mult: float = 1.0  # staged, stage 2: the classifier's rate as a multiple of the ResNet
                                    # run's schedule it branched off (1: staged differs from ResNet alone only
                                    # by the transformer); of the lr when stage1= is a classifier trained
                                    # elsewhere (then stage 2 has a warm-up + cosine of its own)
    freeze_epochs: int = 0          # staged: first stage-2 epochs with the classifier frozen, so the transformer
                                    # learns to serve a fixed classifier before both move (costs the classifier
                                    # those epochs of training against ResNet alone)
    scale_range: tuple[float, float] = (0.4, 1.25)  # guard: zoom in at most 2.5x, out at most 1.25x
    max_translation: float = 0.5    # guard: crop centre within the middle half of each axis ([-1, 1] units)
    guard_weight: float = 1.0       # weight of the soft guard in the loss ("affine" only)
    loc_max_grad_norm: float | None = 1.0  # clip the localisation net's gradient norm: one bad batch can
                                    # otherwise throw theta into a saturated corner of the bounds (tanh),
                                    # where its gradient vanishes and the transformer never comes back
    weights: str = "none"           # classifier init (models.resnet18): "auto" takes ImageNet when present
    max_train_images: int | None = None  # a fixed random subset of train/ (cheaper runs)
    overrides: dict = field(default_factory=dict)  # other train.Recipe fields, e.g. {"rotation": 0.0}

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"STNRecipe.transform={self.transform!r}: expected one of {sorted(TRANSFORMS)}")
        if not 0 <= self.stage2_epochs <= self.epochs:
            raise ValueError(f"STNRecipe.stage2_epochs={self.stage2_epochs}: expected 0..epochs={self.epochs}")
        if not 0 <= self.freeze_epochs <= self.stage2_epochs:
            raise ValueError(f"STNRecipe.freeze_epochs={self.freeze_epochs}: expected 0..stage2_epochs={self.stage2_epochs}")
        if self.input_size < self.image_size:
            raise ValueError(f"STNRecipe.input_size={self.input_size} < image_size={self.image_size}: the transformer "
                             "samples from the larger input; give input_size >= image_size (2x recommended)")
        self.scale_range = tuple(float(s) for s in self.scale_range)

    def train_recipe(self):
        """The ``train.Recipe`` used for the classifier (data cached at ``input_size``)."""
        from . import train as rtrain

        top = {"epochs": self.epochs, "image_size": self.input_size}
        top.update({k: getattr(self, k) for k in ("batch_size", "lr") if getattr(self, k) is not None})
        return rtrain.get_recipe(self.recipe, **top, **self.overrides)


def build_model(recipe: STNRecipe, num_classes: int, mode: str, *, classifier: nn.Module | None = None) -> nn.Module:
    """The model of a mode: ``ResizeClassifier`` for "resnet" (and stage 1), ``STNClassifier`` otherwise."""
    from . import models

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if classifier is None:
        classifier = models.resnet18(num_classes, weights=recipe.weights)
    if mode == "resnet":
        return ResizeClassifier(classifier, out_size=recipe.image_size)
    stn = SpatialTransformer(recipe.transform, scale_range=recipe.scale_range, max_translation=recipe.max_translation)
    return STNClassifier(stn, classifier, loc_size=recipe.loc_size, out_size=recipe.image_size,
                         guard_weight=recipe.guard_weight)


def stage2_model(stage1: nn.Module | dict | str | Path, recipe: STNRecipe, num_classes: int) -> STNClassifier:
    """Staged training, start of stage 2: a fresh identity transformer in front of the stage-1 classifier.

    ``stage1``: the stage-1 model (its ``.classifier`` module is reused, not copied), a ResNet18 state dict,
    or a path to weights / a receiptlib checkpoint (e.g. ``run.checkpoint_path("best")`` of a plain run).
    """
    from . import models

    if isinstance(stage1, nn.Module):
        classifier = getattr(stage1, "classifier", stage1)
    else:
        classifier = models.resnet18(num_classes, weights="none")
        if isinstance(stage1, dict):
            state, source = stage1, "stage-1 state dict"
        else:
            state, source = models._file_state_dict(Path(stage1)), f"stage-1 weights {stage1}"
        if "fc.weight" in state and state["fc.weight"].shape[0] != num_classes:
            raise ValueError(f"{source} has {state['fc.weight'].shape[0]} outputs; the data has {num_classes} known classes")
        models.load_backbone_state(classifier, state, source)
    return build_model(recipe, num_classes, "joint", classifier=classifier)


def param_groups(model: STNClassifier, lr: float, *, classifier_mult: float, loc_mult: float,
                 loc_max_grad_norm: float | None = None) -> list[dict]:
    """Two parameter groups: the classifier at lr x classifier_mult, the localisation net at lr x loc_mult
    (its gradient norm clipped to ``loc_max_grad_norm`` by the optimiser of ``make_optimizer``)."""
    return [{"params": list(model.classifier.parameters()), "lr": lr * classifier_mult, "name": "classifier"},
            {"params": list(model.stn.parameters()), "lr": lr * loc_mult, "name": "localisation",
             "max_grad_norm": loc_max_grad_norm}]


class _ClipGroups:
    """Before each step, clip the gradient norm of every parameter group with a ``max_grad_norm`` entry
    (jointly over the groups sharing its ``name``: ``make_optimizer`` splits a group into decayed weights and
    undecayed biases / BatchNorm).

    Lets ``train.train_one_epoch`` (which knows nothing of groups) train a transformer whose localisation
    net must not take one huge step; the classifier's group is left unclipped, as in the plain recipe.
    """

    def step(self, closure=None):
        clip: dict = {}
        for i, group in enumerate(self.param_groups):
            if group.get("max_grad_norm"):
                _, params = clip.setdefault(group.get("name", i), (group["max_grad_norm"], []))
                params.extend(p for p in group["params"] if p.grad is not None)
        for max_norm, params in clip.values():
            if params:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
        return super().step(closure)


class ClippedSGD(_ClipGroups, torch.optim.SGD):
    """SGD with the localisation net's gradient clipping (``_ClipGroups``)."""


class ClippedAdamW(_ClipGroups, torch.optim.AdamW):
    """AdamW with the localisation net's gradient clipping (``_ClipGroups``)."""


def make_optimizer(groups, base) -> torch.optim.Optimizer:
    """The classifier recipe's optimiser over ``groups`` (a module's parameters, or ``param_groups``), built
    by ``train.make_optimizer`` as for a plain run (so ResNet alone here trains as ``receiptlib train``
    does), with the clipping classes: group entries (lr, name, max_grad_norm) are kept and the localisation
    net's gradient is clipped. Frozen parameters stay in (staged training unfreezes them later)."""
    from . import train as rtrain

    return rtrain.make_optimizer(list(groups), base, sgd=ClippedSGD, adamw=ClippedAdamW)


@dataclass
class STNResult:
    """What ``train_stn`` returns: the trained model, per-epoch history rows and the transformer snapshots."""

    model: nn.Module
    history: list[dict]
    snapshots: dict  # "epochs" [E], "theta" [E, n, 2, 3], "outputs" uint8 [E, n, S, S, 3] (transformer modes)
    stage1_state: dict | None = None  # staged, resnet: the classifier's state dict at the end of stage 1
    stage1: dict | None = None  # the ResNet run after stage 1 (weights + optimiser moments): train_stn's stage1=


_STAGE1_FORMAT = "receiptlib.stn.stage1/1"
_STN_INIT_STREAM = 7  # train.stream_seed stream of the staged transformer's init (train.py's are 0-3)


def _stage1_checkpoint(classifier: nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int, steps: int,
                       seed: int, train_recipe) -> dict:
    """The ResNet run after stage 1, for staged training to branch off: the classifier's weights, its
    optimiser moments by parameter name (tensors only: no pickles) and where in which run it was taken."""
    moments = {name: {k: v.detach().clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
               for name, p in classifier.named_parameters() if p in optimizer.state}
    return {"format": _STAGE1_FORMAT, "epochs": int(epochs), "steps": int(steps), "seed": int(seed),
            "train_recipe": asdict(train_recipe), "moments": moments,
            "model": {k: v.detach().clone() for k, v in classifier.state_dict().items()}}


def _check_stage1(stage1: dict, *, epochs: int, steps: int, seed: int, train_recipe) -> None:
    """A branch continues the ResNet run's schedule: it must come from the same run at the same epoch."""
    want = {"epochs": epochs, "steps": steps, "seed": seed, "train_recipe": asdict(train_recipe)}
    wrong = [k for k, v in want.items() if stage1.get(k) != v]
    if wrong:
        raise ValueError("stage1= is a stage-1 checkpoint of another run ("
                         + ", ".join(f"{k}: {stage1.get(k)!r} here {want[k]!r}" for k in wrong if k != "train_recipe")
                         + ("; another train recipe" if "train_recipe" in wrong else "")
                         + "); train staged without stage1= or pass the ResNet run of this recipe and seed")


def _load_classifier_moments(optimizer: torch.optim.Optimizer, classifier: nn.Module, moments: dict) -> None:
    missing = [name for name, _ in classifier.named_parameters() if name not in moments]
    if moments and missing:
        raise ValueError(f"stage-1 optimiser moments lack {len(missing)} classifier parameters, e.g. {missing[:3]}")
    for name, p in classifier.named_parameters():
        if name in moments:
            # "step" stays where torch keeps it (CPU unless the optimiser is capturable/fused): on the GPU
            # every step would sync to read it
            optimizer.state[p] = {k: v.clone() if k == "step" else v.to(p.device, copy=True)
                                  for k, v in moments[name].items()}


def _advance(schedule, *, epochs: int, steps: int) -> None:
    """Move a fresh (scheduler, per_step) on by ``epochs`` epochs of ``steps`` batches (per-step schedules)
    or ``epochs`` epoch steps (per-epoch ones), to where the branched-off run's schedule stood."""
    import warnings

    scheduler, per_step = schedule
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": deliberate here
        warnings.simplefilter("ignore")
        for _ in range(epochs * steps if per_step else epochs):
            scheduler.step()


def _to_uint8_images(x: torch.Tensor) -> np.ndarray:
    from .data import denormalize

    return (denormalize(x.detach().float().cpu()) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def train_stn(data_dir: str | Path, recipe: STNRecipe | None = None, *, mode: str = "staged", seed: int = 0,
              device: str = "auto", workers: int = 2, stage1: nn.Module | dict | str | Path | None = None,
              snapshot_images: torch.Tensor | None = None, caches: dict | None = None,
              on_stage2_start=None, verbose: bool = True) -> STNResult:
    """Train one mode on ``data_dir`` for ``recipe.epochs`` epochs in total; returns an ``STNResult``.

    - "resnet": the classifier alone on the input resized to image_size, ``epochs`` epochs under one
      warm-up + cosine schedule.
    - "staged": branches off that ResNet run after stage 1 (``epochs - stage2_epochs`` epochs): a fresh
      identity transformer goes in front of the classifier and stage 2 continues the run's schedule and
      optimiser moments for ``stage2_epochs``, the classifier at its rate x stage2_classifier_lr_mult (frozen
      for the first ``freeze_epochs``), the localisation net at lr x loc_lr_mult (joining the schedule where
      it stands: no warm-up of its own, its gradient norm clipped). With the defaults, staged
      and ResNet alone differ only by the transformer. ``stage1``: the ResNet run's ``STNResult.stage1``
      (same seed: the same stage 2 as training stage 1 here, so ``compare`` trains it once), or a classifier
      trained elsewhere (model, state dict or weights file), then stage 2 gets a new warm-up + cosine.
    - "joint": transformer + classifier from the start (section VII as the paper did it); classifier at
      the recipe's lr, localisation net at lr x loc_lr_mult.

    Reuses receiptlib.train's pieces: cached uint8 images, batched augmentation, ``train_one_epoch`` (which
    adds ``regularisation()``, the guard) and ``evaluate``. ``snapshot_images`` (normalised, input_size)
    are passed through the transformer after every epoch (and before the first) for the slides' grid.
    ``caches``: {"train": CachedImages, "val": CachedImages} to share decoded images between calls.
    """
    from . import train as rtrain
    from .data import known_classes

    recipe = recipe or STNRecipe()
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    say = print if verbose else (lambda *a, **k: None)
    base = recipe.train_recipe()
    dev = pick_device(device)
    dtype = rtrain.amp_dtype(base.amp, dev)
    known = known_classes(data_dir)
    caches = caches if caches is not None else {}
    if "train" not in caches:
        n_all = len(ReceiptFolder(data_dir, "train", classes=known).samples)
        caches["train"] = rtrain.CachedImages(data_dir, "train", known, recipe.input_size, workers=workers,
                                              indices=rtrain._subset(n_all, recipe.max_train_images, seed))
    if "val" not in caches:
        caches["val"] = rtrain.CachedImages(data_dir, "val", known, recipe.input_size, workers=workers)
    source = rtrain.CachedTrain(caches["train"], base, seed, dev)
    val = caches["val"]
    known_val = torch.nonzero(val.labels < len(known)).flatten()
    criterion = nn.CrossEntropyLoss(label_smoothing=base.label_smoothing)
    memory_format = torch.channels_last if base.channels_last else torch.contiguous_format

    seed_everything(seed)
    history: list[dict] = []
    snaps: dict[str, list] = {"epochs": [], "theta": [], "outputs": []}
    stage1_state = None

    def snapshot(model: nn.Module, epoch: int) -> None:
        if snapshot_images is None or not isinstance(model, STNClassifier):
            return
        was_training = model.training
        model.eval()
        out = model.transformed(snapshot_images.to(dev))
        model.train(was_training)
        snaps["epochs"].append(epoch)
        snaps["theta"].append(model.theta.cpu().numpy())
        snaps["outputs"].append(_to_uint8_images(out))

    steps = len(rtrain.batch_plan(len(source), base.batch_size, seed, 0))

    def run_stage(model: nn.Module, optimizer, n_epochs: int, stage: str, first_epoch: int, freeze: int = 0,
                  schedule=None) -> None:
        """``schedule``: (scheduler, per_step) to continue; None: a new one over these ``n_epochs``."""
        scheduler, per_step = schedule or rtrain.make_scheduler(optimizer, base, steps, n_epochs)
        for k in range(n_epochs):
            epoch = first_epoch + k
            if isinstance(model, STNClassifier):
                model.freeze_classifier = k < freeze
                model.classifier.requires_grad_(not model.freeze_classifier)
            t0 = time.perf_counter()
            lrs = {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(optimizer.param_groups)}
            plan = rtrain.batch_plan(len(source), base.batch_size, seed, epoch)
            stats = rtrain.train_one_epoch(model, criterion, optimizer, source.epoch(epoch, plan), dev, epoch,
                                           scheduler=scheduler if per_step else None, dtype=dtype,
                                           channels_last=base.channels_last, total=len(plan))
            if not per_step:
                scheduler.step()
            ev = rtrain.evaluate(model, criterion, val.batches(known_val, base.eval_batch_size), dev, dtype=dtype,
                                 channels_last=base.channels_last)
            row = {"mode": mode, "seed": seed, "epoch": epoch + 1, "stage": stage,
                   "classifier_frozen": bool(getattr(model, "freeze_classifier", False)),
                   "train_loss": stats["loss_sum"] / stats["n"], "train_acc": stats["correct"] / stats["n"],
                   "val_loss": ev["loss"], "val_acc": ev["acc"], "lr": lrs.get("classifier", next(iter(lrs.values()))),
                   "loc_lr": lrs.get("localisation", float("nan")), "seconds": time.perf_counter() - t0}
            if isinstance(model, STNClassifier):
                row.update(_theta_summary(model, val, known_val, dev, base.eval_batch_size))
            history.append(row)
            say(f"[stn] {mode} seed {seed} epoch {epoch + 1}/{recipe.epochs} ({stage}): train loss "
                f"{row['train_loss']:.3f} acc {row['train_acc']:.3f} | val acc {row['val_acc']:.4f} | {row['seconds']:.0f} s")
            snapshot(model, epoch + 1)
        if isinstance(model, STNClassifier):
            model.freeze_classifier = False
            model.classifier.requires_grad_(True)

    n1 = recipe.epochs - recipe.stage2_epochs
    k2 = recipe.stage2_epochs
    if mode == "resnet" and stage1 is not None:
        raise ValueError("mode='resnet' trains its own stage 1; stage1= is for mode='staged'")
    if mode in ("resnet", "staged") and stage1 is None:
        # The ResNet run: one warm-up + cosine over all `epochs`. Staged training branches off it after n1
        # epochs (its stage 1 is this run's first n1 epochs), so the two differ only by the transformer.
        model = build_model(recipe, len(known), "resnet").to(dev, memory_format=memory_format)
        optimizer = make_optimizer(model.parameters(), base)
        schedule = rtrain.make_scheduler(optimizer, base, steps, recipe.epochs)
        run_stage(model, optimizer, n1, "stage1" if k2 else "resnet", 0, schedule=schedule)
        stage1 = _stage1_checkpoint(model.classifier, optimizer, epochs=n1, steps=steps, seed=seed, train_recipe=base)
        stage1_state = stage1["model"]
        if mode == "resnet":
            run_stage(model, optimizer, k2, "stage2", n1, schedule=schedule)  # no-op when k2 == 0
            return STNResult(model, history, {}, stage1_state, stage1)
    branch = isinstance(stage1, dict) and stage1.get("format") == _STAGE1_FORMAT  # a ResNet run's stage 1
    if mode == "staged":
        if branch:
            _check_stage1(stage1, epochs=n1, steps=steps, seed=seed, train_recipe=base)
        # the transformer's random init is seeded apart from stage 1, so stage 2 is the same whether stage 1
        # ran in this call or was handed over (compare trains stage 1 once for two modes)
        torch.manual_seed(rtrain.stream_seed(seed, n1, _STN_INIT_STREAM))
        model = stage2_model(stage1["model"] if branch else stage1, recipe, len(known)).to(dev, memory_format=memory_format)
        stage1_state = stage1_state or {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
        if on_stage2_start is not None:
            on_stage2_start(model)
        snapshot(model, n1)
        groups = param_groups(model, base.lr, classifier_mult=recipe.stage2_classifier_lr_mult,
                              loc_mult=recipe.loc_lr_mult, loc_max_grad_norm=recipe.loc_max_grad_norm)
        optimizer = make_optimizer(groups, base)
        if branch:  # continue the ResNet run: its optimiser moments for the classifier, its schedule's position
            # (the localisation net joins there, without a warm-up of its own; its gradient norm is clipped)
            _load_classifier_moments(optimizer, model.classifier, stage1["moments"])
            schedule = rtrain.make_scheduler(optimizer, base, steps, recipe.epochs)
            _advance(schedule, epochs=n1, steps=steps)
        else:  # a classifier trained elsewhere: a new warm-up + cosine over stage 2
            schedule = None
        run_stage(model, optimizer, k2, "stage2", n1, freeze=recipe.freeze_epochs, schedule=schedule)
    else:  # joint
        model = build_model(recipe, len(known), "joint").to(dev, memory_format=memory_format)
        snapshot(model, 0)
        groups = param_groups(model, base.lr, classifier_mult=1.0, loc_mult=recipe.loc_lr_mult,
                              loc_max_grad_norm=recipe.loc_max_grad_norm)
        run_stage(model, make_optimizer(groups, base), recipe.epochs, "joint", 0)
    snapshots = {k: np.stack(v) for k, v in snaps.items()} if snaps["epochs"] else {}
    return STNResult(model, history, snapshots, stage1_state, stage1 if branch else None)


def theta_scale_angle(theta: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the zoom sqrt|det| of theta's 2x2 part (< 1 = zoom in) and its rotation in degrees."""
    t = np.asarray(theta, dtype=np.float64)
    a = t[..., :2, :2]
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    angle = np.degrees(np.arctan2(a[..., 1, 0] - a[..., 0, 1], a[..., 0, 0] + a[..., 1, 1]))
    return np.sqrt(np.abs(det)), angle


@torch.inference_mode()
def _theta_summary(model: STNClassifier, val, idx: torch.Tensor, dev, batch_size: int) -> dict:
    """Mean zoom and |rotation| of the transformer over the known val images (collapse shows up here)."""
    model.eval()
    thetas = []
    for x, _ in val.batches(idx, batch_size):
        model.crop(x.to(dev))
        thetas.append(model.theta.cpu())
    scale, angle = theta_scale_angle(torch.cat(thetas))
    return {"theta_scale_mean": float(scale.mean()), "theta_scale_min": float(scale.min()),
            "theta_abs_angle_mean": float(np.abs(angle).mean())}


# ----------------------------------------------------------------------------------------------
# The experiment: ResNet alone vs joint vs staged, several seeds, whole test set and a hard slice
# ----------------------------------------------------------------------------------------------

# The hard slice (synthetic data): photos whose receipt is turned beyond the bulk of the paper's +-30 degree
# augmentation or strongly keystoned (on the quick preset, difficulty 0.3, only the rotations: ~3% of test), from the manifest's `rotation_deg` and `perspective` columns
# (synth/photo.py: perspective in [0.02, 0.1] x difficulty when present).
HARD_ROTATION_DEG = 25.0
HARD_PERSPECTIVE = 0.07
_PATH_COLUMNS = ("path", "file", "relpath", "filename", "image")


def hard_mask(data_dir: str | Path, paths: Sequence[str], *, rotation_deg: float = HARD_ROTATION_DEG,
              perspective: float = HARD_PERSPECTIVE) -> np.ndarray | None:
    """Boolean mask over ``paths``: |rotation_deg| >= rotation_deg or perspective >= perspective, from
    ``data_dir/manifest.csv``. None when there is no manifest (real photos): no hard slice then."""
    import pandas as pd

    manifest = Path(data_dir) / "manifest.csv"
    if not manifest.is_file():
        return None
    df = pd.read_csv(manifest)
    col = next((c for c in _PATH_COLUMNS if c in df.columns), None)
    missing = [c for c in ("rotation_deg", "perspective") if c not in df.columns]
    if col is None or missing:
        raise ValueError(f"{manifest}: expected a path column (one of {_PATH_COLUMNS}) and the columns "
                         f"rotation_deg, perspective; missing {missing or 'the path column'}")
    root = Path(data_dir).resolve()

    def key(p: str) -> str:  # manifest paths are relative to data_dir; image paths may be absolute or cwd-relative
        q = Path(p)
        full = q.resolve()
        return full.relative_to(root).as_posix() if full.is_relative_to(root) else q.as_posix()

    hard = (df["rotation_deg"].abs() >= rotation_deg) | (df["perspective"] >= perspective)
    lookup = dict(zip((key(p) for p in df[col].astype(str)), hard.to_numpy()))
    absent = [p for p in paths if key(p) not in lookup]
    if absent:
        raise ValueError(f"{manifest}: {len(absent)} images are not listed, e.g. {absent[0]}; regenerate the "
                         "manifest or pass a data folder without manifest.csv")
    return np.array([bool(lookup[key(p)]) for p in paths])


def open_set_metrics(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                     test_labels: np.ndarray, *, mask: np.ndarray | None = None, rule: str = "macro_f1") -> dict:
    """Closed-set accuracy (known test images) and macro-F1 with Other (per-class max-logit thresholds,
    openset.PerClassLogit fitted on val, section VI), on the test images selected by ``mask``."""
    from . import openset

    det = openset.PerClassLogit(rule=rule).fit(openset.Outputs(val_logits, val_labels))
    if mask is not None:
        test_logits, test_labels = test_logits[mask], test_labels[mask]
    data = openset.Outputs(test_logits, test_labels)
    m = openset.metrics(test_labels, det.predict(data), num_known=test_logits.shape[1],
                        known_pred=test_logits.argmax(1))
    return {"closed_set_accuracy": m["closed_set_accuracy"], "macro_f1": m["macro_f1"],
            "other_f1": m["other_f1"], "n": m["n"], "n_other": m["n_other"]}


def _fixed_photos(val, n: int) -> torch.Tensor:
    """n val images spread over the classes (every k-th image in the sorted file order): the same photos
    for every method and seed, so the grids can be compared."""
    idx = torch.linspace(0, len(val) - 1, steps=min(n, len(val))).round().long()
    return idx


def compare(data_dir: str | Path, *, seeds: Sequence[int] = (0, 1, 2), recipe: STNRecipe | None = None,
            methods: Sequence[str] = MODES, out_dir: str | Path | None = None,
            runs_root: str | Path = "data/runs", n_snapshot: int = 8,
            device: str = "auto", workers: int = 2, rule: str = "macro_f1", verbose: bool = True, **overrides):
    """Section VII's experiment: every method in ``methods`` ("resnet", "joint", "staged") on the same data
    with the same epochs, for each seed; returns a pandas DataFrame, one row per (method, slice) with the
    mean and std over seeds of closed-set accuracy and macro-F1 with Other ("all": the test set; "hard":
    its large-rotation / strong-perspective photos, when the data has a manifest).

    ``overrides`` are STNRecipe fields (e.g. ``epochs=8, image_size=96, input_size=192``). Everything is
    saved under ``out_dir`` (default ``<runs_root>/stn-<hash of config and data>``, runs_root beside the other
    training runs: a notebook passes ``nb.data_root / "runs"``) and reused when the same
    configuration was run before: ``config.json``, ``results.csv`` (one row per method, seed, slice),
    ``summary.csv`` (the returned table), ``history.csv`` (per epoch, method, seed: losses, accuracies,
    rates, mean zoom and angle of theta), ``outputs/<method>-seed<s>-<split>_{logits,labels}.npy``,
    ``snapshots/<method>-seed<s>.npz`` (epochs, theta, transformer outputs of the fixed photos) and
    ``snapshots/inputs.npz`` (those photos as the transformer receives them, uint8, and their paths).
    Read them back with ``load_comparison(summary.attrs["out_dir"])``.
    """
    import hashlib
    import json
    from dataclasses import replace

    import pandas as pd

    from . import runs as rruns
    from . import train as rtrain
    from .data import known_classes

    recipe = replace(recipe or STNRecipe(), **overrides)
    unknown = sorted(set(methods) - set(MODES))
    if unknown:
        raise ValueError(f"methods={list(methods)}: unknown {unknown}; expected some of {MODES}")
    # the classifier's whole train recipe is part of the identity (its optimiser, augmentation, precision
    # setting): a change of the fast recipe's defaults is a new comparison, not a stale cache hit
    config = {"recipe": asdict(recipe), "train_recipe": asdict(recipe.train_recipe()),
              "seeds": [int(s) for s in seeds], "methods": list(methods),
              "n_snapshot": n_snapshot, "rule": rule, "hard_rotation_deg": HARD_ROTATION_DEG,
              "hard_perspective": HARD_PERSPECTIVE, "data": rruns.data_fingerprint(data_dir)}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    out = Path(out_dir) if out_dir is not None else Path(runs_root) / f"stn-{digest}"
    if (out / "summary.csv").is_file() and (out / "config.json").is_file():
        old = rruns.read_json(out / "config.json")
        if json.dumps(old.get("identity"), sort_keys=True, default=str) == json.dumps(config, sort_keys=True, default=str):
            if verbose:
                print(f"[stn] reusing finished comparison {out}")
            summary = pd.read_csv(out / "summary.csv")
            summary.attrs["out_dir"] = str(out)
            return summary
        raise FileExistsError(f"{out} holds a comparison of another configuration; pass another out_dir or delete it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "outputs").mkdir(exist_ok=True)
    (out / "snapshots").mkdir(exist_ok=True)

    t_start = time.perf_counter()
    known = known_classes(data_dir)
    val = rtrain.CachedImages(data_dir, "val", known, recipe.input_size, workers=workers)
    test = rtrain.CachedImages(data_dir, "test", known, recipe.input_size, workers=workers)
    hard = hard_mask(data_dir, test.paths)
    snap_idx = _fixed_photos(val, n_snapshot)
    snap_x = rtrain.normalize_batch(val.images[snap_idx])
    np.savez(out / "snapshots" / "inputs.npz", images=val.images[snap_idx].permute(0, 2, 3, 1).numpy(),
             paths=np.array([val.paths[i] for i in snap_idx.tolist()]),
             labels=val.labels[snap_idx].numpy())
    train_caches: dict[int, object] = {}
    criterion = nn.CrossEntropyLoss()
    rows, history = [], []
    for seed in seeds:
        caches = {"val": val}
        if recipe.max_train_images is None and "any" in train_caches:
            caches["train"] = train_caches["any"]  # same images for every seed unless subsets differ per seed
        shared = None  # this seed's ResNet run after stage 1: staged branches off it (same result on CPU)
        for method in sorted(methods, key=MODES.index):  # resnet before staged, whatever order was given
            given = shared if method == "staged" else None
            res = train_stn(data_dir, recipe, mode=method, seed=seed, device=device, workers=workers,
                            snapshot_images=snap_x, caches=caches, verbose=verbose,
                            stage1=None if given is None else given[0])
            if recipe.max_train_images is None:
                train_caches["any"] = caches["train"]
            if given is not None:  # the shared stage-1 epochs belong to this method's curve too
                history += [{**row, "mode": method} for row in given[1]]
            elif method == "resnet" and recipe.stage2_epochs and res.stage1 is not None:
                shared = (res.stage1, [r for r in res.history if r["stage"] == "stage1"])
            history += res.history
            dev = next(res.model.parameters()).device
            outs = {}
            for split, images in (("val", val), ("test", test)):
                ev = rtrain.evaluate(res.model, criterion, images.batches(batch_size=64), dev, keep_outputs=True)
                outs[split] = ev
                rruns.save_npy(out / "outputs" / f"{method}-seed{seed}-{split}_logits.npy", ev["logits"].astype(np.float32))
                rruns.save_npy(out / "outputs" / f"{method}-seed{seed}-{split}_labels.npy", ev["labels"])
            slices = {"all": None, **({"hard": hard} if hard is not None else {})}
            for name, mask in slices.items():
                m = open_set_metrics(outs["val"]["logits"], outs["val"]["labels"], outs["test"]["logits"],
                                     outs["test"]["labels"], mask=mask, rule=rule)
                rows.append({"method": method, "seed": seed, "slice": name, **m})
            if res.snapshots:
                np.savez(out / "snapshots" / f"{method}-seed{seed}.npz", **res.snapshots)
            if verbose:
                r = rows[-len(slices)]
                print(f"[stn] {method} seed {seed}: test closed-set accuracy {r['closed_set_accuracy']:.4f}, "
                      f"macro-F1 with Other {r['macro_f1']:.4f}")
    results = pd.DataFrame(rows)
    summary = summarise(results)
    results.to_csv(out / "results.csv", index=False)
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    rruns.write_json(out / "config.json", {"identity": config, "data_dir": str(Path(data_dir).resolve()),
                                           "seconds": time.perf_counter() - t_start,
                                           "hard_slice_size": int(hard.sum()) if hard is not None else None,
                                           "test_size": len(test)})
    if verbose:
        print(f"[stn] comparison saved in {out} ({time.perf_counter() - t_start:.0f} s)")
    summary.attrs["out_dir"] = str(out)  # for load_comparison(summary.attrs["out_dir"])
    return summary


def summarise(results) -> "pd.DataFrame":
    """Mean and std over seeds per (slice, method) of the per-seed results table."""
    import pandas as pd

    order = {m: i for i, m in enumerate(MODES)}
    g = results.groupby(["slice", "method"], sort=False)
    summary = g.agg(accuracy_mean=("closed_set_accuracy", "mean"), accuracy_std=("closed_set_accuracy", "std"),
                    macro_f1_mean=("macro_f1", "mean"), macro_f1_std=("macro_f1", "std"),
                    seeds=("seed", "nunique"), n_test=("n", "first")).reset_index()
    summary["_o"] = summary["method"].map(order)
    return summary.sort_values(["slice", "_o"]).drop(columns="_o").reset_index(drop=True)


def load_comparison(out_dir: str | Path) -> dict:
    """A finished ``compare`` folder: summary, results, history (DataFrames), config, and snapshots
    {method-seed<s>: {epochs, theta, outputs}} plus the fixed input photos (uint8 HWC) for the grids."""
    import pandas as pd

    from . import runs as rruns

    out = Path(out_dir)
    if not (out / "summary.csv").is_file():
        raise FileNotFoundError(f"{out}: no summary.csv; run rl.stn.compare(...) with this out_dir first")
    snaps = {}
    for p in sorted((out / "snapshots").glob("*-seed*.npz")):
        with np.load(p, allow_pickle=False) as z:
            snaps[p.stem] = {k: z[k] for k in z.files}
    with np.load(out / "snapshots" / "inputs.npz", allow_pickle=False) as z:
        inputs = {k: z[k] for k in z.files}
    return {"summary": pd.read_csv(out / "summary.csv"), "results": pd.read_csv(out / "results.csv"),
            "history": pd.read_csv(out / "history.csv"), "config": rruns.read_json(out / "config.json"),
            "snapshots": snaps, "inputs": inputs}


def snapshot_grid(comparison: dict, key: str = "staged-seed0", *, epochs: Sequence[int] | None = None,
                  pad: int = 2) -> tuple[np.ndarray, list[str]]:
    """The slides' visualisation as one uint8 image: one row per fixed photo, first column the input the
    transformer receives (resized to the output size), then its output after each of ``epochs`` (default:
    all snapshots). ``comparison``: ``load_comparison(...)``; ``key``: "<method>-seed<s>". Returns the
    image and the column titles."""
    if key not in comparison["snapshots"]:
        raise KeyError(f"no snapshots {key!r}; available: {sorted(comparison['snapshots'])}")
    snap = comparison["snapshots"][key]
    all_epochs = [int(e) for e in snap["epochs"]]
    chosen = all_epochs if epochs is None else [int(e) for e in epochs]
    missing = sorted(set(chosen) - set(all_epochs))
    if missing:
        raise ValueError(f"epochs {missing} have no snapshot in {key!r}; available: {all_epochs}")
    outputs = snap["outputs"]  # [E, n, S, S, 3]
    n, s = outputs.shape[1], outputs.shape[2]
    inputs = torch.from_numpy(comparison["inputs"]["images"]).permute(0, 3, 1, 2).float()
    inputs = F.interpolate(inputs, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    inputs = inputs.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    columns = [inputs] + [outputs[all_epochs.index(e)] for e in chosen]
    grid = np.full((n * (s + pad) - pad, len(columns) * (s + pad) - pad, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(n):
            grid[i * (s + pad): i * (s + pad) + s, j * (s + pad): j * (s + pad) + s] = col[i]
    return grid, ["input"] + [f"epoch {e}" for e in chosen]


# ----------------------------------------------------------------------------------------------
# Reading a comparison (notebook 05): the table, a conclusion from its numbers, the figures
# ----------------------------------------------------------------------------------------------

METHOD_NAMES = STN_METHOD_NAMES
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
