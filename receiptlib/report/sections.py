"""Tables a report notebook shows and saves, built from finished runs (no training here)."""
from __future__ import annotations

import pandas as pd


def recipe_comparison(runs: dict) -> pd.DataFrame:
    """Notebook 03's recipes side by side, one row per named run (e.g. {"paper": ..., "fast": ...}): the
    recipe's batch size, image size, optimizer and schedule, the epochs run, the train images (a subset's
    size, else "all"), val accuracy, wall seconds of training and mean images per second. A run is anything
    with runs.Run's `config`, `history` and `metrics`."""
    return pd.DataFrame({name: {
        "batch_size": r.config["recipe"]["batch_size"], "image_size": r.config["recipe"]["image_size"],
        "optimizer": r.config["recipe"].get("optimizer", "sgd"), "schedule": r.config["recipe"]["schedule"],
        "epochs": len(r.history), "train_images": r.config.get("max_train_images") or "all",
        "val_accuracy": r.metrics["val_accuracy"], "wall_seconds": r.history.seconds.sum(),
        "images_per_second": r.history.images_per_second.mean()} for name, r in runs.items()}).T
