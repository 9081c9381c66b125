"""Distance detectors: the paper's logit distance (IX) and the feature-space anchors (Mahalanobis, k-NN)."""
from __future__ import annotations

import warnings

import numpy as np

from .base import Detector, Outputs


def _covariance(centered: np.ndarray, shrinkage) -> np.ndarray:
    """Covariance of centred rows, shrunk towards a scaled identity: Ledoit-Wolf's weight with
    "auto" (512-D features from a few hundred val images are singular otherwise), else the given one."""
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf

        return ledoit_wolf(centered, assume_centered=True)[0]
    s = centered.T @ centered / max(len(centered), 1)
    return (1.0 - shrinkage) * s + shrinkage * np.trace(s) / len(s) * np.eye(len(s))


def _reference(data: Outputs, num_known: int, *, correct_only: bool, who: str):
    """Known images of the reference set, preferably only the correctly classified ones. A class with no
    correctly classified image (a weak model, a small val set) falls back to all of its images, with a
    warning: a rough reference beats refusing to score."""
    if data.labels is None:
        raise ValueError(f"{who}: the train outputs need labels")
    mask = data.labels < num_known
    missing = sorted(set(range(num_known)) - set(data.labels[mask].tolist()))
    if missing:
        raise ValueError(f"{who}: no reference image of class(es) {missing}; fit on a larger val set or pass train=...")
    if correct_only:
        correct = mask & (data.logits.argmax(1) == data.labels)
        fallback = sorted(set(range(num_known)) - set(data.labels[correct].tolist()))
        if fallback:
            warnings.warn(f"{who}: class(es) {fallback} have no correctly classified reference image; "
                          "using all their images instead", stacklevel=3)
            correct |= mask & np.isin(data.labels, fallback)
        mask = correct
    return mask


class _KthNeighbour:
    """Distance to the k-th nearest row of a bank; leave-one-out for queries that are bank members
    (fitting on val scores val: without it every known val image would find itself at distance 0)."""

    def __init__(self, bank: np.ndarray, k: int):
        from sklearn.neighbors import NearestNeighbors

        if len(bank) < 2:
            raise ValueError(f"k-NN needs at least 2 reference images, got {len(bank)}")
        self.k = min(k, len(bank) - 1)
        self.nn = NearestNeighbors().fit(bank)

    def __call__(self, query: np.ndarray, members: np.ndarray | None = None) -> np.ndarray:
        dist = self.nn.kneighbors(query, n_neighbors=self.k + (members is not None))[0]
        return dist[:, self.k - 1] if members is None else np.where(members, dist[:, self.k], dist[:, self.k - 1])


class LogitDistance(Detector):
    """The paper's second proposal (IX): the logit vector as a point in R^C, judged by its distance to
    the outputs of correctly classified known images (train if given, else val), which keeps the
    correlations between classes that the max discards. "mahalanobis": squared distance to the mean
    of the predicted class (shared or per-class covariance, shrunk); "knn": Euclidean distance to the
    k-th nearest reference logit vector."""

    method, uses_train = "logit-distance", True

    def __init__(self, kind: str = "mahalanobis", k: int = 10, covariance: str = "shared",
                 shrinkage="auto", **kw):
        if kind not in ("mahalanobis", "knn") or covariance not in ("shared", "per_class"):
            raise ValueError(f"kind={kind!r}, covariance={covariance!r}: expected kind 'mahalanobis' or "
                             "'knn' and covariance 'shared' or 'per_class'")
        super().__init__(**kw)
        self.params.update(kind=kind, k=k, covariance=covariance, shrinkage=shrinkage)

    def _fit(self, val, train):
        p, C = self.params, self.num_known_
        ref = _reference(train, C, correct_only=True, who="LogitDistance")
        x, y = train.logits[ref], train.labels[ref]
        if p["kind"] == "knn":
            self.knn_ = _KthNeighbour(x, p["k"])
            return self.knn_(val.logits, ref) if train is val else None
        self.means_ = np.stack([x[y == c].mean(0) for c in range(C)])
        shared = np.linalg.pinv(_covariance(x - self.means_[y], p["shrinkage"]), hermitian=True)
        self.precisions_ = np.stack([
            np.linalg.pinv(_covariance(x[y == c] - self.means_[c], p["shrinkage"]), hermitian=True)
            if p["covariance"] == "per_class" and (y == c).sum() >= 2 else shared for c in range(C)])

    def _score(self, data):
        if self.params["kind"] == "knn":
            return self.knn_(data.logits)
        pred = data.logits.argmax(1)
        diff = data.logits - self.means_[pred]
        return np.einsum("ni,nij,nj->n", diff, self.precisions_[pred], diff, optimize=True)


class Mahalanobis(Detector):
    """Lee et al. 2018 on penultimate features: class means and one shared covariance from the known
    images of the reference set (train if given, else val); score = half the squared Mahalanobis
    distance to the closest class mean. ``shrinkage=0`` is the paper's plain estimate."""

    method, needs, uses_train = "mahalanobis", ("features",), True

    def __init__(self, shrinkage="auto", **kw):
        super().__init__(**kw)
        self.params["shrinkage"] = shrinkage

    def _fit(self, val, train):
        ref = _reference(train, self.num_known_, correct_only=False, who="Mahalanobis")
        z, y = train.features[ref], train.labels[ref]
        self.means_ = np.stack([z[y == c].mean(0) for c in range(self.num_known_)])
        cov = _covariance(z - self.means_[y], self.params["shrinkage"])
        self.precision_ = np.linalg.pinv(cov, hermitian=True)

    def _score(self, data):
        # (z - mu)^T P (z - mu) for every class mean as matrix products (BLAS), not a per-row einsum:
        # z^T P z - 2 z^T P mu + mu^T P mu
        z, mu, prec = data.features, self.means_, self.precision_
        zp = z @ prec
        d2 = (zp * z).sum(1)[:, None] - 2.0 * zp @ mu.T + ((mu @ prec) * mu).sum(1)[None, :]
        return 0.5 * np.maximum(d2.min(axis=1), 0.0)


class KNN(Detector):
    """Sun et al. 2022: distance to the k-th nearest L2-normalised penultimate feature of the known
    images of the reference set (train if given, else val, leave-one-out). k = 50 (theirs for CIFAR, with
    5,000 images per class), capped at half the smallest class of the reference set (``k_``): the k-th
    neighbour of a known image must lie in its own class, else the score turns upside down."""

    method, needs, uses_train = "knn", ("features",), True

    def __init__(self, k: int = 50, **kw):
        super().__init__(**kw)
        self.params["k"] = k

    @staticmethod
    def _normalise(z):
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def _fit(self, val, train):
        ref = _reference(train, self.num_known_, correct_only=False, who="KNN")
        smallest = int(np.bincount(train.labels[ref], minlength=self.num_known_).min())
        self.k_ = max(1, min(self.params["k"], smallest // 2))
        self.knn_ = _KthNeighbour(self._normalise(train.features[ref]), self.k_)
        return self.knn_(self._normalise(val.features), ref) if train is val else None

    def _score(self, data):
        return self.knn_(self._normalise(data.features))
