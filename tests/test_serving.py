"""The model as users serve it: the slim artefact (model.safetensors), the self-describing ONNX model, predict
without torch on the ONNX backend, and the README's plain ONNX Runtime recipe."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from receiptlib import fast, openset, serving
from receiptlib.cli import main
from receiptlib.models import resnet18
from receiptlib.photos import Preprocessing
from receiptlib.runs import Run, load_artefact, save_artefact

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32
CLASSES = ["Alpha", "Beta", "Other"]


def photo(path: Path, rng, level: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rng.normal(level, 30, (48, 40, 3)), 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder (config, classes, a training checkpoint with optimizer state, val outputs), a tiny data
    set, its thresholds file and its fast model: what `receiptlib train`, `fit-other` and `build-fast` leave."""
    tmp = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    data = tmp / "data"
    for split, names in (("train", CLASSES[:2]), ("val", CLASSES), ("test", CLASSES)):
        for c, name in enumerate(names):
            for i in range(6):
                photo(data / split / name / f"{i}.jpg", rng, 60 + 70 * c)
    run = tmp / "run"
    run.mkdir()
    torch.manual_seed(0)
    net = resnet18(2, weights="none").eval()
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.zeros(2, 3, SIZE, SIZE)).sum().backward()
    optimizer.step()  # optimizer state: two more copies of every weight, which the artefact leaves out
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "arch": "resnet18",
                "classes": CLASSES}, run / "checkpoint_best.pt")
    (run / "classes.json").write_text(json.dumps(CLASSES))
    (run / "config.json").write_text(json.dumps({"data_dir": str(data), "arch": "resnet18", "seed": 0,
                                                 "recipe": {"image_size": SIZE, "name": "test"},
                                                 "identity": {"seed": 0}}))
    (run / "outputs").mkdir()
    val = sorted((data / "val").rglob("*.jpg"))
    prep = Preprocessing(SIZE)
    with torch.no_grad():
        logits = net(torch.from_numpy(np.stack([prep.array(p) for p in val]))).numpy()
    np.save(run / "outputs" / "val_logits.npy", logits)
    np.save(run / "outputs" / "val_features.npy", np.zeros((len(val), 4), np.float32))
    np.save(run / "outputs" / "val_labels.npy", np.array([CLASSES.index(p.parent.name) for p in val]))
    (run / "outputs" / "val_paths.txt").write_text("".join(f"{p}\n" for p in val))
    # thresholds at the val median of each class's max logit: some photos become Other
    assert main(["fit-other", "--run", str(run), "--k", "0"]) == 0
    fast.build_fast_model(Run(run), candidates=("onnx-fp32", "torch-fp32"), n_val=None, batch_size=6, threads=1,
                          verbose=False)
    return run


def test_the_artefact_holds_the_weights_alone_and_the_card(run_dir):
    run = Run(run_dir)
    assert run.artefact_path.is_file()  # written by build-fast for a run trained before artefacts existed
    card = serving.read_card(run.artefact_path)
    assert card.classes == ["Alpha", "Beta"] and card.arch == "resnet18"
    assert card.preprocessing == Preprocessing(SIZE) == run.preprocessing
    assert card.run["name"] == "run" and len(card.run["identity_sha256"]) == 64
    ckpt = torch.load(run.checkpoint_path("best"), weights_only=True)
    model, again = load_artefact(run.artefact_path, device="cpu")
    assert again == card
    state = model.state_dict()
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in state)
    assert run.artefact_path.stat().st_size < 0.6 * run.checkpoint_path("best").stat().st_size


def test_an_artefact_round_trip_keeps_a_card_with_an_other_rule(tmp_path):
    torch.manual_seed(1)
    net = resnet18(3, weights="none").eval()
    doc = {"schema": openset.SCHEMA, "version": openset.SCHEMA_VERSION, "method": "max-logit", "params": {},
           "classes": ["a", "b", "c"], "threshold": -1.5, "run": "r", "fitted_on": "val"}
    card = serving.ModelCard("resnet18", ["a", "b", "c"], Preprocessing(40, mean=(0.5,) * 3, std=(0.5,) * 3),
                             run={"name": "r"}, other=doc)
    path = save_artefact(net, tmp_path / "model.safetensors", card)
    model, back = load_artefact(path, device="cpu")
    assert back == card and serving.read_card(path) == card
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert openset.detector_from_doc(back.other, classes=["a", "b", "c"]).other_threshold_ == -1.5


class Trap:
    """Unpickling this runs code (it creates a file): a booby-trapped checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_booby_trapped_artefact_is_refused_without_running_code(run_dir, tmp_path):
    trapped = tmp_path / "run"
    shutil.copytree(run_dir, trapped, ignore=shutil.ignore_patterns("checkpoint_*.pt", "fast"))
    marker = tmp_path / "code-ran"
    torch.save({"model": Trap(marker)}, trapped / serving.ARTEFACT_FILE)  # a pickle where the artefact belongs
    with pytest.raises(ValueError, match="not a safetensors file"):
        Run(trapped).load_model(device="cpu")
    assert not marker.exists()
    code = main(["predict", "--run", str(trapped), str(run_dir), "--out", str(tmp_path / "p.csv")])
    assert code == 2 and not marker.exists()
    # a real safetensors file without a model card is refused too, naming the file
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(trapped / serving.ARTEFACT_FILE))
    with pytest.raises(ValueError, match=r"model\.safetensors.*without a receiptlib model card"):
        serving.read_card(trapped / serving.ARTEFACT_FILE)


def test_the_onnx_model_describes_itself(run_dir):
    path = run_dir / "fast" / "model.onnx"
    meta = serving.onnx_metadata(path)
    card = serving.card_from_onnx_metadata(meta, where=str(path))
    assert card.classes == ["Alpha", "Beta"] and card.preprocessing == Preprocessing(SIZE)
    assert json.loads(meta["classes"]) == card.classes and int(meta["image_size"]) == SIZE
    assert json.loads(meta["mean"]) == list(card.preprocessing.mean) and meta["other_label"] == "Other"
    saved = json.loads((run_dir / "thresholds.json").read_text())
    assert json.loads(meta["other_rule"]) == saved == card.other  # the thresholds file it was fitted with
    assert serving.OnnxPredictor(path, threads=1).card == card


def predict_rows(*args) -> list[dict]:
    out = args[-1]
    assert main(["predict", *map(str, args[:-1]), "--out", str(out)]) == 0
    return list(csv.DictReader(open(out)))


def test_a_run_without_training_checkpoints_still_predicts(run_dir, tmp_path):
    shipped = tmp_path / "shipped"
    shutil.copytree(run_dir, shipped, ignore=shutil.ignore_patterns("checkpoint_*.pt"))
    photos = Path(json.loads((run_dir / "config.json").read_text())["data_dir"]) / "test"
    for backend in ("torch-fp32", "onnx-fp32"):
        got = predict_rows("--run", shipped, "--backend", backend, photos, tmp_path / f"{backend}.csv")
        want = predict_rows("--run", run_dir, "--backend", backend, photos, tmp_path / f"{backend}-full.csv")
        assert len(got) == 18 and [r["top1"] for r in got] == [r["top1"] for r in want]
        np.testing.assert_allclose([float(r["top1_logit"]) for r in got], [float(r["top1_logit"]) for r in want],
                                   atol=1e-4)


def test_onnx_predict_imports_neither_torch_nor_torchvision(run_dir, tmp_path):
    photos = Path(json.loads((run_dir / "config.json").read_text())["data_dir"]) / "test"
    out = tmp_path / "preds.csv"
    script = ("import sys\nfrom receiptlib.cli import main\n"
              f"code = main(['predict', '--run', {str(run_dir)!r}, {str(photos)!r}, '--out', {str(out)!r}, "
              f"'--backend', 'onnx-fp32', '--thresholds', {str(run_dir / 'thresholds.json')!r}, '--verbose'])\n"
              "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
              "print('LOADED', loaded)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RECEIPTLIB_PROGRESS": "0"})
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert re.search(r"start-up: [\d.]+ s \(imports [\d.]+ s, model load [\d.]+ s\)", done.stderr), done.stderr
    assert "backend: onnx-fp32 (forced)" in done.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 18 and {r["label"] for r in rows} <= {"Alpha", "Beta", "Other"}


def readme_recipe() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- plain-onnx -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md: the plain ONNX Runtime recipe (a python block after <!-- plain-onnx -->) is missing"
    return m.group(1)


def test_the_readmes_plain_onnx_recipe_labels_like_predict(run_dir, tmp_path):
    """The README's ten lines, run as written on the exported model, give predict's labels (Other included)."""
    photos = sorted((Path(json.loads((run_dir / "config.json").read_text())["data_dir"]) / "test").rglob("*.jpg"))
    rows = predict_rows("--run", run_dir, "--backend", "onnx-fp32", "--thresholds", run_dir / "thresholds.json",
                        *photos, tmp_path / "p.csv")
    code = readme_recipe().replace('"data/runs/RUN/fast/model.onnx"', repr(str(run_dir / "fast" / "model.onnx")))
    labels = []
    for p in photos:
        scope = {"PHOTO": str(p)}
        exec(code.replace('"receipt.jpg"', "PHOTO"), scope)  # noqa: S102 - the README's own code
        labels.append(scope["label"])
    assert labels == [r["label"] for r in rows]
    assert "Other" in labels and set(labels) - {"Other"}  # the rule decided both ways


def test_an_onnx_model_exported_without_a_card_still_predicts_from_the_run_folder(run_dir, tmp_path, capsys):
    import onnx

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    graph = onnx.load(str(old / "fast" / "model.onnx"))
    del graph.metadata_props[:]  # as receiptlib exported it before models described themselves
    onnx.save(graph, str(old / "fast" / "model.onnx"))
    photos = Path(json.loads((run_dir / "config.json").read_text())["data_dir"]) / "test"
    got = predict_rows("--run", old, "--backend", "onnx-fp32", photos, tmp_path / "old.csv")
    assert "carries no model card" in capsys.readouterr().err
    want = predict_rows("--run", run_dir, "--backend", "onnx-fp32", photos, tmp_path / "new.csv")
    assert [r["top1"] for r in got] == [r["top1"] for r in want]
