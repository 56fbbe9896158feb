"""Cold start: a representative, spread-out first batch when the proxy model cannot score yet."""

from __future__ import annotations

import numpy as np

from strategies._checks import check_embeddings, check_k
from strategies._types import AnyFloatArray, FloatArray, IntArray
from strategies.geometry import knn_density
from strategies.select import k_center_greedy

__all__ = ["SAMPLE_SIZE", "representative"]

SAMPLE_SIZE = 20_000  # rows a cold-start batch is drawn from at most (a uniform sample of the pool)


def representative(
    embeddings: AnyFloatArray,
    k: int,
    *,
    rng: np.random.Generator,
    anchors: AnyFloatArray | None = None,
    sample_size: int | None = None,
    n_references: int = 1_000,
    n_neighbors: int = 5,
) -> tuple[IntArray, FloatArray]:
    """Pick ``k`` items that cover the dense regions of the pool, skipping outliers.

    1. Draw a uniform sample of ``max(sample_size, k)`` rows (all rows if fewer).
    2. Estimate each sampled row's density ``rho`` with :func:`knn_density`
       against ``n_references`` random rows of the sample, and rescale so the
       densest row has ``rho = 1``.
    3. Run :func:`k_center_greedy` weighted by ``rho``: each pick maximises
       ``rho(x) * distance to the nearest anchor or earlier pick``. The first
       pick is the densest row; later picks land in uncovered dense regions,
       since an outlier's low density cancels its large distance.

    Deterministic given ``rng``; O(s·(r + k)·d) time for sample size ``s`` and
    ``r`` references, and it copies only the sampled rows.

    Args:
        embeddings: (n, d) float rows.
        k: 1 <= k <= n.
        rng: the only source of randomness (the sample and the references).
        anchors: (m, d) already-labeled rows to stay away from, or None.
        sample_size: >= 1, rows considered at most (raised to ``k`` if smaller); None for
            :data:`SAMPLE_SIZE`.
        n_references: >= 1, rows the density is measured against.
        n_neighbors: >= 1, the neighbour rank that defines density.

    Returns:
        ``(positions, scores)``: (k,) distinct positions into ``embeddings`` in
        pick order, and their rescaled density in ``(0, 1]``.

    Raises:
        ValueError: on malformed inputs or ``k`` out of range.
    """
    check_embeddings(embeddings)
    n = embeddings.shape[0]
    check_k(k, n)
    sample_size = SAMPLE_SIZE if sample_size is None else sample_size
    if sample_size < 1 or n_references < 1:
        raise ValueError(f"sample_size and n_references must be >= 1, got {sample_size}, {n_references}")
    size = min(n, max(sample_size, k))
    sample = np.arange(n) if size == n else np.sort(rng.choice(n, size=size, replace=False))
    points = embeddings[sample]
    references = points[rng.choice(size, size=min(size, n_references), replace=False)]
    density = knn_density(points, references, n_neighbors=n_neighbors)
    weights: FloatArray = density / density.max()
    picks = k_center_greedy(points, k, rng=rng, anchors=anchors, weights=weights)
    positions: IntArray = sample[picks].astype(np.intp)
    return positions, weights[picks]
