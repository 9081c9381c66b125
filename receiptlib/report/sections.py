"""Tables a report notebook shows and saves, built from finished runs (no training here)."""
from __future__ import annotations

import pandas as pd


def _weights(source: str) -> str:
    """A run's weights_source in a word: "imagenet", "none" (from scratch) or the file it came from."""
    source = str(source)
    return "imagenet" if source.startswith("imagenet") else ("none" if source.startswith("none") else source)


def run_comparison(runs: dict) -> pd.DataFrame:
    """Finished runs side by side, one row per named run (e.g. {"paper": ..., "fast": ...}): architecture and
    weights, the recipe's batch size, image size, optimizer and schedule, the epochs run, the train images (a
    subset's size, else "all"), val accuracy after the first epoch and of the chosen epoch (val chose it), the
    closed-set accuracy on test's known photos, wall seconds of training and mean images per second. A run is
    anything with runs.Run's `config`, `history` and `metrics`."""
    return pd.DataFrame({name: {
        "arch": r.config.get("arch", "resnet18"), "weights": _weights(r.config.get("weights_source", "none")),
        "batch_size": r.config["recipe"]["batch_size"], "image_size": r.config["recipe"]["image_size"],
        "optimizer": r.config["recipe"].get("optimizer", "sgd"), "schedule": r.config["recipe"]["schedule"],
        "epochs": len(r.history), "train_images": r.config.get("max_train_images") or "all",
        "val_accuracy_epoch_1": float(r.history.val_acc.iloc[0]), "val_accuracy": r.metrics["val_accuracy"],
        "test_accuracy": r.metrics.get("test_accuracy"), "wall_seconds": r.history.seconds.sum(),
        "images_per_second": r.history.images_per_second.mean()} for name, r in runs.items()}).T
