"""Section VII experiment from the command line: every arm (no transformer, identity, joint, staged, staged
without rotation augmentation) from one stage-1 classifier with equal steps, over seeds.

    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --preset quick   # the report's setting
    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --preset quick --stage2-epochs 8
    .venv/bin/python scripts/stn_experiment.py --data data/synth-quick-seed0 --stage1-run data/runs/finetune-xxxx

One flag per rl.stn.STNRecipe field (generated), defaulting to STNRecipe's defaults, or with --preset NAME to
that preset's STN setting (rl.presets.get(NAME).stn: its seeds, single-seed arms and stage 1 too; stage 1
"report" is that preset's training run of notebook 03, trained first when absent). Prints the table (per slice
and arm: mean and std over seeds, the paired interval of the difference to arm A, the transformer's zoom and
rotation), the oracle ceiling and the conclusion. Reuses a finished comparison of the same configuration
(rl.stn.compare's cache).
"""
from __future__ import annotations

import argparse
import sys
import time

from receiptlib import presets
from receiptlib import stn as rstn
from receiptlib import train as rtrain
from receiptlib.cli import add_dataclass_flags, dataclass_values
from receiptlib.runs import Run

_HELP = {
    "arch": "stage-1 classifier architecture (models.ARCHITECTURES)",
    "weights": "its initialisation when stage 1 is trained here: auto | none | imagenet | path",
    "image_size": "px the classifier sees",
    "view_size": "px of the square view the transformer localises on and samples from",
    "loc_size": "px the localisation net sees",
    "lr": "the classifier's peak AdamW rate (stage 1, joint)",
    "stage1_epochs": "epochs of stage 1 when it is trained here",
    "stage2_epochs": "every arm's extra epochs over the train subset",
    "stage2_lr_mult": "stage 2: the classifier's peak rate as a multiple of lr",
    "freeze_share": "staged: share of stage 2 with the classifier frozen",
    "transform": "transform family",
    "scale_range": "the scale bound: smallest and largest zoom",
    "max_translation": "the largest shift of the crop centre ([-1, 1] units)",
    "loc_move": "how far the transform may move over the transformer-only phase at multiplier 1",
    "loc_lr_mults": "the localisation rate multipliers chosen from on val",
    "max_train_images": "a fixed random subset of train/ (None: all)",
}


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default=None, choices=presets.names(),
                       help="take the defaults below from this preset's STN setting (None: STNRecipe's defaults)")
    setting = dict(presets.get(name).stn) if (name := first.parse_known_args(argv)[0].preset) else {}
    seeds = setting.pop("seeds", (0, 1, 2))
    single = setting.pop("single_seed_arms", ())
    stage1 = setting.pop("stage1", "train")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[first],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="data folder with train/, val/, test/ (and manifest.csv for the hard slice)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help="seeds of every arm")
    p.add_argument("--arms", nargs="+", default=list(rstn.ARMS), choices=rstn.ARMS, help="arms to compare")
    p.add_argument("--single-seed-arms", nargs="*", default=list(single), choices=rstn.ARMS,
                   help="arms run for the first seed only")
    p.add_argument("--stage1-run", default=None,
                   help="a finished training run whose classifier is stage 1 (default: the preset's report run "
                        "when its stage1 is 'report', else stage 1 is trained here)")
    fields = add_dataclass_flags(p, rstn.STNRecipe, defaults=setting, help=_HELP,
                                 choices={"transform": sorted(rstn.TRANSFORMS)})
    p.add_argument("--out", default=None, help="output folder (default data/runs/stn-<hash>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = Run(args.stage1_run) if args.stage1_run else None
    if run is None and stage1 == "report":
        run = rtrain.get_or_train(rtrain.report_config(name, data_dir=args.data), runs_root="data/runs")
    summary = rstn.compare(args.data, seeds=tuple(args.seeds), arms=tuple(args.arms),
                           single_seed_arms=tuple(args.single_seed_arms), stage1_run=run, out_dir=args.out,
                           device=args.device, **dataclass_values(args, fields))
    comparison = rstn.load_comparison(summary.attrs["out_dir"])
    with __import__("pandas").option_context("display.width", 250, "display.max_columns", 30):
        print(rstn.format_table(summary).to_string())
    print(rstn.conclusion(summary, comparison["config"]))
    print(f"[stn] {time.perf_counter() - t0:.0f} s; saved in {summary.attrs['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
