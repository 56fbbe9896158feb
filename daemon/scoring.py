"""Stream the pool through the proxy model and keep only the rows the strategy will read.

Selection runs in two stages so that memory and pairwise work do not grow with the pool:

(a) :func:`shortlist`: cache rows → a float16 chunk read from the shards → float32 →
    ``predict_proba`` → the strategy's own per-row pre-filter score
    (:func:`strategies.prefilter_scores`) → a bounded running top of ``plan.n_top`` rows,
    plus the probabilities of the ``plan.n_sample`` rows drawn uniformly
    beforehand (:func:`strategies.prefilter` says how many of each). Three chunks of vectors
    and probabilities are alive at a time (one being read, one in the head, one being scored:
    :func:`_scored_chunks`), plus O(n_top + n_sample) kept rows.
    With a ``coarse`` head (:class:`CoarseHead`: a bfloat16 head, several times faster where the
    hardware has bfloat16 products; it reads the float16 rows as stored and hands its logits to
    the scoring thread, which takes their softmax), the pass ranks by the coarse scores and keeps a deeper top
    (:func:`coarse_top_size`); those rows alone are then re-read, re-scored in float32 and
    cut to ``plan.n_top``. The result is the float32 shortlist unless a row outside the
    deeper top could have beaten it, judged by the largest coarse error seen on the
    re-scored rows; then the pass is repeated in float32 (logged). Rows the model is
    99.999% sure of (scores <= 1e-5) count as interchangeable (:mod:`daemon._coarse`).
(b) the caller gathers the shortlisted vectors, builds a :class:`strategies.PoolView` on them
    and calls :func:`strategies.select_batch`; see :mod:`strategies.streaming` for why the batch
    has the distribution it would have on the whole pool.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from daemon._coarse import (
    COARSE_MIN_ROWS,
    COARSE_MIN_SPEEDUP,
    coarse_top_size,
    left_out_bound,
    rules_out_the_rest,
)
from models.device import torch_threads
from strategies import Prefilter

__all__ = [
    "COARSE_MIN_ROWS",
    "DEFAULT_CHUNK_ROWS",
    "SCORING_DTYPE",
    "AnyProba",
    "CoarseHead",
    "Shortlist",
    "VectorSource",
    "as_float32",
    "coarse_head_for",
    "coarse_top_size",
    "shortlist",
]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 8_192  # 12 MB of float32 at d = 384: under glibc's 32 MB mmap threshold, so the
# head's temporaries reuse memory instead of faulting in fresh pages (1.4-1.8 s per 1M rows vs 2.7 s at 32k)

# The pass asks the head for float32 probabilities: half the memory traffic of float64 per chunk,
# and scores (margins, scarcity) need no more than float32's 1e-7 resolution to rank.
SCORING_DTYPE: Final = "float32"


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Float32Array = npt.NDArray[np.float32]
AnyProba = npt.NDArray[np.float64] | npt.NDArray[np.float32]
StoredRows = npt.NDArray[np.floating]  # rows as the store keeps them: float16 (or float32)
ProbaFn = Callable[[Float32Array], AnyProba]
StoredProbaFn = Callable[[StoredRows], AnyProba]
ScoreFn = Callable[[AnyProba], FloatArray]
_HeadOut = TypeVar("_HeadOut", bound=np.ndarray)  # type: ignore[type-arg]  # what the pass's head hands the scorer


class VectorSource(Protocol):
    """The part of :class:`models.cache.EmbeddingCache` that selection reads."""

    def get(self, rows: npt.ArrayLike) -> Float32Array: ...

    def iter_stored_chunks(
        self, rows: npt.ArrayLike, chunk_rows: int = ...
    ) -> Iterator[tuple[slice, npt.NDArray[np.floating]]]: ...


class CoarseCapable(Protocol):
    """The part of :class:`models.classifier.ProxyClassifier` a coarse pre-filter needs."""

    def coarse_logits(self, X: StoredRows) -> Float32Array: ...

    def proba_from_logits(self, logits: Float32Array, *, in_place: bool = ...) -> Float32Array: ...

    def bfloat16_speedup(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CoarseHead:
    """A cheaper, approximate head for the first stage of :func:`shortlist`, in two steps.

    Attributes:
        logits: the rows as stored (float16 from the embedding cache) → ``(c, C)`` logits; runs
            on the pass's own thread.
        proba: logits → ``(c, C)`` probabilities, off by up to ~1e-2 from the float32 head's;
            runs on the scoring thread, before the score, and may overwrite the logits (the pass
            reads them only through it). Both must be thread-safe.
    """

    logits: Callable[[StoredRows], Float32Array]
    proba: Callable[[Float32Array], AnyProba]


def coarse_head_for(
    classifier: CoarseCapable, n_rows: int, mode: Literal["auto", "bfloat16", "off"]
) -> CoarseHead | None:
    """The ``coarse`` head :func:`shortlist` should use for ``n_rows`` rows, or None for one float32 pass.

    ``"auto"``: a bfloat16 head for pools of at least :data:`COARSE_MIN_ROWS` rows on hardware
    where it runs at least :data:`COARSE_MIN_SPEEDUP` times faster than float32 (measured once per
    process); ``"bfloat16"``: whenever the pool has that many rows; ``"off"``: never.
    """
    if mode == "off" or n_rows < COARSE_MIN_ROWS:
        return None
    if mode == "auto" and classifier.bfloat16_speedup() < COARSE_MIN_SPEEDUP:
        return None
    return CoarseHead(logits=classifier.coarse_logits,
                      proba=functools.partial(classifier.proba_from_logits, in_place=True))


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
    coarse: CoarseHead | None = None,
) -> Shortlist:
    """Return the top ``plan.n_top`` rows by ``score`` plus ``plan.n_sample`` uniform rows.

    Ties in ``score`` are broken uniformly at random, as :func:`strategies.select.top_k` does.
    With ``plan.n_top == 0`` no row is scored and only the sample's vectors are read.
    With a ``coarse`` head the pass runs in two stages (see the module docstring); it returns
    the same shortlist and leaves ``rng`` in the same state.

    Args:
        source: the embedding cache (or a stand-in).
        rows: (n,) cache rows of the pool, in pool order.
        plan: from :func:`strategies.prefilter` for this strategy, ``k`` and ``n``.
        predict_proba: (c, d) float32 → (c, C) probabilities; None at cold start.
        score: (c, C) probabilities → (c,) pre-filter scores; required when ``plan.n_top > 0``.
        rng: draws the sample and breaks ties.
        chunk_rows: >= 1, rows read and scored at once; bounds the memory in use.
        coarse: a cheaper, approximate head (:class:`CoarseHead`), or None for one float32 pass.

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
    if coarse is not None and coarse_top_size(plan.n_top, n) < n:
        state = rng.bit_generator.state
        found = _two_stage(source, rows, plan, sample, predict_proba, coarse, score, rng, chunk_rows)
        if found is not None:
            return found
        rng.bit_generator.state = state  # the float32 pass draws the same tie-breaking keys again
    best = _RunningTop(plan.n_top)
    sample_proba: list[AnyProba] = []
    widened = _widened(predict_proba)
    for span, _, proba, values in _scored_chunks(source.iter_stored_chunks(rows, chunk_rows), widened, score):
        best.add(np.arange(span.start, span.stop, dtype=np.intp), values, rng.random(len(proba)), proba)
        lo, hi = np.searchsorted(sample, [span.start, span.stop])
        sample_proba.append(proba[sample[lo:hi] - span.start])
    positions = np.concatenate([best.positions, sample])
    kept_proba = np.concatenate([best.proba, *sample_proba]) if sample_proba else best.proba
    unique, first = np.unique(positions, return_index=True)
    return Shortlist(unique.astype(np.intp), kept_proba[first])


def _two_stage(
    source: VectorSource,
    rows: IntArray,
    plan: Prefilter,
    sample: IntArray,
    predict_proba: ProbaFn,
    coarse: CoarseHead,
    score: ScoreFn,
    rng: np.random.Generator,
    chunk_rows: int,
) -> Shortlist | None:
    """The shortlist found by a coarse pass and a float32 re-scoring of its deeper top, or None when unsure."""
    deeper = _RunningTop(coarse_top_size(plan.n_top, len(rows)))
    sample_proba: list[AnyProba] = []
    chunks = source.iter_stored_chunks(rows, chunk_rows)
    with _head_threads():
        for span, stored, _, values in _scored_chunks(chunks, coarse.logits, _of_proba(coarse.proba, score)):
            deeper.add(np.arange(span.start, span.stop, dtype=np.intp), values, rng.random(len(values)),
                       np.empty((len(values), 0)))  # the coarse probabilities are not kept
            lo, hi = np.searchsorted(sample, [span.start, span.stop])
            if hi > lo:
                sample_proba.append(predict_proba(as_float32(stored[sample[lo:hi] - span.start])))
    order = np.argsort(deeper.positions)  # increasing rows: the re-read walks the shards forward
    positions, coarse_scores, keys = deeper.positions[order], deeper.scores[order], deeper.keys[order]
    proba = _predict_rows(source, rows[positions], predict_proba, chunk_rows)
    exact = score(proba)
    keep = _best(exact, keys, plan.n_top)
    cut = float(exact[keep].min())
    if not rules_out_the_rest(exact, coarse_scores, cut):
        log.info("scoring: the coarse pre-filter could not rule out rows beyond its top %s (they may score up "
                 "to %.3g, the cut is %.3g); scoring the pool again in float32", len(positions),
                 left_out_bound(exact, coarse_scores), cut)
        return None
    top, top_proba = positions[keep], proba[keep]
    all_positions = np.concatenate([top, sample])
    kept_proba = np.concatenate([top_proba, *sample_proba]) if sample_proba else top_proba
    unique, first = np.unique(all_positions, return_index=True)
    return Shortlist(unique.astype(np.intp), kept_proba[first])


@contextmanager
def _head_threads() -> Iterator[None]:
    """Give this thread's torch operations two intra-op threads fewer (at least one) until the block ends.

    The pass's reader and scorer each keep a core busy. The coarse head's product is short
    (0.15 s per 1M rows), and splitting each chunk's product over every core made it contend with
    them: on 2 cores, one thread ran the coarse pass in 0.42 s against 0.47 s with two (medians of
    14 interleaved pairs, 13 of them faster). The float32 head's product is 3-4 times longer,
    and it is faster on every core (0.74 s against 1.08 s), so the float32 pass keeps the setting.
    ``torch.set_num_threads`` also sets the default of threads started meanwhile (the pass's own).
    """
    with torch_threads(torch.get_num_threads() - 2):
        yield


def _of_proba(proba: Callable[[Float32Array], AnyProba], score: ScoreFn) -> Callable[[Float32Array], FloatArray]:
    """``score`` of the coarse probabilities of a chunk's logits: the scoring thread's work in a coarse pass."""

    def scored(logits: Float32Array) -> FloatArray:
        return score(proba(logits))

    return scored


def _widened(predict_proba: ProbaFn) -> StoredProbaFn:
    def widened(stored: StoredRows) -> AnyProba:
        return predict_proba(as_float32(stored))

    return widened


def _scored_chunks(
    chunks: Iterator[tuple[slice, StoredRows]],
    head: Callable[[StoredRows], _HeadOut],
    score: Callable[[_HeadOut], FloatArray],
) -> Iterator[tuple[slice, StoredRows, _HeadOut, FloatArray]]:
    """Yield ``(span, stored rows, head output, scores)`` per chunk, in order.

    Three threads share the work of a chunk, each on a different one: a reader thread reads the
    next chunk (positioned reads: the copy out of the page cache releases the GIL) while this
    thread passes the current one through the head and a worker thread scores the previous one
    (the head in torch and the scores in numpy release the GIL too). On two cores the pass then
    takes about the longest of the three instead of their sum. ``score`` must be thread-safe (the
    strategies' scores are pure functions); ``chunks`` is only ever advanced by the reader.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelloop-read") as reader, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelloop-score") as worker:
        pending: tuple[slice, StoredRows, _HeadOut, Future[FloatArray]] | None = None
        for span, stored in _read_ahead(chunks, reader):
            out = head(stored)
            job = worker.submit(score, out)
            if pending is not None:
                yield pending[0], pending[1], pending[2], pending[3].result()
            pending = (span, stored, out, job)
        if pending is not None:
            yield pending[0], pending[1], pending[2], pending[3].result()


def _read_ahead(
    chunks: Iterator[tuple[slice, StoredRows]], reader: ThreadPoolExecutor
) -> Iterator[tuple[slice, StoredRows]]:
    """Yield ``chunks`` in order, each read on ``reader`` while the one before it is being used."""
    upcoming = reader.submit(next, chunks, None)
    while (chunk := upcoming.result()) is not None:
        upcoming = reader.submit(next, chunks, None)
        yield chunk


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

    Once full, a chunk costs O(contenders): only its rows that beat the worst kept (score, key)
    are compared, and the rows they beat are overwritten in place. (Comparing every row at the
    floor instead made each row of a pool whose scores tie at 0 a contender: 0.13 s per 1M rows.)
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
        floor = self.scores.min()  # the worst kept row is (floor, floor_key): only rows beating it contend
        floor_key = self.keys[self.scores == floor].min()
        contenders = np.flatnonzero((scores > floor) | ((scores == floor) & (keys > floor_key)))
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
