"""Which rows of a pool each registered strategy reads, so a caller can stream a large pool.

Every strategy in :data:`strategies.REGISTRY` does O(n·C) work per row and pairwise work only
on a small part of the pool. That part is the top ``n_top`` rows by a per-row score of the
probabilities (:func:`prefilter_scores`), a uniform sample of ``n_sample`` rows, or both
(:func:`prefilter` says which). A caller that cannot hold the pool in memory can therefore:

1. stream the pool once in chunks, keep the ``n_top`` best rows by :func:`prefilter_scores`
   (ties broken uniformly at random) and the probabilities of the ``n_sample`` rows it drew
   uniformly beforehand; and, when the plan's ``n_named`` is set (the default strategy while
   classes with a name vector are unseen), the ``n_named`` rows most similar to each of the
   view's ``unseen_prototypes``;
2. build a :class:`strategies.PoolView` of only those rows (the union, in any order) and call
   :func:`strategies.select_batch` with the same ``k``.

The batch then has the same distribution as the one chosen on the whole pool: each strategy
recomputes its score on the view and finds the same top rows, and a uniform sample of the
pool is a uniform sample of the view's rows wherever the strategy draws one (the random and
cold-start draws read all of a view that is exactly their sample; the default strategy's
exploration sample reads every row outside its top, :func:`strategies.arms.explore_sample_size`).
What differs is only which random numbers are drawn, so the same seed gives another batch.
The named rows are the pool's own nearest rows to each name, so the named picks are exactly
those of the whole pool; the named rows not picked stay in the view and may join the
exploration sample's candidates, a slight excess of rows near the unseen classes' names.

Pure numpy, like the rest of the package: no I/O, no global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies import arms, cold_start, modal_arms, named, scores
from strategies._checks import check_k, check_label_counts
from strategies._types import AnyFloatArray, FloatArray, IntArray
from strategies.registry import COLD_START, REGISTRY

__all__ = ["Prefilter", "prefilter", "prefilter_scores"]

# name -> (score, n_top): the per-row score its pre-filter ranks by and how many rows it keeps.
_TOP_K = "k"  # the k best rows
_POOL = "pool"  # arms.candidate_pool_size(k, n, n_classes=...) rows, before the diversity step
_RANKED = "ranked"  # modal_arms.RANKED_POOL rows (at least k)
_SCORED: dict[str, tuple[str, str]] = {
    "least_confidence": ("least_confidence", _TOP_K),
    "margin": ("margin", _TOP_K),
    "entropy": ("entropy", _TOP_K),
    "scarcity": ("class_scarcity", _TOP_K),
    "scarce_margin": ("scarce", _TOP_K),  # a candidate pool, not k, while classes are unseen
    "scarce_margin_diverse": ("scarce", _POOL),
    "margin_diverse": ("margin", _POOL),
    "modal_margin": ("margin", _TOP_K),
    "modal_ranked_batch": ("margin", _RANKED),
}
_UNSCORED = ("random", COLD_START)
_NAMED = ("scarce_margin_diverse",)  # strategies that read unseen_prototypes (strategies.arms.names_first)


@dataclass(frozen=True, slots=True)
class Prefilter:
    """The rows of an ``n``-row pool a strategy reads, for a given ``k``.

    Attributes:
        n_top: in ``[0, n]``, rows to keep by :func:`prefilter_scores`, best first; 0 when
            the strategy reads no score (random, cold start).
        n_sample: in ``[0, n]``, rows to draw uniformly without replacement from the pool.
        n_named: in ``[0, n]``, rows to keep per unseen-class prototype: the ``n_named`` rows
            most similar to each (cosine); 0 when the strategy reads no prototypes.
    """

    n_top: int
    n_sample: int
    n_named: int = 0


def prefilter(
    strategy: str,
    k: int,
    n: int,
    *,
    label_counts: IntArray | None,
    n_unseen_classes: int = 0,
    has_labeled_embeddings: bool = False,
    n_prototypes: int = 0,
) -> Prefilter:
    """Return which rows ``select_batch(strategy, view, k)`` reads of an ``n``-row view.

    Args:
        strategy: a key of :data:`strategies.REGISTRY`.
        k: 1 <= k <= n, the batch size passed to ``select_batch``.
        n: rows in the whole pool.
        label_counts: (C,) labels per class, as in the view; None when the view will have
            no ``proba`` (a cold start).
        n_unseen_classes: >= 0, as in the view.
        has_labeled_embeddings: whether the view will carry ``labeled_embeddings`` (m >= 1).
        n_prototypes: >= 0, rows of the view's ``unseen_prototypes`` (0 for None).

    Returns:
        The plan; ``n_top + n_sample`` may exceed the rows it names (the two can overlap).

    Raises:
        ValueError: an unknown strategy, ``k`` out of range, or malformed counts.
    """
    _check_name(strategy)
    check_k(k, n)
    if label_counts is not None:
        check_label_counts(label_counts)
    plan = _plan(strategy, k, n, label_counts, n_unseen_classes, has_labeled_embeddings)
    if strategy not in _NAMED or n_prototypes <= 0 or label_counts is None or plan.n_top == 0:
        return plan  # a cold start stays representative: names are for classes it missed
    n_seen = int(np.count_nonzero(label_counts))
    share = named.named_share(
        k, n_prototypes=n_prototypes, n_seen_classes=n_seen, n_unseen_classes=n_unseen_classes
    )
    return Prefilter(n_top=plan.n_top, n_sample=plan.n_sample, n_named=min(n, share))


def _plan(
    strategy: str,
    k: int,
    n: int,
    label_counts: IntArray | None,
    n_unseen_classes: int,
    has_labeled_embeddings: bool,
) -> Prefilter:
    """The plan of :func:`prefilter` without the named rows."""
    if strategy == "random":
        return Prefilter(n_top=0, n_sample=k)
    if strategy == COLD_START or label_counts is None or int(np.count_nonzero(label_counts)) < 2:
        return Prefilter(n_top=0, n_sample=min(n, max(cold_start.SAMPLE_SIZE, k)))
    _, size_rule = _SCORED[strategy]
    n_classes = int(label_counts.shape[0]) + n_unseen_classes
    if strategy.startswith("scarce_margin") and n_unseen_classes > 0:
        size = arms.candidate_pool_size(k, n, n_classes=n_classes)
        explore = arms.explore_sample_size(n, size) if has_labeled_embeddings else 0
        return Prefilter(n_top=size, n_sample=explore)
    if size_rule == _POOL:
        return Prefilter(n_top=arms.candidate_pool_size(k, n, n_classes=n_classes), n_sample=0)
    if size_rule == _RANKED:
        return Prefilter(n_top=min(n, max(k, modal_arms.RANKED_POOL)), n_sample=0)
    return Prefilter(n_top=k, n_sample=0)


def prefilter_scores(
    strategy: str,
    proba: AnyFloatArray,
    label_counts: IntArray,
    *,
    n_unseen_classes: int = 0,
    has_labeled_embeddings: bool = False,
) -> FloatArray:
    """Score rows as ``strategy``'s own pre-filter does; higher = kept sooner.

    The score of a row depends on that row alone, so a pool can be scored chunk by chunk.

    Args:
        strategy: a key of :data:`strategies.REGISTRY` other than ``random`` and ``cold_start``.
        proba: (n, C>=2), rows sum to 1.
        label_counts: (C,) labels per class, aligned with ``proba``'s columns.
        n_unseen_classes: >= 0, as in the view.
        has_labeled_embeddings: as in :func:`prefilter`.

    Returns:
        (n,) float64, finite.

    Raises:
        ValueError: an unknown or unscored strategy, or malformed inputs.
    """
    _check_name(strategy)
    if strategy in _UNSCORED:
        raise ValueError(f"strategy {strategy!r} reads no score: it draws a uniform sample (see prefilter)")
    name, _ = _SCORED[strategy]
    if name == "least_confidence":
        return scores.least_confidence(proba)
    if name == "margin":
        return scores.margin(proba)
    if name == "entropy":
        return scores.entropy(proba)
    if name == "class_scarcity":
        return scores.class_scarcity(proba, label_counts)
    if has_labeled_embeddings:  # novelty is added on the shortlist, by distance
        return scores.scarce_margin(proba, label_counts)
    return scores.scarce_explore(proba, label_counts, n_unseen_classes=n_unseen_classes)


def _check_name(strategy: str) -> None:
    if strategy not in REGISTRY:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(sorted(REGISTRY))}")
    if strategy not in _SCORED and strategy not in _UNSCORED:
        raise ValueError(f"strategy {strategy!r} has no pre-filter plan in strategies.streaming")
