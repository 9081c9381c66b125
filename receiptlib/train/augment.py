"""Batched augmentation on tensors: the fast pipeline's rotation, zoom, shift and ColorJitter in one pass.

The same steps as data.train_transform (torchvision, per image), about 10x cheaper: parameters are drawn
per image from a seeded generator (`draw_augment`), applied to a uint8 batch with one `grid_sample` and one
colour matrix per image (`augment_batch`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..data import IMAGENET_MEAN, IMAGENET_STD
from .recipe import Recipe



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


def augment_batch(images: torch.Tensor, params: dict[str, torch.Tensor], *, out_size: int | None = None,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """The paper's augmentation, batched: uint8 (N, 3, H, W) images, already resized -> rotated (bilinear,
    black corners, like RandomRotation; with the optional zoom and shift in the same resampling) ->
    ColorJitter (`colour_matrices`) -> float32 normalised by mean / std (N, 3, out_size, out_size). About 10x
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
    std, mean = torch.tensor(std).to(x.device), torch.tensor(mean).to(x.device)
    x = torch.baddbmm(offset.to(x.device).unsqueeze(2), matrix.to(x.device) / 255, x.view(n, 3, -1))
    x = x.clamp_(0, 1).sub_(mean.view(1, 3, 1)).div_(std.view(1, 3, 1))
    return x.view(n, 3, out, out)


def normalize_batch(images: torch.Tensor, *, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float32 (ImageNet's statistics by default): data.eval_transform after
    its Resize."""
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (images.float().div_(255) - mean_t.to(images.device)) / std_t.to(images.device)


