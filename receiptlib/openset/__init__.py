"""Detecting Other (paper sections VI and IX): detectors on cached outputs, metrics, thresholds file.

Every detector follows one API, after pytorch-ood: ``det.fit(val)`` learns on validation outputs and
returns the detector; ``det.score(data)`` is a float per image, higher = more likely Other;
``det.predict(data)`` gives labels 0..C where C = number of known classes is the reserved Other index.
The known-class prediction is the argmax of the logits (of the vote for `Voting`); the detector only
decides Other. ``data`` is an `Outputs` (or the dict of ``run.outputs(split)``, or a bare logits array).

Threshold rule, one for all score detectors: unless given, ``other_threshold`` is the value on the
val scores that maximises macro-F1 over the C+1 labels on val (its known images and its Other
chains), Other iff score > other_threshold; ``rule="tpr95"`` keeps 95% of the known val images
instead (the OOD literature's operating point, for a val set without Other). Test is never used, but by the
labelled same-chain protocol of `protocols`, which fits on one half of test's Other photos and scores the other.

Modules: base (Outputs, the threshold rule, Detector), detectors (the logit detectors and the registry),
distances (logit distance, Mahalanobis, k-NN), evaluation (metrics and the protocol), thresholds (the
thresholds file), decision (any Other decision as a function of logits), operating (the per-class rule over a
grid of k, and the threshold presets), intervals (the paired cluster bootstrap on test), protocols (thresholds
fitted with Other photos of val's unknown chains or of test's own, on the same evaluation photos). numpy, scipy and
scikit-learn only.
"""
from __future__ import annotations

from .base import Detector, Outputs, as_outputs, f1_from_counts, fit_threshold, macro_f1_sweep
from .decision import Decision, as_decision
from .detectors import (METHODS, PAPER_K, PAPER_SOFTMAX_THRESHOLD, Energy, GlobalSoftmax, MaxLogit, MaxSoftmax,
                        PerClassLogit, TTAMaxLogit, Voting, default_detectors, label_smoothing_of, make_detector,
                        paper_first_try)
from .distances import KNN, LogitDistance, Mahalanobis
from .intervals import (bootstrap_accuracy, bootstrap_macro_f1, bootstrap_weights, detector_intervals,
                        weighted_macro_f1)
from .evaluation import detector_table, evaluate, fit_and_evaluate, macro_f1, metrics, tune
from .protocols import (PROTOCOLS, ChainProtocols, chain_protocols, compare_protocols, concat,
                        split_other_by_chain, take)
from .operating import OperatingPoint, k_grid, kept_and_caught, threshold_presets, tune_grid
from .thresholds import SCHEMA, SCHEMA_VERSION, detector_from_doc, load_thresholds, save_thresholds, thresholds_doc

__all__ = ["ChainProtocols", "PAPER_K", "PAPER_SOFTMAX_THRESHOLD", "PROTOCOLS", "chain_protocols", "compare_protocols",
           "concat", "label_smoothing_of", "paper_first_try", "split_other_by_chain", "take", "Decision", "Detector", "Energy", "GlobalSoftmax", "KNN", "LogitDistance", "METHODS", "Mahalanobis",
           "MaxLogit", "MaxSoftmax", "OperatingPoint", "Outputs", "PerClassLogit", "SCHEMA", "SCHEMA_VERSION", "TTAMaxLogit", "Voting", "as_decision",
           "as_outputs", "bootstrap_accuracy", "bootstrap_macro_f1", "bootstrap_weights", "default_detectors", "detector_from_doc", "detector_intervals", "detector_table", "evaluate", "f1_from_counts", "fit_and_evaluate",
           "fit_threshold", "k_grid", "kept_and_caught", "load_thresholds", "macro_f1", "macro_f1_sweep", "make_detector", "metrics",
           "save_thresholds", "threshold_presets", "thresholds_doc", "tune", "tune_grid", "weighted_macro_f1"]
