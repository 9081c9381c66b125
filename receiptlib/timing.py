"""This machine, for the hardware timings of section VIII: its description, its ceilings (GFLOP/s of a large
matrix product per precision), the model's FLOPs, and the paper's own measurements (`PAPER`).

The paper classified 10,000 validation images in 7 min 23 s on a GTX 1060, 25 min on a GTX 960 and
2 h 30 min on an i5-6500 CPU (22.6, 6.6 and 1.1 images per second); receiptlib.bench measures the same here.
"""
from __future__ import annotations

import copy
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .common import median_seconds, native_bf16

# The paper's measurements (section VIII): 10,000 val images, the same model.
PAPER = [
    {"hardware": "Nvidia GTX 1060 (SSD)", "seconds_per_10000": 7 * 60 + 23, "accuracy": 0.997},
    {"hardware": "Nvidia GTX 960 (HDD)", "seconds_per_10000": 25 * 60 + 13, "accuracy": 0.997},
    {"hardware": "Intel i5-6500 CPU (HDD)", "seconds_per_10000": 2 * 3600 + 30 * 60, "accuracy": 0.995},
]
for _row in PAPER:
    _row["images_per_s"] = round(10_000 / _row["seconds_per_10000"], 1)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device) -> dict:
    """Device name, thread count, CPU capability and library versions."""
    info = {"device": str(device), "cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform()}
    try:  # only their versions: torchvision is slow to import, onnxruntime optional
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


def _ort_matmul_gflops(n: int, int8: bool, threads: int, repeats: int) -> float | None:
    """GFLOP/s of ONNX Runtime's n x n MatMul (fp32) or MatMulInteger (u8 x s8); None without onnxruntime."""
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
    sec = median_seconds(lambda: sess.run(None, feeds), warmup=1, repeats=repeats)
    return 2 * n**3 / sec / 1e9


def ceilings(device, *, n: int = 2048, repeats: int = 5) -> dict[str, float | None]:
    """GFLOP/s of a large n x n matrix product per precision on ``device``: the device's practical limit.

    fp32 takes the faster of torch and ONNX Runtime (each backend family's own kernels); int8 is ONNX
    Runtime's on a CPU (what onnx-int8 runs on) and torch's on CUDA; bf16 is torch's. None where a precision
    cannot run here, or is only emulated (bf16 on a CPU without bf16 hardware).
    """
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    out: dict[str, float | None] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not native_bf16(device):  # emulated: no ceiling to speak of (and slow to time)
            out[name] = None
            continue
        try:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            out[name] = 2 * n**3 / median_seconds(lambda: a @ b, warmup=2, repeats=repeats, sync=sync) / 1e9
        except Exception:  # noqa: BLE001 - a precision the device lacks
            out[name] = None
    out["int8"] = None
    if device.type == "cuda":  # on a CPU torch's int8 matmul is a slow reference kernel; ONNX Runtime's,
        try:                   # below, is what onnx-int8 runs on there
            a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            sec = median_seconds(lambda: torch._int_mm(a, b), warmup=2, repeats=repeats, sync=sync)
            out["int8"] = 2 * n**3 / sec / 1e9
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
