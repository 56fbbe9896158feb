"""Stream the pool through the proxy model and keep only the rows the strategy will read.

Selection runs in two stages so that memory and pairwise work do not grow with the pool:

(a) :func:`shortlist`: cache rows → a float16 chunk read from the shards → float32 →
    ``predict_proba`` → the strategy's own per-row pre-filter score
    (:func:`strategies.prefilter_scores`) → a bounded running top of ``plan.n_top`` rows,
    plus the probabilities of the ``plan.n_sample`` rows drawn uniformly
    beforehand (:func:`strategies.prefilter` says how many of each). One chunk of vectors and
    probabilities is alive at a time, plus O(n_top + n_sample) kept rows.
(b) the caller gathers the shortlisted vectors, builds a :class:`strategies.PoolView` on them
    and calls :func:`strategies.select_batch`; see :mod:`strategies.streaming` for why the batch
    has the distribution it would have on the whole pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import torch

from strategies import Prefilter

__all__ = ["DEFAULT_CHUNK_ROWS", "SCORING_DTYPE", "AnyProba", "Shortlist", "VectorSource", "as_float32", "shortlist"]

DEFAULT_CHUNK_ROWS = 8_192  # 12 MB of float32 at d = 384: under glibc's 32 MB mmap threshold, so the
# head's temporaries reuse memory instead of faulting in fresh pages (1.4-1.8 s per 1M rows vs 2.7 s at 32k)

# The pass asks the head for float32 probabilities: half the memory traffic of float64 per chunk,
# and scores (margins, scarcity) need no more than float32's 1e-7 resolution to rank.
SCORING_DTYPE: Final = "float32"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Float32Array = npt.NDArray[np.float32]
AnyProba = npt.NDArray[np.float64] | npt.NDArray[np.float32]
ProbaFn = Callable[[Float32Array], AnyProba]
ScoreFn = Callable[[AnyProba], FloatArray]


class VectorSource(Protocol):
    """The part of :class:`models.cache.EmbeddingCache` that selection reads."""

    def get(self, rows: npt.ArrayLike) -> Float32Array: ...

    def iter_stored_chunks(
        self, rows: npt.ArrayLike, chunk_rows: int = ...
    ) -> Iterator[tuple[slice, npt.NDArray[np.floating]]]: ...


@dataclass(frozen=True, slots=True)
class Shortlist:
    """The rows a strategy reads, found by one pass over the pool.

    Attributes:
        positions: (m,) increasing positions into the rows that were scored.
        proba: (m, C) their probabilities, rows sum to 1; None without a model.
    """

    positions: IntArray
    proba: AnyProba | None


def shortlist(
    source: VectorSource,
    rows: IntArray,
    plan: Prefilter,
    *,
    predict_proba: ProbaFn | None,
    score: ScoreFn | None,
    rng: np.random.Generator,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Shortlist:
    """Return the top ``plan.n_top`` rows by ``score`` plus ``plan.n_sample`` uniform rows.

    Ties in ``score`` are broken uniformly at random, as :func:`strategies.select.top_k` does.
    With ``plan.n_top == 0`` no row is scored and only the sample's vectors are read.

    Args:
        source: the embedding cache (or a stand-in).
        rows: (n,) cache rows of the pool, in pool order.
        plan: from :func:`strategies.prefilter` for this strategy, ``k`` and ``n``.
        predict_proba: (c, d) float32 → (c, C) probabilities; None at cold start.
        score: (c, C) probabilities → (c,) pre-filter scores; required when ``plan.n_top > 0``.
        rng: draws the sample and breaks ties.
        chunk_rows: >= 1, rows read and scored at once; bounds the memory in use.

    Raises:
        ValueError: ``plan`` asks for a top without ``score`` and ``predict_proba``, or for more
            rows than ``rows`` holds, or ``chunk_rows`` < 1.
    """
    n = len(rows)
    if not (0 <= plan.n_top <= n and 0 <= plan.n_sample <= n) or chunk_rows < 1:
        raise ValueError(f"cannot take {plan} of {n} rows in chunks of {chunk_rows}")
    sample: IntArray = np.sort(rng.choice(n, size=plan.n_sample, replace=False)).astype(np.intp)
    if plan.n_top == 0:
        drawn = None if predict_proba is None else _predict_rows(source, rows[sample], predict_proba, chunk_rows)
        return Shortlist(sample, drawn)
    if predict_proba is None or score is None:
        raise ValueError("a plan with a top needs predict_proba and score")
    best = _RunningTop(plan.n_top)
    sample_proba: list[AnyProba] = []
    for span, stored in source.iter_stored_chunks(rows, chunk_rows):
        proba = predict_proba(as_float32(stored))
        best.add(np.arange(span.start, span.stop, dtype=np.intp), score(proba), rng.random(len(proba)), proba)
        lo, hi = np.searchsorted(sample, [span.start, span.stop])
        sample_proba.append(proba[sample[lo:hi] - span.start])
    positions = np.concatenate([best.positions, sample])
    kept_proba = np.concatenate([best.proba, *sample_proba]) if sample_proba else best.proba
    unique, first = np.unique(positions, return_index=True)
    return Shortlist(unique.astype(np.intp), kept_proba[first])


def _predict_rows(source: VectorSource, rows: IntArray, predict_proba: ProbaFn, chunk_rows: int) -> AnyProba:
    parts = [predict_proba(as_float32(stored)) for _, stored in source.iter_stored_chunks(rows, chunk_rows)]
    if parts:
        joined: AnyProba = np.concatenate(parts)  # type: ignore[assignment]  # same dtype in, same out
        return joined
    return predict_proba(source.get(rows))  # no rows: an empty (0, C) array of the right width


def as_float32(vectors: npt.NDArray[np.floating]) -> Float32Array:
    """Return float32 rows; float16 ones are converted by torch's vectorised cast (numpy's is ~15x slower)."""
    if vectors.dtype == np.float32:
        return vectors
    if vectors.dtype == np.float16 and vectors.flags.writeable:
        converted: Float32Array = torch.from_numpy(vectors).to(torch.float32).numpy()
        return converted
    return vectors.astype(np.float32)


class _RunningTop:
    """The ``size`` best rows seen so far by (score, random key), with their probabilities.

    Once full, a chunk costs O(contenders): only its rows at or above the current floor are
    compared, and the rows they beat are overwritten in place.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.positions: IntArray = np.empty(0, dtype=np.intp)
        self.scores: FloatArray = np.empty(0)
        self.keys: FloatArray = np.empty(0)
        self.proba: AnyProba = np.empty((0, 0))

    def add(self, positions: IntArray, scores: FloatArray, keys: FloatArray, proba: AnyProba) -> None:
        if len(self.positions) < self.size:  # filling up (the first chunk or two): merge by copying
            if not len(self.positions):
                self.proba = np.empty((0, proba.shape[1]), dtype=proba.dtype)
            merged_scores = np.concatenate([self.scores, scores])
            merged_keys = np.concatenate([self.keys, keys])
            keep = _best(merged_scores, merged_keys, self.size)
            self.positions = np.concatenate([self.positions, positions])[keep]
            self.scores, self.keys = merged_scores[keep], merged_keys[keep]
            self.proba = np.concatenate([self.proba, proba])[keep]
            return
        contenders = np.flatnonzero(scores >= self.scores.min())
        if not len(contenders):
            return
        contenders = contenders[_best(scores[contenders], keys[contenders], self.size)]
        keep = _best(np.concatenate([self.scores, scores[contenders]]),
                     np.concatenate([self.keys, keys[contenders]]), self.size)
        is_kept = np.zeros(self.size + len(contenders), dtype=bool)
        is_kept[keep] = True
        evicted = np.flatnonzero(~is_kept[: self.size])
        entering = contenders[np.flatnonzero(is_kept[self.size :])]
        self.positions[evicted] = positions[entering]
        self.scores[evicted], self.keys[evicted] = scores[entering], keys[entering]
        self.proba[evicted] = proba[entering]


def _best(scores: FloatArray, keys: FloatArray, size: int) -> IntArray:
    """Positions of the ``size`` largest ``(score, key)`` pairs, in no particular order."""
    n = len(scores)
    if n <= size:
        return np.arange(n, dtype=np.intp)
    threshold = np.partition(scores, n - size)[n - size]
    above = np.flatnonzero(scores > threshold)
    tied = np.flatnonzero(scores == threshold)
    if len(above) + len(tied) > size:  # keep the tied rows with the largest random keys
        tied = tied[np.argsort(-keys[tied], kind="stable")[: size - len(above)]]
    positions: IntArray = np.concatenate([above, tied]).astype(np.intp)
    return positions
