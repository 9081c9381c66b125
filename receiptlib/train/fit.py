"""`train()`: one training run, written into a resumable run folder (the layout runs.Run reads).

Determinism: all randomness of an epoch (shuffle order, augmentation) is a pure function of
(seed, epoch, image index), so a run killed at any moment and resumed from its last checkpoint ends, on
CPU, with exactly the metrics of an uninterrupted run; with `torchrun` each process takes its slice of
the same global batches (the recipe's batch size is the global batch size).
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import data as rdata
from .. import models
from .. import runs as rruns
from ..common import OTHER, seed_everything
from ..io import save_npy, save_torch, write_csv, write_json, write_text
from .checkpoint import rng_state, set_rng_state
from .distributed import setup_dist
from .loop import amp_dtype, evaluate, make_ema, make_optimizer, make_scheduler, run_epoch, batch_plan
from .recipe import Recipe, TrainConfig
from .sources import CachedImages, CachedTrain, PerImageTrain, subset_indices


def train(config: TrainConfig, *, run_dir: str | Path | None = None, runs_root: str | Path = "data/runs",
          resume: bool = False, verbose: bool = True) -> rruns.Run:
    """Train `config` into a run folder (default `runs_root/<recipe>-<hash>`) and return its `runs.Run`.

    resume=True continues from `checkpoint_last.pt` (or starts the run if the folder has none); a folder
    that already holds a run needs resume=True. Under torchrun (RANK/WORLD_SIZE set), trains with
    DistributedDataParallel.
    """
    recipe = config.resolved_recipe()
    # absolute, so that outputs/*_paths.txt and tta.tta_outputs work from any working directory
    config = replace(config, data_dir=str(Path(config.data_dir).resolve()))
    known = rdata.known_classes(config.data_dir)
    arch = config.arch
    norm = models.get_architecture(arch).normalization
    dist = setup_dist(config.device)
    device = dist.device
    say = print if (verbose and dist.main) else (lambda *a, **k: None)
    try:
        identity = rruns.config_identity(config, recipe)
        run_dir = Path(run_dir) if run_dir is not None else Path(runs_root) / rruns.run_name(identity)
        last_path, best_path = run_dir / "checkpoint_last.pt", run_dir / "checkpoint_best.pt"
        if (run_dir / "config.json").exists():
            old = rruns.read_json(run_dir / "config.json")
            if not resume:
                raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, "
                                      "or choose another run name")
            rruns.check_same_identity(old.get("identity", {}), identity, run_dir)
        dist.barrier()

        seed_everything(config.seed)
        model = models.build(arch, len(known), weights=config.weights)
        dtype = amp_dtype(recipe.amp, device)
        full_config = {
            "data_dir": config.data_dir, "recipe_name": config.recipe, "recipe": asdict(recipe),
            "epochs": recipe.epochs, "image_size": recipe.image_size, "batch_size": recipe.batch_size,
            "seed": config.seed, "weights": str(config.weights),
            "weights_source": getattr(model, "weights_source", "custom model"), "arch": arch,
            "device": str(device), "amp_dtype": str(dtype).replace("torch.", "") if dtype else "float32",
            "world_size": dist.world, "workers": config.workers, "max_train_images": config.max_train_images,
            "classes": known + [OTHER], "train_config": asdict(config), "identity": identity,
            # what every consumer (evaluation, predict, ONNX export) feeds the model: Run.image_size, Run.normalization
            "preprocessing": {"image_size": recipe.image_size, "resize": "stretch",
                              "mean": list(norm["mean"]), "std": list(norm["std"])},
            "torch_version": torch.__version__,
        }
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", full_config)
            write_json(run_dir / "classes.json", known + [OTHER])

        memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format)
        optimizer = make_optimizer(model, recipe)
        ema = make_ema(model, recipe)
        eval_model = ema.module if ema is not None else model  # what is evaluated and saved as "model"
        criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        # Data: train images (cached or per image), val images cached once for the per-epoch evaluation.
        t_data = time.perf_counter()
        n_train_all = len(rdata.ReceiptFolder(config.data_dir, "train", classes=known).samples)
        subset = subset_indices(n_train_all, config.max_train_images, config.seed)
        if recipe.pipeline == "cached":
            source = CachedTrain(CachedImages(config.data_dir, "train", known, recipe.image_size,
                                              workers=config.workers, indices=subset, **norm), recipe, config.seed, device)
        else:
            source = PerImageTrain(config.data_dir, known, recipe, config.seed, config.workers, subset, **norm)
        val = None
        if dist.main and (Path(config.data_dir) / "val").is_dir():
            val = CachedImages(config.data_dir, "val", known, recipe.image_size, workers=config.workers, **norm)
        decode_seconds = time.perf_counter() - t_data
        say(f"[train] {run_dir.name}: {len(source)} train images, {len(val) if val else 0} val images, "
            f"{len(known)} classes, {recipe.name} recipe at {recipe.image_size} px, {device}, "
            f"{full_config['amp_dtype']}, weights {full_config['weights_source']} (data ready in {decode_seconds:.0f} s)")

        steps_per_epoch = len(batch_plan(len(source), recipe.batch_size, config.seed, 0, rank=dist.rank, world=dist.world))
        scheduler, per_step = make_scheduler(optimizer, recipe, steps_per_epoch, recipe.epochs)

        start_epoch, history, best_acc, best_epoch = 0, [], -1.0, 0
        if resume and last_path.is_file():
            ckpt = rruns.load_checkpoint(last_path, classes=known + [OTHER], arch=arch)
            models.unwrap(model).load_state_dict(ckpt.get("train_model", ckpt["model"]))
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
            best_acc, best_epoch = float(ckpt["best_val_acc"]), int(ckpt["best_epoch"])
            say(f"[train] resuming {run_dir.name} after epoch {start_epoch}")

        train_model = model
        if dist.world > 1:
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        val_batches = None
        if val is not None:
            known_val = torch.nonzero(val.labels < len(known)).flatten()
            if len(known_val):
                val_batches = lambda: val.batches(known_val, recipe.eval_batch_size)  # noqa: E731
        for epoch in range(start_epoch, recipe.epochs):
            row = run_epoch(train_model, criterion, optimizer, source, epoch, seed=config.seed,
                            batch_size=recipe.batch_size, device=device, schedule=(scheduler, per_step), dtype=dtype,
                            channels_last=recipe.channels_last, scaler=scaler, ema=ema, dist=dist,
                            val_batches=val_batches if dist.main else None, eval_model=eval_model)
            if dist.main:
                history.append(row)
                # the first epoch, or a strictly better val accuracy (no val split: every epoch)
                improved = not (row["val_acc"] <= best_acc)
                if improved:
                    best_acc, best_epoch = (row["val_acc"] if row["val_acc"] == row["val_acc"] else -1.0), epoch + 1
                ckpt = {"model": models.unwrap(eval_model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "epoch": epoch + 1, "rng": rng_state(), "history": history, "best_val_acc": best_acc,
                        "best_epoch": best_epoch, "classes": known + [OTHER], "arch": arch}
                if ema is not None:  # "model" holds the average (what inference uses); training resumes from these
                    ckpt.update(train_model=models.unwrap(model).state_dict(), ema=ema.state_dict())
                if improved:  # best before last: a kill in between redoes this epoch and rewrites both
                    save_torch(best_path, ckpt)
                save_torch(last_path, ckpt)
                write_history(run_dir / "history.csv", history)
                say(f"[train] epoch {epoch + 1}/{recipe.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}"
                    f" | val loss {row['val_loss']:.3f} acc {row['val_acc']:.4f} | lr {row['lr']:.3g} | {row['seconds']:.0f} s,"
                    f" {row['images_per_second']:.0f} img/s")
            dist.barrier()

        if dist.main:
            _finalize(run_dir, model, config, recipe, known, val, device, arch, decode_seconds, norm)
        dist.barrier()
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()
    return rruns.Run(run_dir)


def write_history(path: str | Path, rows: list[dict]) -> None:
    import pandas as pd

    write_csv(path, pd.DataFrame(rows, columns=rruns.HISTORY_COLUMNS))


def write_outputs(run_dir: str | Path, split: str, logits, features, labels, paths: list[str]) -> None:
    """The cached outputs runs.Run.outputs reads: logits, penultimate features, labels and paths of a split."""
    out = Path(run_dir) / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / f"{split}_logits.npy", np.asarray(logits, dtype=np.float32))
    save_npy(out / f"{split}_features.npy", np.asarray(features, dtype=np.float32))
    save_npy(out / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
    write_text(out / f"{split}_paths.txt", "".join(f"{p}\n" for p in paths))


def write_train_outputs(run_dir: str | Path, model: nn.Module, *, data_dir: str | Path, known: list[str], image_size: int,
                        norm: dict, device: torch.device, batch_size: int = 64, workers: int = 0,
                        channels_last: bool = False) -> None:
    """The outputs of the training photos under the evaluation transform (no augmentation): the reference set
    of the distance detectors (Mahalanobis, KNN, LogitDistance), so they are never fitted on the val photos
    their thresholds are fitted on. Streamed, not cached in memory: the paper preset has 45,000 of them."""
    ds = rdata.ReceiptFolder(data_dir, "train", classes=known,
                             transform=rdata.eval_transform(image_size=image_size, **norm))
    loader = rdata.make_loader(ds, batch_size=batch_size, shuffle=False, workers=workers, seed=None)
    out = evaluate(model, nn.CrossEntropyLoss(), loader, device, channels_last=channels_last, keep_outputs=True)
    write_outputs(run_dir, "train", out["logits"], out["features"], out["labels"], [p for p, _ in ds.samples])


def _finalize(run_dir: Path, model: nn.Module, config: TrainConfig, recipe: Recipe, known: list[str],
              val: CachedImages | None, device: torch.device, arch: str, decode_seconds: float, norm: dict) -> None:
    """Outputs of the best checkpoint on val and test (all images, Other included), then metrics.json.

    Outputs are computed in float32 (whatever the training precision) so that the open-set thresholds
    see the same logits a float32 deployment would.
    """
    t0 = time.perf_counter()
    ckpt = rruns.load_checkpoint(run_dir / "checkpoint_best.pt", classes=known + [OTHER], arch=arch)
    bare = models.unwrap(model)
    bare.load_state_dict(ckpt["model"])
    criterion = nn.CrossEntropyLoss()
    for split in ("val", "test"):
        if not (Path(config.data_dir) / split).is_dir():
            continue
        images = val if split == "val" and val is not None else CachedImages(
            config.data_dir, split, known, recipe.image_size, workers=config.workers, **norm)
        out = evaluate(bare, criterion, images.batches(batch_size=recipe.eval_batch_size), device,
                       channels_last=recipe.channels_last, keep_outputs=True)
        write_outputs(run_dir, split, out["logits"], out["features"], out["labels"], images.paths)
    write_train_outputs(run_dir, bare, data_dir=config.data_dir, known=known, image_size=recipe.image_size, norm=norm,
                        device=device, batch_size=recipe.eval_batch_size, workers=config.workers,
                        channels_last=recipe.channels_last)
    history = ckpt["history"]
    metrics = {"best_epoch": int(ckpt["best_epoch"]), "epochs": recipe.epochs,
               "train_seconds": float(sum(r["seconds"] for r in history)), "decode_seconds": decode_seconds,
               "final_seconds": time.perf_counter() - t0}
    if (run_dir / "outputs" / "val_logits.npy").exists():
        closed = rruns.closed_set_metrics(rruns.Run(run_dir).outputs("val"), known)
        metrics.update(val_accuracy=closed.pop("accuracy"), **closed)
    if (run_dir / "outputs" / "test_logits.npy").exists():  # the honest figure: val chose the epoch
        test = rruns.closed_set_metrics(rruns.Run(run_dir).outputs("test"), known)
        metrics.update(test_accuracy=test["accuracy"], test_n_known=test["n_known"])
    # the slim inference artefact before metrics.json: a finished run always has it
    rruns.save_artefact(bare, run_dir / rruns.ARTEFACT_FILE, rruns.Run(run_dir).card(metrics=metrics))
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run finished
