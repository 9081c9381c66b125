"""receiptlib: classify phone photos of shop receipts by retail chain, and detect unknown chains (Other).

Data flows one way, and imports with it (tests/test_architecture.py holds the layers):
common, io, presets -> photos (reading photos, a model's input rule; no torch) -> synth (the synthetic world)
-> data (folder data sets) -> models (the architecture registry), serving (a model card, ONNX Runtime; no
torch) -> runs (run folders, read side) -> train (writes run folders) -> tta, openset (Other detection),
residual, ablation (what the classifier reads) -> stn, predict, fast, timing, bench -> report, tuner -> cli. The notebooks only call these modules.
"""
from __future__ import annotations

import importlib

from .common import OTHER, pick_device, seed_everything

__version__ = "0.1.0"

# Submodules load on first use (`rl.synth`, `rl.train`, ...) so `import receiptlib` stays cheap.
_SUBMODULES = {"common", "io", "presets", "photos", "synth", "data", "models", "serving", "runs", "train", "tta",
               "openset", "ablation", "stn", "predict", "fast", "timing", "bench", "residual", "report", "tuner", "cli"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'receiptlib' has no attribute {name!r}")


__all__ = ["OTHER", "pick_device", "seed_everything", "__version__", *sorted(_SUBMODULES)]
