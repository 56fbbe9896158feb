"""Errors raised by the models package.

Tree::

    ModelError
     ├── ModelNotFitted        predict/predict_proba called before fit
     ├── NonFiniteInput        rows with NaN or inf reached the head (also a ValueError)
     ├── EmbedderUnavailable   the embedding model is missing or cannot be loaded; the message
     │                         names the path tried and what to do
     └── CacheError            the embedding cache cannot be opened as asked (made for a different
          │                    vector size, damaged)
          └── CacheLocked      another process holds the cache's writer lock; it names the pid

Messages never contain pool texts: paths, counts and ids only.
"""

from __future__ import annotations

__all__ = ["CacheError", "CacheLocked", "EmbedderUnavailable", "ModelError", "ModelNotFitted", "NonFiniteInput"]


class ModelError(Exception):
    """Base class for every error the models package raises on purpose."""


class ModelNotFitted(ModelError):
    """The classifier was used before ``fit`` was called."""


class NonFiniteInput(ModelError, ValueError):
    """Rows with NaN or inf (or values so large that the logits overflow) reached the classifier."""


class EmbedderUnavailable(ModelError):
    """The embedding model could not be found or loaded."""


class CacheError(ModelError):
    """The embedding cache is locked by another writer or does not match the embedder."""


class CacheLocked(CacheError):
    """Another process holds the cache's writer lock: trying again once it has finished may work."""
