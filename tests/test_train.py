"""receiptlib.train: recipes, batched augmentation, run folders, exact resume after SIGKILL, NaN, DDP."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from receiptlib import cli, runs, train as T

pytestmark = pytest.mark.usefixtures("one_thread")

PYTHON = sys.executable
COLOURS = {"Circle": (220, 40, 40), "Square": (40, 200, 60), "Triangle": (50, 80, 230)}


def make_shapes(root, n_train=16, n_eval=6, size=48, seed=0):
    """A tiny folder data set: 3 known classes of coloured shapes, plus Other (plain colours) in val/test."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    root = Path(root)

    def draw(cls):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 256, 3)))
        d = ImageDraw.Draw(img)
        a, b = int(rng.integers(2, size // 4)), int(rng.integers(3 * size // 4, size - 2))
        if cls == "Circle":
            d.ellipse([a, a, b, b], fill=COLOURS[cls])
        elif cls == "Square":
            d.rectangle([a, a, b, b], fill=COLOURS[cls])
        else:
            d.polygon([(a, b), (b, b), ((a + b) // 2, a)], fill=COLOURS[cls])
        return img

    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        for cls in COLOURS:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(cls).save(root / split / cls / f"{i:03d}.jpg", quality=90)
        if split != "train":
            (root / split / "Other").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                Image.new("RGB", (size, size), colour).save(root / split / "Other" / f"{i:03d}.jpg")
    return root


# A configuration that learns the shapes in a few seconds on one CPU thread.
TINY = dict(epochs=4, image_size=32, batch_size=12, lr=0.01, weights="none", workers=0, device="cpu")
COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


def test_recipes_and_options_are_checked():
    paper = T.RECIPES["paper"]
    assert (paper.batch_size, paper.momentum, paper.schedule, paper.image_size, paper.rotation) == (4, 0.9, "exponential", 224, 30.0)
    assert paper.pipeline == "per_image" and T.RECIPES["fast"].pipeline == "cached"
    with pytest.raises(ValueError, match="unknown recipe 'adam'.*fast"):
        T.get_recipe("adam")
    with pytest.raises(ValueError, match=r"unknown recipe option\(s\) \['lr_max'\]"):
        T.TrainConfig("x", overrides={"lr_max": 1.0}).resolved_recipe()
    with pytest.raises(ValueError, match="schedule='step'"):
        T.get_recipe("fast", schedule="step")


def test_auto_precision_uses_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(T.loop, "native_bf16", lambda device: True)
    assert T.amp_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(T.loop, "native_bf16", lambda device: False)
    assert T.amp_dtype("auto", cpu) is None  # emulated bf16 is several times slower than fp32
    assert T.amp_dtype("bf16", cpu) == torch.bfloat16 and T.amp_dtype("none", cpu) is None  # explicit wins
    monkeypatch.setattr(T.loop, "native_bf16", lambda device: True)
    assert T.amp_dtype("cuda", cpu) is None  # the fine-tuning recipe: fp32 on a CPU even with bf16 hardware


def test_zoom_and_shift_move_the_picture_as_documented():
    """A white column 4.5 px right of the centre (31.5): zoom 2 puts it 9 px right; a shift of 0.25 moves the
    picture a quarter of the width; no zoom and no shift (the paper's recipe) leave it where it was."""
    img = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    img[..., 36] = 255
    one, zero = torch.ones(1), torch.zeros(1)
    base = dict(angle=zero, brightness=one, contrast=one, saturation=one, hue=zero)
    black = float(T.augment_batch(img, base)[0, 0].min())

    def where(**extra) -> float:  # brightness-weighted column of the picture
        weight = (T.augment_batch(img, {**base, **extra})[0, 0] - black).mean(0)
        return float((weight * torch.arange(64)).sum() / weight.sum())

    assert where() == pytest.approx(36, abs=0.05)
    assert where(zoom=torch.tensor([2.0])) == pytest.approx(31.5 + 9, abs=0.3)
    assert where(shift_x=torch.tensor([0.25])) == pytest.approx(36 - 16, abs=0.3)
    draws = T.draw_augment(1000, torch.Generator().manual_seed(0), T.get_recipe("fast", zoom=0.25, shift=0.1))
    assert 1 / 1.25 - 1e-6 <= draws["zoom"].min() < 0.85 and 1.2 < draws["zoom"].max() <= 1.25 + 1e-6
    assert 0.09 < draws["shift_x"].abs().max() <= 0.1 and 0.09 < draws["shift_y"].abs().max() <= 0.1


def test_augment_batch_matches_torchvision():
    """Rotation, brightness, contrast, saturation as torchvision computes them (mid-range pixels, so the
    single final clamp equals torchvision's clamp after each step); hue turns colours the same way."""
    from torchvision.transforms import functional as TF

    from receiptlib.data import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    img = (64 + torch.rand(3, 3, 24, 24) * 128).to(torch.uint8)
    angles, b, c, s = [20.0, -7.0, 0.0], [0.8, 1.0, 1.3], [1.2, 0.7, 1.0], [0.6, 1.0, 1.4]
    params = {k: torch.tensor(v) for k, v in dict(angle=angles, brightness=b, contrast=c, saturation=s, hue=[0.0] * 3).items()}
    mine = T.augment_batch(img, params)
    for i in range(3):
        x = TF.rotate(img[i].float() / 255, angles[i], interpolation=TF.InterpolationMode.BILINEAR)
        x = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b[i]), c[i]), s[i])
        ref = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
        assert (mine[i] - ref).abs().mean() < 1e-3

    red = torch.tensor([200, 50, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    one, zero = torch.ones(1), torch.zeros(1)
    for hue in (0.05, -0.05):
        out = T.augment_batch(red, dict(angle=zero, brightness=one, contrast=one, saturation=one, hue=torch.tensor([hue])))
        ref = TF.normalize(TF.adjust_hue(red[0].float() / 255, hue), IMAGENET_MEAN, IMAGENET_STD)
        ref_change = ref[:, 4, 4] - T.normalize_batch(red)[0, :, 4, 4]
        k = int(ref_change.abs().argmax())  # +hue turns red towards yellow (green up), -hue towards magenta
        assert (out[0, k, 4, 4] - T.normalize_batch(red)[0, k, 4, 4]) * ref_change[k] > 0


def test_epoch_randomness_is_a_function_of_seed_and_epoch():
    a = T.batch_plan(50, 8, seed=3, epoch=2)
    assert all(torch.equal(x, y) for x, y in zip(a, T.batch_plan(50, 8, seed=3, epoch=2)))
    assert not torch.equal(a[0], T.batch_plan(50, 8, seed=3, epoch=3)[0])
    assert sorted(torch.cat(a).tolist()) == list(range(50))
    # two processes split each global batch between them
    r0, r1 = (T.batch_plan(50, 8, seed=3, epoch=2, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1)
    assert sorted(torch.cat(r0 + r1).tolist()) == list(range(50))


def test_data_folder_errors(tmp_path, shapes):
    with pytest.raises(FileNotFoundError, match="train"):
        T.train(T.TrainConfig(str(tmp_path), **TINY), run_dir=tmp_path / "run")
    bad = make_shapes(tmp_path / "bad", n_train=1, n_eval=1)
    (bad / "val" / "Hexagon").mkdir()
    (bad / "val" / "Circle" / "000.jpg").rename(bad / "val" / "Hexagon" / "000.jpg")
    with pytest.raises(ValueError, match="Hexagon"):
        T.train(T.TrainConfig(str(bad), **TINY), run_dir=tmp_path / "run")


def _train(data, run_dir, **kw):
    return T.train(T.TrainConfig(str(data), **{**TINY, **kw}), run_dir=run_dir, verbose=False)


@pytest.mark.slow
def test_run_folder_contents(shapes, tmp_path):
    run = _train(shapes, tmp_path / "run", epochs=2)
    cfg = run.config
    for key in ("data_dir", "recipe", "epochs", "image_size", "seed", "weights", "weights_source", "device", "classes"):
        assert key in cfg
    assert cfg["recipe"]["batch_size"] == 12 and cfg["weights_source"] == "none" and cfg["epochs"] == 2
    assert run.classes == ["Circle", "Square", "Triangle", "Other"]
    assert list(run.history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                                         "images_per_second"]
    assert len(run.history) == 2
    for which in ("best", "last"):
        ckpt = torch.load(run.checkpoint_path(which), weights_only=True)
        assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng"} <= set(ckpt)
    m = run.metrics
    assert np.array(m["confusion_matrix"]).shape == (3, 3) and set(m["per_class_accuracy"]) == set(COLOURS)
    assert m["n_known"] == 18 and m["n_other"] == 6 and m["train_seconds"] > 0
    for split in ("val", "test"):
        out = run.outputs(split)
        assert out["logits"].shape == (24, 3) and out["features"].shape == (24, 512)
        assert out["features"].dtype == np.float32 and out["labels"].dtype == np.int64
        assert sorted(set(out["labels"].tolist())) == [0, 1, 2, 3]  # Other = len(known)
        assert all(Path(p).is_file() for p in out["paths"])
    assert (out["labels"] == 3).sum() == 6
    # the best checkpoint reproduces the cached val logits (float32)
    model = run.load_model("best", device="cpu")
    val = T.CachedImages(cfg["data_dir"], "val", run.known_classes, 32, workers=0)
    ev = T.evaluate(model, torch.nn.CrossEntropyLoss(), val.batches(), torch.device("cpu"), keep_outputs=True)
    np.testing.assert_allclose(ev["logits"], run.outputs("val")["logits"], atol=1e-4)
    # a second train() into the same folder needs resume
    with pytest.raises(FileExistsError, match="resume"):
        _train(shapes, tmp_path / "run", epochs=2)
    with pytest.raises(ValueError, match="another configuration.*seed"):
        T.train(T.TrainConfig(str(shapes), **{**TINY, "epochs": 2, "seed": 5}), run_dir=tmp_path / "run", resume=True)


def test_ema_average_warms_up_then_follows_its_decay():
    model = torch.nn.Linear(2, 1)
    ema = T.make_ema(model, T.get_recipe("fast", ema_decay=0.5))
    assert T.make_ema(model, T.get_recipe("fast", ema_decay=0.0)) is None
    ema.update_parameters(model)  # the first update copies
    start = model.weight.detach().clone()
    torch.testing.assert_close(ema.module.weight, start)
    with torch.no_grad():
        model.weight += 1.0
    ema.update_parameters(model)  # second update: warm-up decay min(0.5, 2/11)
    torch.testing.assert_close(ema.module.weight, start + (1 - 2 / 11))
    for _ in range(50):
        ema.update_parameters(model)  # decay 0.5 once warm: converges to the weights
    torch.testing.assert_close(ema.module.weight, model.weight.detach())
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        T.get_recipe("fast", ema_decay=1.0)


@pytest.mark.slow
def test_ema_run_saves_the_average_as_its_model(shapes, tmp_path):
    run = _train(shapes, tmp_path / "ema", epochs=2, overrides={"ema_decay": 0.9})
    ckpt = torch.load(run.checkpoint_path("best"), weights_only=True)
    w = "fc.weight"
    assert {"ema", "train_model"} <= set(ckpt)
    torch.testing.assert_close(ckpt["model"][w], ckpt["ema"]["module." + w])  # "model" is the average...
    assert not torch.equal(ckpt["model"][w], ckpt["train_model"][w])  # ...not the raw weights
    # and it is what produced the cached outputs
    model = run.load_model("best", device="cpu")
    val = T.CachedImages(run.config["data_dir"], "val", run.known_classes, 32, workers=0)
    ev = T.evaluate(model, torch.nn.CrossEntropyLoss(), val.batches(), torch.device("cpu"), keep_outputs=True)
    np.testing.assert_allclose(ev["logits"], run.outputs("val")["logits"], atol=1e-4)


@pytest.mark.slow
def test_paper_recipe_per_image_pipeline(shapes, tmp_path):
    run = _train(shapes, tmp_path / "paper", recipe="paper", epochs=1, batch_size=None, lr=None)
    assert run.config["recipe"]["pipeline"] == "per_image" and run.config["amp_dtype"] == "float32"
    assert len(run.history) == 1 and np.isfinite(run.history["train_loss"]).all()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_exact(shapes, tmp_path):
    reference = _train(shapes, tmp_path / "reference")
    assert reference.metrics["val_accuracy"] > 0.9  # the tiny task is learnt

    killed = tmp_path / "killed"
    code = (f"import torch, warnings; warnings.simplefilter('ignore'); torch.set_num_threads(1)\n"
            f"from receiptlib import train as T\n"
            f"T.train(T.TrainConfig({str(shapes)!r}, **{TINY!r}), run_dir={str(killed)!r}, verbose=False)\n")
    proc = subprocess.Popen([PYTHON, "-c", code], env={**os.environ, "RECEIPTLIB_PROGRESS": "0"})
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoint_last.pt").exists():
            assert proc.poll() is None, "the training subprocess ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = torch.load(killed / "checkpoint_last.pt", weights_only=True)["epoch"]
    assert 1 <= done < TINY["epochs"] and not (killed / "metrics.json").exists()

    resumed = T.train(T.TrainConfig(str(shapes), **TINY), run_dir=killed, resume=True, verbose=False)
    assert resumed.history[COMPARED].equals(reference.history[COMPARED])
    a, b = resumed.metrics, reference.metrics
    assert (a["val_accuracy"], a["best_epoch"], a["confusion_matrix"]) == (b["val_accuracy"], b["best_epoch"], b["confusion_matrix"])
    np.testing.assert_array_equal(resumed.outputs("test")["logits"], reference.outputs("test")["logits"])
    # resuming a finished run only redoes the final outputs
    again = T.train(T.TrainConfig(str(shapes), **TINY), run_dir=killed, resume=True, verbose=False)
    assert len(again.history) == TINY["epochs"]


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_step_and_hint(shapes, tmp_path):
    with pytest.raises(T.NonFiniteLoss, match=r"epoch 1, step \d+ .*lower the learning rate"):
        _train(shapes, tmp_path / "nan", lr=1e30, overrides={"warmup_epochs": 0.0})


@pytest.mark.slow
def test_resume_with_other_classes_is_a_clear_error(shapes, tmp_path):
    run = _train(shapes, tmp_path / "run", epochs=1)
    ckpt = torch.load(run.checkpoint_path("last"), weights_only=True)
    ckpt["classes"] = ["A", "B", "C", "Other"]
    torch.save(ckpt, run.checkpoint_path("last"))
    with pytest.raises(ValueError, match="trained on classes"):
        run.load_model("last")
    with pytest.raises(ValueError, match="architecture"):
        runs.load_checkpoint(run.checkpoint_path("best"), arch="stn_resnet18")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    data = make_shapes(tmp_path / "data", n_train=24)
    args = ["--data", str(data), "--runs-root", str(tmp_path), "--epochs", "5", "--image-size", "32",
            "--batch-size", "12", "--lr", "0.003", "--weights", "none", "--device", "cpu", "--workers", "0"]
    env = {**os.environ, "RECEIPTLIB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # --run-name: torchrun's own parser would take --run for an abbreviation of its --run-path
    proc = subprocess.Popen([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "receiptlib.train", *args, "--run-name", "ddp"], env=env, start_new_session=True)
    try:
        assert proc.wait(timeout=300) == 0
    finally:  # never leave worker processes behind (they would wait for each other forever)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert cli.main_train([*args, "--run", "single"]) == 0
    from receiptlib.runs import Run

    ddp, single = Run(tmp_path / "ddp"), Run(tmp_path / "single")
    assert ddp.config["world_size"] == 2 and single.config["world_size"] == 1
    assert len(ddp.history) == 5 and ddp.outputs("test")["logits"].shape == (24, 3)
    # the same global batches and augmentation; only BatchNorm statistics differ (per process)
    assert ddp.metrics["val_accuracy"] >= 0.85 and single.metrics["val_accuracy"] >= 0.85
    assert abs(ddp.metrics["val_accuracy"] - single.metrics["val_accuracy"]) <= 0.15
