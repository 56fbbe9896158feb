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
