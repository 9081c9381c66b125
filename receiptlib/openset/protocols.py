"""Where the Other photos that fit the thresholds come from: two protocols evaluated on the same photos.

- ``"disjoint"`` (the report's, honest): val's Other photos, whose unknown chains test never shows.
- ``"same_chains"`` (the paper's setting: it tuned its thresholds by hand on test photos, so on the unknown
  chains it was then scored on): other photos of test's own unknown chains.

`chain_protocols` splits test's Other photos within each unknown chain into two halves by photo (seeded): one
half, with val's known photos, fits the same-chain thresholds; the other half, with all of test's known photos,
is where both protocols are evaluated. The disjoint fit takes val's known photos and as many of val's Other
photos as that half holds (drawn photo by photo, seeded; when val has fewer, the half gives up a seeded draw of
its surplus to the evaluation photos), so the two fits differ only in where their Other photos came from. `compare_protocols` fits a fresh copy of each detector under each protocol and scores both on
the evaluation photos, with a paired bootstrap of the difference (Other resampled by chain, `intervals`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Mapping, Sequence

import numpy as np

from .base import Detector, Outputs, as_outputs
from .evaluation import evaluate
from .intervals import LEVEL, N_RESAMPLES, bootstrap_macro_f1

PROTOCOLS = {
    "disjoint": "disjoint chains: thresholds fitted with val's Other photos, from unknown chains test never shows "
                "(the honest protocol)",
    "same_chains": "same chains: thresholds fitted with other photos of test's own unknown chains (the paper's "
                   "setting)",
}
READOUT = ("macro_f1", "other_f1", "other_precision", "other_recall", "known_accuracy", "auroc")


def _chain_array(chains, labels, num_known: int, what: str) -> np.ndarray:
    chains = np.asarray(chains, dtype=object)
    if len(chains) != len(labels):
        raise ValueError(f"{what}: {len(chains)} chains for {len(labels)} photos")
    other = np.asarray(labels) == num_known
    if any(c is None or (isinstance(c, float) and np.isnan(c)) for c in chains[other]):
        raise ValueError(f"{what}: every Other photo needs its chain (e.g. rl.data.photo_table(...)['chain'])")
    return chains


def split_other_by_chain(labels, num_known: int, chains: Sequence, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held_out): the indices of the Other photos (label ``num_known``) in two halves, split within each
    chain (``chains[i]``: photo i's chain; read for Other photos only) by photo: of a chain's n photos, in a
    seeded random order, the first n // 2 go to ``fit`` and the rest to ``held_out``, so every chain with at
    least 2 photos is in both halves and a chain of one photo is held out. Sorted index arrays, disjoint."""
    labels = np.asarray(labels, np.int64)
    chains = _chain_array(chains, labels, num_known, "split_other_by_chain")
    other = np.flatnonzero(labels == num_known)
    rng = np.random.default_rng(seed)
    fit, held = [], []
    names = chains[other].astype(str)
    for name in sorted(set(names)):  # a fixed order, so the seed alone decides the split
        members = rng.permutation(other[names == name])
        fit.append(members[: len(members) // 2])
        held.append(members[len(members) // 2:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(fit), cat(held)


def take(data, index) -> Outputs:
    """The photos ``index`` of an `Outputs` (every field that is there, paths included), in that order."""
    data, index = as_outputs(data), np.asarray(index, np.int64)
    picked = {}
    for f in fields(Outputs):
        value = getattr(data, f.name)
        if value is not None:
            picked[f.name] = [value[i] for i in index] if isinstance(value, list) else value[index]
    return Outputs(**picked)


def concat(*parts) -> Outputs:
    """`Outputs` one after the other (a field is kept only when every part has it)."""
    parts = [as_outputs(p) for p in parts]
    joined = {}
    for f in fields(Outputs):
        values = [getattr(p, f.name) for p in parts]
        if all(v is not None for v in values):
            joined[f.name] = sum((list(v) for v in values), []) if isinstance(values[0], list) else np.concatenate(values)
    return Outputs(**joined)


@dataclass
class ChainProtocols:
    """The two fits and the evaluation photos of `chain_protocols`; indices point into the val and test given."""

    fit: dict[str, Outputs]            # {"disjoint": ..., "same_chains": ...}: what each protocol fits on
    evaluation: Outputs                # test's known photos and the held-out half of its Other photos
    evaluation_chains: np.ndarray      # the chain of each evaluation photo (the bootstrap's Other clusters)
    evaluation_index: np.ndarray       # into test
    test_fit_index: np.ndarray         # test's Other photos that fit the same-chain thresholds
    val_other_index: np.ndarray        # val's Other photos that fit the disjoint thresholds
    seed: int = 0
    labels: dict = field(default_factory=lambda: dict(PROTOCOLS))

    def counts(self) -> dict:
        """Photos per part, as plain ints: what a results file records beside the rows."""
        C = self.evaluation.num_known
        n = lambda o, other: int(((o.labels == C) if other else (o.labels < C)).sum())  # noqa: E731
        return {"fit": {name: {"known": n(o, False), "other": n(o, True)} for name, o in self.fit.items()},
                "evaluation": {"known": n(self.evaluation, False), "other": n(self.evaluation, True)},
                "evaluation_other_chains": int(len(set(self.evaluation_chains[self.evaluation.labels == C].astype(str))))}


def chain_protocols(val, test, test_chains: Sequence, *, seed: int = 0) -> ChainProtocols:
    """The two protocols on ``val`` and ``test`` (labelled `Outputs`), ``test_chains[i]`` the chain of test photo i
    (notebook 07's ``rl.data.photo_table(data_dir, test.paths, missing="keep")["chain"]``); see the module
    docstring. The same seed gives the same halves."""
    val, test = as_outputs(val), as_outputs(test)
    if val.labels is None or test.labels is None:
        raise ValueError("chain_protocols needs labelled val and test outputs")
    if val.num_known != test.num_known:
        raise ValueError(f"val has {val.num_known} known classes, test {test.num_known}")
    C = test.num_known
    chains = _chain_array(test_chains, test.labels, C, "chain_protocols")
    fit_index, held = split_other_by_chain(test.labels, C, chains, seed=seed)
    if not len(fit_index) or not len(held):
        raise ValueError(f"chain_protocols: test has {int((test.labels == C).sum())} Other photos; both halves "
                         "need at least one (a chain needs 2 photos to be in both)")
    val_other = np.flatnonzero(val.labels == C)
    if not len(val_other):
        raise ValueError("chain_protocols: val has no Other photo to fit the disjoint protocol on")
    rng = np.random.default_rng(seed)
    m = min(len(val_other), len(fit_index))  # both fits get m Other photos
    val_other = np.sort(rng.choice(val_other, size=m, replace=False))
    if m < len(fit_index):  # val has fewer Other photos than the half: the half's surplus is evaluated instead
        keep = np.sort(rng.choice(len(fit_index), size=m, replace=False))
        held = np.sort(np.concatenate([held, np.delete(fit_index, keep)]))
        fit_index = fit_index[keep]
    val_known = np.flatnonzero(val.labels < C)
    evaluation_index = np.sort(np.concatenate([np.flatnonzero(test.labels < C), held]))
    fit = {"disjoint": take(val, np.concatenate([val_known, val_other])),
           "same_chains": concat(take(val, val_known), take(test, fit_index))}
    return ChainProtocols(fit=fit, evaluation=take(test, evaluation_index), evaluation_chains=chains[evaluation_index],
                          evaluation_index=evaluation_index, test_fit_index=fit_index, val_other_index=val_other,
                          seed=seed)


def compare_protocols(detectors: Mapping[str, Detector], protocols: ChainProtocols, *, train=None,
                      n: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict[str, dict]:
    """{name: {"disjoint": metrics, "same_chains": metrics, "difference", "diff_low", "diff_high"}}: a fresh copy of
    each detector fitted under each protocol (the detectors given are left as they are), both evaluated on
    ``protocols.evaluation``; difference = same_chains − disjoint macro-F1, with its paired bootstrap interval
    over the evaluation photos (known by photo, Other by chain). Plain JSON-ready values."""
    out = {}
    ev = protocols.evaluation
    other_groups = np.where(ev.labels == ev.num_known, protocols.evaluation_chains, None)
    for name, det in detectors.items():
        fitted = {p: copy.deepcopy(det).fit(protocols.fit[p], train=train) for p in PROTOCOLS}
        row = {p: {k: evaluate(d, ev)[k] for k in READOUT} for p, d in fitted.items()}
        boot = bootstrap_macro_f1(ev.labels, {p: d.predict(ev) for p, d in fitted.items()}, num_known=ev.num_known,
                                  other_groups=other_groups, reference="disjoint", n=n, seed=seed, level=level)
        same = boot["same_chains"]
        out[name] = {**row, "difference": same["diff_vs_reference"], "diff_low": same["diff_low"],
                     "diff_high": same["diff_high"]}
    return out
