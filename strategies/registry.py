"""Config names -> strategies, and the one entry point the daemon and simulator call."""

from __future__ import annotations

import numpy as np

from strategies import scores
from strategies._types import IntArray
from strategies._view import PoolView, Selection, Strategy, validate_view
from strategies.arms import (
    Arm,
    cold_start_arm,
    diverse_arm,
    margin_candidates,
    names_first,
    random_arm,
    scarce_diverse_arm,
    scarce_margin_arm,
    scarcity_arm,
    top_score_arm,
)
from strategies.geometry import DEFAULT_NEAR_COPY_COSINE, repeats
from strategies.modal_arms import modal_margin_arm, modal_ranked_batch_arm

__all__ = [
    "DEFAULT_STRATEGY",
    "REGISTRY",
    "PoolView",
    "Selection",
    "Strategy",
    "is_cold_start",
    "select_batch",
    "select_distinct",
]

COLD_START = "cold_start"
# selections per select_distinct call at most: each drops the picks that nearly copy earlier picks
DISTINCT_ROUNDS = 8


def is_cold_start(view: PoolView) -> bool:
    """Return True when the proxy cannot score: ``proba`` is None or fewer than two classes have labels."""
    if view.proba is None or view.proba.ndim != 2 or view.proba.shape[1] < 2:
        return True
    return int(np.count_nonzero(view.label_counts)) < 2


def _entry(name: str, arm: Arm, *, needs_model: bool = True) -> Strategy:
    """Wrap ``arm`` with validation and, if ``needs_model``, the cold-start fallback."""

    def strategy(view: PoolView, k: int, *, rng: np.random.Generator) -> Selection:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        validate_view(view, k)
        used, run = (COLD_START, cold_start_arm) if needs_model and is_cold_start(view) else (name, arm)
        positions, values = run(view, k, rng=rng)
        return Selection(positions=positions, scores=values, strategy=used)

    strategy.__name__ = strategy.__qualname__ = name
    strategy.__doc__ = arm.__doc__
    return strategy


REGISTRY: dict[str, Strategy] = {
    "random": _entry("random", random_arm, needs_model=False),
    COLD_START: _entry(COLD_START, cold_start_arm, needs_model=False),
    "least_confidence": _entry("least_confidence", top_score_arm(scores.least_confidence)),
    "margin": _entry("margin", top_score_arm(scores.margin)),
    "entropy": _entry("entropy", top_score_arm(scores.entropy)),
    "scarcity": _entry("scarcity", scarcity_arm),
    "scarce_margin": _entry("scarce_margin", scarce_margin_arm),
    "scarce_margin_diverse": _entry("scarce_margin_diverse", names_first(scarce_diverse_arm)),
    "margin_diverse": _entry("margin_diverse", diverse_arm(margin_candidates)),
    "modal_margin": _entry("modal_margin", modal_margin_arm),
    "modal_ranked_batch": _entry("modal_ranked_batch", modal_ranked_batch_arm),
}
DEFAULT_STRATEGY = "scarce_margin_diverse"
"""The daemon's default. Over the n unlabeled rows, with C seen classes and a batch of k:

1. ``base = margin · class_scarcity ** 0.5``, i.e.
   ``(1 - (p_top1 - p_top2)) · (sum_c p(c|x) · r_c) ** 0.5`` with
   ``r_c = (1 / (count_c + 1)) / max_c' (1 / (count_c' + 1))``; O(n·C).
2. Shortlist the top ``m = min(n, max(k, clip(ceil(k · max(3, 160 / (C + n_unseen))),
   150, 20000)))`` rows by ``base``: 80 rows per pick for two classes, falling to 3 for
   about 53 classes or more (:func:`strategies.arms.candidate_pool_size`).
3. If ``n_unseen > 0``, add the ``ceil(lam · k)`` rows with the highest novelty
   ``(1 - max cos(x, labeled)) / 2`` among 5,000 uniform rows outside the top (all of
   them when at most 5,000 lie outside it), ``lam = n_unseen / (C + n_unseen)``. With no
   labeled embeddings, step 2 ranks by ``(1 - lam) · base + lam · normalised entropy``
   instead and nothing is added.
4. Weight the shortlist ``w = 0.25 + 0.75 · minmax(base)`` once every class has a label;
   while ``n_unseen > 0``, ``w = 1`` for the rows of step 2 (the model cannot rank rows of
   a class it has never seen) and 0.25 for the novel rows of step 3. Pick ``k`` by weighted
   greedy k-center: each pick maximises ``w · distance to the nearest labeled row
   (≤ 2,000 drawn) or earlier pick``. ``Selection.scores`` are the picks' ``base``.

With ``view.unseen_prototypes`` (the unseen classes' names, embedded), the first
``min(u, ceil(lam · k))`` picks are the rows nearest those names, one per name
(:func:`strategies.arms.names_first`), and steps 1-4 pick the rest. The cold start does
not use names: its batch stays representative.
"""


def select_batch(strategy: str, view: PoolView, k: int, *, rng: np.random.Generator) -> Selection:
    """Select ``k`` rows of ``view`` with the strategy registered as ``strategy``.

    Every strategy except ``random`` and ``cold_start`` falls back to
    ``cold_start`` while :func:`is_cold_start` holds, and says so in
    ``Selection.strategy``.

    Args:
        strategy: a key of :data:`REGISTRY`.
        view: the pool; see :class:`PoolView` for shapes.
        k: 1 <= k <= n.
        rng: the only source of randomness; the same seed gives the same batch.

    Returns:
        The batch: (k,) distinct positions and their (k,) scores.

    Raises:
        ValueError: for an unknown name, a malformed view, or ``k`` out of range.
    """
    if strategy not in REGISTRY:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[strategy](view, k, rng=rng)


def select_distinct(
    strategy: str,
    view: PoolView,
    k: int,
    *,
    rng: np.random.Generator,
    min_cosine: float = DEFAULT_NEAR_COPY_COSINE,
) -> tuple[Selection, int]:
    """:func:`select_batch`, with no pick a near-copy (cosine >= ``min_cosine``) of another pick.

    Near-copies score alike, so a ranking strategy (margin, entropy, ...) takes a text and its
    re-posts together, and one batch pays several labels for what one teaches. A pick that
    nearly copies an earlier pick of the batch (in presentation order: best first for the
    ranking strategies) is dropped, and the strategy runs again on the view without the dropped
    rows, at most :data:`DISTINCT_ROUNDS` times in all. The last batch stands as it is, copies
    included, when fewer than ``k`` rows would be left or the rounds run out.

    Args:
        strategy, view, k, rng: as for :func:`select_batch`.
        min_cosine: in ``(0, 1]``.

    Returns:
        The batch, with positions into ``view``'s rows, and how many rows were dropped.

    Raises:
        ValueError: as :func:`select_batch`, or ``min_cosine`` outside ``(0, 1]``.
    """
    rows: IntArray = np.arange(view.embeddings.shape[0], dtype=np.intp)
    selection = select_batch(strategy, view, k, rng=rng)
    for _ in range(DISTINCT_ROUNDS - 1):
        picked = rows[selection.positions]
        again = repeats(view.embeddings[picked], min_cosine=min_cosine) >= 0
        if not again.any() or rows.size - np.count_nonzero(again) < k:
            break
        rows = np.setdiff1d(rows, picked[again], assume_unique=True).astype(np.intp)
        selection = select_batch(strategy, _rows_of(view, rows), k, rng=rng)
    positions: IntArray = rows[selection.positions]
    return Selection(positions, selection.scores, selection.strategy), view.embeddings.shape[0] - rows.size


def _rows_of(view: PoolView, rows: IntArray) -> PoolView:
    """The view of ``rows`` of ``view``'s candidates (what is labeled, and the names, unchanged)."""
    return PoolView(
        embeddings=view.embeddings[rows],
        proba=None if view.proba is None else view.proba[rows],
        label_counts=view.label_counts,
        n_unseen_classes=view.n_unseen_classes,
        labeled_embeddings=view.labeled_embeddings,
        unseen_prototypes=view.unseen_prototypes,
    )
