"""Spatial transformer (section VII): identity start, restricted transform, gradients, staged start, guard."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from receiptlib import stn as rstn

torch.set_num_threads(1)


def tiny_classifier(num_classes: int = 3) -> nn.Module:
    """A stand-in classifier with a final Linear (what features_and_logits hooks)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


@pytest.mark.parametrize("transform", ["rts", "affine"])
def test_identity_initialisation_leaves_the_image_unchanged(transform):
    torch.manual_seed(0)
    stn = rstn.SpatialTransformer(transform)
    x = torch.randn(2, 3, 20, 20)
    torch.testing.assert_close(stn(x), x, atol=1e-5, rtol=0)  # same size: pixel centres read exactly
    assert torch.allclose(stn.theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3), atol=1e-6)
    # STNClassifier: 2x larger input, crop at out_size = the 2x2 block average (align_corners=False)
    model = rstn.STNClassifier(stn, tiny_classifier(), loc_size=12, out_size=10)
    torch.testing.assert_close(model.transformed(x), F.avg_pool2d(x, 2), atol=1e-5, rtol=0)
    # and exactly what the ResNet-alone model (stage 1 of staged training) sees
    torch.testing.assert_close(model.transformed(x), rstn.ResizeClassifier(nn.Identity(), out_size=10)(x), atol=1e-5, rtol=0)


def test_rts_transform_has_no_shear():
    torch.manual_seed(0)
    stn = rstn.SpatialTransformer("rts")
    nn.init.normal_(stn.head.weight, std=2.0)
    nn.init.normal_(stn.head.bias, std=2.0)
    stn(torch.randn(6, 3, 16, 16))
    a = stn.theta[:, :, :2]
    # a scaled rotation [[s cos, -s sin], [s sin, s cos]]: A^T A = s^2 I, no shear or anisotropic squeeze
    torch.testing.assert_close(a[:, 0, 0], a[:, 1, 1])
    torch.testing.assert_close(a[:, 0, 1], -a[:, 1, 0])
    gram = a.transpose(1, 2) @ a
    torch.testing.assert_close(gram[:, 0, 1], torch.zeros(6), atol=1e-6, rtol=0)
    assert not torch.allclose(a, torch.eye(2).expand(6, 2, 2))  # the random head really transformed


def test_theta_from_params_builds_the_given_rotation():
    stn = rstn.SpatialTransformer("rts")
    theta = stn.theta_from_params(torch.tensor([[math.pi / 6, 0.0, 0.0, 0.0]]))
    scale, angle = rstn.theta_scale_angle(theta)
    assert scale[0] == pytest.approx(1.0, abs=1e-6) and angle[0] == pytest.approx(30.0, abs=1e-4)


@pytest.mark.parametrize("transform", ["rts", "affine"])
def test_gradients_reach_the_localisation_net(transform):
    torch.manual_seed(0)
    model = rstn.STNClassifier(rstn.SpatialTransformer(transform), tiny_classifier(), loc_size=16, out_size=12)
    x, y = torch.randn(4, 3, 24, 24), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + model.regularisation()
        loss.backward()
        head = model.stn.head.weight.grad
        assert head is not None and head.abs().sum() > 0  # the zero-initialised last layer learns from step 1
        opt.step()
    # after one step the last layer is no longer zero, so the conv layers receive gradient too
    first_conv = model.stn.features[0].weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0


def test_rts_scale_guard_holds_for_extreme_outputs():
    stn = rstn.SpatialTransformer("rts", scale_range=(0.4, 1.25), max_translation=0.5)
    for value in (-1e4, -30.0, 30.0, 1e4):
        with torch.no_grad():
            stn.head.bias.fill_(value)
        stn(torch.randn(2, 3, 16, 16))
        scale, _ = rstn.theta_scale_angle(stn.theta)
        assert np.all(scale >= 0.4 - 1e-5) and np.all(scale <= 1.25 + 1e-5), (value, scale)
        assert stn.theta[:, :, 2].abs().max() <= 0.5 + 1e-6
        assert np.isfinite(stn.theta.numpy()).all()
        assert float(stn.penalty) == 0.0


def test_affine_guard_penalty_grows_as_the_crop_collapses_or_leaves():
    stn = rstn.SpatialTransformer("affine", scale_range=(0.4, 1.25), max_translation=0.5)

    def penalty(theta):
        return float(stn.guard_penalty(torch.tensor([theta], dtype=torch.float32)))

    assert penalty([[1, 0, 0], [0, 1, 0]]) == 0.0
    assert penalty([[0.5, 0.1, 0.2], [-0.1, 0.6, -0.3]]) == 0.0  # inside the range: free
    shrinking = [penalty([[s, 0, 0], [0, s, 0]]) for s in (0.3, 0.1, 1e-2, 1e-4)]  # zoom into nowhere
    assert 0 < shrinking[0] < shrinking[1] < shrinking[2] < shrinking[3]
    growing = [penalty([[s, 0, 0], [0, s, 0]]) for s in (1.5, 3.0, 10.0)]  # image shrunk to a dot
    assert 0 < growing[0] < growing[1] < growing[2]
    assert penalty([[1, 0, 0], [0, 1e-3, 0]]) > 1.0  # squeezed along one axis only
    assert 0 < penalty([[1, 0, 0.8], [0, 1, 0]]) < penalty([[1, 0, 2.0], [0, 1, 0]])  # crop pushed out
    # forced extreme localisation outputs: the training loss sees the penalty, and it points back
    model = rstn.STNClassifier(stn, tiny_classifier(), loc_size=16, out_size=8)
    with torch.no_grad():
        stn.head.bias.copy_(torch.tensor([0.01, 0.0, 0.0, 0.0, 0.01, 0.0]))
    model(torch.randn(2, 3, 16, 16))
    reg = model.regularisation()
    assert float(reg.detach()) > 1.0
    reg.backward()
    assert stn.head.bias.grad[0] < 0 and stn.head.bias.grad[4] < 0  # descent increases the scale


def test_stn_classifier_output_shape_from_a_larger_input():
    model = rstn.STNClassifier(rstn.SpatialTransformer("rts"), tiny_classifier(5), loc_size=16, out_size=(12, 12))
    x = torch.randn(3, 3, 40, 40)
    assert model(x).shape == (3, 5)
    assert model.transformed(x).shape == (3, 3, 12, 12)
    assert model.theta.shape == (3, 2, 3)
    from receiptlib.models import features_and_logits

    feats, logits = features_and_logits(model, x)  # the open-set hook finds the classifier's last layer
    assert feats.shape == (3, 4) and logits.shape == (3, 5)


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_optimiser_follows_the_train_recipe_and_clips_the_localisation_net(recipe):
    torch.manual_seed(0)
    base = rstn.STNRecipe(recipe=recipe).train_recipe()
    model = rstn.STNClassifier(rstn.SpatialTransformer("rts"), tiny_classifier(), loc_size=16, out_size=12)
    groups = rstn.param_groups(model, base.lr, classifier_mult=1.0, loc_mult=0.1, loc_max_grad_norm=1e-3)
    opt = rstn.make_optimizer(groups, base)
    assert isinstance(opt, torch.optim.AdamW if base.optimizer == "adamw" else torch.optim.SGD)
    for g in opt.param_groups:  # as train.make_optimizer: decay on weights only; the lr multipliers kept
        assert g["weight_decay"] == (base.weight_decay if all(p.ndim > 1 for p in g["params"]) else 0.0)
        assert g["lr"] == pytest.approx(base.lr * (0.1 if g["name"] == "localisation" else 1.0))
    loc = [p for g in opt.param_groups if g["name"] == "localisation" for p in g["params"]]
    assert len(loc) == len(list(model.stn.parameters()))
    F.cross_entropy(model(torch.randn(4, 3, 24, 24)), torch.tensor([0, 1, 2, 0])).backward()
    for p in loc:
        p.grad = torch.full_like(p, 10.0)  # a huge localisation gradient
    opt.step()
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in loc))
    assert total == pytest.approx(1e-3, rel=1e-3)  # clipped jointly over the localisation net's groups
    plain = rstn.make_optimizer(model.classifier.parameters(), base)  # a module's parameters: stage 1, ResNet alone
    assert sum(len(g["params"]) for g in plain.param_groups) == len(list(model.classifier.parameters()))


def test_bad_configuration_is_refused_with_the_parameter_name():
    with pytest.raises(ValueError, match="transform"):
        rstn.SpatialTransformer("perspective")
    with pytest.raises(ValueError, match="scale_range"):
        rstn.SpatialTransformer("rts", scale_range=(1.1, 2.0))
    with pytest.raises(ValueError, match="stage2_epochs"):
        rstn.STNRecipe(epochs=2, stage2_epochs=3)


# ----------------------------------------------------------------------------------------------
# Training on a tiny folder data set
# ----------------------------------------------------------------------------------------------

def make_folder(root, *, classes=("Alpha", "Beta", "Gamma"), per_class=(4, 2, 2), size=40):
    """Tiny receipt-like images: a bright rectangle whose colour and stripe names the class."""
    rng = np.random.default_rng(0)
    rows = []
    colours = {"Alpha": (200, 40, 40), "Beta": (40, 200, 40), "Gamma": (40, 40, 200), "Other": (200, 200, 40)}
    for split, n in zip(("train", "val", "test"), per_class):
        for cls in list(classes) + ([] if split == "train" else ["Other"]):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                a[8:32, 12:28] = colours[cls]
                a[10:12, 12:28] = 255
                path = folder / f"{i}.png"
                Image.fromarray(a).save(path)
                rows.append({"path": path.relative_to(root).as_posix(), "rotation_deg": 40.0 * (i % 2),
                             "perspective": 0.0})
    import pandas as pd

    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


# 32 px, not 16: bf16 conv backward on layer4's 1x1 maps gave garbage gradients (docs/decisions.md)
TINY = dict(image_size=32, input_size=64, loc_size=16, epochs=2, stage2_epochs=1, freeze_epochs=1,
            batch_size=4, lr=0.02, weights="none", overrides={"eval_batch_size": 8})


@pytest.mark.slow
def test_staged_training_starts_from_the_stage1_classifier(tmp_path):
    data = make_folder(tmp_path / "data")
    recipe = rstn.STNRecipe(**TINY)
    # the ResNet run staged training branches off: its classifier after epochs - stage2_epochs = 1 epoch
    plain = rstn.train_stn(data, recipe, mode="resnet", seed=0, device="cpu", workers=0, verbose=False)
    expected = plain.stage1_state
    reference = rstn.build_model(recipe, 3, "resnet")
    reference.classifier.load_state_dict(expected)
    seen = {}

    def at_stage2_start(model):
        seen["state"] = {k: v.clone() for k, v in model.classifier.state_dict().items()}
        x = torch.randn(2, 3, 64, 64)
        model.eval()
        reference.eval()
        seen["same_function"] = torch.allclose(model(x), reference(x), atol=1e-4)

    res = rstn.train_stn(data, recipe, mode="staged", seed=0, device="cpu", workers=0, verbose=False,
                         on_stage2_start=at_stage2_start, snapshot_images=torch.randn(2, 3, 64, 64))
    assert seen["state"].keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(seen["state"][k], v), k
    assert seen["same_function"]  # identity transformer + stage-1 classifier = the stage-1 model
    assert [r["stage"] for r in res.history] == ["stage1", "stage2"]
    assert res.history[1]["classifier_frozen"] is True
    # frozen for the whole of stage 2 here: the classifier did not move, the transformer did
    for k, v in expected.items():
        assert torch.equal(res.model.classifier.state_dict()[k], v), k
    assert res.snapshots["epochs"].tolist() == [1, 2]
    assert res.snapshots["outputs"].shape == (2, 2, 32, 32, 3) and res.snapshots["outputs"].dtype == np.uint8

    # handed the ResNet run's stage 1 (what compare does), stage 2 is the very same as above
    branched = rstn.train_stn(data, recipe, mode="staged", seed=0, device="cpu", workers=0, verbose=False,
                              stage1=plain.stage1)
    assert [r["stage"] for r in branched.history] == ["stage2"]
    assert branched.history[0]["val_loss"] == res.history[1]["val_loss"]
    for k, v in res.model.state_dict().items():
        assert torch.equal(branched.model.state_dict()[k], v), k

    # a given stage-1 state dict (e.g. a plain run's checkpoint) replaces stage 1
    res2 = rstn.train_stn(data, recipe, mode="staged", seed=0, device="cpu", workers=0, verbose=False,
                          stage1=expected, on_stage2_start=lambda m: seen.update(given=m.classifier.state_dict()))
    assert all(torch.equal(seen["given"][k], v) for k, v in expected.items())
    assert [r["stage"] for r in res2.history] == ["stage2"]
    with pytest.raises(ValueError, match="stage1"):
        rstn.train_stn(data, recipe, mode="resnet", seed=0, device="cpu", workers=0, verbose=False, stage1=expected)
    # a branch of another run (here: another seed, another length) is refused, not continued at the wrong point
    for other in ({"seed": 1}, {"recipe": dataclasses.replace(recipe, epochs=3)}):
        with pytest.raises(ValueError, match="another run"):
            rstn.train_stn(data, other.get("recipe", recipe), mode="staged", seed=other.get("seed", 0), device="cpu",
                           workers=0, verbose=False, stage1=plain.stage1)


def test_branch_carries_the_classifier_moments_and_the_schedule_position():
    from receiptlib import train as rtrain

    base = rtrain.get_recipe("fast", lr=0.01, warmup_epochs=1.0)
    recipe = rstn.STNRecipe(image_size=32, input_size=64, loc_size=16)
    torch.manual_seed(0)
    plain = rstn.build_model(recipe, 3, "resnet")
    opt = rstn.make_optimizer(plain.parameters(), base)
    steps, epochs, n1 = 3, 4, 2
    sched, per_step = rtrain.make_scheduler(opt, base, steps, epochs)
    for _ in range(n1 * steps):
        plain(torch.randn(2, 3, 64, 64)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    ckpt = rstn.stage1_checkpoint(plain.classifier, opt, epochs=n1, steps=steps, seed=0, train_recipe=base)
    model = rstn.stage2_model(ckpt["model"], recipe, 3)
    opt2 = rstn.make_optimizer(rstn.param_groups(model, base.lr, classifier_mult=1.0, loc_mult=0.1), base)
    rstn.load_classifier_moments(opt2, model.classifier, ckpt["moments"])
    schedule2 = rtrain.make_scheduler(opt2, base, steps, epochs)
    rstn.advance_schedule(schedule2, epochs=n1, steps=steps)
    for (name, p), p2 in zip(plain.classifier.named_parameters(), model.classifier.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[p2][key]), (name, key)
    assert all(not opt2.state[p] for p in model.stn.parameters())  # the transformer starts fresh
    lr_now = {g["lr"] for g in opt.param_groups}
    assert len(lr_now) == 1 and 0 < lr_now.pop() < base.lr  # part-way down the cosine
    rates = {g.get("name"): g["lr"] for g in opt2.param_groups}
    assert rates["classifier"] == pytest.approx(opt.param_groups[0]["lr"])
    assert rates["localisation"] == pytest.approx(0.1 * opt.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="lack"):
        rstn.load_classifier_moments(opt2, model.classifier, {"fc.weight": ckpt["moments"]["fc.weight"]})


@pytest.mark.slow
def test_resnet_and_staged_share_stage1_then_resnet_trains_on_without_a_transformer(tmp_path):
    data = make_folder(tmp_path / "data")
    recipe = rstn.STNRecipe(**{**TINY, "freeze_epochs": 0})
    control = rstn.train_stn(data, recipe, mode="resnet", seed=0, device="cpu", workers=0, verbose=False)
    staged = rstn.train_stn(data, recipe, mode="staged", seed=0, device="cpu", workers=0, verbose=False)
    assert isinstance(control.model, rstn.ResizeClassifier)
    assert [r["stage"] for r in control.history] == ["stage1", "stage2"]
    assert staged.history[1]["lr"] == control.history[1]["lr"]  # the classifier's rate: the same schedule
    # one ResNet run, staged branching off it: the same stage 1 on CPU, which is why compare trains it once
    assert control.stage1_state.keys() == staged.stage1_state.keys()
    for k, v in staged.stage1_state.items():
        assert torch.equal(control.stage1_state[k], v), k
    assert control.history[0]["val_loss"] == staged.history[0]["val_loss"]
    moved = [k for k, v in control.stage1_state.items()
             if v.is_floating_point() and not torch.equal(control.model.classifier.state_dict()[k], v)]
    assert moved  # stage 2 trained the classifier on


@pytest.mark.slow
def test_compare_writes_table_curves_and_snapshots(tmp_path):
    data = make_folder(tmp_path / "data")
    runs_root = tmp_path / "runs"  # a notebook passes its data root's runs/, beside the training runs
    summary = rstn.compare(data, seeds=(0, 1), runs_root=runs_root, n_snapshot=3, device="cpu", workers=0,
                           verbose=False, **TINY)
    out = Path(summary.attrs["out_dir"])
    assert out.parent == runs_root and out.name.startswith("stn-")
    assert set(summary["method"]) == {"resnet", "joint", "staged"}
    assert set(summary["slice"]) == {"all", "hard"}
    assert (summary["seeds"] == 2).all()
    assert summary[["accuracy_mean", "macro_f1_mean"]].apply(lambda c: c.between(0, 1)).all().all()
    loaded = rstn.load_comparison(out)
    assert set(loaded["history"]["mode"]) == {"resnet", "joint", "staged"}
    assert len(loaded["history"]) == 3 * 2 * TINY["epochs"]
    h = loaded["history"]  # staged reused the resnet arm's stage 1: the same rows under its own name
    first = h[h["stage"] == "stage1"].set_index(["seed", "mode"])["seconds"].unstack()
    assert (first["resnet"] == first["staged"]).all()  # the same wall time: copied, not trained again
    assert set(loaded["snapshots"]) == {"joint-seed0", "joint-seed1", "staged-seed0", "staged-seed1"}
    assert loaded["snapshots"]["joint-seed0"]["epochs"].tolist() == [0, 1, 2]
    assert loaded["inputs"]["images"].shape == (3, 64, 64, 3)
    # a second call with the same configuration reuses the folder
    again = rstn.compare(data, seeds=(0, 1), runs_root=runs_root, n_snapshot=3, device="cpu", workers=0,
                         verbose=False, **TINY)
    assert again.attrs["out_dir"] == str(out)
    assert again.equals(summary) or np.allclose(again.select_dtypes("number"), summary.select_dtypes("number"), equal_nan=True)
    # notebook 05 reads it back: the figures draw from the real files
    import matplotlib.pyplot as plt

    for fig in (rstn.learning_curves_figure(loaded["history"]), rstn.theta_figure(loaded["history"]),
                rstn.snapshot_figure(loaded, "joint-seed1")):
        assert fig.axes
        plt.close(fig)
    assert "Hard slice" in rstn.conclusion(summary, chance=1 / 3)


def test_hard_mask_reads_the_manifest_for_absolute_and_relative_paths(tmp_path, monkeypatch):
    import pandas as pd

    data = tmp_path / "data"
    (data / "test" / "A").mkdir(parents=True)
    rows = [{"path": "test/A/0.jpg", "rotation_deg": -40.0, "perspective": 0.0},
            {"path": "test/A/1.jpg", "rotation_deg": 10.0, "perspective": 0.09},
            {"path": "test/A/2.jpg", "rotation_deg": 10.0, "perspective": 0.02}]
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    expected = [True, True, False]
    absolute = [str(data / r["path"]) for r in rows]
    assert rstn.hard_mask(data, absolute).tolist() == expected
    monkeypatch.chdir(tmp_path)
    assert rstn.hard_mask("data", [f"data/{r['path']}" for r in rows]).tolist() == expected
    with pytest.raises(ValueError, match="not listed"):
        rstn.hard_mask(data, [str(data / "test/A/9.jpg")])
    assert rstn.hard_mask(tmp_path, absolute) is None  # no manifest (real photos): no hard slice


# ----------------------------------------------------------------------------------------------
# Notebook 05: the conclusion is written from the numbers, whatever they show
# ----------------------------------------------------------------------------------------------

def summary_table(values: dict, *, seeds: int = 3, n_test: int = 100):
    """A hand-made ``compare`` summary: {(slice, method): (acc_mean, acc_std, f1_mean, f1_std)}."""
    import pandas as pd

    return pd.DataFrame([{"slice": sl, "method": m, "accuracy_mean": a, "accuracy_std": a_s, "macro_f1_mean": f,
                          "macro_f1_std": f_s, "seeds": seeds, "n_test": n_test}
                         for (sl, m), (a, a_s, f, f_s) in values.items()])


def paragraphs(text: str) -> dict:
    """The conclusion's paragraph per slice, keyed by its first words."""
    return {p.split("**")[1]: p for p in text.split("\n\n")}


def test_conclusion_names_the_winner_when_the_gap_exceeds_the_stds():
    table = summary_table({("all", "resnet"): (0.70, 0.01, 0.60, 0.01), ("all", "joint"): (0.60, 0.02, 0.50, 0.02),
                           ("all", "staged"): (0.80, 0.01, 0.70, 0.01),
                           # the hard slice separately: here the transformer gains nothing beyond noise
                           ("hard", "resnet"): (0.50, 0.05, 0.40, 0.05), ("hard", "joint"): (0.48, 0.05, 0.39, 0.05),
                           ("hard", "staged"): (0.52, 0.05, 0.41, 0.05)})
    text = rstn.conclusion(table, chance=0.04)
    all_, hard = paragraphs(text)["All test photos"], paragraphs(text)[rstn.SLICE_NAMES["hard"]]
    assert all_.count("**staged is best**") == 2  # macro-F1 and accuracy
    assert "ResNet alone 0.600 ± 0.010, joint 0.500 ± 0.020, staged 0.700 ± 0.010" in all_
    assert "joint training is below ResNet alone (the paper's failure reproduced)" in all_
    assert "is above joint and above ResNet alone" in all_
    assert "no difference within noise" not in all_ and "chance" not in text
    assert hard.count("**no difference within noise**") == 2 and "is best" not in hard
    assert "joint training is level with ResNet alone" in hard


def test_conclusion_says_no_difference_within_noise_and_warns_at_chance():
    table = summary_table({("all", m): (0.04 + d, 0.01, 0.03 + d, 0.01)
                           for m, d in (("resnet", 0.0), ("joint", 0.005), ("staged", 0.008))})
    text = rstn.conclusion(table, chance=0.04)
    assert text.count("**no difference within noise**") == 2 and "is best" not in text
    assert "Hard slice" not in text  # no hard slice without a manifest
    assert all(name in text for name in ("ResNet alone", "joint", "staged"))
    assert "within its std of chance (0.040)" in text and "says nothing about the transformer" in text
    assert "within its std of chance" not in rstn.conclusion(table)  # chance unknown: no warning


def test_conclusion_mixed_outcome_and_single_seed():
    # staged leads, ResNet alone within noise of it, joint clearly behind
    table = summary_table({("all", "resnet"): (0.70, 0.03, 0.60, 0.03), ("all", "joint"): (0.50, 0.01, 0.40, 0.01),
                           ("all", "staged"): (0.72, 0.03, 0.62, 0.03)})
    text = rstn.conclusion(table)
    assert "**staged has the highest mean**; ResNet alone level with it within noise, joint behind it" in text
    single = summary_table({("all", "resnet"): (0.70, float("nan"), 0.60, float("nan")),
                            ("all", "joint"): (0.50, float("nan"), 0.40, float("nan")),
                            ("all", "staged"): (0.72, float("nan"), 0.62, float("nan"))}, seeds=1)
    text = rstn.conclusion(single)
    assert "with one seed there is no spread" in text and "is best" not in text and "Against the paper" not in text
    with pytest.raises(ValueError, match="empty"):
        rstn.conclusion(single.iloc[:0])


def test_format_table_shows_mean_and_std():
    table = summary_table({("all", "resnet"): (0.7, 0.01, 0.6, 0.02), ("all", "staged"): (0.8, float("nan"), 0.7, float("nan"))})
    shown = rstn.format_table(table)
    assert shown.loc[("all", "ResNet alone"), "closed-set accuracy"] == "0.700 ± 0.010"
    assert shown.loc[("all", "staged"), "macro-F1 with Other"] == "0.700"  # one seed: no std to show
