"""Cold start covers the clusters of the pool instead of sampling at random."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from strategies.cold_start import representative


def blobs(
    seed: int, sizes: tuple[int, ...] = (200, 200, 200, 200, 200), d: int = 16
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    gen = np.random.default_rng(seed)
    centers = 10.0 * np.eye(d)[: len(sizes)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    points = centers[labels] + gen.normal(size=(labels.size, d))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(5))
def test_five_blobs_five_picks_hit_every_blob(seed: int) -> None:
    points, labels = blobs(seed)
    positions, scores = representative(points, 5, rng=np.random.default_rng(seed))
    assert sorted(labels[positions].tolist()) == [0, 1, 2, 3, 4]
    assert np.all((scores > 0) & (scores <= 1))


def test_unequal_blobs_are_all_covered_from_a_subsample() -> None:
    points, labels = blobs(0, sizes=(3000, 1500, 400, 100, 60))
    positions, _ = representative(points, 5, rng=np.random.default_rng(0), sample_size=2000)
    assert sorted(labels[positions].tolist()) == [0, 1, 2, 3, 4]


def test_outliers_are_not_picked_first() -> None:
    points, _ = blobs(1, sizes=(300, 300, 300))
    gen = np.random.default_rng(9)
    outliers = gen.normal(size=(4, points.shape[1])).astype(np.float32)
    outliers /= np.linalg.norm(outliers, axis=1, keepdims=True)
    pool = np.vstack([points, outliers])
    positions, _ = representative(pool, 3, rng=np.random.default_rng(0))
    assert np.all(positions < points.shape[0])


def test_labeled_anchors_steer_picks_to_uncovered_blobs() -> None:
    points, labels = blobs(2)
    anchors = points[labels == 0][:10]
    positions, _ = representative(points, 4, rng=np.random.default_rng(0), anchors=anchors)
    assert sorted(labels[positions].tolist()) == [1, 2, 3, 4]


def test_same_seed_same_batch() -> None:
    points, _ = blobs(3)
    first, _ = representative(points, 7, rng=np.random.default_rng(42), sample_size=300)
    again, _ = representative(points, 7, rng=np.random.default_rng(42), sample_size=300)
    assert first.tolist() == again.tolist()
    assert len(set(first.tolist())) == 7
