"""The model: a spatial transformer (localisation net + affine grid + bilinear sampler) in front of a classifier.

    stn = SpatialTransformer("rts")                                  # rotation + scale + translation
    model = STNClassifier(stn, rl.models.resnet18(25, weights="none"), loc_size=64, out_size=96)
    logits = model(images_192px)        # localise on a 64 px copy, crop 96 px from the 192 px input
    model.transformed(images_192px)     # what the classifier sees (the slides' visualisation)
    model.theta                         # (N, 2, 3) of the last forward
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..data import IMAGENET_MEAN, IMAGENET_STD

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


def theta_scale_angle(theta: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the zoom sqrt|det| of theta's 2x2 part (< 1 = zoom in) and its rotation in degrees."""
    t = np.asarray(theta, dtype=np.float64)
    a = t[..., :2, :2]
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    angle = np.degrees(np.arctan2(a[..., 1, 0] - a[..., 0, 1], a[..., 0, 0] + a[..., 1, 1]))
    return np.sqrt(np.abs(det)), angle


# ----------------------------------------------------------------------------------------------
# The model of a mode, from an STNRecipe (training.py: image_size, loc_size, transform, the guard, weights)
# ----------------------------------------------------------------------------------------------

MODES = ("resnet", "joint", "staged")  # the three ways of training (training.train_stn); staged's stage 2 is "joint"


def build_model(recipe, num_classes: int, mode: str, *, classifier: nn.Module | None = None) -> nn.Module:
    """The model of a mode: ``ResizeClassifier`` for "resnet" (and stage 1), ``STNClassifier`` otherwise.
    ``recipe``: an ``STNRecipe``."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if classifier is None:
        classifier = models.build(models.ARCH, num_classes, weights=recipe.weights)
    if mode == "resnet":
        return ResizeClassifier(classifier, out_size=recipe.image_size)
    stn = SpatialTransformer(recipe.transform, scale_range=recipe.scale_range, max_translation=recipe.max_translation)
    return STNClassifier(stn, classifier, loc_size=recipe.loc_size, out_size=recipe.image_size,
                         guard_weight=recipe.guard_weight)


def stage2_model(stage1: nn.Module | dict | str | Path, recipe, num_classes: int) -> STNClassifier:
    """Staged training, start of stage 2: a fresh identity transformer in front of the stage-1 classifier.

    ``stage1``: the stage-1 model (its ``.classifier`` module is reused, not copied), a ResNet18 state dict,
    or a path to weights / a receiptlib checkpoint (e.g. ``run.checkpoint_path("best")`` of a plain run).
    ``recipe``: an ``STNRecipe``.
    """
    if isinstance(stage1, nn.Module):
        classifier = getattr(stage1, "classifier", stage1)
    else:
        classifier = models.build(models.ARCH, num_classes, weights="none")
        if isinstance(stage1, dict):
            state, source = stage1, "stage-1 state dict"
        else:
            state, source = models.file_state_dict(Path(stage1)), f"stage-1 weights {stage1}"
        if "fc.weight" in state and state["fc.weight"].shape[0] != num_classes:
            raise ValueError(f"{source} has {state['fc.weight'].shape[0]} outputs; the data has {num_classes} known classes")
        models.load_backbone_state(classifier, state, source)
    return build_model(recipe, num_classes, "joint", classifier=classifier)
