"""The command line end to end on the tiny preset: synth -> train -> fit-other -> evaluate -> predict."""
import csv
import json
import subprocess
import sys

import pytest

from receiptlib import cli as receiptlib_cli


def main(argv):
    return receiptlib_cli.main([str(a) for a in argv])


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "receiptlib", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def open_safetensors_header(path) -> str:
    raw = path.read_bytes()
    return raw[8:8 + int.from_bytes(raw[:8], "little")].decode()


def test_help_lists_every_verb():
    out = cli("--help")
    assert out.returncode == 0
    for verb in ("synth", "train", "evaluate", "fit-other", "predict", "bench", "report"):
        assert verb in out.stdout


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["synth", "--preset", "huge", "--out", tmp_path / "d"]) == 2
    assert "receiptlib synth:" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_missing_run_is_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["evaluate", "--run", "nope", "--runs-root", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


@pytest.mark.slow
def test_tiny_pipeline_through_the_cli(tmp_path, capsys):
    data, runs = tmp_path / "data", tmp_path / "runs"
    assert main(["synth", "--preset", "tiny", "--out", str(data), "--workers", "2"]) == 0
    assert (data / "manifest.csv").is_file()
    assert main(["train", "--data", str(data), "--run", "t", "--runs-root", str(runs), "--epochs", "1",
                 "--image-size", "64", "--batch-size", "16"]) == 0
    run = runs / "t"
    assert (run / "metrics.json").is_file() and (run / "outputs" / "test_logits.npy").is_file()
    card = json.loads(json.loads(open_safetensors_header(run / "model.safetensors"))["__metadata__"]["receiptlib"])
    assert card["classes"] == json.loads((run / "classes.json").read_text())[:-1]  # the artefact, written at the end
    assert card["preprocessing"]["image_size"] == 64 and card["run"]["name"] == "t"

    thresholds = tmp_path / "thresholds.json"
    assert main(["fit-other", "--run", "t", "--runs-root", str(runs), "--out", str(thresholds)]) == 0
    saved = json.loads(thresholds.read_text())
    assert saved["method"] == "per-class-logit" and saved["fitted_on"] == "val" and saved["run"] == "t"

    assert main(["evaluate", "--run", str(run), "--split", "test", "--thresholds", str(thresholds)]) == 0
    result = json.loads((run / "evaluation_test_other.json").read_text())
    assert 0.0 <= result["macro_f1"] <= 1.0 and result["split"] == "test"

    # predict: good photos mixed with bad files; every input appears exactly once
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    good = sorted((data / "test" / "Other").glob("*.jpg"))[:3]
    out = tmp_path / "preds.csv"
    code = main(["predict", "--run", str(run), "--thresholds", str(thresholds), *good, bad, tmp_path / "missing.jpg",
                 "--out", str(out)])
    assert code == 0  # something was read
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 + 2 + 1
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 3 and all(r["label"] == "" for r in errors)
    assert main(["predict", "--run", str(run), bad, "--out", str(tmp_path / "none.csv")]) != 0
    assert main(["predict", "--run", str(run), *good, bad, "--strict", "--out", str(tmp_path / "s.csv")]) != 0

    # the fast path: build it, then predict picks it up by itself; forced ONNX fp32 decides like PyTorch fp32
    assert main(["build-fast", "--run", str(run), "--n-val", "40", "--n-calibration", "16"]) == 0
    choice = json.loads((run / "fast" / "choice.json").read_text())
    capsys.readouterr()
    fast_out = tmp_path / "fast.csv"
    assert main(["predict", "--run", str(run), "--thresholds", str(thresholds), *good, bad, "--out", str(fast_out)]) == 0
    assert f"backend: {choice['backend']}" in capsys.readouterr().err
    assert len(list(csv.DictReader(fast_out.open()))) == 3 + 2
    onnx_out = tmp_path / "onnx.csv"
    assert main(["predict", "--run", str(run), "--backend", "onnx-fp32", *good, "--out", str(onnx_out)]) == 0
    fp32_out = tmp_path / "fp32.csv"
    assert main(["predict", "--run", str(run), "--backend", "torch-fp32", *good, "--out", str(fp32_out)]) == 0
    assert [r["top1"] for r in csv.DictReader(onnx_out.open())] == [r["top1"] for r in csv.DictReader(fp32_out.open())]


def test_fit_other_k_default_is_the_one_k_everywhere():
    from receiptlib import openset

    args = receiptlib_cli.build_parser("fit-other").parse_args(["fit-other", "--run", "x"])
    assert args.k == openset.PAPER_K
