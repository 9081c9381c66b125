"""A training run folder and its artifacts, and the run cache notebooks use.

    run = rl.runs.get_or_train(rl.runs.report_config("quick", seed=0))
    run.history                      # per-epoch losses, accuracies, lr, seconds (pandas)
    run.outputs("test")              # cached logits, penultimate features, labels, paths (Other included)
    model = run.load_model("best")

Layout of `data/runs/<name>/`:
    config.json            the full configuration (recipe fields, data, seed, weights and their source, device)
    classes.json           known classes + ["Other"]
    history.csv            epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_second
    checkpoint_last.pt     model, optimizer, scheduler, scaler, epoch, RNG states, history (weights_only)
    checkpoint_best.pt     the same at the best validation accuracy
    metrics.json           closed-set val accuracy, per-class accuracy, confusion matrix, times; written
                           last, so its presence means the run is finished
    outputs/{val,test}_{logits,features,labels}.npy and {split}_paths.txt (every image, Other included;
                           Other's label is len(known classes))
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .common import OTHER, jsonable, pick_device

# ----------------------------------------------------------------------------------------------
# Atomic writes: a kill at any moment leaves either the old file or the new one, never half of one
# ----------------------------------------------------------------------------------------------


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = _tmp(path)
    # jsonable: numpy values become numbers and NaN becomes null, so the file is strict JSON for any reader
    tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def save_torch(path: str | Path, obj) -> None:
    import torch

    path = Path(path)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)


def write_history(path: str | Path, rows: list[dict]) -> None:
    import pandas as pd

    path = Path(path)
    tmp = _tmp(path)
    pd.DataFrame(rows, columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
    os.replace(tmp, path)


HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_second"]


def write_outputs(run_dir: str | Path, split: str, logits, features, labels, paths: list[str]) -> None:
    out = Path(run_dir) / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / f"{split}_logits.npy", np.asarray(logits, dtype=np.float32))
    save_npy(out / f"{split}_features.npy", np.asarray(features, dtype=np.float32))
    save_npy(out / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
    tmp = _tmp(out / f"{split}_paths.txt")
    tmp.write_text("".join(f"{p}\n" for p in paths))
    os.replace(tmp, out / f"{split}_paths.txt")


# ----------------------------------------------------------------------------------------------
# Run identity: what decides the result (not the device, the worker count or the folder's path)
# ----------------------------------------------------------------------------------------------

def data_fingerprint(data_dir: str | Path) -> dict:
    """A hash of the data set's file list and sizes: the same data under another path is the same data."""
    root = Path(data_dir)
    h = hashlib.sha256()
    counts = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        files = sorted(p.relative_to(root).as_posix() + f":{p.stat().st_size}" for p in folder.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
        counts[split] = len(files)
        h.update("\n".join(files).encode())
    manifest = root / "manifest.csv"
    if manifest.is_file():  # synthetic data: the manifest records every photo's parameters, so regenerated data differs
        h.update(hashlib.sha256(manifest.read_bytes()).digest())
    return {"sha256": h.hexdigest(), "files": counts}


def resolved_weights(weights) -> str:
    """What a `weights` setting means on this machine: "imagenet", "none", or the content hash of a weights
    file. The run cache keys on this, so a scratch run made under weights="auto" is not reused once ImageNet
    weights appear, and a changed weights file is a new run."""
    from . import models

    weights = str(weights)
    if weights == "auto":
        return models.auto_weights()
    if weights in ("imagenet", "none"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights={weights!r}: no such file; use 'auto', 'none', 'imagenet' or a weights file")
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def config_identity(config, recipe, *, arch: str) -> dict:
    """The fields of a training configuration that decide its result (the run cache's key)."""
    return {"recipe": asdict(recipe), "seed": int(config.seed), "weights": resolved_weights(config.weights), "arch": arch,
            "max_train_images": config.max_train_images, "data": data_fingerprint(config.data_dir)}


def run_name(identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{identity['recipe']['name']}-{digest[:8]}"


def check_same_identity(old: dict, new: dict, run_dir: Path) -> None:
    if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
        return
    diff = sorted(k for k in set(old) | set(new) if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True))
    if "recipe" in diff:
        diff.remove("recipe")
        diff += [f"recipe.{k}" for k in sorted(set(old.get("recipe", {})) | set(new["recipe"]))
                 if old.get("recipe", {}).get(k) != new["recipe"].get(k)]
    raise ValueError(f"{run_dir} holds a run of another configuration (differs in {diff}); "
                     "choose another run name, or delete that folder")


# ----------------------------------------------------------------------------------------------
# Closed-set metrics
# ----------------------------------------------------------------------------------------------

def closed_set_metrics(outputs: dict, known: list[str]) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true, columns: predicted) over the images
    of known classes; Other images have no logit of their own and are left to the open-set detectors."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(outputs["labels"])
    mask = labels < len(known)
    y, pred = labels[mask], np.asarray(outputs["logits"])[mask].argmax(1)
    cm = confusion_matrix(y, pred, labels=list(range(len(known))))
    support = cm.sum(1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else float("nan")) for i, c in enumerate(known)}
    return {"accuracy": float((y == pred).mean()) if len(y) else float("nan"),
            "n_known": int(mask.sum()), "n_other": int((~mask).sum()), "per_class_accuracy": per_class,
            "confusion_matrix": cm.tolist(), "classes": list(known)}


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------

class Run:
    """A run folder (see the module docstring). Cheap to create: files are read when asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no config.json); train one with "
                                    "`receiptlib train` or rl.runs.get_or_train(config)")
        self.config = read_json(self.path / "config.json")
        self.classes: list[str] = read_json(self.path / "classes.json")
        self.known_classes = [c for c in self.classes if c != OTHER]

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {'finished' if self.finished else 'unfinished'})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return (self.path / "metrics.json").is_file()

    @property
    def history(self):
        import pandas as pd

        f = self.path / "history.csv"
        return pd.read_csv(f) if f.is_file() else pd.DataFrame(columns=HISTORY_COLUMNS)

    @property
    def metrics(self) -> dict:
        f = self.path / "metrics.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing: the run is not finished; continue it with resume=True (--resume)")
        return read_json(f)

    def checkpoint_path(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise ValueError(f"which={which!r}: expected 'best' or 'last'")
        return self.path / f"checkpoint_{which}.pt"

    def outputs(self, split: str = "val") -> dict:
        """Cached float32 `logits` [N, C], `features` [N, 512], int64 `labels` [N] (Other = C), `paths`."""
        out = self.path / "outputs"
        files = {k: out / f"{split}_{k}.npy" for k in ("logits", "features", "labels")}
        if not all(f.is_file() for f in files.values()):
            raise FileNotFoundError(f"{out}: no cached outputs for split {split!r} (the run is unfinished, or the "
                                    f"data has no {split}/ folder)")
        result = {k: np.load(f, allow_pickle=False) for k, f in files.items()}
        result["paths"] = (out / f"{split}_paths.txt").read_text().splitlines()
        return result

    def load_model(self, which: str = "best", device: str = "auto"):
        """The trained model (eval mode) from checkpoint_best.pt or checkpoint_last.pt."""
        from . import models
        from .train import load_checkpoint

        arch = self.config.get("arch", models.ARCH)
        if arch not in models.ARCHITECTURES:
            raise ValueError(f"{self.path}: architecture {arch!r} is not registered in receiptlib.models.ARCHITECTURES "
                             "(import the module that defines it first)")
        ckpt = load_checkpoint(self.checkpoint_path(which), classes=self.classes, arch=arch)
        model = models.ARCHITECTURES[arch](len(self.known_classes))
        model.load_state_dict(ckpt["model"])
        model.weights_source = f"path:{self.checkpoint_path(which)}"
        return model.to(pick_device(device)).eval()

    def tta_outputs(self, split: str = "test", n: int = 8, seed: int = 0, *, device: str = "auto",
                    workers: int = 2) -> np.ndarray:
        """Logits of `n` forward passes per image under the training augmentation ([N, n, C], float32),
        in the order of `outputs(split)`: the paper's proposed majority vote (section IX). Cached as
        outputs/{split}_tta{n}_logits.npy (with _seed{seed} when seed != 0)."""
        import torch

        from . import models
        from .train import Recipe, CachedImages, TTA, augment_batch, draw_augment, stream_generator

        suffix = f"_seed{seed}" if seed else ""
        cache = self.path / "outputs" / f"{split}_tta{n}{suffix}_logits.npy"
        if cache.is_file():
            return np.load(cache, allow_pickle=False)
        recipe = Recipe(**self.config["recipe"])
        images = CachedImages(self.config["data_dir"], split, self.known_classes, recipe.image_size, workers=workers)
        expected = self.outputs(split)["paths"] if (self.path / "outputs" / f"{split}_paths.txt").is_file() else images.paths
        if images.paths != expected:
            raise ValueError(f"{self.config['data_dir']}/{split} changed since the run cached its outputs")
        model = self.load_model("best", device)
        dev = next(model.parameters()).device
        fmt = torch.channels_last if recipe.channels_last else torch.contiguous_format
        result = np.zeros((len(images), n, len(self.known_classes)), dtype=np.float32)
        with torch.inference_mode():
            for k in range(n):
                params = draw_augment(len(images), stream_generator(seed, k, TTA), recipe)
                for b in torch.arange(len(images)).split(recipe.eval_batch_size):
                    x = augment_batch(images.images[b].to(dev), {key: v[b] for key, v in params.items()})
                    _, logits = models.features_and_logits(model, x.contiguous(memory_format=fmt))
                    result[b.numpy(), k] = logits.float().cpu().numpy()
        save_npy(cache, result)
        return result

    def evaluate(self, split: str = "val") -> dict:
        """Closed-set accuracy, per-class accuracy and confusion matrix of the best model on `split`
        (known images), from the cached outputs; saved as evaluation_{split}.json in the run."""
        result = {"split": split, **closed_set_metrics(self.outputs(split), self.known_classes)}
        write_json(self.path / f"evaluation_{split}.json", result)
        return result


# ----------------------------------------------------------------------------------------------
# The run cache
# ----------------------------------------------------------------------------------------------

def get_or_train(config, *, runs_root: str | Path = "data/runs", name: str | None = None, verbose: bool = True) -> Run:
    """The finished run of `config` if there is one (same recipe, seed, weights and data), else train it,
    resuming an interrupted run of the same configuration. Name: `<recipe>-<hash of the configuration>`."""
    from . import models
    from .train import train

    identity = config_identity(config, config.resolved_recipe(), arch=models.ARCH)
    run_dir = Path(runs_root) / (name or run_name(identity))
    if (run_dir / "metrics.json").is_file():
        run = Run(run_dir)
        check_same_identity(run.config.get("identity", {}), identity, run_dir)
        if verbose:
            print(f"[runs] reusing finished run {run_dir}")
        return run
    return train(config, run_dir=run_dir, resume=True, verbose=verbose)


# The report's presets -> training configurations. "tiny": tests (seconds). "quick": the default report,
# from scratch on 2 CPU cores: the fast recipe at 64 px, 10 epochs over 2,500 photos. Measured: about 45 s per
# epoch in fp32 on an AVX2-only EPYC; bf16 hardware trains 2-3x faster. "hard": the quick sizes on the hard
# synthetic preset. "paper": the paper's 224 px.
REPORT_PRESETS = {
    "tiny": dict(recipe="fast", epochs=2, image_size=64, batch_size=16),
    "quick": dict(recipe="fast", epochs=10, image_size=64),
    "hard": dict(recipe="fast", epochs=10, image_size=64),
    "paper": dict(recipe="fast", epochs=10, image_size=224),
}


def report_config(preset: str, *, seed: int = 0, data_dir: str | Path | None = None):
    """The training configuration of a report preset; generates the synthetic data set of that preset
    (rl.synth.ensure_dataset, reused when complete) unless `data_dir` is given."""
    from .train import TrainConfig

    if preset not in REPORT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(REPORT_PRESETS)}")
    if data_dir is None:
        from .synth import ensure_dataset

        data_dir = ensure_dataset(preset, seed=seed, root="data")
    return TrainConfig(data_dir=str(data_dir), seed=seed, **REPORT_PRESETS[preset])
