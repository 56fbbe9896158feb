"""The loop's process-local context: settings, store, connector, encoder and trained model.

Everything durable lives in the store; this object only holds handles and caches that
a restart can rebuild (the trained head is retrained from the stored labels in seconds).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from connectors.base import Connector
from daemon.pool_index import PoolIndex
from daemon.settings import Settings
from daemon.store import utcnow
from models.cache import EmbeddingCache
from models.embedder import Embedder, TransformerEmbedder

if TYPE_CHECKING:
    from models.classifier import ProxyClassifier

__all__ = ["LoopContext", "TrainedModel", "default_embedder_factory"]


@dataclass(slots=True)
class TrainedModel:
    version: str
    classifier: ProxyClassifier
    classes: tuple[str, ...]  # the classifier's columns
    n_labels: int


def default_embedder_factory(settings: Settings) -> Callable[[], Embedder]:
    """Return a factory for the configured encoder: torch, or its ONNX Runtime export (loaded lazily)."""

    def build() -> Embedder:
        if settings.model.backend == "onnx":
            from models.onnx_embedder import OnnxEmbedder

            return OnnxEmbedder(
                settings.model.encoder,
                cache_dir=settings.store.data_dir / "onnx",
                precision=settings.model.dtype,
                batch_size=settings.model.encode_batch_size,
                max_length=settings.model.max_length,
            )
        return TransformerEmbedder(
            settings.model.encoder,
            batch_size=settings.model.encode_batch_size,
            max_length=settings.model.max_length,
            device=settings.model.device,
            dtype=settings.model.dtype,
        )

    return build


@dataclass(slots=True)
class LoopContext:
    settings: Settings
    engine: Engine
    connector: Connector
    embedder_factory: Callable[[], Embedder]
    clock: Callable[[], datetime] = utcnow
    stop: threading.Event = field(default_factory=threading.Event)
    model: TrainedModel | None = None
    sync_count: int = 0
    synced_at: float | None = None  # time.monotonic() when the last sync succeeded; None before one
    pool_index: PoolIndex | None = None  # pool order -> cache row; rebuilt from the store after a restart
    _embedder: Embedder | None = None
    _caches: dict[str, EmbeddingCache] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.settings.store.data_dir

    def embedder(self) -> Embedder:
        """Return the encoder, building it on first use."""
        if self._embedder is None:
            self._embedder = self.embedder_factory()
        return self._embedder

    def cache(self, model_key: str, dim: int) -> EmbeddingCache:
        """Return the embedding cache for one encoder (or bring-your-own width)."""
        cache = self._caches.get(model_key)
        if cache is None:
            cache = EmbeddingCache(self.data_dir / "embeddings", model_key=model_key, dim=dim)
            self._caches[model_key] = cache
        return cache
