"""Reading photos and preparing them for a model, without torch: what `predict` needs on the ONNX Runtime
path, and what data/ builds its torch data sets on.

- `read_image`: robust reading (EXIF orientation, JPEG draft decoding, decompression bombs, errors that name
  the file);
- `image_files`: a folder walked once, symlinked folders included, in a stable order;
- `Preprocessing`: a model's input rule (size, resize, mean, std), as recorded in its run and artefact;
  ``prep.array(path)`` gives the same float32 pixels as ``data.eval_transform`` does after ``read_image``.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps


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
# Folders
# ----------------------------------------------------------------------------------------------

def image_files(folder: str | Path, *, recursive: bool = True, unreadable: list | None = None) -> list[Path]:
    """Image files under ``folder``, sorted by relative path for a deterministic order; hidden files and
    folders skipped. One walk (``os.scandir``, entries in name order), descending into symlinked folders too
    (photo collections are often links to another disk), each real folder once, so a link cycle ends.
    A folder that cannot be listed is logged and, given a list ``unreadable``, appended to it as
    ``(path, error message)``."""
    folder = Path(folder)
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def walk(d: Path, rel: str) -> None:
        real = os.path.realpath(d)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:  # an unreadable subfolder: its photos cannot be listed, the rest still are
            message = f"{d}: cannot list folder ({e.strerror or e})"
            log.warning(message)
            if unreadable is not None:
                unreadable.append((d, message))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            name = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir():  # follows symlinks
                if recursive:
                    walk(Path(e.path), name)
            elif e.is_file() and is_image_file(e.name):
                found.append((name, Path(e.path)))

    walk(folder, "")
    return [p for _, p in sorted(found, key=lambda item: item[0])]


# ----------------------------------------------------------------------------------------------
# A model's input rule
# ----------------------------------------------------------------------------------------------

RESIZE_RULES = ("stretch",)  # the whole photo to image_size x image_size, aspect not kept (the paper's Resize(224))


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: JPEG draft decoding to at least ``image_size``, the whole photo resized to
    ``image_size`` x ``image_size`` (PIL bilinear, aspect not kept), RGB scaled to [0, 1], then
    ``(x - mean) / std`` per channel, channels first (N, 3, H, W) float32."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "stretch"

    def __post_init__(self):
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 8:
            raise ValueError(f"image_size={self.image_size!r}: expected an int >= 8")
        for name in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected three values (R, G, B)")
            object.__setattr__(self, name, v)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std}: every value must be > 0")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize={self.resize!r}: expected one of {RESIZE_RULES}")

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "preprocessing") -> "Preprocessing":
        if not isinstance(d, dict) or "image_size" not in d:
            raise ValueError(f"{where}: expected an object with image_size, mean, std, resize; got {d!r}")
        try:
            return cls(image_size=d["image_size"], mean=tuple(d.get("mean", IMAGENET_MEAN)),
                       std=tuple(d.get("std", IMAGENET_STD)), resize=d.get("resize", "stretch"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    def resized(self, img: Image.Image) -> Image.Image:
        """The photo at the model's size (torchvision's Resize((s, s)) on a PIL image does exactly this)."""
        s = self.image_size
        return img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, H, W) float32, in ToTensor's then Normalize's order of operations."""
        x = rgb.astype(np.float32) / np.float32(255)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def array(self, path: str | Path) -> np.ndarray:
        """The model input of one photo, (3, image_size, image_size) float32; ``ImageReadError`` names a bad file.
        Nothing is decoded at a resolution the model never sees beyond JPEG's 1/8 steps (draft mode)."""
        img = read_image(path, draft_size=self.image_size)
        return self.normalise(np.asarray(self.resized(img)))


def parse_quad(text: str, size: tuple[int, int], *, where: str = "quad") -> list[tuple[float, float]]:
    """A manifest quad ('x0 y0 ... x3 y3' as fractions of the frame) as four pixel corners of an image of ``size``."""
    try:
        v = [float(t) for t in str(text).split()]
    except ValueError:
        v = []
    if len(v) != 8:
        raise ValueError(f"{where}: expected 8 numbers (x y of four corners, as fractions of the frame), got {text!r}")
    w, h = size
    return [(v[i] * w, v[i + 1] * h) for i in range(0, 8, 2)]


def mask_quads(img: Image.Image, cover: list, paper: list) -> Image.Image:
    """``img`` with the quads in ``cover`` filled by the median colour of the quads in ``paper`` (the receipt as
    the photo shows it: mostly blank paper under the photo's light), so a masked region reads as blank paper."""
    area = Image.new("L", img.size, 0)
    draw = ImageDraw.Draw(area)
    for quad in paper:
        draw.polygon(quad, fill=255)
    rgb = np.asarray(img)
    inside = np.asarray(area) > 0
    fill = tuple(int(c) for c in (np.median(rgb[inside], 0) if inside.any() else np.median(rgb.reshape(-1, 3), 0)))
    out = img.copy()
    draw = ImageDraw.Draw(out)
    for quad in cover:
        draw.polygon(quad, fill=fill)
    return out
