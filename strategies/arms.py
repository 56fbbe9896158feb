"""Our own strategies ("arms"): each maps a validated, warm :class:`PoolView` to a batch.

An arm is ``(view, k, *, rng) -> (positions, scores)``; :mod:`strategies.registry`
wraps it with validation, the cold-start fallback and its config name. Every
arm scores all n rows in O(n·C) and does pairwise work only on a pre-filtered
candidate set of :func:`candidate_pool_size` rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np

from strategies import scores
from strategies._types import AnyFloatArray, FloatArray, IntArray
from strategies._view import PoolView
from strategies.cold_start import representative
from strategies.geometry import novelty
from strategies.named import named_share, nearest_to_names
from strategies.select import k_center_greedy, top_k

__all__ = [
    "Arm",
    "CandidateSource",
    "candidate_pool_size",
    "cold_start_arm",
    "diverse_arm",
    "explore_sample_size",
    "margin_candidates",
    "names_first",
    "random_arm",
    "scarce_candidates",
    "scarce_diverse_arm",
    "scarce_margin_arm",
    "scarce_shortlist",
    "scarcity_arm",
    "subsample_anchors",
    "top_score_arm",
]

POOL_FACTOR = 3  # candidates per requested item before the diversity step, at least (see candidate_pool_size)
BOUNDARY_FACTOR = 160  # candidates per item for a binary task x 2 / n_classes (see candidate_pool_size)
POOL_MIN = 150  # a shortlist to spread even a small batch over
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


def candidate_pool_size(k: int, n: int, *, n_classes: int) -> int:
    """Return how many top rows the diversity step spreads a batch of ``k`` over.

    ``min(n, max(k, clip(ceil(per_item · k), POOL_MIN, POOL_MAX)))`` with
    ``per_item = max(POOL_FACTOR, BOUNDARY_FACTOR / n_classes)``.

    The top of an uncertainty ranking crowds onto the decision boundaries, and there are
    about ``n_classes - 1`` of them: with two classes the best rows are near-duplicates of
    one boundary, and the shortlist must be deep (80 rows per pick) for the batch to reach
    distinct regions; with many classes the best rows already lie on many boundaries, and
    a deep shortlist only trades informative rows for distant ones (down to a quarter of
    the best score, :data:`WEIGHT_FLOOR`). The depth therefore falls as ``1 / n_classes``,
    to ``POOL_FACTOR`` rows per pick from about 53 classes on, and never below ``POOL_MIN``
    rows. Over 10 paired seeds on Banking77, its long-tail variant and TREC's 50 fine
    classes (each with batches that put the floors in play), 3 rows per pick and 150 rows
    beat Zhdanov 2019's 10 and 200 on all three (AULC +0.004, +0.002, +0.025); 4 and 200 gained
    less (+0.003, +0.004, +0.003), 2 and 100 lost on the long tail (-0.002). With at most 10
    classes and batches of 15 or more neither floor is reached. ``BOUNDARY_FACTOR`` keeps the 2,000-row shortlist that
    binary tasks with batches of 25 had before. ``n_classes`` counts the declared classes,
    seen or not (>= 2; smaller values are treated as 2).
    """
    per_item = max(float(POOL_FACTOR), BOUNDARY_FACTOR / max(n_classes, 2))
    size = max(int(np.ceil(per_item * k)), POOL_MIN)
    return min(n, max(k, min(size, POOL_MAX)))


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
    n = view.embeddings.shape[0]
    size = k if view.n_unseen_classes == 0 else candidate_pool_size(k, n, n_classes=_n_classes(view))
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
        size = candidate_pool_size(k, view.embeddings.shape[0], n_classes=_n_classes(view))
        pool, values = candidates(view, size, rng=rng)
        return _spread(view, pool, values, k, rng=rng)

    return arm


def scarce_shortlist(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Return the default strategy's shortlist: informative rows plus, while classes are unseen, novel ones.

    * The top ``size = candidate_pool_size(k, n, n_classes=C + n_unseen)`` rows by
      ``base = margin · class_scarcity ** 0.5`` (:func:`strategies.scores.scarce_margin`).
    * While ``n_unseen > 0`` and labeled rows are known, also the ``m = ceil(lam · k)`` rows
      with the highest cosine novelty (:func:`strategies.geometry.novelty`) among a uniform
      sample of ``EXPLORE_SAMPLE`` pool rows outside that top (every row when at most that
      many lie outside it: :func:`explore_sample_size`), with ``lam = n_unseen / (C + n_unseen)``
      the share of classes not yet seen. An unseen class can sit where the proxy is
      confidently wrong, so uncertainty alone never reaches it; but exploration gets a share
      of the *batch* in proportion to the unseen classes, added to the shortlist, instead of
      re-ranking the whole shortlist by novelty (which swapped informative rows for distant
      ones: -0.01 AULC on Banking77).
    * With no labeled rows known, the top ``size`` rows by
      :func:`strategies.scores.scarce_explore` (entropy stands in for novelty).

    Returns:
        (positions, scores): ``size`` or ``size + m`` distinct positions, the informative
        rows first, best first; ``scores`` are each row's ``base`` (``scarce_explore`` in
        the last case).
    """
    proba = _proba(view)
    n = proba.shape[0]
    size = candidate_pool_size(k, n, n_classes=_n_classes(view))
    base = scores.scarce_margin(proba, view.label_counts)
    top = top_k(base, size, rng=rng)
    if view.n_unseen_classes == 0:
        return top, base[top]
    anchors = subsample_anchors(view, rng)
    if anchors is None:
        final = scores.scarce_explore(proba, view.label_counts, n_unseen_classes=view.n_unseen_classes)
        best = top_k(final, size, rng=rng)
        return best, final[best]
    lam = view.n_unseen_classes / (proba.shape[1] + view.n_unseen_classes)
    explore = explore_sample_size(n, size)
    drawn = np.arange(n) if explore == n else rng.choice(n, size=explore, replace=False)
    considered = np.setdiff1d(drawn, top)
    n_novel = min(int(np.ceil(lam * k)), considered.size)
    if n_novel == 0:
        return top, base[top]
    novel = considered[top_k(novelty(view.embeddings[considered], anchors), n_novel, rng=rng)]
    positions: IntArray = np.concatenate([top, novel]).astype(np.intp)
    return positions, base[positions]


def scarce_diverse_arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Spread ``k`` picks over :func:`scarce_shortlist` by weighted greedy k-center.

    Once every declared class has a label, the weights are those of :func:`diverse_arm`
    (``WEIGHT_FLOOR`` for the least informative row, 1 for the most). While some class has
    none, every informative row of the shortlist weighs 1 and the novel rows added for
    unseen classes keep ``WEIGHT_FLOOR``: the batch is then the plain k-center cover of the
    informative rows, and a novel row is picked only when it lies more than ``1 / WEIGHT_FLOOR``
    times as far from the labeled rows and earlier picks as every informative row left.
    The model cannot rank rows of a class it has never seen, and within the informative
    rows an even spread reaches more new classes than one favouring the top: on Banking77
    cut to 100:1 (10 seeds) every class was seen after 471 labels instead of 562.
    """
    pool, values = scarce_shortlist(view, k, rng=rng)
    if view.n_unseen_classes == 0:
        return _spread(view, pool, values, k, rng=rng)
    n_informative = candidate_pool_size(k, view.embeddings.shape[0], n_classes=_n_classes(view))
    weights: FloatArray = np.where(np.arange(pool.size) < n_informative, 1.0, WEIGHT_FLOOR)
    return _pick(view, pool, values, weights, k, rng=rng)


def _spread(
    view: PoolView, pool: IntArray, values: FloatArray, k: int, *, rng: np.random.Generator
) -> tuple[IntArray, FloatArray]:
    """Pick ``k`` of ``pool`` by ``w · distance to the nearest labeled row or earlier pick``."""
    spread = float(values.max() - values.min())
    unit = (values - values.min()) / spread if spread > 0 else np.ones_like(values)
    weights: FloatArray = WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * unit
    return _pick(view, pool, values, weights, k, rng=rng)


def _pick(
    view: PoolView, pool: IntArray, values: FloatArray, weights: FloatArray, k: int, *, rng: np.random.Generator
) -> tuple[IntArray, FloatArray]:
    """Pick ``k`` of ``pool`` by weighted greedy k-center anchored on (at most ``ANCHOR_CAP``) labeled rows."""
    anchors = subsample_anchors(view, rng)
    picks = k_center_greedy(view.embeddings[pool], k, rng=rng, anchors=anchors, weights=weights)
    return pool[picks], values[picks]


def names_first(arm: Arm) -> Arm:
    """Build an arm that gives part of the batch to rows nearest the unseen classes' names.

    With ``view.unseen_prototypes`` set, the first ``m =`` :func:`strategies.named.named_share`
    picks are :func:`strategies.named.nearest_to_names` (one row per name, clearest match
    first); ``arm`` picks the other ``k - m`` from the remaining rows, with the named rows
    counted as labeled so its diversity step stays away from them (when the labeled rows and the
    named ones exceed ``ANCHOR_CAP``, the labeled rows are thinned, never the named ones). Without prototypes it is
    ``arm`` itself. The named rows score their ``base`` (:func:`strategies.scores.scarce_margin`).
    It wraps warm arms only (it needs ``proba``); the registry's cold-start fallback runs first.

    The default strategy applies it after the cold start only: a representative first batch
    is a better first training set than rows that resemble a label's name (on SMS spam,
    names in the first batch cost 0.006 AULC over 10 seeds), and it already finds the
    common classes; the names then look for the classes it missed.
    """

    def wrapped(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
        prototypes = view.unseen_prototypes
        n_named = 0 if prototypes is None else named_share(
            k,
            n_prototypes=prototypes.shape[0],
            n_seen_classes=int(np.count_nonzero(view.label_counts)),
            n_unseen_classes=view.n_unseen_classes,
        )
        if prototypes is None or n_named == 0:
            return arm(view, k, rng=rng)
        proba = _proba(view)
        named, _ = nearest_to_names(view.embeddings, prototypes, n_named, rng=rng)
        named_values = scores.scarce_margin(proba[named], view.label_counts)
        if n_named == k:
            return named, named_values
        is_rest = np.ones(view.embeddings.shape[0], dtype=bool)
        is_rest[named] = False
        rest = np.flatnonzero(is_rest)
        labeled = view.embeddings[named]
        earlier = subsample_anchors(view, rng, cap=max(ANCHOR_CAP - n_named, 0))  # room for the named rows
        if earlier is not None:
            labeled = np.concatenate([earlier, labeled.astype(earlier.dtype)])
        remaining = replace(
            view,
            embeddings=view.embeddings[rest],
            proba=proba[rest],
            labeled_embeddings=labeled,
            unseen_prototypes=None,
        )
        positions, values = arm(remaining, k - n_named, rng=rng)
        picked: IntArray = np.concatenate([named, rest[positions]]).astype(np.intp)
        return picked, np.concatenate([named_values, values]).astype(np.float64)

    wrapped.__doc__ = arm.__doc__
    return wrapped


def margin_candidates(view: PoolView, size: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Return the ``size`` rows with the highest margin score, best first."""
    values = scores.margin(_proba(view))
    top = top_k(values, size, rng=rng)
    return top, values[top]


def _n_classes(view: PoolView) -> int:
    """Declared classes: those with labels (``proba``'s columns) plus the unseen ones."""
    return int(_proba(view).shape[1]) + view.n_unseen_classes


def _proba(view: PoolView) -> AnyFloatArray:
    if view.proba is None:
        raise ValueError("this strategy needs proba; the view is at cold start")
    return view.proba
