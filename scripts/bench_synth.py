"""Synthetic data generation speed: photos per second with 1 and 2 workers, and the quick preset's projected time.

Usage: python scripts/bench_synth.py [--photos 200] [--preset quick]
Generates a sample with the preset's photo size (same distortions) into a temporary folder.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from receiptlib import synth


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200, help="sample size per measurement (about)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    cfg = synth.PRESETS[args.preset]
    per = max(1, args.photos // (2 * cfg.n_known))
    sample = replace(cfg, name=f"bench-{cfg.name}", train_per_class=per, val_per_class=0, test_per_class=per,
                     val_other=0, test_other=cfg.n_known * per)
    print(f"preset {cfg.name}: {cfg.total} photos {cfg.width}x{cfg.height} "
          f"(train {cfg.split_sizes()['train']}, val {cfg.split_sizes()['val']}, test {cfg.split_sizes()['test']})")
    rate = {}
    for w in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            t, c = time.perf_counter(), time.process_time()
            synth.generate(Path(tmp) / "ds", sample, seed=0, workers=w)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
        rate[w] = sample.total / dt
        print(f"workers={w}: {sample.total} photos in {dt:.1f} s = {rate[w]:.1f} photos/s "
              f"-> {cfg.name} preset in about {cfg.total / rate[w] / 60:.1f} min")
        if w == 1:  # in-process: CPU time is what an idle core would need (wall time suffers on a shared machine)
            ms = cpu / sample.total * 1000
            print(f"  CPU {ms:.0f} ms/photo -> with 2 idle cores the {cfg.name} preset takes about "
                  f"{cfg.total * ms / 1000 / 2 / 60:.1f} min")


if __name__ == "__main__":
    main()
