"""The transform presets of section V (resize, rotation +-30 degrees, ColorJitter, ImageNet normalisation).
Reading photos (EXIF orientation, draft decoding, decompression bombs, clear errors) lives in the torch-free
`receiptlib.photos` and is re-exported here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..photos import (IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS, ImageReadError, is_image_file,
                      read_image, to_rgb)

__all__ = ["IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_PIXELS", "ImageReadError", "Jitter", "denormalize",
           "eval_transform", "is_image_file", "read_image", "to_rgb", "train_transform"]


# ----------------------------------------------------------------------------------------------
# Transform presets (section V: resize to 224x224, rotation +-30 degrees, ColorJitter, ImageNet normalisation)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Jitter:
    """ColorJitter strengths. The paper calls ``ColorJitter()``, whose torchvision defaults are all zero
    (a no-op); these are the common ImageNet-recipe strengths, so the augmentation does what the paper says
    it does ("random changes of contrast, sharpness, colour")."""

    brightness: float = 0.4  # receipts photographed under uneven indoor lighting
    contrast: float = 0.4    # faded thermal paper vs. fresh print
    saturation: float = 0.4  # coloured logos, tinted paper
    hue: float = 0.1         # small: a chain's logo colour is part of its identity


def train_transform(*, image_size: int = 224, rotation: float = 30.0,
                    jitter: Jitter | tuple[float, float, float, float] | None = Jitter(),
                    fill: int | tuple[int, int, int] = 0, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD):
    """The paper's training augmentation, re-drawn at every load.

    Resize to ``image_size`` x ``image_size`` FIRST (rotating the full photo and then shrinking it costs
    many times more), then a random rotation in [-rotation, +rotation] degrees, ColorJitter, ToTensor and
    normalisation by ``mean`` / ``std`` (ImageNet's by default; a backbone's own: models.Architecture).
    ``jitter=None`` turns jitter off. ``fill`` colours the corners the rotation
    uncovers. The returned Compose carries ``image_size`` so datasets can ask ``read_image`` for JPEG
    draft decoding at that size.
    """
    from torchvision import transforms as T

    _check_size(image_size)
    steps: list[Any] = [T.Resize((image_size, image_size))]
    if rotation:
        if rotation < 0:
            raise ValueError(f"rotation={rotation}: expected degrees >= 0 (the range is [-rotation, +rotation])")
        steps.append(T.RandomRotation(rotation, interpolation=T.InterpolationMode.BILINEAR, fill=fill))
    if jitter is not None:
        j = jitter if isinstance(jitter, Jitter) else Jitter(*jitter)
        if any((j.brightness, j.contrast, j.saturation, j.hue)):
            steps.append(T.ColorJitter(j.brightness, j.contrast, j.saturation, j.hue))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    t = T.Compose(steps)
    t.image_size = image_size
    return t


def eval_transform(*, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Evaluation preset: resize to ``image_size`` x ``image_size``, ToTensor, normalisation by ``mean`` / ``std``
    (ImageNet's by default)."""
    from torchvision import transforms as T

    _check_size(image_size)
    t = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])
    t.image_size = image_size
    return t


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size={image_size!r}: expected an int >= 8 (the paper uses 224)")


def denormalize(x, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Undo the normalisation (ImageNet's by default) of a (3, H, W) or (N, 3, H, W) tensor, clipped to [0, 1],
    for previews."""
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
