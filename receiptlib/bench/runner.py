"""The benchmark of section VIII: every backend of `receiptlib.fast` timed on this machine, model alone and
end to end, each figure beside the device's ceiling (receiptlib.timing) and the model's FLOPs, so
``fraction_of_ceiling`` says how close to the hardware limit each setting runs. Each setting runs in its own
subprocess (``isolate=True``) so its peak memory (VmHWM; loader workers excluded) is its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from ..common import pick_device
from ..data import PathDataset, eval_transform, is_image_file
from ..fast import ONNX_FILES, calibration_batches, load_choice, prepare_onnx
from ..io import write_json, write_text
from ..models import resnet18
from ..runs import Run
from ..timing import PAPER, ceilings, device_info, model_gflops
from .setting import PRECISION, BenchConfig, run_setting, synthetic_jpegs


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
            run = run if hasattr(run, "load_model") else Run(run)
            spec["run"] = str(run.path)
            spec["normalization"] = {k: list(v) for k, v in run.normalization.items()}  # the model's input statistics
            model = run.load_model(device="cpu")
            meta["model"] = f"run {run.path}"
        else:
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
        write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    return result


def _fast_image_size(fast_dir: Path) -> int | None:
    try:
        return load_choice(fast_dir).image_size
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _image_paths(images, cfg: BenchConfig, tmp: Path) -> list[Path]:
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
    if run is not None:
        return calibration_batches(run.data_dir, classes=run.classes, n=256, image_size=cfg.image_size,
                                   **run.normalization)
    if not paths:
        return [torch.randn(8, 3, cfg.image_size, cfg.image_size) for _ in range(4)]
    ds = PathDataset(paths[:128], eval_transform(image_size=cfg.image_size), with_label=False)
    return torch.utils.data.DataLoader(ds, batch_size=32)


def _isolated(spec: dict, tmp: Path) -> list[dict]:
    path = write_json(tmp / f"spec-{spec['backend']}.json", spec)
    proc = subprocess.run([sys.executable, "-m", "receiptlib.bench", "--worker", str(path)],
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
