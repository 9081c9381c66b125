"""Spatial transformer (section VII): identity start, restricted transform, gradients, staged start, guard."""
from __future__ import annotations

import dataclasses
import math

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


# image_size 32, not 16: at 16 px ResNet18's layer4 sees 1x1 maps, where bf16 + channels_last conv backward on
# this CPU (torch 2.14.1, oneDNN) returns garbage weight gradients (NaN or 1e26); 32 px is exact.
TINY = dict(image_size=32, input_size=64, loc_size=16, epochs=2, stage2_epochs=1, freeze_epochs=1,
            batch_size=4, lr=0.02, weights="none", overrides={"eval_batch_size": 8})


@pytest.mark.slow
def test_staged_training_starts_from_the_stage1_classifier(tmp_path):
    data = make_folder(tmp_path / "data")
    recipe = rstn.STNRecipe(**TINY)
    # stage 1 alone: the plain ResNet for epochs - stage2_epochs = 1 epoch, same seed
    plain = rstn.train_stn(data, dataclasses.replace(recipe, epochs=1, stage2_epochs=0, freeze_epochs=0),
                           mode="resnet", seed=0, device="cpu", workers=0, verbose=False)
    expected = {k: v.clone() for k, v in plain.model.classifier.state_dict().items()}
    seen = {}

    def at_stage2_start(model):
        seen["state"] = {k: v.clone() for k, v in model.classifier.state_dict().items()}
        x = torch.randn(2, 3, 64, 64)
        model.eval()
        plain.model.eval()
        seen["same_function"] = torch.allclose(model(x), plain.model(x), atol=1e-4)

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

    # a given stage-1 state dict (e.g. a plain run's checkpoint) replaces stage 1
    res2 = rstn.train_stn(data, recipe, mode="staged", seed=0, device="cpu", workers=0, verbose=False,
                          stage1=expected, on_stage2_start=lambda m: seen.update(given=m.classifier.state_dict()))
    assert all(torch.equal(seen["given"][k], v) for k, v in expected.items())
    assert [r["stage"] for r in res2.history] == ["stage2"]


@pytest.mark.slow
def test_compare_writes_table_curves_and_snapshots(tmp_path):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "cmp"
    summary = rstn.compare(data, seeds=(0, 1), out_dir=out, n_snapshot=3, device="cpu", workers=0,
                           verbose=False, **TINY)
    assert set(summary["method"]) == {"resnet", "joint", "staged"}
    assert set(summary["slice"]) == {"all", "hard"}
    assert (summary["seeds"] == 2).all()
    assert summary[["accuracy_mean", "macro_f1_mean"]].apply(lambda c: c.between(0, 1)).all().all()
    loaded = rstn.load_comparison(out)
    assert set(loaded["history"]["mode"]) == {"resnet", "joint", "staged"}
    assert len(loaded["history"]) == 3 * 2 * TINY["epochs"]
    assert set(loaded["snapshots"]) == {"joint-seed0", "joint-seed1", "staged-seed0", "staged-seed1"}
    assert loaded["snapshots"]["joint-seed0"]["epochs"].tolist() == [0, 1, 2]
    assert loaded["inputs"]["images"].shape == (3, 64, 64, 3)
    # a second call with the same configuration reuses the folder
    again = rstn.compare(data, seeds=(0, 1), out_dir=out, n_snapshot=3, device="cpu", workers=0, verbose=False, **TINY)
    assert again.equals(summary) or np.allclose(again.select_dtypes("number"), summary.select_dtypes("number"), equal_nan=True)


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
