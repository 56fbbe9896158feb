"""Class names for the default strategy: their vectors, and the pool rows nearest each.

While declared classes have no label, the default strategy gives part of the batch to the
rows nearest those classes' names (:mod:`strategies.named`). The names are embedded by the
pool's own encoder, once per process; pools that bring their own vectors (another space) or
``loop.use_class_names = false`` get none. The nearest rows are found by one streamed pass
over the candidates' stored vectors, so the view a strategy sees holds the pool's own
nearest rows to each name however large the pool is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from daemon.context import LoopContext
from daemon.pool import byo_model_key
from daemon.scoring import DEFAULT_CHUNK_ROWS, VectorSource, as_float32
from models.cache import EmbeddingCache
from models.class_names import embed_class_names

__all__ = ["nearest_rows", "unseen_prototypes"]

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.intp]


def unseen_prototypes(ctx: LoopContext, cache: EmbeddingCache, unseen: Sequence[str]) -> Float32Array | None:
    """Return ``(len(unseen), d)`` vectors of the unseen classes' names, or None when none apply.

    None when ``unseen`` is empty, ``loop.use_class_names`` is off, or the pool brings its own
    vectors (another space). ``cache`` is the pool's active cache (:func:`daemon.training.active_cache`).
    """
    if not unseen or not ctx.settings.loop.use_class_names or cache.model_key == byo_model_key(cache.dim):
        return None  # checked before the encoder is loaded, which bring-your-own pools never need
    embedder = ctx.embedder()
    key = cache.model_key  # the encoder's: daemon.training.active_cache
    missing = [name for name in unseen if (key, name) not in ctx.name_vectors]
    if missing:
        for name, vector in zip(missing, embed_class_names(embedder, missing), strict=True):
            ctx.name_vectors[(key, name)] = vector
        log.debug("embedded %s class names", len(missing))
    return np.stack([ctx.name_vectors[(key, name)] for name in unseen])


def nearest_rows(
    source: VectorSource,
    rows: IntArray,
    prototypes: Float32Array,
    depth: int,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> IntArray:
    """Return positions into ``rows`` of the ``depth`` rows most similar to each prototype.

    One pass over the stored vectors, chunk by chunk, keeping a ``(depth, u)`` running best;
    memory is O(chunk_rows · u + depth · u) whatever the pool's size.

    Args:
        source: the embedding cache.
        rows: (n,) cache rows of the candidates.
        prototypes: (u, d) name vectors, L2-normalised.
        depth: >= 1, rows kept per prototype (fewer when the pool is smaller).
        chunk_rows: rows per chunk read.

    Returns:
        Increasing, distinct positions into ``rows``: at most ``depth · u`` of them.

    Raises:
        ValueError: ``depth`` < 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    u = prototypes.shape[0]
    if u == 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.intp)
    best_sim: Float32Array = np.full((0, u), -np.inf, dtype=np.float32)
    best_pos: IntArray = np.zeros((0, u), dtype=np.intp)
    # the product runs in torch like the cast before it: alternating torch's and numpy's BLAS
    # thread pools on each chunk made the pass 2x slower (1.0 s against 0.43 s per 1M rows, 2 names)
    weights = torch.from_numpy(np.ascontiguousarray(prototypes.T, dtype=np.float32))
    for span, stored in source.iter_stored_chunks(rows, chunk_rows):
        widened = np.require(as_float32(stored), requirements="W")
        similarity: Float32Array = (torch.from_numpy(widened) @ weights).numpy()  # (c, u)
        positions = np.arange(span.start, span.stop, dtype=np.intp)
        if best_sim.shape[0] == depth:  # full: only rows above some name's current floor can enter
            is_contender = (similarity > best_sim.min(axis=0)).any(axis=1)
            similarity, positions = similarity[is_contender], positions[is_contender]
        best_sim = np.concatenate([best_sim, similarity])
        best_pos = np.concatenate([best_pos, np.broadcast_to(positions[:, None], similarity.shape)])
        if best_sim.shape[0] > depth:
            keep = np.argpartition(-best_sim, depth - 1, axis=0)[:depth]
            best_sim = np.take_along_axis(best_sim, keep, axis=0)
            best_pos = np.take_along_axis(best_pos, keep, axis=0)
    found: IntArray = np.unique(best_pos)
    return found
