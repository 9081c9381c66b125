"""receiptlib: classify phone photos of shop receipts by retail chain, and detect unknown chains (Other).

Data flows one way: synth (synthetic world) -> data (folder data sets) -> models -> train / runs ->
openset (Other detection) -> predict / timing. The notebooks only call these modules.
"""
from __future__ import annotations

import importlib

from .common import OTHER, pick_device, seed_everything

__version__ = "0.1.0"

# Submodules load on first use (`rl.synth`, `rl.train`, ...) so `import receiptlib` stays cheap.
_SUBMODULES = {"synth", "data", "models", "train", "runs", "openset", "predict", "timing", "report", "plots", "stn",
               "fast", "cli", "residual", "tuner"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'receiptlib' has no attribute {name!r}")


__all__ = ["OTHER", "pick_device", "seed_everything", "__version__", *sorted(_SUBMODULES)]
