"""`receiptlib <verb>`: the command line, a thin front over the library (kebab-case flags, defaults in --help).

    receiptlib synth    --preset quick --seed 0            make the synthetic receipt photos
    receiptlib train    --data DIR --run NAME              train ResNet18 (also under torchrun)
    receiptlib evaluate --run NAME --split val             closed-set (and, with --thresholds, open-set) metrics
    receiptlib fit-other --run NAME                        fit Other thresholds on val, save thresholds.json
    receiptlib predict  --run NAME PATH... --out preds.csv label photos; every input gets one row
    receiptlib build-fast --run NAME                       ONNX + int8; pick the fastest setting that agrees with fp32
    receiptlib bench    [--run NAME]                       inference speed per backend, beside the hardware's ceiling
    receiptlib report   --preset quick                     generate data and execute every notebook in order
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import types
import typing
from pathlib import Path


# ----------------------------------------------------------------------------------------------
# Flags generated from a configuration dataclass
# ----------------------------------------------------------------------------------------------

def _flag_type(hint):
    """(argparse type, nargs) for a dataclass field's type hint: int, float, str, bool, X | None, tuple[X, ...]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        inner = typing.get_args(hint)
        return inner[0], (len(inner) if Ellipsis not in inner else "+")
    return hint, None


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, *, skip=(), defaults: dict | None = None,
                        help: dict | None = None, choices: dict | None = None) -> list[str]:
    """One `--kebab-case` flag per field of dataclass `cls` (except `skip` and dict fields), with the field's
    type and default (or `defaults[name]`); returns the field names added. `help`/`choices`: per field."""
    hints = typing.get_type_hints(cls)
    defaults, help, choices = defaults or {}, help or {}, choices or {}
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, nargs = _flag_type(hints[f.name])
        if kind is dict or typing.get_origin(kind) is dict:
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        flag = "--" + f.name.replace("_", "-")
        text = help.get(f.name, f"{cls.__name__}.{f.name}")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, nargs=nargs, default=default, help=text,
                                choices=choices.get(f.name))
        added.append(f.name)
    return added


def dataclass_values(args: argparse.Namespace, names: list[str]) -> dict:
    """The parsed values of `add_dataclass_flags`'s fields (tuples for multi-value flags)."""
    return {n: tuple(v) if isinstance(v, list) else v for n, v in ((n, getattr(args, n)) for n in names)}


# ----------------------------------------------------------------------------------------------
# receiptlib train (also the entry of torchrun -m receiptlib.train)
# ----------------------------------------------------------------------------------------------

_TRAIN_HELP = {
    "recipe": "training recipe", "epochs": "epochs (None: the recipe's)",
    "image_size": "square image size in px (None: the recipe's)", "batch_size": "global batch size (None: the recipe's)",
    "lr": "peak learning rate (None: the recipe's)", "arch": "architecture (receiptlib.models.ARCHITECTURES)",
    "weights": "auto | none | imagenet | path to a weights file",
    "seed": "seed of initialisation, shuffling and augmentation", "device": "auto | cpu | cuda | cuda:N",
    "workers": "image decoding processes", "max_train_images": "train on a fixed random subset of this size",
}


def add_train_arguments(p: argparse.ArgumentParser) -> list[str]:
    """The `receiptlib train` flags, added to `p`: --data, --run, --resume, --runs-root and one flag per
    TrainConfig field. Returns the TrainConfig field names."""
    from . import models
    from .train import RECIPES, TrainConfig

    p.add_argument("--data", required=True, help="data folder with train/ (and val/, test/) of <ClassName>/*.jpg")
    # --run-name: the same, for use under torchrun, whose own parser mistakes --run for its --run-path
    p.add_argument("--run", "--run-name", dest="run", default=None,
                   help="run name under --runs-root (None: <recipe>-<hash of the configuration>)")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--runs-root", default="data/runs", help="folder holding run folders")
    return add_dataclass_flags(p, TrainConfig, skip=("data_dir",), help=_TRAIN_HELP,
                               choices={"recipe": sorted(RECIPES), "arch": sorted(models.ARCHITECTURES)})


def _train(args: argparse.Namespace, fields: list[str]) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(data_dir=args.data, **dataclass_values(args, fields))
    run_dir = Path(args.runs_root) / args.run if args.run else None
    run = train(config, run_dir=run_dir, runs_root=args.runs_root, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        m = run.metrics
        print(f"[train] {run.path}: val accuracy {m.get('val_accuracy', float('nan')):.4f} "
              f"(best epoch {m.get('best_epoch')}, {m.get('train_seconds', 0):.0f} s training)")
    return 0


def main_train(argv: list[str] | None = None) -> int:
    """`receiptlib train ...`; also the entry under `torchrun --nproc_per_node=K -m receiptlib.train ...`."""
    p = argparse.ArgumentParser(prog="receiptlib train", description="Train a model on a receipt folder data set "
                                "into a run folder.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fields = add_train_arguments(p)
    return _train(p.parse_args(argv), fields)


# ----------------------------------------------------------------------------------------------
# receiptlib bench (also scripts/bench_inference.py)
# ----------------------------------------------------------------------------------------------

def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `receiptlib bench` (defaults from `bench.BenchConfig`)."""
    from .bench import BenchConfig
    from .fast import BACKENDS

    d = BenchConfig()
    parser.add_argument("--run", default=None, help="trained run: a folder, or a name under --runs-root "
                        "(default: ResNet18 with random weights; speed does not depend on the weights)")
    parser.add_argument("--runs-root", default="data/runs", help="where --run NAME is looked up")
    parser.add_argument("--images", default=None, help="folder of JPEGs for the end-to-end timing "
                        "(default: synthetic 384x512 receipt JPEGs in a temporary folder)")
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--backends", default=",".join(d.backends),
                        help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument("--compile", action="store_true", help="add torch-compile (about a minute to compile)")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed batches, median reported")
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--e2e-images", type=int, default=d.e2e_images, help="JPEGs per end-to-end pass")
    parser.add_argument("--e2e-repeats", type=int, default=d.e2e_repeats)
    parser.add_argument("--no-end-to-end", action="store_true", help="time the model alone only")
    parser.add_argument("--workers", type=int, default=None, help="loader workers end to end (default: threads)")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run every setting in this process (faster; peak memory then is this process's)")
    parser.add_argument("--out", default="bench.json", help="JSON copy of the results")


def bench_command(args) -> int:
    """`receiptlib bench`: run `bench.bench` with the parsed flags, print `bench.table`, save the JSON copy."""
    from . import bench

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    cfg = bench.BenchConfig(image_size=args.image_size, batch_size=args.batch_size, threads=args.threads,
                            backends=backends, compile=args.compile, repeats=args.repeats, warmup=args.warmup,
                            end_to_end=not args.no_end_to_end, e2e_images=args.e2e_images,
                            e2e_repeats=args.e2e_repeats, workers=args.workers, isolate=not args.no_isolate,
                            device=args.device)
    result = bench.bench(_run(args) if args.run is not None else None, config=cfg, images=args.images, out=args.out)
    print()
    print(bench.table(result))
    if args.out:
        print(f"\nJSON copy: {args.out}")
    return 0


def _synth(args) -> int:
    from . import synth

    out = Path(args.out) if args.out else synth.dataset_dir(args.preset, seed=args.seed, root=args.root)
    start = time.time()
    path = synth.generate(out, args.preset, seed=args.seed, workers=args.workers or os.cpu_count() or 1)
    print(f"{path}: ready in {time.time() - start:.1f} s", file=sys.stderr)
    return 0


def _report(args) -> int:
    from . import report

    params = {}
    if args.data_dir:
        params["DATA_DIR"] = str(Path(args.data_dir).resolve())
    try:
        report.run_report(preset=args.preset, seed=args.seed, only=args.only, workers=args.workers,
                          output_dir=args.output_dir, parameters=params,
                          log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except report.NotebookFailed as err:
        print(f"receiptlib report: {err}", file=sys.stderr)
        return 1
    return 0


def _run_dir(args) -> Path:
    """--run as a folder: a path to one, or a name under --runs-root."""
    path = Path(args.run)
    return path if path.is_dir() else Path(args.runs_root) / args.run


def _run(args):
    from . import runs

    return runs.Run(_run_dir(args))


def _fit_other(args) -> int:
    from . import openset

    run = _run(args)
    params = {"k": args.k, "rule": args.rule, "classes": run.known_classes} if args.method == "per-class-logit" else {}
    if args.method == "per-class-logit" and args.override:
        params["overrides"] = dict(_override(o) for o in args.override)
    if args.method == "global-softmax":
        params = {"threshold": args.threshold}
    detector = openset.make_detector(args.method, **params).fit(openset.Outputs.from_run(run, "val"))
    out = Path(args.out) if args.out else run.path / "thresholds.json"
    openset.save_thresholds(out, detector, classes=run.classes, run=run.name)
    val = openset.evaluate(detector, run.outputs("val"))
    print(f"{out}: {args.method} fitted on val ({val['n']} photos): macro-F1 {val['macro_f1']:.4f}, Other F1 {val['other_f1']:.4f}")
    return 0


def _override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise SystemExit(f"receiptlib fit-other: --override {text!r}: expected CLASS=THRESHOLD, e.g. Brunvik=9.5") from None


def _evaluate(args) -> int:
    from . import openset
    from .io import write_json

    run = _run(args)
    closed = run.evaluate(args.split)
    print(f"{run.path} {args.split}: closed-set accuracy {closed['accuracy']:.4f} on {closed['n_known']} known photos")
    for name, acc in closed["per_class_accuracy"].items():
        print(f"  {name:<24} {acc:.4f}")
    if args.thresholds:
        detector = openset.load_thresholds(args.thresholds, classes=run.classes)
        result = openset.evaluate(detector, run.outputs(args.split))
        result = {"split": args.split, "thresholds": str(args.thresholds), **result}
        out = run.path / f"evaluation_{args.split}_other.json"
        write_json(out, result)
        print(f"with Other ({result['n_other']} Other photos): macro-F1 {result['macro_f1']:.4f}, "
              f"Other precision {result['other_precision']:.4f} recall {result['other_recall']:.4f} F1 {result['other_f1']:.4f}; saved {out}")
    return 0


def _predict(args) -> int:
    # torch-free on the ONNX backends: predict, openset and serving import neither torch nor torchvision
    from . import openset, predict, serving
    from .common import OTHER, process_seconds
    from .io import read_json

    say = (lambda line: print(line, file=sys.stderr)) if args.verbose else (lambda line: None)
    imported = process_seconds()
    run_dir = _run_dir(args)
    if not (run_dir / "classes.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no classes.json); train one with `receiptlib train`")
    run_classes = read_json(run_dir / "classes.json")
    backend = args.backend
    choice_file = run_dir / "fast" / "choice.json"
    if backend == "auto" and choice_file.is_file():
        backend, why = read_json(choice_file)["backend"], f"the run's fast choice, {choice_file}"
    elif backend == "auto":
        backend, why = serving.REFERENCE, f"no {choice_file}; `receiptlib build-fast --run {run_dir.name}` makes one"
    else:
        why = "forced"
    model = None
    if backend in serving.ONNX_FILES:
        try:
            model = serving.OnnxPredictor(run_dir / "fast" / serving.ONNX_FILES[backend], backend=backend,
                                          threads=args.threads, device=args.device, spinning=args.workers == 0)
        except serving.BackendUnavailable as exc:
            if args.backend != "auto":
                raise
            print(f"predict: {exc}; using {serving.REFERENCE}", file=sys.stderr)
            backend, why = serving.REFERENCE, "the fast choice cannot run here"
    if model is not None:
        if model.card is None:  # exported by an older receiptlib: the run folder still says what the model wants
            print(f"predict: {model.path} carries no model card; using {run_dir}/config.json and classes.json "
                  f"(`receiptlib build-fast --run {run_dir}` re-exports it with one)", file=sys.stderr)
            config = read_json(run_dir / "config.json")
            pre = config.get("preprocessing") or {}
            size = pre.get("image_size") or (config.get("recipe") or {}).get("image_size") or config.get("image_size")
            card = serving.ModelCard(config.get("arch", "resnet18"), list(run_classes)[:-1], serving.Preprocessing(
                int(size or 224), **{k: tuple(pre[k]) for k in ("mean", "std") if k in pre}))
        else:
            card = model.card
        classes, preprocessing = card.classes, card.preprocessing
        if classes + [OTHER] != list(run_classes):
            raise ValueError(f"{model.path} was exported for classes {classes}, but {run_dir}/classes.json lists "
                             f"{run_classes}; rebuild it with `receiptlib build-fast --run {run_dir}`")
    else:
        from . import runs  # the torch backends

        run = runs.Run(run_dir)
        model = _inference_model(run, backend, args.device, args.threads, saved=args.backend == "auto")
        classes, preprocessing = run.known_classes, run.preprocessing
    print(f"backend: {getattr(model, 'backend', backend)} ({why})", file=sys.stderr)
    other_fn = None
    if args.thresholds:
        other_fn = openset.as_decision(openset.load_thresholds(args.thresholds, classes=run_classes)).other
    ready = process_seconds()
    say(f"start-up: {ready:.2f} s (imports {imported:.2f} s, model load {ready - imported:.2f} s)")
    timings: dict = {}
    code = predict.predict_to_file(args.paths, model=model, classes=classes, preprocessing=preprocessing, out=args.out,
                                   format=args.format, other_fn=other_fn, batch_size=args.batch_size,
                                   workers=args.workers, device=args.device, recursive=not args.no_recursive,
                                   strict=args.strict, timings=timings)
    say(f"{timings['photos']} photos in {timings['seconds']:.2f} s ({timings['photos'] / max(timings['seconds'], 1e-9):.0f}/s): "
        f"decoding {timings['decode_seconds']:.2f} s over {args.workers or 1} thread(s), model {timings['model_seconds']:.2f} s; "
        f"total {process_seconds():.2f} s")
    return code


def _inference_model(run, backend: str, device: str, threads: int | None = None, *, saved: bool = False):
    """A torch backend of the run: fp32 PyTorch from its artefact, or a torch-* fast setting; ``saved``: the
    run's own fast choice (`receiptlib build-fast`), which falls back to fp32 with a warning where it cannot
    run, while a backend forced by name raises."""
    from . import fast

    if backend == "torch-fp32":
        return run.load_model(device=device)
    # fast_predictor reads the saved choice itself when backend is None
    return fast.fast_predictor(run, backend=None if saved else backend, threads=threads, device=device, build=False)


def _build_fast(args) -> int:
    from . import fast

    choice = fast.build_fast_model(_run(args), backend=None if args.backend == "auto" else args.backend,
                                   n_val=args.n_val, n_calibration=args.n_calibration, device=args.device)
    print(f"{choice.out_dir}: {choice.backend}")
    return 0


VERBS = ("synth", "train", "evaluate", "fit-other", "predict", "build-fast", "bench", "report")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Every verb's parser; with ``verb``, the flags of the other verbs whose defaults need heavy imports
    (train's and bench's read torch-side configuration) are left out, so `receiptlib predict` on an ONNX
    backend never imports torch."""
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def wanted(name: str) -> bool:
        return verb is None or verb == name

    parser = argparse.ArgumentParser(prog="receiptlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synth", help="generate a synthetic receipt-photo data set", formatter_class=fmt)
    p.add_argument("--preset", default="quick", help="tiny (tests), quick (the report), hard (quick at full distortion), paper (45k+20k photos)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files")
    p.add_argument("--out", default=None, help="output folder (default: ROOT/synth-PRESET-seedSEED)")
    p.add_argument("--root", default="data", help="where the default output folder goes")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.set_defaults(func=_synth)

    from .serving import BACKENDS, cpu_count
    from .predict import BATCH_SIZE, WORKERS

    p = sub.add_parser("train", help="train a model on a folder data set (also under torchrun)", formatter_class=fmt)
    if wanted("train"):
        train_fields = add_train_arguments(p)
        p.set_defaults(func=lambda args: _train(args, train_fields))

    def run_flags(p):
        p.add_argument("--run", required=True, help="a run name under --runs-root, or a run folder")
        p.add_argument("--runs-root", default="data/runs", help="where named runs live")

    p = sub.add_parser("evaluate", help="closed-set metrics of a run; with --thresholds, Other too", formatter_class=fmt)
    run_flags(p)
    p.add_argument("--split", choices=("val", "test"), default="val", help="which cached outputs to score")
    p.add_argument("--thresholds", default=None, help="a thresholds file from `receiptlib fit-other` (fitted on val)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("fit-other", help="fit an Other detector on val and save its thresholds file", formatter_class=fmt)
    run_flags(p)
    p.add_argument("--method", default="per-class-logit", choices=("per-class-logit", "global-softmax"),
                   help="per-class thresholds on the max logit (the paper's) or one softmax threshold")
    p.add_argument("--k", type=float, default=2.0,  # openset.PAPER_K, not imported here (a fast --help); tested equal
                   help="per-class-logit: thresholds start at mean - k * std")
    p.add_argument("--rule", default="mean_std", choices=("mean_std", "macro_f1"),
                   help="per-class-logit: keep mean - k*std, or move each threshold to maximise macro-F1 on val")
    p.add_argument("--override", nargs="+", default=None, metavar="CLASS=T", help="per-class-logit: fixed thresholds")
    p.add_argument("--threshold", type=float, default=0.9, help="global-softmax: the threshold on the max softmax")
    p.add_argument("--out", default=None, help="thresholds file (default: RUN/thresholds.json)")
    p.set_defaults(func=_fit_other)

    p = sub.add_parser("predict", help="label photos (files and folders) with a trained run", formatter_class=fmt)
    run_flags(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--thresholds", default=None, help="thresholds file for Other (default: argmax over known chains only)")
    p.add_argument("--out", default="preds.csv", help="output file; '-' for stdout")
    p.add_argument("--format", choices=("csv", "mozgalo"), default="csv",
                   help="csv: one row per input; mozgalo: one label per line ordered by the file names' numeric ids")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="photos per forward pass")
    p.add_argument("--workers", type=int, default=WORKERS, help="threads decoding photos ahead of the model; 0: none")
    p.add_argument("--threads", type=int, default=None, help=f"ONNX Runtime threads (default: the cores, {cpu_count()})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="auto: the run's fast choice (receiptlib build-fast) if made, else torch-fp32")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into subfolders")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any input failed")
    p.add_argument("--verbose", action="store_true", help="print start-up (imports, model load) and throughput")
    p.set_defaults(func=_predict)

    p = sub.add_parser("build-fast", help="export to ONNX, quantize, and pick the fastest setting that agrees with fp32 on val",
                       formatter_class=fmt)
    run_flags(p)
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS), help="auto: the fastest that qualifies")
    p.add_argument("--n-val", type=int, default=1000, help="val photos on which agreement is measured")
    p.add_argument("--n-calibration", type=int, default=256, help="train photos that calibrate int8")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_build_fast)

    p = sub.add_parser("bench", help="time inference per backend and precision beside the machine's ceiling (section VIII)",
                       formatter_class=fmt)
    if wanted("bench"):
        add_bench_arguments(p)
        p.set_defaults(func=bench_command)

    p = sub.add_parser("report", help="generate the data and execute notebooks/NN_*.ipynb in order", formatter_class=fmt)
    p.add_argument("--preset", default="quick", help="data and training preset passed to every notebook: tiny, quick, hard, paper")
    p.add_argument("--seed", type=int, default=0, help="SEED passed to every notebook")
    p.add_argument("--only", nargs="+", default=None, metavar="NN", help="only notebooks whose name starts with these prefixes")
    p.add_argument("--data-dir", default=None, help="a folder of real photos (train/, val/, test/) instead of synthetic data")
    p.add_argument("--output-dir", default=None, help="write executed notebooks here instead of in place")
    p.add_argument("--workers", type=int, default=None, help="data generation processes (default: all cores)")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .serving import BackendUnavailable as BackendUnavailableError  # torch-free; a missing backend is one line

    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(verb if verb in VERBS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, BackendUnavailableError) as err:
        # user mistakes (a missing run, a thresholds file of another model, a bad preset): one line, no traceback
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"receiptlib {args.verb}: {message}", file=sys.stderr)
        return 2
