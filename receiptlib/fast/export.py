"""ONNX export, int8 static quantization, and the preprocessed images that calibrate it."""
from __future__ import annotations

import copy
import itertools
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..data import IMAGENET_MEAN, IMAGENET_STD, ReceiptFolder, eval_transform
from ..io import atomic_write
from ..serving import ModelCard
from .backends import ONNX_FILES, BackendUnavailable, require_onnxruntime

OPSET = 17  # ONNX Runtime >= 1.14 runs it; QDQ per-channel needs >= 13


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: int = 224, opset: int = OPSET,
                card: ModelCard | None = None) -> Path:
    """Export ``model`` (eval mode, CPU, fp32) to ONNX with a dynamic batch axis; input ``image``, output ``logits``;
    with ``card``, the model describes itself in its metadata (`describe_onnx`).

    Uses the TorchScript-based exporter (``dynamo=False``): works with torch 2.x without ``onnxscript``.
    BatchNorm is folded into the convolutions by the exporter's constant folding.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(2, 3, image_size, image_size)  # not 1: torch.export would specialise a size-1 batch

    def export(tmp: Path) -> None:
        with warnings.catch_warnings():
            # "legacy TorchScript-based ONNX export" deprecation notes: the choice is deliberate (see docstring)
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                                  do_constant_folding=True, dynamo=False)
            except (TypeError, NotImplementedError, AttributeError) as legacy_error:
                # a torch without the TorchScript exporter: the torch.export-based one needs onnxscript
                try:
                    import onnxscript  # noqa: F401
                except ImportError:
                    raise BackendUnavailable(f"ONNX export failed with the TorchScript exporter ({legacy_error}); "
                                             "the torch.export-based exporter needs onnxscript: "
                                             "pip install onnxscript") from None
                batch = torch.export.Dim("batch", min=1)
                torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                                  dynamic_shapes=({0: batch},), opset_version=max(opset, 18), dynamo=True)

    atomic_write(path, export)
    return describe_onnx(path, card) if card is not None else path


def describe_onnx(path: str | os.PathLike, card: ModelCard) -> Path:
    """Write ``card`` into the ONNX file's metadata_props (serving.ModelCard.onnx_metadata: the card as JSON and
    flat keys a plain ONNX Runtime user reads), replacing earlier values of the same keys."""
    import onnx

    path = Path(path)
    graph_model = onnx.load(str(path))
    meta = card.onnx_metadata()
    kept = [p for p in graph_model.metadata_props if p.key not in meta]
    del graph_model.metadata_props[:]
    graph_model.metadata_props.extend(kept)
    for key, value in meta.items():
        graph_model.metadata_props.add(key=key, value=value)
    graph_model.doc_string = (f"receiptlib {card.arch}: {len(card.classes)} known receipt chains + "
                              f"{card.to_json()['other_label']}; see metadata_props")
    return atomic_write(path, lambda tmp: onnx.save(graph_model, str(tmp)))


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
                  per_channel: bool = True, float_ends: bool = True, card: ModelCard | None = None) -> Path:
    """Static int8 quantization (QDQ: int8 per-channel weights, uint8 activations, ONNX Runtime's fastest x86
    pair) calibrated on ``calibration`` batches of preprocessed images; ``float_ends`` keeps the first
    convolution and the classifier layer fp32, whose u8 x s8 products saturate on CPUs without VNNI (the
    measurements: docs/decisions.md)."""
    require_onnxruntime()
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_int8: the calibration iterable gave no images; pass batches of preprocessed "
                         "training images (e.g. receiptlib.fast.calibration_batches(root))")
    calibration = itertools.chain([first], batches)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre))  # without it conv biases are no initializers: most speed lost
    graph_model = onnx.load(str(pre), load_external_data=False)
    input_name = graph_model.graph.input[0].name
    exclude = _float_ends(graph_model) if float_ends else []
    reader = _calibration_reader(calibration, input_name)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(max(old_level, logging.ERROR))  # the quantizer logs per-node chatter on the root logger
    try:  # MinMax calibration keeps each tensor's min and max only: a few hundred 224 px images fit in memory
        atomic_write(out_path, lambda tmp: quantize_static(
            str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude))
    finally:
        root.setLevel(old_level)
        pre.unlink(missing_ok=True)
    return describe_onnx(out_path, card) if card is not None else out_path


def calibration_batches(root: str | os.PathLike, *, classes: Sequence[str] | None = None, n: int = 256,
                        image_size: int = 224, batch_size: int = 32, seed: int = 0, workers: int = 0,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """A list-free generator of ``n`` preprocessed training images (eval transform), ``batch_size`` at a time.

    A random (seeded) subset of ``root/train`` so every chain is represented.
    """
    for x, _ in eval_loader(root, "train", classes=classes, n=n, image_size=image_size, batch_size=batch_size,
                            seed=seed, workers=workers, shuffled=True, mean=mean, std=std):
        yield x


def eval_loader(root: str | os.PathLike, split: str, *, classes: Sequence[str] | None = None, n: int | None = None,
                image_size: int = 224, batch_size: int = 32, seed: int = 0, workers: int = 0,
                shuffled: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.utils.data.DataLoader:
    """``(x, y)`` batches of a seeded random subset of ``n`` images of ``root/split`` (None: all) under the eval
    transform (normalised by ``mean`` / ``std``: the model's): in the folder's order, or with ``shuffled`` in the
    subset's random order."""
    ds = ReceiptFolder(root, split, classes=classes, transform=eval_transform(image_size=image_size, mean=mean, std=std))
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    if not shuffled:
        idx = np.sort(idx)
    sub = torch.utils.data.Subset(ds, idx.tolist())
    return torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers)


def prepare_onnx(model: nn.Module, out_dir: str | os.PathLike, *, image_size: int = 224,
                 calibration: Iterable | None = None, int8: bool = True,
                 card: ModelCard | None = None) -> dict[str, Path]:
    """Export ``model.onnx`` and (when ``int8`` and calibration batches are given) ``model.int8.onnx``, each
    described by ``card`` when given."""
    out_dir = Path(out_dir)
    files = {"onnx-fp32": export_onnx(model, out_dir / ONNX_FILES["onnx-fp32"], image_size=image_size, card=card)}
    if int8:
        if calibration is None:
            raise ValueError("onnx-int8 needs calibration batches of preprocessed training images (calibration=...)")
        files["onnx-int8"] = quantize_int8(files["onnx-fp32"], out_dir / ONNX_FILES["onnx-int8"], calibration,
                                           card=card)
    return files
