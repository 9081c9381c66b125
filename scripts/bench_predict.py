#!/usr/bin/env python
"""`receiptlib predict` end to end against the plain ONNX Runtime script (scripts/plain_onnx_predict.py) on
the same photos, the same model file and the same threads, in one run; then the model alone per backend
beside the machine's ceiling (receiptlib.bench). Prints the figures; nothing is asserted.

Each side runs as its own process (a fresh interpreter: imports and model load count, as they do for a
user), once untimed to warm the page cache, then alternately ``--repeats`` times; medians are reported.

    python scripts/bench_predict.py --run data/runs/NAME          # its test photos, threads = cores
    python scripts/bench_predict.py --run data/runs/NAME --photos my-photos/ --workers 0,1,2 --out bench.json

The run needs `receiptlib build-fast` first (fast/model.onnx with its model card). The machine should be
otherwise idle.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import receiptlib as rl

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")
    return seconds, done.stderr


def labels(path: Path) -> dict[str, str]:
    with open(path) as f:
        return {r["path"]: r["label"] for r in csv.DictReader(f)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder with fast/model.onnx (receiptlib build-fast)")
    p.add_argument("--photos", default=None, help="folder of photos (default: the run's test split)")
    p.add_argument("--threads", type=int, default=rl.serving.cpu_count(), help="ONNX Runtime threads, both sides")
    p.add_argument("--workers", default=f"0,1,2", help="predict's decoding threads to measure, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side (median reported)")
    p.add_argument("--no-model-alone", action="store_true", help="skip the per-backend model-alone table")
    p.add_argument("--out", default=None, help="JSON copy of the figures")
    args = p.parse_args(argv)

    run = rl.runs.Run(args.run)
    model = run.path / "fast" / rl.serving.ONNX_FILES["onnx-fp32"]
    card = rl.serving.read_card(model)
    if card.other is None or card.other.get("method") != "per-class-logit":
        raise SystemExit(f"{model}: the plain script applies a per-class-logit Other rule; this model carries "
                         f"{card.other and card.other.get('method')!r}")
    photos = Path(args.photos) if args.photos else run.data_dir / "test"
    workers = [int(w) for w in args.workers.split(",")]
    env = {**os.environ, "RECEIPTLIB_PROGRESS": "0", "OMP_NUM_THREADS": str(args.threads)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    thresholds = tmp / "thresholds.json"  # the model's own Other rule, so both sides decide the same way
    thresholds.write_text(json.dumps(card.other))
    plain = [sys.executable, str(HERE / "plain_onnx_predict.py"), str(model), str(photos),
             "--out", str(tmp / "plain.csv"), "--threads", str(args.threads), "--batch-size", "16"]

    def ours(w: int) -> list[str]:
        return [sys.executable, "-m", "receiptlib", "predict", "--run", str(run.path), str(photos), "--backend",
                "onnx-fp32", "--thresholds", str(thresholds), "--threads", str(args.threads), "--workers", str(w),
                "--batch-size", "16", "--out", str(tmp / f"ours{w}.csv"), "--verbose"]

    print(f"machine: {rl.timing.cpu_name()}, {rl.serving.cpu_count()} cores; ONNX Runtime threads {args.threads}")
    print(f"model: {model} ({card.arch}, {card.preprocessing.image_size} px); photos: {photos}")
    for cmd in [plain] + [ours(w) for w in workers]:  # warm the page cache and the interpreter's .pyc files
        timed(cmd, env)
    times: dict[str, list[float]] = {"plain": []}
    startup: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(args.repeats):
        times["plain"].append(timed(plain, env)[0])
        for w in workers:
            seconds, err = timed(ours(w), env)
            times.setdefault(f"predict --workers {w}", []).append(seconds)
            m = re.search(r"start-up: ([\d.]+) s", err)
            startup[w].append(float(m.group(1)) if m else float("nan"))
    n = len(labels(tmp / "plain.csv"))
    want = labels(tmp / "plain.csv")
    figures = {"photos": n, "threads": args.threads, "model": str(model), "sides": {}}
    print(f"\n{n} photos, median of {args.repeats} runs, each a fresh process (start-up included)")
    print(f"{'side':<22} {'seconds':>8} {'photos/s':>9} {'vs plain':>9} {'start-up s':>11} {'same labels':>12}")
    base = statistics.median(times["plain"])
    for side, ts in times.items():
        med = statistics.median(ts)
        w = int(side.rsplit(" ", 1)[1]) if side != "plain" else None
        got = want if w is None else labels(tmp / f"ours{w}.csv")
        same = sum(got.get(k) == v for k, v in want.items())
        up = statistics.median(startup[w]) if w is not None else float("nan")
        figures["sides"][side] = {"seconds": ts, "median_seconds": med, "photos_per_s": n / med,
                                  "rate_vs_plain": base / med, "startup_s": up, "same_labels": same}
        print(f"{side:<22} {med:>8.2f} {n / med:>9.0f} {base / med:>9.2f} "
              f"{'' if w is None else f'{up:.2f}':>11} {f'{same}/{n}':>12}")

    if not args.no_model_alone:
        backends = ["onnx-fp32", "onnx-int8", "torch-fp32"] + (["torch-bf16"] if rl.common.native_bf16("cpu") else [])
        cfg = rl.bench.BenchConfig(image_size=card.preprocessing.image_size, batch_size=16, threads=args.threads,
                                   backends=tuple(backends), end_to_end=False)
        result = rl.bench.bench(run, config=cfg, out=None)
        print("\nthe model alone, per backend, beside the machine's ceiling")
        print(rl.bench.table(result))
        figures["model_alone"] = result
    if args.out:
        Path(args.out).write_text(json.dumps(rl.common.jsonable(figures), indent=2) + "\n")
        print(f"\nJSON copy: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
