"""Inside a notebook: the helper each report notebook opens with, and where its files go.

    nb = rl.report.Notebook("04_thresholds", preset=PRESET, seed=SEED, data_root=DATA_ROOT,
                            figures_dir=FIGURES_DIR, results_dir=RESULTS_DIR)

It gives the notebook its data (`nb.dataset()`), its trained run (`nb.run()`), its preset's sizes
(`nb.settings("stn", epochs=STN_EPOCHS)`), saves figures (`nb.savefig(fig, "max_logit")` ->
figures/04_max_logit.png) and finally its results (`nb.save_results({...})` -> results/04_thresholds.json).
Every notebook therefore runs standalone on a fresh clone: the library generates or trains what is missing
and reuses what exists.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import presets, synth, train
from ..common import jsonable, pick_device
from ..io import write_json
from . import plots

SECTIONS = tuple(f.name for f in dataclasses.fields(presets.Preset) if f.name != "name")


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding notebooks/ and receiptlib/ above `start` (default: the working directory), so a
    notebook finds data/, figures/ and results/ whether it runs from notebooks/ (JupyterLab, `receiptlib
    report`, `papermill 04_thresholds.ipynb out.ipynb`) or from the root (`papermill notebooks/04...`).
    Outside a checkout: the working directory itself."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "receiptlib").is_dir():
            return folder
    return here


def preset_dir(kind: str, preset: str, root: str | Path | None = None) -> Path:
    """Default folder of a notebook's figures or results (kind "figures" or "results"): <root>/<kind> for the
    report's own preset (presets.REPORT_PRESET: committed, summarised in the README), <root>/<kind>/<preset>
    for any other, so a run on another preset never overwrites the report's files."""
    base = Path(root) if root is not None else project_root()
    return base / kind if preset == presets.REPORT_PRESET else base / kind / preset


def settings(preset: str, section: str, **overrides) -> dict:
    """One section of a preset's settings (rl.presets: synth, train, stn, bench, residual, paper_recipe) with
    the overrides that are not None applied: a notebook parameter left at None takes its preset's value.
    An override of a tuple setting may be a list or a comma-separated string (papermill passes no tuples)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown settings section {section!r}; choose one of {list(SECTIONS)}")
    base = getattr(presets.get(preset), section)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"preset {preset!r} has no {section} setting(s) {unknown}; its settings: {sorted(base)}")
    resolved = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(base[key], tuple):
            value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        resolved[key] = value
    return resolved


def shown_path(path: str | Path) -> str:
    """`path` relative to the project root when it lies inside it (results do not name the checkout's folder)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)


def map_strings(value, change, *, keep=lambda key: False):
    """``change`` applied to every string in a JSON-like document, except under the dict keys ``keep`` picks."""
    if isinstance(value, dict):
        return {k: v if keep(k) else map_strings(v, change, keep=keep) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, change, keep=keep) for v in value]
    return change(value) if isinstance(value, str) else value


def project_prefix(root: str | Path | None = None) -> re.Pattern:
    """The project root followed by a separator, at a path's start: also inside a string
    ("imagenet:/…/weights.pth"), never in the middle of another path."""
    return re.compile(r"(?<![\w./-])" + re.escape(str(Path(root).resolve() if root else project_root()) + os.sep))


def relative_paths(value):
    """Absolute paths inside the project, anywhere in a results document, made relative to the project root:
    results do not name the folder of the checkout that produced them."""
    prefix = project_prefix()
    return map_strings(value, lambda s: prefix.sub("", s))


@dataclass
class Notebook:
    """What a report notebook needs from its parameters cell, in one object."""

    name: str                      # "NN_topic": prefix of figures, name of the results file
    preset: str = presets.REPORT_PRESET    # synthetic data preset and matching training preset
    seed: int = 0
    data_root: str | Path | None = None    # synthetic data sets and runs/ live here; None: <project>/data
    data_dir: str | Path | None = None     # a folder of real photos in the same layout replaces the synthetic data
    figures_dir: str | Path | None = None  # None: preset_dir("figures", preset)
    results_dir: str | Path | None = None  # None: preset_dir("results", preset)
    started: float = field(default_factory=time.time, repr=False)

    def __post_init__(self):
        root = project_root()
        self.data_root = Path(self.data_root) if self.data_root is not None else root / "data"
        given = {"figures": self.figures_dir, "results": self.results_dir}
        self.figures_dir, self.results_dir = (Path(given[kind]) if given[kind] is not None else
                                              preset_dir(kind, self.preset, root) for kind in ("figures", "results"))
        plots.setup()
        # Python's and NumPy's global generators: figures that draw from them (seaborn's stripplot jitter) come
        # out the same on every run. The library's own randomness has seeded generators of its own.
        random.seed(self.seed)
        np.random.seed(self.seed)

    def settings(self, section: str, **overrides) -> dict:
        """This preset's settings of `section` with the non-None overrides applied (see `settings`), e.g.
        ``nb.settings("stn", epochs=STN_EPOCHS)`` for a parameter that defaults to None."""
        return settings(self.preset, section, **overrides)

    def dataset(self) -> Path:
        """The data folder: DATA_DIR when given, else the synthetic preset (generated once, then reused)."""
        if self.data_dir is not None:
            path = Path(self.data_dir)
            if not (path / "train").is_dir():
                raise FileNotFoundError(f"DATA_DIR={str(path)!r} has no train/ folder; expected train/, val/, test/ with one subfolder per chain")
            return path
        return synth.ensure_dataset(self.preset, seed=self.seed, root=self.data_root)

    def train_config(self, **overrides):
        """The training configuration of this preset (rl.train.report_config), with overrides."""
        config = train.report_config(self.preset, seed=self.seed, data_dir=self.dataset())
        return dataclasses.replace(config, **overrides) if overrides else config

    def run(self, **overrides):
        """The trained run of this preset: reused when it exists, trained otherwise."""
        return train.get_or_train(self.train_config(**overrides), runs_root=self.data_root / "runs")

    def savefig(self, fig, name: str) -> Path:
        return plots.savefig(fig, f"{self.name[:2]}_{name}", self.figures_dir)

    def save_results(self, results: dict) -> Path:
        """Write <results_dir>/<name>.json with the preset, seed, device and date it was produced with."""
        device = pick_device("auto")
        meta = {
            "notebook": self.name,
            "preset": self.preset,
            "seed": self.seed,
            "data_dir": shown_path(self.data_dir) if self.data_dir is not None else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.time() - self.started, 1),
        }
        self.results_dir.mkdir(parents=True, exist_ok=True)
        # jsonable first: Path values become strings, which relative_paths then shortens
        return write_json(self.results_dir / f"{self.name}.json", relative_paths(jsonable({"meta": meta, **results})))
