"""The RNG part of a training checkpoint: Python, NumPy and torch states as tensors, lists and numbers, so
that `torch.load(weights_only=True)` reads them back (runs.load_checkpoint reads checkpoints)."""
from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """RNG states as tensors/lists/numbers so that torch.load(weights_only=True) reads them."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                                   int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
