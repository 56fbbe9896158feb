"""Input validation shared by every strategy. Raises only ``ValueError``.

The checks are O(n·d) reads at most and never allocate an (n, d) temporary:
finiteness is tested on a sum in the array's own dtype (NaN and inf propagate
through it). A sum can overflow only for values far beyond L2-normalised rows,
which are rejected too.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["check_embeddings", "check_k", "check_label_counts", "check_proba", "check_scores"]

_PROBA_SUM_TOL = 1e-3


def check_k(k: int, n: int) -> None:
    """Raise unless ``k`` is an integer in ``[1, n]``."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if not 0 < k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")


def check_embeddings(embeddings: npt.NDArray[np.floating], name: str = "embeddings") -> None:
    """Raise unless ``embeddings`` is a finite float ``(n, d)`` array with ``d >= 1``."""
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got {getattr(embeddings, 'shape', type(embeddings))}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{name} must have a float dtype, got {embeddings.dtype}")
    if embeddings.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got {embeddings.shape}")
    if not np.isfinite(embeddings.sum()):
        raise ValueError(f"{name} contain NaN or inf, or values too large to sum")


def check_proba(proba: npt.NDArray[np.floating]) -> None:
    """Raise unless ``proba`` is ``(n, C>=2)``, finite, in ``[0, 1]``, rows summing to 1."""
    if not isinstance(proba, np.ndarray) or proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"proba must have shape (n, C>=2), got {getattr(proba, 'shape', type(proba))}")
    if not np.issubdtype(proba.dtype, np.floating):
        raise ValueError(f"proba must have a float dtype, got {proba.dtype}")
    if proba.shape[0] == 0:
        return
    # two passes over the array, the row sums and the minimum: a NaN or inf reaches its row's sum,
    # and entries >= 0 in rows summing to 1 are at most 1. Float32 sums (half the time of float64 on
    # a scoring pass's chunks) are off by ~C * 6e-8, far inside the tolerance for any C up to 10^4
    row_sums = proba.sum(axis=1, dtype=np.promote_types(proba.dtype, np.float32))
    if not np.isfinite(row_sums).all():
        raise ValueError("proba contains NaN or inf")
    if proba.min() < 0.0:
        raise ValueError("proba must lie in [0, 1]")
    if np.abs(row_sums - 1.0).max() > _PROBA_SUM_TOL:
        raise ValueError(f"proba rows must sum to 1 (within {_PROBA_SUM_TOL})")


def check_label_counts(label_counts: npt.NDArray[np.integer], n_classes: int | None = None) -> None:
    """Raise unless ``label_counts`` is a 1-D non-negative integer array (of length ``n_classes``)."""
    if not isinstance(label_counts, np.ndarray) or label_counts.ndim != 1:
        raise ValueError(
            f"label_counts must be 1-D, got {getattr(label_counts, 'shape', type(label_counts))}"
        )
    if label_counts.size and not np.issubdtype(label_counts.dtype, np.integer):
        raise ValueError(f"label_counts must have an integer dtype, got {label_counts.dtype}")
    if n_classes is not None and label_counts.shape != (n_classes,):
        raise ValueError(f"label_counts must have shape ({n_classes},), got {label_counts.shape}")
    if label_counts.size and label_counts.min() < 0:
        raise ValueError("label_counts must be >= 0")


def check_scores(scores: npt.NDArray[np.floating]) -> None:
    """Raise unless ``scores`` is a finite 1-D float array."""
    if not isinstance(scores, np.ndarray) or scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got {getattr(scores, 'shape', type(scores))}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"scores must have a float dtype, got {scores.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
