"""The experiment of section VII: ResNet alone vs joint vs staged, several seeds, whole test set and a hard slice.

    summary = compare("data/synth-quick-seed0", seeds=(0, 1, 2), runs_root="data/runs", epochs=5)
    comparison = load_comparison(summary.attrs["out_dir"])   # summary, results, history, config, snapshots

``compare`` keeps everything in one cache folder per configuration (``<runs_root>/stn-<hash>``), written
through receiptlib.io, and reuses it when the same configuration ran before.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data as rdata
from .. import io as rio
from .. import openset
from .. import runs as rruns
from .. import train as rtrain
from .training import MODES, STNRecipe, train_stn

# The hard slice (synthetic data): photos turned beyond the bulk of the paper's +-30 degree augmentation or
# strongly keystoned, from the manifest's rotation_deg and perspective (synth/photo.py: perspective in
# [0.02, 0.1] x difficulty). Its size per preset: docs/decisions.md.
HARD_ROTATION_DEG = 25.0
HARD_PERSPECTIVE = 0.07


def hard_mask(data_dir: str | Path, paths: Sequence[str], *, rotation_deg: float = HARD_ROTATION_DEG,
              perspective: float = HARD_PERSPECTIVE) -> np.ndarray | None:
    """Boolean mask over ``paths``: |rotation_deg| >= rotation_deg or perspective >= perspective, from
    ``data_dir/manifest.csv`` (``data.photo_table``). None when there is no manifest (real photos): no hard
    slice then."""
    manifest = Path(data_dir) / "manifest.csv"
    if not manifest.is_file():
        return None
    table = rdata.photo_table(data_dir, paths)
    missing = [c for c in ("rotation_deg", "perspective") if c not in table.columns]
    if missing:
        raise ValueError(f"{manifest}: expected the columns rotation_deg, perspective; missing {missing}")
    return ((table["rotation_deg"].abs() >= rotation_deg) | (table["perspective"] >= perspective)).to_numpy(dtype=bool)


def open_set_metrics(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                     test_labels: np.ndarray, *, mask: np.ndarray | None = None, rule: str = "macro_f1") -> dict:
    """Closed-set accuracy (known test images) and macro-F1 with Other (per-class max-logit thresholds,
    openset.PerClassLogit fitted on val, section VI), on the test images selected by ``mask``."""
    det = openset.PerClassLogit(rule=rule).fit(openset.Outputs(val_logits, val_labels))
    if mask is not None:
        test_logits, test_labels = test_logits[mask], test_labels[mask]
    data = openset.Outputs(test_logits, test_labels)
    m = openset.metrics(test_labels, det.predict(data), num_known=test_logits.shape[1],
                        known_pred=test_logits.argmax(1))
    return {"closed_set_accuracy": m["closed_set_accuracy"], "macro_f1": m["macro_f1"],
            "other_f1": m["other_f1"], "n": m["n"], "n_other": m["n_other"]}


def _fixed_photos(val, n: int) -> torch.Tensor:
    """n val images spread over the classes (every k-th image in the sorted file order): the same photos
    for every method and seed, so the grids can be compared."""
    return torch.linspace(0, len(val) - 1, steps=min(n, len(val))).round().long()


def _identity(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def compare(data_dir: str | Path, *, seeds: Sequence[int] = (0, 1, 2), recipe: STNRecipe | None = None,
            methods: Sequence[str] = MODES, out_dir: str | Path | None = None,
            runs_root: str | Path = "data/runs", n_snapshot: int = 8,
            device: str = "auto", workers: int = 2, rule: str = "macro_f1", verbose: bool = True, **overrides):
    """Section VII's experiment: every method in ``methods`` ("resnet", "joint", "staged") on the same data
    with the same epochs, for each seed; returns a pandas DataFrame, one row per (method, slice) with the
    mean and std over seeds of closed-set accuracy and macro-F1 with Other ("all": the test set; "hard":
    its large-rotation / strong-perspective photos, when the data has a manifest).

    ``overrides`` are STNRecipe fields (e.g. ``epochs=8, image_size=96, input_size=192``). Everything is
    saved under ``out_dir`` (default ``<runs_root>/stn-<hash of config and data>``, runs_root beside the other
    training runs: a notebook passes ``nb.data_root / "runs"``) and reused when the same
    configuration was run before: ``config.json``, ``results.csv`` (one row per method, seed, slice),
    ``summary.csv`` (the returned table), ``history.csv`` (per epoch, method, seed: losses, accuracies,
    rates, mean zoom and angle of theta), ``outputs/<method>-seed<s>-<split>_{logits,labels}.npy``,
    ``snapshots/<method>-seed<s>.npz`` (epochs, theta, transformer outputs of the fixed photos) and
    ``snapshots/inputs.npz`` (those photos as the transformer receives them, uint8, and their paths).
    Read them back with ``load_comparison(summary.attrs["out_dir"])``.
    """
    import pandas as pd

    recipe = replace(recipe or STNRecipe(), **overrides)
    unknown = sorted(set(methods) - set(MODES))
    if unknown:
        raise ValueError(f"methods={list(methods)}: unknown {unknown}; expected some of {MODES}")
    # the classifier's whole train recipe is part of the identity (its optimiser, augmentation, precision
    # setting): a change of the fast recipe's defaults is a new comparison, not a stale cache hit
    config = {"recipe": asdict(recipe), "train_recipe": asdict(recipe.train_recipe()),
              "seeds": [int(s) for s in seeds], "methods": list(methods),
              "n_snapshot": n_snapshot, "rule": rule, "hard_rotation_deg": HARD_ROTATION_DEG,
              "hard_perspective": HARD_PERSPECTIVE, "data": rruns.data_fingerprint(data_dir)}
    digest = hashlib.sha256(_identity(config).encode()).hexdigest()[:8]
    out = Path(out_dir) if out_dir is not None else Path(runs_root) / f"stn-{digest}"
    if (out / "summary.csv").is_file() and (out / "config.json").is_file():
        old = rio.read_json(out / "config.json")
        if _identity(old.get("identity")) == _identity(config):
            if verbose:
                print(f"[stn] reusing finished comparison {out}")
            summary = pd.read_csv(out / "summary.csv")
            summary.attrs["out_dir"] = str(out)
            return summary
        raise FileExistsError(f"{out} holds a comparison of another configuration; pass another out_dir or delete it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "outputs").mkdir(exist_ok=True)
    (out / "snapshots").mkdir(exist_ok=True)

    t_start = time.perf_counter()
    known = rdata.known_classes(data_dir)
    val = rtrain.CachedImages(data_dir, "val", known, recipe.input_size, workers=workers)
    test = rtrain.CachedImages(data_dir, "test", known, recipe.input_size, workers=workers)
    hard = hard_mask(data_dir, test.paths)
    snap_idx = _fixed_photos(val, n_snapshot)
    snap_x = rtrain.normalize_batch(val.images[snap_idx])
    rio.save_npz(out / "snapshots" / "inputs.npz", images=val.images[snap_idx].permute(0, 2, 3, 1).numpy(),
                paths=np.array([val.paths[i] for i in snap_idx.tolist()]), labels=val.labels[snap_idx].numpy())
    train_caches: dict[int, object] = {}
    criterion = nn.CrossEntropyLoss()
    rows, history = [], []
    for seed in seeds:
        caches = {"val": val}
        if recipe.max_train_images is None and "any" in train_caches:
            caches["train"] = train_caches["any"]  # same images for every seed unless subsets differ per seed
        shared = None  # this seed's ResNet run after stage 1: staged branches off it (same result on CPU)
        for method in sorted(methods, key=MODES.index):  # resnet before staged, whatever order was given
            given = shared if method == "staged" else None
            res = train_stn(data_dir, recipe, mode=method, seed=seed, device=device, workers=workers,
                            snapshot_images=snap_x, caches=caches, verbose=verbose,
                            stage1=None if given is None else given[0])
            if recipe.max_train_images is None:
                train_caches["any"] = caches["train"]
            if given is not None:  # the shared stage-1 epochs belong to this method's curve too
                history += [{**row, "mode": method} for row in given[1]]
            elif method == "resnet" and recipe.stage2_epochs and res.stage1 is not None:
                shared = (res.stage1, [r for r in res.history if r["stage"] == "stage1"])
            history += res.history
            dev = next(res.model.parameters()).device
            outs = {}
            for split, images in (("val", val), ("test", test)):
                ev = rtrain.evaluate(res.model, criterion, images.batches(batch_size=64), dev, keep_outputs=True)
                outs[split] = ev
                rio.save_npy(out / "outputs" / f"{method}-seed{seed}-{split}_logits.npy", ev["logits"].astype(np.float32))
                rio.save_npy(out / "outputs" / f"{method}-seed{seed}-{split}_labels.npy", ev["labels"])
            slices = {"all": None, **({"hard": hard} if hard is not None else {})}
            for name, mask in slices.items():
                m = open_set_metrics(outs["val"]["logits"], outs["val"]["labels"], outs["test"]["logits"],
                                     outs["test"]["labels"], mask=mask, rule=rule)
                rows.append({"method": method, "seed": seed, "slice": name, **m})
            if res.snapshots:
                rio.save_npz(out / "snapshots" / f"{method}-seed{seed}.npz", **res.snapshots)
            if verbose:
                r = rows[-len(slices)]
                print(f"[stn] {method} seed {seed}: test closed-set accuracy {r['closed_set_accuracy']:.4f}, "
                      f"macro-F1 with Other {r['macro_f1']:.4f}")
    results = pd.DataFrame(rows)
    summary = summarise(results)
    rio.write_csv(out / "results.csv", results)
    rio.write_csv(out / "history.csv", pd.DataFrame(history))
    rio.write_csv(out / "summary.csv", summary)
    rio.write_json(out / "config.json", {"identity": config, "data_dir": str(Path(data_dir).resolve()),
                                        "seconds": time.perf_counter() - t_start,
                                        "hard_slice_size": int(hard.sum()) if hard is not None else None,
                                        "test_size": len(test)})
    if verbose:
        print(f"[stn] comparison saved in {out} ({time.perf_counter() - t_start:.0f} s)")
    summary.attrs["out_dir"] = str(out)  # for load_comparison(summary.attrs["out_dir"])
    return summary


def summarise(results) -> "pd.DataFrame":
    """Mean and std over seeds per (slice, method) of the per-seed results table."""
    order = {m: i for i, m in enumerate(MODES)}
    g = results.groupby(["slice", "method"], sort=False)
    summary = g.agg(accuracy_mean=("closed_set_accuracy", "mean"), accuracy_std=("closed_set_accuracy", "std"),
                    macro_f1_mean=("macro_f1", "mean"), macro_f1_std=("macro_f1", "std"),
                    seeds=("seed", "nunique"), n_test=("n", "first")).reset_index()
    summary["_o"] = summary["method"].map(order)
    return summary.sort_values(["slice", "_o"]).drop(columns="_o").reset_index(drop=True)


def load_comparison(out_dir: str | Path) -> dict:
    """A finished ``compare`` folder: summary, results, history (DataFrames), config, and snapshots
    {method-seed<s>: {epochs, theta, outputs}} plus the fixed input photos (uint8 HWC) for the grids."""
    import pandas as pd

    out = Path(out_dir)
    if not (out / "summary.csv").is_file():
        raise FileNotFoundError(f"{out}: no summary.csv; run rl.stn.compare(...) with this out_dir first")
    snaps = {}
    for p in sorted((out / "snapshots").glob("*-seed*.npz")):
        with np.load(p, allow_pickle=False) as z:
            snaps[p.stem] = {k: z[k] for k in z.files}
    with np.load(out / "snapshots" / "inputs.npz", allow_pickle=False) as z:
        inputs = {k: z[k] for k in z.files}
    return {"summary": pd.read_csv(out / "summary.csv"), "results": pd.read_csv(out / "results.csv"),
            "history": pd.read_csv(out / "history.csv"), "config": rio.read_json(out / "config.json"),
            "snapshots": snaps, "inputs": inputs}


def snapshot_grid(comparison: dict, key: str = "staged-seed0", *, epochs: Sequence[int] | None = None,
                  pad: int = 2) -> tuple[np.ndarray, list[str]]:
    """The slides' visualisation as one uint8 image: one row per fixed photo, first column the input the
    transformer receives (resized to the output size), then its output after each of ``epochs`` (default:
    all snapshots). ``comparison``: ``load_comparison(...)``; ``key``: "<method>-seed<s>". Returns the
    image and the column titles."""
    if key not in comparison["snapshots"]:
        raise KeyError(f"no snapshots {key!r}; available: {sorted(comparison['snapshots'])}")
    snap = comparison["snapshots"][key]
    all_epochs = [int(e) for e in snap["epochs"]]
    chosen = all_epochs if epochs is None else [int(e) for e in epochs]
    missing = sorted(set(chosen) - set(all_epochs))
    if missing:
        raise ValueError(f"epochs {missing} have no snapshot in {key!r}; available: {all_epochs}")
    outputs = snap["outputs"]  # [E, n, S, S, 3]
    n, s = outputs.shape[1], outputs.shape[2]
    inputs = torch.from_numpy(comparison["inputs"]["images"]).permute(0, 3, 1, 2).float()
    inputs = F.interpolate(inputs, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    inputs = inputs.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    columns = [inputs] + [outputs[all_epochs.index(e)] for e in chosen]
    grid = np.full((n * (s + pad) - pad, len(columns) * (s + pad) - pad, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(n):
            grid[i * (s + pad): i * (s + pad) + s, j * (s + pad): j * (s + pad) + s] = col[i]
    return grid, ["input"] + [f"epoch {e}" for e in chosen]
