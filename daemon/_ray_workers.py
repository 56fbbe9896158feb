"""What runs inside Ray actors for the ``ray`` scale-out backend (see ``daemon.scaleout_ray``).

Each class is handed to ``Dataset.map_batches``: Ray builds one instance per actor, so the
encoder, the head weights and the cache's memory maps are loaded once per actor, not per batch.
Workers only compute and return arrays; they never write the store or the embedding cache
(the coordinator does). Imports stay light: ``ray`` only where an object-store chunk is fetched,
torch only through the embedder or the head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from daemon.scoring import SCORING_DTYPE, AnyProba
from models._types import Float32Array, FloatArray, IntArray
from models.cache import EmbeddingCache, model_key

if TYPE_CHECKING:
    from models.embedder import Embedder
    from models.head_weights import HeadWeights

__all__ = ["EncodeWorker", "RowScorer", "ScoreWorker", "SharedCache", "top_by_score_key"]

Batch = dict[str, npt.NDArray[Any]]
RowScorer = Callable[[AnyProba], FloatArray]
"""``proba (n, C) -> scores (n,)``, higher = query sooner; must pickle (a module-level function)."""


class EncodeWorker:
    """Embed batches of ``{"content_hash", "text"}`` rows; return ``{"content_hash", "vector"}``.

    Vectors come back as little-endian float16, the cache's own format: the same rounding the
    cache would apply to float32 vectors, at half the bytes on the wire.

    Args:
        embedder_factory: builds the encoder in the actor (weights load there, once).
        expected_key: the coordinator cache's ``model_key``; a worker whose encoder differs
            (another revision installed on that node) refuses to start rather than mix vectors.
        dim: the cache's vector width.

    Raises:
        ValueError: the worker's encoder does not match ``expected_key``/``dim``.
    """

    def __init__(self, embedder_factory: Callable[[], Embedder], expected_key: str, dim: int) -> None:
        self._embedder = embedder_factory()
        found = model_key(self._embedder)
        if found != expected_key or self._embedder.dim != dim:
            raise ValueError(
                f"worker encoder {found} (dim {self._embedder.dim}) differs from the coordinator's "
                f"{expected_key} (dim {dim}): install the same model on every node"
            )

    def __call__(self, batch: Batch) -> Batch:
        texts = [str(text) for text in batch["text"]]
        vectors = self._embedder.encode(texts).astype("<f2")
        return {"content_hash": batch["content_hash"], "vector": vectors}


@dataclass(frozen=True, slots=True)
class SharedCache:
    """The coordinator's embedding cache, for workers on a node that sees its disk.

    Attributes:
        root: the cache root as an absolute path (``<data_dir>/embeddings``).
        model_key: the cache's sub-folder.
        dim: vector width.
    """

    root: Path
    model_key: str
    dim: int


class ScoreWorker:
    """Score one block of candidates; keep its best ``top_m`` rows and its sampled rows.

    A block (``batch_format="pyarrow"``, one block per call) has one row per candidate:
    ``position`` (int64, into the pool being scored), ``key`` (float64, the random tiebreak),
    ``is_sample`` (bool, drawn for the uniform sample) and either ``row`` (int64, the cache row,
    read from :class:`SharedCache`) or ``vector`` (fixed-size list of float16 or float32).

    Returns ``{"position", "score", "key", "proba" (m, C), "is_top", "is_sample"}`` for the
    block's top ``top_m`` by ``(score, key)`` (``is_top``) and its sampled rows (``is_sample``);
    a row can be both. Only these leave the worker, never the block's vectors.

    Args:
        head: the trained head's weights (sent once per actor).
        scorer: the strategy's per-row pre-filter score.
        top_m: rows kept per block by ``(score, key)``, >= 0.
        shared: where ``row`` points, or ``None`` when blocks carry ``vector``.
        device: torch device for the head (``None``: CUDA when the actor has one).

    Raises:
        ValueError: a block names cache rows this node cannot see.
    """

    def __init__(
        self,
        head: HeadWeights,
        scorer: RowScorer,
        *,
        top_m: int,
        shared: SharedCache | None,
        device: str | None = None,
    ) -> None:
        self._head, self._scorer, self._top_m, self._device = head, scorer, top_m, device
        self._cache: EmbeddingCache | None = None
        if shared is not None:
            self._cache = EmbeddingCache(shared.root, model_key=shared.model_key, dim=shared.dim, readonly=True)
            self._root = shared.root

    def __call__(self, block: Any) -> Batch:
        positions = block.column("position").to_numpy()
        keys = block.column("key").to_numpy()
        is_sample = block.column("is_sample").to_numpy(zero_copy_only=False)
        proba = self._head.predict_proba(self._vectors(block), device=self._device, dtype=SCORING_DTYPE)
        scores = np.asarray(self._scorer(proba), dtype=np.float64)
        is_top = np.zeros(len(positions), dtype=bool)
        is_top[top_by_score_key(scores, keys, self._top_m)] = True
        keep = is_top | is_sample
        return {
            "position": positions[keep].astype(np.int64),
            "score": scores[keep],
            "key": keys[keep],
            "proba": proba[keep],
            "is_top": is_top[keep],
            "is_sample": is_sample[keep],
        }

    def _vectors(self, block: Any) -> Float32Array:
        from daemon.scoring import as_float32  # torch's float16 cast, as the in-process path

        if self._cache is None:
            flat = block.column("vector").combine_chunks()
            stored = flat.flatten().to_numpy().reshape(-1, flat.type.list_size)
            return as_float32(np.array(stored))  # a writable copy: Arrow's buffers are read-only
        rows = block.column("row").to_numpy()
        if rows.max() >= len(self._cache):
            self._cache.refresh()  # rows the coordinator appended after this actor opened the cache
            if rows.max() >= len(self._cache):
                raise ValueError(
                    f"embedding cache {self._root} shows {len(self._cache)} rows on this Ray node, the pool "
                    f"needs row {rows.max()}: the path is not shared; set scaleout.vectors = 'object_store'"
                )
        _, stored_rows = next(self._cache.iter_stored_chunks(rows, len(rows)))  # a block is one chunk
        return as_float32(stored_rows)


def top_by_score_key(scores: FloatArray, keys: FloatArray, m: int) -> IntArray:
    """Return the positions of the ``m`` largest ``(score, key)`` pairs, best first.

    With distinct random ``keys`` this is the set ``daemon.scoring.shortlist`` keeps (ties in
    score go to the larger key), so merging per-block winners gives the global top ``m``.
    """
    order = np.lexsort((-keys, -scores))
    best: IntArray = order[:m].astype(np.intp)
    return best
