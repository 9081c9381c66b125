"""The model: a spatial transformer (localisation net + affine grid + bilinear sampler) in front of a classifier.

    stn = SpatialTransformer("rts", aspect=4 / 3)                   # rotation + scale + translation
    model = STNClassifier(stn, classifier, loc_size=64, out_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    logits = model(views_192px)         # raw [0, 1] views: localise on a 64 px copy, crop 64 px from the view
    model.transformed(views_192px)      # what the classifier sees (the slides' visualisation)
    model.theta                         # (N, 2, 3) of the last forward
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .geometry import pixel_scale_angle, rigid_theta

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

    ``aspect``: the photo's height / width. Every image in the library is a square resize of its photo; with
    the aspect the "rts" rotation turns the photo's pixels rigidly (``geometry.rigid_theta``) instead of
    shearing the receipt.

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
                 hidden: int = 64, scale_range: tuple[float, float] = (0.4, 1.25), max_translation: float = 0.5,
                 aspect: float = 1.0):
        super().__init__()
        if not aspect > 0:
            raise ValueError(f"aspect={aspect}: expected the photo's height / width, > 0")
        self.aspect = float(aspect)
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
        # rigid in the photo's pixels although the image is a square resize of it (geometry.rigid_theta)
        return rigid_theta(angle, scale, t[:, 0], t[:, 1], aspect=self.aspect)

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
    def sample(source: torch.Tensor, theta: torch.Tensor, out_size: int | Sequence[int]) -> torch.Tensor:
        """Bilinear sample of ``source`` (N, C, H, W) through ``theta`` at ``out_size``; points outside the
        input read 0. Give it raw pixels in [0, 1] and normalise after: the outside is then black, like the
        corners the rotation augmentation leaves, whatever the backbone's normalisation."""
        h, w = _pair(out_size)
        n, c = source.shape[:2]
        grid = F.affine_grid(theta.to(source.dtype), [n, c, h, w], align_corners=False)
        return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x: torch.Tensor, out_size: int | Sequence[int] | None = None, *,
                source: torch.Tensor | None = None) -> torch.Tensor:
        """Localise on ``x``, sample ``source`` (default ``x``) at ``out_size`` (default x's size)."""
        theta = self.localise(x)
        src = x if source is None else source
        return self.sample(src, theta, out_size if out_size is not None else tuple(x.shape[-2:]))


class Normalise(nn.Module):
    """(x - mean) / std per channel, for raw [0, 1] images: the backbone's preprocessing, applied after sampling."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class STNClassifier(nn.Module):
    """A spatial transformer that localises on a high-resolution view of the photo and samples the classifier's
    low-resolution input from it.

    Input: raw views (N, 3, V, V) in [0, 1] (a square resize of each photo, V of about 2-3 x out_size). The
    localisation net looks at a copy resized to ``loc_size`` (cheap; normalised like the classifier's input);
    the crop is sampled from the raw view at ``out_size``, then normalised and classified. Zooming in (scale
    < 1) then reads real detail instead of upsampling a small image: Jaderberg et al.'s 448 -> 224 px set-up.
    At the identity the crop is the whole view resized by bilinear sampling, exactly ``ResizeClassifier``'s
    input (``F.interpolate``, ``align_corners=False``, no antialiasing).

    Exposes ``.classifier`` (so ``rl.models.features_and_logits`` hooks its final layer), ``.stn``, ``theta`` of
    the last forward and ``transformed(views)`` (the raw crops) for the input/output grid.
    """

    def __init__(self, stn: SpatialTransformer, classifier: nn.Module, *, loc_size: int | Sequence[int],
                 out_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 guard_weight: float = 1.0):
        super().__init__()
        self.stn = stn
        self.classifier = classifier
        self.normalise = Normalise(mean, std)
        self.loc_size = _pair(loc_size)
        self.out_size = _pair(out_size)
        self.guard_weight = float(guard_weight)  # weight of the soft guard (affine) in the loss

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
        """The transformer's output at ``out_size``, raw [0, 1] (differentiable).

        Runs in float32 even under autocast: the transformer is cheap, and a bf16 theta would move the
        crop by whole pixels (bf16 keeps ~3 significant digits); only the classifier runs in low precision.
        """
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            x_loc = x
            if tuple(x.shape[-2:]) != self.loc_size:
                x_loc = F.interpolate(x, size=self.loc_size, mode="bilinear", align_corners=False, antialias=True)
            return self.stn(self.normalise(x_loc), self.out_size, source=x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_channels_last(self.normalise(self.crop(x))))

    def regularisation(self) -> torch.Tensor:
        """The guard term of the last forward to add to the loss (0 for the bounded "rts" transform)."""
        return self.guard_weight * self.stn.penalty

    @torch.no_grad()
    def transformed(self, views: torch.Tensor) -> torch.Tensor:
        """What the classifier sees, before normalisation: raw crops (N, 3, out_size) of raw views."""
        return self.crop(views)


class ResizeClassifier(nn.Module):
    """The classifier alone on the same raw views, resized to ``out_size`` and normalised: arm A (no
    transformer) and stage 1. The resize is exactly the identity transform of ``STNClassifier`` (bilinear,
    ``align_corners=False``, no antialiasing), so an identity transformer hands the classifier the very images
    it was trained on."""

    def __init__(self, classifier: nn.Module, *, out_size: int | Sequence[int], mean: Sequence[float],
                 std: Sequence[float]):
        super().__init__()
        self.classifier = classifier
        self.normalise = Normalise(mean, std)
        self.out_size = _pair(out_size)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.out_size:
            return x.float()
        return F.interpolate(x.float(), size=self.out_size, mode="bilinear", align_corners=False, antialias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_channels_last(self.normalise(self.crop(x))))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """The classifier's input in channels_last: with its weights in that format (``training.wrap``), about 1.8x
    faster convolutions on a CPU (measured on Lite0 at 160 px, batch 32); the same numbers either way."""
    return x.contiguous(memory_format=torch.channels_last)


def theta_scale_angle(theta, *, aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the zoom sqrt|det| of theta's 2x2 part in the photo's pixels (< 1 = zoom in) and its
    rotation in degrees (``geometry.pixel_scale_angle``)."""
    return pixel_scale_angle(theta, aspect=aspect)
