"""Training (paper section V): writes run folders that receiptlib.runs reads.

    config = rl.train.TrainConfig(data_dir="data/synth-quick-seed0", recipe="fast", epochs=8)
    run = rl.train.train(config, run_dir="data/runs/my-run")         # or rl.train.get_or_train(config)

recipe.py        Recipe, RECIPES ("paper", "fast"), TrainConfig: what decides a run
augment.py       the fast pipeline's batched rotation and colour jitter on tensors
sources.py       training batches: the uint8 image cache or per-image torchvision augmentation
loop.py          train_one_epoch, evaluate, optimiser / EMA / schedule builders, run_epoch (the epoch driver)
distributed.py   torchrun: DistributedDataParallel, gloo on CPU, nccl on GPU
checkpoint.py    RNG states inside checkpoints (weights_only)
fit.py           train(): a resumable run folder from a TrainConfig
cache.py         get_or_train (the run cache) and report_config (a preset's TrainConfig)
__main__.py      `torchrun --nproc_per_node=K -m receiptlib.train ...`
"""
from .augment import augment_batch, colour_matrices, draw_augment, normalize_batch
from .cache import get_or_train, report_config, upgrade
from .checkpoint import rng_state, set_rng_state
from .distributed import Dist, setup_dist
from .fit import train, write_history, write_outputs, write_train_outputs
from .loop import (NonFiniteLoss, amp_dtype, batch_plan, evaluate, make_ema, make_optimizer, make_scheduler,
                   run_epoch, train_one_epoch, warmup_cosine)
from .recipe import RECIPES, Recipe, TrainConfig, get_recipe
from .sources import CachedImages, CachedTrain, PerImageTrain, subset_indices

__all__ = ["Recipe", "RECIPES", "get_recipe", "TrainConfig", "augment_batch", "colour_matrices", "draw_augment",
           "normalize_batch", "CachedImages", "CachedTrain", "PerImageTrain", "subset_indices", "train_one_epoch",
           "evaluate", "run_epoch", "make_optimizer", "make_ema", "make_scheduler", "warmup_cosine", "batch_plan", "amp_dtype",
           "NonFiniteLoss", "Dist", "setup_dist", "rng_state", "set_rng_state", "train", "write_history",
           "write_outputs", "write_train_outputs", "get_or_train", "report_config", "upgrade"]
