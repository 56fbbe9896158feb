"""The default strategy: its shortlist (strategies.arms.scarce_shortlist) and the batch spread over it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from strategies import PoolView, scores
from strategies.arms import WEIGHT_FLOOR, candidate_pool_size, scarce_diverse_arm, scarce_shortlist
from strategies.geometry import novelty
from strategies.select import k_center_greedy

N, K, D = 1_500, 20, 12


def unit_rows(gen: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    rows: npt.NDArray[np.float64] = gen.normal(size=(n, D))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def view(n_unseen: int, *, has_labeled: bool = True) -> PoolView:
    gen = np.random.default_rng(3)
    return PoolView(
        embeddings=unit_rows(gen, N),
        proba=gen.dirichlet(np.full(4, 0.5), size=N),
        label_counts=np.array([20, 9, 3, 1], dtype=np.intp),
        n_unseen_classes=n_unseen,
        labeled_embeddings=unit_rows(gen, 30) if has_labeled else None,
    )


def test_without_unseen_classes_the_shortlist_is_the_top_by_scarce_margin() -> None:
    pool = view(0)
    assert pool.proba is not None
    positions, values = scarce_shortlist(pool, K, rng=np.random.default_rng(0))
    size = candidate_pool_size(K, N, n_classes=4)
    base = scores.scarce_margin(pool.proba, pool.label_counts)
    assert positions.tolist() == np.argsort(-base)[:size].tolist()
    np.testing.assert_allclose(values, base[positions])


def test_unseen_classes_add_a_batch_share_of_the_most_novel_rows_outside_the_top() -> None:
    n_unseen = 4  # lam = 4 / (4 + 4): half the classes are unseen, so ceil(0.5 * 20) = 10 novel rows
    pool = view(n_unseen)
    assert pool.proba is not None and pool.labeled_embeddings is not None
    positions, _ = scarce_shortlist(pool, K, rng=np.random.default_rng(0))
    size = candidate_pool_size(K, N, n_classes=8)
    assert len(set(positions.tolist())) == positions.size == size + 10
    top = set(np.argsort(-scores.scarce_margin(pool.proba, pool.label_counts))[:size].tolist())
    assert set(positions[:size].tolist()) == top  # the informative rows are all kept
    rest = np.setdiff1d(np.arange(N), list(top))  # every row outside the top is considered (N - size <= 5,000)
    nov = novelty(pool.embeddings[rest], pool.labeled_embeddings)
    assert set(positions[size:].tolist()) == set(rest[np.argsort(-nov)[:10]].tolist())


def test_without_labeled_rows_entropy_stands_in_for_novelty() -> None:
    pool = dataclasses.replace(view(2, has_labeled=False))
    assert pool.proba is not None
    positions, values = scarce_shortlist(pool, K, rng=np.random.default_rng(0))
    explore = scores.scarce_explore(pool.proba, pool.label_counts, n_unseen_classes=2)
    assert positions.tolist() == np.argsort(-explore)[: candidate_pool_size(K, N, n_classes=6)].tolist()
    np.testing.assert_allclose(values, explore[positions])


def cover(pool: PoolView, weights_of: Callable[[npt.NDArray[np.float64], int], npt.NDArray[np.float64]]) -> list[int]:
    """The weighted k-center cover of the shortlist; ``weights_of(values, n_informative)``."""
    shortlist, values = scarce_shortlist(pool, K, rng=np.random.default_rng(0))
    size = candidate_pool_size(K, N, n_classes=pool.label_counts.size + pool.n_unseen_classes)
    picks = k_center_greedy(
        pool.embeddings[shortlist],
        K,
        rng=np.random.default_rng(0),
        anchors=pool.labeled_embeddings,
        weights=weights_of(values, size),
    )
    covered: list[int] = shortlist[picks].tolist()
    return covered


def by_informativeness(values: npt.NDArray[np.float64], _: int) -> npt.NDArray[np.float64]:
    unit = (values - values.min()) / (values.max() - values.min())
    weights: npt.NDArray[np.float64] = WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * unit
    return weights


def even_over_informative(values: npt.NDArray[np.float64], n_informative: int) -> npt.NDArray[np.float64]:
    weights: npt.NDArray[np.float64] = np.where(np.arange(values.size) < n_informative, 1.0, WEIGHT_FLOOR)
    return weights


def test_while_classes_are_unseen_the_batch_covers_the_informative_rows_evenly() -> None:
    pool = view(4)
    picked, _ = scarce_diverse_arm(pool, K, rng=np.random.default_rng(0))
    assert picked.tolist() == cover(pool, even_over_informative)
    assert picked.tolist() != cover(pool, by_informativeness)  # the test has power


def test_once_every_class_is_seen_informative_rows_weigh_more() -> None:
    pool = view(0)
    picked, _ = scarce_diverse_arm(pool, K, rng=np.random.default_rng(0))
    assert picked.tolist() == cover(pool, by_informativeness)
    assert picked.tolist() != cover(pool, even_over_informative)
