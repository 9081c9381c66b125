"""Hardware timings (section VIII of the paper): images per second, each beside the device's own ceiling.

The paper classified 10,000 validation images in 7 min 23 s on a GTX 1060, 25 min on a GTX 960 and
2 h 30 min on an i5-6500 CPU (22.6, 6.6 and 1.1 images per second). `bench` measures the same on this
machine for every backend of `receiptlib.fast`:

- model alone: one preprocessed batch through the network (warm-up, then the median of repeats);
- end to end: read and decode JPEGs (draft mode), preprocess, model, Other decision, over a folder,
  with loader workers overlapping decoding and the model.

Each figure sits beside the ceiling of the same device measured in the same run (a large matrix product
at the backend's precision: fp32, bf16, int8) and ResNet18's FLOPs from torch's FLOP counter (a
multiply-add counts as 2 FLOPs: 3.63 GFLOP per 224 px image), so ``fraction_of_ceiling`` says how close
to the hardware limit each setting runs. Each setting runs in its own subprocess (``isolate=True``) so
its peak memory (the process's resident-memory high-water mark, VmHWM; loader workers excluded) is its own.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .fast import BACKENDS, ONNX_FILES

# The paper's measurements (section VIII): 10,000 val images, the same model.
PAPER = [
    {"hardware": "Nvidia GTX 1060 (SSD)", "seconds_per_10000": 7 * 60 + 23, "accuracy": 0.997},
    {"hardware": "Nvidia GTX 960 (HDD)", "seconds_per_10000": 25 * 60 + 13, "accuracy": 0.997},
    {"hardware": "Intel i5-6500 CPU (HDD)", "seconds_per_10000": 2 * 3600 + 30 * 60, "accuracy": 0.995},
]
for _row in PAPER:
    _row["images_per_s"] = round(10_000 / _row["seconds_per_10000"], 1)

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
                                     # need those cycles (measured 65 vs 45 img/s on 2 busy cores)
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
# Machine description and ceilings
# ----------------------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device) -> dict:
    """Device name, thread count, CPU capability and library versions."""
    import torch

    info = {"device": str(device), "cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform()}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if str(device).startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = info["cpu"]
    info["load_average"] = list(os.getloadavg())
    return info


def _median_seconds(fn, *, warmup: int, repeats: int, sync=lambda: None) -> float:
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


def _ort_matmul_gflops(n: int, int8: bool, threads: int, repeats: int) -> float | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    a_t, b_t, y_t, op = ((TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, "MatMulInteger") if int8 else
                         (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"))
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "ceiling",
                              [helper.make_tensor_value_info("A", a_t, [n, n]), helper.make_tensor_value_info("B", b_t, [n, n])],
                              [helper.make_tensor_value_info("Y", y_t, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = ({"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-128, 127, (n, n), dtype=np.int8)}
             if int8 else {"A": rng.standard_normal((n, n), dtype=np.float32), "B": rng.standard_normal((n, n), dtype=np.float32)})
    sec = _median_seconds(lambda: sess.run(None, feeds), warmup=1, repeats=repeats)
    return 2 * n**3 / sec / 1e9


def ceilings(device, *, n: int = 2048, repeats: int = 5) -> dict[str, float | None]:
    """GFLOP/s of a large n x n matrix product per precision on ``device``: the device's practical limit.

    fp32 takes the faster of torch and ONNX Runtime (each backend family's own kernels); int8 is ONNX
    Runtime's on a CPU (what onnx-int8 runs on) and torch's on CUDA; bf16 is torch's. None where a precision
    cannot run here, or is only emulated (bf16 on a CPU without bf16 hardware).
    """
    import torch

    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    out: dict[str, float | None] = {}
    from .common import native_bf16

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not native_bf16(device):  # emulated: no ceiling to speak of (and slow to time)
            out[name] = None
            continue
        try:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            out[name] = 2 * n**3 / _median_seconds(lambda: a @ b, warmup=2, repeats=repeats, sync=sync) / 1e9
        except Exception:  # noqa: BLE001 - a precision the device lacks
            out[name] = None
    out["int8"] = None
    if device.type == "cuda":  # on a CPU torch's int8 matmul is a slow reference kernel (minutes at n=2048 on an
        try:                   # AVX2 EPYC); ONNX Runtime's, below, is what onnx-int8 runs on there
            a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            out["int8"] = 2 * n**3 / _median_seconds(lambda: torch._int_mm(a, b), warmup=2, repeats=repeats, sync=sync) / 1e9
        except Exception:  # noqa: BLE001
            pass
    if device.type == "cpu":
        for name, int8 in (("fp32", False), ("int8", True)):
            try:
                g = _ort_matmul_gflops(n, int8, threads, repeats)
            except Exception:  # noqa: BLE001
                g = None
            if g is not None and (out[name] is None or g > out[name]):
                out[name] = g
    return {k: (round(v, 1) if v is not None else None) for k, v in out.items()}


def model_gflops(model, image_size: int = 224) -> float:
    """GFLOP per image from torch's FLOP counter (a multiply-add = 2 FLOPs; ResNet18 at 224 px: 3.63).

    Counted on a copy on the meta device (shapes only, no arithmetic); a real forward pass if that fails.
    """
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def count(m, device, dtype) -> float:
        x = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m.eval()(x)
        return counter.get_total_flops() / 1e9

    try:
        return count(copy.deepcopy(model).to("meta"), "meta", torch.float32)
    except Exception:  # noqa: BLE001 - an op without a meta kernel: count on the real device
        param = next(model.parameters())
        return count(model, param.device, param.dtype)


# ----------------------------------------------------------------------------------------------
# Images for the end-to-end timing
# ----------------------------------------------------------------------------------------------

def synthetic_jpegs(folder: str | os.PathLike, n: int = 512, *, size: tuple[int, int] = (384, 512),
                    seed: int = 0, quality: int = 90) -> list[Path]:
    """``n`` receipt-like JPEGs (w x h = ``size``: a paper strip with text lines on a textured table) in
    ``folder``; existing files of the same name are reused."""
    from PIL import Image, ImageDraw, ImageFilter

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
        img.filter(ImageFilter.GaussianBlur(0.6)).save(path, quality=quality)
    return paths


class _JpegDataset:
    """Paths -> preprocessed tensors: draft decoding at the target size, resize first (data.eval_transform)."""

    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int):
        from .data import eval_transform

        self.paths = [str(p) for p in paths]
        self.size = image_size
        self.transform = eval_transform(image_size=image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from .data import read_image

        return self.transform(read_image(self.paths[i], draft_size=(self.size, self.size)))


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
    import torch

    if spec.get("run"):
        from .fast import load_run_model
        from .runs import Run

        return load_run_model(Run(spec["run"]))
    from .models import resnet18

    model = resnet18(spec["num_classes"], weights="none")
    model.load_state_dict(torch.load(spec["state_dict"], map_location="cpu", weights_only=True))
    return model.eval()


def _decision(spec: dict):
    from .fast import as_decision, run_decision

    if spec.get("run"):
        from .runs import Run

        return as_decision(run_decision(Run(spec["run"])))
    return as_decision(np.zeros(spec["num_classes"]))  # same cost as real per-class thresholds


def run_setting(spec: dict) -> list[dict]:
    """Measure one backend (model alone, then end to end); rows of the result table."""
    import torch

    from .common import pick_device
    from .fast import make_predictor

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
        import torchvision  # noqa: F401

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
        sec = _median_seconds(lambda: predictor(x), warmup=cfg.warmup, repeats=cfg.repeats, sync=sync)
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
    import torch

    out = {"peak_rss_mb": round(_peak_rss_mb(), 1), "peak_rss_delta_mb": round(_peak_rss_mb() - rss0, 1)}
    if dev.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def backend_is_onnx(predictor) -> bool:
    return str(getattr(predictor, "backend", "")).startswith("onnx-")


def _end_to_end(predictor, spec: dict, cfg: BenchConfig, threads: int, sync) -> dict:
    """Images per second from JPEG files to Other decisions, loader workers overlapping the model."""
    import torch

    paths = spec["images"][: cfg.e2e_images]
    decide = _decision(spec)
    if backend_is_onnx(predictor) and not cfg.e2e_spinning:
        from .fast import OnnxPredictor

        predictor = OnnxPredictor(predictor.path, backend=predictor.backend, threads=threads,
                                  device=predictor.device, spinning=False)
    workers = cfg.workers if cfg.workers is not None else max(1, threads)
    loader = torch.utils.data.DataLoader(_JpegDataset(paths, cfg.image_size), batch_size=cfg.batch_size,
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
    times, n = [], 0
    for _ in range(cfg.e2e_repeats):
        t = time.perf_counter()
        n = one_pass()
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {"images_per_s": n / sec, "ms_per_image": 1000 * sec / n, "images": n, "workers": workers}


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

def bench(run=None, *, config: BenchConfig | None = None, images: str | os.PathLike | Sequence | None = None,
          out: str | os.PathLike | None = None, num_classes: int = 25, verbose: bool = True, **overrides) -> dict:
    """Time every backend of ``config`` (or ``BenchConfig(**overrides)``) on this machine.

    run: a trained `runs.Run` or its folder (its weights and Other decision), or None for a random-weight
    ResNet18 with ``num_classes`` outputs (speed does not depend on the weights). images: a folder of
    JPEGs (searched recursively) or a list of paths for the end-to-end timing; None makes
    ``config.e2e_images`` synthetic 384x512 receipt JPEGs in a temporary folder. out: where the JSON copy
    goes. Returns ``{"meta": {...}, "ceilings": {...}, "results": [rows]}``; `table` prints it.
    """
    import torch

    from .common import pick_device
    from .fast import prepare_onnx

    cfg = config or BenchConfig(**overrides)
    if config is not None and overrides:
        raise TypeError(f"pass either config= or keyword overrides, not both ({sorted(overrides)})")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    dev = pick_device(cfg.device)
    meta = device_info(dev)
    meta["config"] = asdict(cfg)
    meta["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="receiptlib-bench-") as tmp:
        tmp = Path(tmp)
        spec: dict[str, Any] = {"config": asdict(cfg), "num_classes": num_classes}
        if run is not None:
            from .runs import Run

            run = run if hasattr(run, "load_model") else Run(run)
            spec["run"] = str(run.path)
            from .fast import load_run_model

            model = load_run_model(run)
            meta["model"] = f"run {run.path}"
        else:
            from .models import resnet18

            torch.manual_seed(cfg.seed)
            model = resnet18(num_classes, weights="none").eval()
            torch.save(model.state_dict(), tmp / "model.pt")
            spec["state_dict"] = str(tmp / "model.pt")
            meta["model"] = f"resnet18 with random weights ({num_classes} classes)"
        meta["gflop_per_image"] = round(model_gflops(model, cfg.image_size), 3)

        paths = _image_paths(images, cfg, tmp) if cfg.end_to_end else []
        spec["images"] = [str(p) for p in paths]
        wanted = [b for b in cfg.backends if b.startswith("onnx-")]
        fast_dir = Path(run.path) / "fast" if run is not None else None
        if (wanted and fast_dir is not None and all((fast_dir / ONNX_FILES[b]).is_file() for b in wanted)
                and _fast_image_size(fast_dir) == cfg.image_size):  # the export fixes H and W
            spec["onnx_dir"] = str(fast_dir)  # the files build_fast_model made (and checked) for this run
        elif wanted:
            spec["onnx_dir"] = str(tmp / "onnx")
            try:
                prepare_onnx(model, tmp / "onnx", image_size=cfg.image_size, int8="onnx-int8" in cfg.backends,
                             calibration=_calibration(run, paths, cfg))
            except Exception as exc:  # noqa: BLE001 - the rows of the onnx backends will say why
                meta["onnx_error"] = f"{type(exc).__name__}: {exc}"
        if verbose:
            print(f"[bench] {meta['device_name']}, {meta['threads']} threads, load average "
                  f"{meta['load_average'][0]:.2f}; measuring ceilings", flush=True)
        ceil = ceilings(dev, n=cfg.ceiling_n)
        rows = []
        for backend in cfg.backends:
            spec["backend"] = backend
            got = _isolated(spec, tmp) if cfg.isolate else run_setting(spec)
            for r in got:
                _add_ceiling(r, ceil, meta["gflop_per_image"])
                if verbose:
                    _say(r)
            rows += got
    torch.set_num_threads(old_threads)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["load_average_end"] = list(os.getloadavg())
    result = {"meta": meta, "ceilings": ceil, "paper": PAPER, "results": rows}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _fast_image_size(fast_dir: Path) -> int | None:
    from .fast import load_choice

    try:
        return load_choice(fast_dir).image_size
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _image_paths(images, cfg: BenchConfig, tmp: Path) -> list[Path]:
    from .data import is_image_file

    if images is None:
        return synthetic_jpegs(tmp / "jpegs", cfg.e2e_images, seed=cfg.seed)
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"images={folder}: not a folder; pass a folder of JPEGs or None for synthetic ones")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    else:
        paths = [Path(p) for p in images]
    if not paths:
        raise ValueError(f"images={images}: no image files found")
    return paths[: cfg.e2e_images]


def _calibration(run, paths, cfg: BenchConfig):
    """int8 calibration batches: the run's training images, else the benchmark JPEGs (real image statistics)."""
    import torch

    from .fast import calibration_batches

    if run is not None:
        from .fast import _run_data_root

        return calibration_batches(_run_data_root(run), classes=run.classes, n=256, image_size=cfg.image_size)
    if not paths:
        return [torch.randn(8, 3, cfg.image_size, cfg.image_size) for _ in range(4)]
    ds = _JpegDataset(paths[:128], cfg.image_size)
    return torch.utils.data.DataLoader(ds, batch_size=32)


def _isolated(spec: dict, tmp: Path) -> list[dict]:
    path = tmp / f"spec-{spec['backend']}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "receiptlib.timing", "--worker", str(path)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return [{"backend": spec["backend"], "precision": PRECISION[spec["backend"]], "mode": "model",
                 "error": f"subprocess exit {proc.returncode}: {' | '.join(tail)[:400]}"}]
    return json.loads(lines[-1])["rows"]


def _add_ceiling(row: dict, ceil: dict, gflop: float) -> None:
    row["gflop_per_image"] = gflop
    ips = row.get("images_per_s")
    c = ceil.get(row.get("precision"))
    row["achieved_gflops"] = round(ips * gflop, 1) if ips else None
    row["ceiling_gflops"] = c
    row["fraction_of_ceiling"] = round(ips * gflop / c, 3) if ips and c else None
    if ips:
        row["images_per_s"] = round(ips, 1)
        row["ms_per_image"] = round(row["ms_per_image"], 2)
        row["seconds_per_10000"] = round(10_000 / ips, 1)


def _say(r: dict) -> None:
    if r.get("error"):
        print(f"[bench] {r['backend']:<20} {r['mode']:<10} failed: {r['error']}", flush=True)
    else:
        print(f"[bench] {r['backend']:<20} {r['mode']:<10} {r['images_per_s']:7.1f} img/s", flush=True)


def to_frame(result: dict | list):
    """The rows of a `bench` result as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(result["results"] if isinstance(result, dict) else result)


def paper_table(result: dict):
    """Section VIII's table beside this machine: time for 10,000 images per setting (end to end when
    measured, scaled from the ``images_timed`` per pass), as a DataFrame."""
    import pandas as pd

    rows = [{"hardware": p["hardware"], "setting": "paper", "images_per_s": p["images_per_s"],
             "time_for_10000": _hms(p["seconds_per_10000"]), "images_timed": 10_000} for p in PAPER]
    name = result["meta"]["device_name"]
    for r in result["results"]:
        if r.get("error") or r["mode"] != "end_to_end":
            continue
        rows.append({"hardware": f"{name}, {r['threads']} threads", "setting": r["backend"],
                     "images_per_s": r["images_per_s"], "time_for_10000": _hms(r["seconds_per_10000"]),
                     "images_timed": r["images"]})  # per pass; the median of e2e_repeats passes
    return pd.DataFrame(rows)


def table(result: dict | list) -> str:
    """A plain-text table of a `bench` result (or its rows), with the machine and the paper's figures."""
    rows = result["results"] if isinstance(result, dict) else result
    lines = []
    if isinstance(result, dict):
        m, c = result["meta"], result["ceilings"]
        lines += [f"device: {m['device_name']} ({m['device']}, {m.get('cpu_capability')}), {m['threads']} threads "
                  f"of {m['cores']} cores; torch {m['torch']}, onnxruntime {m.get('onnxruntime')}",
                  f"model: {m['model']}, {m['gflop_per_image']} GFLOP per {m['config']['image_size']} px image "
                  "(multiply-add = 2 FLOPs)",
                  "ceilings (large matmul, GFLOP/s): " + ", ".join(f"{k} {v}" for k, v in c.items()),
                  f"load average at start {m['load_average'][0]:.2f}, at end "
                  f"{m.get('load_average_end', [float('nan')])[0]:.2f}", ""]
    head = f"{'backend':<20} {'mode':<10} {'batch':>5} {'img/s':>7} {'ms/img':>7} {'GFLOP/s':>8} {'ceiling':>8} {'of ceil':>7} {'peak MB':>8} {'+MB':>6} {'10k imgs':>9}"
    lines += [head, "-" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['backend']:<20} {r['mode']:<10} failed: {r['error'][:80]}")
            continue
        frac = f"{100 * r['fraction_of_ceiling']:.0f}%" if r.get("fraction_of_ceiling") else "-"
        ceil = f"{r['ceiling_gflops']:.0f}" if r.get("ceiling_gflops") else "-"
        lines.append(f"{r['backend']:<20} {r['mode']:<10} {r['batch_size']:>5} {r['images_per_s']:>7.1f} "
                     f"{r['ms_per_image']:>7.2f} {r['achieved_gflops']:>8.1f} {ceil:>8} {frac:>7} "
                     f"{r.get('peak_rss_mb', float('nan')):>8.0f} {r.get('peak_rss_delta_mb', float('nan')):>6.0f} "
                     f"{_hms(r['seconds_per_10000']):>9}")
    lines.append("")
    lines.append("peak MB: the process's resident-memory high-water mark (libraries included, loader workers "
                 "excluded); +MB: what the setting adds over the loaded libraries")
    lines.append("paper (section VIII, 10,000 val images): " + "; ".join(
        f"{p['hardware']} {p['images_per_s']} img/s ({_hms(p['seconds_per_10000'])})" for p in PAPER))
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------------------------
# Command line: `receiptlib bench` and scripts/bench_inference.py share these flags
# ----------------------------------------------------------------------------------------------

def add_bench_arguments(parser) -> None:
    """The flags of `receiptlib bench` (defaults from `BenchConfig`)."""
    d = BenchConfig()
    parser.add_argument("--run", default=None, help="trained run: a folder, or a name under --runs-root "
                        "(default: ResNet18 with random weights; speed does not depend on the weights)")
    parser.add_argument("--runs-root", default="data/runs", help="where --run NAME is looked up")
    parser.add_argument("--images", default=None, help="folder of JPEGs for the end-to-end timing "
                        "(default: synthetic 384x512 receipt JPEGs in a temporary folder)")
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--backends", default=",".join(d.backends),
                        help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument("--compile", action="store_true", help="add torch-compile (about a minute to compile)")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed batches, median reported")
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--e2e-images", type=int, default=d.e2e_images, help="JPEGs per end-to-end pass")
    parser.add_argument("--e2e-repeats", type=int, default=d.e2e_repeats)
    parser.add_argument("--no-end-to-end", action="store_true", help="time the model alone only")
    parser.add_argument("--workers", type=int, default=None, help="loader workers end to end (default: threads)")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run every setting in this process (faster; peak memory then is this process's)")
    parser.add_argument("--out", default="bench.json", help="JSON copy of the results")


def resolve_run(run: str | None, runs_root: str | os.PathLike = "data/runs"):
    """A `runs.Run` from a folder or a name under ``runs_root``; None stays None."""
    if run is None:
        return None
    from .runs import Run

    path = Path(run)
    if not path.is_dir() and (Path(runs_root) / run).is_dir():
        path = Path(runs_root) / run
    return Run(path)


def bench_command(args) -> int:
    """`receiptlib bench`: run `bench` with the parsed flags, print `table`, save the JSON copy."""
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    cfg = BenchConfig(image_size=args.image_size, batch_size=args.batch_size, threads=args.threads,
                      backends=backends, compile=args.compile, repeats=args.repeats, warmup=args.warmup,
                      end_to_end=not args.no_end_to_end, e2e_images=args.e2e_images, e2e_repeats=args.e2e_repeats,
                      workers=args.workers, isolate=not args.no_isolate, device=args.device)
    result = bench(resolve_run(args.run, args.runs_root), config=cfg, images=args.images, out=args.out)
    print()
    print(table(result))
    if args.out:
        print(f"\nJSON copy: {args.out}")
    return 0


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m receiptlib.timing --worker SPEC.json (internal: one bench setting)", file=sys.stderr)
        return 2
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(argv[1]).read_text())
    print(json.dumps({"rows": run_setting(spec)}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
