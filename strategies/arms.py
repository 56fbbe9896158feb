"""Our own strategies ("arms"): each maps a validated, warm :class:`PoolView` to a batch.

An arm is ``(view, k, *, rng) -> (positions, scores)``; :mod:`strategies.registry`
wraps it with validation, the cold-start fallback and its config name. Every
arm scores all n rows in O(n·C) and does pairwise work only on a pre-filtered
candidate set of :func:`candidate_pool_size` rows.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from strategies import scores
from strategies._types import AnyFloatArray, FloatArray, IntArray
from strategies._view import PoolView
from strategies.cold_start import representative
from strategies.geometry import novelty
from strategies.select import k_center_greedy, top_k

__all__ = [
    "Arm",
    "CandidateSource",
    "candidate_pool_size",
    "cold_start_arm",
    "diverse_arm",
    "explore_sample_size",
    "margin_candidates",
    "random_arm",
    "scarce_candidates",
    "scarce_margin_arm",
    "scarcity_arm",
    "subsample_anchors",
    "top_score_arm",
]

POOL_FACTOR = 10  # candidates per requested item before the diversity step
POOL_MIN = 2_000
POOL_MAX = 20_000
EXPLORE_SAMPLE = 5_000  # uniform rows added when unseen classes may hide outside the uncertain region
ANCHOR_CAP = 2_000  # labeled rows used for distances, drawn at random when there are more
WEIGHT_FLOOR = 0.25  # least informative candidate's weight relative to the most informative one


class Arm(Protocol):
    """``(view, k, *, rng) -> (positions (k,), scores (k,))`` on a validated, warm view."""

    def __call__(
        self, view: PoolView, k: int, *, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray]: ...


class CandidateSource(Protocol):
    """``(view, size, *, rng) -> (positions (size,), scores (size,))``, best first."""

    def __call__(
        self, view: PoolView, size: int, *, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray]: ...


class _ProbaScore(Protocol):
    def __call__(self, proba: AnyFloatArray, /) -> FloatArray: ...


def candidate_pool_size(k: int, n: int) -> int:
    """Return ``min(n, max(k, clip(POOL_FACTOR·k, POOL_MIN, POOL_MAX)))``."""
    return min(n, max(k, min(max(POOL_FACTOR * k, POOL_MIN), POOL_MAX)))


def explore_sample_size(n: int, size: int) -> int:
    """Return how many uniform rows :func:`scarce_candidates` adds to its top ``size`` of ``n``.

    ``EXPLORE_SAMPLE``, or all ``n`` rows when no more than ``EXPLORE_SAMPLE`` lie outside the
    top. So a view that holds only the top rows of a larger pool plus a uniform sample of it
    (what a caller streaming the pool passes, see :mod:`strategies.streaming`) is considered
    whole, and the batch has the distribution it would have on the full pool.
    """
    return n if n - size <= EXPLORE_SAMPLE else EXPLORE_SAMPLE


def subsample_anchors(
    view: PoolView, rng: np.random.Generator, *, cap: int = ANCHOR_CAP
) -> AnyFloatArray | None:
    """Return at most ``cap`` labeled rows (a uniform draw), or None when there are none."""
    labeled = view.labeled_embeddings
    if labeled is None or labeled.shape[0] == 0:
        return None
    if labeled.shape[0] <= cap:
        return labeled
    return labeled[np.sort(rng.choice(labeled.shape[0], size=cap, replace=False))]


def random_arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Pick ``k`` rows uniformly without replacement; every score is 0."""
    positions: IntArray = rng.choice(view.embeddings.shape[0], size=k, replace=False).astype(np.intp)
    return positions, np.zeros(k)


def cold_start_arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Pick representative, spread-out rows (:func:`strategies.cold_start.representative`)."""
    return representative(view.embeddings, k, rng=rng, anchors=subsample_anchors(view, rng))


def top_score_arm(score: _ProbaScore) -> Arm:
    """Build an arm that takes the top ``k`` rows of ``score(view.proba)``, ties at random."""

    def arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
        values = score(_proba(view))
        positions = top_k(values, k, rng=rng)
        return positions, values[positions]

    return arm


def scarcity_arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Take the top ``k`` rows by :func:`strategies.scores.class_scarcity` alone."""
    values = scores.class_scarcity(_proba(view), view.label_counts)
    positions = top_k(values, k, rng=rng)
    return positions, values[positions]


def scarce_candidates(view: PoolView, size: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Return the ``size`` best rows by scarcity-weighted uncertainty plus novelty, best first.

    ``base = margin · class_scarcity ** 0.5`` (:func:`strategies.scores.scarce_margin`).
    With no unseen classes the result is the top ``size`` rows by ``base``.
    Otherwise, with ``lam = n_unseen / (C + n_unseen)`` (the share of classes
    not yet seen), ``final = (1 - lam) · base + lam · nov``, where ``nov`` is

    * the cosine novelty (:func:`strategies.geometry.novelty`) of each row
      relative to the labeled rows, divided by its maximum over the candidates;
      it is computed on the top ``size`` rows by ``base`` plus a uniform sample
      of ``EXPLORE_SAMPLE`` rows (every row when at most that many lie outside
      the top: :func:`explore_sample_size`), since an unseen class can sit where
      the proxy is confidently wrong; or
    * the normalised entropy of every row when ``labeled_embeddings`` is None
      (:func:`strategies.scores.scarce_explore`).
    """
    proba = _proba(view)
    base = scores.scarce_margin(proba, view.label_counts)
    n = base.shape[0]
    top = top_k(base, size, rng=rng)
    if view.n_unseen_classes == 0:
        return top, base[top]
    lam = view.n_unseen_classes / (proba.shape[1] + view.n_unseen_classes)
    anchors = subsample_anchors(view, rng)
    if anchors is None:
        final = scores.scarce_explore(proba, view.label_counts, n_unseen_classes=view.n_unseen_classes)
        best = top_k(final, size, rng=rng)
        return best, final[best]
    explore = explore_sample_size(n, size)
    considered = np.arange(n) if explore == n else np.union1d(top, rng.choice(n, size=explore, replace=False))
    nov = novelty(view.embeddings[considered], anchors)
    final = (1.0 - lam) * base[considered] + lam * nov / max(float(nov.max()), 1e-12)
    best = top_k(final, size, rng=rng)
    return considered[best], final[best]


def scarce_margin_arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Take the top ``k`` of :func:`scarce_candidates` (no diversity step)."""
    size = k if view.n_unseen_classes == 0 else candidate_pool_size(k, view.embeddings.shape[0])
    positions, values = scarce_candidates(view, size, rng=rng)
    return positions[:k], values[:k]


def diverse_arm(candidates: CandidateSource) -> Arm:
    """Build an arm that spreads ``k`` picks over a pre-filtered, scored candidate set.

    ``candidates(view, size, rng=rng)`` returns the top ``size`` rows and their
    scores ``s``. Each candidate is weighted ``w = WEIGHT_FLOOR + (1 - WEIGHT_FLOOR)
    · (s - min s) / (max s - min s)`` and :func:`strategies.select.k_center_greedy`
    picks by ``w · distance to the nearest labeled row or earlier pick``.
    """

    def arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
        size = candidate_pool_size(k, view.embeddings.shape[0])
        pool, values = candidates(view, size, rng=rng)
        spread = float(values.max() - values.min())
        unit = (values - values.min()) / spread if spread > 0 else np.ones_like(values)
        weights: FloatArray = WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * unit
        anchors = subsample_anchors(view, rng)
        picks = k_center_greedy(view.embeddings[pool], k, rng=rng, anchors=anchors, weights=weights)
        return pool[picks], values[picks]

    return arm


def margin_candidates(view: PoolView, size: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Return the ``size`` rows with the highest margin score, best first."""
    values = scores.margin(_proba(view))
    top = top_k(values, size, rng=rng)
    return top, values[top]


def _proba(view: PoolView) -> AnyFloatArray:
    if view.proba is None:
        raise ValueError("this strategy needs proba; the view is at cold start")
    return view.proba
