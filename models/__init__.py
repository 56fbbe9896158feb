"""Embeddings, their on-disk cache, and the proxy classifier. Knows nothing of the daemon or connectors.

Names are imported lazily (PEP 562), so ``from models.cache import EmbeddingCache`` or
``from models.errors import ModelError`` (the CLI) does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.cache import EmbeddingCache, content_hash, embed_missing, model_key
    from models.classifier import ProxyClassifier
    from models.device import select_device
    from models.embedder import DEFAULT_MODEL_ID, Embedder, TransformerEmbedder, default_model_path
    from models.errors import CacheError, EmbedderUnavailable, ModelError, ModelNotFitted
    from models.hashing import HashingEmbedder
    from models.onnx_embedder import OnnxEmbedder
    from models.quality import QualityEstimate, estimate_quality

__all__ = [
    "DEFAULT_MODEL_ID",
    "CacheError",
    "Embedder",
    "EmbedderUnavailable",
    "EmbeddingCache",
    "HashingEmbedder",
    "ModelError",
    "ModelNotFitted",
    "OnnxEmbedder",
    "ProxyClassifier",
    "QualityEstimate",
    "TransformerEmbedder",
    "content_hash",
    "default_model_path",
    "embed_missing",
    "estimate_quality",
    "model_key",
    "select_device",
]

_HOME = {
    "models.cache": ("EmbeddingCache", "content_hash", "embed_missing", "model_key"),
    "models.classifier": ("ProxyClassifier",),
    "models.device": ("select_device",),
    "models.embedder": ("DEFAULT_MODEL_ID", "Embedder", "TransformerEmbedder", "default_model_path"),
    "models.errors": ("CacheError", "EmbedderUnavailable", "ModelError", "ModelNotFitted"),
    "models.hashing": ("HashingEmbedder",),
    "models.onnx_embedder": ("OnnxEmbedder",),
    "models.quality": ("QualityEstimate", "estimate_quality"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
