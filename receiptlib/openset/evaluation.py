"""Open-set metrics and the protocol: fit on val, evaluate on test once; the detector table; the tuner's logic."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .base import Detector, as_outputs
from .detectors import PAPER_K, PerClassLogit, default_detectors


def _per_label(labels, pred, num_known: int):
    """Precision, recall and F1 of each label 0..C (C = Other), 0 where undefined, as sklearn's."""
    from sklearn.metrics import precision_recall_fscore_support

    return precision_recall_fscore_support(labels, pred, labels=list(range(num_known + 1)), zero_division=0)[:3]


def macro_f1(labels, pred, *, num_known: int) -> float:
    """sklearn's macro F1 over the C+1 labels 0..C, C = Other (the competition's F1; a label absent from
    both labels and pred counts 0)."""
    return float(_per_label(np.asarray(labels, np.int64), np.asarray(pred, np.int64), num_known)[2].mean())


def metrics(labels, pred, score=None, *, num_known: int, known_pred=None) -> dict:
    """Open-set metrics as a plain dict.

    macro_f1: `macro_f1`. other_*: Other as one class. known_accuracy: known images given
    their own label (Other counts as wrong); closed_set_accuracy: the known-class prediction
    (``known_pred``, argmax) on known images, None without it. auroc and fpr_at_95_tpr treat Other
    as the positive class and ``score`` (higher = Other) as its detector: FPR@95TPR is the fraction of
    known images with score >= t*, t* the highest threshold flagging at least 95% of the Other images
    (as pytorch-ood and the OOD literature); both None without a score or without both groups.
    confusion: rows = true label, columns = predicted label, both 0..C.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    C, labels, pred = num_known, np.asarray(labels, np.int64), np.asarray(pred, np.int64)
    if labels.shape != pred.shape:
        raise ValueError(f"labels {labels.shape} and pred {pred.shape} differ in shape")
    p, r, f = _per_label(labels, pred, C)
    known, other = labels < C, labels == C
    # macro-F1 from the per-label F1 above (the same value as macro_f1(labels, pred, num_known=C))
    out = {"macro_f1": float(f.mean()), "other_precision": float(p[C]),
           "other_recall": float(r[C]), "other_f1": float(f[C]), "known_accuracy": None, "closed_set_accuracy": None,
           "auroc": None, "fpr_at_95_tpr": None, "n": int(len(labels)), "n_other": int(other.sum())}
    if known.any():
        out["known_accuracy"] = float((pred[known] == labels[known]).mean())
    if known_pred is not None and known.any():
        out["closed_set_accuracy"] = float((np.asarray(known_pred)[known] == labels[known]).mean())
    if score is not None and known.any() and other.any():
        score = np.asarray(score, np.float64)
        out["auroc"] = float(roc_auc_score(other, score))
        fpr, tpr, _ = roc_curve(other, score, drop_intermediate=False)
        out["fpr_at_95_tpr"] = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    out["confusion"] = confusion_matrix(labels, pred, labels=list(range(C + 1))).tolist()
    return out


def evaluate(detector: Detector, data) -> dict:
    """Metrics of a fitted detector on labelled outputs (e.g. test, evaluated once)."""
    data = as_outputs(data)
    if data.labels is None:
        raise ValueError("evaluate needs labelled outputs")
    result = metrics(data.labels, detector.predict(data), detector.score(data), num_known=detector.num_known_,
                     known_pred=detector.known_prediction(data))
    return {"method": detector.method, "detector": repr(detector), **result}


def fit_and_evaluate(detector: Detector, val, test, *, train=None) -> dict:
    """The protocol: fit on val (train only as a distance reference), evaluate on test once."""
    return evaluate(detector.fit(val, train=train), test)


def detector_table(val, test, detectors: Sequence[Detector] | None = None, *, train=None):
    """One row per detector fitted on val and reported on test. With ``detectors=None``: every default
    detector that the outputs support (Voting needs tta_logits, Mahalanobis/KNN features)."""
    import pandas as pd  # only here: openset itself needs numpy, scipy and scikit-learn alone

    val, test = as_outputs(val), as_outputs(test)
    if detectors is None:
        detectors = [d for d in default_detectors()
                     if all(getattr(val, n) is not None and getattr(test, n) is not None for n in d.needs)]
    cols = ["detector", "macro_f1", "other_precision", "other_recall", "other_f1", "closed_set_accuracy", "auroc",
            "fpr_at_95_tpr"]
    rows = [{k: m[k] for k in cols} for m in (fit_and_evaluate(d, val, test, train=train) for d in detectors)]
    return pd.DataFrame(rows).set_index("detector")


def tune(val, *, k: float = PAPER_K, overrides: Mapping | None = None, classes: Sequence[str] | None = None,
         rule: str = "mean_std") -> dict:
    """The notebook tuner's logic (section VI): PerClassLogit at (k, overrides) on val, with its
    macro-F1, Other P/R/F1, confusion matrix and thresholds ({name: T} with classes, else a list)."""
    det = PerClassLogit(k, overrides, rule, classes=classes).fit(val)
    m = evaluate(det, val)
    names = det.classes if det.classes is not None else None
    thresholds = dict(zip(names, det.thresholds_.tolist())) if names else det.thresholds_.tolist()
    return {**{key: m[key] for key in ("macro_f1", "other_f1", "other_precision", "other_recall", "confusion")},
            "thresholds": thresholds, "detector": det}
