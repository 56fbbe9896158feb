"""Distances, novelty and density on small hand-made point sets."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import geometry


def test_min_sq_distances_by_hand() -> None:
    points = np.array([[0.0, 0.0], [3.0, 4.0]])
    anchors = np.array([[0.0, 1.0], [3.0, 0.0]])
    np.testing.assert_allclose(geometry.min_sq_distances(points, anchors), [1.0, 16.0])


def test_min_sq_distances_blocks_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = np.random.default_rng(0)
    points, anchors = gen.normal(size=(40, 5)), gen.normal(size=(33, 5))
    brute = ((points[:, None, :] - anchors[None, :, :]) ** 2).sum(-1).min(1)
    monkeypatch.setattr(geometry, "_BLOCK_ELEMS", 100)  # forces 14 anchor blocks of 2-3 rows
    np.testing.assert_allclose(geometry.min_sq_distances(points, anchors), brute, atol=1e-9)


def test_novelty_is_zero_on_an_anchor_and_one_opposite_it() -> None:
    anchors = np.array([[1.0, 0.0]])
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(geometry.novelty(points, anchors), [0.0, 1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(geometry.novelty(points, None), [1.0, 1.0, 1.0])


def test_knn_density_is_lower_for_an_outlier() -> None:
    gen = np.random.default_rng(1)
    cluster = gen.normal(scale=0.1, size=(50, 3))
    points = np.vstack([cluster, [[5.0, 5.0, 5.0]]])
    density = geometry.knn_density(points, points, n_neighbors=5)
    assert density[-1] < density[:-1].min()


def test_knn_density_rejects_zero_neighbours() -> None:
    with pytest.raises(ValueError, match="n_neighbors"):
        geometry.knn_density(np.eye(2), np.eye(2), n_neighbors=0)


def test_near_copies_name_the_most_similar_reference_at_or_above_the_cosine() -> None:
    references = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    close = np.array([0.99, 0.141, 0.0]) / np.linalg.norm([0.99, 0.141, 0.0])  # cosine 0.990 to the first
    points = np.stack([close, [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    np.testing.assert_array_equal(geometry.near_copies(points, references, min_cosine=0.97), [0, -1, 1, -1])
    np.testing.assert_array_equal(geometry.near_copies(points, references, min_cosine=0.995), [-1, -1, 1, -1])
    # at 0.8 the last point is near both (0.6 and 0.8): the closer one is named
    np.testing.assert_array_equal(geometry.near_copies(points, references, min_cosine=0.79), [0, -1, 1, 1])


def test_near_copies_across_reference_blocks_and_in_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = np.random.default_rng(1)
    references = gen.normal(size=(50, 16))
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    points = np.concatenate([references[[41, 3, 17]], gen.normal(size=(2, 16))])
    points[3:] /= np.linalg.norm(points[3:], axis=1, keepdims=True)
    monkeypatch.setattr(geometry, "_BLOCK_ELEMS", 20)  # 4 references per block
    expected = [41, 3, 17, -1, -1]
    np.testing.assert_array_equal(geometry.near_copies(points, references, min_cosine=0.97), expected)
    # identical rows count at 1.0 even after a float16 round trip
    half = geometry.near_copies(points.astype(np.float16), references.astype(np.float16), min_cosine=1.0)
    np.testing.assert_array_equal(half, expected)


def test_near_copies_of_nothing_and_bad_arguments() -> None:
    points = np.eye(3)
    np.testing.assert_array_equal(geometry.near_copies(points, np.zeros((0, 3))), [-1, -1, -1])
    assert geometry.near_copies(np.zeros((0, 3)), points).shape == (0,)
    with pytest.raises(ValueError, match="min_cosine"):
        geometry.near_copies(points, points, min_cosine=0.0)
    with pytest.raises(ValueError, match="columns"):
        geometry.near_copies(points, np.eye(4))


def test_repeats_name_an_earlier_near_copy_and_leave_each_group_s_first_row(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = np.random.default_rng(4)
    distinct = gen.normal(size=(6, 16))
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    # rows 3 and 5 copy row 1 (row 5 is the closest to row 3's original), row 4 copies row 0
    points = distinct[[0, 1, 2, 1, 0, 1, 3]].copy()
    points[5] += 1e-3 * gen.normal(size=16)
    points[5] /= np.linalg.norm(points[5])
    expected = [-1, -1, -1, 1, 0, 1, -1]
    np.testing.assert_array_equal(geometry.repeats(points, min_cosine=0.97), expected)
    monkeypatch.setattr(geometry, "_BLOCK_ELEMS", 10)  # one row per block: the same answer
    np.testing.assert_array_equal(geometry.repeats(points, min_cosine=0.97), expected)
    np.testing.assert_array_equal(geometry.repeats(points.astype(np.float16), min_cosine=1.0)[[3, 4]], [1, 0])
    # a pair below the cosine is not a repeat
    pair = np.array([[1.0, 0.0], [0.96, 0.28]])  # cosine 0.96
    np.testing.assert_array_equal(geometry.repeats(pair, min_cosine=0.97), [-1, -1])
    np.testing.assert_array_equal(geometry.repeats(pair, min_cosine=0.95), [-1, 0])


def test_repeats_of_nothing_and_bad_arguments() -> None:
    assert geometry.repeats(np.zeros((0, 3))).shape == (0,)
    np.testing.assert_array_equal(geometry.repeats(np.eye(3)[:1]), [-1])
    with pytest.raises(ValueError, match="min_cosine"):
        geometry.repeats(np.eye(3), min_cosine=1.5)
