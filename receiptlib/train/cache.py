"""The run cache notebooks use: a configuration's finished run when there is one, else train it; and the
training configuration of each report preset (receiptlib.presets)."""
from __future__ import annotations

from pathlib import Path

from .. import presets
from .. import runs as rruns
from ..synth import ensure_dataset
from .fit import train
from .recipe import TrainConfig


def get_or_train(config: TrainConfig, *, runs_root: str | Path = "data/runs", name: str | None = None,
                 verbose: bool = True) -> rruns.Run:
    """The finished run of `config` if there is one (same recipe, seed, weights and data), else train it,
    resuming an interrupted run of the same configuration. Name: `<recipe>-<hash of the configuration>`."""
    identity = rruns.config_identity(config, config.resolved_recipe())
    run_dir = Path(runs_root) / (name or rruns.run_name(identity))
    if (run_dir / "metrics.json").is_file():
        run = rruns.Run(run_dir)
        rruns.check_same_identity(run.config.get("identity", {}), identity, run_dir)
        if verbose:
            print(f"[runs] reusing finished run {run_dir}")
        return run
    return train(config, run_dir=run_dir, resume=True, verbose=verbose)


def report_config(preset: str, *, seed: int = 0, data_dir: str | Path | None = None) -> TrainConfig:
    """The training configuration of a report preset; generates the synthetic data set of that preset
    (rl.synth.ensure_dataset, reused when complete) unless `data_dir` is given."""
    settings = presets.get(preset).train
    if data_dir is None:
        data_dir = ensure_dataset(preset, seed=seed, root="data")
    return TrainConfig(data_dir=str(data_dir), seed=seed, **settings)
