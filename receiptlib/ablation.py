"""Cue ablation: what the classifier reads. Test photos with the receipt's header (its top down to the logo's
bottom) or its body masked as blank paper, through the trained model; the regions come from the synthetic
manifest's `header_quad` and `body_quad` (where the generator put them), so real photos cannot be ablated."""
from __future__ import annotations

import numpy as np
import torch

from . import models
from .common import wilson_interval
from .data import photo_table
from .io import save_npy
from .photos import mask_quads, parse_quad, read_image
from .runs import Run

REGIONS = ("header", "body")


def masked_logits(run: Run, region: str, split: str = "test", *, device: str = "auto",
                  batch_size: int = 64) -> np.ndarray:
    """Logits [N, C] of `split`'s photos (in `run.outputs(split)` order) with `region` masked. Cached as
    outputs/{split}_mask-{region}_logits.npy; a miss computes every region in one pass, so each photo is
    decoded once."""
    if region not in REGIONS:
        raise ValueError(f"region={region!r}: expected one of {REGIONS}")
    caches = {r: run.path / "outputs" / f"{split}_mask-{r}_logits.npy" for r in REGIONS}
    if caches[region].is_file():
        return np.load(caches[region], allow_pickle=False)
    paths = run.outputs(split)["paths"]
    table = photo_table(run.data_dir, paths, missing="keep")
    for column in ("header_quad", "body_quad"):
        if column not in table.columns or table[column].isna().all():
            raise ValueError(f"{run.data_dir / 'manifest.csv'}: no {column} column; cue ablation needs the synthetic "
                             "generator's manifest (format 3 or later)")
    pre = run.preprocessing
    model = run.load_model("best", device)
    dev = next(model.parameters()).device
    out = {r: np.zeros((len(paths), len(run.known_classes)), np.float32) for r in REGIONS}
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = {r: [] for r in REGIONS}
            for i in range(start, min(start + batch_size, len(paths))):
                img = read_image(run.data_dir / table.path[i])
                quads = {r: parse_quad(table[f"{r}_quad"][i], img.size, where=f"{table.path[i]}: {r}_quad") for r in REGIONS}
                for r in REGIONS:
                    masked = mask_quads(img, [quads[r]], list(quads.values()))
                    batch[r].append(pre.normalise(np.asarray(pre.resized(masked))))
            for r in REGIONS:
                _, logits = models.features_and_logits(model, torch.from_numpy(np.stack(batch[r])).to(dev))
                out[r][start:start + len(batch[r])] = logits.float().cpu().numpy()
    for r in REGIONS:
        save_npy(caches[r], out[r])
    return out[region]


def cue_accuracy(run: Run, split: str = "test", *, device: str = "auto") -> dict:
    """Closed-set accuracy on `split`'s known photos as they are and with each region masked: {condition:
    {"accuracy", "n", "low", "high"}} (Wilson 95%); conditions "none", "header", "body"."""
    outputs = run.outputs(split)
    known = outputs["labels"] < len(run.known_classes)
    if not known.any():
        raise ValueError(f"{run.path}: split {split!r} has no known photos")
    result = {"none": outputs["logits"]}
    result.update({region: masked_logits(run, region, split, device=device) for region in REGIONS})
    table = {}
    for name, logits in result.items():
        right = int((logits[known].argmax(1) == outputs["labels"][known]).sum())
        low, high = wilson_interval(right, int(known.sum()))
        table[name] = {"accuracy": right / int(known.sum()), "n": int(known.sum()), "low": low, "high": high}
    return table
