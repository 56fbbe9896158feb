"""The rows nearest each unseen class's name, found by one streamed pass (daemon.named_rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectors.fake import FakeConnector
from daemon.context import LoopContext
from daemon.named_rows import nearest_rows, unseen_prototypes
from daemon.pool import byo_model_key
from daemon.settings import load_settings
from daemon.store import make_engine
from models.cache import EmbeddingCache, model_key
from tests.doubles import CountingEmbedder

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


def name_context(tmp_path: Path, embedder: CountingEmbedder, *, use_class_names: bool = True) -> LoopContext:
    settings = load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/state/db.sqlite", "data_dir": str(tmp_path / "state")},
        loop={"use_class_names": use_class_names},
    )
    return LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=FakeConnector(),
                       embedder_factory=lambda: embedder)


def test_names_are_embedded_once_per_process_by_the_pools_encoder(tmp_path: Path) -> None:
    embedder = CountingEmbedder(dim=D)
    ctx = name_context(tmp_path, embedder)
    cache = ctx.cache(model_key(embedder), D)
    first = unseen_prototypes(ctx, cache, ["card_arrival", "refund"])
    assert first is not None and first.shape == (2, D)
    np.testing.assert_allclose(first, embedder.inner.encode(["card arrival", "refund"]), atol=1e-6)
    again = unseen_prototypes(ctx, cache, ["refund"])
    assert again is not None and np.array_equal(again[0], first[1])
    assert embedder.encoded == ["card arrival", "refund"]  # the second call embedded nothing
    assert unseen_prototypes(ctx, cache, []) is None


def test_no_names_when_turned_off_or_for_bring_your_own_vectors(tmp_path: Path) -> None:
    embedder = CountingEmbedder(dim=D)
    off = name_context(tmp_path / "off", embedder, use_class_names=False)
    assert unseen_prototypes(off, off.cache(model_key(embedder), D), ["refund"]) is None
    byo = name_context(tmp_path / "byo", embedder)
    assert unseen_prototypes(byo, byo.cache(byo_model_key(D), D), ["refund"]) is None
    assert embedder.calls == 0  # neither loaded or ran the encoder
