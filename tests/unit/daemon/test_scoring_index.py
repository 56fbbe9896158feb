"""The in-memory pool index stays consistent with the store as items, labels and batches change."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from daemon.pool_index import PoolIndex, item_ids_of
from daemon.store import Batch, BatchItem, BatchItemState, LabelRecord, LabelStatus, PoolItem


class FakeCache:
    """Hash -> row, like EmbeddingCache.lookup; rows are handed out in the order vectors are 'stored'."""

    def __init__(self, model_key: str = "m") -> None:
        self.model_key = model_key
        self.rows: dict[str, int] = {}

    def store(self, digest: str) -> None:
        self.rows.setdefault(digest, len(self.rows))

    def lookup(self, hashes: Sequence[str]) -> npt.NDArray[np.intp]:
        return np.asarray([self.rows.get(h, -1) for h in hashes], dtype=np.intp)


def digest(i: int) -> str:
    return f"{i:064x}"


def add_items(engine: Engine, cache: FakeCache, numbers: range, *, embedded: bool) -> None:
    with Session(engine) as session:
        for i in numbers:
            session.add(PoolItem(item_id=f"it-{i}", text=f"text {i}", content_hash=digest(i), is_embedded=embedded))
            if embedded:
                cache.store(digest(i))
        session.commit()


def embed(engine: Engine, cache: FakeCache, numbers: range) -> None:
    with Session(engine) as session:
        for item in session.exec(select(PoolItem).where(col(PoolItem.item_id).in_([f"it-{i}" for i in numbers]))):
            cache.store(item.content_hash)
            item.is_embedded = True
            session.add(item)
        session.commit()


def reference(engine: Engine, cache: FakeCache) -> tuple[list[int], list[int]]:
    """The old candidates() query (NOT IN subqueries), as the definition to match."""
    labeled = select(LabelRecord.item_id).where(LabelRecord.status != LabelStatus.RETRACTED)
    queued = select(BatchItem.item_id).where(BatchItem.state != BatchItemState.WITHDRAWN)
    with Session(engine) as session:
        rows = session.exec(
            select(PoolItem.seq, PoolItem.content_hash)
            .where(col(PoolItem.is_embedded).is_(True))
            .where(col(PoolItem.item_id).not_in(labeled))
            .where(col(PoolItem.item_id).not_in(queued))
            .order_by(col(PoolItem.seq))
        ).all()
    kept = [(seq, cache.rows[h]) for seq, h in rows if h in cache.rows and seq is not None]
    return [seq for seq, _ in kept], [row for _, row in kept]


def check(engine: Engine, cache: FakeCache, index: PoolIndex) -> None:
    with Session(engine) as session:
        index.refresh(session, cache)
        got = index.candidates(session)
    seqs, rows = reference(engine, cache)
    assert got.seqs.tolist() == seqs
    assert got.cache_rows.tolist() == rows
    fresh = PoolIndex(cache.model_key)  # what a restarted daemon builds from the store
    with Session(engine) as session:
        fresh.refresh(session, cache)
        rebuilt = fresh.candidates(session)
    assert rebuilt.seqs.tolist() == seqs and rebuilt.cache_rows.tolist() == rows


def label(engine: Engine, numbers: Sequence[int], status: LabelStatus) -> None:
    with Session(engine) as session:
        for i in numbers:
            record = session.get(LabelRecord, f"it-{i}") or LabelRecord(item_id=f"it-{i}", status=status)
            record.status, record.label = status, "a" if status is LabelStatus.LABELED else None
            session.add(record)
        session.commit()


def queue(engine: Engine, states: dict[int, BatchItemState]) -> str:
    with Session(engine) as session:
        batch = Batch(strategy="margin", model_version="v1", size=len(states))
        session.add(batch)
        session.flush()
        for position, (i, state) in enumerate(states.items()):
            session.add(BatchItem(batch_id=batch.id, item_id=f"it-{i}", position=position, score=0.5, state=state))
        session.commit()
        return batch.id


def test_index_follows_items_labels_and_batches(engine: Engine) -> None:
    cache = FakeCache()
    add_items(engine, cache, range(1, 41), embedded=True)
    add_items(engine, cache, range(41, 51), embedded=False)
    index = PoolIndex(cache.model_key)
    check(engine, cache, index)
    assert len(index) == 50 and index.n_embedded == 40

    label(engine, [1, 2, 3], LabelStatus.LABELED)
    label(engine, [4], LabelStatus.SKIPPED)
    label(engine, [5], LabelStatus.UNKNOWN)
    label(engine, [6], LabelStatus.RETRACTED)  # a deleted annotation: a candidate again
    check(engine, cache, index)

    batch_id = queue(engine, {10: BatchItemState.PENDING, 11: BatchItemState.LABELED,
                              12: BatchItemState.WITHDRAWN, 13: BatchItemState.SKIPPED})
    check(engine, cache, index)
    with Session(engine) as session:
        item = session.get(BatchItem, (batch_id, "it-10"))
        assert item is not None
        item.state = BatchItemState.WITHDRAWN  # the task was deleted in the tool
        session.add(item)
        session.commit()
    label(engine, [2], LabelStatus.RETRACTED)
    check(engine, cache, index)

    embed(engine, cache, range(41, 46))  # the embed stage caught up with part of the pool
    check(engine, cache, index)
    add_items(engine, cache, range(51, 61), embedded=True)  # a pool file added later
    add_items(engine, cache, range(61, 66), embedded=False)
    embed(engine, cache, range(46, 51))
    check(engine, cache, index)
    assert len(index) == 65 and index.n_embedded == 60


def test_embedded_items_missing_from_the_cache_are_not_candidates(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FakeCache()
    add_items(engine, cache, range(1, 6), embedded=True)
    with Session(engine) as session:
        session.add(PoolItem(item_id="orphan", text="x", content_hash=digest(99), is_embedded=True))
        session.commit()
    index = PoolIndex(cache.model_key)
    with caplog.at_level(logging.WARNING, logger="daemon.pool_index"):
        check(engine, cache, index)
    assert "1 embedded pool items have no vector" in caplog.text
    cache.store(digest(99))  # stored later: picked up by the next refresh
    with Session(engine) as session:
        index.refresh(session, cache)
        assert len(index.candidates(session).seqs) == 6


def test_a_bulk_embed_is_caught_up_with_one_range_scan(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.pool_index as pool_index

    monkeypatch.setattr(pool_index, "_RANGE_SCAN_FROM", 3)
    cache = FakeCache()
    add_items(engine, cache, range(1, 21), embedded=False)
    index = PoolIndex(cache.model_key)
    check(engine, cache, index)
    embed(engine, cache, range(2, 19, 2))
    check(engine, cache, index)
    assert index.n_embedded == 9


def test_wrong_cache_and_item_ids(engine: Engine) -> None:
    cache = FakeCache()
    add_items(engine, cache, range(1, 4), embedded=True)
    index = PoolIndex(cache.model_key)
    with Session(engine) as session:
        index.refresh(session, cache)
        with pytest.raises(ValueError, match="index is for cache m"):
            index.refresh(session, FakeCache("other"))
        seqs = index.candidates(session).seqs.tolist()
        assert item_ids_of(session, seqs) == {seq: f"it-{i}" for seq, i in zip(seqs, range(1, 4), strict=True)}
    assert index.positions_of([seqs[1], 10_000]).tolist() == [1]
    assert index.cache_rows_of(seqs).tolist() == [0, 1, 2]
