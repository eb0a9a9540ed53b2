"""Acquisition functions: which unlabelled pool clips to label next (pure numpy, no torch, no Ray).

Every function has the same signature and is reached through :func:`select`::

    select(name, k, probs=None, embeddings=None, labelled_mask=None, rng=None) -> indices

- ``probs``: (N, C) class probabilities of the current model for every pool clip (rows of
  labelled clips are ignored); needed by the uncertainty functions.
- ``embeddings``: (N, D) one vector per pool clip (the pooled frozen encoder features); needed
  by the diversity functions.
- ``labelled_mask``: (N,) bool, True for clips already labelled; they are never returned.
- returns ``min(k, unlabelled)`` distinct row indices into the pool, most wanted first.

Uncertainty functions score each unlabelled clip and take the k highest scores; ties go to the
lower index (a stable sort), so they are deterministic. ``random`` and the k-means functions use
``rng`` (a seed or ``numpy.random.Generator``) and are reproducible for a given seed.

>>> probs = np.array([[0.9, 0.05, 0.05],     # sure
...                   [0.4, 0.3, 0.3],       # flattest
...                   [0.5, 0.5, 0.0],       # two classes tied
...                   [0.34, 0.33, 0.33]])   # flatter still, but already labelled
>>> labelled = np.array([False, False, False, True])
>>> select("entropy", 1, probs=probs, labelled_mask=labelled).tolist()
[1]
>>> select("margin", 1, probs=probs, labelled_mask=labelled).tolist()
[2]
>>> select("random", 2, labelled_mask=labelled, rng=0).tolist() == select("random", 2, labelled_mask=labelled, rng=0).tolist()
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


class AcquisitionError(ValueError):
    """An acquisition function got an unknown name or inputs it cannot use; the message says which."""


# --- scores (higher = more wanted) ------------------------------------------------------------

def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row: highest for the flattest distribution (the model is unsure
    among many classes)."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(probs * np.log(p)).sum(axis=1)


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """1 - the top class probability: highest where the model's best guess is weakest."""
    return 1.0 - probs.max(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """Minus the gap between the two most probable classes: highest where the model hesitates
    between two classes (smallest margin)."""
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top2 = np.sort(probs, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def highest(scores: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """The acquisition taking the k unlabelled clips of highest ``scores(probs)`` (ties: lower index)."""
    def pick(k, probs, embeddings, labelled, rng) -> np.ndarray:
        candidates = np.flatnonzero(~labelled)
        return candidates[np.argsort(-scores(probs)[candidates], kind="stable")[:k]]
    return pick


def random(k, probs, embeddings, labelled, rng) -> np.ndarray:
    """k unlabelled clips drawn uniformly without replacement (the baseline every method must beat)."""
    candidates = np.flatnonzero(~labelled)
    return rng.choice(candidates, size=min(k, candidates.size), replace=False)


def coreset(k, probs, embeddings, labelled, rng) -> np.ndarray:
    """Greedy core-set (k-center, Sener & Savarese 2018): repeatedly take the unlabelled clip farthest
    (Euclidean) from every labelled or already chosen clip, so the labelled set covers the embedding
    space. With nothing labelled yet the first pick is the clip closest to the pool's mean."""
    from sklearn.metrics import pairwise_distances_argmin_min

    candidates = np.flatnonzero(~labelled)
    k = min(k, candidates.size)
    x = np.asarray(embeddings, dtype=np.float64)
    chosen: list[int] = []
    if labelled.any():
        nearest = pairwise_distances_argmin_min(x[candidates], x[labelled])[1]
    else:
        first = candidates[np.argmin(((x[candidates] - x.mean(0)) ** 2).sum(1))]
        chosen.append(int(first))
        nearest = np.sqrt(((x[candidates] - x[first]) ** 2).sum(1))
    while len(chosen) < k:
        nearest[np.isin(candidates, chosen)] = -np.inf
        pick = int(candidates[int(np.argmax(nearest))])
        chosen.append(pick)
        nearest = np.minimum(nearest, np.sqrt(((x[candidates] - x[pick]) ** 2).sum(1)))
    return np.asarray(chosen[:k], dtype=np.int64)


def kmeans(k, probs, embeddings, labelled, rng) -> np.ndarray:
    """k-means (k clusters) on the unlabelled clips' embeddings; from each cluster the clip nearest its
    centre. Used for the cold start (nothing labelled yet) and available as an acquisition."""
    from sklearn.cluster import KMeans

    candidates = np.flatnonzero(~labelled)
    k = min(k, candidates.size)
    if k == 0:
        return np.zeros(0, np.int64)
    x = np.asarray(embeddings, dtype=np.float64)[candidates]
    seed = int(rng.integers(2**31 - 1))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    distance = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)   # (n, k)
    chosen: list[int] = []
    taken = np.zeros(len(candidates), bool)
    for c in np.argsort(distance.min(0)):     # centres with a close member first
        order = np.argsort(distance[:, c], kind="stable")
        pick = next(i for i in order if not taken[i])
        taken[pick] = True
        chosen.append(int(candidates[pick]))
    return np.asarray(chosen, dtype=np.int64)


@dataclass(frozen=True)
class Acquisition:
    name: str
    fn: Callable
    needs: str          # "probs", "embeddings" or "" (random)
    kind: str           # "uncertainty", "diversity" or "baseline"


ACQUISITIONS: dict[str, Acquisition] = {a.name: a for a in (
    Acquisition("entropy", highest(entropy_scores), "probs", "uncertainty"),
    Acquisition("least_confidence", highest(least_confidence_scores), "probs", "uncertainty"),
    Acquisition("margin", highest(margin_scores), "probs", "uncertainty"),
    Acquisition("random", random, "", "baseline"),
    Acquisition("coreset", coreset, "embeddings", "diversity"),
    Acquisition("kmeans", kmeans, "embeddings", "diversity"),
)}
COLD_STARTS = ("random", "kmeans")


def select(name: str, k: int, probs=None, embeddings=None, labelled_mask=None, rng=None) -> np.ndarray:
    """Pick up to ``k`` unlabelled pool rows with acquisition ``name`` (see the module docstring)."""
    if name not in ACQUISITIONS:
        raise AcquisitionError(f"unknown acquisition '{name}'; choose from {', '.join(ACQUISITIONS)}")
    spec = ACQUISITIONS[name]
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise AcquisitionError(f"{name}: k must be an integer >= 0 (got {k!r})")
    sizes = [len(a) for a in (probs, embeddings, labelled_mask) if a is not None]
    if not sizes:
        raise AcquisitionError(f"{name}: give probs, embeddings or labelled_mask (the pool size is unknown)")
    n = sizes[0]
    if any(s != n for s in sizes):
        raise AcquisitionError(f"{name}: probs, embeddings and labelled_mask disagree on the pool size ({sizes})")
    labelled = np.zeros(n, bool) if labelled_mask is None else np.asarray(labelled_mask, bool)
    if spec.needs == "probs":
        if probs is None:
            raise AcquisitionError(f"{name} needs class probabilities (probs)")
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or not np.isfinite(probs).all():
            raise AcquisitionError(f"{name}: probs must be a finite (N, C) array")
    if spec.needs == "embeddings":
        if embeddings is None:
            raise AcquisitionError(f"{name} needs embeddings")
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if embeddings.ndim != 2:
            raise AcquisitionError(f"{name}: embeddings must be an (N, D) array")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if k == 0 or labelled.all():
        return np.zeros(0, np.int64)
    picked = np.asarray(spec.fn(int(k), probs, embeddings, labelled, rng), dtype=np.int64)
    # the contract every function must keep
    assert len(set(picked.tolist())) == len(picked) and not labelled[picked].any()
    return picked
