"""The machine, the benchmark's fields and plumbing; no timed assertions: speed goes in scripts/."""
import json

import pytest
import torch
from PIL import Image

from receiptlib import bench, cli, timing
from receiptlib.models import resnet18

TINY = dict(image_size=64, batch_size=4, threads=1, repeats=2, warmup=1, e2e_images=8, e2e_repeats=1,
            workers=0, ceiling_n=128)


def test_resnet18_flops_count_a_multiply_add_as_two():
    model = resnet18(25, weights="none")
    assert timing.model_gflops(model, 224) == pytest.approx(3.63, abs=0.01)  # ResNet18's published 1.8 GMACs
    # convolutions scale with the pixel count
    assert timing.model_gflops(model, 448) == pytest.approx(4 * 3.63, rel=0.01)


def test_synthetic_jpegs_are_readable_receipt_sized(tmp_path):
    paths = bench.synthetic_jpegs(tmp_path, 3, size=(96, 128))
    assert len(paths) == 3
    with Image.open(paths[0]) as img:
        assert img.format == "JPEG" and img.size == (96, 128)
    assert bench.synthetic_jpegs(tmp_path, 3, size=(96, 128)) == paths  # reused


def test_bench_in_process_returns_sane_fields(tmp_path):
    out = tmp_path / "bench.json"
    result = bench.bench(backends=("torch-fp32", "onnx-int8"), isolate=False, out=out, verbose=False, **TINY)
    meta = result["meta"]
    assert meta["threads"] == 1 and meta["cpu"] and meta["torch"] == torch.__version__
    assert meta["gflop_per_image"] == pytest.approx(0.296, abs=0.01)  # ResNet18 at 64 px
    assert result["ceilings"]["fp32"] > 0
    rows = result["results"]
    assert {(r["backend"], r["mode"]) for r in rows} == {(b, m) for b in ("torch-fp32", "onnx-int8")
                                                        for m in ("model", "end_to_end")}
    for r in rows:
        assert r["error"] is None, r
        assert r["images_per_s"] > 0
        assert r["ms_per_image"] == pytest.approx(1000 / r["images_per_s"], rel=0.02)
        assert r["achieved_gflops"] == pytest.approx(r["images_per_s"] * meta["gflop_per_image"], rel=0.02)
        assert r["fraction_of_ceiling"] > 0 and r["peak_rss_mb"] > 0
    e2e = [r for r in rows if r["mode"] == "end_to_end"]
    assert all(r["images"] == 8 for r in e2e)
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(rows, default=str))
    text = bench.table(result)
    assert "onnx-int8" in text and "end_to_end" in text and "i5-6500" in text
    assert len(bench.to_frame(result)) == 4
    paper = bench.paper_table(result)
    assert list(paper["setting"]) == ["paper"] * 3 + ["torch-fp32", "onnx-int8"]
    assert paper["images_timed"].iloc[-1] == 8


def test_cli_flags_default_to_bench_config():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_bench_arguments(parser)
    args = parser.parse_args(["--backends", "torch-fp32,onnx-int8", "--compile"])
    d = bench.BenchConfig()
    assert (args.image_size, args.batch_size, args.repeats, args.run) == (d.image_size, d.batch_size, d.repeats, None)
    assert args.backends.split(",") == ["torch-fp32", "onnx-int8"] and args.compile


@pytest.mark.slow
def test_bench_isolated_subprocess_and_failures_become_rows(tmp_path):
    jpegs = bench.synthetic_jpegs(tmp_path / "imgs", 8, size=(64, 96))
    result = bench.bench(backends=("torch-fp32",), images=tmp_path / "imgs", isolate=True, verbose=False, **TINY)
    rows = result["results"]
    assert [r["mode"] for r in rows] == ["model", "end_to_end"]
    assert all(r["error"] is None and r["peak_rss_delta_mb"] >= 0 for r in rows)
    assert rows[1]["images"] == len(jpegs)
    # a run folder that is no run: the error names it instead of crashing the benchmark
    with pytest.raises(FileNotFoundError, match="run folder"):
        bench.bench(run=tmp_path / "nope", verbose=False, **TINY)


def test_bench_config_refuses_unknown_backend():
    with pytest.raises(ValueError, match="backends"):
        bench.BenchConfig(backends=("tensorrt",))
    assert "torch-compile" in bench.BenchConfig(compile=True).backends


def test_failed_backend_is_a_row_not_a_crash(tmp_path):
    spec = {"config": dict(bench.BenchConfig(**TINY).__dict__, end_to_end=False), "num_classes": 5,
            "state_dict": str(tmp_path / "missing.pt"), "backend": "torch-fp32"}
    rows = bench.run_setting(spec)
    assert len(rows) == 1 and "missing.pt" in rows[0]["error"]
    assert "failed" in bench.table(rows)
