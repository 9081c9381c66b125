"""Section VII's experiment end to end: the oracle ceiling, the localisation rate chosen on val, every arm for
every seed, the metrics on all test photos and the hard slice, paired intervals against arm A, and the
mechanism checks (does the transformer undo the photo's rotation and zoom?).

    summary = compare("data/synth-quick-seed0", seeds=(0, 1, 2), runs_root="data/runs")
    comparison = load_comparison(summary.attrs["out_dir"])   # summary, results, checkpoints, config, snapshots

``compare`` keeps everything in one folder per configuration (``<runs_root>/stn-<hash>``), written through
receiptlib.io, and reuses it when the same configuration ran before.
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

from .. import data as rdata
from .. import io as rio
from .. import openset
from .. import runs as rruns
from ..common import pick_device
from .geometry import circular_correlation, hard_mask, oracle_theta, pixel_scale_angle
from .recipe import STNRecipe, Views
from .training import ARMS, choose_loc_mult, oracle_scores, predict, stage1_from_run, train_arm, train_stage1

REFERENCE = "finetune"  # arm A: every difference is taken against it


def open_set_predictions(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    """Labels with Other (= number of known classes) for test: per-class max-logit thresholds
    (openset.PerClassLogit, section VI) fitted on val, never on test. A classifier with no correctly classified
    known val photo (an untrained one: the tiny preset) gets no thresholds: every photo keeps its argmax."""
    correct = (val_logits.argmax(1) == val_labels) & (val_labels < val_logits.shape[1])
    if not correct.any():
        return test_logits.argmax(1)
    det = openset.PerClassLogit(rule="macro_f1").fit(openset.Outputs(val_logits, val_labels))
    return det.predict(openset.Outputs(test_logits, np.zeros(len(test_logits), np.int64)))


def slice_metrics(labels: np.ndarray, known_pred: np.ndarray, open_pred: np.ndarray, num_known: int,
                  mask: np.ndarray | None = None) -> dict:
    """Closed-set accuracy (known photos) and macro-F1 with Other on the photos selected by ``mask``."""
    if mask is not None:
        labels, known_pred, open_pred = labels[mask], known_pred[mask], open_pred[mask]
    m = openset.metrics(labels, open_pred, num_known=num_known, known_pred=known_pred)
    return {"closed_set_accuracy": m["closed_set_accuracy"], "macro_f1": m["macro_f1"], "n": m["n"],
            "n_known": int((labels < num_known).sum())}


def paired_intervals(labels: np.ndarray, known_preds: dict, open_preds: dict, *, num_known: int,
                     other_groups: Sequence | None, reference: str = REFERENCE, mask: np.ndarray | None = None,
                     n: int = openset.intervals.N_RESAMPLES, seed: int = 0) -> dict:
    """Per arm, the 95% interval of the paired bootstrap difference to ``reference`` of the seed-mean closed-set
    accuracy and macro-F1 (openset.intervals: known photos resampled one by one, Other photos by their chain;
    every arm and seed scored on the same resamples). ``known_preds[arm]`` / ``open_preds[arm]``: (seeds, N),
    seeds in the same order for every arm; an arm with fewer seeds is compared with the reference's first ones."""
    if mask is not None:
        labels = labels[mask]
        other_groups = None if other_groups is None else np.asarray(other_groups, dtype=object)[mask]
        known_preds = {a: p[:, mask] for a, p in known_preds.items()}
        open_preds = {a: p[:, mask] for a, p in open_preds.items()}
    w = openset.intervals.bootstrap_weights(labels, num_known, other_groups=other_groups, n=n, seed=seed)
    known = labels < num_known
    wk = w[:, known].astype(np.float64)

    def draws(kp: np.ndarray, op: np.ndarray) -> dict:
        correct = (kp[:, known] == labels[known]).mean(0)  # seed-mean per photo
        f1 = np.mean([openset.intervals.weighted_macro_f1(labels, p, w, num_known=num_known) for p in op], axis=0)
        return {"accuracy": wk @ correct / wk.sum(1), "macro_f1": f1}

    cache: dict[int, dict] = {}
    out = {}
    for arm in known_preds:
        s = len(known_preds[arm])  # an arm run for fewer seeds is compared with A on the same seeds
        if s not in cache:
            cache[s] = draws(known_preds[reference][:s], open_preds[reference][:s])
        mine = cache[s] if arm == reference and s == len(known_preds[reference]) else draws(known_preds[arm], open_preds[arm])
        row = {}
        for key in ("accuracy", "macro_f1"):
            lo, hi = openset.intervals.interval(mine[key] - cache[s][key])
            row.update({f"{key}_diff_low": lo, f"{key}_diff_high": hi})
        out[arm] = row
    return out


def mechanism(theta: np.ndarray, table, *, aspect: float, known: np.ndarray, oracle: np.ndarray | None = None) -> dict:
    """Does the transformer undo the photo's geometry? On the known test photos: the circular correlation of
    its angle with the manifest's rotation_deg (-1: it turns every photo back by its rotation) and with the
    oracle's angle (+1), and the Pearson correlation of its zoom with the receipt's scale in frame (manifest
    ``scale``) and with the oracle's zoom (+1: it zooms in on small receipts). ``oracle``: the photos'
    ``oracle_theta`` when the caller has it (default: computed here)."""
    if table is None:
        return {}
    zoom, angle = pixel_scale_angle(theta[known], aspect=aspect)
    oracle = oracle_theta(table, aspect=aspect).numpy() if oracle is None else oracle
    o_zoom, o_angle = pixel_scale_angle(oracle[known], aspect=aspect)
    rotation = table["rotation_deg"].to_numpy(float)[known]
    scale = table["scale"].to_numpy(float)[known]

    def pearson(a, b) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")

    return {"angle_vs_rotation": circular_correlation(angle, rotation),
            "angle_vs_oracle": circular_correlation(angle, o_angle),
            "zoom_vs_scale": pearson(zoom, scale), "zoom_vs_oracle": pearson(zoom, o_zoom)}


def _fixed_photos(views: Views, n: int, hard_share: float = 0.5) -> dict[str, torch.Tensor]:
    """Indices of val photos the same for every arm and seed: ``stats`` (up to 128 known photos, spread over
    the sorted file order) for the transform statistics, ``snapshot`` (n known photos, about half of them from
    the hard slice when there is a manifest) for the input/output grids."""
    known = views.known_val()
    stats = known[torch.linspace(0, len(known) - 1, steps=min(128, len(known))).round().long()]
    table = views.tables["val"]
    if table is None:
        pick = known[torch.linspace(0, len(known) - 1, steps=min(n, len(known))).round().long()]
        return {"stats": stats, "snapshot": pick}
    hard = torch.from_numpy(hard_mask(table).copy())[known]
    hard_idx, easy_idx = known[hard], known[~hard]
    n_hard = min(len(hard_idx), int(round(n * hard_share)))
    spread = lambda idx, k: idx[torch.linspace(0, len(idx) - 1, steps=k).round().long()] if k else idx[:0]  # noqa: E731
    pick = torch.cat([spread(hard_idx, n_hard), spread(easy_idx, min(len(easy_idx), n - n_hard))])
    return {"stats": stats, "snapshot": pick}


def _identity(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def compare(data_dir: str | Path, *, seeds: Sequence[int] = (0, 1, 2), recipe: STNRecipe | None = None,
            arms: Sequence[str] = ARMS, single_seed_arms: Sequence[str] = (), stage1_run=None,
            out_dir: str | Path | None = None, runs_root: str | Path = "data/runs",
            n_snapshot: int = 8, device: str = "auto", workers: int = 2, verbose: bool = True, **overrides):
    """Section VII's experiment; returns a pandas DataFrame, one row per (slice, arm): mean and std over seeds of
    closed-set accuracy and macro-F1 with Other, the paired 95% interval of each arm's difference to arm A
    (``finetune``), and the transform's final statistics on test (``mean_zoom``, ``mean_abs_rotation_deg``).

    ``stage1_run``: a finished training run whose classifier is stage 1 (notebook 03's fine-tuned backbone);
    None trains stage 1 here (``train_stage1``). ``single_seed_arms``: arms run for the first seed only (the
    checks, e.g. A′, when the budget is short). ``overrides`` are STNRecipe fields. Saved under ``out_dir`` (default ``<runs_root>/stn-<hash>``):
    ``config.json`` (identity, oracle ceiling, the chosen localisation rate and its val scores, summed rates,
    timings, slice sizes), ``results.csv`` (per arm, seed, slice), ``summary.csv`` (the returned table),
    ``checkpoints.csv`` (transform statistics through training), ``mechanism.csv`` (per arm and seed),
    ``losses.csv``, ``outputs/<arm>-seed<s>-<split>_logits.npy`` (and ``_theta.npy``), ``snapshots/<arm>-seed<s>.npz``
    and ``snapshots/inputs.npz``. Read them back with ``load_comparison``.
    """
    import pandas as pd

    recipe = replace(recipe or STNRecipe(), **overrides)
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or REFERENCE not in arms:
        raise ValueError(f"arms={list(arms)}: expected some of {ARMS}, including the reference {REFERENCE!r}")
    arms = [a for a in ARMS if a in arms]
    single = [a for a in arms if a in set(single_seed_arms)]
    if REFERENCE in single:
        raise ValueError(f"single_seed_arms={list(single_seed_arms)}: the reference arm {REFERENCE!r} runs for every "
                         "seed (every difference is taken against it)")
    stage1_id = None
    if stage1_run is not None:
        stage1_run = stage1_run if isinstance(stage1_run, rruns.Run) else rruns.Run(stage1_run)
        stage1_id = {"run": stage1_run.name, "identity": stage1_run.config.get("identity")}
    config = {"recipe": asdict(recipe), "seeds": [int(s) for s in seeds], "arms": arms, "single_seed_arms": single,
              "stage1_run": stage1_id, "n_snapshot": n_snapshot, "data": rruns.data_fingerprint(data_dir), "version": 3}
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
    for sub in ("", "outputs", "snapshots"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    dev = pick_device(device)

    t0 = time.perf_counter()
    views = Views.load(data_dir, recipe, workers=workers)
    k = views.num_classes()
    fixed = _fixed_photos(views, n_snapshot)
    snap_x, stats_x = views.val.images[fixed["snapshot"]].float() / 255, views.val.images[fixed["stats"]].float() / 255
    rio.save_npz(out / "snapshots" / "inputs.npz", images=views.val.images[fixed["snapshot"]].permute(0, 2, 3, 1).numpy(),
                paths=np.array([views.val.paths[i] for i in fixed["snapshot"].tolist()]))
    t_data = time.perf_counter() - t0
    if stage1_run is not None:
        stage1 = stage1_from_run(stage1_run, recipe, views)
        say(f"[stn] stage 1: the classifier of {stage1_run.path}, val accuracy {stage1['val_acc']:.4f} on these views")
    else:
        stage1 = train_stage1(views, recipe, device=device, verbose=verbose)
    oracle = oracle_scores(views, recipe, stage1, device=device)
    if oracle is not None:
        say(f"[stn] oracle ceiling: closed-set accuracy {oracle['identity']['accuracy']:.4f} as photographed, "
            f"{oracle['oracle']['accuracy']:.4f} canonicalised (hard slice {oracle['identity']['hard_accuracy']:.4f} "
            f"-> {oracle['oracle']['hard_accuracy']:.4f})")
    loc_mult, loc_scores = recipe.loc_lr_mults[0], {}
    chosen_run = None  # the selection's run with the chosen rate is the staged arm of the first seed
    if any(a.startswith("staged") for a in arms) and len(recipe.loc_lr_mults) > 1:
        loc_mult, loc_scores, runs = choose_loc_mult(views, recipe, stage1, seed=seeds[0], device=device,
                                                     verbose=verbose, snapshot_views=snap_x, stats_views=stats_x)
        chosen_run = runs[loc_mult]
        say(f"[stn] localisation rate: x{loc_mult} (chosen on val)")

    test_table = views.tables["test"]
    test_oracle = views.oracle("test")  # once, for every arm's mechanism checks
    test_oracle = None if test_oracle is None else test_oracle.numpy()
    hard = views.hard()
    labels = views.test.labels.numpy().astype(np.int64)
    known_mask = labels < k
    groups = None
    if test_table is not None and "chain" in test_table.columns:
        groups = np.where(known_mask, None, test_table["chain"].astype(object).to_numpy())
    slices = {"all": None, **({"hard": hard} if hard is not None else {})}
    rows, checkpoints, mech, losses, summed = [], [], [], [], {}
    known_preds = {a: [] for a in arms}
    open_preds = {a: [] for a in arms}
    for i, seed in enumerate(seeds):
        for arm in arms:
            if i and arm in single:
                continue
            if arm == "staged" and i == 0 and chosen_run is not None:
                res = chosen_run
            else:
                res = train_arm(arm, views, recipe, stage1=stage1, seed=seed, loc_mult=loc_mult, device=device,
                                snapshot_views=snap_x, stats_views=stats_x, verbose=verbose)
            summed[f"{arm}-seed{seed}"] = res.summed_rates
            losses += [{"arm": arm, "seed": seed, "step": i + 1, "loss": v} for i, v in enumerate(res.losses)]
            checkpoints += res.checkpoints
            outs = {split: predict(res.model.to(dev), cache, dev) for split, cache in (("val", views.val), ("test", views.test))}
            for split, o in outs.items():
                rio.save_npy(out / "outputs" / f"{arm}-seed{seed}-{split}_logits.npy", o["logits"].astype(np.float32))
                if "theta" in o:
                    rio.save_npy(out / "outputs" / f"{arm}-seed{seed}-{split}_theta.npy", o["theta"].astype(np.float32))
            kp = outs["test"]["logits"].argmax(1)
            op = open_set_predictions(outs["val"]["logits"], outs["val"]["labels"], outs["test"]["logits"])
            known_preds[arm].append(kp)
            open_preds[arm].append(op)
            stats = {}
            if "theta" in outs["test"]:
                zoom, angle = pixel_scale_angle(outs["test"]["theta"], aspect=views.aspect)
                stats = {"mean_zoom": float(zoom.mean()), "mean_abs_rotation_deg": float(np.abs(angle).mean())}
                hard_stats = {}
                if hard is not None:
                    hard_stats = {"hard_mean_zoom": float(zoom[hard].mean()),
                                  "hard_mean_abs_rotation_deg": float(np.abs(angle[hard]).mean())}
                m = mechanism(outs["test"]["theta"], test_table, aspect=views.aspect, known=known_mask, oracle=test_oracle)
                mech.append({"arm": arm, "seed": seed, **stats, **hard_stats, **m})
            for name, mask in slices.items():
                rows.append({"arm": arm, "seed": seed, "slice": name, **slice_metrics(labels, kp, op, k, mask)})
            if res.snapshots:
                rio.save_npz(out / "snapshots" / f"{arm}-seed{seed}.npz", outputs=np.stack(res.snapshots),
                            steps=np.array([c["step"] for c in res.checkpoints]))
            r = rows[-len(slices)]
            say(f"[stn] {arm} seed {seed}: test closed-set accuracy {r['closed_set_accuracy']:.4f}, macro-F1 with "
                f"Other {r['macro_f1']:.4f}" + (f", mean zoom {stats['mean_zoom']:.3f}, mean |rotation| "
                                                 f"{stats['mean_abs_rotation_deg']:.1f} deg" if stats else ""))
    results = pd.DataFrame(rows)
    kp_arr = {a: np.stack(p) for a, p in known_preds.items()}
    op_arr = {a: np.stack(p) for a, p in open_preds.items()}
    intervals = {name: paired_intervals(labels, kp_arr, op_arr, num_known=k, other_groups=groups, mask=mask)
                 for name, mask in slices.items()}
    mech_df = pd.DataFrame(mech)
    summary = summarise(results, intervals, mech_df)
    rio.write_csv(out / "results.csv", results)
    rio.write_csv(out / "checkpoints.csv", pd.DataFrame(checkpoints))
    rio.write_csv(out / "mechanism.csv", mech_df)
    rio.write_csv(out / "losses.csv", pd.DataFrame(losses))
    rio.write_csv(out / "summary.csv", summary)
    rio.write_json(out / "config.json", {
        "identity": config, "data_dir": str(Path(data_dir).resolve()), "seconds": time.perf_counter() - t0,
        "data_seconds": t_data, "stage1": {k2: v for k2, v in stage1.items() if k2 not in ("state", "losses")},
        "oracle": oracle, "loc_mult": loc_mult, "loc_scores": {str(m): v for m, v in loc_scores.items()},
        "summed_rates": summed, "hard_slice_size": int(hard.sum()) if hard is not None else None,
        "hard_slice_known": int((hard & known_mask).sum()) if hard is not None else None,
        "test_size": len(labels), "aspect": views.aspect,
        "test_paths": [str(Path(p).resolve().relative_to(Path(data_dir).resolve())) for p in views.test.paths]})
    say(f"[stn] comparison saved in {out} ({time.perf_counter() - t0:.0f} s)")
    summary.attrs["out_dir"] = str(out)
    return summary


def summarise(results, intervals: dict, mechanism_table) -> "pd.DataFrame":
    """Per (slice, arm): mean and std over seeds, the paired interval of the difference to arm A, and (arms
    with a transformer) the final transform statistics on test, mean over seeds."""
    order = {a: i for i, a in enumerate(ARMS)}
    g = results.groupby(["slice", "arm"], sort=False)
    summary = g.agg(accuracy_mean=("closed_set_accuracy", "mean"), accuracy_std=("closed_set_accuracy", "std"),
                    macro_f1_mean=("macro_f1", "mean"), macro_f1_std=("macro_f1", "std"),
                    seeds=("seed", "nunique"), n_test=("n", "first"), n_known=("n_known", "first")).reset_index()
    col = {"accuracy": "closed_set_accuracy", "macro_f1": "macro_f1"}
    for key in ("accuracy", "macro_f1"):
        diffs = []
        for sl, arm in zip(summary["slice"], summary["arm"]):  # against A on the arm's own seeds
            part = results[results["slice"] == sl]
            seeds = part.loc[part["arm"] == arm, "seed"]
            ref = part[(part["arm"] == REFERENCE) & part["seed"].isin(seeds)]
            diffs.append(part.loc[part["arm"] == arm, col[key]].mean() - ref[col[key]].mean())
        summary[f"{key}_diff"] = diffs
        for end in ("low", "high"):
            summary[f"{key}_diff_{end}"] = [intervals[s][a][f"{key}_diff_{end}"] for s, a in zip(summary["slice"], summary["arm"])]
    if len(mechanism_table):
        m = mechanism_table.groupby("arm").mean(numeric_only=True)
        for col in ("mean_zoom", "mean_abs_rotation_deg", "hard_mean_zoom", "hard_mean_abs_rotation_deg"):
            if col in m.columns:
                summary[col] = summary["arm"].map(m[col])
    summary["_o"] = summary["arm"].map(order)
    return summary.sort_values(["slice", "_o"]).drop(columns="_o").reset_index(drop=True)


def load_comparison(out_dir: str | Path) -> dict:
    """A finished ``compare`` folder: summary, results, checkpoints, mechanism, losses (DataFrames), config,
    the snapshots {"<arm>-seed<s>": {"outputs", "steps"}}, the fixed input photos (uint8 HWC), the test thetas
    {"<arm>-seed<s>": (N, 2, 3)} and the test photos' manifest rows (``test_table``; None without a manifest)."""
    import pandas as pd

    out = Path(out_dir)
    if not (out / "summary.csv").is_file():
        raise FileNotFoundError(f"{out}: no summary.csv; run rl.stn.compare(...) with this out_dir first")
    snaps = {}
    for p in sorted((out / "snapshots").glob("*-seed*.npz")):
        with np.load(p, allow_pickle=False) as z:
            snaps[p.stem] = {key: z[key] for key in z.files}
    with np.load(out / "snapshots" / "inputs.npz", allow_pickle=False) as z:
        inputs = {key: z[key] for key in z.files}
    read = lambda name: pd.read_csv(out / name) if (out / name).stat().st_size > 1 else pd.DataFrame()  # noqa: E731
    config = rio.read_json(out / "config.json")
    theta = {p.name[: -len("-test_theta.npy")]: np.load(p, allow_pickle=False)
             for p in sorted((out / "outputs").glob("*-test_theta.npy"))}
    table = None
    data_dir = Path(config["data_dir"])
    if (data_dir / "manifest.csv").is_file():
        table = rdata.photo_table(data_dir, config["test_paths"])
    return {"theta": theta, "test_table": table,"summary": pd.read_csv(out / "summary.csv"), "results": pd.read_csv(out / "results.csv"),
            "checkpoints": read("checkpoints.csv"), "mechanism": read("mechanism.csv"), "losses": read("losses.csv"),
            "config": config, "snapshots": snaps, "inputs": inputs}


def snapshot_grid(comparison: dict, key: str = "staged-seed0", *, pad: int = 2) -> tuple[np.ndarray, list[str]]:
    """One uint8 image: a row per fixed photo, first the view the transformer receives (resized to the crop's
    size), then its output at each checkpoint. Returns the image and the column titles."""
    import torch.nn.functional as F

    if key not in comparison["snapshots"]:
        raise KeyError(f"no snapshots {key!r}; available: {sorted(comparison['snapshots'])}")
    snap = comparison["snapshots"][key]
    outputs, steps = snap["outputs"], [int(s) for s in snap["steps"]]
    n, s = outputs.shape[1], outputs.shape[2]
    inputs = torch.from_numpy(comparison["inputs"]["images"]).permute(0, 3, 1, 2).float()
    inputs = F.interpolate(inputs, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    inputs = inputs.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    columns = [inputs] + list(outputs)
    grid = np.full((n * (s + pad) - pad, len(columns) * (s + pad) - pad, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        for i in range(n):
            grid[i * (s + pad): i * (s + pad) + s, j * (s + pad): j * (s + pad) + s] = col[i]
    return grid, ["input"] + [f"step {t}" for t in steps]
