"""Spatial transformer (section VII): the sampler, the geometry it should learn, and the arms of the experiment."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import receiptlib as rl
from receiptlib import stn as rstn
from receiptlib.stn import geometry

torch.set_num_threads(1)
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def tiny_classifier(num_classes: int = 3) -> nn.Module:
    """A stand-in classifier with a final Linear (what features_and_logits hooks)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def stn_model(transform="rts", *, out_size=10, loc_size=12, aspect=1.0, classifier=None):
    return rstn.STNClassifier(rstn.SpatialTransformer(transform, aspect=aspect), classifier or nn.Identity(),
                              loc_size=loc_size, out_size=out_size, mean=MEAN, std=STD)


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transform", ["rts", "affine"])
@pytest.mark.parametrize("aspect", [1.0, 4 / 3])
def test_identity_initialisation_leaves_the_crop_equal_to_a_plain_resize(transform, aspect):
    torch.manual_seed(0)
    views = torch.rand(2, 3, 30, 30)
    model = stn_model(transform, out_size=10, aspect=aspect)
    crop = model.transformed(views)
    # exactly what the classifier alone (arm A, stage 1) sees: a bilinear resize of the whole view
    plain = rstn.ResizeClassifier(nn.Identity(), out_size=10, mean=MEAN, std=STD).crop(views)
    torch.testing.assert_close(crop, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(crop, F.interpolate(views, size=10, mode="bilinear", align_corners=False), atol=1e-5, rtol=0)
    assert torch.allclose(model.theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3), atol=1e-6)


def test_the_crop_reads_the_raw_high_resolution_pixels_and_normalises_after():
    views = torch.rand(1, 3, 16, 16)
    # a zoom of 0.5 about the centre at half the view's size reads the central 8 x 8 pixels exactly
    theta = geometry.rigid_theta(torch.zeros(1), torch.full((1,), 0.5), torch.zeros(1), torch.zeros(1))
    crop = rstn.SpatialTransformer.sample(views, theta, 8)
    torch.testing.assert_close(crop, views[:, :, 4:12, 4:12], atol=1e-6, rtol=0)
    # through the model: the crop is sampled from the raw view (not the localisation copy, not normalised), and the
    # classifier gets it normalised once; outside the photo it reads black, normalised (0 - mean) / std = -1
    model = stn_model(out_size=8, loc_size=12, classifier=nn.Identity())
    bound = math.atanh((math.log(0.5) - math.log(0.4 * 1.25) / 2) / (math.log(1.25 / 0.4) / 2))
    u0 = math.atanh(-(math.log(0.4 * 1.25) / 2) / (math.log(1.25 / 0.4) / 2))
    with torch.no_grad():
        model.stn.head.bias.copy_(torch.tensor([0.0, bound - u0, 0.0, 0.0]))  # scale exactly 0.5, centred
    views = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model.crop(views), views[:, :, 4:12, 4:12], atol=1e-5, rtol=0)
    torch.testing.assert_close(model(views).detach(), (views[:, :, 4:12, 4:12] - 0.5) / 0.5, atol=1e-5, rtol=0)
    with torch.no_grad():
        model.stn.head.bias.copy_(torch.tensor([0.0, 0.0, 20.0, 0.0]))  # pushed right to max_translation
    seen = model(torch.ones(1, 3, 16, 16)).detach()
    assert float(seen.min()) == pytest.approx(-1.0) and float(seen.max()) == pytest.approx(1.0)


def test_rts_is_rigid_in_the_photos_pixels_whatever_the_squeeze():
    aspect = 4 / 3  # a 3:4 photo squeezed into a square
    stn = rstn.SpatialTransformer("rts", aspect=aspect)
    theta = stn.theta_from_params(torch.tensor([[math.pi / 6, 0.3, 0.1, -0.2]]))
    a = theta[0, :, :2].double()
    d = torch.diag(torch.tensor([1.0, aspect], dtype=torch.float64))
    pixel = d @ a @ torch.linalg.inv(d)  # the same map in pixel units
    gram = pixel.T @ pixel
    torch.testing.assert_close(gram[0, 1], torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(gram[0, 0], gram[1, 1])  # a scaled rotation: no shear, no squeeze
    scale, angle = rstn.theta_scale_angle(theta.numpy(), aspect=aspect)
    assert angle[0] == pytest.approx(30.0, abs=1e-4)
    assert not torch.allclose(a[0, 1], -a[1, 0].double())  # in the squeezed coordinates it is not a rotation


def test_rts_scale_bound_holds_for_extreme_outputs():
    stn = rstn.SpatialTransformer("rts", scale_range=(0.35, 1.25), max_translation=0.6, aspect=4 / 3)
    for value in (-1e4, -30.0, 30.0, 1e4):
        with torch.no_grad():
            stn.head.bias.fill_(value)
        stn(torch.randn(2, 3, 16, 16))
        scale, _ = rstn.theta_scale_angle(stn.theta.numpy(), aspect=4 / 3)
        assert np.all(scale >= 0.35 - 1e-5) and np.all(scale <= 1.25 + 1e-5), (value, scale)
        assert stn.theta[:, :, 2].abs().max() <= 0.6 + 1e-6
        assert np.isfinite(stn.theta.numpy()).all() and float(stn.penalty) == 0.0


def test_affine_guard_penalty_grows_as_the_crop_collapses():
    stn = rstn.SpatialTransformer("affine", scale_range=(0.4, 1.25), max_translation=0.5)
    penalty = lambda t: float(stn.guard_penalty(torch.tensor([t], dtype=torch.float32)))  # noqa: E731
    assert penalty([[1, 0, 0], [0, 1, 0]]) == 0.0
    shrinking = [penalty([[s, 0, 0], [0, s, 0]]) for s in (0.3, 0.1, 1e-2)]
    assert 0 < shrinking[0] < shrinking[1] < shrinking[2]
    assert penalty([[1, 0, 0], [0, 1e-3, 0]]) > 1.0  # squeezed along one axis only


@pytest.mark.parametrize("transform", ["rts", "affine"])
def test_gradients_reach_the_localisation_net(transform):
    torch.manual_seed(0)
    model = stn_model(transform, out_size=12, loc_size=16, classifier=tiny_classifier())
    x, y = torch.rand(4, 3, 24, 24), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + model.regularisation()).backward()
        assert model.stn.head.weight.grad.abs().sum() > 0  # the zero-initialised last layer learns from step 1
        opt.step()
    assert model.stn.features[0].weight.grad.abs().sum() > 0
    feats, logits = rl.models.features_and_logits(model, x)  # the open-set hook finds the classifier's last layer
    assert feats.shape == (4, 4) and logits.shape == (4, 3)


# ---------------------------------------------------------------------------------------------
# Geometry: the oracle, the hard slice, the correlations
# ---------------------------------------------------------------------------------------------

def quad_rows(angle_deg: float, scale: float, centre=(0.5, 0.5), aspect=4 / 3, size=(0.3, 0.6)):
    """Manifest quads of a receipt of (width, height) = size x scale (fractions of the frame's width, so lengths
    are true in pixels) turned by angle_deg counter-clockwise on screen about centre."""
    w, h = size[0] * scale, size[1] * scale
    corners = np.array([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)])
    t = -math.radians(angle_deg)  # screen y points down
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    pts = corners @ rot.T
    pts[:, 1] /= aspect  # back to fractions of the frame's height
    pts += centre
    mid_l, mid_r = (pts[0] * 0.8 + pts[3] * 0.2), (pts[1] * 0.8 + pts[2] * 0.2)
    fmt = lambda q: " ".join(f"{v:.6f}" for v in np.asarray(q).ravel())  # noqa: E731
    return {"header_quad": fmt([pts[0], pts[1], mid_r, mid_l]), "body_quad": fmt([mid_l, mid_r, pts[2], pts[3]])}


def test_oracle_theta_undoes_rotation_zoom_and_shift():
    aspect = 4 / 3
    table = pd.DataFrame([quad_rows(0, 1.0), quad_rows(40, 1.0), quad_rows(-120, 0.5, centre=(0.3, 0.6))]
                         + [{"header_quad": "", "body_quad": ""}])  # a real photo: no quads, the identity
    theta = geometry.oracle_theta(table, aspect=aspect)
    zoom, angle = geometry.pixel_scale_angle(theta.numpy(), aspect=aspect)
    assert angle[1] == pytest.approx(-40, abs=1e-3) and angle[2] == pytest.approx(120, abs=1e-3)
    assert zoom[2] == pytest.approx(zoom[0] * 0.5, rel=1e-4)  # half the size in frame: zoom in twice as much
    torch.testing.assert_close(theta[2, :, 2], torch.tensor([-0.4, 0.2]), atol=1e-5, rtol=0)  # centred on it
    torch.testing.assert_close(theta[3], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))


def test_oracle_never_zooms_out_a_long_receipt_and_shows_its_top():
    aspect = 4 / 3
    # a receipt twice the frame's height, its top at y = 0.1 of the frame (photographed from the top)
    row = quad_rows(0, 1.0, centre=(0.5, 0.1 + 2.0 / aspect / 2), size=(0.5, 2.0))
    theta = geometry.oracle_theta(pd.DataFrame([row]), aspect=aspect)
    zoom, _ = geometry.pixel_scale_angle(theta.numpy(), aspect=aspect)
    assert zoom[0] == pytest.approx(1.0)  # not shrunk to fit: the header stays legible
    # the output's top centre, just inside the edge, reads the receipt's top centre
    y_top = -0.95
    read = theta[0, :, :2] @ torch.tensor([0.0, y_top]) + theta[0, :, 2]
    torch.testing.assert_close(read, torch.tensor([0.0, 0.1 * 2 - 1]), atol=1e-5, rtol=0)


def test_oracle_on_generated_photos_reads_the_generators_rotation():
    world = rl.synth.make_world(0)
    receipt = rl.synth.render_receipt(world.known[0], np.random.default_rng(1), width=160)
    rows = [rl.synth.photograph(receipt, np.random.default_rng(seed), size=(192, 256), only="rotation")[1]
            for seed in range(8)]
    table = pd.DataFrame(rows)
    assert table["rotation_deg"].abs().max() > 10  # the photos really are turned
    _, angle = geometry.pixel_scale_angle(geometry.oracle_theta(table, aspect=256 / 192).numpy(), aspect=256 / 192)
    # the oracle turns each photo back by the generator's own rotation (positive = counter-clockwise)
    np.testing.assert_allclose((angle + table["rotation_deg"] + 180) % 360 - 180, 0, atol=1.0)


def test_hard_mask_and_circular_correlation():
    table = pd.DataFrame({"rotation_deg": [0, 30, -5, 0], "perspective": [0, 0, 0.05, 0], "scale": [1, 1, 1, 0.6]})
    assert geometry.hard_mask(table).tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="scale"):
        geometry.hard_mask(table.drop(columns="scale"))
    a = np.array([-170, -90, -10, 10, 95, 175.0])
    assert geometry.circular_correlation(a, -a) == pytest.approx(-1.0)
    assert geometry.circular_correlation(a, a + 30) == pytest.approx(1.0)  # a constant offset is still 1
    rng = np.random.default_rng(0)
    assert abs(geometry.circular_correlation(rng.uniform(-180, 180, 500), rng.uniform(-180, 180, 500))) < 0.15


# ---------------------------------------------------------------------------------------------
# The arms on a tiny synthetic set
# ---------------------------------------------------------------------------------------------

TINY = dict(image_size=32, view_size=64, loc_size=16, batch_size=16, max_train_images=64, stage1_epochs=1,
            stage2_epochs=1, weights="none", loc_lr_mults=(1.0, 0.3), snapshots_per_stage=1)


@pytest.fixture(scope="module")
def tiny_views(tmp_path_factory):
    root = tmp_path_factory.mktemp("stn")
    data_dir = rl.synth.ensure_dataset("tiny", seed=0, root=root, workers=1)
    recipe = rstn.STNRecipe(**TINY)
    return data_dir, recipe, rstn.Views.load(data_dir, recipe, workers=0)


@pytest.mark.slow
def test_identity_arm_reproduces_arm_a(tiny_views):
    _, recipe, views = tiny_views
    stage1 = rstn.train_stage1(views, recipe, device="cpu", verbose=False)
    a = rstn.train_arm("finetune", views, recipe, stage1=stage1, seed=1, device="cpu", verbose=False)
    a2 = rstn.train_arm("identity", views, recipe, stage1=stage1, seed=1, device="cpu", verbose=False)
    np.testing.assert_allclose(a.losses, a2.losses, rtol=1e-4, atol=1e-5)
    pa = rstn.training.predict(a.model, views.test, "cpu")
    pb = rstn.training.predict(a2.model, views.test, "cpu")
    np.testing.assert_allclose(pa["logits"], pb["logits"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(a2.model.stn.theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand_as(a2.model.stn.theta))


@pytest.mark.slow
def test_staged_starts_from_stage1_and_trains_only_the_transformer_first(tiny_views):
    _, recipe, views = tiny_views
    stage1 = rstn.train_stage1(views, recipe, device="cpu", verbose=False)
    res = rstn.train_arm("staged", views, recipe, stage1=stage1, seed=0, device="cpu", phases=("transformer",),
                         verbose=False)
    # after the transformer-only phase the classifier is stage 1's, weights and BatchNorm statistics alike
    for name, value in res.model.classifier.state_dict().items():
        torch.testing.assert_close(value, stage1["state"][name], msg=name)
    assert res.model.stn.head.weight.abs().sum() > 0  # and the transformer moved
    assert res.summed_rates["head_gain"] >= 1.0
    full = rstn.train_arm("staged", views, recipe, stage1=stage1, seed=0, device="cpu", verbose=False)
    changed = [n for n, v in full.model.classifier.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, stage1["state"][n])]
    assert changed  # then both move
    with pytest.raises(ValueError, match="stage1"):
        rstn.train_arm("staged", views, recipe, stage1=None, seed=0, device="cpu")


@pytest.mark.slow
def test_compare_writes_the_table_intervals_and_mechanism(tiny_views, tmp_path):
    data_dir, recipe, _ = tiny_views
    arms = ("finetune", "identity", "staged")
    summary = rstn.compare(data_dir, seeds=(0, 1), arms=arms, single_seed_arms=("identity",), out_dir=tmp_path / "c",
                           device="cpu", workers=0, verbose=False, n_snapshot=4, **TINY)
    assert set(summary["slice"]) == {"all", "hard"} and set(summary["arm"]) == set(arms)
    loaded = rstn.load_comparison(tmp_path / "c")
    cfg = loaded["config"]
    assert cfg["hard_slice_size"] == int(rstn.geometry.hard_mask(loaded["test_table"]).sum()) > 0
    assert cfg["oracle"]["n_known"] > 0 and str(cfg["loc_mult"]) in cfg["loc_scores"]
    res = loaded["results"]
    assert len(res[res["arm"] == "identity"]) == 2 and len(res[res["arm"] == "staged"]) == 4  # 1 seed x 2 slices
    ref = summary[summary["arm"] == "finetune"]
    assert (ref["accuracy_diff"] == 0).all() and (ref["accuracy_diff_low"] == 0).all()  # A against itself
    for r in summary.itertuples():
        assert r.accuracy_diff_low <= r.accuracy_diff + 1e-9 or r.arm == "identity"
    assert set(loaded["mechanism"]["arm"]) == {"identity", "staged"}
    assert {"angle_vs_rotation", "zoom_vs_scale", "mean_zoom"} <= set(loaded["mechanism"].columns)
    grid, titles = rstn.experiment.snapshot_grid(loaded, "staged-seed0")
    assert titles[0] == "input" and grid.shape[0] > 0
    text = rstn.summary.conclusion(summary, cfg)
    assert "Oracle ceiling" in text and "A′" in text
    # the same configuration again: reused, not retrained
    again = rstn.compare(data_dir, seeds=(0, 1), arms=arms, single_seed_arms=("identity",), out_dir=tmp_path / "c",
                         device="cpu", workers=0, verbose=False, n_snapshot=4, **TINY)
    pd.testing.assert_frame_equal(again, pd.read_csv(tmp_path / "c" / "summary.csv"))
    with pytest.raises(FileExistsError):
        rstn.compare(data_dir, seeds=(0,), arms=arms, out_dir=tmp_path / "c", device="cpu", workers=0,
                     verbose=False, **TINY)


def test_paired_intervals_are_zero_for_identical_arms_and_resample_other_by_chain():
    rng = np.random.default_rng(0)
    labels = np.r_[rng.integers(0, 3, 60), np.full(40, 3)]
    groups = np.r_[[None] * 60, np.repeat(["x", "y", "z", "w"], 10)].astype(object)
    kp = rng.integers(0, 3, (2, 100))
    op = np.where(rng.random((2, 100)) < 0.3, 3, kp)
    out = rstn.experiment.paired_intervals(labels, {"finetune": kp, "same": kp.copy()},
                                           {"finetune": op, "same": op.copy()}, num_known=3, other_groups=groups,
                                           n=200)
    assert out["same"] == {"accuracy_diff_low": 0.0, "accuracy_diff_high": 0.0, "macro_f1_diff_low": 0.0,
                           "macro_f1_diff_high": 0.0}
    better = op.copy()
    better[:, 60:] = 3  # every Other photo caught
    out = rstn.experiment.paired_intervals(labels, {"finetune": kp, "better": kp}, {"finetune": op, "better": better},
                                           num_known=3, other_groups=groups, n=200)
    assert out["better"]["macro_f1_diff_low"] > 0
    # an arm that catches the Other photos of two chains and misses the other two: resampled by chain, its gain
    # varies as whole chains come and go; resampled photo by photo the interval is far too narrow
    clustered = op.copy()
    clustered[:, 60:80] = 3
    clustered[:, 80:] = kp[:, 80:]
    width = {}
    for name, g in (("chain", groups), ("photo", None)):
        r = rstn.experiment.paired_intervals(labels, {"finetune": kp, "c": kp}, {"finetune": op, "c": clustered},
                                             num_known=3, other_groups=g, n=400)["c"]
        width[name] = r["macro_f1_diff_high"] - r["macro_f1_diff_low"]
    assert width["chain"] > 1.5 * width["photo"]


def test_bad_configuration_is_refused_with_the_parameter_name():
    with pytest.raises(ValueError, match="transform"):
        rstn.STNRecipe(transform="perspective")
    with pytest.raises(ValueError, match="view_size"):
        rstn.STNRecipe(image_size=64, view_size=32)
    with pytest.raises(ValueError, match="freeze_share"):
        rstn.STNRecipe(freeze_share=1.0)
    with pytest.raises(ValueError, match="aspect"):
        rstn.SpatialTransformer("rts", aspect=0)
    with pytest.raises(ValueError, match="arm"):
        rstn.train_arm("perspective", None, rstn.STNRecipe(), stage1=None, seed=0)
    assert dataclasses.replace(rstn.STNRecipe(), loc_lr_mults=[1, 0.5]).loc_lr_mults == (1.0, 0.5)
