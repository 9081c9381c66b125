"""Section VII experiment from the command line: ResNet alone vs joint vs staged spatial transformer.

    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --seeds 0 1 2
    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --epochs 10 --image-size 96 --input-size 192

Prints the table (mean and std over seeds of closed-set accuracy and macro-F1 with Other, on the test set
and on its hard slice) and where the learning curves and transformer snapshots were saved. Reuses a
finished comparison of the same configuration (rl.stn.compare's cache).
"""
from __future__ import annotations

import argparse
import sys
import time

from receiptlib import stn as rstn


def main(argv: list[str] | None = None) -> int:
    defaults = rstn.STNRecipe()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="data folder with train/, val/, test/ (and manifest.csv for the hard slice)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method")
    p.add_argument("--methods", nargs="+", default=list(rstn.MODES), choices=rstn.MODES, help="methods to compare")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per method (staged: stage 1 + stage 2)")
    p.add_argument("--stage2-epochs", type=int, default=defaults.stage2_epochs, help="staged: epochs with the transformer")
    p.add_argument("--freeze-epochs", type=int, default=defaults.freeze_epochs, help="staged: first stage-2 epochs with the classifier frozen")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="px the classifier sees")
    p.add_argument("--input-size", type=int, default=defaults.input_size, help="px of the input the transformer samples from")
    p.add_argument("--loc-size", type=int, default=defaults.loc_size, help="px the localisation net sees")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the train recipe's)")
    p.add_argument("--lr", type=float, default=None, help="classifier peak learning rate (default: the train recipe's)")
    p.add_argument("--loc-lr-mult", type=float, default=defaults.loc_lr_mult,
                   help="localisation net's rate as a multiple of the classifier's (joint and staged)")
    p.add_argument("--stage2-classifier-lr-mult", type=float, default=defaults.stage2_classifier_lr_mult,
                   help="staged, stage 2: the classifier's rate as a multiple of the ResNet run's schedule")
    p.add_argument("--transform", default=defaults.transform, choices=sorted(rstn.TRANSFORMS), help="transform family")
    p.add_argument("--max-train-images", type=int, default=None, help="train on a fixed random subset of this size")
    p.add_argument("--out", default=None, help="output folder (default data/runs/stn-<hash>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = rstn.compare(args.data, seeds=tuple(args.seeds), methods=tuple(args.methods), out_dir=args.out,
                           device=args.device, epochs=args.epochs, stage2_epochs=args.stage2_epochs,
                           freeze_epochs=args.freeze_epochs, image_size=args.image_size, input_size=args.input_size,
                           loc_size=args.loc_size, transform=args.transform,
                           loc_lr_mult=args.loc_lr_mult, stage2_classifier_lr_mult=args.stage2_classifier_lr_mult,
                           batch_size=args.batch_size, lr=args.lr, max_train_images=args.max_train_images)
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(4).to_string(index=False))
    print(f"[stn] {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
