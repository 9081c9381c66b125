"""The thresholds file: a fitted logit detector as versioned JSON (schema receiptlib.thresholds v1)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common import OTHER
from ..io import read_json, write_text
from .base import Detector, finite
from .detectors import METHODS, GlobalSoftmax, PerClassLogit

SCHEMA, SCHEMA_VERSION = "receiptlib.thresholds", 1


def _known(classes: Sequence[str]) -> list[str]:
    return [str(c) for c in classes if c != OTHER]


def save_thresholds(path, detector: Detector, *, classes: Sequence[str], run: str | None = None) -> Path:
    """Write a fitted detector's thresholds as versioned JSON (schema receiptlib.thresholds v1).

    classes: the known class names (``known + ["Other"]`` is accepted). Only detectors that are
    rebuilt from their thresholds alone can be saved: per-class-logit, global-softmax, max-softmax,
    max-logit, energy; the others need their fit data and raise.
    """
    path = Path(path)
    doc = thresholds_doc(detector, classes=classes, run=run, where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")  # NaN refused, not written as null


def thresholds_doc(detector: Detector, *, classes: Sequence[str], run: str | None = None,
                   where: str = "thresholds") -> dict:
    """The thresholds file's content as a dict (what `save_thresholds` writes and an exported ONNX model
    carries as its Other rule); ``where`` names the destination in errors."""
    if detector.other_threshold_ is None:
        raise RuntimeError(f"{type(detector).__name__} is not fitted; call fit(...) first, then save to {where}")
    known = _known(classes)
    if len(known) != detector.num_known_:
        raise ValueError(f"save_thresholds({where}): {len(known)} class names for a detector fitted on "
                         f"{detector.num_known_} known classes")
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, "method": detector.method,
           "params": dict(detector.params), "classes": known}
    if isinstance(detector, PerClassLogit):
        doc["params"]["overrides"] = {known[i]: t for i, t in detector.override_indices(known).items()}
        doc["thresholds"] = dict(zip(known, detector.thresholds_.tolist()))
    elif isinstance(detector, GlobalSoftmax):
        doc["threshold"] = float(detector.params["threshold"])
        doc["params"] = {}
    elif not detector.fit_data:
        doc["threshold"] = detector.other_threshold_
        doc["params"].pop("other_threshold")
    else:
        raise ValueError(f"{type(detector).__name__} is not serialisable to a thresholds file: it needs its "
                         "fit data (features or reference outputs); refit it from the run's val outputs")
    doc.update(run=run, fitted_on="val")
    return doc


def load_thresholds(path, *, classes: Sequence[str] | None = None) -> Detector:
    """A fitted detector from a thresholds file, validated; with ``classes`` (the run's known classes,
    "Other" allowed) the file must have been fitted on exactly those classes, in that order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file {path} does not exist; make one with `receiptlib fit-other`")
    try:
        doc = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON ({e}); is this a thresholds file?") from e
    return detector_from_doc(doc, classes=classes, where=path)


def detector_from_doc(doc, *, classes: Sequence[str] | None = None, where: str | Path = "thresholds") -> Detector:
    """A fitted detector from a thresholds document (a thresholds file's content, or the Other rule an
    exported model carries), validated as `load_thresholds` does; ``where`` names its origin in errors."""
    path = where
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a thresholds file (expected \"schema\": \"{SCHEMA}\")")
    if doc.get("version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: thresholds schema version {doc.get('version')!r}; this receiptlib reads "
                         f"version {SCHEMA_VERSION}: refit with `receiptlib fit-other`")
    method, saveable = doc.get("method"), [m for m, c in METHODS.items() if not c.fit_data or c is PerClassLogit]
    if method not in saveable:
        raise ValueError(f"{path}: method {method!r} cannot be loaded from a thresholds file; "
                         f"expected one of {saveable}")
    names = doc.get("classes")
    if not (isinstance(names, list) and names and all(isinstance(c, str) and c for c in names)
            and len(set(names)) == len(names) and OTHER not in names):
        raise ValueError(f"{path}: \"classes\" must be a list of distinct known class names (without {OTHER})")
    if classes is not None and _known(classes) != names:
        run_names = _known(classes)
        only_file, only_run = sorted(set(names) - set(run_names)), sorted(set(run_names) - set(names))
        diff = f"only in the file: {only_file}, only in the run: {only_run}" if only_file or only_run \
            else "same names, different order"
        raise ValueError(f"{path}: fitted on another model's classes ({len(names)} in the file, "
                         f"{len(run_names)} in the run; {diff}); refit the thresholds on this run")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{path}: \"params\" must be an object")
    try:
        if method == PerClassLogit.method:
            det = PerClassLogit(**params, classes=names)
        elif method == GlobalSoftmax.method:
            det = GlobalSoftmax(finite(doc.get("threshold"), "\"threshold\"", path), **params)
        else:
            det = METHODS[method](**params, other_threshold=finite(doc.get("threshold"), "\"threshold\"", path))
    except TypeError as e:
        raise ValueError(f"{path}: bad \"params\" for {method}: {e}") from e
    det.num_known_ = len(names)
    if method == PerClassLogit.method:
        thresholds = doc.get("thresholds")
        if not isinstance(thresholds, dict):
            raise ValueError(f"{path}: \"thresholds\" must be an object {{class name: threshold}}")
        unknown, missing = sorted(set(thresholds) - set(names)), [c for c in names if c not in thresholds]
        if unknown:
            raise ValueError(f"{path}: unknown class(es) {unknown} in \"thresholds\" (known: {names})")
        if missing:
            raise ValueError(f"{path}: missing class(es) {missing} in \"thresholds\"; every known class needs one")
        det.thresholds_ = np.array([finite(thresholds[c], f"threshold of {c!r}", path) for c in names])
        try:
            det.override_indices()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        det.other_threshold_ = 0.0
    else:
        det.other_threshold_ = (-det.params["threshold"] if isinstance(det, GlobalSoftmax)
                                else det.params["other_threshold"])
    det.source_ = {"path": str(where), "run": doc.get("run"), "fitted_on": doc.get("fitted_on")}
    return det
