"""The loop's process-local context: settings, store, connector, encoder and trained model.

Everything durable lives in the store; this object only holds handles and caches that
a restart can rebuild (the trained head is retrained from the stored labels in seconds).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from sqlalchemy.engine import Engine

from connectors.base import Connector
from daemon.pool_index import PoolIndex
from daemon.settings import ModelSettings, Settings
from daemon.store import utcnow
from models.cache import EmbeddingCache
from models.device import select_device
from models.embedder import Embedder, TransformerEmbedder
from models.errors import EmbedderUnavailable

if TYPE_CHECKING:
    from models.classifier import ProxyClassifier

__all__ = ["LoopContext", "TrainedModel", "default_embedder_factory", "encoder_backend"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TrainedModel:
    version: str
    classifier: ProxyClassifier
    classes: tuple[str, ...]  # the classifier's columns
    n_labels: int


def default_embedder_factory(settings: Settings) -> Callable[[], Embedder]:
    """Return a factory for the configured encoder: torch, or its ONNX Runtime export (loaded lazily)."""

    def build() -> Embedder:
        model = settings.model
        backend = encoder_backend(model)
        if backend == "onnx":
            from models.onnx_embedder import OnnxEmbedder

            onnx = OnnxEmbedder(model.encoder, cache_dir=settings.store.data_dir / "onnx", precision=model.dtype,
                                batch_size=model.encode_batch_size, max_length=model.max_length)
            if model.backend == "onnx" or model.dtype == "int8":
                return onnx
            try:  # "auto": export and load now, and fall back to torch (the same vectors) if that fails
                onnx.encode(["labelloop"])
            except EmbedderUnavailable as e:
                log.warning("encoder: ONNX Runtime path unavailable (%s); using torch", e)
            else:
                log.info("encoder: ONNX Runtime fp32 on the CPU (backend auto)")
                return onnx
        return TransformerEmbedder(model.encoder, batch_size=model.encode_batch_size, max_length=model.max_length,
                                   device=model.device, dtype=model.dtype)

    return build


def encoder_backend(model: ModelSettings) -> str:
    """``"torch"`` or ``"onnx"``: what ``model.backend`` means on this machine.

    ``"auto"`` is ONNX Runtime for int8, and for fp32 on a CPU where onnxruntime and onnx are
    installed; torch for GPUs, bf16/fp16/auto dtypes, or without onnxruntime.
    """
    if model.backend != "auto":
        return model.backend
    if model.dtype == "int8":
        return "onnx"
    if model.dtype != "fp32" or select_device(model.device).type != "cpu":
        return "torch"
    has_runtime = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
    return "onnx" if has_runtime else "torch"


@dataclass(slots=True)
class LoopContext:
    settings: Settings
    engine: Engine
    connector: Connector
    embedder_factory: Callable[[], Embedder]
    clock: Callable[[], datetime] = utcnow
    stop: threading.Event = field(default_factory=threading.Event)
    model: TrainedModel | None = None
    synced_at: float | None = None  # time.monotonic() when the last sync succeeded; None before one
    reconciled_at: float | None = None  # time.monotonic() of the last full pull; None: the next pull is full
    reconcile_cost_s: float = 0.0  # how long the last full pull took (spaces the next one: daemon.sync)
    pool_index: PoolIndex | None = None  # pool order -> cache row; rebuilt from the store after a restart
    name_vectors: dict[tuple[str, str], npt.NDArray[np.float32]] = field(default_factory=dict)  # (model, class)
    readonly_caches: bool = False  # a command that only reads, next to a daemon that writes the caches
    # (model version, features, targets) of a model whose cross-validated quality is still to be
    # estimated: after the cycle's push (daemon.training.estimate_pending_quality)
    pending_quality: tuple[str, npt.NDArray[np.float32], npt.NDArray[np.object_]] | None = None
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

    def cache(self, model_key: str, dim: int, *, readonly: bool = False) -> EmbeddingCache:
        """Return the embedding cache for one encoder (or bring-your-own width); ``readonly`` takes no writer lock."""
        cache = self._caches.get(model_key)
        if cache is None:
            cache = EmbeddingCache(self.data_dir / "embeddings", model_key=model_key, dim=dim,
                                   readonly=readonly or self.readonly_caches)
            self._caches[model_key] = cache
        return cache
