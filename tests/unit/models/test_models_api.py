"""Pin the public API of the models package (httpx's exported-members test)."""

from __future__ import annotations

import models


def test_all_names_resolve_and_are_pinned() -> None:
    assert sorted(models.__all__) == sorted(
        [
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
    )
    for name in models.__all__:
        assert getattr(models, name) is not None


def test_error_tree() -> None:
    for error in (models.ModelNotFitted, models.EmbedderUnavailable, models.CacheError):
        assert issubclass(error, models.ModelError)


def test_embedders_satisfy_the_protocol() -> None:
    embedders: list[models.Embedder] = [models.HashingEmbedder(dim=8), models.TransformerEmbedder()]
    assert all(hasattr(e, "encode") for e in embedders)
