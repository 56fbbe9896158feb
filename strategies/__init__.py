"""Pure active-learning strategies: score a pool, pick a batch.

Depends only on numpy, scipy and modAL (modAL only inside the ``modal_*``
arms). No I/O, no logging, no global RNG; every random choice comes from the
``numpy.random.Generator`` the caller passes.

* :mod:`strategies.scores` -- ``(proba, ...) -> (n,)`` scores, higher = query sooner.
* :mod:`strategies.geometry` -- distance-based scores on a pre-filtered subset.
* :mod:`strategies.select` -- ``(scores | embeddings, k, rng) -> positions``.
* :mod:`strategies.cold_start` -- a representative first batch.
* :mod:`strategies.registry` -- :data:`REGISTRY`, :func:`select_batch`.
* :mod:`strategies.streaming` -- which rows each strategy reads, to stream a large pool.
"""

from strategies._types import AnyFloatArray, FloatArray, IntArray
from strategies.geometry import DEFAULT_NEAR_COPY_COSINE, near_copies, repeats
from strategies.registry import (
    DEFAULT_STRATEGY,
    REGISTRY,
    PoolView,
    Selection,
    Strategy,
    is_cold_start,
    select_batch,
    select_distinct,
)
from strategies.streaming import Prefilter, prefilter, prefilter_scores

__all__ = [
    "DEFAULT_NEAR_COPY_COSINE",
    "DEFAULT_STRATEGY",
    "REGISTRY",
    "AnyFloatArray",
    "FloatArray",
    "IntArray",
    "PoolView",
    "Prefilter",
    "Selection",
    "Strategy",
    "is_cold_start",
    "near_copies",
    "prefilter",
    "prefilter_scores",
    "repeats",
    "select_batch",
    "select_distinct",
]
