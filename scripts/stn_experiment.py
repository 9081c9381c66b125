"""Section VII experiment from the command line: ResNet alone vs joint vs staged spatial transformer.

    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --seeds 0 1 2
    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --epochs 10 --image-size 96 --input-size 192
    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --preset quick   # the report's setting

One flag per rl.stn.STNRecipe field (generated), defaulting to STNRecipe's defaults, or with --preset NAME
to that preset's STN setting (rl.presets.get(NAME).stn, its seeds too). Prints the table (mean and std over
seeds of closed-set accuracy and macro-F1 with Other, on the test set and on its hard slice) and where the
learning curves and transformer snapshots were saved. Reuses a finished comparison of the same
configuration (rl.stn.compare's cache).
"""
from __future__ import annotations

import argparse
import sys
import time

from receiptlib import presets
from receiptlib import stn as rstn
from receiptlib.cli import add_dataclass_flags, dataclass_values
from receiptlib.train import RECIPES

_HELP = {
    "recipe": "train recipe of the classifier (optimiser, schedule, augmentation, precision)",
    "epochs": "epochs per method (staged: stage 1 + stage 2)",
    "stage2_epochs": "staged: epochs with the transformer",
    "freeze_epochs": "staged: first stage-2 epochs with the classifier frozen",
    "image_size": "px the classifier sees",
    "input_size": "px of the input the transformer samples from",
    "loc_size": "px the localisation net sees",
    "batch_size": "batch size (None: the train recipe's)",
    "lr": "classifier peak learning rate (None: the train recipe's)",
    "loc_lr_mult": "localisation net's rate as a multiple of the classifier's (joint and staged)",
    "stage2_classifier_lr_mult": "staged, stage 2: the classifier's rate as a multiple of the ResNet run's schedule",
    "transform": "transform family",
    "scale_range": "guard: smallest and largest zoom of the transformer",
    "max_translation": "guard: largest shift of the crop centre ([-1, 1] image units)",
    "guard_weight": "weight of the soft guard in the loss (affine only)",
    "loc_max_grad_norm": "clip the localisation net's gradient norm to this",
    "weights": "classifier init: none | auto | imagenet | path to a weights file",
    "max_train_images": "train on a fixed random subset of this size (None: all)",
}


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default=None, choices=presets.names(),
                       help="take the defaults below from this preset's STN setting (None: STNRecipe's defaults)")
    setting = dict(presets.get(name).stn) if (name := first.parse_known_args(argv)[0].preset) else {}
    seeds = setting.pop("seeds", (0, 1, 2))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[first],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="data folder with train/, val/, test/ (and manifest.csv for the hard slice)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help="seeds per method")
    p.add_argument("--methods", nargs="+", default=list(rstn.MODES), choices=rstn.MODES, help="methods to compare")
    fields = add_dataclass_flags(p, rstn.STNRecipe, defaults=setting, help=_HELP,
                                 choices={"recipe": sorted(RECIPES), "transform": sorted(rstn.TRANSFORMS)})
    p.add_argument("--out", default=None, help="output folder (default data/runs/stn-<hash>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = rstn.compare(args.data, seeds=tuple(args.seeds), methods=tuple(args.methods), out_dir=args.out,
                           device=args.device, **dataclass_values(args, fields))
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(4).to_string(index=False))
    print(f"[stn] {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
