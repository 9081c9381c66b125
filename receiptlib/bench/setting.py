"""One benchmark setting (a backend) measured in this process: the model alone on one batch, then end to end
from JPEG files to Other decisions; its rows carry the process's peak memory. `BenchConfig` says what is
measured. ``python -m receiptlib.bench --worker SPEC.json`` runs one setting in a fresh process (`bench`'s
isolation), so its peak memory is its own."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision  # noqa: F401 - loaded before the first memory reading, as every setting needs it
from PIL import Image, ImageDraw, ImageFilter

from ..common import median_seconds, pick_device
from ..data import PathDataset, eval_transform
from ..fast import BACKENDS, OnnxPredictor, make_predictor, run_decision
from ..io import atomic_write, read_json
from ..models import resnet18
from ..openset import as_decision
from ..runs import Run

PRECISION = {"torch-fp32": "fp32", "torch-channels_last": "fp32", "torch-bf16": "bf16", "torch-compile": "bf16",
             "onnx-fp32": "fp32", "onnx-int8": "int8"}
DEFAULT_BACKENDS = ("torch-fp32", "torch-channels_last", "torch-bf16", "onnx-fp32", "onnx-int8")


@dataclass
class BenchConfig:
    """What `bench` measures. Defaults: the paper's 224 px input on every core of this machine."""

    image_size: int = 224            # the paper's input size
    batch_size: int = 16             # large enough to fill 2-8 cores, small enough for live use
    threads: int | None = None       # None: torch's default (one per core)
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    compile: bool = False            # add torch-compile: inductor needs a C++ compiler and about a minute
    repeats: int = 10                # timed batches (model alone); the median is reported
    warmup: int = 3                  # untimed batches first: allocator, oneDNN primitive caches, ORT arenas
    end_to_end: bool = True          # also time JPEG folder -> decision
    e2e_images: int = 256            # JPEGs per end-to-end pass (synthetic 384x512 ones unless images= given)
    e2e_repeats: int = 3             # timed passes after one warm-up pass; median
    workers: int | None = None       # loader workers end to end; None: one per thread, at least 1
    isolate: bool = True             # each backend in its own subprocess: its own peak memory
    e2e_spinning: bool = False       # ONNX Runtime threads busy-wait end to end? Off: the decoding workers
                                     # need those cycles
    device: str = "auto"
    ceiling_n: int = 2048            # matrix size of the ceiling matmul (2*n^3 FLOPs)
    seed: int = 0                    # random weights and synthetic images when no run is given

    def __post_init__(self):
        self.backends = tuple(self.backends)
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ValueError(f"backends {bad}: expected names from {list(BACKENDS)}")
        if self.compile and "torch-compile" not in self.backends:
            self.backends = self.backends + ("torch-compile",)
        for name in ("image_size", "batch_size", "repeats", "e2e_images", "e2e_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")


# ----------------------------------------------------------------------------------------------
# Images for the end-to-end timing
# ----------------------------------------------------------------------------------------------

def synthetic_jpegs(folder: str | os.PathLike, n: int = 512, *, size: tuple[int, int] = (384, 512),
                    seed: int = 0, quality: int = 90) -> list[Path]:
    """``n`` receipt-like JPEGs (w x h = ``size``: a paper strip with text lines on a textured table) in
    ``folder``; existing files of the same name are reused (each is written whole or not at all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        path = folder / f"bench_{i:05d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        table = rng.integers(40, 140, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(table).resize((w, h), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        x0, y0 = int(rng.integers(w // 20, w // 4 + 1)), int(rng.integers(h // 40, h // 8 + 1))
        x1, y1 = w - int(rng.integers(w // 20, w // 4 + 1)), h - int(rng.integers(h // 40, h // 8 + 1))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(225, 255, 3)))
        for y in range(y0 + 12, y1 - 12, 14):
            words = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,"), int(rng.integers(8, 30))))
            draw.text((x0 + 10, y), words, fill=(20, 20, 20))
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        atomic_write(path, lambda tmp: img.save(tmp, format="JPEG", quality=quality))
    return paths


# ----------------------------------------------------------------------------------------------
# One setting (runs in a subprocess when isolated)
# ----------------------------------------------------------------------------------------------

def _rss_mb() -> float:
    """Current resident memory of this process (Linux /proc; falls back to the high-water mark)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """This process's resident-memory high-water mark. Linux: VmHWM, which starts afresh at exec (ru_maxrss
    keeps the parent's high-water mark across fork+exec, so it would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux (bytes on macOS)
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def _load_model(spec: dict):
    if spec.get("run"):
        return Run(spec["run"]).load_model(device="cpu")
    model = resnet18(spec["num_classes"], weights="none")
    model.load_state_dict(torch.load(spec["state_dict"], map_location="cpu", weights_only=True))
    return model.eval()


def _decision(spec: dict):
    if spec.get("run"):
        return as_decision(run_decision(Run(spec["run"])))
    return as_decision(np.zeros(spec["num_classes"]))  # same cost as real per-class thresholds


def run_setting(spec: dict) -> list[dict]:
    """Measure one backend (model alone, then end to end); rows of the result table."""
    cfg = BenchConfig(**{k: v for k, v in spec["config"].items()})
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    threads = torch.get_num_threads()
    dev = pick_device(cfg.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    backend = spec["backend"]
    base = {"backend": backend, "precision": PRECISION[backend], "device": str(dev), "threads": threads,
            "batch_size": cfg.batch_size, "image_size": cfg.image_size}
    try:  # libraries first, so peak_rss_delta_mb is what the setting itself adds (weights, activations, arenas)
        if backend.startswith("onnx-"):
            import onnxruntime  # noqa: F401
    except ImportError:
        pass
    rss0 = _rss_mb()
    rows = []
    try:
        model = _load_model(spec)
        predictor = make_predictor(backend, model=model, onnx_dir=spec.get("onnx_dir"), threads=threads,
                                   device=str(dev))
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
        if cuda and backend.startswith("torch-"):  # ONNX Runtime takes host arrays
            x = x.to(dev)
        t0 = time.perf_counter()
        predictor(x)  # first call: compilation for torch-compile, session warm-up for ORT
        first = time.perf_counter() - t0
        sec = median_seconds(lambda: predictor(x), warmup=cfg.warmup, repeats=cfg.repeats, sync=sync)
        rows.append({**base, "mode": "model", "images_per_s": cfg.batch_size / sec,
                     "ms_per_image": 1000 * sec / cfg.batch_size, "first_call_s": first,
                     **_memory(rss0, dev), "error": None})
    except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is a row, not a crash
        return [{**base, "mode": "model", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}]
    if cfg.end_to_end and spec.get("images"):
        try:
            rows.append({**base, "mode": "end_to_end", **_end_to_end(predictor, spec, cfg, threads, sync),
                         **_memory(rss0, dev), "error": None})
        except Exception as exc:  # noqa: BLE001
            rows.append({**base, "mode": "end_to_end", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return rows


def _memory(rss0: float, dev) -> dict:
    out = {"peak_rss_mb": round(_peak_rss_mb(), 1), "peak_rss_delta_mb": round(_peak_rss_mb() - rss0, 1)}
    if dev.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def backend_is_onnx(predictor) -> bool:
    """Whether ``predictor`` runs on ONNX Runtime."""
    return str(getattr(predictor, "backend", "")).startswith("onnx-")


def _end_to_end(predictor, spec: dict, cfg: BenchConfig, threads: int, sync) -> dict:
    """Images per second from JPEG files to Other decisions, loader workers overlapping the model."""
    paths = spec["images"][: cfg.e2e_images]
    decide = _decision(spec)
    if backend_is_onnx(predictor) and not cfg.e2e_spinning:
        predictor = OnnxPredictor(predictor.path, backend=predictor.backend, threads=threads,
                                  device=predictor.device, spinning=False)
    workers = cfg.workers if cfg.workers is not None else max(1, threads)
    transform = eval_transform(image_size=cfg.image_size, **spec.get("normalization", {}))
    loader = torch.utils.data.DataLoader(PathDataset(paths, transform, with_label=False), batch_size=cfg.batch_size,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None,
                                         pin_memory=str(getattr(predictor, "device", "cpu")).startswith("cuda"))

    def one_pass(max_batches: int | None = None) -> int:
        n = 0
        for i, x in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            decide(predictor(x))
            n += len(x)
        sync()
        return n

    one_pass(max_batches=2)  # warm-up: workers start (they persist), model and decision warm
    counted: list[int] = []
    sec = median_seconds(lambda: counted.append(one_pass()), warmup=0, repeats=cfg.e2e_repeats)
    n = counted[-1]
    return {"images_per_s": n / sec, "ms_per_image": 1000 * sec / n, "images": n, "workers": workers}


def worker_main(argv: list[str]) -> int:
    """``python -m receiptlib.bench --worker SPEC.json``: one setting, its rows as one JSON line on stdout."""
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m receiptlib.bench --worker SPEC.json (internal: one bench setting)", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    spec = read_json(argv[1])
    print(json.dumps({"rows": run_setting(spec)}, default=str), flush=True)
    return 0
