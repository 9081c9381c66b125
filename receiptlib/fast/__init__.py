"""Fast inference (section VIII of the paper): ONNX export, int8 quantization, backend choice.

The paper's point in section VIII is that the model classifies live. Here a trained model gets a uniform
`Predictor` per backend (``(batch tensor) -> numpy logits``, `backends`) and `build_fast_model` (`choice`)
picks the fastest backend whose predictions, Other decisions included, agree with fp32 PyTorch on >= 99.5%
of val images and whose macro-F1 stays within 0.005; the agreement figures are saved beside the model
(``choice.json``). `export` makes the ONNX files: fp32, and int8 calibrated on training images.

ONNX Runtime is the optional extra ``fast`` (``pip install receiptlib[fast]``) and is imported lazily.
Export uses torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based exporter
needs ``onnxscript``, which is not a dependency.
"""
from __future__ import annotations

from .backends import (BACKENDS, ONNX_FILES, REFERENCE, BackendUnavailable, OnnxPredictor, Predictor, TorchPredictor,
                       default_threads, make_predictor, require_onnxruntime, run_batches, throughput)
from .choice import (CHOICE_FILE, DEFAULT_CANDIDATES, Candidate, FastChoice, build_fast_model, fast_predictor,
                     load_choice, load_predictor, run_decision, select_fast, val_batches)
from .export import OPSET, calibration_batches, eval_loader, export_onnx, prepare_onnx, quantize_int8

__all__ = ["BACKENDS", "CHOICE_FILE", "DEFAULT_CANDIDATES", "ONNX_FILES", "OPSET", "REFERENCE", "BackendUnavailable",
           "Candidate", "FastChoice", "OnnxPredictor", "Predictor", "TorchPredictor", "build_fast_model",
           "calibration_batches", "default_threads", "eval_loader", "export_onnx", "fast_predictor", "load_choice",
           "load_predictor", "make_predictor", "prepare_onnx", "quantize_int8", "require_onnxruntime",
           "run_batches", "run_decision", "select_fast", "throughput", "val_batches"]
