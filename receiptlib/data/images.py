"""Reading photos robustly (EXIF orientation, draft decoding, decompression bombs, clear errors) and the
transform presets of section V (resize, rotation +-30 degrees, ColorJitter, ImageNet normalisation)."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps


log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# ImageNet statistics: the paper fine-tunes an ImageNet-pretrained ResNet18 and normalises "to ResNet's standard".
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Largest photo we agree to decode: 120 MP covers full-resolution 108 MP phone sensors; a decompression
# bomb claims far more (a 120 MP RGB image already takes 360 MB decoded). Pillow's own warning (at
# 89 MP) is superseded by this check; its hard error (at 2 x Image.MAX_IMAGE_PIXELS) still applies.
MAX_PIXELS = 120_000_000


# ----------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------

class ImageReadError(ValueError):
    """A file that cannot be read as an image. The message starts with the file path."""

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:  # one-argument form: torch's DataLoader re-raises worker errors as type(e)(message)
            path, _, reason = str(path).partition(": ")
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes despite the two-argument __init__
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | Path) -> bool:
    """True for a visible file whose extension is one of IMAGE_EXTENSIONS (any case)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def read_image(path: str | Path, *, draft_size: int | tuple[int, int] | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Read an image file as 8-bit RGB, upright, or raise ``ImageReadError`` naming the file.

    - EXIF orientation is applied (phone photos are often stored sideways with an Orientation tag).
    - Greyscale, palette, RGBA/LA (composited on white, like paper), CMYK and 16-bit images become RGB;
      16-bit values are scaled to 0..255, not clipped.
    - ``draft_size`` (w, h) or an int for a square: JPEGs decode at the largest 1/2, 1/4 or 1/8 scale
      still at least that big, which is most of the speed-up on large photos (the result is then
      resized anyway; see ``train_transform``). Other formats ignore it.
    - ``max_pixels`` (default ``MAX_PIXELS``): larger images are refused as decompression bombs.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot access file ({e.strerror or e})") from None
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes); re-copy or delete it")
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning; its DecompressionBombError still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > limit:
                    raise ImageReadError(path, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {limit:,} "
                                               "(possible decompression bomb); scale the image down or raise max_pixels")
                if draft_size is not None and img.format == "JPEG":
                    dw, dh = (draft_size, draft_size) if isinstance(draft_size, int) else draft_size
                    img.draft("RGB", (int(dw), int(dh)))
                img.load()  # decode now, inside the try: truncated JPEGs only fail here
                img = _upright(img)
                return to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb refused by Pillow ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image file, or a format Pillow cannot read "
                                   f"(first bytes: {_head(path)!r})") from None
    except (OSError, SyntaxError, EOFError) as e:
        msg = str(e)
        what = "truncated image data" if "truncated" in msg.lower() else "corrupt image data"
        raise ImageReadError(path, f"{what} ({type(e).__name__}: {msg})") from None
    except Exception as e:  # any other decoder failure: still name the file, never a bare traceback
        raise ImageReadError(path, f"cannot decode image ({type(e).__name__}: {e})") from None


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a corrupt EXIF block should not cost us the pixels: keep the stored orientation
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit scaled)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG, TIFF): scale 0..65535 to 0..255 instead of letting convert() clip at 255.
        a = np.asarray(img).astype(np.float64)
        a = np.clip(a, 0, 65535) / 257.0
        return Image.fromarray(np.rint(a).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.rint(a).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...


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
