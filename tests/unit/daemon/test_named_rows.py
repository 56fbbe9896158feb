"""The rows nearest each unseen class's name, found by one streamed pass (daemon.named_rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.named_rows import nearest_rows
from models.cache import EmbeddingCache

D = 16


@pytest.mark.parametrize(("chunk_rows", "depth"), [(7, 1), (64, 3), (1000, 5), (50, 400)])
def test_nearest_rows_match_a_brute_force_search(tmp_path: Path, chunk_rows: int, depth: int) -> None:
    gen = np.random.default_rng(0)
    vectors = gen.normal(size=(300, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    prototypes = gen.normal(size=(4, D)).astype(np.float32)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    with EmbeddingCache(tmp_path, model_key="test", dim=D, shard_rows=97) as cache:
        stored = cache.put([f"{i:064x}" for i in range(300)], vectors)
        rows = np.sort(gen.choice(stored, size=250, replace=False))  # candidates skip some rows
        got = nearest_rows(cache, rows, prototypes, depth, chunk_rows=chunk_rows)
        similarity = cache.get(rows) @ prototypes.T
    expected = np.unique(np.argsort(-similarity, axis=0, kind="stable")[: min(depth, 250)])
    assert got.tolist() == expected.tolist()


def test_nearest_rows_of_nothing(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, model_key="test", dim=D) as cache:
        assert nearest_rows(cache, np.zeros(0, dtype=np.intp), np.ones((2, D), np.float32), 3).shape == (0,)
        with pytest.raises(ValueError, match="depth"):
            nearest_rows(cache, np.zeros(0, dtype=np.intp), np.ones((2, D), np.float32), 0)
