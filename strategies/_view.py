"""The values a strategy consumes and returns, and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from strategies._checks import check_embeddings, check_k, check_label_counts, check_proba
from strategies._types import AnyFloatArray, FloatArray, IntArray

__all__ = ["PoolView", "Selection", "Strategy", "validate_view"]


@dataclass(frozen=True, slots=True)
class PoolView:
    """What a strategy sees of the pool; built by the caller, never mutated here.

    Attributes:
        embeddings: (n, d) unlabeled candidates, float32 or float64, rows L2-normalised.
        proba: (n, C) calibrated class probabilities over the C classes that have
            labels, rows sum to 1; None at cold start.
        label_counts: (C,) labels per class, aligned with ``proba``'s columns;
            ``(0,)`` at cold start.
        n_unseen_classes: >= 0, classes the project declares that have no label yet.
        labeled_embeddings: (m, d) already-labeled items, same space as
            ``embeddings``; None when unknown.
        unseen_prototypes: (u, d) vectors of the names of unseen classes, same space as
            ``embeddings``, rows L2-normalised, ``u <= n_unseen_classes``; None when the
            names are unknown or not embedded in the pool's space (see :mod:`strategies.named`).
    """

    embeddings: AnyFloatArray
    proba: AnyFloatArray | None
    label_counts: IntArray
    n_unseen_classes: int = 0
    labeled_embeddings: AnyFloatArray | None = None
    unseen_prototypes: AnyFloatArray | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """A batch to present.

    Attributes:
        positions: (k,) distinct positions into the view's rows, in presentation order.
        scores: (k,) float64 informativeness of each pick (higher = more informative).
        strategy: the name actually used, e.g. ``"cold_start"`` after a fallback.
    """

    positions: IntArray
    scores: FloatArray
    strategy: str


class Strategy(Protocol):
    """A registry entry: pick ``k`` rows of ``view`` using only ``rng`` for randomness."""

    def __call__(self, view: PoolView, k: int, *, rng: np.random.Generator) -> Selection: ...


def validate_view(view: PoolView, k: int) -> None:
    """Check every field of ``view`` against the others, and ``k`` against its size.

    Raises:
        ValueError: on a wrong shape or dtype, NaN or inf, negative counts, probabilities
            that are not a distribution, or ``k`` outside ``[1, n]``.
    """
    if not isinstance(view, PoolView):
        raise ValueError(f"view must be a PoolView, got {type(view).__name__}")
    check_embeddings(view.embeddings)
    n, d = view.embeddings.shape
    check_k(k, n)
    check_label_counts(view.label_counts)
    if view.proba is not None:
        check_proba(view.proba)
        if view.proba.shape[0] != n:
            raise ValueError(f"proba has {view.proba.shape[0]} rows, embeddings {n}")
        check_label_counts(view.label_counts, view.proba.shape[1])
    if isinstance(view.n_unseen_classes, bool) or view.n_unseen_classes < 0:
        raise ValueError(f"n_unseen_classes must be an int >= 0, got {view.n_unseen_classes}")
    if view.labeled_embeddings is not None:
        check_embeddings(view.labeled_embeddings, "labeled_embeddings")
        if view.labeled_embeddings.shape[1] != d:
            raise ValueError(f"labeled_embeddings must have {d} columns, got {view.labeled_embeddings.shape}")
    if view.unseen_prototypes is not None:
        check_embeddings(view.unseen_prototypes, "unseen_prototypes")
        if view.unseen_prototypes.shape[1] != d:
            raise ValueError(f"unseen_prototypes must have {d} columns, got {view.unseen_prototypes.shape}")
        if view.unseen_prototypes.shape[0] > view.n_unseen_classes:
            raise ValueError(
                f"{view.unseen_prototypes.shape[0]} unseen_prototypes for {view.n_unseen_classes} unseen classes"
            )
