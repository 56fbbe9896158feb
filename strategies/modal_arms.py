"""Arms that run modAL 0.4.2's own query functions on precomputed probabilities.

modAL's query strategies call ``classifier.predict_proba(X)``; the daemon has
already computed the probabilities, so a tiny adapter hands them back. Only
``modAL.uncertainty`` and ``modAL.batch`` are used (``modAL.expected_error``,
``modAL.cluster`` and ``modAL.dropout`` fail to import in 0.4.2).

modAL is imported inside each arm, not at module import: ``modAL.utils.data``
runs ``import torch`` (and imports pandas) when present, and the ``strategies``
package must not pull torch in. Calling one of these arms therefore loads torch
into the process if it is installed (about 1.4 s the first time).
"""

from __future__ import annotations

import numpy as np

from strategies import scores
from strategies._types import AnyFloatArray, FloatArray, IntArray
from strategies._view import PoolView
from strategies.arms import subsample_anchors
from strategies.select import top_k

__all__ = [
    "RANKED_ANCHOR_CAP",
    "RANKED_POOL",
    "PrecomputedProba",
    "modal_margin_arm",
    "modal_ranked_batch_arm",
]

RANKED_POOL = 2_000  # lowest-margin candidates handed to modAL's O(pool·(labeled + k)) ranked batch
RANKED_ANCHOR_CAP = 500  # labeled rows handed to it: every pick recomputes all pool-to-labeled distances


class PrecomputedProba:
    """The slice of a fitted sklearn classifier that modAL's query functions touch.

    Args:
        proba: (n, C) probabilities for exactly the n rows modAL will be given.
        X_training: (m, d) labeled rows for ranked batch-mode, or None (modAL
            then seeds the ranking with its own cold-start instance).
    """

    on_transformed = False  # modAL.batch.ranked_batch: use X as given

    def __init__(self, proba: AnyFloatArray, X_training: AnyFloatArray | None = None) -> None:
        self.proba = proba
        self.X_training = X_training  # modAL's attribute name

    def predict_proba(self, X: AnyFloatArray, **_: object) -> AnyFloatArray:
        """Return the stored probabilities for ``X``: (n, d) -> (n, C).

        Raises:
            ValueError: if ``X`` does not have the n rows the probabilities were computed for.
        """
        if X.shape[0] != self.proba.shape[0]:
            raise ValueError(f"adapter holds probabilities for {self.proba.shape[0]} rows, got {X.shape[0]}")
        return self.proba


def modal_margin_arm(view: PoolView, k: int, *, rng: np.random.Generator) -> tuple[IntArray, FloatArray]:
    """Run ``modAL.uncertainty.margin_sampling`` over the whole pool.

    modAL's deterministic ``multi_argmin`` is used (its ``random_tie_break``
    draws from numpy's global RNG); the picks are then ordered best first with
    ``rng`` breaking ties. Scores are ``1 - (p_top1 - p_top2)``, as in
    :func:`strategies.scores.margin`.
    """
    from modAL.uncertainty import margin_sampling  # lazy: modAL imports torch

    proba = _proba(view)
    found, margins = margin_sampling(PrecomputedProba(proba), view.embeddings, n_instances=k)
    chosen = np.asarray(found, dtype=np.intp)
    values: FloatArray = 1.0 - np.asarray(margins, dtype=np.float64)
    order = top_k(values, k, rng=rng)
    return chosen[order], values[order]


def modal_ranked_batch_arm(
    view: PoolView, k: int, *, rng: np.random.Generator
) -> tuple[IntArray, FloatArray]:
    """Run ``modAL.batch.uncertainty_batch_sampling`` (Cardoso et al.'s ranked batch-mode).

    The full version costs O(n·(m + k)) distances per pick (29 s per query on
    100k × 384), so it sees only the ``max(k, RANKED_POOL)`` lowest-margin rows
    and at most ``RANKED_ANCHOR_CAP`` labeled rows. Within them modAL ranks by
    ``alpha · (1 - 1 / (1 + dist to labeled-or-picked)) + (1 - alpha) ·
    least_confidence`` with ``alpha = unpicked / (unpicked + labeled)``. Scores
    are modAL's least-confidence values. Time O(k · pool · (m + k) · d): about
    0.1-1 s per pick on 2 busy cores, so keep ``k`` in the tens for this arm.
    """
    proba = _proba(view)
    size = min(view.embeddings.shape[0], max(k, RANKED_POOL))
    pool = top_k(scores.margin(proba), size, rng=rng)
    ranking, uncertainty = _ranked_batch(
        proba[pool], view.embeddings[pool], subsample_anchors(view, rng, cap=RANKED_ANCHOR_CAP), k
    )
    return pool[ranking], uncertainty


def _ranked_batch(
    proba: AnyFloatArray, candidates: AnyFloatArray, anchors: AnyFloatArray | None, k: int
) -> tuple[IntArray, FloatArray]:
    """Call modAL's ranked batch; without anchors, seed it with modAL's own cold-start pick.

    modAL 0.4.2's cold-start path leaves its seed instance selectable, so with
    duplicate rows it can return the same index twice; handing the seed to it
    as ``X_training`` and removing it from the pool avoids that.
    """
    from modAL.batch import select_cold_start_instance, uncertainty_batch_sampling  # lazy: imports torch

    seed: list[int] = []
    rest: IntArray = np.arange(candidates.shape[0], dtype=np.intp)
    if anchors is None:
        first, anchors = select_cold_start_instance(candidates, metric="euclidean", n_jobs=None)
        seed = [int(first)]
        rest = np.delete(rest, seed)
    picks = np.asarray(seed, dtype=np.intp)
    if k > len(seed):
        learner = PrecomputedProba(proba[rest], X_training=anchors)
        found, _ = uncertainty_batch_sampling(learner, candidates[rest], n_instances=k - len(seed))
        picks = np.concatenate([picks, rest[np.asarray(found, dtype=np.intp)]])
    uncertainty: FloatArray = 1.0 - proba[picks].max(axis=1).astype(np.float64)
    return picks, uncertainty


def _proba(view: PoolView) -> AnyFloatArray:
    if view.proba is None:
        raise ValueError("this strategy needs proba; the view is at cold start")
    return view.proba
