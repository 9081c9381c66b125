"""Fast inference (issue 6, section VIII of the paper): ONNX export, int8 quantization, backend choice.

The paper's point in section VIII is that the model classifies live. Here a trained model gets a uniform
`Predictor` per backend (``(batch tensor) -> numpy logits``) and `build_fast_model` picks the fastest
backend whose predictions, Other decisions included, agree with fp32 PyTorch on >= 99.5% of val images
and whose macro-F1 stays within 0.005; the agreement figures are saved beside the model (``choice.json``).

Backends (``BACKENDS``):
  torch-fp32           the reference: eval mode, fp32, NCHW
  torch-channels_last  fp32, NHWC memory layout (oneDNN's preferred layout on CPU), BatchNorm folded (CPU)
  torch-bf16           bf16 autocast + channels_last + BatchNorm folded (fast with AVX512-BF16/AMX, recent GPUs)
  torch-compile        torch.compile of torch-bf16 (slow to compile; failures are reported, not fatal)
  onnx-fp32            ONNX Runtime, fp32
  onnx-int8            ONNX Runtime, int8 static quantization (QDQ, per-channel weights, uint8
                       activations; first convolution and classifier layer fp32) calibrated on training images

ONNX Runtime is the optional extra ``fast`` (``pip install receiptlib[fast]``) and is imported lazily.
Export uses torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based exporter
needs ``onnxscript``, which is not a dependency.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn


BACKENDS = ("torch-fp32", "torch-channels_last", "torch-bf16", "torch-compile", "onnx-fp32", "onnx-int8")
# Fastest first on a typical x86 CPU; build_fast_model measures them anyway.
DEFAULT_CANDIDATES = ("onnx-int8", "torch-bf16", "onnx-fp32", "torch-channels_last", "torch-fp32")
REFERENCE = "torch-fp32"
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
CHOICE_FILE = "choice.json"
OPSET = 17  # ONNX Runtime >= 1.14 runs it; QDQ per-channel needs >= 13


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (missing package, failed compile, no bf16 support, ...)."""


def require_onnxruntime():
    """Import onnxruntime or raise a clear error telling how to install the optional extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            "the ONNX backends need onnxruntime and onnx, the optional extra 'fast': "
            "pip install 'receiptlib[fast]' (or pip install onnx onnxruntime), or use a torch-* backend") from exc
    return onnxruntime


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
    """A PyTorch module run in one of the torch-* modes (see module docstring)."""

    def __init__(self, model: nn.Module, backend: str = "torch-fp32", *, device: str | torch.device = "auto",
                 emulated_bf16: bool = False):
        """emulated_bf16: allow the bf16 backends on a CPU without bf16 hardware (correct, but several times
        slower than fp32 there, so by default they are unavailable and the automatic choice skips them)."""
        from .common import native_bf16, pick_device

        if not backend.startswith("torch-") or backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {[b for b in BACKENDS if b.startswith('torch-')]}")
        self.backend = backend
        dev = device if isinstance(device, torch.device) else pick_device(device)
        self.device = str(dev)
        self._dev = dev
        model = model.eval().to(dev)
        self.channels_last = backend != "torch-fp32"
        self.bf16 = backend in ("torch-bf16", "torch-compile")
        if self.bf16 and not emulated_bf16 and not native_bf16(dev):
            where = (f"this GPU ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                     f"this CPU ({torch.backends.cpu.get_cpu_capability()}; bf16 needs AVX512-BF16 or AMX)")
            raise BackendUnavailable(f"{backend}: {where} has no bf16 hardware, where emulated bf16 runs several "
                                     "times slower than fp32")
        self.fused = False
        if self.channels_last:
            # a copy, so the caller's model (often the fp32 reference) keeps its layout; BatchNorm folded
            # into the convolutions as the ONNX exporter does (one pass over the activations less: ~6%)
            import copy

            model = copy.deepcopy(model)
            if dev.type == "cpu":
                try:
                    from torch.fx.experimental.optimization import fuse

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


class OnnxPredictor(Predictor):
    """An ONNX Runtime session over an exported (and possibly quantized) model file."""

    def __init__(self, path: str | os.PathLike, *, backend: str | None = None, threads: int | None = None,
                 device: str = "cpu", spinning: bool = True):
        ort = require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist; export it with receiptlib.fast.export_onnx "
                                    "or build_fast_model")
        self.path = path
        self.backend = backend or ("onnx-int8" if ".int8." in path.name else "onnx-fp32")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or default_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not spinning:
            # idle threads sleep instead of busy-waiting: leaves the cores to the JPEG-decoding workers
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Export and int8 quantization
# ----------------------------------------------------------------------------------------------

def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: int = 224, opset: int = OPSET) -> Path:
    """Export ``model`` (eval mode, CPU, fp32) to ONNX with a dynamic batch axis; input ``image``, output ``logits``.

    Uses the TorchScript-based exporter (``dynamo=False``): works with torch 2.x without ``onnxscript``.
    BatchNorm is folded into the convolutions by the exporter's constant folding.
    """
    import copy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(2, 3, image_size, image_size)  # not 1: torch.export would specialise a size-1 batch
    with warnings.catch_warnings():
        # "legacy TorchScript-based ONNX export" deprecation notes: the choice is deliberate (see docstring)
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        except (TypeError, NotImplementedError, AttributeError) as legacy_error:
            # a torch without the TorchScript exporter: the torch.export-based one needs onnxscript
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise BackendUnavailable(f"ONNX export failed with the TorchScript exporter ({legacy_error}); "
                                         "the torch.export-based exporter needs onnxscript: pip install onnxscript") from None
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), opset_version=max(opset, 18), dynamo=True)
    return path


def _as_numpy_batches(batches: Iterable) -> Iterable[np.ndarray]:
    for b in batches:
        if isinstance(b, (tuple, list)):  # (x, y) from a loader
            b = b[0]
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().numpy()
        yield np.ascontiguousarray(b, dtype=np.float32)


def _calibration_reader(batches: Iterable, input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        """Feeds preprocessed training images (batches) to ONNX Runtime's calibrator."""

        def __init__(self):
            self._it = iter(_as_numpy_batches(batches))
            self.count = 0

        def get_next(self):
            b = next(self._it, None)
            if b is None:
                return None
            self.count += len(b)
            return {input_name: b}

    return ImageCalibrationReader()


def _float_ends(model) -> list[str]:
    """Names of the graph's first convolution and its last Conv/Gemm/MatMul (the layers kept in fp32)."""
    weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    return sorted({*convs[:1], *weighted[-1:]})


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calibration: Iterable, *,
                  per_channel: bool = True, float_ends: bool = True) -> Path:
    """Static int8 quantization (QDQ format) calibrated on ``calibration`` batches of preprocessed images.

    Weights int8 per output channel, activations uint8 (the U8S8 pair ONNX Runtime's x86 kernels run
    fastest; int8 activations fall back to slow paths on CPUs without VNNI). ``float_ends``: the first
    convolution and the classifier layer (its weights and products; its input, the pooled features, still
    passes through uint8) stay fp32, about 7% of ResNet18's FLOPs. On CPUs without VNNI (AVX2) the u8 x s8
    products of the first convolution, whose input is the normalised image, saturate the 16-bit
    intermediate sums: quantizing everything gave an agreement with fp32 (Other decisions included) of
    0.748 on 1,000 val photos of the quick preset (a 96 px run, EPYC AVX2), these two in fp32 0.986;
    ``reduce_range`` (7-bit weights, onnxruntime's advice for such CPUs) gave 0.976 alone and 0.983 on top.
    Still below `select_fast`'s 0.995 there: int8 is measured, and chosen only where it agrees. The model is pre-processed
    first (shape inference, graph optimisation): without it conv biases are not initializers and most of
    the speed-up is lost. MinMax calibration keeps only each tensor's per-batch min and max, so a few
    hundred 224 px images fit in memory. (Not ``CalibMaxIntermediateOutputs``: onnxruntime 1.31 discards
    the collected batches when that limit is reached, and fails when the batch count is a multiple of it.)
    """
    require_onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    import itertools

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_int8: the calibration iterable gave no images; pass batches of preprocessed "
                         "training images (e.g. receiptlib.fast.calibration_batches(root))")
    calibration = itertools.chain([first], batches)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre))
    import onnx

    graph_model = onnx.load(str(pre), load_external_data=False)
    input_name = graph_model.graph.input[0].name
    exclude = _float_ends(graph_model) if float_ends else []
    reader = _calibration_reader(calibration, input_name)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(max(old_level, logging.ERROR))  # the quantizer logs per-node chatter on the root logger
    try:
        quantize_static(str(pre), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    finally:
        root.setLevel(old_level)
        pre.unlink(missing_ok=True)
    return out_path


def calibration_batches(root: str | os.PathLike, *, classes: Sequence[str] | None = None, n: int = 256,
                        image_size: int = 224, batch_size: int = 32, seed: int = 0, workers: int = 0):
    """A list-free generator of ``n`` preprocessed training images (eval transform), ``batch_size`` at a time.

    A random (seeded) subset of ``root/train`` so every chain is represented.
    """
    from .data import ReceiptFolder, eval_transform

    ds = ReceiptFolder(root, "train", classes=classes, transform=eval_transform(image_size=image_size))
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[: min(n, len(ds))]
    sub = torch.utils.data.Subset(ds, idx.tolist())
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers)
    for x, _ in loader:
        yield x


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
    from .common import pick_device

    return OnnxPredictor(Path(onnx_dir) / ONNX_FILES[backend], backend=backend, threads=threads,
                         device=str(pick_device(device)), spinning=spinning)


def prepare_onnx(model: nn.Module, out_dir: str | os.PathLike, *, image_size: int = 224,
                 calibration: Iterable | None = None, int8: bool = True) -> dict[str, Path]:
    """Export ``model.onnx`` and (when ``int8`` and calibration batches are given) ``model.int8.onnx``."""
    out_dir = Path(out_dir)
    files = {"onnx-fp32": export_onnx(model, out_dir / ONNX_FILES["onnx-fp32"], image_size=image_size)}
    if int8:
        if calibration is None:
            raise ValueError("onnx-int8 needs calibration batches of preprocessed training images (calibration=...)")
        files["onnx-int8"] = quantize_int8(files["onnx-fp32"], out_dir / ONNX_FILES["onnx-int8"], calibration)
    return files


# ----------------------------------------------------------------------------------------------
# Agreement with fp32 PyTorch and the choice of the fastest qualifying backend
# ----------------------------------------------------------------------------------------------

def as_decision(decide: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Turn an Other decision into ``logits -> predicted class indices`` (Other = len(known)).

    ``decide``: None (argmax, no Other), an object with ``.predict(logits)`` (an openset detector),
    a callable, the path of a thresholds file, or an array of per-class max-logit thresholds
    (``other_threshold``: a prediction whose max logit is below its class's threshold becomes Other, section VI).
    """
    if decide is None:
        return lambda logits: np.asarray(logits).argmax(1)
    if hasattr(decide, "predict"):
        return lambda logits: np.asarray(decide.predict(np.asarray(logits)))
    if callable(decide):
        return lambda logits: np.asarray(decide(np.asarray(logits)))
    if isinstance(decide, (str, os.PathLike)):  # a thresholds file (receiptlib.openset.save_thresholds)
        from .openset import load_thresholds

        return as_decision(load_thresholds(decide))
    thresholds = np.asarray(decide, dtype=np.float64)

    def per_class_max_logit(logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        if thresholds.shape != (logits.shape[1],):
            raise ValueError(f"other_threshold has shape {thresholds.shape}; expected ({logits.shape[1]},), "
                             "one threshold per known class")
        pred = logits.argmax(1)
        other = logits[np.arange(len(pred)), pred] < thresholds[pred]
        return np.where(other, logits.shape[1], pred)

    return per_class_max_logit


def run_batches(predictor: Callable, batches: Sequence[torch.Tensor]) -> np.ndarray:
    return np.concatenate([np.asarray(predictor(b), dtype=np.float32) for b in batches])


def _macro_f1(labels: np.ndarray, pred: np.ndarray, num_known: int) -> float:
    """The report's macro-F1 (as `openset.metrics`): mean F1 over the labels 0..C, C = Other."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, labels=list(range(num_known + 1)), average="macro", zero_division=0))


def throughput(predictor: Callable, batch: torch.Tensor, *, warmup: int = 1, repeats: int = 3) -> float:
    """Images per second of the model alone on one batch: median of ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        predictor(batch)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        predictor(batch)
        times.append(time.perf_counter() - t)
    return len(batch) / float(np.median(times))


@dataclass
class Candidate:
    """One backend's agreement with the fp32 reference on val, and its measured speed."""

    backend: str
    agreement: float | None = None      # fraction of val images with the same prediction (Other included)
    macro_f1: float | None = None
    f1_drop: float | None = None        # reference macro-F1 minus this one's
    max_abs_logit_diff: float | None = None
    images_per_s: float | None = None   # model alone, batch of val images
    qualifies: bool = False
    reason: str = ""


@dataclass
class FastChoice:
    """What `build_fast_model` decided; saved as ``choice.json`` in ``out_dir``."""

    backend: str
    overridden: bool
    reference: str
    reference_macro_f1: float
    min_agreement: float
    max_f1_drop: float
    n_val: int
    image_size: int
    batch_size: int
    threads: int
    device: str
    candidates: list[Candidate] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    out_dir: str = ""

    def candidate(self, backend: str) -> Candidate:
        for c in self.candidates:
            if c.backend == backend:
                return c
        raise KeyError(f"{backend!r} was not a candidate; candidates: {[c.backend for c in self.candidates]}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FastChoice":
        d = dict(d)
        d["candidates"] = [Candidate(**c) for c in d.get("candidates", [])]
        return cls(**d)

    def summary(self) -> str:
        lines = [f"fast backend: {self.backend}" + (" (overridden)" if self.overridden else
                 f" (fastest with agreement >= {self.min_agreement:.3f} and macro-F1 drop <= {self.max_f1_drop})")]
        for c in self.candidates:
            fig = ("-" if c.agreement is None else
                   f"agreement {c.agreement:.4f}, macro-F1 {c.macro_f1:.4f} (drop {c.f1_drop:+.4f})")
            speed = "-" if c.images_per_s is None else f"{c.images_per_s:.0f} img/s"
            mark = "ok " if c.qualifies else "no "
            lines.append(f"  {mark}{c.backend:<20} {speed:>10}  {fig}  {c.reason}")
        return "\n".join(lines)


def select_fast(model: nn.Module, val_batches: Sequence[torch.Tensor], val_labels: np.ndarray, out_dir: str | os.PathLike, *,
                candidates: Sequence = DEFAULT_CANDIDATES, decide: Any = None, calibration: Iterable | None = None,
                backend: str | None = None, min_agreement: float = 0.995, max_f1_drop: float = 0.005,
                threads: int | None = None, device: str = "auto", speed_repeats: int = 3,
                verbose: bool = True) -> FastChoice:
    """Measure each candidate against fp32 PyTorch on ``val_batches`` and save the choice in ``out_dir``.

    candidates: backend names, or ``(name, predictor)`` pairs for a custom predictor (tests use a
    deliberately broken one). A candidate qualifies when its predictions after ``decide`` (the Other
    decision, see `as_decision`) agree with the reference's on >= ``min_agreement`` of the images and its
    macro-F1 (against ``val_labels``) is at most ``max_f1_drop`` below the reference's. The fastest
    qualifying one (model alone, one val batch) is chosen; ``backend=`` overrides the choice (it is still
    measured and reported). The reference always qualifies, so a choice always exists.
    """
    from .common import pick_device

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    threads = int(threads or default_threads())
    decision = as_decision(decide)
    val_labels = np.asarray(val_labels)
    val_batches = list(val_batches)
    if not val_batches:
        raise ValueError("select_fast: no val images; pass at least one batch")
    n_val = sum(len(b) for b in val_batches)
    if len(val_labels) != n_val:
        raise ValueError(f"val_labels has {len(val_labels)} entries for {n_val} val images")

    names = [c if isinstance(c, str) else c[0] for c in candidates]
    if backend is not None and backend not in names:
        names.append(backend)
        candidates = list(candidates) + [backend]
    for n in names:
        if isinstance(n, str) and n not in BACKENDS and not any(not isinstance(c, str) and c[0] == n for c in candidates):
            raise ValueError(f"candidate {n!r}: expected one of {list(BACKENDS)} or a (name, predictor) pair")

    files: dict[str, str] = {}
    wanted_onnx = [n for n in names if n in ONNX_FILES]
    onnx_error = None
    if wanted_onnx:
        try:
            require_onnxruntime()
            made = prepare_onnx(model, out_dir, image_size=int(val_batches[0].shape[-1]), calibration=calibration,
                                int8="onnx-int8" in wanted_onnx and calibration is not None)
            files = {k: v.name for k, v in made.items()}
        except Exception as exc:  # noqa: BLE001 - an unavailable backend is reported, others still run
            onnx_error = f"{type(exc).__name__}: {exc}"

    reference = TorchPredictor(model, REFERENCE, device=dev)
    ref_logits = run_batches(reference, val_batches)
    ref_pred = decision(ref_logits)
    ref_f1 = _macro_f1(val_labels, ref_pred, ref_logits.shape[1])

    results: list[Candidate] = []
    for cand in candidates:
        name, pred_obj = (cand, None) if isinstance(cand, str) else (cand[0], cand[1])
        c = Candidate(name)
        results.append(c)
        try:
            if pred_obj is None:
                if name in ONNX_FILES and name not in files:
                    raise BackendUnavailable(onnx_error or f"{name}: no calibration images were given for int8")
                pred_obj = reference if name == REFERENCE else make_predictor(
                    name, model=model, onnx_dir=out_dir, threads=threads, device=str(dev))
            logits = run_batches(pred_obj, val_batches)
            pred = decision(logits)
            c.agreement = float(np.mean(pred == ref_pred))
            c.macro_f1 = _macro_f1(val_labels, pred, ref_logits.shape[1])
            c.f1_drop = ref_f1 - c.macro_f1
            c.max_abs_logit_diff = float(np.max(np.abs(logits - ref_logits)))
            c.images_per_s = throughput(pred_obj, val_batches[0], repeats=speed_repeats)
            c.qualifies = c.agreement >= min_agreement and c.f1_drop <= max_f1_drop
            if not c.qualifies:
                c.reason = (f"agreement {c.agreement:.4f} < {min_agreement}" if c.agreement < min_agreement
                            else f"macro-F1 drop {c.f1_drop:.4f} > {max_f1_drop}")
        except Exception as exc:  # noqa: BLE001 - one failing backend must not stop the choice
            c.reason = f"unavailable: {type(exc).__name__}: {str(exc)[:300]}"
    if REFERENCE not in names:  # the fallback that always qualifies
        results.append(Candidate(REFERENCE, 1.0, ref_f1, 0.0, 0.0, throughput(reference, val_batches[0],
                                                                              repeats=speed_repeats), True))

    if backend is not None:
        chosen, overridden = backend, True
        if not any(c.backend == backend and c.agreement is not None for c in results):
            raise BackendUnavailable(f"backend={backend!r} was asked for but cannot run here: "
                                     f"{next(c.reason for c in results if c.backend == backend)}")
    else:
        ok = [c for c in results if c.qualifies]
        chosen, overridden = max(ok, key=lambda c: c.images_per_s).backend, False

    choice = FastChoice(backend=chosen, overridden=overridden, reference=REFERENCE, reference_macro_f1=ref_f1,
                        min_agreement=min_agreement, max_f1_drop=max_f1_drop, n_val=n_val,
                        image_size=int(val_batches[0].shape[-1]), batch_size=len(val_batches[0]), threads=threads,
                        device=str(dev), candidates=results, files=files, out_dir=str(out_dir))
    (out_dir / CHOICE_FILE).write_text(json.dumps(choice.to_json(), indent=2) + "\n")
    if verbose:
        print(choice.summary())
    return choice


def load_choice(fast_dir: str | os.PathLike) -> FastChoice:
    path = Path(fast_dir) / CHOICE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the fast model first (receiptlib.fast.build_fast_model)")
    return FastChoice.from_json(json.loads(path.read_text()))


def load_predictor(fast_dir: str | os.PathLike, *, model: nn.Module | None = None, backend: str | None = None,
                   threads: int | None = None, device: str = "auto", spinning: bool = True) -> Predictor:
    """The predictor saved in ``fast_dir/choice.json`` (or ``backend`` to override); torch-* need ``model``.

    A saved choice that cannot run on this machine (say torch-bf16, chosen where the CPU has bf16 hardware,
    now on one without) falls back to the fp32 reference with a warning; an explicit ``backend`` raises."""
    choice = load_choice(fast_dir)
    kwargs = dict(model=model, onnx_dir=fast_dir, threads=threads, device=device, spinning=spinning)
    if backend is not None:
        return make_predictor(backend, **kwargs)
    try:
        return make_predictor(choice.backend, **kwargs)
    except BackendUnavailable as exc:
        warnings.warn(f"{fast_dir}: the saved fast backend {choice.backend!r} cannot run here ({exc}); using "
                      f"{REFERENCE} (rebuild with `receiptlib build-fast` to choose again on this machine)", stacklevel=2)
        return make_predictor(REFERENCE, **kwargs)


# ----------------------------------------------------------------------------------------------
# A run folder -> its fast model
# ----------------------------------------------------------------------------------------------

def _val_batches(root, classes, *, image_size: int, batch_size: int, n_val: int | None, seed: int = 0,
                 workers: int = 0):
    from .data import ReceiptFolder, eval_transform

    ds = ReceiptFolder(root, "val", classes=classes, transform=eval_transform(image_size=image_size))
    idx = np.arange(len(ds))
    if n_val is not None and n_val < len(ds):
        idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n_val])
    sub = torch.utils.data.Subset(ds, idx.tolist())
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y.numpy())
    return xs, np.concatenate(ys)


def build_fast_model(run, *, candidates: Sequence = DEFAULT_CANDIDATES, backend: str | None = None,
                     data_root: str | os.PathLike | None = None, decide: Any = "run", n_val: int | None = 1000,
                     n_calibration: int = 256, image_size: int | None = None, batch_size: int = 16,
                     threads: int | None = None, device: str = "auto", min_agreement: float = 0.995,
                     max_f1_drop: float = 0.005, out_dir: str | os.PathLike | None = None, workers: int = 0,
                     verbose: bool = True) -> FastChoice:
    """Build ``run/fast/`` (ONNX files + ``choice.json``) for a trained run and print the choice.

    run: a `receiptlib.runs.Run` (or its folder). ``decide="run"`` takes the run's Other decision
    (`run_decision`); None means argmax without Other. ``n_val`` val images (a seeded subset; None = all)
    measure agreement; ``n_calibration`` training images calibrate int8. ``backend`` overrides the choice.
    """
    from . import runs as _runs

    if not hasattr(run, "load_model"):
        run = _runs.Run(run)
    model = load_run_model(run).eval()
    classes = list(run.classes)
    root = Path(data_root) if data_root is not None else _run_data_root(run)
    size = int(image_size or _run_image_size(run))
    if isinstance(decide, str) and decide == "run":
        decide = run_decision(run)
    xs, ys = _val_batches(root, classes, image_size=size, batch_size=batch_size, n_val=n_val, workers=workers)
    calib = calibration_batches(root, classes=classes, n=n_calibration, image_size=size, workers=workers)
    return select_fast(model, xs, ys, out_dir or Path(run.path) / "fast", candidates=candidates, decide=decide,
                       calibration=calib, backend=backend, min_agreement=min_agreement, max_f1_drop=max_f1_drop,
                       threads=threads, device=device, verbose=verbose)


def fast_predictor(run, *, backend: str | None = None, threads: int | None = None, device: str = "auto",
                   build: bool = True, spinning: bool = False, **build_kwargs) -> Predictor:
    """The run's fast predictor (``run/fast/choice.json``), built first when missing and ``build``.

    ``backend`` overrides the saved choice. ``spinning=False``: ONNX Runtime's idle threads sleep, leaving
    the cores to the loader workers that decode JPEGs (the end-to-end setting, see timing.py).
    """
    from . import runs as _runs

    if not hasattr(run, "load_model"):
        run = _runs.Run(run)
    fast_dir = Path(run.path) / "fast"
    if not (fast_dir / CHOICE_FILE).is_file():
        if not build:
            raise FileNotFoundError(f"{fast_dir / CHOICE_FILE} missing; run receiptlib.fast.build_fast_model first")
        build_fast_model(run, threads=threads, device=device, **build_kwargs)
    model = load_run_model(run, device)  # for a torch-* choice, and for the fallback should the saved one not run here
    return load_predictor(fast_dir, model=model, backend=backend, threads=threads, device=device, spinning=spinning)


def load_run_model(run, device: str = "cpu"):
    """``run.load_model()``, after importing the modules that register extra architectures (stn)."""
    import importlib

    arch = (getattr(run, "config", None) or {}).get("arch", "resnet18")
    if arch != "resnet18":
        try:
            importlib.import_module(".stn", __package__)
        except ImportError:
            pass
    return run.load_model(device=device)


def _run_data_root(run) -> Path:
    cfg = getattr(run, "config", None) or {}
    for key in ("data_dir", "data_root", "root"):
        if isinstance(cfg, dict) and cfg.get(key):
            return Path(cfg[key])
    raise ValueError(f"run {getattr(run, 'path', run)}: its config.json names no data folder; pass data_root=...")


def _run_image_size(run) -> int:
    cfg = getattr(run, "config", None) or {}
    recipe = cfg.get("recipe") if isinstance(cfg, dict) else None
    for d in (recipe, cfg):
        if isinstance(d, dict) and d.get("image_size"):
            return int(d["image_size"])
    return 224


def run_decision(run, thresholds: str | os.PathLike | None = None):
    """The run's Other decision: a thresholds file (``thresholds`` or ``run/thresholds.json``) when there
    is one, else the paper's per-class max-logit thresholds (`openset.PerClassLogit`) fitted on the run's
    cached val outputs; None (argmax, no Other) when the run has no val outputs."""
    from . import openset

    path = Path(thresholds) if thresholds is not None else Path(run.path) / "thresholds.json"
    if thresholds is not None or path.is_file():
        return openset.load_thresholds(path, classes=run.classes)
    try:
        val = run.outputs("val")
    except FileNotFoundError:
        return None
    return openset.PerClassLogit().fit(val)
