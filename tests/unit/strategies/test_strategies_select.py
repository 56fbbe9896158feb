"""Hand-computed answers for top_k and k_center_greedy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from strategies.select import k_center_greedy, top_k


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_top_k_by_hand() -> None:
    assert top_k(np.array([0.1, 0.9, 0.5, 0.7]), 3, rng=rng()).tolist() == [1, 3, 2]


def test_top_k_breaks_ties_at_random_but_reproducibly() -> None:
    flat = np.zeros(100)
    picks = {tuple(top_k(flat, 3, rng=rng(seed)).tolist()) for seed in range(20)}
    assert len(picks) > 1
    assert top_k(flat, 3, rng=rng(7)).tolist() == top_k(flat, 3, rng=rng(7)).tolist()


def test_top_k_keeps_all_strictly_better_items_before_ties() -> None:
    values = np.array([0.5, 1.0, 0.5, 0.5, 2.0])
    got = top_k(values, 3, rng=rng())
    assert got[:2].tolist() == [4, 1]
    assert got[2] in (0, 2, 3)


@pytest.mark.parametrize("k", [0, -1, 4])
def test_top_k_rejects_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.ones(3), k, rng=rng())


def test_top_k_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([0.1, np.nan]), 1, rng=rng())


def test_k_center_greedy_by_hand() -> None:
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert k_center_greedy(points, 2, rng=rng(), anchors=np.array([[0.0]])).tolist() == [3, 2]
    assert k_center_greedy(points, 4, rng=rng(), anchors=np.array([[0.0]])).tolist() == [3, 2, 1, 0]


def test_k_center_greedy_without_anchors_starts_at_the_heaviest_weight() -> None:
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    got = k_center_greedy(points, 2, rng=rng(), weights=np.array([1.0, 5.0, 1.0, 1.0]))
    assert got.tolist() == [1, 3]


def test_weighted_k_center_does_not_pick_near_duplicates() -> None:
    gen = rng(3)
    duplicates = np.repeat(gen.normal(size=(1, 8)), 50, axis=0) + 1e-6 * gen.normal(size=(50, 8))
    others = gen.normal(size=(50, 8))
    points = np.vstack([duplicates, others])
    weights = np.concatenate([np.ones(50), np.full(50, 0.5)])
    got = k_center_greedy(points, 20, rng=rng(), weights=weights)
    assert np.count_nonzero(got < 50) == 1
    assert len(set(got.tolist())) == 20


def test_k_center_greedy_float32_and_all_duplicates() -> None:
    points = np.ones((5, 3), dtype=np.float32)
    got = k_center_greedy(points, 5, rng=rng())
    assert sorted(got.tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("weights", [np.zeros(3), np.array([1.0, -1.0, 1.0]), np.ones(2)])
def test_k_center_greedy_rejects_bad_weights(weights: npt.NDArray[np.float64]) -> None:
    with pytest.raises(ValueError, match="weights"):
        k_center_greedy(np.eye(3), 1, rng=rng(), weights=weights)


def test_k_center_greedy_rejects_mismatched_anchors() -> None:
    with pytest.raises(ValueError, match="anchors"):
        k_center_greedy(np.eye(3), 1, rng=rng(), anchors=np.ones((2, 4)))
