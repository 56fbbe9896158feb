"""Distance-based scores over a *pre-filtered* set of embeddings.

Everything here is pairwise, O(n·m·d) time, so callers pass a candidate subset
(a few thousand to ~20k rows), never the whole pool. Memory stays O(n + m):
distances are computed in blocks of at most ``_BLOCK_ELEMS`` entries with the
Gram identity ``|x - y|² = |x|² + |y|² - 2 x·y`` in the inputs' own dtype.
"""

from __future__ import annotations

import numpy as np

from strategies._checks import check_embeddings
from strategies._types import AnyFloatArray, FloatArray, IntArray

__all__ = [
    "DEFAULT_NEAR_COPY_COSINE",
    "knn_density",
    "min_sq_distances",
    "near_copies",
    "novelty",
    "repeats",
    "sq_norms",
]

_BLOCK_ELEMS = 1 << 22
# cosine from which a row counts as a near-copy of another: on 3,000 distinct texts of each shared
# data set (all-MiniLM-L6-v2), pairs this close carried different labels 0-1 % of the time
DEFAULT_NEAR_COPY_COSINE = 0.97


def sq_norms(points: AnyFloatArray) -> FloatArray:
    """Return the squared L2 norm of each row. ``points``: (n, d) -> (n,) float64."""
    norms: FloatArray = np.einsum("ij,ij->i", points, points, dtype=np.float64)
    return norms


def min_sq_distances(points: AnyFloatArray, anchors: AnyFloatArray) -> FloatArray:
    """Return each point's squared Euclidean distance to its nearest anchor.

    Args:
        points: (n, d) float rows.
        anchors: (m, d) float rows, m >= 1.

    Returns:
        (n,) float64, >= 0.

    Raises:
        ValueError: on malformed or mismatched inputs, or no anchors.
    """
    check_embeddings(points, "points")
    check_embeddings(anchors, "anchors")
    if anchors.shape[0] == 0 or anchors.shape[1] != points.shape[1]:
        raise ValueError(f"anchors must have shape (m>=1, {points.shape[1]}), got {anchors.shape}")
    point_norms = sq_norms(points)
    best = np.full(points.shape[0], np.inf)
    step = max(1, _BLOCK_ELEMS // max(1, points.shape[0]))
    for start in range(0, anchors.shape[0], step):
        block = anchors[start : start + step]
        gram = points @ block.T  # (n, b) in the inputs' dtype
        sq = sq_norms(block)[None, :] - 2.0 * gram
        np.minimum(best, sq.min(axis=1), out=best)
    dist: FloatArray = np.maximum(best + point_norms, 0.0)
    return dist


def near_copies(
    points: AnyFloatArray, references: AnyFloatArray, *, min_cosine: float = DEFAULT_NEAR_COPY_COSINE
) -> IntArray:
    """Return, per point, the reference it nearly copies (cosine >= ``min_cosine``), or -1.

    A labeled item's near-copies (the same text re-posted, re-cased, with a word dropped or a
    tag added) stay as uncertain as it was, so an uncertainty strategy would ask for them one
    after another; callers set them aside instead.

    Args:
        points: (n, d) L2-normalised rows.
        references: (m, d) L2-normalised rows (m may be 0).
        min_cosine: in ``(0, 1]``.

    Returns:
        (n,) intp: the index of the most similar reference among those at least ``min_cosine``
        close, or -1 where none is.

    Raises:
        ValueError: on malformed or mismatched inputs, or ``min_cosine`` outside ``(0, 1]``.
    """
    check_embeddings(points, "points")
    check_embeddings(references, "references")
    if references.shape[1] != points.shape[1]:
        raise ValueError(f"references must have {points.shape[1]} columns, got {references.shape[1]}")
    if not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine}")
    nearest: IntArray = np.full(points.shape[0], -1, dtype=np.intp)
    if points.shape[0] == 0 or references.shape[0] == 0:
        return nearest
    best = np.full(points.shape[0], -np.inf)
    rows = np.arange(points.shape[0])
    step = max(1, _BLOCK_ELEMS // points.shape[0])
    for start in range(0, references.shape[0], step):
        cosine = points @ references[start : start + step].T  # (n, b), in the inputs' dtype
        at = cosine.argmax(axis=1)
        top = cosine[rows, at].astype(np.float64)
        better = top > best
        best[better], nearest[better] = top[better], at[better] + start
    # the 1e-6 spares float16/float32 rounding: an identical row must count at min_cosine 1.0
    nearest[best < min_cosine - 1e-6] = -1
    return nearest


def repeats(points: AnyFloatArray, *, min_cosine: float = DEFAULT_NEAR_COPY_COSINE) -> IntArray:
    """Return, per row, the earlier row it nearly copies (cosine >= ``min_cosine``), or -1.

    Two near-copies in one batch cost two labels for what one teaches; a caller keeps the first
    row of each group (rows in order of preference) and drops the rest. The first row of a
    group is -1; a later one names the most similar earlier row.

    Args:
        points: (n, d) L2-normalised rows, in order of preference.
        min_cosine: in ``(0, 1]``.

    Returns:
        (n,) intp: for row ``i``, an index ``j < i`` or -1.

    Raises:
        ValueError: on malformed inputs or ``min_cosine`` outside ``(0, 1]``.
    """
    check_embeddings(points, "points")
    if not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine}")
    n = points.shape[0]
    earlier: IntArray = np.full(n, -1, dtype=np.intp)
    step = max(1, _BLOCK_ELEMS // max(1, n))
    for start in range(1, n, step):
        stop = min(n, start + step)
        cosine = (points[start:stop] @ points[:stop].T).astype(np.float64)  # (b, stop)
        rows = np.arange(start, stop)
        cosine[rows[:, None] <= np.arange(stop)[None, :]] = -np.inf  # only earlier rows count
        at = cosine.argmax(axis=1)
        # the 1e-6 spares float16/float32 rounding, as in near_copies
        found = cosine[np.arange(rows.size), at] >= min_cosine - 1e-6
        earlier[rows[found]] = at[found]
    return earlier


def novelty(points: AnyFloatArray, anchors: AnyFloatArray | None) -> FloatArray:
    """Score how far each point is from every anchor: ``(1 - max_a cos(x, a)) / 2``.

    For L2-normalised rows this equals ``min_a |x - a|² / 4``; it is 0 for a
    point equal to an anchor and 1 for a point opposite to every anchor.

    Args:
        points: (n, d) L2-normalised rows (candidates).
        anchors: (m, d) L2-normalised rows (already-labeled items), or None /
            empty, in which case every point is maximally novel (1.0).

    Returns:
        (n,) float64 in ``[0, 1]``.

    Raises:
        ValueError: on malformed or mismatched inputs.
    """
    if anchors is None or anchors.shape[0] == 0:
        check_embeddings(points, "points")
        return np.ones(points.shape[0])
    scores: FloatArray = np.clip(min_sq_distances(points, anchors) / 4.0, 0.0, 1.0)
    return scores


def knn_density(points: AnyFloatArray, references: AnyFloatArray, *, n_neighbors: int = 5) -> FloatArray:
    """Estimate local density as ``1 / (eps + distance to the n_neighbors-th nearest reference)``.

    A point in a crowded region has a close ``n_neighbors``-th neighbour and a
    high density; an outlier has a low one. Points that are also references
    count themselves, which is harmless for ranking.

    Args:
        points: (n, d) float rows.
        references: (m, d) float rows, typically a random sample of the pool.
        n_neighbors: >= 1; clipped to ``m``.

    Returns:
        (n,) float64, > 0, in units of 1 / distance.

    Raises:
        ValueError: on malformed or mismatched inputs, or ``n_neighbors < 1``.
    """
    check_embeddings(points, "points")
    check_embeddings(references, "references")
    if references.shape[0] == 0 or references.shape[1] != points.shape[1]:
        raise ValueError(f"references must have shape (m>=1, {points.shape[1]}), got {references.shape}")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    kth = min(n_neighbors, references.shape[0]) - 1
    ref_norms = sq_norms(references)
    kth_sq = np.empty(points.shape[0])
    step = max(1, _BLOCK_ELEMS // references.shape[0])
    for start in range(0, points.shape[0], step):
        block = points[start : start + step]
        sq = sq_norms(block)[:, None] + ref_norms[None, :] - 2.0 * (block @ references.T)
        kth_sq[start : start + step] = np.partition(sq, kth, axis=1)[:, kth]
    scale = float(np.sqrt(np.median(np.maximum(kth_sq, 0.0)))) or 1.0
    density: FloatArray = 1.0 / (1e-3 * scale + np.sqrt(np.maximum(kth_sq, 0.0)))
    return density
