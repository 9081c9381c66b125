"""receiptlib.runs (the run folder API) and train.cache (the get_or_train cache, report presets)."""
import json
import shutil

import numpy as np
import pytest

from receiptlib import runs, train as T, tta
from receiptlib.train import cache
from test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(data, **kw):
    return T.TrainConfig(str(data), **{**TINY, "epochs": 2, **kw})


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        runs.Run(tmp_path)


def test_report_config_presets(tmp_path):
    cfg = T.report_config("tiny", seed=3, data_dir=tmp_path)
    assert (cfg.data_dir, cfg.seed, cfg.recipe, cfg.arch) == (str(tmp_path), 3, "finetune", "efficientnet_lite0")
    assert cfg.epochs <= 3 and cfg.image_size <= 64
    quick = T.report_config("quick", data_dir=tmp_path)
    r = quick.resolved_recipe()
    # the measured quick setting: the pretrained backbone fine-tuned (docs/decisions.md)
    assert (quick.arch, quick.weights, quick.epochs) == ("efficientnet_lite0", "auto", 6)
    assert (r.image_size, r.batch_size, r.rotation, r.amp, r.label_smoothing) == (160, 32, 45.0, "cuda", 0.0)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        T.report_config("huge", data_dir=tmp_path)


def test_run_identity_ignores_path_device_and_workers(shapes, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(shapes, copy)
    a = runs.config_identity(_config(shapes), _config(shapes).resolved_recipe())
    b = runs.config_identity(_config(copy, device="auto", workers=2), _config(copy).resolved_recipe())
    assert runs.run_name(a) == runs.run_name(b) and runs.run_name(a).startswith("fast-")
    c = runs.config_identity(_config(shapes, seed=1), _config(shapes).resolved_recipe())
    assert runs.run_name(c) != runs.run_name(a)
    (copy / "train" / "Circle" / "000.jpg").unlink()  # other data, other run
    d = runs.config_identity(_config(copy), _config(copy).resolved_recipe())
    assert runs.run_name(d) != runs.run_name(a)


@pytest.mark.slow
def test_get_or_train_trains_once_then_reuses(shapes, tmp_path, monkeypatch):
    run = T.get_or_train(_config(shapes), runs_root=tmp_path, verbose=False)
    assert run.finished and run.path.parent == tmp_path and run.name.startswith("fast-")
    stamp = run.checkpoint_path("best").stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(cache, "train", no_training)
    again = T.get_or_train(_config(shapes, workers=1), runs_root=tmp_path, verbose=False)
    assert again.path == run.path and run.checkpoint_path("best").stat().st_mtime_ns == stamp
    assert again.metrics == run.metrics


@pytest.mark.slow
def test_get_or_train_resumes_an_unfinished_run(shapes, tmp_path):
    run = T.get_or_train(_config(shapes), runs_root=tmp_path, verbose=False)
    reference, metrics = run.history.copy(), run.metrics
    stamp = run.checkpoint_path("last").stat().st_mtime_ns
    # as if killed after the last epoch, before the outputs were written (SIGKILL mid-epoch: test_train)
    for f in [run.path / "metrics.json", *run.path.glob("outputs/*")]:
        f.unlink()
    assert not runs.Run(run.path).finished
    again = T.get_or_train(_config(shapes), runs_root=tmp_path, verbose=False)
    assert again.finished and again.path == run.path
    assert run.checkpoint_path("last").stat().st_mtime_ns == stamp  # no epoch was trained again
    assert again.history[["train_loss", "val_acc"]].equals(reference[["train_loss", "val_acc"]])
    assert again.metrics["confusion_matrix"] == metrics["confusion_matrix"]


@pytest.mark.slow
def test_run_api_outputs_evaluate_tta_and_load_model(shapes, tmp_path):
    run = T.get_or_train(_config(shapes), runs_root=tmp_path, verbose=False)
    out = run.outputs("val")
    assert set(out) == {"logits", "features", "labels", "paths"}
    result = run.evaluate("test")
    saved = json.loads((run.path / "evaluation_test.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["split"] == "test"
    assert np.array(result["confusion_matrix"]).sum() == result["n_known"] == 18
    assert set(result["per_class_accuracy"]) == {"Circle", "Square", "Triangle"}

    passes = tta.tta_outputs(run, "val", n=3)
    assert passes.shape == (24, 3, 3) and passes.dtype == np.float32
    assert (run.path / "outputs" / "val_tta3_logits.npy").is_file()
    assert not np.allclose(passes[:, 0], passes[:, 1])  # each pass draws its own augmentation
    np.testing.assert_array_equal(tta.tta_outputs(run, "val", n=3), passes)  # cached

    model = run.load_model("last", device="cpu")
    assert not model.training and model.fc.out_features == 3
    train = run.outputs("train")  # the training photos too: the distance detectors' reference set
    assert len(train["labels"]) == len(train["paths"]) and (train["labels"] < 3).all()
    with pytest.raises(FileNotFoundError, match="no cached outputs"):
        run.outputs("dev")
    with pytest.raises(ValueError, match="which="):
        run.load_model("first")


def test_run_identity_keys_on_what_the_weights_resolve_to(tmp_path, shapes, monkeypatch):
    from receiptlib import models

    monkeypatch.setattr(models, "imagenet_weights_path", lambda: tmp_path / "absent.pth")
    recipe = T.get_recipe("fast")
    ident = lambda w: runs.config_identity(_config(shapes, weights=w), recipe)  # noqa: E731
    assert ident("auto") == ident("none")  # no ImageNet file here: auto means scratch
    fake = tmp_path / "imagenet.pth"
    fake.write_bytes(b"weights")
    monkeypatch.setattr(models, "imagenet_weights_path", lambda: fake)
    assert ident("auto") == ident("imagenet") != ident("none")  # the file appeared: auto is another run now
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"a")
    first = ident(str(mine))
    mine.write_bytes(b"b")
    assert ident(str(mine)) != first  # a changed weights file is a new run
