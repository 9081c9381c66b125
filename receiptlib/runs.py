"""A training run folder, read side: its layout, identity, checkpoints, cached outputs and metrics.
Runs are written by receiptlib.train (train.train, train.get_or_train); this module reads them (and adds
evaluation_{split}.json when asked to evaluate).

    run = rl.runs.Run("data/runs/fast-1a2b3c4d")     # or rl.train.get_or_train(rl.train.report_config("quick"))
    run.history                      # per-epoch losses, accuracies, lr, seconds (pandas)
    run.outputs("test")              # cached logits, penultimate features, labels, paths (Other included)
    model = run.load_model("best")

Layout of `data/runs/<name>/`:
    config.json            the full configuration (recipe fields, data, seed, weights and their source, device)
    classes.json           known classes + ["Other"]
    history.csv            epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_second
    checkpoint_last.pt     model, optimizer, scheduler, scaler, epoch, RNG states, history (weights_only)
    checkpoint_best.pt     the same at the best validation accuracy
    model.safetensors      the best model's weights alone with its model card (classes, preprocessing, the
                           run's identity): what predict and export load; never unpickled (receiptlib.serving)
    metrics.json           closed-set val accuracy, per-class accuracy, confusion matrix, times; written
                           last, so its presence means the run is finished
    outputs/{train,val,test}_{logits,features,labels}.npy and {split}_paths.txt (every image, Other included;
                           Other's label is len(known classes))
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import models
from .common import OTHER, pick_device
from .io import atomic_write, read_json, write_json
from .photos import Preprocessing
from .serving import ARTEFACT_FILE, CARD_KEY, ModelCard, read_card

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_second"]


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


def resolved_weights(weights, arch: str = models.ARCH) -> str:
    """What a `weights` setting means on this machine: "imagenet", "none", or the content hash of a weights
    file. The run cache keys on this, so a scratch run made under weights="auto" is not reused once ImageNet
    weights appear, and a changed weights file is a new run."""
    weights = str(weights)
    if weights == "auto":
        return models.get_architecture(arch).auto_weights()
    if weights in ("imagenet", "none"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights={weights!r}: no such file; use 'auto', 'none', 'imagenet' or a weights file")
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def config_identity(config, recipe) -> dict:
    """The fields of a training configuration that decide its result (the run cache's key)."""
    return {"recipe": asdict(recipe), "seed": int(config.seed), "weights": resolved_weights(config.weights, config.arch), "arch": config.arch,
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
                                    "`receiptlib train` or rl.train.get_or_train(config)")
        self.config = read_json(self.path / "config.json")
        self.classes: list[str] = read_json(self.path / "classes.json")
        self.known_classes = [c for c in self.classes if c != OTHER]

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {'finished' if self.finished else 'unfinished'})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def arch(self) -> str:
        return self.config.get("arch", models.ARCH)

    @property
    def data_dir(self) -> Path:
        """The data set the run was trained on (config.json's data_dir)."""
        if not self.config.get("data_dir"):
            raise ValueError(f"{self.path}: its config.json names no data folder; pass the data folder explicitly")
        return Path(self.config["data_dir"])

    @property
    def image_size(self) -> int:
        """The square input size the model was trained at (its recipe's image_size)."""
        return int((self.config.get("recipe") or {}).get("image_size") or self.config.get("image_size") or 224)

    @property
    def normalization(self) -> dict:
        """``{"mean": ..., "std": ...}`` the model was trained with: keyword arguments of data.eval_transform and
        friends (config.json's preprocessing; its architecture's statistics for runs from before it was recorded)."""
        pre = self.config.get("preprocessing") or {}
        arch = models.get_architecture(self.arch, where=str(self.path)).normalization
        return {k: tuple(pre.get(k, arch[k])) for k in ("mean", "std")}

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
        """Cached float32 `logits` [N, C], `features` [N, D], int64 `labels` [N] (Other = C), `paths`."""
        out = self.path / "outputs"
        files = {k: out / f"{split}_{k}.npy" for k in ("logits", "features", "labels")}
        if not all(f.is_file() for f in files.values()):
            raise FileNotFoundError(f"{out}: no cached outputs for split {split!r} (the run is unfinished, or the "
                                    f"data has no {split}/ folder)")
        result = {k: np.load(f, allow_pickle=False) for k, f in files.items()}
        result["paths"] = (out / f"{split}_paths.txt").read_text().splitlines()
        return result

    @property
    def artefact_path(self) -> Path:
        """The slim inference artefact (model.safetensors, see the module docstring)."""
        return self.path / ARTEFACT_FILE

    @property
    def preprocessing(self) -> Preprocessing:
        """The input rule of the model: what every consumer (evaluation, predict, ONNX export) feeds it."""
        return Preprocessing(self.image_size, **self.normalization)

    def card(self, *, other: dict | None = None, metrics: dict | None = None) -> ModelCard:
        """The model card of this run (`serving.ModelCard`); ``other``: a thresholds document for the Other rule;
        ``metrics``: the run's metrics (default: metrics.json when the run is finished)."""
        if metrics is None:
            metrics = read_json(self.path / "metrics.json") if self.finished else {}
        identity = self.config.get("identity")
        recipe = self.config.get("recipe") or {}
        run = {"name": self.name, "recipe": self.config.get("recipe_name") or recipe.get("name"),
               "seed": self.config.get("seed"), "weights_source": self.config.get("weights_source"),
               "identity_sha256": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
               if identity else None,
               **{k: metrics[k] for k in ("best_epoch", "val_accuracy", "test_accuracy") if k in metrics}}
        return ModelCard(arch=self.arch, classes=list(self.known_classes), run=run, other=other,
                         preprocessing=self.preprocessing)

    def write_artefact(self) -> Path:
        """(Re)write model.safetensors from checkpoint_best.pt (runs trained before the artefact existed)."""
        return save_artefact(self._checkpoint_model("best"), self.artefact_path, self.card())

    def load_model(self, which: str = "best", device: str = "auto"):
        """The trained model (eval mode): "best" from model.safetensors when the run has it (the same weights as
        checkpoint_best.pt, without optimizer state: faster, and a run folder shipped without its training
        checkpoints still loads), else from checkpoint_best.pt; "last" from checkpoint_last.pt."""
        if which == "best" and self.artefact_path.is_file():
            model, card = load_artefact(self.artefact_path, device=device)
            if card.classes != self.known_classes:
                raise ValueError(f"{self.artefact_path} was trained on classes {card.classes}, but {self.path}/classes.json "
                                 f"lists {self.known_classes}; rewrite it with Run.write_artefact()")
            return model
        return self._checkpoint_model(which).to(pick_device(device)).eval()

    def _checkpoint_model(self, which: str):
        arch = models.get_architecture(self.arch, where=str(self.path))
        ckpt = load_checkpoint(self.checkpoint_path(which), classes=self.classes, arch=arch.name)
        model = arch.build(len(self.known_classes), weights="none")
        model.load_state_dict(ckpt["model"])
        model.weights_source = f"path:{self.checkpoint_path(which)}"
        return model.eval()

    def evaluate(self, split: str = "val") -> dict:
        """Closed-set accuracy, per-class accuracy and confusion matrix of the best model on `split`
        (known images), from the cached outputs; saved as evaluation_{split}.json in the run."""
        result = {"split": split, **closed_set_metrics(self.outputs(split), self.known_classes)}
        write_json(self.path / f"evaluation_{split}.json", result)
        return result


# ----------------------------------------------------------------------------------------------
# The inference artefact: weights alone, with the model card, in safetensors (no pickle)
# ----------------------------------------------------------------------------------------------

def save_artefact(model: torch.nn.Module, path: str | Path, card: ModelCard) -> Path:
    """Write ``model``'s weights alone (fp32, CPU) and its card as one safetensors file."""
    state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
             for k, v in models.unwrap(model).state_dict().items()}
    meta = {CARD_KEY: json.dumps(card.to_json(), sort_keys=True)}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; the artefact is meant to be shared like the rest

    return atomic_write(Path(path), write)


def load_artefact(path: str | Path, *, device: str = "auto") -> tuple[torch.nn.Module, ModelCard]:
    """The model (eval mode) and card of a model.safetensors file. The header is read and checked first
    (serving.read_card): a file of another kind, a pickle among them, is refused before any tensor is read."""
    path = Path(path)
    card = read_card(path)
    arch = models.get_architecture(card.arch, where=str(path))
    model = arch.build(len(card.classes), weights="none")
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors' own error type (a truncated file): name the file
        raise ValueError(f"{path}: cannot read its tensors ({type(e).__name__}: {e}); the file may be truncated, "
                         "rewrite it with Run.write_artefact()") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: its tensors do not fit a {card.arch} with {len(card.classes)} classes ({e})") from None
    model.weights_source = f"path:{path}"
    return model.to(pick_device(device)).eval(), card


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def load_checkpoint(path: str | Path, *, classes: list[str] | None = None, arch: str | None = None) -> dict:
    """A run checkpoint (weights_only), checked against the expected class list and architecture."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a receiptlib checkpoint (no 'model' entry)")
    if arch is not None and ckpt.get("arch") != arch:
        raise ValueError(f"{path} holds architecture {ckpt.get('arch')!r}, expected {arch!r}; "
                         "use a checkpoint of the same architecture or start a new run")
    if classes is not None and list(ckpt.get("classes", [])) != list(classes):
        raise ValueError(f"{path} was trained on classes {ckpt.get('classes')}, but this data has {list(classes)}; "
                         "point --data at the data the run was trained on, or start a new run")
    return ckpt
