"""Embeddings, their on-disk cache, and the proxy classifier. Knows nothing of the daemon or connectors."""

from models.cache import EmbeddingCache, content_hash, embed_missing, model_key
from models.classifier import ProxyClassifier
from models.device import select_device
from models.embedder import DEFAULT_MODEL_ID, Embedder, TransformerEmbedder, default_model_path
from models.errors import CacheError, EmbedderUnavailable, ModelError, ModelNotFitted
from models.hashing import HashingEmbedder
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
