"""The synthetic receipt-photo world: the default data set, since the competition's photos are not public.

chains (identities of known and unknown chains, lookalikes) -> render (a flat receipt) -> photo (a phone
photo of it, every distortion recorded) -> writer (presets, splits, folders, manifest, resumable generation)
-> summary (the share of photos each distortion touches, and known-vs-Other rates: the confounds).
"""
from __future__ import annotations

from .chains import Chain, World, make_world
from .photo import DISTORTIONS, photograph
from .render import render_receipt
from .summary import distortion_shares, known_vs_other, touched
from .writer import (PRESETS, SynthConfig, dataset_dir, ensure_dataset, generate, hard_other_examples, is_complete, make_photo,
                     plan, world_of)

__all__ = ["SynthConfig", "PRESETS", "generate", "ensure_dataset", "dataset_dir", "is_complete", "make_world", "World",
           "Chain", "render_receipt", "photograph", "DISTORTIONS", "make_photo", "plan", "world_of",
           "hard_other_examples", "distortion_shares", "known_vs_other", "touched"]
