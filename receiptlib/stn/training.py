"""The training procedure: "resnet" (no transformer), "joint" (the paper) and "staged" (classifier first).

    recipe = STNRecipe(epochs=6, stage2_epochs=3)
    res = train_stn("data/synth-quick-seed0", recipe, mode="staged", seed=0)   # an STNResult
    res.model, res.history, res.snapshots

Every epoch goes through ``train.run_epoch``, the epoch driver of plain training, so ResNet alone here
trains as ``receiptlib train`` does; this module adds the parameter groups (the localisation net's own rate
and gradient clipping) and the branch of staged training off the ResNet run after stage 1.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import train as rtrain
from ..common import STN_INIT, pick_device, seed_everything, stream_seed
from ..data import ReceiptFolder, denormalize, known_classes
from .model import MODES, TRANSFORMS, STNClassifier, build_model, stage2_model, theta_scale_angle


@dataclass
class STNRecipe:
    """One configuration of the section VII experiment, shared by the three modes (same data, same budget).

    The classifier's optimisation is a ``train.RECIPES`` recipe (default "fast": AdamW, linear warm-up then
    cosine, label smoothing, bf16 autocast where the hardware has bf16, batched rotation and colour jitter;
    "paper": SGD with momentum); its optimiser and lr are the base the multipliers below apply to. The recipe's
    EMA of the weights is not used here: the transformer's snapshots show the trained weights themselves.

    The defaults are generic (small enough for a CPU; the tests rely on them); the presets name the report's
    setting: ``rl.presets.get(name).stn`` (STNRecipe fields plus the seeds).
    """

    recipe: str = "fast"            # train.RECIPES entry for optimiser, schedule, augmentation, precision
    image_size: int = 64            # px the classifier sees (out_size)
    input_size: int = 128           # px of the full-resolution input the transformer samples from (2 x image_size)
    loc_size: int = 48              # px the localisation net sees: enough to find a receipt, cheap
    epochs: int = 6                 # every mode trains this many epochs in total (staged and resnet: stage 1
                                    # + stage 2; joint: all of them with the transformer)
    batch_size: int | None = None   # None: the recipe's
    lr: float | None = None         # None: the recipe's peak rate for the classifier
    transform: str = "rts"          # "rts": the slides' restriction (no shear); "affine": the paper's 6 numbers
    loc_lr_mult: float = 0.1        # localisation net rate = lr x this in joint and staged alike, so staging is
                                    # the only difference; Jaderberg et al. also give it a lower rate: a large
                                    # one makes the transform jump faster than the classifier can follow
    stage2_epochs: int = 3          # staged: the last epochs, with the transformer (stage 1 = epochs - this)
    stage2_classifier_lr_mult: float = 1.0  # staged, stage 2: the classifier's rate as a multiple of the ResNet
                                    # run's schedule it branched off (1: staged differs from ResNet alone only
                                    # by the transformer); of the lr when stage1= is a classifier trained
                                    # elsewhere (then stage 2 has a warm-up + cosine of its own)
    freeze_epochs: int = 0          # staged: first stage-2 epochs with the classifier frozen, so the transformer
                                    # learns to serve a fixed classifier before both move (costs the classifier
                                    # those epochs of training against ResNet alone)
    scale_range: tuple[float, float] = (0.4, 1.25)  # guard: zoom in at most 2.5x, out at most 1.25x
    max_translation: float = 0.5    # guard: crop centre within the middle half of each axis ([-1, 1] units)
    guard_weight: float = 1.0       # weight of the soft guard in the loss ("affine" only)
    loc_max_grad_norm: float | None = 1.0  # clip the localisation net's gradient norm: one bad batch can
                                    # otherwise throw theta into a saturated corner of the bounds (tanh),
                                    # where its gradient vanishes and the transformer never comes back
    weights: str = "none"           # classifier init (models.resnet18): "auto" takes ImageNet when present
    max_train_images: int | None = None  # a fixed random subset of train/ (cheaper runs)
    overrides: dict = field(default_factory=dict)  # other train.Recipe fields, e.g. {"rotation": 0.0}

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"STNRecipe.transform={self.transform!r}: expected one of {sorted(TRANSFORMS)}")
        if not 0 <= self.stage2_epochs <= self.epochs:
            raise ValueError(f"STNRecipe.stage2_epochs={self.stage2_epochs}: expected 0..epochs={self.epochs}")
        if not 0 <= self.freeze_epochs <= self.stage2_epochs:
            raise ValueError(f"STNRecipe.freeze_epochs={self.freeze_epochs}: expected 0..stage2_epochs={self.stage2_epochs}")
        if self.input_size < self.image_size:
            raise ValueError(f"STNRecipe.input_size={self.input_size} < image_size={self.image_size}: the transformer "
                             "samples from the larger input; give input_size >= image_size (2x recommended)")
        self.scale_range = tuple(float(s) for s in self.scale_range)

    def train_recipe(self):
        """The ``train.Recipe`` used for the classifier (data cached at ``input_size``)."""
        top = {"epochs": self.epochs, "image_size": self.input_size}
        top.update({k: getattr(self, k) for k in ("batch_size", "lr") if getattr(self, k) is not None})
        return rtrain.get_recipe(self.recipe, **top, **self.overrides)


# ----------------------------------------------------------------------------------------------
# The optimiser: the classifier recipe's, with a clipped localisation net at its own rate
# ----------------------------------------------------------------------------------------------

def param_groups(model: STNClassifier, lr: float, *, classifier_mult: float, loc_mult: float,
                 loc_max_grad_norm: float | None = None) -> list[dict]:
    """Two parameter groups: the classifier at lr x classifier_mult, the localisation net at lr x loc_mult
    (its gradient norm clipped to ``loc_max_grad_norm`` by the optimiser of ``make_optimizer``)."""
    return [{"params": list(model.classifier.parameters()), "lr": lr * classifier_mult, "name": "classifier"},
            {"params": list(model.stn.parameters()), "lr": lr * loc_mult, "name": "localisation",
             "max_grad_norm": loc_max_grad_norm}]


class _ClipGroups:
    """Before each step, clip the gradient norm of every parameter group with a ``max_grad_norm`` entry
    (jointly over the groups sharing its ``name``: ``make_optimizer`` splits a group into decayed weights and
    undecayed biases / BatchNorm).

    Lets ``train.train_one_epoch`` (which knows nothing of groups) train a transformer whose localisation
    net must not take one huge step; the classifier's group is left unclipped, as in the plain recipe.
    """

    def step(self, closure=None):
        clip: dict = {}
        for i, group in enumerate(self.param_groups):
            if group.get("max_grad_norm"):
                _, params = clip.setdefault(group.get("name", i), (group["max_grad_norm"], []))
                params.extend(p for p in group["params"] if p.grad is not None)
        for max_norm, params in clip.values():
            if params:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
        return super().step(closure)


class ClippedSGD(_ClipGroups, torch.optim.SGD):
    """SGD with the localisation net's gradient clipping (``_ClipGroups``)."""


class ClippedAdamW(_ClipGroups, torch.optim.AdamW):
    """AdamW with the localisation net's gradient clipping (``_ClipGroups``)."""


def make_optimizer(groups, base) -> torch.optim.Optimizer:
    """The classifier recipe's optimiser over ``groups`` (a module's parameters, or ``param_groups``), built
    by ``train.make_optimizer`` as for a plain run (so ResNet alone here trains as ``receiptlib train``
    does), with the clipping classes: group entries (lr, name, max_grad_norm) are kept and the localisation
    net's gradient is clipped. Frozen parameters stay in (staged training unfreezes them later)."""
    return rtrain.make_optimizer(list(groups), base, sgd=ClippedSGD, adamw=ClippedAdamW)


# ----------------------------------------------------------------------------------------------
# Staged training's branch off the ResNet run after stage 1
# ----------------------------------------------------------------------------------------------

@dataclass
class STNResult:
    """What ``train_stn`` returns: the trained model, per-epoch history rows and the transformer snapshots."""

    model: nn.Module
    history: list[dict]
    snapshots: dict  # "epochs" [E], "theta" [E, n, 2, 3], "outputs" uint8 [E, n, S, S, 3] (transformer modes)
    stage1_state: dict | None = None  # staged, resnet: the classifier's state dict at the end of stage 1
    stage1: dict | None = None  # the ResNet run after stage 1 (weights + optimiser moments): train_stn's stage1=


STAGE1_FORMAT = "receiptlib.stn.stage1/1"


def stage1_checkpoint(classifier: nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int, steps: int,
                      seed: int, train_recipe) -> dict:
    """The ResNet run after stage 1, for staged training to branch off: the classifier's weights, its
    optimiser moments by parameter name (tensors only: no pickles) and where in which run it was taken."""
    moments = {name: {k: v.detach().clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
               for name, p in classifier.named_parameters() if p in optimizer.state}
    return {"format": STAGE1_FORMAT, "epochs": int(epochs), "steps": int(steps), "seed": int(seed),
            "train_recipe": asdict(train_recipe), "moments": moments,
            "model": {k: v.detach().clone() for k, v in classifier.state_dict().items()}}


def check_stage1(stage1: dict, *, epochs: int, steps: int, seed: int, train_recipe) -> None:
    """A branch continues the ResNet run's schedule: it must come from the same run at the same epoch."""
    want = {"epochs": epochs, "steps": steps, "seed": seed, "train_recipe": asdict(train_recipe)}
    wrong = [k for k, v in want.items() if stage1.get(k) != v]
    if wrong:
        raise ValueError("stage1= is a stage-1 checkpoint of another run ("
                         + ", ".join(f"{k}: {stage1.get(k)!r} here {want[k]!r}" for k in wrong if k != "train_recipe")
                         + ("; another train recipe" if "train_recipe" in wrong else "")
                         + "); train staged without stage1= or pass the ResNet run of this recipe and seed")


def load_classifier_moments(optimizer: torch.optim.Optimizer, classifier: nn.Module, moments: dict) -> None:
    """Put a ``stage1_checkpoint``'s optimiser moments into ``optimizer``'s state for ``classifier``."""
    missing = [name for name, _ in classifier.named_parameters() if name not in moments]
    if moments and missing:
        raise ValueError(f"stage-1 optimiser moments lack {len(missing)} classifier parameters, e.g. {missing[:3]}")
    for name, p in classifier.named_parameters():
        if name in moments:
            # "step" stays where torch keeps it (CPU unless the optimiser is capturable/fused): on the GPU
            # every step would sync to read it
            optimizer.state[p] = {k: v.clone() if k == "step" else v.to(p.device, copy=True)
                                  for k, v in moments[name].items()}


def advance_schedule(schedule, *, epochs: int, steps: int) -> None:
    """Move a fresh (scheduler, per_step) on by ``epochs`` epochs of ``steps`` batches (per-step schedules)
    or ``epochs`` epoch steps (per-epoch ones), to where the branched-off run's schedule stood."""
    scheduler, per_step = schedule
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": deliberate here
        warnings.simplefilter("ignore")
        for _ in range(epochs * steps if per_step else epochs):
            scheduler.step()


# ----------------------------------------------------------------------------------------------
# train_stn
# ----------------------------------------------------------------------------------------------

def _to_uint8_images(x: torch.Tensor) -> np.ndarray:
    return (denormalize(x.detach().float().cpu()) * 255).round().byte().permute(0, 2, 3, 1).numpy()


@torch.inference_mode()
def _theta_summary(model: STNClassifier, val, idx: torch.Tensor, dev, batch_size: int) -> dict:
    """Mean zoom and |rotation| of the transformer over the known val images (collapse shows up here)."""
    model.eval()
    thetas = []
    for x, _ in val.batches(idx, batch_size):
        model.crop(x.to(dev))
        thetas.append(model.theta.cpu())
    scale, angle = theta_scale_angle(torch.cat(thetas))
    return {"theta_scale_mean": float(scale.mean()), "theta_scale_min": float(scale.min()),
            "theta_abs_angle_mean": float(np.abs(angle).mean())}


def train_stn(data_dir: str | Path, recipe: STNRecipe | None = None, *, mode: str = "staged", seed: int = 0,
              device: str = "auto", workers: int = 2, stage1: nn.Module | dict | str | Path | None = None,
              snapshot_images: torch.Tensor | None = None, caches: dict | None = None,
              on_stage2_start=None, verbose: bool = True) -> STNResult:
    """Train one mode on ``data_dir`` for ``recipe.epochs`` epochs in total; returns an ``STNResult``.

    - "resnet": the classifier alone on the input resized to image_size, ``epochs`` epochs under one
      warm-up + cosine schedule.
    - "staged": branches off that ResNet run after stage 1 (``epochs - stage2_epochs`` epochs): a fresh
      identity transformer goes in front of the classifier and stage 2 continues the run's schedule and
      optimiser moments for ``stage2_epochs``, the classifier at its rate x stage2_classifier_lr_mult (frozen
      for the first ``freeze_epochs``), the localisation net at lr x loc_lr_mult (joining the schedule where
      it stands: no warm-up of its own, its gradient norm clipped). With the defaults, staged
      and ResNet alone differ only by the transformer. ``stage1``: the ResNet run's ``STNResult.stage1``
      (same seed: the same stage 2 as training stage 1 here, so ``compare`` trains it once), or a classifier
      trained elsewhere (model, state dict or weights file), then stage 2 gets a new warm-up + cosine.
    - "joint": transformer + classifier from the start (section VII as the paper did it); classifier at
      the recipe's lr, localisation net at lr x loc_lr_mult.

    Reuses receiptlib.train's pieces: cached uint8 images, batched augmentation and ``run_epoch`` (whose
    ``train_one_epoch`` adds ``regularisation()``, the guard). ``snapshot_images`` (normalised, input_size)
    are passed through the transformer after every epoch (and before the first) for the slides' grid.
    ``caches``: {"train": CachedImages, "val": CachedImages} to share decoded images between calls.
    """
    recipe = recipe or STNRecipe()
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    say = print if verbose else (lambda *a, **k: None)
    base = recipe.train_recipe()
    dev = pick_device(device)
    dtype = rtrain.amp_dtype(base.amp, dev)
    known = known_classes(data_dir)
    caches = caches if caches is not None else {}
    if "train" not in caches:
        n_all = len(ReceiptFolder(data_dir, "train", classes=known).samples)
        caches["train"] = rtrain.CachedImages(data_dir, "train", known, recipe.input_size, workers=workers,
                                              indices=rtrain.subset_indices(n_all, recipe.max_train_images, seed))
    if "val" not in caches:
        caches["val"] = rtrain.CachedImages(data_dir, "val", known, recipe.input_size, workers=workers)
    source = rtrain.CachedTrain(caches["train"], base, seed, dev)
    val = caches["val"]
    known_val = torch.nonzero(val.labels < len(known)).flatten()
    criterion = nn.CrossEntropyLoss(label_smoothing=base.label_smoothing)
    memory_format = torch.channels_last if base.channels_last else torch.contiguous_format

    seed_everything(seed)
    history: list[dict] = []
    snaps: dict[str, list] = {"epochs": [], "theta": [], "outputs": []}
    stage1_state = None

    def snapshot(model: nn.Module, epoch: int) -> None:
        if snapshot_images is None or not isinstance(model, STNClassifier):
            return
        was_training = model.training
        model.eval()
        out = model.transformed(snapshot_images.to(dev))
        model.train(was_training)
        snaps["epochs"].append(epoch)
        snaps["theta"].append(model.theta.cpu().numpy())
        snaps["outputs"].append(_to_uint8_images(out))

    steps = len(rtrain.batch_plan(len(source), base.batch_size, seed, 0))

    def run_stage(model: nn.Module, optimizer, n_epochs: int, stage: str, first_epoch: int, freeze: int = 0,
                  schedule=None) -> None:
        """``schedule``: (scheduler, per_step) to continue; None: a new one over these ``n_epochs``."""
        schedule = schedule or rtrain.make_scheduler(optimizer, base, steps, n_epochs)
        for k in range(n_epochs):
            epoch = first_epoch + k
            if isinstance(model, STNClassifier):
                model.freeze_classifier = k < freeze
                model.classifier.requires_grad_(not model.freeze_classifier)
            lrs = {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(optimizer.param_groups)}
            done = rtrain.run_epoch(model, criterion, optimizer, source, epoch, seed=seed, batch_size=base.batch_size,
                                    device=dev, schedule=schedule, dtype=dtype, channels_last=base.channels_last,
                                    val_batches=lambda: val.batches(known_val, base.eval_batch_size))
            # history.csv keeps its columns: run_epoch's, less images_per_second, and stn's in between
            row = {"mode": mode, "seed": seed, "epoch": done["epoch"], "stage": stage,
                   "classifier_frozen": bool(getattr(model, "freeze_classifier", False)),
                   **{c: done[c] for c in ("train_loss", "train_acc", "val_loss", "val_acc")},
                   "lr": lrs.get("classifier", next(iter(lrs.values()))),
                   "loc_lr": lrs.get("localisation", float("nan")), "seconds": done["seconds"]}
            if isinstance(model, STNClassifier):
                row.update(_theta_summary(model, val, known_val, dev, base.eval_batch_size))
            history.append(row)
            say(f"[stn] {mode} seed {seed} epoch {epoch + 1}/{recipe.epochs} ({stage}): train loss "
                f"{row['train_loss']:.3f} acc {row['train_acc']:.3f} | val acc {row['val_acc']:.4f} | {row['seconds']:.0f} s")
            snapshot(model, epoch + 1)
        if isinstance(model, STNClassifier):
            model.freeze_classifier = False
            model.classifier.requires_grad_(True)

    n1 = recipe.epochs - recipe.stage2_epochs
    k2 = recipe.stage2_epochs
    if mode == "resnet" and stage1 is not None:
        raise ValueError("mode='resnet' trains its own stage 1; stage1= is for mode='staged'")
    if mode in ("resnet", "staged") and stage1 is None:
        # The ResNet run: one warm-up + cosine over all `epochs`. Staged training branches off it after n1
        # epochs (its stage 1 is this run's first n1 epochs), so the two differ only by the transformer.
        model = build_model(recipe, len(known), "resnet").to(dev, memory_format=memory_format)
        optimizer = make_optimizer(model.parameters(), base)
        schedule = rtrain.make_scheduler(optimizer, base, steps, recipe.epochs)
        run_stage(model, optimizer, n1, "stage1" if k2 else "resnet", 0, schedule=schedule)
        stage1 = stage1_checkpoint(model.classifier, optimizer, epochs=n1, steps=steps, seed=seed, train_recipe=base)
        stage1_state = stage1["model"]
        if mode == "resnet":
            run_stage(model, optimizer, k2, "stage2", n1, schedule=schedule)  # no-op when k2 == 0
            return STNResult(model, history, {}, stage1_state, stage1)
    branch = isinstance(stage1, dict) and stage1.get("format") == STAGE1_FORMAT  # a ResNet run's stage 1
    if mode == "staged":
        if branch:
            check_stage1(stage1, epochs=n1, steps=steps, seed=seed, train_recipe=base)
        # the transformer's random init is seeded apart from stage 1, so stage 2 is the same whether stage 1
        # ran in this call or was handed over (compare trains stage 1 once for two modes)
        torch.manual_seed(stream_seed(seed, n1, STN_INIT))
        model = stage2_model(stage1["model"] if branch else stage1, recipe, len(known)).to(dev, memory_format=memory_format)
        stage1_state = stage1_state or {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
        if on_stage2_start is not None:
            on_stage2_start(model)
        snapshot(model, n1)
        groups = param_groups(model, base.lr, classifier_mult=recipe.stage2_classifier_lr_mult,
                              loc_mult=recipe.loc_lr_mult, loc_max_grad_norm=recipe.loc_max_grad_norm)
        optimizer = make_optimizer(groups, base)
        if branch:  # continue the ResNet run: its optimiser moments for the classifier, its schedule's position
            # (the localisation net joins there, without a warm-up of its own; its gradient norm is clipped)
            load_classifier_moments(optimizer, model.classifier, stage1["moments"])
            schedule = rtrain.make_scheduler(optimizer, base, steps, recipe.epochs)
            advance_schedule(schedule, epochs=n1, steps=steps)
        else:  # a classifier trained elsewhere: a new warm-up + cosine over stage 2
            schedule = None
        run_stage(model, optimizer, k2, "stage2", n1, freeze=recipe.freeze_epochs, schedule=schedule)
    else:  # joint
        model = build_model(recipe, len(known), "joint").to(dev, memory_format=memory_format)
        snapshot(model, 0)
        groups = param_groups(model, base.lr, classifier_mult=1.0, loc_mult=recipe.loc_lr_mult,
                              loc_max_grad_norm=recipe.loc_max_grad_norm)
        run_stage(model, make_optimizer(groups, base), recipe.epochs, "joint", 0)
    snapshots = {k: np.stack(v) for k, v in snaps.items()} if snaps["epochs"] else {}
    return STNResult(model, history, snapshots, stage1_state, stage1 if branch else None)
