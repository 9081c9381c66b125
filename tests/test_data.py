"""receiptlib.data: robust reading, folder data sets, transforms, loaders. Every file is made in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from receiptlib import data as D
from receiptlib.common import OTHER


# ---------------------------------------------------------------- file makers (shared with test_predict)

def save_noise_jpeg(path: Path, size=(64, 48), seed=0, quality=90) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=quality)
    return path


def make_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind the pipeline must refuse with a clear error (the missing one is not created)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = save_noise_jpeg(folder / "_tmp_full.jpg", size=(256, 256))
    raw = good.read_bytes()
    good.unlink()
    bad = {
        "truncated": folder / "truncated.jpg",
        "zero": folder / "zero.jpg",
        "text": folder / "text.jpg",
        "bomb": folder / "bomb.png",
        "missing": folder / "missing.jpg",
    }
    bad["truncated"].write_bytes(raw[: len(raw) // 2])
    bad["zero"].write_bytes(b"")
    bad["text"].write_text("this is a shopping list, not a photo\n")
    # 144 MP of 1-bit zeros: 18 kB on disk, 432 MB once decoded as RGB -> above MAX_PIXELS
    Image.new("1", (12000, 12000)).save(bad["bomb"])
    return bad


# ---------------------------------------------------------------- read_image: bad files

@pytest.mark.parametrize("kind,words", [
    ("truncated", "truncated"),
    ("zero", "empty file"),
    ("text", "not an image"),
    ("bomb", "decompression bomb"),
    ("missing", "not found"),
])
def test_bad_file_gives_image_read_error_naming_the_file(tmp_path, kind, words):
    bad = make_bad_files(tmp_path)
    with pytest.raises(D.ImageReadError) as info:
        D.read_image(bad[kind])
    msg = str(info.value)
    assert msg.startswith(str(bad[kind]))
    assert words in msg
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(bad[kind])


def test_truncated_jpeg_fails_in_draft_mode_too(tmp_path):
    bad = make_bad_files(tmp_path)
    with pytest.raises(D.ImageReadError, match="truncated"):
        D.read_image(bad["truncated"], draft_size=32)


def test_bomb_limit_is_a_parameter_and_pillow_limit_is_honoured(tmp_path, monkeypatch):
    p = save_noise_jpeg(tmp_path / "ok.jpg", size=(100, 100))
    assert D.read_image(p).size == (100, 100)
    with pytest.raises(D.ImageReadError, match="decompression bomb"):
        D.read_image(p, max_pixels=5000)
    # Pillow's own hard error (above 2 x MAX_IMAGE_PIXELS) is converted too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(D.ImageReadError, match=str(p).replace("\\", "\\\\") + ".*decompression bomb"):
        D.read_image(p)


def test_image_read_error_survives_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(D.ImageReadError("a/b.jpg", "empty file")))
    assert str(e) == "a/b.jpg: empty file" and e.path == "a/b.jpg"
    one = D.ImageReadError("a/b.jpg: empty file")  # the form torch's DataLoader uses when re-raising
    assert one.path == "a/b.jpg" and one.reason == "empty file"


# ---------------------------------------------------------------- read_image: modes and orientation

def test_exif_orientation_is_applied(tmp_path):
    # stored 60 wide x 40 tall, left half red, right half blue; Orientation 6 = "rotate 90 degrees clockwise to view"
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "sideways.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    out = D.read_image(p)
    assert out.size == (40, 60)  # upright: now portrait
    top, bottom = np.asarray(out)[5, 20], np.asarray(out)[-5, 20]
    assert top[0] > 200 and top[2] < 60  # the left (red) half went to the top
    assert bottom[2] > 200 and bottom[0] < 60
    # draft mode keeps the orientation
    assert D.read_image(p, draft_size=8).size[0] < D.read_image(p, draft_size=8).size[1]


def _rgb(path, **kw):
    out = D.read_image(path, **kw)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_greyscale_and_bilevel_become_rgb(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    Image.new("1", (8, 8), 1).save(tmp_path / "b.bmp")
    assert (_rgb(tmp_path / "g.png") == 77).all()
    assert (_rgb(tmp_path / "b.bmp") == 255).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 4, 8))  # left half palette index 1 (red), right half index 0 (transparent black)
    img.save(tmp_path / "p.png", transparency=0)
    a = _rgb(tmp_path / "p.png")
    assert (a[:, :4] == (200, 10, 10)).all()
    assert (a[:, 4:] == 255).all()
    img.save(tmp_path / "p_opaque.png")
    assert (_rgb(tmp_path / "p_opaque.png")[:, 4:] == 0).all()


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((10, 200, 10, 255), (0, 0, 4, 8))
    rgba.save(tmp_path / "a.png")
    a = _rgb(tmp_path / "a.png")
    assert (a[:, :4] == (10, 200, 10)).all() and (a[:, 4:] == 255).all()
    Image.new("LA", (4, 4), (0, 128)).save(tmp_path / "la.png")
    assert np.allclose(_rgb(tmp_path / "la.png"), 127, atol=1)  # half-transparent black on white


def test_cmyk_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # white paper
    img.paste((255, 0, 0, 0), (0, 0, 8, 16))  # cyan ink on the left
    img.save(tmp_path / "c.jpg", quality=95)
    img.save(tmp_path / "c.tif")
    for name in ("c.jpg", "c.tif"):
        a = _rgb(tmp_path / name)
        assert np.allclose(a[:, 12], 255, atol=12), name
        assert a[4, 2, 0] < 40 and a[4, 2, 1] > 215 and a[4, 2, 2] > 215, name


def test_16_bit_is_scaled_not_clipped(tmp_path):
    a16 = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    a = _rgb(tmp_path / "deep.png")
    assert list(a[0, :, 0]) == [0, 64, 128, 255]
    assert (a[..., 0] == a[..., 2]).all()
    big_endian = Image.frombytes("I;16B", (4, 1), a16[:1].astype(">u2").tobytes())
    big_endian.save(tmp_path / "deep.tif")
    assert list(_rgb(tmp_path / "deep.tif")[0, :, 0]) == [0, 64, 128, 255]
    # 32-bit "I" mode with 16-bit content scales the same way
    assert list(np.asarray(D.to_rgb(Image.fromarray(a16.astype(np.int32))))[0, :, 1]) == [0, 64, 128, 255]


def test_draft_mode_decodes_big_jpeg_at_reduced_scale(tmp_path):
    p = save_noise_jpeg(tmp_path / "big.jpg", size=(1000, 1333))
    assert D.read_image(p).size == (1000, 1333)
    small = D.read_image(p, draft_size=(224, 224))
    assert small.size == (250, 334)  # 1/4 scale: the largest reduction still >= 224 on both sides
    png = tmp_path / "big.png"
    Image.open(p).save(png)
    assert D.read_image(png, draft_size=224).size == (1000, 1333)  # only JPEG has a draft mode


# ---------------------------------------------------------------- transforms

@pytest.mark.parametrize("size", [224, 160])
def test_transforms_give_normalised_tensors_of_the_right_shape(size):
    img = Image.new("RGB", (300, 500), (128, 64, 200))
    for t in (D.train_transform(image_size=size), D.eval_transform(image_size=size)):
        x = t(img)
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert t.image_size == size
    x = D.eval_transform(image_size=size)(img)
    back = D.denormalize(x)
    assert torch.allclose(back[:, 10, 10], torch.tensor([128, 64, 200]) / 255, atol=1e-5)
    assert D.denormalize(x[None]).shape == (1, 3, size, size)


def test_train_transform_options_and_errors():
    img = Image.new("RGB", (40, 40), (255, 255, 255))
    t = D.train_transform(image_size=32, rotation=0, jitter=None)
    assert torch.allclose(t(img), D.eval_transform(image_size=32)(img))  # no randomness left
    D.train_transform(jitter=(0.1, 0.1, 0.1, 0.0))
    with pytest.raises(ValueError, match="image_size"):
        D.eval_transform(image_size=0)
    with pytest.raises(ValueError, match="rotation"):
        D.train_transform(rotation=-5)


def test_augmentation_is_deterministic_under_a_fixed_seed():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8))
    t = D.train_transform(image_size=32)
    torch.manual_seed(3)
    a = t(img)
    torch.manual_seed(3)
    b = t(img)
    c = t(img)
    assert torch.equal(a, b) and not torch.equal(b, c)


# ---------------------------------------------------------------- folder data sets

def make_world(root: Path, bad: bool = False) -> Path:
    """train: Alpha(3) Beta(2); val: Alpha(1) Beta(1) Other(2); test: Alpha(1) Other(1)."""
    layout = {"train": {"Beta": 2, "Alpha": 3}, "val": {"Alpha": 1, "Beta": 1, OTHER: 2},
              "test": {"Alpha": 1, OTHER: 1}}
    seed = 0
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                seed += 1
                save_noise_jpeg(root / split / cls / f"{i}.jpg", seed=seed)
    (root / "train" / "Alpha" / "notes.txt").write_text("not an image, ignored by extension")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    save_noise_jpeg(root / "train" / "Beta" / "UPPER.JPEG", seed=99)
    if bad:
        bad_files = make_bad_files(root / "train" / "Alpha")
        del bad_files["missing"]
    return root


def test_known_classes_and_labels(tmp_path):
    root = make_world(tmp_path / "w")
    assert D.known_classes(root) == ["Alpha", "Beta"]
    assert D.class_names(root) == ["Alpha", "Beta", OTHER]
    val = D.ReceiptFolder(root, "val", transform=D.eval_transform(image_size=32))
    assert val.classes == ["Alpha", "Beta", OTHER] and val.known_classes == ["Alpha", "Beta"]
    assert val.targets == [0, 1, 2, 2] and val.other_label == 2
    assert [Path(p).parts[-2:] for p, _ in val.samples][0] == ("Alpha", "0.jpg")
    x, y = val[3]
    assert x.shape == (3, 32, 32) and y == 2
    train = D.ReceiptFolder(root, "train")
    assert len(train) == 6  # 3 + 2 + UPPER.JPEG; notes.txt and the hidden folder are ignored
    assert train.class_counts() == {"Alpha": 3, "Beta": 3, OTHER: 0}
    # a saved class list (with Other last) gives the same mapping
    assert D.ReceiptFolder(root, "test", classes=["Alpha", "Beta", OTHER]).targets == [0, 2]


def test_unknown_val_class_names_the_class_and_folder(tmp_path):
    root = make_world(tmp_path / "w")
    save_noise_jpeg(root / "val" / "Gamma" / "0.jpg")
    with pytest.raises(ValueError, match=r"Gamma.*not among the known classes") as info:
        D.ReceiptFolder(root, "val")
    assert str(root / "val" / "Gamma") in str(info.value)


def test_missing_or_empty_train_and_other_in_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        D.known_classes(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        D.known_classes(tmp_path)
    save_noise_jpeg(tmp_path / "train" / OTHER / "0.jpg")
    with pytest.raises(ValueError, match="reserved"):
        D.known_classes(tmp_path)
    root = make_world(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="split folder missing"):
        D.ReceiptFolder(root, "holdout")
    with pytest.raises(ValueError, match="on_error"):
        D.ReceiptFolder(root, "val", on_error="ignore")


def test_direct_indexing_raises_naming_the_file(tmp_path):
    root = make_world(tmp_path / "w", bad=True)
    ds = D.ReceiptFolder(root, "train")
    bad_idx = [i for i, (p, _) in enumerate(ds.samples) if Path(p).name == "zero.jpg"][0]
    with pytest.raises(D.ImageReadError, match="zero.jpg: empty file"):
        ds[bad_idx]


def test_skip_mode_reports_bad_files_and_keeps_the_rest(tmp_path, caplog):
    root = make_world(tmp_path / "w", bad=True)
    ds = D.ReceiptFolder(root, "train", transform=D.eval_transform(image_size=16), on_error="skip")
    loader = D.make_loader(ds, batch_size=4, shuffle=True, seed=0, with_index=True)
    seen = []
    with caplog.at_level("WARNING", logger="receiptlib.data"):
        for x, y, idx in loader:
            assert x.shape[1:] == (3, 16, 16) and len(x) == len(y) == len(idx)
            seen += idx.tolist()
    bad_names = {"truncated.jpg", "zero.jpg", "text.jpg", "bomb.png"}
    good = [i for i, (p, _) in enumerate(ds.samples) if Path(p).name not in bad_names]
    assert sorted(seen) == good
    assert sorted(Path(f.path).name for f in loader.failures) == sorted(bad_names)
    assert all(f.error.startswith(f.path) for f in loader.failures)
    assert "zero.jpg" in caplog.text
    list(loader)  # a second epoch: epoch_failures resets, failures accumulates
    assert len(loader.epoch_failures) == 4 and len(loader.failures) == 8


def test_raise_mode_in_a_worker_raises_clearly_in_the_main_process(tmp_path):
    root = make_world(tmp_path / "w", bad=True)
    ds = D.ReceiptFolder(root, "train", transform=D.eval_transform(image_size=16))
    loader = D.make_loader(ds, batch_size=len(ds), shuffle=False, workers=1, seed=0)
    with pytest.raises(D.ImageReadError) as info:
        list(loader)
    msg = str(info.value)
    assert msg.startswith(str(root / "train" / "Alpha"))
    assert "3 more unreadable files" in msg and "on_error='skip'" in msg
    assert "Traceback" not in msg


def test_loader_is_deterministic_whatever_the_workers(tmp_path):
    root = make_world(tmp_path / "w")
    ds = D.ReceiptFolder(root, "train", transform=D.train_transform(image_size=16))

    def epochs(workers, seed):
        loader = D.make_loader(ds, batch_size=4, shuffle=True, workers=workers, seed=seed, with_index=True)
        return [[(x.clone(), y.clone(), i.clone()) for x, y, i in loader] for _ in range(2)]

    a, b, c = epochs(0, 7), epochs(1, 7), epochs(0, 8)
    for ea, eb in zip(a, b):
        for (xa, ya, ia), (xb, yb, ib) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    flat = lambda e: torch.cat([i for _, _, i in e]).tolist()  # noqa: E731
    assert flat(a[0]) != flat(a[1])  # each epoch reshuffles
    assert sorted(flat(a[0])) == list(range(len(ds)))
    assert not all(torch.equal(x1, x2) for (x1, _, _), (x2, _, _) in zip(a[0], c[0]))
    assert len(D.make_loader(ds, batch_size=4, shuffle=False)) == 2


# ---------------------------------------------------------------- the manifest joined to image paths

def write_manifest(root: Path, rows: list[dict]) -> None:
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)


def test_photo_table_joins_the_manifest_in_the_given_order_for_every_path_form(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_manifest(data, [{"path": f"test/A/{i}.jpg", "label": "A", "rotation_deg": 10.0 * i,
                           "lookalike": "true" if i == 1 else "false"} for i in range(3)])
    order = [2, 0, 1]
    table = D.photo_table(data, [str(data / f"test/A/{i}.jpg") for i in order])  # absolute
    assert table["path"].tolist() == [f"test/A/{i}.jpg" for i in order]
    assert table["rotation_deg"].tolist() == [20.0, 0.0, 10.0] and table.index.tolist() == [0, 1, 2]
    assert table["lookalike"].dtype == bool and table["lookalike"].tolist() == [False, False, True]
    monkeypatch.chdir(tmp_path)
    assert D.photo_table("data", [f"data/test/A/{i}.jpg" for i in order]).equals(table)  # relative to the cwd
    assert D.photo_table("data", [f"test/A/{i}.jpg" for i in order]).equals(table)  # relative to the data folder
    unlisted = [str(data / "test/A/0.jpg"), str(data / "test/A/9.jpg")]
    with pytest.raises(ValueError, match="1 images are not listed, e.g. .*9.jpg"):
        D.photo_table(data, unlisted)
    kept = D.photo_table(data, unlisted, missing="keep")
    assert kept["path"].tolist() == ["test/A/0.jpg", "test/A/9.jpg"] and np.isnan(kept["rotation_deg"][1])
    assert kept["lookalike"].dtype == bool and kept["lookalike"].tolist() == [False, False]


def test_distortion_bins_of_a_photo_table():
    import pandas as pd

    table = pd.DataFrame({"rotation_deg": [0.0, -15.0, 45.0, 5.0], "blur_px": [0.0, 2.0, 0.2, 9.0],
                          "label": ["A", OTHER, OTHER, OTHER], "lookalike": [False, True, False, False],
                          "logo_in_frame": [False, False, True, False]})
    both = table.assign(label=["A", OTHER, "A", OTHER], lookalike_kind=["", "logo_and_template", "", ""],
                        logo_in_frame=[False, False, True, False])
    assert D.distortion_bins(both)["kind of photo"].tolist() == [
        "known", "lookalike Other (logo and template)", "logo-in-frame known", "plain Other"]
    bins = D.distortion_bins(table)
    assert list(bins) == ["rotation (|degrees|)", "blur (px)", "occluded fraction", "kind of photo"]
    assert bins["rotation (|degrees|)"].astype(str).tolist() == ["(-0.001, 10.0]", "(10.0, 20.0]", "(30.0, 180.0]",
                                                                 "(-0.001, 10.0]"]
    assert bins["blur (px)"].astype(str).tolist() == ["(-0.01, 0.5]", "(1.5, 3.0]", "(-0.01, 0.5]", "(3.0, 100.0]"]
    assert bins["occluded fraction"].astype(str).tolist() == ["(-0.01, 0.0]"] * 4  # no column (real photos): 0
    assert bins["kind of photo"].tolist() == ["known", "lookalike Other", "logo-in-frame Other", "plain Other"]
    assert all(b.index.equals(table.index) for b in bins.values())


def test_slice_rates_merge_small_ordered_bins_and_give_wilson_intervals():
    import pandas as pd

    key = pd.cut(pd.Series([1.0] * 100 + [15.0] * 10 + [25.0] * 60 + [90.0] * 5), [0, 10, 20, 30, 180])
    wrong = [False] * 90 + [True] * 10 + [True] * 10 + [False] * 60 + [True] * 5
    table = D.slice_rates(wrong, key, min_photos=50)
    assert table.n.tolist() == [100, 75] and table.n.sum() == 175  # 10 + 60 + 5 merged, no photo lost
    assert table.bin.tolist()[0] == "(0, 10]" and table.bin.tolist()[1] == "(10, 20] … (30, 180]"
    assert table.rate.tolist() == [0.1, 15 / 75]
    assert (table.low <= table.rate).all() and (table.rate <= table.high).all()
    kinds = pd.Series(["known"] * 3 + ["plain Other"] * 2)
    assert D.slice_rates([True, False, False, True, True], kinds).n.tolist() == [3, 2]  # unordered: kept
