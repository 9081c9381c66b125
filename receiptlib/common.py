"""Small shared pieces: the reserved Other class, device choice, seeding, progress bars."""
from __future__ import annotations

import math
import os
import random
import sys
from pathlib import Path
from typing import Iterable, TypeVar

import numpy as np

OTHER = "Other"  # reserved class name: unknown chains; its label index is len(known classes)
# Display names of section VII's methods: here so the README summary (report.py) needs no torch import
STN_METHOD_NAMES = {"resnet": "ResNet alone", "joint": "joint", "staged": "staged"}

T = TypeVar("T")


def pick_device(device: str = "auto"):
    """Return a torch.device: "auto" takes CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use device='auto' or 'cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return torch.device(device)


def native_bf16(device) -> bool:
    """Whether `device` runs bf16 in hardware: a CUDA GPU with bf16 units (Ampere and later), or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated: measured on an AVX2-only EPYC (torch 2.14), ResNet18
    training ran 13x and inference 8x slower under bf16 autocast than in fp32, so "auto" choices avoid it."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:  # private probes of torch's CPU feature detection (cpuinfo); absent means "do not count on it"
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def interactive() -> bool:
    """True in a terminal or an interactive Jupyter kernel; False under CI, papermill via our runner, or pipes.

    RECEIPTLIB_PROGRESS=0/1 forces the answer (the report runner and the tests set 0): tqdm.auto's widget
    bars stall under papermill, so bars here are always plain text and off when nobody watches.
    """
    forced = os.environ.get("RECEIPTLIB_PROGRESS")
    if forced is not None:
        return forced not in ("0", "false", "no", "")
    if os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], **kwargs) -> Iterable[T]:
    """A text progress bar when someone is watching, else the bare iterable."""
    if not interactive():
        return iterable
    from tqdm.std import tqdm

    return tqdm(iterable, **kwargs)


def jsonable(value):
    """Plain-JSON copy of results: numpy scalars and arrays become numbers and lists, NaN becomes null."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
