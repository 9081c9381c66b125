"""Atomic writes: every artifact of the package (run files, results, thresholds, caches, predictions) goes
through here.

A kill at any moment leaves either the old file or the new one, never half of one: each writer writes a
hidden temporary file next to the target and renames it over the target (``os.replace`` is atomic on POSIX
and Windows within one file system).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .common import jsonable


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden, and "*.tmp" finds leftovers


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and rename the result over ``path``; the temporary file goes on failure."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | Path, obj) -> Path:
    # jsonable: numpy values become numbers and NaN becomes null, so the file is strict JSON for any reader
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_torch(path: str | Path, obj) -> Path:
    import torch  # lazy: openset/ and the results readers write files without needing torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    return atomic_write(path, write)


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def write_csv(path: str | Path, frame, **to_csv_kwargs) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given)."""
    to_csv_kwargs.setdefault("index", False)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, **to_csv_kwargs))
