"""The arms of section VII's experiment, on one data set and one stage-1 classifier.

    recipe = STNRecipe()                                   # recipe.py; the quick preset's: presets.get("quick").stn
    views = Views.load("data/synth-quick-seed0", recipe)   # raw views of every split, decoded once
    stage1 = train_stage1(views, recipe)                   # or stage1_from_run(run, recipe, views): notebook 03's
    result = train_arm("staged", views, recipe, stage1=stage1, seed=0, loc_mult=0.3)   # an ArmResult

Arms (``ARMS``), all from the same stage-1 classifier on the same data with the same number of stage-2 steps:
- "finetune" (A): no transformer; the stage-1 classifier fine-tuned for stage 2's steps at the low rate.
- "identity" (A'): the same with a transformer frozen at the identity in front: it must reproduce A within
  training noise, or the sampler adds an artefact (padding, normalisation, resampling).
- "joint" (B): transformer and classifier trained together from the first step of stage 2, from the stage-1
  classifier, the whole localisation net at the classifier's stage-2 rate: the paper's one rate for both, but
  from the shared stage-1 start (``joint_start="imagenet"``: from the pretrained backbone for stage 1's steps +
  stage 2's, the paper's start). At one rate its summed move (``transform_move``) is far below O(0.5): the
  conclusion says so.
- "staged" (C): the stage-1 classifier; first the transformer alone with the classifier frozen, then both, the
  classifier at the low rate. Jaderberg et al.'s and the paper's proposed fix.
- "staged_norot" (C without rotation augmentation in stage 2): the slides' claim that the transformer supplies
  the invariance the augmentation otherwise has to.

Why the localisation net has a rate of its own: AdamW moves each parameter by about its rate per step, and the
transform's parameters are the head's outputs, which move by up to rate x (1 + the head input's L1 norm)
(``head_gain``) per step. The localisation net's rate is set so that over the transformer-only phase the
transform can move by ``loc_move`` (summed rate x head gain: ``summed_rate``, recorded per arm as
``transform_move``), and the multiplier of it is chosen on val from ``loc_lr_mults`` (``choose_loc_mult``). Its
feature layers run at a tenth of the head's rate (``loc_groups``): at the head's rate their moves add up and
throw the transform to its bounds within a few steps (measured: docs/decisions.md, section VII).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data as rdata
from .. import models
from .. import train as rtrain
from ..common import STN_INIT, pick_device, seed_everything, stream_seed
from ..runs import Run
from .model import ResizeClassifier, SpatialTransformer, STNClassifier, theta_scale_angle
from .recipe import STNRecipe, Views, batches, steps_per_epoch, summed_rate, warmup_cosine

ARMS = ("finetune", "identity", "joint", "staged", "staged_norot")
STN_ARMS = ("identity", "joint", "staged", "staged_norot")  # the arms with a transformer in front


# ----------------------------------------------------------------------------------------------
# Models, schedules, the step loop
# ----------------------------------------------------------------------------------------------

def new_classifier(recipe: STNRecipe, num_classes: int) -> nn.Module:
    return models.build(recipe.arch, num_classes, weights=recipe.weights)


def new_transformer(recipe: STNRecipe, aspect: float) -> SpatialTransformer:
    return SpatialTransformer(recipe.transform, scale_range=recipe.scale_range,
                              max_translation=recipe.max_translation, aspect=aspect)


def wrap(classifier: nn.Module, recipe: STNRecipe, stn: SpatialTransformer | None = None) -> nn.Module:
    """``ResizeClassifier`` (no transformer) or ``STNClassifier`` around ``classifier``, with its backbone's
    normalisation applied after sampling."""
    norm = models.get_architecture(recipe.arch).normalization
    classifier = classifier.to(memory_format=torch.channels_last)  # the wrappers hand it channels_last input
    if stn is None:
        return ResizeClassifier(classifier, out_size=recipe.image_size, **norm)
    return STNClassifier(stn, classifier, loc_size=recipe.loc_size, out_size=recipe.image_size,
                         guard_weight=recipe.guard_weight, **norm)


@torch.inference_mode()
def head_gain(model: STNClassifier, views: torch.Tensor) -> float:
    """How far one AdamW step of rate 1 can move the transform's parameters: the head's bias moves by the rate
    and each of its weights too, so an output moves by up to rate x (1 + sum_j |h_j|), h the head's input (mean
    over ``views``, raw [0, 1]). The localisation net's rate is divided by this, so that its summed rate over a
    phase moves the transform by ``loc_move`` whatever the width of the head."""
    x = F.interpolate(views, size=model.loc_size, mode="bilinear", align_corners=False, antialias=True)
    h = model.stn.features(model.normalise(x))
    return float(1 + h.abs().sum(1).mean())


def _group(params, lr: float, name: str, factor: Callable[[int], float], max_grad_norm: float | None = None) -> dict:
    return {"params": [p for p in params if p.requires_grad], "lr": lr, "name": name, "factor": factor,
            "max_grad_norm": max_grad_norm}


def loc_groups(model: STNClassifier, lr: float, factor: Callable[[int], float], recipe: STNRecipe) -> list[dict]:
    """The localisation net's parameter groups: its head (the transform's parameters) at ``lr``, its feature
    layers at lr x ``loc_features_mult``. Why: AdamW moves every weight by about its rate, and the conv weights'
    moves add up in the head's input, so at the head's rate the features grow and throw the transform to its
    bounds within a few steps (measured: notebook 05's notes, docs/decisions.md)."""
    clip = recipe.loc_max_grad_norm
    return [_group(model.stn.head.parameters(), lr, "localisation_head", factor, clip),
            _group(model.stn.features.parameters(), lr * recipe.loc_features_mult, "localisation_features", factor, clip)]


def fit(model: nn.Module, groups: list[dict], data: Iterator, *, weight_decay: float, device,
        on_step: Callable[[int], None] | None = None) -> list[float]:
    """AdamW over ``groups`` (each with its rate, its schedule ``factor`` and an optional gradient clip),
    cross-entropy plus the model's ``regularisation()``; returns the loss of every step."""
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"]} for g in groups], weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [g["factor"] for g in groups])
    reg = getattr(model, "regularisation", None)
    losses = []
    model.train()
    for step, (x, y) in enumerate(data):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = F.cross_entropy(out, y) + (reg() if reg is not None else 0.0)
        if not torch.isfinite(loss):
            raise rtrain.NonFiniteLoss(f"stn: training loss became {float(loss)} at step {step + 1}; lower the rates")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g, pg in zip(groups, opt.param_groups):
            if g["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(pg["params"], g["max_grad_norm"])
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1)
    return losses


@torch.inference_mode()
def predict(model: nn.Module, images: rtrain.CachedImages, device, *, batch_size: int = 32) -> dict:
    """Logits, labels and (with a transformer) theta of every image of a cache."""
    model.eval()
    logits, thetas = [], []
    for x, _ in images.batches(batch_size=batch_size):
        logits.append(model(x.to(device)).float().cpu())
        if isinstance(model, STNClassifier):
            thetas.append(model.theta.cpu())
    out = {"logits": torch.cat(logits).numpy(), "labels": images.labels.numpy().astype(np.int64)}
    if thetas:
        out["theta"] = torch.cat(thetas).numpy()
    return out


def known_accuracy(outputs: dict, num_known: int) -> float:
    """Closed-set accuracy of ``predict``'s outputs on the known photos."""
    known = outputs["labels"] < num_known
    return float((outputs["logits"][known].argmax(1) == outputs["labels"][known]).mean())


@torch.inference_mode()
def transform_stats(model: STNClassifier, views: torch.Tensor, *, aspect: float) -> dict:
    """The transformer on raw views: mean zoom and |rotation| (pixel space), mean |translation|, mean det of
    theta's 2x2 part, the share of sampled points outside the photo and a collapse flag (mean zoom within 2%
    of a bound, or more than half of the samples outside the photo)."""
    model.eval()
    model.crop(views)
    theta = model.theta.cpu()
    scale, angle = theta_scale_angle(theta.numpy(), aspect=aspect)
    grid = F.affine_grid(theta, [len(theta), 3, *model.out_size], align_corners=False)
    outside = float((grid.abs() > 1).any(-1).float().mean())
    lo, hi = model.stn.scale_range
    mean_zoom = float(scale.mean())
    return {"mean_zoom": mean_zoom, "mean_abs_rotation_deg": float(np.abs(angle).mean()),
            "mean_abs_translation": float(theta[:, :, 2].abs().mean()),
            "mean_det": float(np.linalg.det(theta[:, :, :2].numpy().astype(np.float64)).mean()),
            "outside_share": outside,
            "collapsed": bool(mean_zoom <= lo * 1.02 or mean_zoom >= hi * 0.98 or outside > 0.5)}


# ----------------------------------------------------------------------------------------------
# Stage 1 and the arms
# ----------------------------------------------------------------------------------------------

def train_stage1(views: Views, recipe: STNRecipe, *, seed: int = 0, device: str = "auto",
                 verbose: bool = True) -> dict:
    """Stage 1: the pretrained backbone fine-tuned alone (``ResizeClassifier``) for ``stage1_epochs`` with the
    augmentation covering the transformer's range. Returns {"state": classifier state dict, "losses", "val_acc",
    "seconds"}: the one stage-1 classifier of every arm that starts from it."""
    dev = pick_device(device)
    t0 = time.perf_counter()
    seed_everything(seed)
    model = wrap(new_classifier(recipe, views.num_classes()), recipe).to(dev)
    steps = recipe.stage1_epochs * steps_per_epoch(len(views.train), recipe.batch_size)
    factor = warmup_cosine(steps, 0.15)
    losses = fit(model, [_group(model.parameters(), recipe.lr, "classifier", factor)],
                 batches(views, recipe, seed=seed, first_epoch=0, steps=steps, device=dev),
                 weight_decay=recipe.weight_decay, device=dev)
    acc = known_accuracy(predict(model, views.val, dev), views.num_classes())
    if verbose:
        print(f"[stn] stage 1: {steps} steps, val accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)")
    return {"state": {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}, "losses": losses,
            "val_acc": acc, "steps": steps, "seconds": time.perf_counter() - t0, "seed": seed}


def stage1_from_run(run, recipe: STNRecipe, views: Views) -> dict:
    """Stage 1 taken from a finished training run (``rl.runs.Run``: the report's fine-tuned classifier of
    notebook 03), instead of ``train_stage1``: the same dict, its val accuracy measured here on the views.
    Its architecture, image size and classes must be the recipe's and the data's."""
    run = run if isinstance(run, Run) else Run(run)
    wrong = {k: (a, b) for k, a, b in (("arch", run.arch, recipe.arch), ("image_size", run.image_size, recipe.image_size))
             if a != b}
    if wrong:
        raise ValueError(f"stage-1 run {run.path}: " + ", ".join(f"{k} {a!r}, the recipe's {b!r}" for k, (a, b) in wrong.items())
                         + "; pass a run of the recipe's architecture and size, or train stage 1 here")
    if list(run.known_classes) != list(views.known):
        raise ValueError(f"stage-1 run {run.path} knows {len(run.known_classes)} classes, not those of {views.data_dir}")
    t0 = time.perf_counter()
    state = {k: v.detach().cpu().clone() for k, v in run.load_model("best", device="cpu").state_dict().items()}
    n_train = len(rdata.ReceiptFolder(run.data_dir, "train", classes=run.known_classes).samples)
    steps = int(run.config.get("epochs", 0)) * steps_per_epoch(n_train, int(run.config.get("batch_size", 32)))
    stage1 = {"state": state, "losses": [], "steps": steps, "seed": run.config.get("seed"), "run": str(run.path)}
    dev = pick_device("auto")
    model = wrap(_from_stage1(stage1, recipe, views.num_classes()), recipe).to(dev)
    stage1.update(val_acc=known_accuracy(predict(model, views.val, dev), views.num_classes()),
                  seconds=time.perf_counter() - t0)
    return stage1


@dataclass
class ArmResult:
    """One arm and seed: the trained model, its losses, per-checkpoint transform statistics and snapshots
    (raw crops of the fixed photos, uint8; ``step`` counts stage 2's steps, 0 = the stage-1 classifier), and the
    summed rates of its parameter groups."""

    arm: str
    seed: int
    model: nn.Module
    losses: list[float]
    checkpoints: list[dict] = field(default_factory=list)
    snapshots: list[np.ndarray] = field(default_factory=list)
    summed_rates: dict = field(default_factory=dict)
    seconds: float = 0.0


def _from_stage1(stage1: dict, recipe: STNRecipe, num_classes: int) -> nn.Module:
    classifier = models.build(recipe.arch, num_classes, weights="none")  # every weight comes from stage 1
    classifier.load_state_dict(stage1["state"])
    return classifier


def train_arm(arm: str, views: Views, recipe: STNRecipe, *, stage1: dict | None, seed: int, loc_mult: float = 1.0,
              device: str = "auto", snapshot_views: torch.Tensor | None = None, stats_views: torch.Tensor | None = None,
              phases: Sequence[str] | None = None, verbose: bool = True) -> ArmResult:
    """Train one arm (``ARMS``) for one seed; see the module docstring. ``loc_mult``: the localisation net's
    rate as a multiple of ``loc_lr`` (staged arms; ``choose_loc_mult``). ``snapshot_views`` / ``stats_views``:
    raw views passed through the transformer at every checkpoint (for the grids / the statistics).
    ``phases=("transformer",)`` stops a staged arm after its transformer-only phase (for ``choose_loc_mult``)."""
    if arm not in ARMS:
        raise ValueError(f"arm={arm!r}: expected one of {ARMS}")
    if (arm != "joint" or recipe.joint_start == "stage1") and stage1 is None:
        raise ValueError(f"arm {arm!r} starts from the stage-1 classifier: pass stage1=train_stage1(...)")
    dev = pick_device(device)
    t0 = time.perf_counter()
    k = views.num_classes()
    n1 = recipe.stage1_epochs * steps_per_epoch(len(views.train), recipe.batch_size)
    n2 = recipe.stage2_epochs * steps_per_epoch(len(views.train), recipe.batch_size)
    first2 = recipe.stage1_epochs  # stage 2's batches continue stage 1's epochs
    seed_everything(seed)
    result = ArmResult(arm, seed, None, [])  # type: ignore[arg-type]

    def checkpoint(model, step_label: str, step: int) -> None:
        if not isinstance(model, STNClassifier):
            return
        row = {"arm": arm, "seed": seed, "phase": step_label, "step": step}
        if stats_views is not None:
            row.update(transform_stats(model, stats_views.to(dev), aspect=views.aspect))
        result.checkpoints.append(row)
        if snapshot_views is not None:
            crops = model.transformed(snapshot_views.to(dev))
            result.snapshots.append((crops.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        model.train()

    def every(n_steps: int, label: str, offset: int, model) -> Callable[[int], None]:
        marks = set(np.linspace(0, n_steps, recipe.snapshots_per_stage + 1).round().astype(int)[1:].tolist())
        return lambda s: checkpoint(model, label, offset + s) if s in marks else None

    if arm == "joint":
        # the paper: transformer and classifier trained together from the first step, the localisation net at
        # the classifier's rate; from the stage-1 classifier (same start and steps as the other arms) or, with
        # joint_start="imagenet", from the pretrained backbone for stage 1's steps + stage 2's
        torch.manual_seed(stream_seed(seed, 0, STN_INIT))
        if recipe.joint_start == "imagenet":
            classifier, total, first = new_classifier(recipe, k), (stage1 or {}).get("steps") or n1, 0
            total += n2
        else:
            classifier, total, first = _from_stage1(stage1, recipe, k), n2, first2
        model = wrap(classifier, recipe, new_transformer(recipe, views.aspect)).to(dev)
        lr = recipe.lr if recipe.joint_start == "imagenet" else recipe.lr * recipe.stage2_lr_mult
        cls_f = warmup_cosine(total, 0.15)
        loc_lr = lr * recipe.joint_loc_mult
        gain = head_gain(model, views.train.images[: 4 * recipe.batch_size].float().div(255).to(dev))
        result.summed_rates = {"classifier": summed_rate(lr, total, 0.15),
                               "localisation": summed_rate(loc_lr, total, 0.15), "head_gain": gain,
                               "transform_move": gain * summed_rate(loc_lr, total, 0.15)}
        offset = n2 - total  # checkpoints count stage 2's steps: 0 where the other arms start from stage 1
        checkpoint(model, "joint", offset)
        result.losses = fit(model, [_group(model.classifier.parameters(), lr, "classifier", cls_f),
                                    _group(model.stn.parameters(), loc_lr, "localisation", cls_f, recipe.loc_max_grad_norm)],
                            batches(views, recipe, seed=seed, first_epoch=first, steps=total, device=dev),
                            weight_decay=recipe.weight_decay, device=dev, on_step=every(total, "joint", offset, model))
    elif arm in ("finetune", "identity"):
        classifier = _from_stage1(stage1, recipe, k)
        stn = None
        if arm == "identity":
            torch.manual_seed(stream_seed(seed, 0, STN_INIT))
            stn = new_transformer(recipe, views.aspect).requires_grad_(False)  # frozen at the identity
        model = wrap(classifier, recipe, stn).to(dev)
        lr2 = recipe.lr * recipe.stage2_lr_mult
        result.summed_rates = {"classifier": summed_rate(lr2, n2, 0.15)}
        checkpoint(model, "stage2", 0)
        result.losses = fit(model, [_group(model.classifier.parameters(), lr2, "classifier", warmup_cosine(n2, 0.15))],
                            batches(views, recipe, seed=seed, first_epoch=first2, steps=n2, device=dev),
                            weight_decay=recipe.weight_decay, device=dev, on_step=every(n2, "stage2", 0, model))
    else:  # staged, staged_norot
        rotation = 0.0 if arm == "staged_norot" else None
        classifier = _from_stage1(stage1, recipe, k)
        torch.manual_seed(stream_seed(seed, 0, STN_INIT))
        model = wrap(classifier, recipe, new_transformer(recipe, views.aspect)).to(dev)
        n_freeze = max(1, int(round(recipe.freeze_share * n2)))
        n_both = n2 - n_freeze
        gain = head_gain(model, views.train.images[: 4 * recipe.batch_size].float().div(255).to(dev))
        loc_lr = loc_mult * recipe.loc_move / (gain * summed_rate(1.0, n_freeze, recipe.loc_warmup))
        result.summed_rates = {"localisation_alone": summed_rate(loc_lr, n_freeze, recipe.loc_warmup),
                               "head_gain": gain, "transform_move": gain * summed_rate(loc_lr, n_freeze, recipe.loc_warmup)}
        checkpoint(model, "transformer", 0)
        data = batches(views, recipe, seed=seed, first_epoch=first2, steps=n2, device=dev, rotation=rotation)
        # phase 1: the transformer learns to serve the fixed stage-1 classifier (its BatchNorm statistics too)
        model.freeze_classifier = True
        model.classifier.requires_grad_(False)
        result.losses = fit(model, loc_groups(model, loc_lr, warmup_cosine(n_freeze, recipe.loc_warmup), recipe),
                            (b for _, b in zip(range(n_freeze), data)), weight_decay=recipe.weight_decay, device=dev,
                            on_step=every(n_freeze, "transformer", 0, model))
        model.freeze_classifier = False
        model.classifier.requires_grad_(True)
        if n_both and (phases is None or "both" in phases):
            lr2 = recipe.lr * recipe.stage2_lr_mult
            loc2 = loc_lr * recipe.stage2_loc_mult
            f2 = warmup_cosine(n_both, 0.15)
            result.summed_rates.update(classifier=summed_rate(lr2, n_both, 0.15), localisation_both=summed_rate(loc2, n_both, 0.15))
            result.losses += fit(model, [_group(model.classifier.parameters(), lr2, "classifier", f2),
                                         *loc_groups(model, loc2, f2, recipe)],
                                 data, weight_decay=recipe.weight_decay, device=dev,
                                 on_step=every(n_both, "both", n_freeze, model))
    result.model = model
    result.seconds = time.perf_counter() - t0
    if verbose:
        tail = np.mean(result.losses[-5:]) if result.losses else float("nan")
        print(f"[stn] {arm} seed {seed}: {len(result.losses)} steps, final train loss {tail:.3f} "
              f"({result.seconds:.0f} s)")
    return result


def choose_loc_mult(views: Views, recipe: STNRecipe, stage1: dict, *, seed: int = 0, device: str = "auto",
                    verbose: bool = True, **arm_kwargs) -> tuple[float, dict, dict]:
    """The localisation net's rate multiplier, chosen on val: the whole staged arm (both phases) with each of
    ``recipe.loc_lr_mults``, scored by the cross-entropy of the known val photos after it. Scoring after the
    transformer-only phase instead favours the smallest rate by construction (the frozen classifier has only
    seen unmoved views, so any first move costs). Returns (best multiplier, {mult: val loss}, {mult: ArmResult}):
    the best one's run is the staged arm of ``seed`` (``compare`` does not train it again). ``arm_kwargs`` go to
    ``train_arm`` (snapshot and statistics views)."""
    dev = pick_device(device)
    idx = views.known_val()
    scores, runs = {}, {}
    for mult in recipe.loc_lr_mults:
        res = train_arm("staged", views, recipe, stage1=stage1, seed=seed, loc_mult=mult, device=device,
                        verbose=False, **arm_kwargs)
        res.model.eval()
        with torch.inference_mode():
            losses = [F.cross_entropy(res.model(x.to(dev)).float(), y.to(dev), reduction="sum").item()
                      for x, y in views.val.batches(idx, 32)]
        scores[mult], runs[mult] = float(sum(losses) / len(idx)), res
        if verbose:
            print(f"[stn] localisation rate x{mult}: val loss after the staged arm {scores[mult]:.4f}")
    return min(scores, key=scores.get), scores, runs


@torch.inference_mode()
def oracle_scores(views: Views, recipe: STNRecipe, stage1: dict, *, device: str = "auto") -> dict | None:
    """The oracle ceiling: the stage-1 classifier on test photos canonicalised by the manifest's own geometry
    (``geometry.oracle_theta``: a perfect rotation + scale + translation transformer) against the same photos
    at the identity. Closed-set accuracy on the known test photos, all and on the hard slice. None without a
    manifest."""
    theta = views.oracle("test")
    if theta is None:
        return None
    dev = pick_device(device)
    model = wrap(_from_stage1(stage1, recipe, views.num_classes()), recipe).to(dev).eval()  # the view resized
    preds = {"identity": [], "oracle": []}
    for (x, _), th in zip(views.test.batches(batch_size=32), theta.split(32)):
        x = x.to(dev)
        canonical = SpatialTransformer.sample(x, th.to(dev), model.out_size)  # already out_size: crop() keeps it
        for name, view in (("identity", x), ("oracle", canonical)):
            preds[name].append(model(view).argmax(1).cpu())
    labels = views.test.labels.numpy()
    known = labels < views.num_classes()
    hard = views.hard()
    out = {}
    for name, p in preds.items():
        correct = torch.cat(p).numpy() == labels
        out[name] = {"accuracy": float(correct[known].mean()), "hard_accuracy": float(correct[known & hard].mean())}
    out["gain"] = out["oracle"]["accuracy"] - out["identity"]["accuracy"]
    out["hard_gain"] = out["oracle"]["hard_accuracy"] - out["identity"]["hard_accuracy"]
    out["n_known"], out["n_hard_known"] = int(known.sum()), int((known & hard).sum())
    return out

