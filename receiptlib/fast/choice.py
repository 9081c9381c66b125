"""The fast backend choice: every candidate measured against fp32 PyTorch on val (its predictions, Other
decisions included, and its macro-F1), the fastest that agrees chosen and saved as ``choice.json``; the
run-folder glue (`build_fast_model`, `fast_predictor`, `run_decision`)."""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..common import pick_device
from ..io import read_json, write_json
from ..openset import PerClassLogit, as_decision, load_thresholds, macro_f1, thresholds_doc
from ..runs import Run
from ..serving import ModelCard
from .backends import (BACKENDS, ONNX_FILES, REFERENCE, BackendUnavailable, Predictor, TorchPredictor,
                       default_threads, make_predictor, require_onnxruntime, run_batches, throughput)
from .export import calibration_batches, eval_loader, prepare_onnx

# Fastest first on a typical x86 CPU; build_fast_model measures them anyway.
DEFAULT_CANDIDATES = ("onnx-int8", "torch-bf16", "onnx-fp32", "torch-channels_last", "torch-fp32")
CHOICE_FILE = "choice.json"


@dataclass
class Candidate:
    """One backend's agreement with the fp32 reference on val, and its measured speed."""

    backend: str
    agreement: float | None = None      # fraction of val images with the same prediction (Other included)
    macro_f1: float | None = None
    f1_drop: float | None = None        # reference macro-F1 minus this one's
    max_abs_logit_diff: float | None = None
    images_per_s: float | None = None   # model alone, batch of val images
    qualifies: bool = False
    reason: str = ""


@dataclass
class FastChoice:
    """What `build_fast_model` decided; saved as ``choice.json`` in ``out_dir``."""

    backend: str
    overridden: bool
    reference: str
    reference_macro_f1: float
    min_agreement: float
    max_f1_drop: float
    n_val: int
    image_size: int
    batch_size: int
    threads: int
    device: str
    candidates: list[Candidate] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    out_dir: str = ""

    def candidate(self, backend: str) -> Candidate:
        for c in self.candidates:
            if c.backend == backend:
                return c
        raise KeyError(f"{backend!r} was not a candidate; candidates: {[c.backend for c in self.candidates]}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FastChoice":
        d = dict(d)
        d["candidates"] = [Candidate(**c) for c in d.get("candidates", [])]
        return cls(**d)

    def summary(self) -> str:
        lines = [f"fast backend: {self.backend}" + (" (overridden)" if self.overridden else
                 f" (fastest with agreement >= {self.min_agreement:.3f} and macro-F1 drop <= {self.max_f1_drop})")]
        for c in self.candidates:
            fig = ("-" if c.agreement is None else
                   f"agreement {c.agreement:.4f}, macro-F1 {c.macro_f1:.4f} (drop {c.f1_drop:+.4f})")
            speed = "-" if c.images_per_s is None else f"{c.images_per_s:.0f} img/s"
            mark = "ok " if c.qualifies else "no "
            lines.append(f"  {mark}{c.backend:<20} {speed:>10}  {fig}  {c.reason}")
        return "\n".join(lines)


def select_fast(model: nn.Module, val_batches: Sequence[torch.Tensor], val_labels: np.ndarray,
                out_dir: str | os.PathLike, *,
                candidates: Sequence = DEFAULT_CANDIDATES, decide: Any = None, calibration: Iterable | None = None,
                backend: str | None = None, min_agreement: float = 0.995, max_f1_drop: float = 0.005,
                threads: int | None = None, device: str = "auto", speed_repeats: int = 3,
                card: ModelCard | None = None, verbose: bool = True) -> FastChoice:
    """Measure each candidate against fp32 PyTorch on ``val_batches`` and save the choice in ``out_dir``.

    candidates: backend names, or ``(name, predictor)`` pairs for a custom predictor (tests use a
    deliberately broken one). A candidate qualifies when its predictions after ``decide`` (the Other
    decision, see `openset.as_decision`) agree with the reference's on >= ``min_agreement`` of the images and its
    macro-F1 (against ``val_labels``) is at most ``max_f1_drop`` below the reference's. The fastest
    qualifying one (model alone, one val batch) is chosen; ``backend=`` overrides the choice (it is still
    measured and reported). The reference always qualifies, so a choice always exists. ``card``: the model
    card the exported ONNX files carry in their metadata (`export.describe_onnx`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    threads = int(threads or default_threads())
    decision = as_decision(decide)
    val_labels = np.asarray(val_labels)
    val_batches = list(val_batches)
    if not val_batches:
        raise ValueError("select_fast: no val images; pass at least one batch")
    n_val = sum(len(b) for b in val_batches)
    if len(val_labels) != n_val:
        raise ValueError(f"val_labels has {len(val_labels)} entries for {n_val} val images")

    names = [c if isinstance(c, str) else c[0] for c in candidates]
    if backend is not None and backend not in names:
        names.append(backend)
        candidates = list(candidates) + [backend]
    for n in names:
        if isinstance(n, str) and n not in BACKENDS and not any(not isinstance(c, str) and c[0] == n for c in candidates):
            raise ValueError(f"candidate {n!r}: expected one of {list(BACKENDS)} or a (name, predictor) pair")

    files: dict[str, str] = {}
    wanted_onnx = [n for n in names if n in ONNX_FILES]
    onnx_error = None
    if wanted_onnx:
        try:
            require_onnxruntime()
            made = prepare_onnx(model, out_dir, image_size=int(val_batches[0].shape[-1]), calibration=calibration,
                                int8="onnx-int8" in wanted_onnx and calibration is not None, card=card)
            files = {k: v.name for k, v in made.items()}
        except Exception as exc:  # noqa: BLE001 - an unavailable backend is reported, others still run
            onnx_error = f"{type(exc).__name__}: {exc}"

    reference = TorchPredictor(model, REFERENCE, device=dev)
    ref_logits = run_batches(reference, val_batches)
    ref_pred = decision(ref_logits)
    ref_f1 = macro_f1(val_labels, ref_pred, num_known=ref_logits.shape[1])

    results: list[Candidate] = []
    for cand in candidates:
        name, pred_obj = (cand, None) if isinstance(cand, str) else (cand[0], cand[1])
        c = Candidate(name)
        results.append(c)
        try:
            if pred_obj is None:
                if name in ONNX_FILES and name not in files:
                    raise BackendUnavailable(onnx_error or f"{name}: no calibration images were given for int8")
                pred_obj = reference if name == REFERENCE else make_predictor(
                    name, model=model, onnx_dir=out_dir, threads=threads, device=str(dev))
            logits = run_batches(pred_obj, val_batches)
            pred = decision(logits)
            c.agreement = float(np.mean(pred == ref_pred))
            c.macro_f1 = macro_f1(val_labels, pred, num_known=ref_logits.shape[1])
            c.f1_drop = ref_f1 - c.macro_f1
            c.max_abs_logit_diff = float(np.max(np.abs(logits - ref_logits)))
            c.images_per_s = throughput(pred_obj, val_batches[0], repeats=speed_repeats)
            c.qualifies = c.agreement >= min_agreement and c.f1_drop <= max_f1_drop
            if not c.qualifies:
                c.reason = (f"agreement {c.agreement:.4f} < {min_agreement}" if c.agreement < min_agreement
                            else f"macro-F1 drop {c.f1_drop:.4f} > {max_f1_drop}")
        except Exception as exc:  # noqa: BLE001 - one failing backend must not stop the choice
            c.reason = f"unavailable: {type(exc).__name__}: {str(exc)[:300]}"
    if REFERENCE not in names:  # the fallback that always qualifies
        results.append(Candidate(REFERENCE, 1.0, ref_f1, 0.0, 0.0, throughput(reference, val_batches[0],
                                                                              repeats=speed_repeats), True))

    if backend is not None:
        chosen, overridden = backend, True
        if not any(c.backend == backend and c.agreement is not None for c in results):
            raise BackendUnavailable(f"backend={backend!r} was asked for but cannot run here: "
                                     f"{next(c.reason for c in results if c.backend == backend)}")
    else:
        ok = [c for c in results if c.qualifies]
        chosen, overridden = max(ok, key=lambda c: c.images_per_s).backend, False

    choice = FastChoice(backend=chosen, overridden=overridden, reference=REFERENCE, reference_macro_f1=ref_f1,
                        min_agreement=min_agreement, max_f1_drop=max_f1_drop, n_val=n_val,
                        image_size=int(val_batches[0].shape[-1]), batch_size=len(val_batches[0]), threads=threads,
                        device=str(dev), candidates=results, files=files, out_dir=str(out_dir))
    write_json(out_dir / CHOICE_FILE, choice.to_json())
    if verbose:
        print(choice.summary())
    return choice


def load_choice(fast_dir: str | os.PathLike) -> FastChoice:
    """The `FastChoice` saved in ``fast_dir/choice.json``."""
    path = Path(fast_dir) / CHOICE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the fast model first (receiptlib.fast.build_fast_model)")
    return FastChoice.from_json(read_json(path))


def load_predictor(fast_dir: str | os.PathLike, *, model: nn.Module | None = None, backend: str | None = None,
                   threads: int | None = None, device: str = "auto", spinning: bool = True) -> Predictor:
    """The predictor saved in ``fast_dir/choice.json`` (or ``backend`` to override); torch-* need ``model``.

    A saved choice that cannot run on this machine (say torch-bf16, chosen where the CPU has bf16 hardware,
    now on one without) falls back to the fp32 reference with a warning; an explicit ``backend`` raises."""
    choice = load_choice(fast_dir)
    kwargs = dict(model=model, onnx_dir=fast_dir, threads=threads, device=device, spinning=spinning)
    if backend is not None:
        return make_predictor(backend, **kwargs)
    try:
        return make_predictor(choice.backend, **kwargs)
    except BackendUnavailable as exc:
        warnings.warn(f"{fast_dir}: the saved fast backend {choice.backend!r} cannot run here ({exc}); using "
                      f"{REFERENCE} (rebuild with `receiptlib build-fast` to choose again on this machine)", stacklevel=2)
        return make_predictor(REFERENCE, **kwargs)


# ----------------------------------------------------------------------------------------------
# A run folder -> its fast model
# ----------------------------------------------------------------------------------------------

def val_batches(root: str | os.PathLike, classes: Sequence[str] | None, *, image_size: int, batch_size: int,
                n_val: int | None, seed: int = 0, workers: int = 0,
                **normalization) -> tuple[list[torch.Tensor], np.ndarray]:
    """The preprocessed batches and labels of a seeded subset of ``n_val`` val images (None: all), in order;
    ``normalization``: the model's mean and std (eval_loader's; ImageNet's when not given)."""
    xs, ys = [], []
    for x, y in eval_loader(root, "val", classes=classes, n=n_val, image_size=image_size, batch_size=batch_size,
                            seed=seed, workers=workers, **normalization):
        xs.append(x)
        ys.append(y.numpy())
    return xs, np.concatenate(ys)


def build_fast_model(run, *, candidates: Sequence = DEFAULT_CANDIDATES, backend: str | None = None,
                     data_root: str | os.PathLike | None = None, decide: Any = "run", n_val: int | None = 1000,
                     n_calibration: int = 256, image_size: int | None = None, batch_size: int = 16,
                     threads: int | None = None, device: str = "auto", min_agreement: float = 0.995,
                     max_f1_drop: float = 0.005, out_dir: str | os.PathLike | None = None, workers: int = 0,
                     verbose: bool = True) -> FastChoice:
    """Build ``run/fast/`` (ONNX files + ``choice.json``) for a trained run and print the choice.

    run: a `receiptlib.runs.Run` (or its folder). ``decide="run"`` takes the run's Other decision
    (`run_decision`); None means argmax without Other. ``n_val`` val images (a seeded subset; None = all)
    measure agreement; ``n_calibration`` training images calibrate int8. ``backend`` overrides the choice.
    """
    if not hasattr(run, "load_model"):
        run = Run(run)
    model = run.load_model(device="cpu").eval()
    classes = list(run.classes)
    root = Path(data_root) if data_root is not None else run.data_dir
    size = int(image_size or run.image_size)
    if isinstance(decide, str) and decide == "run":
        decide = run_decision(run)
    if not run.artefact_path.is_file():  # a run trained before runs wrote their slim artefact
        run.write_artefact()
    card = run.card(other=other_rule(decide, run))
    xs, ys = val_batches(root, classes, image_size=size, batch_size=batch_size, n_val=n_val, workers=workers,
                         **run.normalization)
    calib = calibration_batches(root, classes=classes, n=n_calibration, image_size=size, workers=workers,
                                **run.normalization)
    return select_fast(model, xs, ys, out_dir or Path(run.path) / "fast", candidates=candidates, decide=decide,
                       calibration=calib, backend=backend, min_agreement=min_agreement, max_f1_drop=max_f1_drop,
                       threads=threads, device=device, card=card, verbose=verbose)


def fast_predictor(run, *, backend: str | None = None, threads: int | None = None, device: str = "auto",
                   build: bool = True, spinning: bool = False, **build_kwargs) -> Predictor:
    """The run's fast predictor (``run/fast/choice.json``), built first when missing and ``build``.

    ``backend`` overrides the saved choice. ``spinning=False``: ONNX Runtime's idle threads sleep, leaving
    the cores to the loader workers that decode JPEGs (the end-to-end setting of receiptlib.bench).
    """
    if not hasattr(run, "load_model"):
        run = Run(run)
    fast_dir = Path(run.path) / "fast"
    if not (fast_dir / CHOICE_FILE).is_file():
        if not build:
            raise FileNotFoundError(f"{fast_dir / CHOICE_FILE} missing; run receiptlib.fast.build_fast_model first")
        build_fast_model(run, threads=threads, device=device, **build_kwargs)
    model = run.load_model(device=device)  # for a torch-* choice, and the fallback should the saved one not run
    return load_predictor(fast_dir, model=model, backend=backend, threads=threads, device=device, spinning=spinning)


def other_rule(decide: Any, run) -> dict | None:
    """The Other decision as a thresholds document for the model card (None: argmax, or a decision that is not
    a thresholds rule, such as a callable or a detector that needs features)."""
    if decide is None or getattr(decide, "other_threshold_", None) is None:
        return None
    try:
        return thresholds_doc(decide, classes=run.classes, run=run.name)
    except ValueError:
        return None


def run_decision(run, thresholds: str | os.PathLike | None = None):
    """The run's Other decision: a thresholds file (``thresholds`` or ``run/thresholds.json``) when there
    is one, else the paper's per-class max-logit thresholds (`openset.PerClassLogit`) fitted on the run's
    cached val outputs; None (argmax, no Other) when the run has no val outputs."""
    path = Path(thresholds) if thresholds is not None else Path(run.path) / "thresholds.json"
    if thresholds is not None or path.is_file():
        return load_thresholds(path, classes=run.classes)
    try:
        val = run.outputs("val")
    except FileNotFoundError:
        return None
    return PerClassLogit().fit(val)
