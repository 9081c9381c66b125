"""Folder data sets, transform presets and robust image reading (paper section V).

Layout on disk: ``ROOT/{train,val,test}/<ClassName>/*.jpg``. Known classes are the subfolders of
``train/`` sorted by name; ``Other`` (unknown chains) appears in val and test only and gets the label
``len(known_classes)``.

Bad files never crash deep inside a DataLoader worker: ``make_loader`` catches ``ImageReadError`` in
the worker, ships the failure to the main process as data, and there either raises one clear
``ImageReadError`` naming the file (``on_error="raise"``) or records it in ``loader.failures`` and
logs it (``on_error="skip"``).
"""
from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from .common import OTHER

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")

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
                    fill: int | tuple[int, int, int] = 0):
    """The paper's training augmentation, re-drawn at every load.

    Resize to ``image_size`` x ``image_size`` FIRST (rotating the full photo and then shrinking it costs
    many times more), then a random rotation in [-rotation, +rotation] degrees, ColorJitter, ToTensor and
    ImageNet normalisation. ``jitter=None`` turns jitter off. ``fill`` colours the corners the rotation
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
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    t = T.Compose(steps)
    t.image_size = image_size
    return t


def eval_transform(*, image_size: int = 224):
    """Evaluation preset: resize to ``image_size`` x ``image_size``, ToTensor, ImageNet normalisation."""
    from torchvision import transforms as T

    _check_size(image_size)
    t = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    t.image_size = image_size
    return t


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size={image_size!r}: expected an int >= 8 (the paper uses 224)")


def denormalize(x):
    """Undo the ImageNet normalisation of a (3, H, W) or (N, 3, H, W) tensor, clipped to [0, 1], for previews."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Folder data sets
# ----------------------------------------------------------------------------------------------

def _visible_dirs(folder: Path) -> list[Path]:
    # hidden folders (.ipynb_checkpoints, .DS_Store junk) are never classes
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path for a deterministic order."""
    files = [p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def known_classes(root: str | Path) -> list[str]:
    """The known classes: subfolders of ``root/train/`` sorted by name. ``Other`` may not be one."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{train}: no train/ folder; expected {Path(root)}/train/<ClassName>/*.jpg "
                                "(generate data with `receiptlib synth` or point at your photo folder)")
    classes = [p.name for p in _visible_dirs(train)]
    if not classes:
        raise ValueError(f"{train}: no class subfolders; expected {train}/<ClassName>/*.jpg")
    if OTHER in classes:
        raise ValueError(f"{train / OTHER}: '{OTHER}' is the reserved class of unknown chains and appears in "
                         "val and test only; move those photos out of train/")
    return classes


def class_names(root: str | Path) -> list[str]:
    """Known classes plus ``Other`` last: the label list saved with every run."""
    return known_classes(root) + [OTHER]


def _as_known(classes: Sequence[str]) -> list[str]:
    known = list(classes)
    if known and known[-1] == OTHER:  # accept a saved class_names list too
        known = known[:-1]
    if OTHER in known:
        raise ValueError(f"classes: '{OTHER}' may only appear last (it is the reserved label len(known))")
    if len(set(known)) != len(known):
        dup = sorted({c for c in known if known.count(c) > 1})
        raise ValueError(f"classes: duplicate names {dup}")
    if not known:
        raise ValueError("classes: empty list of known classes")
    return known


class Failed(NamedTuple):
    """What a loader worker returns instead of raising when a file cannot be read."""

    index: int
    path: str
    error: str


class ReceiptFolder(Dataset):
    """A map-style torch Dataset over ``root/<split>/<Class>/*`` images yielding ``(tensor, label)``.

    ``classes``: the known classes (default: ``known_classes(root)``; a saved ``class_names`` list with
    ``Other`` last is accepted too). Every class folder of the split must be one of them or ``Other``.
    ``transform``: applied to the PIL RGB image (default ``eval_transform()``); if it carries
    ``image_size``, JPEGs are decoded in draft mode at that size (``draft_size="auto"``).
    ``on_error``: "raise" raises ``ImageReadError`` naming the file; "skip" drops unreadable files when
    loaded through ``make_loader`` (files are not checked up front: that would read every image twice).
    Direct indexing ``ds[i]`` always raises ``ImageReadError`` on a bad file.
    """

    def __init__(self, root: str | Path, split: str, *, classes: Sequence[str] | None = None,
                 transform: Callable | None = None, on_error: str = "raise",
                 draft_size: int | tuple[int, int] | str | None = "auto"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
        self.root = Path(root)
        self.split = split
        self.known_classes = _as_known(classes) if classes is not None else known_classes(self.root)
        self.classes = self.known_classes + [OTHER]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform if transform is not None else eval_transform()
        self.on_error = on_error
        if draft_size == "auto":
            s = getattr(self.transform, "image_size", None)
            draft_size = (s, s) if s else None
        self.draft_size = draft_size

        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: split folder missing; expected {folder}/<ClassName>/*.jpg")
        samples: list[tuple[str, int]] = []
        for d in _visible_dirs(folder):
            if d.name not in self.class_to_idx:
                raise ValueError(f"{d}: class '{d.name}' is in {split}/ but not among the known classes "
                                 f"(the subfolders of train/); add it to train/ or move these photos to {split}/{OTHER}/")
            if split == "train" and d.name == OTHER:
                raise ValueError(f"{d}: '{OTHER}' is reserved for val and test")
            label = self.class_to_idx[d.name]
            samples += [(str(p), label) for p in _image_files(d)]
        if not samples:
            raise ValueError(f"{folder}: no images (extensions {', '.join(IMAGE_EXTENSIONS)}) in its class subfolders")
        self.samples = samples
        self.targets = [label for _, label in samples]

    @property
    def other_label(self) -> int:
        return len(self.known_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """The upright RGB image of sample ``index`` (before the transform)."""
        return read_image(self.samples[index][0], draft_size=self.draft_size)

    def __getitem__(self, index: int):
        img = self.load(index)
        return self.transform(img), self.samples[index][1]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def __repr__(self) -> str:
        return (f"ReceiptFolder({str(self.root)!r}, {self.split!r}: {len(self)} images, "
                f"{len(self.known_classes)} known classes + {OTHER})")


# ----------------------------------------------------------------------------------------------
# Loaders: deterministic, failures travel as data
# ----------------------------------------------------------------------------------------------

def _item_seed(seed: int, epoch: int, index: int) -> int:
    # One independent stream per (seed, epoch, image): the augmentation of an image does not depend on
    # the number of workers or on which worker loads it.
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _SafeView:
    """Wraps a dataset for ``make_loader``: ImageReadError becomes a ``Failed`` item; optional per-item seeding."""

    def __init__(self, dataset, seed: int | None, epoch: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            if self.seed is None:
                x, y = self.dataset[index]
            else:
                s = _item_seed(self.seed, self.epoch, index)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(s)
                    py_state = random.getstate()
                    random.seed(s)
                    try:
                        x, y = self.dataset[index]
                    finally:
                        random.setstate(py_state)
        except ImageReadError as e:
            return Failed(int(index), e.path, str(e))
        return x, y, index


def collate_skip_failed(items):
    """Collate (x, y, index) items and ``Failed`` sentinels into ``(x, y, index, failures)``.

    ``x`` is None when every item of the batch failed.
    """
    ok = [it for it in items if not isinstance(it, Failed)]
    failures = [it for it in items if isinstance(it, Failed)]
    if not ok:
        return None, None, None, failures
    x = torch.stack([it[0] for it in ok])
    y = torch.as_tensor([int(it[1]) for it in ok], dtype=torch.long)
    idx = torch.as_tensor([int(it[2]) for it in ok], dtype=torch.long)
    return x, y, idx, failures


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive Python and NumPy seeds from it too
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class ReceiptLoader:
    """Iterable over batches ``(x, y)`` (or ``(x, y, index)`` with ``with_index=True``).

    Each ``iter()`` is one epoch: shuffling and augmentation depend only on ``(seed, epoch)``, so a run is
    reproducible on CPU whatever the number of workers. Unreadable files: ``on_error="raise"`` raises one
    ``ImageReadError`` in the main process naming the file; ``"skip"`` drops them from the batch, appends
    them to ``failures`` (list of ``Failed``; ``epoch_failures`` for the last epoch only) and logs a warning
    per file (``log_failures=False`` leaves reporting to the caller).
    """

    def __init__(self, dataset, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int | None = 0,
                 on_error: str | None = None, with_index: bool = False, drop_last: bool = False,
                 pin_memory: bool = False, epoch: int = 0, log_failures: bool = True):
        if on_error is None:
            on_error = getattr(dataset, "on_error", "raise")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        if workers < 0:
            raise ValueError(f"workers={workers}: expected >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.workers = workers
        self.seed = seed
        self.on_error = on_error
        self.with_index = with_index
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.epoch = epoch  # the epoch the next iter() will run; set it to resume
        self.log_failures = log_failures
        self.failures: list[Failed] = []
        self.epoch_failures: list[Failed] = []

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _loader(self, epoch: int):
        gen = None
        if self.seed is not None:
            gen = torch.Generator()
            gen.manual_seed(_item_seed(self.seed, epoch, 2**31))  # the shuffle order's own stream
        return DataLoader(_SafeView(self.dataset, self.seed, epoch), batch_size=self.batch_size,
                          shuffle=self.shuffle, num_workers=self.workers, collate_fn=collate_skip_failed,
                          generator=gen, worker_init_fn=_seed_worker if self.workers else None,
                          drop_last=self.drop_last, pin_memory=self.pin_memory)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        self.epoch_failures = []
        for x, y, idx, failures in self._loader(epoch):
            if failures:
                if self.on_error == "raise":
                    others = f" (and {len(failures) - 1} more unreadable files in this batch)" if len(failures) > 1 else ""
                    f = failures[0]
                    raise ImageReadError(f.path, f.error[len(f.path) + 2:] + others
                                         + "; pass on_error='skip' to skip unreadable files")
                for f in failures if self.log_failures else ():
                    log.warning("skipped unreadable image: %s", f.error)
                self.epoch_failures += failures
                self.failures += failures
            if x is None:
                continue
            yield (x, y, idx) if self.with_index else (x, y)


def make_loader(dataset, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int | None = 0,
                on_error: str | None = None, with_index: bool = False, drop_last: bool = False,
                pin_memory: bool = False, epoch: int = 0, log_failures: bool = True) -> ReceiptLoader:
    """A deterministic batch loader over ``dataset`` that reports bad files instead of crashing in a worker.

    ``seed=None`` leaves shuffling and augmentation to torch's global RNG. ``on_error`` defaults to the
    dataset's own ``on_error`` ("raise" if it has none). See ``ReceiptLoader``.
    """
    return ReceiptLoader(dataset, batch_size=batch_size, shuffle=shuffle, workers=workers, seed=seed,
                         on_error=on_error, with_index=with_index, drop_last=drop_last,
                         pin_memory=pin_memory, epoch=epoch, log_failures=log_failures)
