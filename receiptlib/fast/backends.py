"""The inference backends: one `Predictor` per setting, ``(batch tensor) -> numpy float32 logits``.

  torch-fp32           the reference: eval mode, fp32, NCHW
  torch-channels_last  fp32, NHWC memory layout (oneDNN's preferred layout on CPU), BatchNorm folded (CPU)
  torch-bf16           bf16 autocast + channels_last + BatchNorm folded (fast with AVX512-BF16/AMX, recent GPUs)
  torch-compile        torch.compile of torch-bf16 (slow to compile; failures are reported, not fatal)
  onnx-fp32            ONNX Runtime, fp32
  onnx-int8            ONNX Runtime, int8 static quantization (see export.quantize_int8)

ONNX Runtime is the optional extra ``fast`` (``pip install receiptlib[fast]``) and is imported lazily; its
predictor (`serving.OnnxPredictor`) lives in the torch-free `receiptlib.serving`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from .. import common
from ..serving import BACKENDS, ONNX_FILES, REFERENCE, BackendUnavailable, OnnxPredictor, require_onnxruntime

def default_threads() -> int:
    return torch.get_num_threads()


# ----------------------------------------------------------------------------------------------
# Predictors: one callable per backend, (N, 3, H, W) float tensor -> (N, C) float32 numpy logits
# ----------------------------------------------------------------------------------------------

class Predictor:
    """Base class: ``predictor(x) -> np.ndarray`` of float32 logits; ``backend`` names the setting."""

    backend: str = "?"
    device: str = "cpu"

    def __call__(self, x) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def as_torch(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same predictor returning a CPU float32 tensor (for code written against nn.Module outputs)."""
        return lambda x: torch.from_numpy(self(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r}, device={self.device!r})"


class TorchPredictor(Predictor):
    """A PyTorch module run in one of the torch-* modes (see the module docstring)."""

    def __init__(self, model: nn.Module, backend: str = "torch-fp32", *, device: str | torch.device = "auto",
                 emulated_bf16: bool = False):
        """emulated_bf16: allow the bf16 backends on a CPU without bf16 hardware (correct, but several times
        slower than fp32 there, so by default they are unavailable and the automatic choice skips them)."""
        if not backend.startswith("torch-") or backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {[b for b in BACKENDS if b.startswith('torch-')]}")
        self.backend = backend
        dev = device if isinstance(device, torch.device) else common.pick_device(device)
        self.device = str(dev)
        self._dev = dev
        model = model.eval().to(dev)
        self.channels_last = backend != "torch-fp32"
        self.bf16 = backend in ("torch-bf16", "torch-compile")
        if self.bf16 and not emulated_bf16 and not common.native_bf16(dev):  # common.*: tests patch it
            where = (f"this GPU ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                     f"this CPU ({torch.backends.cpu.get_cpu_capability()}; bf16 needs AVX512-BF16 or AMX)")
            raise BackendUnavailable(f"{backend}: {where} has no bf16 hardware, where emulated bf16 runs several "
                                     "times slower than fp32")
        self.fused = False
        if self.channels_last:
            # a copy, so the caller's model (often the fp32 reference) keeps its layout; BatchNorm folded
            # into the convolutions as the ONNX exporter does (one pass over the activations less)
            model = copy.deepcopy(model)
            if dev.type == "cpu":
                try:
                    model, self.fused = fuse(model), True
                except Exception:  # noqa: BLE001 - a model fx cannot trace runs unfused
                    pass
            model = model.to(memory_format=torch.channels_last)
        if backend == "torch-compile":
            try:
                model = torch.compile(model)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                raise BackendUnavailable(f"torch.compile failed: {type(exc).__name__}: {exc}") from exc
        self.model = model
        self._compiled_ok = backend != "torch-compile"

    def __call__(self, x) -> np.ndarray:
        x = torch.as_tensor(x).to(self._dev, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # no_grad, not inference_mode: torch.compile and ONNX export dislike inference tensors
        with torch.no_grad(), torch.autocast(self._dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self._compiled_ok:
                out = self.model(x)
            else:  # compilation happens at the first call: report its failure as BackendUnavailable
                try:
                    out = self.model(x)
                except Exception as exc:  # noqa: BLE001
                    raise BackendUnavailable(f"torch.compile failed at first call: {type(exc).__name__}: "
                                             f"{str(exc)[:500]}") from exc
                self._compiled_ok = True
        return out.float().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# One factory for every backend
# ----------------------------------------------------------------------------------------------

def make_predictor(backend: str, *, model: nn.Module | None = None, onnx_dir: str | os.PathLike | None = None,
                   threads: int | None = None, device: str = "auto", spinning: bool = True) -> Predictor:
    """The `Predictor` of ``backend``: torch-* need ``model``; onnx-* need ``onnx_dir`` holding ``ONNX_FILES``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    if backend.startswith("torch-"):
        if model is None:
            raise ValueError(f"backend={backend!r} needs the PyTorch model (model=...)")
        return TorchPredictor(model, backend, device=device)
    if onnx_dir is None:
        raise ValueError(f"backend={backend!r} needs onnx_dir, the folder holding {ONNX_FILES[backend]}")
    return OnnxPredictor(Path(onnx_dir) / ONNX_FILES[backend], backend=backend, threads=threads,
                         device=str(common.pick_device(device)), spinning=spinning)


def run_batches(predictor: Callable, batches: Sequence[torch.Tensor]) -> np.ndarray:
    """The logits of every batch, concatenated (float32)."""
    return np.concatenate([np.asarray(predictor(b), dtype=np.float32) for b in batches])


def throughput(predictor: Callable, batch: torch.Tensor, *, warmup: int = 1, repeats: int = 3) -> float:
    """Images per second of the model alone on one batch: median of ``repeats`` after ``warmup`` calls."""
    return len(batch) / common.median_seconds(lambda: predictor(batch), warmup=warmup, repeats=max(1, repeats))


