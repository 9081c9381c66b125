"""Small shared pieces: the reserved Other class, the splits, device choice, named seed streams, median timing,
progress bars, plain-JSON values. Imports nothing of the package: every other module may use it."""
from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

OTHER = "Other"  # reserved class name: unknown chains; its label index is len(known classes)
SPLITS = ("train", "val", "test")  # the folders of a data set, in this order everywhere

T = TypeVar("T")


def as_known_classes(classes: Sequence[str]) -> list[str]:
    """The known classes of a class list, checked; a saved list with ``Other`` last is accepted."""
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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% at z = 1.96): sound near 0 and 1, where accuracies and error
    rates of small slices sit; (nan, nan) for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the bounds bracket p exactly (rounding could put a bound a hair on the wrong side of 0 or 1)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


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
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated and many times slower than fp32 (docs/decisions.md), so
    "auto" choices avoid it."""
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


# ----------------------------------------------------------------------------------------------
# Named seed streams: every random draw is a pure function of (seed, epoch or step, stream), so a run's
# randomness does not depend on workers, processes or what ran before it
# ----------------------------------------------------------------------------------------------

SHUFFLE, AUGMENT, SUBSET, TTA = 0, 1, 2, 3  # training streams (train/); keys of stream_seed's third place
STN_INIT = 7         # the staged transformer's initialisation (stn/)
ITEM_OFFSET = 1000   # per-image streams of the per-image pipeline start here (1000 + image index)
LOADER_SHUFFLE = 2**31  # data.make_loader's shuffle order, beside its per-image streams (0..N-1)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one independent stream of (seed, epoch, stream), from NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def stream_generator(seed: int, epoch: int, stream: int):
    """A torch.Generator seeded with ``stream_seed(seed, epoch, stream)``."""
    import torch

    return torch.Generator().manual_seed(stream_seed(seed, epoch, stream))


def median_seconds(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 3,
                   sync: Callable[[], object] = lambda: None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones; ``sync`` waits for
    asynchronous devices (CUDA) before each clock read."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


_IMPORTED_AT = time.perf_counter()


def process_seconds() -> float:
    """Seconds since this process started (interpreter start-up and imports included), from /proc on Linux;
    elsewhere since this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


# ----------------------------------------------------------------------------------------------
# Progress and plain JSON
# ----------------------------------------------------------------------------------------------

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
