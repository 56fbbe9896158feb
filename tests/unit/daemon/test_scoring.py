"""The streamed shortlist: same rows as scoring the whole pool at once, in bounded memory."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from daemon.scoring import shortlist
from models.cache import EmbeddingCache
from strategies import Prefilter, scores
from tests.doubles import ArraySource

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
D, C = 8, 4


def pool(n: int, seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    gen = np.random.default_rng(seed)
    vectors = gen.normal(size=(n, D)).astype(np.float32)
    weights = gen.normal(size=(D, C)).astype(np.float32)
    return vectors, weights


def head(
    weights: npt.NDArray[np.float32], seen: list[int] | None = None
) -> Callable[[npt.NDArray[np.float32]], FloatArray]:
    def predict_proba(x: npt.NDArray[np.float32]) -> FloatArray:
        if seen is not None:
            seen.append(len(x))
        logits = (x @ weights).astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        proba: FloatArray = e / e.sum(axis=1, keepdims=True)
        return proba

    return predict_proba


def full_top(vectors: npt.NDArray[np.float32], weights: npt.NDArray[np.float32], size: int) -> set[int]:
    values = scores.margin(head(weights)(vectors))
    return set(np.argsort(-values)[:size].tolist())


@pytest.mark.parametrize("chunk_rows", [1, 7, 100, 5000])
def test_streamed_top_equals_the_top_of_the_whole_pool(chunk_rows: int) -> None:
    vectors, weights = pool(1200)
    rows = np.arange(1200)
    got = shortlist(ArraySource(vectors), rows, Prefilter(n_top=50, n_sample=0), predict_proba=head(weights),
                    score=scores.margin, rng=np.random.default_rng(0), chunk_rows=chunk_rows)
    assert set(got.positions.tolist()) == full_top(vectors, weights, 50)
    assert np.all(np.diff(got.positions) > 0)
    assert got.proba is not None
    np.testing.assert_allclose(got.proba, head(weights)(vectors[got.positions]), atol=1e-6)  # float32 BLAS by batch


def test_positions_index_the_rows_passed_not_the_cache() -> None:
    vectors, weights = pool(500)
    rows = np.arange(0, 500, 2)  # every other cache row is a candidate
    got = shortlist(ArraySource(vectors), rows, Prefilter(n_top=10, n_sample=0), predict_proba=head(weights),
                    score=scores.margin, rng=np.random.default_rng(0), chunk_rows=64)
    assert set(rows[got.positions].tolist()) == {int(rows[p]) for p in full_top(vectors[rows], weights, 10)}


def test_sample_rows_are_uniform_distinct_and_carry_their_probabilities() -> None:
    vectors, weights = pool(300)
    got = shortlist(ArraySource(vectors), np.arange(300), Prefilter(n_top=20, n_sample=40),
                    predict_proba=head(weights), score=scores.margin, rng=np.random.default_rng(3), chunk_rows=32)
    top = full_top(vectors, weights, 20)
    assert top <= set(got.positions.tolist())
    assert len(got.positions) == len(set(got.positions.tolist())) and 40 <= len(got.positions) <= 60
    assert got.proba is not None
    np.testing.assert_allclose(got.proba, head(weights)(vectors[got.positions]), atol=1e-6)  # float32 BLAS by batch


def test_sample_is_uniform_over_many_draws() -> None:
    vectors, _ = pool(30)
    hits = np.zeros(30)
    for seed in range(2000):
        got = shortlist(ArraySource(vectors), np.arange(30), Prefilter(n_top=0, n_sample=3),
                        predict_proba=None, score=None, rng=np.random.default_rng(seed))
        hits[got.positions] += 1
    assert np.abs(hits / 2000 - 0.1).max() < 0.03  # each row 3/30 of the time


def test_ties_are_broken_at_random_and_the_same_whatever_the_chunking() -> None:
    vectors, weights = pool(200)
    flat = lambda proba: np.zeros(len(proba))  # noqa: E731  every row ties
    picks = []
    for chunk_rows in (1, 13, 200):
        got = shortlist(ArraySource(vectors), np.arange(200), Prefilter(n_top=5, n_sample=0),
                        predict_proba=head(weights), score=flat, rng=np.random.default_rng(9), chunk_rows=chunk_rows)
        picks.append(got.positions.tolist())
    assert picks[0] == picks[1] == picks[2]
    seen = set()
    for seed in range(50):
        got = shortlist(ArraySource(vectors), np.arange(200), Prefilter(n_top=5, n_sample=0),
                        predict_proba=head(weights), score=flat, rng=np.random.default_rng(seed), chunk_rows=16)
        seen.update(got.positions.tolist())
    assert len(seen) > 100  # not the first five rows every time


def test_a_slow_score_off_the_main_thread_keeps_the_chunks_in_order() -> None:
    """Scores run on a worker thread; a slow first chunk must not let later ones take its tie-break keys."""
    vectors, weights = pool(400)
    calls = itertools.count()

    def rounded(proba: npt.NDArray[np.floating]) -> FloatArray:  # many ties, broken by the keys drawn per chunk
        if next(calls) == 0:
            time.sleep(0.2)  # the main thread meanwhile reads and predicts the next chunks
        values: FloatArray = np.round(scores.margin(proba), 1)
        return values

    plan = Prefilter(n_top=40, n_sample=10)
    whole = shortlist(ArraySource(vectors), np.arange(400), plan, predict_proba=head(weights), score=rounded,
                      rng=np.random.default_rng(3), chunk_rows=400)
    chunked = shortlist(ArraySource(vectors), np.arange(400), plan, predict_proba=head(weights), score=rounded,
                        rng=np.random.default_rng(3), chunk_rows=50)
    assert chunked.positions.tolist() == whole.positions.tolist()
    assert whole.proba is not None and chunked.proba is not None
    np.testing.assert_allclose(chunked.proba, whole.proba)


class FailingSource(ArraySource):
    """Reads fail (a disk error, a shard deleted under the daemon) after ``good`` chunks."""

    def __init__(self, vectors: npt.NDArray[np.float32], good: int) -> None:
        super().__init__(vectors)
        self.good = good

    def iter_stored_chunks(
        self, rows: npt.ArrayLike, chunk_rows: int = 65536
    ) -> Iterator[tuple[slice, npt.NDArray[np.float32]]]:
        for done, chunk in enumerate(super().iter_stored_chunks(rows, chunk_rows)):
            if done == self.good:
                raise OSError("shard 3: Input/output error")
            yield chunk


@pytest.mark.parametrize("good", [0, 1, 5])
def test_a_read_that_fails_midway_fails_the_pass(good: int) -> None:
    """Chunks are read on a thread of their own; its error must reach the caller, not end the pass early."""
    vectors, weights = pool(1000)
    source = FailingSource(vectors, good)
    with pytest.raises(OSError, match="shard 3"):
        shortlist(source, np.arange(1000), Prefilter(n_top=10, n_sample=5), predict_proba=head(weights),
                  score=scores.margin, rng=np.random.default_rng(0), chunk_rows=100)
    assert len(source.handed_out) == good + 1  # the failing chunk is fetched, then nothing more


def test_float16_rows_are_widened_before_a_float32_head() -> None:
    vectors, weights = pool(600)
    stored = vectors.astype(np.float16)
    seen_dtypes: list[np.dtype[np.generic]] = []

    def checked(x: npt.NDArray[np.float32]) -> FloatArray:
        seen_dtypes.append(x.dtype)
        return head(weights)(x)

    plan = Prefilter(n_top=20, n_sample=10)
    got = shortlist(ArraySource(stored), np.arange(600), plan, predict_proba=checked,  # type: ignore[arg-type]
                    score=scores.margin, rng=np.random.default_rng(1), chunk_rows=64)
    want = shortlist(ArraySource(stored.astype(np.float32)), np.arange(600), plan, predict_proba=head(weights),
                     score=scores.margin, rng=np.random.default_rng(1), chunk_rows=64)
    assert set(seen_dtypes) == {np.dtype(np.float32)}
    np.testing.assert_array_equal(got.positions, want.positions)


@pytest.mark.parametrize("n", [1_000, 20_000])
def test_no_array_grows_with_the_pool(n: int) -> None:
    """Functional memory check: every array read or scored is at most one chunk, or the shortlist."""
    vectors, weights = pool(n)
    source, predicted = ArraySource(vectors), list[int]()
    chunk_rows, plan = 256, Prefilter(n_top=30, n_sample=20)
    got = shortlist(source, np.arange(n), plan, predict_proba=head(weights, predicted), score=scores.margin,
                    rng=np.random.default_rng(0), chunk_rows=chunk_rows)
    assert max(source.handed_out) <= chunk_rows and max(predicted) <= chunk_rows
    assert sum(source.handed_out) == n  # each row read once
    assert len(got.positions) <= plan.n_top + plan.n_sample


def test_unscored_plans_read_only_the_sample() -> None:
    vectors, weights = pool(5000)
    source, predicted = ArraySource(vectors), list[int]()
    got = shortlist(source, np.arange(5000), Prefilter(n_top=0, n_sample=12), predict_proba=head(weights, predicted),
                    score=None, rng=np.random.default_rng(0), chunk_rows=5)
    assert sum(source.handed_out) == 12 and max(predicted) <= 5
    assert got.proba is not None and got.proba.shape == (12, C)
    cold = shortlist(source, np.arange(5000), Prefilter(n_top=0, n_sample=12), predict_proba=None, score=None,
                     rng=np.random.default_rng(0))
    assert cold.proba is None and len(cold.positions) == 12


def test_bad_plans_are_refused() -> None:
    vectors, weights = pool(10)
    source = ArraySource(vectors)
    with pytest.raises(ValueError):
        shortlist(source, np.arange(10), Prefilter(n_top=11, n_sample=0), predict_proba=head(weights),
                  score=scores.margin, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        shortlist(source, np.arange(10), Prefilter(n_top=3, n_sample=0), predict_proba=None, score=None,
                  rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        shortlist(source, np.arange(10), Prefilter(n_top=3, n_sample=0), predict_proba=head(weights),
                  score=scores.margin, rng=np.random.default_rng(0), chunk_rows=0)


def test_streams_over_a_real_sharded_cache(tmp_path: Path) -> None:
    vectors, weights = pool(1000)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes = [f"{i:064x}" for i in range(1000)]
    with EmbeddingCache(tmp_path, model_key="test", dim=D, shard_rows=97) as cache:
        rows = cache.put(hashes, vectors)
        stored = cache.get(rows)  # float16 round trip
        got = shortlist(cache, rows[::-1].copy(), Prefilter(n_top=25, n_sample=10), predict_proba=head(weights),
                        score=scores.margin, rng=np.random.default_rng(0), chunk_rows=100)
    reversed_pool = stored[::-1]
    assert full_top(reversed_pool, weights, 25) <= set(got.positions.tolist())
