"""The coarse (bfloat16) pre-filter finds the float32 shortlist or falls back; scores run on a worker thread."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import numpy.typing as npt
import pytest
import torch

from daemon._coarse import COARSE_MIN_ROWS, coarse_top_size, rules_out_the_rest
from daemon.scoring import CoarseHead, coarse_head_for, shortlist
from models.classifier import ProxyClassifier
from strategies import Prefilter, prefilter_scores, scores
from tests.doubles import ArraySource

Float32Array = npt.NDArray[np.float32]
D, C = 32, 12


def clustered_pool(n: int, seed: int) -> tuple[Float32Array, npt.NDArray[np.str_]]:
    """Unit rows around C centres, so a head trained on a few of them is confident on most rows."""
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(C, D))
    classes = gen.integers(0, C, size=n)
    vectors = centres[classes] + 0.8 * gen.normal(size=(n, D))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), np.asarray([f"c{c}" for c in classes])


@pytest.fixture(scope="module")
def trained() -> tuple[ProxyClassifier, Float32Array]:
    vectors, names = clustered_pool(12_000, seed=0)
    classifier = ProxyClassifier(random_state=0, calibrate=False).fit(vectors[:300], names[:300])
    return classifier, vectors


def bfloat16_head(classifier: ProxyClassifier) -> CoarseHead:
    return CoarseHead(logits=classifier.coarse_logits, proba=classifier.proba_from_logits)


def as_given(proba: Float32Array) -> Float32Array:
    return proba


def scarce(classifier: ProxyClassifier) -> partial[npt.NDArray[np.float64]]:
    counts = np.full(len(classifier.classes_), 25, dtype=np.intp)
    counts[0] = 2
    return partial(prefilter_scores, "scarce_margin_diverse", label_counts=counts, has_labeled_embeddings=True)


@pytest.mark.parametrize(("seed", "n_top", "n_sample"), [(0, 50, 0), (1, 200, 0), (2, 100, 300), (3, 400, 50)])
def test_the_coarse_pass_finds_the_float32_shortlist_and_leaves_rng_alike(
    trained: tuple[ProxyClassifier, Float32Array], seed: int, n_top: int, n_sample: int
) -> None:
    classifier, vectors = trained
    rows = np.arange(len(vectors))
    plan = Prefilter(n_top=n_top, n_sample=n_sample)
    exact_fn = partial(classifier.predict_proba, dtype="float32")
    assert coarse_top_size(n_top, len(rows)) < len(rows)  # the two-stage path really runs
    exact_rng, coarse_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    exact = shortlist(ArraySource(vectors), rows, plan, predict_proba=exact_fn, score=scarce(classifier),
                      rng=exact_rng, chunk_rows=700)
    source = ArraySource(vectors)
    got = shortlist(source, rows, plan, predict_proba=exact_fn, score=scarce(classifier), rng=coarse_rng,
                    chunk_rows=700, coarse=bfloat16_head(classifier))
    np.testing.assert_array_equal(got.positions, exact.positions)
    assert got.proba is not None and exact.proba is not None
    np.testing.assert_allclose(got.proba, exact.proba, atol=1e-6)  # the float32 probabilities, not bfloat16's
    assert coarse_rng.random() == exact_rng.random()
    assert sum(source.handed_out) < 2 * len(vectors)  # one pass plus the re-read top, not a second pass


@pytest.mark.parametrize(("threads", "in_the_head"), [(4, 2), (2, 1), (1, 1)])
def test_the_coarse_head_runs_on_two_torch_threads_fewer_and_the_setting_comes_back(
    trained: tuple[ProxyClassifier, Float32Array], threads: int, in_the_head: int
) -> None:
    """The reader and the scorer keep a core each; the float32 re-scoring after the pass gets them all back."""
    classifier, vectors = trained
    seen: list[int] = []

    def counting(stored: Float32Array) -> Float32Array:
        seen.append(torch.get_num_threads())
        return classifier.coarse_logits(stored)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shortlist(ArraySource(vectors), np.arange(len(vectors)), Prefilter(n_top=50, n_sample=0),
                  predict_proba=partial(classifier.predict_proba, dtype="float32"), score=scarce(classifier),
                  rng=np.random.default_rng(0), chunk_rows=2000,
                  coarse=CoarseHead(logits=counting, proba=classifier.proba_from_logits))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {in_the_head}
    assert after == threads


def test_a_coarse_head_that_is_too_far_off_falls_back_to_float32(
    trained: tuple[ProxyClassifier, Float32Array], caplog: pytest.LogCaptureFixture
) -> None:
    classifier, vectors = trained
    rows = np.arange(len(vectors))
    exact_fn = partial(classifier.predict_proba, dtype="float32")

    def scrambled(x: Float32Array) -> npt.NDArray[np.floating]:  # right shape, wrong rows: ranks nothing right
        proba: npt.NDArray[np.floating] = exact_fn(x)[::-1].copy()
        return proba

    plan = Prefilter(n_top=100, n_sample=20)
    exact_rng, coarse_rng = np.random.default_rng(5), np.random.default_rng(5)
    exact = shortlist(ArraySource(vectors), rows, plan, predict_proba=exact_fn, score=scores.margin, rng=exact_rng,
                      chunk_rows=512)
    with caplog.at_level(logging.INFO, logger="daemon.scoring"):
        got = shortlist(ArraySource(vectors), rows, plan, predict_proba=exact_fn, score=scores.margin,
                        rng=coarse_rng, chunk_rows=512, coarse=CoarseHead(logits=scrambled, proba=as_given))
    np.testing.assert_array_equal(got.positions, exact.positions)
    assert coarse_rng.random() == exact_rng.random()
    assert "scoring the pool again in float32" in caplog.text


def test_a_top_as_deep_as_the_pool_skips_the_coarse_pass(trained: tuple[ProxyClassifier, Float32Array]) -> None:
    classifier, vectors = trained
    calls: list[int] = []

    def coarse(x: Float32Array) -> npt.NDArray[np.float32]:
        calls.append(len(x))
        proba: npt.NDArray[np.float32] = classifier.predict_proba(x, dtype="float32")
        return proba

    few = vectors[:1000]
    shortlist(ArraySource(few), np.arange(1000), Prefilter(n_top=600, n_sample=0),
              predict_proba=partial(classifier.predict_proba, dtype="float32"), score=scores.margin,
              rng=np.random.default_rng(0), coarse=CoarseHead(logits=coarse, proba=as_given))
    assert calls == []


def test_bfloat16_probabilities_are_close_to_float32_and_sum_to_one(
    trained: tuple[ProxyClassifier, Float32Array],
) -> None:
    classifier, vectors = trained
    exact = classifier.predict_proba(vectors, dtype="float32")
    coarse = classifier.predict_proba(vectors, dtype="float32", head_dtype="bfloat16")
    assert 0 < float(np.abs(coarse - exact).max()) < 0.05  # rounded, not the same arithmetic
    np.testing.assert_allclose(coarse.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="head_dtype"):
        classifier.predict_proba(vectors[:2], head_dtype="float16")  # type: ignore[call-overload]


@pytest.mark.parametrize("chunk_rows", [65536, 1000])
def test_coarse_logits_give_the_bfloat16_probabilities_column_major(
    trained: tuple[ProxyClassifier, Float32Array], chunk_rows: int
) -> None:
    classifier, vectors = trained
    stored = vectors.astype(np.float16)  # as the embedding cache keeps them
    logits = classifier.coarse_logits(stored, chunk_rows=chunk_rows)
    assert logits.shape == (len(vectors), len(classifier.classes_)) and logits.dtype == np.float32
    assert logits.flags.f_contiguous  # the scores over each row's classes run across rows
    proba = classifier.proba_from_logits(logits)
    assert proba.flags.f_contiguous
    expected = classifier.predict_proba(stored, dtype="float32", head_dtype="bfloat16")
    np.testing.assert_allclose(proba, expected, atol=2e-6)
    assert logits.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()


def test_the_in_place_softmax_overwrites_the_logits_with_the_same_probabilities(
    trained: tuple[ProxyClassifier, Float32Array],
) -> None:
    classifier, vectors = trained
    logits = classifier.coarse_logits(vectors.astype(np.float16))
    expected = classifier.proba_from_logits(logits)
    assert not np.shares_memory(expected, logits)
    got = classifier.proba_from_logits(logits, in_place=True)
    assert got is logits
    np.testing.assert_array_equal(got, expected)


def test_the_coarse_head_of_a_classifier_softmaxes_in_place(trained: tuple[ProxyClassifier, Float32Array]) -> None:
    classifier, vectors = trained
    head = coarse_head_for(classifier, COARSE_MIN_ROWS, "bfloat16")
    assert head is not None
    logits = head.logits(vectors.astype(np.float16))
    assert head.proba(logits) is logits


def test_coarse_logits_of_a_hidden_layer_head_match_its_probabilities() -> None:
    vectors, names = clustered_pool(2_000, seed=3)
    classifier = ProxyClassifier(hidden_dim=16, random_state=0).fit(vectors[:400], names[:400])
    proba = classifier.proba_from_logits(classifier.coarse_logits(vectors))
    np.testing.assert_allclose(proba, classifier.predict_proba(vectors, dtype="float32", head_dtype="bfloat16"),
                               atol=2e-6)


def test_a_non_finite_row_is_refused_by_the_coarse_softmax(trained: tuple[ProxyClassifier, Float32Array]) -> None:
    classifier, vectors = trained
    broken = vectors[:50].copy()
    broken[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        classifier.proba_from_logits(classifier.coarse_logits(broken))
    huge = vectors[:50].copy()
    huge[9] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        classifier.proba_from_logits(classifier.coarse_logits(huge))


class _Head:
    def __init__(self, speedup: float) -> None:
        self.speedup = speedup

    def coarse_logits(self, X: Float32Array) -> Float32Array:
        return X

    def proba_from_logits(self, logits: Float32Array, *, in_place: bool = False) -> Float32Array:
        return logits

    def bfloat16_speedup(self) -> float:
        return self.speedup


@pytest.mark.parametrize(
    ("mode", "speedup", "n", "used"),
    [
        ("auto", 4.0, COARSE_MIN_ROWS, True),
        ("auto", 1.2, COARSE_MIN_ROWS, False),  # emulated bfloat16: slower or barely faster
        ("auto", 4.0, COARSE_MIN_ROWS - 1, False),  # a small pool: float32 is fast enough
        ("bfloat16", 0.5, COARSE_MIN_ROWS, True),
        ("off", 4.0, 10 * COARSE_MIN_ROWS, False),
    ],
)
def test_coarse_head_for_follows_the_setting(mode: str, speedup: float, n: int, used: bool) -> None:
    head = _Head(speedup)
    got = coarse_head_for(head, n, mode)  # type: ignore[arg-type]
    assert (got is not None) == used
    if got is not None:
        assert got.logits == head.coarse_logits  # its softmax: test_the_coarse_head_of_a_classifier_softmaxes_in_place


def test_the_measured_speedup_is_a_positive_number(trained: tuple[ProxyClassifier, Float32Array]) -> None:
    classifier, _ = trained
    assert classifier.bfloat16_speedup() > 0
    assert classifier.bfloat16_speedup() == classifier.bfloat16_speedup()  # measured once, then cached


def test_a_score_that_fails_on_a_later_chunk_fails_the_pass(trained: tuple[ProxyClassifier, Float32Array]) -> None:
    classifier, vectors = trained
    calls: list[int] = []

    def flaky(proba: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:  # runs on the scoring thread
        calls.append(len(proba))
        if len(calls) == 3:
            raise ValueError("proba contains NaN or inf")
        return scores.margin(proba)

    with pytest.raises(ValueError, match="NaN"):
        shortlist(ArraySource(vectors), np.arange(len(vectors)), Prefilter(n_top=10, n_sample=0),
                  predict_proba=partial(classifier.predict_proba, dtype="float32"), score=flaky,
                  rng=np.random.default_rng(0), chunk_rows=1000)


def test_rows_left_out_are_bounded_by_the_largest_ratio_seen() -> None:
    exact = np.array([0.9, 0.5, 0.2, 0.1])
    same = exact.copy()
    assert rules_out_the_rest(exact, same, cut=0.11)  # nothing moved: anything above the floor is safe
    assert not rules_out_the_rest(exact, same, cut=0.1)
    off = exact * np.array([1.0, 1.1, 1.0, 1.0])  # one row moved by 10%: others may have moved 21% (x2 margin)
    assert not rules_out_the_rest(exact, off, cut=0.12)
    assert rules_out_the_rest(exact, off, cut=0.122)
    unmeasurable = np.array([1e-8, 1e-8, 0.0, 2e-7])  # no ratio measurable, and a coarse floor of 3e-6:
    assert not rules_out_the_rest(unmeasurable, np.array([2e-5, 1e-5, 2e-6, 3e-6]), cut=0.0)  # no bound
    assert rules_out_the_rest(unmeasurable, np.zeros(4), cut=0.0)  # every score tied at 0: near-certain rows


def test_a_cut_among_near_certain_rows_needs_no_second_pass() -> None:
    exact = np.array([0.4, 0.2, 3e-6, 2e-6])  # the cut falls among rows the model is 99.999% sure of
    assert rules_out_the_rest(exact, exact * 1.05, cut=2.5e-6)  # rows left out score <= ~2.3e-6
    assert not rules_out_the_rest(exact * 10, exact * 10.5, cut=2e-5)  # 10x higher: they are not
