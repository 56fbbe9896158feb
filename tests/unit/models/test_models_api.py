"""Pin the public API of the models package (httpx's exported-members test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
            "OnnxEmbedder",
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
    embedders: list[models.Embedder] = [
        models.HashingEmbedder(dim=8), models.TransformerEmbedder(), models.OnnxEmbedder()
    ]
    assert all(hasattr(e, "encode") for e in embedders)


def test_cache_errors_and_hashing_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import models, models.cache, models.errors, models.hashing\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    repo = Path(models.__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = models.NoSuchThing
