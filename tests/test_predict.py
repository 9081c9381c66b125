"""receiptlib.predict: every input once, error rows for bad files, summary, exit code, writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from receiptlib import data as D
from receiptlib import predict as P
from receiptlib.common import OTHER
from receiptlib.openset import as_decision
from receiptlib.photos import Preprocessing

CLASSES = ["Alpha", "Beta", "Gamma", "Delta"]
SIZE = 32


def save_noise_jpeg(path: Path, seed=0, size=(48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path, format="JPEG", quality=90)
    return path


def make_bad_files(folder: Path) -> dict[str, Path]:
    """Each kind of bad file of the data pipeline (the missing one is not created)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = save_noise_jpeg(folder / "full.tmp", size=(256, 256)).read_bytes()
    (folder / "full.tmp").unlink()
    bad = {k: folder / n for k, n in [("truncated", "truncated.jpg"), ("zero", "zero.jpg"), ("text", "text.jpg"),
                                      ("bomb", "bomb.png"), ("missing", "missing.jpg")]}
    bad["truncated"].write_bytes(raw[: len(raw) // 2])
    bad["zero"].write_bytes(b"")
    bad["text"].write_text("not a photo\n")
    Image.new("1", (12000, 12000)).save(bad["bomb"])  # 144 MP > data.MAX_PIXELS
    return bad


def tiny_model(num_classes=len(CLASSES)) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3, stride=2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, num_classes))


@pytest.fixture
def inputs(tmp_path):
    """A folder with good images (some nested) and every kind of bad file, plus loose paths."""
    folder = tmp_path / "photos"
    good = [save_noise_jpeg(folder / f"{i}.jpg", seed=i) for i in (1, 2)]
    good.append(save_noise_jpeg(folder / "nested" / "deeper" / "3.JPG", seed=3))
    bad = make_bad_files(folder / "junk")
    (folder / "readme.txt").write_text("ignored inside a folder: not an image extension")
    loose = save_noise_jpeg(tmp_path / "loose.dat", seed=9)  # named explicitly: taken whatever its extension
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"folder": folder, "good": good, "bad": bad, "loose": loose, "empty": empty}


def run(paths, **kw):
    kw.setdefault("model", tiny_model())
    kw.setdefault("classes", CLASSES)
    kw.setdefault("preprocessing", Preprocessing(SIZE))
    kw.setdefault("batch_size", 3)
    return P.predict_paths(paths, **kw)


def test_every_input_once_with_error_rows(inputs):
    bad = inputs["bad"]
    paths = [inputs["folder"], inputs["loose"], bad["missing"], inputs["good"][0], inputs["empty"]]
    df = run(paths)
    assert list(df.columns) == P.COLUMNS
    expected = [str(p) for p in inputs["good"][:2]] + [str(bad[k]) for k in ("bomb", "text", "truncated", "zero")] \
        + [str(inputs["good"][2]), str(inputs["loose"]), str(bad["missing"]), str(inputs["empty"])]
    assert df["path"].tolist() == expected  # folder order, then loose inputs; good[0] given twice appears once
    err = dict(zip(df["path"], df["error"]))
    for kind, words in [("bomb", "decompression bomb"), ("text", "not an image"), ("truncated", "truncated"),
                        ("zero", "empty file"), ("missing", "not found")]:
        assert err[str(bad[kind])].startswith(str(bad[kind])) and words in err[str(bad[kind])], kind
    assert "no image files" in err[str(inputs["empty"])]
    failed = df["error"] != ""
    assert (df.loc[failed, "label"] == "").all() and df.loc[failed, "other_score"].isna().all()
    ok = df[~failed]
    assert len(ok) == 4 and ok["label"].isin(CLASSES).all()
    assert (ok["label"] == ok["top1"]).all()
    assert np.allclose(ok["other_score"], -ok["top1_logit"])
    assert (ok["top1_logit"] >= ok["top2_logit"]).all() and (ok["top2_logit"] >= ok["top3_logit"]).all()
    assert (ok["top1"] != ok["top2"]).all()

    line = P.summary(df)
    assert line.startswith("10 inputs, 4 predicted (0 Other), 6 errors: ")
    assert "and 3 more" in line
    assert P.exit_code(df) == 0 and P.exit_code(df, strict=True) == 1


def test_logits_match_the_model_row_by_row(inputs):
    """predict's torch-free pipeline feeds the model what training's evaluation fed it (data.eval_transform
    after draft decoding, as ReceiptFolder reads photos)."""
    model = tiny_model()
    df = run([inputs["folder"]], model=model, batch_size=2)
    ok = df[df["error"] == ""]
    t = D.eval_transform(image_size=SIZE)
    with torch.no_grad():
        x = torch.stack([t(D.read_image(p, draft_size=SIZE)) for p in ok["path"]])
        logits = model.eval()(x).numpy()
    assert np.allclose(ok["top1_logit"], logits.max(1), atol=1e-5)
    assert ok["top1"].tolist() == [CLASSES[i] for i in logits.argmax(1)]


@pytest.mark.parametrize("size", [32, 47])
def test_preprocessing_gives_the_eval_transforms_pixels(inputs, size):
    prep = Preprocessing(size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    t = D.eval_transform(image_size=size, mean=prep.mean, std=prep.std)
    for p in [*inputs["good"], inputs["loose"]]:
        expected = t(D.read_image(p, draft_size=size)).numpy()
        got = prep.array(p)
        assert got.dtype == np.float32 and got.shape == (3, size, size)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(D.ImageReadError, match="empty file"):
        prep.array(inputs["bad"]["zero"])


def test_preprocessing_refuses_bad_settings():
    for bad in [dict(image_size=4), dict(image_size=32, mean=(0.5, 0.5)), dict(image_size=32, std=(1, 0, 1)),
                dict(image_size=32, resize="crop")]:
        with pytest.raises(ValueError):
            Preprocessing(**bad)
    prep = Preprocessing(64, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    with pytest.raises(ValueError, match="card: preprocessing"):
        Preprocessing.from_dict({"size": 64}, where="card: preprocessing")


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_decoding_threads_give_the_same_result(inputs, workers):
    a = run([inputs["folder"]], workers=0)
    b = run([inputs["folder"]], workers=workers, batch_size=1)
    pd.testing.assert_frame_equal(a, b)


def test_a_numpy_model_and_timings(inputs):
    """Any callable of a numpy batch serves (an ONNX session does); timings count the photos it saw."""
    weights = np.random.default_rng(0).normal(size=(3 * SIZE * SIZE, len(CLASSES))).astype(np.float32)
    seen = []

    def model(x):
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape[1:] == (3, SIZE, SIZE)
        seen.append(len(x))
        return x.reshape(len(x), -1) @ weights

    timings = {}
    df = run([inputs["folder"]], model=model, timings=timings)
    ok = df[df["error"] == ""]
    assert sum(seen) == len(ok) == timings["photos"] == 3 and timings["inputs"] == len(df)
    assert timings["decode_seconds"] > 0 and timings["model_seconds"] > 0
    x = np.stack([Preprocessing(SIZE).array(p) for p in ok["path"]])
    np.testing.assert_allclose(ok["top1_logit"], (x.reshape(len(x), -1) @ weights).max(1), rtol=1e-5)


def test_symlinked_folders_are_walked_once_in_a_stable_order(tmp_path):
    photos = tmp_path / "photos"
    save_noise_jpeg(photos / "b.jpg", seed=1)
    save_noise_jpeg(tmp_path / "elsewhere" / "a.jpg", seed=2)
    (photos / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (photos / "loop").symlink_to(photos, target_is_directory=True)  # a cycle must end
    df = run([photos])
    assert df["path"].tolist() == [str(photos / "b.jpg"), str(photos / "linked" / "a.jpg")]
    assert (df["error"] == "").all()


def test_other_fn_decides_other(inputs):
    def other_fn(logits):  # a global max-logit threshold at the median: 2 of the 3 images become Other
        m = logits.max(1)
        return m <= np.median(m), -m

    df = run([inputs["folder"]], other_fn=other_fn)
    ok = df[df["error"] == ""]
    assert (ok["label"] == OTHER).sum() == 2
    assert set(ok.loc[ok["label"] != OTHER, "label"]) <= set(CLASSES)
    assert "(2 Other)" in P.summary(df)
    with pytest.raises(ValueError, match="other_fn returned"):
        run([inputs["folder"]], other_fn=lambda z: (np.zeros(1, bool), np.zeros(1)))


def test_a_detector_decides_other_through_as_decision(inputs):
    class Detector:  # the receiptlib.openset interface: predict -> labels with Other = num_known, score
        def predict(self, logits):
            return np.where(logits[:, 0] > logits[:, 1], len(CLASSES), logits.argmax(1))

        def score(self, logits):
            return logits[:, 0] - logits[:, 1]

    df = run([inputs["folder"]], other_fn=as_decision(Detector()).other)
    ok = df[df["error"] == ""]
    margin = ok["other_score"].to_numpy()
    assert ((ok["label"] == OTHER).to_numpy() == (margin > 0)).all()
    assert (ok.loc[margin <= 0, "label"] == ok.loc[margin <= 0, "top1"]).all()


def test_recursion_can_be_turned_off(inputs):
    df = run([inputs["folder"]], recursive=False)
    assert df["path"].tolist() == [str(p) for p in inputs["good"][:2]]
    df = run([inputs["empty"]], recursive=False)
    assert "not searched recursively" in df["error"][0]


def test_nothing_readable_gives_exit_code_1(inputs):
    df = run([inputs["bad"]["zero"], inputs["bad"]["missing"]])
    assert len(df) == 2 and (df["error"] != "").all()
    assert P.exit_code(df) == 1
    assert P.summary(df).startswith("2 inputs, 0 predicted (0 Other), 2 errors")
    assert P.exit_code(run([])) == 1


def test_class_list_must_match_the_model(inputs):
    with pytest.raises(ValueError, match=r"expected \(batch, 3\)"):
        run([inputs["folder"]], classes=CLASSES[:3])
    # a saved class list with Other last is accepted
    assert len(run([inputs["good"][0]], classes=CLASSES + [OTHER])) == 1


def test_mozgalo_orders_by_numeric_id(tmp_path):
    for i in (10, 2, 1):
        save_noise_jpeg(tmp_path / "test" / f"{i}.jpg", seed=i)
    (tmp_path / "test" / "3.jpg").write_bytes(b"")  # unreadable -> failed_label
    df = run([tmp_path / "test"])
    assert df["path"].map(lambda p: Path(p).name).tolist() == ["1.jpg", "10.jpg", "2.jpg", "3.jpg"]  # text order
    labels = dict(zip(df["path"].map(lambda p: Path(p).name), df["label"]))
    out = tmp_path / "sub.txt"
    with pytest.warns(UserWarning, match="first missing: 4"):
        P.write_mozgalo(df, out)
    assert out.read_text().splitlines() == [labels["1.jpg"], labels["2.jpg"], OTHER, labels["10.jpg"]]
    with pytest.warns(UserWarning):
        assert P.mozgalo_lines(df, failed_label="Unknown")[2] == "Unknown"
    assert P.mozgalo_id("scans/img_0012.jpeg") == 12 and P.mozgalo_id("receipt.jpg") is None


def test_mozgalo_refuses_names_without_or_sharing_an_id(tmp_path):
    a = save_noise_jpeg(tmp_path / "a" / "1.jpg")
    b = save_noise_jpeg(tmp_path / "b" / "1.jpg")
    c = save_noise_jpeg(tmp_path / "receipt.jpg")
    with pytest.raises(ValueError, match="receipt.jpg"):
        P.mozgalo_lines(run([a, c]))
    with pytest.raises(ValueError, match="share the id 1"):
        P.mozgalo_lines(run([a, b]))


def test_predict_to_file_writes_csv_and_reports(inputs, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    code = P.predict_to_file([inputs["folder"]], model=tiny_model(), classes=CLASSES,
                             preprocessing=Preprocessing(SIZE), out=out, batch_size=4)
    assert code == 0
    back = pd.read_csv(out, keep_default_na=False)
    assert list(back.columns) == P.COLUMNS and len(back) == 7
    assert (back["error"] != "").sum() == 4
    assert "7 inputs, 3 predicted (0 Other), 4 errors" in capsys.readouterr().err
    assert P.predict_to_file([inputs["folder"]], model=tiny_model(), classes=CLASSES, strict=True,
                             preprocessing=Preprocessing(SIZE), out=out) == 1
    with pytest.raises(ValueError, match="format"):
        P.predict_to_file([inputs["folder"]], model=tiny_model(), classes=CLASSES,
                          preprocessing=Preprocessing(SIZE), out=out, format="json")
