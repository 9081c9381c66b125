"""A trained model as users serve it, without torch: its self-description (`ModelCard`), the slim weights
artefact's header, the ONNX model's metadata, and the ONNX Runtime session (`OnnxPredictor`).

Two files carry a model out of its run folder, each with the same card:
    RUN/model.safetensors   the model weights alone (no optimizer, no EMA copies), written when training
                            finishes; the card in the safetensors header (``__metadata__["receiptlib"]``).
                            safetensors holds tensors and strings only: loading it can never run code.
    RUN/fast/model.onnx     the exported graph (`receiptlib build-fast`); the card in the ONNX metadata
                            (``metadata_props``), plus flat keys (classes, image_size, mean, std, resize,
                            other_rule) so any ONNX Runtime user can run it without receiptlib (README).

Nothing here imports torch: `receiptlib predict` on the ONNX backend starts without it.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import OTHER
from .photos import Preprocessing

__all__ = ["ARTEFACT_FILE", "BACKENDS", "BackendUnavailable", "CARD_KEY", "ModelCard", "ONNX_FILES",
           "OnnxPredictor", "Preprocessing", "REFERENCE", "card_from_metadata", "card_from_onnx_metadata", "cpu_count", "onnx_metadata",
           "read_card", "require_onnxruntime", "safetensors_header"]

ARTEFACT_FILE = "model.safetensors"
CARD_KEY = "receiptlib"
CARD_SCHEMA, CARD_VERSION = "receiptlib.model", 1
BACKENDS = ("torch-fp32", "torch-channels_last", "torch-bf16", "torch-compile", "onnx-fp32", "onnx-int8")
REFERENCE = "torch-fp32"
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
# A safetensors header is a few kB of JSON; a length beyond this is not a safetensors file (a pickle's first
# eight bytes read as a length are astronomically large).
MAX_HEADER_BYTES = 100_000_000


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (missing package, failed compile, no bf16 support, ...)."""


# ----------------------------------------------------------------------------------------------
# The model card: what a user needs to run the model
# ----------------------------------------------------------------------------------------------

@dataclass
class ModelCard:
    """The self-description of a trained model.

    classes: the known classes in logit order (Other is not a logit: it is decided by ``other``).
    preprocessing: the input rule (`photos.Preprocessing`). other: the Other rule, a thresholds document
    (schema receiptlib.thresholds, as `openset.save_thresholds` writes) or None (argmax over known classes).
    run: the run's identity (name, digest of its configuration, epoch, val accuracy, weights source).
    """

    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    run: dict = field(default_factory=dict)
    other: dict | None = None

    def __post_init__(self):
        self.classes = [str(c) for c in self.classes]
        if not self.classes or OTHER in self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"ModelCard classes: expected distinct known class names without {OTHER!r}, "
                             f"got {self.classes}")

    def to_json(self) -> dict:
        return {"schema": CARD_SCHEMA, "version": CARD_VERSION, "arch": self.arch, "classes": list(self.classes),
                "other_label": OTHER, "preprocessing": self.preprocessing.to_dict(), "run": dict(self.run),
                "other": self.other}

    @classmethod
    def from_json(cls, doc, *, where: str) -> "ModelCard":
        if not isinstance(doc, dict) or doc.get("schema") != CARD_SCHEMA:
            raise ValueError(f"{where}: no receiptlib model card (expected \"schema\": \"{CARD_SCHEMA}\")")
        if doc.get("version") != CARD_VERSION:
            raise ValueError(f"{where}: model card version {doc.get('version')!r}; this receiptlib reads version "
                             f"{CARD_VERSION}: re-export the model with this version")
        try:
            return cls(arch=str(doc["arch"]), classes=doc["classes"],
                       preprocessing=Preprocessing.from_dict(doc["preprocessing"], where=f"{where}: preprocessing"),
                       run=dict(doc.get("run") or {}), other=doc.get("other"))
        except KeyError as e:
            raise ValueError(f"{where}: model card without {e.args[0]!r}") from None

    def onnx_metadata(self) -> dict[str, str]:
        """String key -> string value pairs for the ONNX model's metadata_props."""
        p = self.preprocessing
        return {CARD_KEY: json.dumps(self.to_json(), sort_keys=True), "classes": json.dumps(self.classes),
                "image_size": str(p.image_size), "mean": json.dumps(list(p.mean)), "std": json.dumps(list(p.std)),
                "resize": p.resize, "other_label": OTHER,
                "other_rule": json.dumps(self.other)}  # null: argmax over the known classes, no Other


# ----------------------------------------------------------------------------------------------
# Reading the cards back (no torch, no code execution)
# ----------------------------------------------------------------------------------------------

def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, parsed by hand (8-byte little-endian length, then JSON): no
    tensor is read and nothing is unpickled. A file of another kind (a pickled checkpoint, a booby-trapped
    pickle) is refused with an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model artefact {path} does not exist; it is written when training finishes "
                                "(or by `receiptlib build-fast`)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{path}: not a safetensors file (a pickled checkpoint? receiptlib never unpickles a "
                             "model artefact); write one with receiptlib.runs.save_artefact")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def read_card(path: str | os.PathLike) -> ModelCard:
    """The model card of ``model.safetensors`` or an exported ``.onnx`` file."""
    path = Path(path)
    if path.suffix == ".onnx":
        return card_from_onnx_metadata(onnx_metadata(path), where=str(path))
    meta = safetensors_header(path).get("__metadata__") or {}
    return card_from_metadata(meta, where=str(path), missing="a safetensors file without a receiptlib model card; "
                                                            "export it with receiptlib.runs.save_artefact")


def card_from_onnx_metadata(meta: dict[str, str], *, where: str) -> ModelCard:
    return card_from_metadata(meta, where=where, missing="an ONNX model without receiptlib metadata (exported before "
                                                         "models described themselves); rebuild it with "
                                                         "`receiptlib build-fast --run RUN`")


def card_from_metadata(meta: dict[str, str], *, where: str, missing: str) -> ModelCard:
    """The card under CARD_KEY of a file's string metadata; ``missing``: the error when it has none."""
    if CARD_KEY not in meta:
        raise ValueError(f"{where}: {missing}")
    try:
        doc = json.loads(meta[CARD_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed model card ({e})") from None
    return ModelCard.from_json(doc, where=where)


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The custom metadata of an ONNX model file, as ONNX Runtime reports it."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


# ----------------------------------------------------------------------------------------------
# ONNX Runtime
# ----------------------------------------------------------------------------------------------

def require_onnxruntime():
    """Import onnxruntime or raise a clear error telling how to install the optional extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            "the ONNX backends need onnxruntime and onnx, the optional extra 'fast': "
            "pip install 'receiptlib[fast]' (or pip install onnx onnxruntime), or use a torch-* backend") from exc
    return onnxruntime


def cpu_count() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class OnnxPredictor:
    """An ONNX Runtime session over an exported (and possibly quantized) model file:
    ``predictor(x) -> np.ndarray`` of float32 logits for a (N, 3, H, W) batch (numpy, or a torch tensor);
    ``card``: the model card in its metadata (None for a file exported without one)."""

    def __init__(self, path: str | os.PathLike, *, backend: str | None = None, threads: int | None = None,
                 device: str = "cpu", spinning: bool = True):
        ort = require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist; export it with receiptlib.fast.export_onnx "
                                    "or `receiptlib build-fast`")
        self.path = path
        self.backend = backend or ("onnx-int8" if ".int8." in path.name else "onnx-fp32")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or cpu_count())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not spinning:
            # idle threads sleep instead of busy-waiting: leaves the cores to the threads that decode JPEGs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.card = card_from_onnx_metadata(meta, where=str(path)) if CARD_KEY in meta else None

    def __call__(self, x) -> np.ndarray:
        if hasattr(x, "detach"):  # a torch tensor, without importing torch here
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxPredictor({self.backend!r}, {str(self.path)!r}, device={self.device!r})"
