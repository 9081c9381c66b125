"""Folder data sets: ``ROOT/{train,val,test}/<ClassName>/*.jpg``, the known classes, ``ReceiptFolder``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..common import OTHER, as_known_classes
from ..photos import IMAGE_EXTENSIONS, image_files, read_image
from .images import eval_transform

# ----------------------------------------------------------------------------------------------
# Folder data sets
# ----------------------------------------------------------------------------------------------

def _visible_dirs(folder: Path) -> list[Path]:
    # hidden folders (.ipynb_checkpoints, .DS_Store junk) are never classes
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


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
        self.known_classes = as_known_classes(classes) if classes is not None else known_classes(self.root)
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
            samples += [(str(p), label) for p in image_files(d)]
        if not samples:
            raise ValueError(f"{folder}: no images (extensions {', '.join(IMAGE_EXTENSIONS)}) in its class subfolders")
        self.samples = samples
        self.targets = [label for _, label in samples]

    def keep(self, indices: Sequence[int]) -> "ReceiptFolder":
        """Keep only the samples at ``indices`` (in that order): a fixed subset of the split."""
        self.samples = [self.samples[i] for i in indices]
        self.targets = [label for _, label in self.samples]
        return self

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


class PathDataset(Dataset):
    """Images from a list of paths (no folder layout): ``(tensor, 0)`` items, or the tensor alone with
    ``with_label=False``. JPEGs are decoded in draft mode at the transform's ``image_size`` (or ``draft_size``);
    a bad file raises ``ImageReadError`` (``make_loader`` turns it into a reported failure)."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable, draft_size: int | None = None, *,
                 with_label: bool = True):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        s = draft_size if draft_size is not None else getattr(transform, "image_size", None)
        self.draft_size = (s, s) if s else None
        self.with_label = with_label

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        x = self.transform(read_image(self.paths[index], draft_size=self.draft_size))
        return (x, 0) if self.with_label else x
