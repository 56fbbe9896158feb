"""Class names as a guide to classes nobody has labeled yet.

A project declares its classes before it has labels for all of them, and their names are
text in the same embedding space as the pool (``card_arrival`` → "card arrival"). A class
the proxy has never seen cannot be ranked by its probabilities, but the pool rows nearest
its name are likely members: on Banking77 cut to 100:1 (2,202 rows, 77 classes), the row
nearest the name is of that class for 62 of the 77 classes; on TREC's six coarse types
(names such as ``ABBR`` or ``LOC``) for one of six. So while classes are unseen, part of the
batch goes to the rows nearest the unseen classes' names, one row per class, and the rest
of the batch is picked as before (the default strategy does this after its representative
cold-start batch, :func:`strategies.arms.names_first`).

Pure numpy: no I/O, no global RNG.
"""

from __future__ import annotations

import numpy as np

from strategies._checks import check_embeddings
from strategies._types import AnyFloatArray, FloatArray, IntArray

__all__ = ["named_share", "nearest_to_names"]


def named_share(k: int, *, n_prototypes: int, n_seen_classes: int, n_unseen_classes: int) -> int:
    """Return how many of a batch of ``k`` go to rows nearest the unseen classes' names.

    ``min(n_prototypes, ceil(lam · k))`` with ``lam = n_unseen / (n_seen + n_unseen)``, the
    share of declared classes that have no label yet: a share that shrinks as classes are
    found, so a name that matches nothing costs at most one label per batch.

    Args:
        k: >= 0, the batch size.
        n_prototypes: >= 0, unseen classes that have a name vector.
        n_seen_classes: >= 0, classes with at least one label.
        n_unseen_classes: >= 0, declared classes with none.
    """
    total = n_seen_classes + n_unseen_classes
    if k <= 0 or n_prototypes <= 0 or n_unseen_classes <= 0 or total <= 0:
        return 0
    return min(n_prototypes, k, int(np.ceil(k * n_unseen_classes / total)))


def nearest_to_names(
    embeddings: AnyFloatArray, prototypes: AnyFloatArray, n_picks: int, *, rng: np.random.Generator
) -> tuple[IntArray, FloatArray]:
    """Pick ``n_picks`` distinct rows, each the nearest unpicked row to a different name.

    Names are served in order of how close their nearest row is (the clearest match first;
    exact ties in a random order), so when there are more names than picks the names that
    match the pool best get a row. Each name takes its most similar row not yet taken.

    Args:
        embeddings: (n, d) candidate rows, L2-normalised.
        prototypes: (u, d) name vectors in the same space, L2-normalised.
        n_picks: ``0 <= n_picks <= min(n, u)``.
        rng: breaks exact ties between names.

    Returns:
        ``(positions, similarities)``: (n_picks,) distinct positions into ``embeddings`` and
        each pick's cosine similarity to its name, in ``[-1, 1]``.

    Raises:
        ValueError: malformed arrays, mismatched widths, or ``n_picks`` out of range.
    """
    check_embeddings(embeddings)
    check_embeddings(prototypes, "prototypes")
    n, u = embeddings.shape[0], prototypes.shape[0]
    if prototypes.shape[1] != embeddings.shape[1]:
        raise ValueError(f"prototypes have width {prototypes.shape[1]}, embeddings {embeddings.shape[1]}")
    if not 0 <= n_picks <= min(n, u):
        raise ValueError(f"n_picks must be in [0, {min(n, u)}], got {n_picks}")
    if n_picks == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    similarity = np.asarray(embeddings @ prototypes.T, dtype=np.float64)  # (n, u)
    depth = min(n, n_picks)  # a name skips at most n_picks - 1 rows taken by others
    if depth < n:
        nearest = np.argpartition(-similarity, depth - 1, axis=0)[:depth]
    else:
        nearest = np.tile(np.arange(n)[:, None], (1, u))
    order_by_column = np.argsort(-np.take_along_axis(similarity, nearest, axis=0), axis=0, kind="stable")
    ranked = np.take_along_axis(nearest, order_by_column, axis=0)  # (depth, u): each name's rows, best first
    best = similarity[ranked[0], np.arange(u)]
    names = np.lexsort((rng.permutation(u), -best))
    taken: set[int] = set()
    positions: list[int] = []
    values: list[float] = []
    for name in names[:n_picks]:
        row = next(int(r) for r in ranked[:, name] if int(r) not in taken)
        taken.add(row)
        positions.append(row)
        values.append(float(similarity[row, name]))
    return np.asarray(positions, dtype=np.intp), np.asarray(values)
