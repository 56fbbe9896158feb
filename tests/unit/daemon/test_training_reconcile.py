"""The store's embedded marks follow what the embedding cache really holds (a deleted folder, a cut shard)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session, col, func, select

import daemon.training
from daemon.context import LoopContext
from daemon.pool import add_pool_file
from daemon.store import KeyValue, PoolItem
from daemon.training import embed_pool, vectors_for
from models.cache import EmbeddingCache, model_key
from models.errors import CacheError
from tests.doubles import CountingEmbedder
from tests.unit.daemon.test_embed_backfill import context, settings_for, write_pool

DIM, N, SHARD_ROWS = 8, 30, 10


def embedded_store(tmp_path: Path) -> tuple[LoopContext, Path]:
    """A store of N items, all embedded into a cache of three shards; return it and the cache folder."""
    settings = settings_for(tmp_path)
    folder = settings.store.data_dir / "embeddings" / model_key(CountingEmbedder(dim=DIM))
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"format": 1, "dim": DIM, "dtype": "float16",
                                                  "shard_rows": SHARD_ROWS}))
    write_pool(tmp_path / "pool.jsonl", N)
    ctx = context(settings, CountingEmbedder(dim=DIM))
    add_pool_file(ctx.engine, tmp_path / "pool.jsonl", pool=settings.pool, data_dir=settings.store.data_dir)
    assert embed_pool(ctx) == N
    return ctx, folder


def reopened(ctx: LoopContext) -> tuple[LoopContext, CountingEmbedder]:
    """The same store in a new process: the old one lets go of its cache."""
    for cache in ctx._caches.values():
        cache.close()
    embedder = CountingEmbedder(dim=DIM)
    return context(ctx.settings, embedder), embedder


def embedded_count(ctx: LoopContext) -> int:
    with Session(ctx.engine) as session:
        return session.exec(select(func.count()).where(col(PoolItem.is_embedded))).one()


def all_hashes(ctx: LoopContext) -> list[str]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(PoolItem.content_hash).order_by(col(PoolItem.seq))))


def test_a_deleted_cache_is_embedded_again_by_the_running_process(tmp_path: Path) -> None:
    """Marks said embedded, the cache was empty: predict said run embed, embed said nothing to do."""
    ctx, folder = embedded_store(tmp_path)
    shutil.rmtree(folder)
    assert embed_pool(ctx) == N
    assert embedded_count(ctx) == N
    assert vectors_for(ctx, all_hashes(ctx)).shape == (N, DIM)


def test_a_cut_last_shard_re_embeds_only_the_lost_items(tmp_path: Path) -> None:
    ctx, folder = embedded_store(tmp_path)
    os.truncate(folder / "shard-00002.f16", 4 * DIM * 2)  # rows 24..29 are gone
    again, embedder = reopened(ctx)
    assert embed_pool(again) == 6
    assert embedder.encoded == [f"item number {i} text" for i in range(24, 30)]
    assert embedded_count(again) == N
    assert vectors_for(again, all_hashes(again)).shape == (N, DIM)


def test_a_store_stuck_before_the_fix_is_reconciled_once(tmp_path: Path) -> None:
    """A store from before the row-count record, whose cache was already lost, gets unstuck."""
    ctx, folder = embedded_store(tmp_path)
    with Session(ctx.engine) as session:
        session.delete(session.get(KeyValue, "embedded_cache_rows"))
        session.commit()
    again, _ = reopened(ctx)
    shutil.rmtree(folder)
    assert embed_pool(again) == N
    assert embedded_count(again) == N


def test_an_intact_cache_costs_no_lookup_of_the_marked_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, folder = embedded_store(tmp_path)
    looked_up: list[int] = []

    def counted(session: Session, cache: EmbeddingCache) -> int:
        looked_up.append(len(cache))
        return 0

    monkeypatch.setattr("daemon.training._unmark_missing", counted)
    again, _ = reopened(ctx)
    assert daemon.training.reconcile_embedded(again) == 0 and embed_pool(again) == 0
    assert looked_up == []  # the row counts agree: no item is looked up
    os.truncate(folder / "shard-00002.f16", 0)
    assert daemon.training.reconcile_embedded(again) == 0
    assert looked_up == [20]  # the cache shrank: every marked item is checked, once
    assert daemon.training.reconcile_embedded(again) == 0 and looked_up == [20]


def test_nan_rows_give_one_error_naming_the_shard_then_a_fresh_embed_works(tmp_path: Path) -> None:
    ctx, folder = embedded_store(tmp_path)
    with (folder / "shard-00001.f16").open("r+b") as handle:
        handle.write(b"\xff" * DIM * 2)  # row 10
    with pytest.raises(CacheError, match=r"shard-00001\.f16 is damaged: row 10 holds NaN"):
        vectors_for(ctx, all_hashes(ctx))
    shutil.rmtree(folder)  # what the message says to do
    again, _ = reopened(ctx)
    assert embed_pool(again) == N
    assert np.isfinite(vectors_for(again, all_hashes(again))).all()
