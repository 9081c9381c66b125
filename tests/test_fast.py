"""ONNX export, int8 quantization and the agreement check of the fast path, on tiny data."""
import json
import sys

import numpy as np
import pytest
import torch

from receiptlib import fast
from receiptlib.models import resnet18
from receiptlib.openset import as_decision

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # tiny inputs: the checks are about correctness, not speed


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet18(5, weights="none").eval()


def _images(n, seed=0):
    # images that differ from each other, so the random-weight model does not predict one class for all
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g) + torch.randn(n, 3, 1, 1, generator=g) * 2


class Permuted(fast.Predictor):
    """A deliberately broken candidate: right logits, wrong class order."""

    backend = "broken"

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x):
        return np.roll(self.inner(x), 1, axis=1)


def test_onnx_export_round_trip_matches_pytorch(model, tmp_path):
    path = fast.export_onnx(model, tmp_path / "m.onnx", image_size=SIZE)
    onnx_pred = fast.OnnxPredictor(path, threads=1)
    assert onnx_pred.backend == "onnx-fp32"
    x = _images(3)  # a batch size other than the export's 1: the batch axis is dynamic
    with torch.no_grad():
        ref = model(x).numpy()
    got = onnx_pred(x)
    assert got.dtype == np.float32 and got.shape == (3, 5)
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)


def test_torch_backends_agree_with_reference(model):
    x = _images(4)
    ref = fast.TorchPredictor(model, "torch-fp32")(x)
    np.testing.assert_allclose(fast.TorchPredictor(model, "torch-channels_last")(x), ref, atol=1e-3, rtol=1e-3)
    bf16 = fast.TorchPredictor(model, "torch-bf16", emulated_bf16=True)(x)  # whatever this CPU has
    assert bf16.dtype == np.float32 and np.abs(bf16 - ref).max() < 0.1 * np.abs(ref).max() + 0.1
    assert next(model.parameters()).is_contiguous()  # the caller's model keeps its layout


def test_bf16_backends_unavailable_on_cpu_without_bf16_hardware(model, monkeypatch):
    from receiptlib import common

    monkeypatch.setattr(common, "native_bf16", lambda device: False)
    for backend in ("torch-bf16", "torch-compile"):
        with pytest.raises(fast.BackendUnavailable, match="no bf16 hardware"):
            fast.TorchPredictor(model, backend, device="cpu")
    fast.TorchPredictor(model, "torch-channels_last", device="cpu")  # fp32 backends are unaffected


def test_int8_quantization_runs(model, tmp_path):
    fp32 = fast.export_onnx(model, tmp_path / "model.onnx", image_size=SIZE)
    # 4 batches: onnxruntime 1.31 failed on a batch count that is a multiple of CalibMaxIntermediateOutputs
    int8 = fast.quantize_int8(fp32, tmp_path / "model.int8.onnx", [_images(4, seed=s) for s in range(4)])
    assert int8.is_file() and not (tmp_path / "model.int8.pre.onnx").exists()
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    pred = fast.OnnxPredictor(int8, threads=1)
    assert pred.backend == "onnx-int8"
    x = _images(6, seed=5)
    got, ref = pred(x), fast.OnnxPredictor(fp32, threads=1)(x)
    assert got.shape == (6, 5) and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9


def _weight_is_quantized(graph, node) -> bool:
    """Whether a Conv/Gemm's weight input comes out of a DequantizeLinear (QDQ int8) or is a float initializer."""
    producers = {o: n for n in graph.node for o in n.output}
    src = producers.get(node.input[1])
    return src is not None and src.op_type == "DequantizeLinear"


@pytest.mark.parametrize("float_ends", [True, False])
def test_int8_keeps_the_first_convolution_and_the_classifier_in_fp32(model, tmp_path, float_ends):
    import onnx

    fp32 = fast.export_onnx(model, tmp_path / "model.onnx", image_size=SIZE)
    int8 = fast.quantize_int8(fp32, tmp_path / "model.int8.onnx", [_images(4, seed=s) for s in range(2)],
                              float_ends=float_ends)
    graph = onnx.load(str(int8)).graph
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    quantized = [_weight_is_quantized(graph, n) for n in weighted]
    assert weighted[0].op_type == "Conv" and weighted[-1].op_type in ("Gemm", "MatMul")
    assert quantized[0] is not float_ends and quantized[-1] is not float_ends
    assert all(quantized[1:-1])  # everything between is int8


def test_int8_without_calibration_images_says_so(model, tmp_path):
    fp32 = fast.export_onnx(model, tmp_path / "model.onnx", image_size=SIZE)
    with pytest.raises(ValueError, match="calibration"):
        fast.quantize_int8(fp32, tmp_path / "model.int8.onnx", [])


def test_agreement_check_saves_figures_and_rejects_a_broken_candidate(model, tmp_path):
    xs = [_images(8, seed=s) for s in range(3)]
    ref = fast.TorchPredictor(model, "torch-fp32")
    labels = fast.run_batches(ref, xs).argmax(1)  # labels = the reference's predictions: macro-F1 1.0
    choice = fast.select_fast(model, xs, labels, tmp_path / "fast", candidates=["onnx-fp32", "torch-fp32",
                              ("broken", Permuted(ref))], calibration=None, threads=1, speed_repeats=1,
                              verbose=False)
    saved = json.loads((tmp_path / "fast" / "choice.json").read_text())
    assert saved["backend"] == choice.backend and choice.backend in ("onnx-fp32", "torch-fp32")
    chosen = choice.candidate(choice.backend)
    assert chosen.qualifies and chosen.agreement >= 0.995 and chosen.f1_drop <= 0.005
    assert choice.candidate("onnx-fp32").agreement == 1.0
    broken = choice.candidate("broken")
    assert not broken.qualifies and broken.agreement < 0.995 and "agreement" in broken.reason
    assert (tmp_path / "fast" / "model.onnx").is_file()
    assert fast.load_choice(tmp_path / "fast").candidate("broken").qualifies is False
    pred = fast.load_predictor(tmp_path / "fast", model=model, threads=1)
    assert pred.backend == choice.backend and pred(xs[0]).shape == (8, 5)


def test_override_is_kept_and_marked(model, tmp_path):
    xs = [_images(4)]
    choice = fast.select_fast(model, xs, np.zeros(4, dtype=int), tmp_path, candidates=["torch-fp32"],
                              backend="torch-channels_last", threads=1, speed_repeats=1, verbose=False)
    assert choice.backend == "torch-channels_last" and choice.overridden
    assert "overridden" in choice.summary()


def test_unavailable_candidate_is_reported_not_fatal(model, tmp_path):
    # onnx-int8 without calibration images cannot be built: reported, the others still compete
    choice = fast.select_fast(model, [_images(4)], np.zeros(4, dtype=int), tmp_path,
                              candidates=["onnx-int8", "torch-fp32"], calibration=None, threads=1,
                              speed_repeats=1, verbose=False)
    assert choice.backend == "torch-fp32"
    assert choice.candidate("onnx-int8").reason.startswith("unavailable")


def test_per_class_thresholds_decide_other():
    decide = as_decision(np.array([1.0, 5.0]))
    logits = np.array([[2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    np.testing.assert_array_equal(decide(logits), [0, 2, 1])  # 2 = Other: max logit below its class threshold
    np.testing.assert_array_equal(as_decision(None)(logits), [0, 1, 1])


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(fast.BackendUnavailable, match=r"receiptlib\[fast\]"):
        fast.require_onnxruntime()


def test_unknown_backend_is_refused(model):
    with pytest.raises(ValueError, match="backend"):
        fast.make_predictor("onnx-fp16", model=model)


@pytest.mark.slow
def test_build_fast_model_for_a_run_folder(tmp_path):
    """A run folder (checkpoint, classes, config) and a tiny JPEG data set: int8 calibrated on train images."""
    from PIL import Image

    from receiptlib.runs import Run

    classes = ["Alpha", "Beta", "Other"]
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, names in (("train", classes[:2]), ("val", classes)):
        for c, name in enumerate(names):
            (data / split / name).mkdir(parents=True)
            for i in range(6):
                arr = np.clip(rng.normal(60 + 70 * c, 30, (48, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(data / split / name / f"{i}.jpg")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.manual_seed(0)
    net = resnet18(2, weights="none")
    torch.save({"model": net.state_dict(), "arch": "resnet18", "classes": classes}, run_dir / "checkpoint_best.pt")
    (run_dir / "classes.json").write_text(json.dumps(classes))
    (run_dir / "config.json").write_text(json.dumps({"data_dir": str(data), "arch": "resnet18",
                                                     "recipe": {"image_size": SIZE}}))
    run = Run(run_dir)
    choice = fast.build_fast_model(run, candidates=("onnx-int8", "onnx-fp32", "torch-fp32"), n_calibration=8,
                                   batch_size=6, threads=1, verbose=False)
    assert (run_dir / "fast" / "choice.json").is_file() and (run_dir / "fast" / "model.int8.onnx").is_file()
    assert choice.n_val == 18 and choice.image_size == SIZE
    assert choice.candidate(choice.backend).agreement >= 0.995
    pred = fast.fast_predictor(run, threads=1)
    assert pred.backend == choice.backend
    assert fast.fast_predictor(run, backend="torch-fp32").backend == "torch-fp32"


def test_a_saved_choice_that_cannot_run_here_falls_back_to_fp32(model, tmp_path, monkeypatch):
    """A fast model built where the CPU has bf16 hardware, used where it has not: fp32 with a warning."""
    from receiptlib import common

    fast.select_fast(model, [_images(4)], np.zeros(4, dtype=int), tmp_path, candidates=["torch-fp32"],
                     threads=1, speed_repeats=1, verbose=False)
    saved = json.loads((tmp_path / "choice.json").read_text())
    (tmp_path / "choice.json").write_text(json.dumps({**saved, "backend": "torch-bf16"}))
    monkeypatch.setattr(common, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="torch-bf16.*cannot run here"):
        pred = fast.load_predictor(tmp_path, model=model, threads=1)
    assert pred.backend == "torch-fp32"
    with pytest.raises(fast.BackendUnavailable):  # asked for by name: no silent substitute
        fast.load_predictor(tmp_path, model=model, backend="torch-bf16", threads=1)
