"""The run cache notebooks use: a configuration's finished run when there is one, else train it; and the
training configuration of each report preset (receiptlib.presets)."""
from __future__ import annotations

from pathlib import Path

from .. import presets
from .. import runs as rruns
from ..synth import ensure_dataset
from ..common import pick_device
from .fit import train, write_train_outputs
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
        return upgrade(run, workers=config.workers, data_dir=config.data_dir)
    return train(config, run_dir=run_dir, resume=True, verbose=verbose)


def upgrade(run: rruns.Run, *, workers: int = 0, data_dir: str | Path | None = None) -> rruns.Run:
    """Give a finished run of an older receiptlib what a new one has: the slim artefact (model.safetensors)
    and the training photos' outputs (the distance detectors' reference). ``data_dir``: where its data is now
    (the run's identity does not depend on the path; default: the folder its config names)."""
    data_dir = Path(data_dir) if data_dir is not None else run.data_dir
    if not run.artefact_path.is_file():
        run.write_artefact()
    if not (run.path / "outputs" / "train_logits.npy").is_file() and (data_dir / "train").is_dir():
        recipe = run.config.get("recipe") or {}
        write_train_outputs(run.path, run.load_model(device="cpu"), data_dir=data_dir, known=run.known_classes,
                            image_size=run.image_size, norm=dict(run.normalization), device=pick_device("cpu"),
                            batch_size=int(recipe.get("eval_batch_size", 64)), workers=workers)
    return run


def report_config(preset: str, *, seed: int = 0, data_dir: str | Path | None = None) -> TrainConfig:
    """The training configuration of a report preset; generates the synthetic data set of that preset
    (rl.synth.ensure_dataset, reused when complete) unless `data_dir` is given."""
    settings = presets.get(preset).train
    if data_dir is None:
        data_dir = ensure_dataset(preset, seed=seed, root="data")
    return TrainConfig(data_dir=str(data_dir), seed=seed, **settings)
