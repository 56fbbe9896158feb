"""Add pool files to the store: all rows or none, and never the same item twice."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from daemon.errors import PoolFileError
from daemon.pool_files import PoolRow, read_pool_file
from daemon.removal import restore_items
from daemon.settings import PoolSettings
from daemon.store import (
    LabelEvent,
    LabelRecord,
    LabelStatus,
    PoolItem,
    bulk_insert,
    get_value,
    ids_present,
    set_value,
)
from models.cache import EmbeddingCache, content_hash

__all__ = ["ImportReport", "add_pool_file", "byo_hash", "byo_model_key", "known_classes"]

log = logging.getLogger(__name__)
_CLASSES_SHOWN = 12  # an unknown label's message lists at most this many classes
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ImportReport:
    path: str
    rows: int
    added: int
    already_present: int
    labels_added: int
    embedding_dim: int | None
    restored: int = 0  # of those already present: removed items brought back


def byo_model_key(dim: int) -> str:
    """Cache key under which bring-your-own vectors of width ``dim`` are stored."""
    return f"byo-d{dim}"


def byo_hash(item_id: str) -> str:
    """Cache key of a bring-your-own vector: it belongs to the item, not to a text."""
    return content_hash("byo:" + item_id)


def known_classes(session: Session) -> list[str]:
    """Return the project's classes once they are known (from Label Studio or settings)."""
    raw = get_value(session, "classes")
    return list(json.loads(raw)) if raw else []


def add_pool_file(
    engine: Engine, path: Path, *, pool: PoolSettings, data_dir: Path, classes: Sequence[str] = ()
) -> ImportReport:
    """Validate ``path`` completely, then add its new items and seed labels in one transaction.

    Items whose id is already in the pool are not added again; an existing id with a
    different text is an error. Seed labels must be classes: the project's once the daemon has
    bound one (its labeling config wins), else ``classes`` (``loop.classes``) when given; with
    neither, the seed labels will name the classes of the project the daemon creates.

    Items of the file that were removed (``labelloop pool remove``) come back.

    Every read and check comes before the first write: the write transaction, which makes a
    running daemon's writes wait, holds only the inserts.

    Raises:
        PoolFileError: the file or any row is malformed, or conflicts with the pool.
    """
    rows = read_pool_file(
        path,
        id_field=pool.id_field,
        text_field=pool.text_field,
        label_field=pool.label_field,
        embedding_field=pool.embedding_field,
    )
    with Session(engine) as session:
        existing = _existing(session, [row.item_id for row in rows])
        _check_against_store(session, path, rows, existing, classes)
        embedding_source = _embedding_source(session, path, rows)
        new_rows = [row for row in rows if row.item_id not in existing]
        if embedding_source != "model":
            _cache_vectors(new_rows, embedding_source, data_dir)  # before the rows: a crash leaves no dangling row
        now = datetime.now(UTC)
        items = _ItemValues.of(new_rows, source=path.name, has_embedding=embedding_source != "model", now=now)
        labels = _seed_label_values(session, rows, now=now)
        _fast_bulk_writes(session)
        set_value(session, "embedding_source", embedding_source)  # the write transaction starts here
        bulk_insert(session, PoolItem, items)
        bulk_insert(session, LabelRecord, labels)
        bulk_insert(session, LabelEvent, labels)
        restored = restore_items(session, [row.item_id for row in rows if row.item_id in existing])
        if new_rows or restored:
            from daemon.pause import lift_pause

            lift_pause(session, f"{len(new_rows) + restored} new pool items")
        session.commit()
    dim = None if embedding_source == "model" else len(rows[0].embedding or ())
    report = ImportReport(str(path), len(rows), len(new_rows), len(rows) - len(new_rows), len(labels), dim, restored)
    log.info("pool file imported: %s rows, %s new, %s labels", report.rows, report.added, report.labels_added)
    return report


def _existing(session: Session, item_ids: Sequence[str]) -> dict[str, str]:
    """``{item_id: text}`` of the given ids already in the pool (two columns, not whole rows)."""
    found: dict[str, str] = {}
    for start in range(0, len(item_ids), _CHUNK):
        chunk = item_ids[start : start + _CHUNK]
        stmt = select(PoolItem.item_id, PoolItem.text).where(col(PoolItem.item_id).in_(chunk))
        found.update(session.exec(stmt).all())
    return found


def _check_against_store(
    session: Session, path: Path, rows: Sequence[PoolRow], existing: dict[str, str], configured: Sequence[str]
) -> None:
    problems: list[tuple[int | None, str]] = []
    for row in rows:
        text = existing.get(row.item_id)
        if text is not None and text != row.text:
            problems.append((row.line, f"id {row.item_id!r} is already in the pool with another text"))
    project = known_classes(session)
    classes, origin = (project, "the project's classes") if project else (list(configured), "loop.classes")
    if classes:
        problems.extend(_unknown_labels(rows, classes, origin))
    if problems:
        raise PoolFileError(str(path), problems)


def _unknown_labels(rows: Sequence[PoolRow], classes: Sequence[str], origin: str) -> list[tuple[int | None, str]]:
    """One problem per seed label that is not a class, at the first line it is on."""
    allowed = set(classes)
    lines: dict[str, list[int | None]] = {}
    for row in rows:
        if row.label is not None and row.label not in allowed:
            lines.setdefault(row.label, []).append(row.line)
    shown = ", ".join(classes[:_CLASSES_SHOWN])
    if len(classes) > _CLASSES_SHOWN:
        shown += f", … ({len(classes)} in all)"
    problems: list[tuple[int | None, str]] = []
    for label, where in lines.items():
        also = f" (and {len(where) - 1} more rows)" if len(where) > 1 else ""
        problems.append((where[0], f"unknown label {label!r}{also}: not one of {origin} ({shown})"))
    return problems


def _embedding_source(session: Session, path: Path, rows: Sequence[PoolRow]) -> str:
    """``"model"`` when the rows carry no vectors, else their cache key; it must match the pool's so far."""
    source = get_value(session, "embedding_source")
    if rows[0].embedding is None:
        if source not in (None, "model"):
            raise PoolFileError(str(path), [(None, "the pool holds precomputed embeddings: this file has none")])
        return "model"
    dim = len(rows[0].embedding)
    if source not in (None, byo_model_key(dim)):
        raise PoolFileError(str(path), [(None, f"embeddings of width {dim} do not fit a pool of {source}")])
    return byo_model_key(dim)


def _cache_vectors(rows: Sequence[PoolRow], model_key: str, data_dir: Path) -> None:
    """Write bring-your-own vectors, L2-normalised, to the embedding cache."""
    if not rows:
        return
    vectors = np.asarray([row.embedding for row in rows], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    with EmbeddingCache(data_dir / "embeddings", model_key=model_key, dim=vectors.shape[1]) as cache:
        cache.put([byo_hash(row.item_id) for row in rows], vectors / np.maximum(norms, 1e-12))


@dataclass(frozen=True, slots=True)
class _ItemValues:
    """``PoolItem`` rows as columns. The costly ones (content hash, metadata JSON) are computed
    before the write transaction; the row dicts are built a statement at a time inside it, since
    a dict per row held 360 MB at a million rows."""

    rows: Sequence[PoolRow]
    hashes: list[str]
    metas: list[str]
    source: str
    has_embedding: bool
    now: datetime

    @classmethod
    def of(cls, rows: Sequence[PoolRow], *, source: str, has_embedding: bool, now: datetime) -> _ItemValues:
        hashes = [byo_hash(row.item_id) if has_embedding else content_hash(row.text) for row in rows]
        metas = [json.dumps(dict(row.meta), ensure_ascii=False) for row in rows]
        return cls(rows, hashes, metas, source, has_embedding, now)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, span: slice) -> list[dict[str, Any]]:
        return [
            {"item_id": row.item_id, "text": row.text, "content_hash": digest, "meta_json": meta,
             "source": self.source, "is_embedded": self.has_embedding, "created_at": self.now}
            for row, digest, meta in zip(self.rows[span], self.hashes[span], self.metas[span], strict=True)
        ]


def _seed_label_values(session: Session, rows: Sequence[PoolRow], *, now: datetime) -> list[dict[str, Any]]:
    """Rows for the seed labels of items that have no label yet (a label from Label Studio wins)."""
    labeled = [row for row in rows if row.label is not None]
    have = ids_present(session, LabelRecord.item_id, [row.item_id for row in labeled])
    return [
        {"item_id": row.item_id, "status": LabelStatus.LABELED, "label": row.label, "source": "seed",
         "recorded_at": now}
        for row in labeled if row.item_id not in have
    ]


def _fast_bulk_writes(session: Session) -> None:
    """Give this connection a 128 MB page cache: index pages of a million-row insert then stay in memory."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(sql_text("PRAGMA cache_size=-131072"))
