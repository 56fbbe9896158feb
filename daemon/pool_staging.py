"""A pool file staged in a temporary table, so ``pool add`` checks and inserts it in SQL.

The file is read once, a few thousand rows at a time, into a ``TEMPORARY`` table on the
import's own connection (and its vectors, when it carries them, into a scratch file). Memory
then stays flat however large the file is, and writing the staged rows takes no lock on the
store: other processes (the daemon) write on while a large file is read and checked. The
checks against the store are queries over the staged rows, and the insert is one
``INSERT … SELECT`` per table in the caller's transaction.

The staged table and scratch file live as long as the connection and :class:`StagedFile`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.sql import Select

from daemon.errors import PoolFileError, position_word
from daemon.pool_files import MAX_PROBLEMS, NO_ROWS, PoolRow, iter_pool_rows, repeated_id_problem
from daemon.settings import PoolSettings
from daemon.store import LabelEvent, LabelRecord, LabelStatus, PoolItem, RemovedItem, table_of
from models._types import Float32Array, IntArray
from models.cache import content_hash

__all__ = ["StagedFile", "byo_dim", "byo_hash", "byo_model_key", "stage_pool_file"]

_BYO_PREFIX = "byo-d"  # cache keys of vectors a pool file brought: byo-d<width>
_STAGE_ROWS = 5000  # rows read, hashed and staged at a time
_VECTOR_ROWS = 50_000  # vectors read back from the scratch file at a time

_metadata = MetaData()
_staged = Table(
    "labelloop_staged_rows",
    _metadata,
    Column("line", Integer, primary_key=True),
    Column("item_id", String, nullable=False),
    Column("text", Text, nullable=False),
    Column("label", String),
    Column("content_hash", String, nullable=False),
    Column("meta_json", Text, nullable=False),
    Column("vector_row", Integer),  # row of the scratch vector file, or NULL
    Column("is_first", Boolean, nullable=False),  # the first row of its id (later ones repeat it)
    prefixes=["TEMPORARY"],
)
Index("labelloop_staged_by_id", _staged.c.item_id, _staged.c.line)  # created with the table


def byo_model_key(dim: int) -> str:
    """Cache key under which bring-your-own vectors of width ``dim`` are stored."""
    return f"{_BYO_PREFIX}{dim}"


def byo_dim(key: str | None) -> int | None:
    """The width of the bring-your-own vectors stored under cache key ``key``; ``None`` for an encoder's."""
    return int(key.removeprefix(_BYO_PREFIX)) if key is not None and key.startswith(_BYO_PREFIX) else None


def byo_hash(item_id: str) -> str:
    """Cache key of a bring-your-own vector: it belongs to the item, not to a text."""
    return content_hash("byo:" + item_id)


@dataclass(slots=True)
class StagedFile:
    """A pool file's valid rows, staged on ``conn``; close it to drop the table and scratch file.

    Only rows of ids the store does not hold yet are ever inserted (see :meth:`new_items`).
    """

    conn: Connection
    path: Path
    items: int  # distinct ids in the file
    dim: int | None  # the width of the file's vectors; None when it carries none
    vectors: IO[bytes] | None
    repeats: int = 0  # rows that repeat an earlier row of the file exactly (kept once)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        _staged.drop(self.conn, checkfirst=True)
        self.conn.commit()
        if self.vectors is not None:
            self.vectors.close()

    def conflicts_with_store(self) -> list[tuple[int | None, str]]:
        """Rows whose id the pool holds with another text (at most ``MAX_PROBLEMS``)."""
        stmt = (
            select(_staged.c.line, _staged.c.item_id)
            .join(table_of(PoolItem), table_of(PoolItem).c.item_id == _staged.c.item_id)
            .where(_staged.c.is_first, table_of(PoolItem).c.text != _staged.c.text)
            .order_by(_staged.c.line)
            .limit(MAX_PROBLEMS)
        )
        return [(line, f"id {item_id!r} is already in the pool with another text")
                for line, item_id in self.conn.execute(stmt)]

    def label_lines(self) -> dict[str, tuple[int, int]]:
        """``{seed label: (its first line, rows with it)}``."""
        stmt = (
            select(_staged.c.label, func.min(_staged.c.line), func.count())
            .where(_staged.c.is_first, _staged.c.label.is_not(None))
            .group_by(_staged.c.label)
        )
        return {label: (int(first), int(count)) for label, first, count in self.conn.execute(stmt)}

    def labels_differing(self) -> tuple[int, list[tuple[int, str, str, str]]]:
        """Seed labels of items the store already labels otherwise: how many, and the first few
        ``(line, item id, label here, label in the store)``. They are not applied."""
        records = table_of(LabelRecord)
        where = (_staged.c.is_first, records.c.status == LabelStatus.LABELED, _staged.c.label.is_not(None),
                 records.c.label != _staged.c.label)
        joined = _staged.join(records, records.c.item_id == _staged.c.item_id)
        count = int(self.conn.execute(select(func.count()).select_from(joined).where(*where)).scalar_one())
        first = self.conn.execute(
            select(_staged.c.line, _staged.c.item_id, _staged.c.label, records.c.label)
            .select_from(joined).where(*where).order_by(_staged.c.line).limit(3)
        ).all()
        return count, [(int(line), item_id, here, there) for line, item_id, here, there in first]

    def new_items(self) -> Select[Any]:
        """The staged rows to add: first of their id and not in the pool yet."""
        return select(_staged).where(_staged.c.is_first, ~_in_pool())

    def new_vectors(self) -> Iterator[tuple[list[str], Float32Array]]:
        """The new items' vectors from the scratch file, in file order, ``_VECTOR_ROWS`` at a time."""
        for _, item_ids, vectors in self._vectors_of(self.new_items()):
            yield item_ids, vectors

    def present_vectors(self) -> Iterator[tuple[list[int], list[str], Float32Array]]:
        """``(lines, item ids, vectors)`` of the rows whose id the pool holds already, in file order."""
        yield from self._vectors_of(select(_staged).where(_staged.c.is_first, _in_pool()))

    def _vectors_of(self, rows: Select[Any]) -> Iterator[tuple[list[int], list[str], Float32Array]]:
        if self.vectors is None or self.dim is None:
            return
        self.vectors.flush()
        query = rows.with_only_columns(_staged.c.line, _staged.c.item_id, _staged.c.vector_row).order_by(_staged.c.line)
        result = self.conn.execute(query)
        while chunk := result.fetchmany(_VECTOR_ROWS):
            positions = np.fromiter((row.vector_row for row in chunk), dtype=np.intp, count=len(chunk))
            yield [row.line for row in chunk], [row.item_id for row in chunk], _read_rows(self.vectors, positions,
                                                                                         self.dim)

    def insert_items(self, *, source: str, is_embedded: bool, now: datetime) -> int:
        """Add the new items in file order (their pool order); return how many. No commit."""
        pool = table_of(PoolItem)
        staged = self.new_items().subquery()
        rows = select(
            staged.c.item_id, staged.c.text, staged.c.content_hash, staged.c.meta_json,
            literal(source, pool.c.source.type), literal(is_embedded, pool.c.is_embedded.type),
            literal(now, pool.c.created_at.type),
        ).order_by(staged.c.line)
        columns = ["item_id", "text", "content_hash", "meta_json", "source", "is_embedded", "created_at"]
        return int(self.conn.execute(insert(pool).from_select(columns, rows)).rowcount)

    def insert_seed_labels(self, *, now: datetime) -> int:
        """Record the seed labels of items with no label yet (a Label Studio label wins); return how many. No commit."""
        records = table_of(LabelRecord)
        unlabeled = ~exists().where(records.c.item_id == _staged.c.item_id)
        columns = ["item_id", "status", "label", "source", "recorded_at"]
        rows = select(
            _staged.c.item_id, literal(LabelStatus.LABELED, records.c.status.type), _staged.c.label,
            literal("seed", records.c.source.type), literal(now, records.c.recorded_at.type),
        ).where(_staged.c.is_first, _staged.c.label.is_not(None), unlabeled).order_by(_staged.c.line)
        self.conn.execute(insert(table_of(LabelEvent)).from_select(columns, rows))  # the history first:
        return int(self.conn.execute(insert(records).from_select(columns, rows)).rowcount)  # then none is unlabeled

    def restore_removed(self) -> int:
        """Bring back the file's items that were removed (``pool remove``); return how many. No commit."""
        removed = table_of(RemovedItem)
        ids = select(_staged.c.item_id).where(_staged.c.is_first)
        return int(self.conn.execute(delete(removed).where(removed.c.item_id.in_(ids))).rowcount)


def _read_rows(handle: IO[bytes], positions: IntArray, dim: int) -> Float32Array:
    """Rows ``positions`` (ascending) of a float32 matrix file, read a contiguous run at a time.

    Plain reads, not a memory map: mapped pages count as the process's memory (1.5 KB per
    384-d row, 1.5 GB at a million).
    """
    out: Float32Array = np.empty((len(positions), dim), dtype=np.float32)
    run_starts = np.flatnonzero(np.diff(positions, prepend=-2) != 1)
    for begin, end in zip(run_starts, [*run_starts[1:], len(positions)], strict=True):
        handle.seek(int(positions[begin]) * 4 * dim)
        target = out[begin:end].data.cast("B")
        if handle.readinto(target) != len(target):  # type: ignore[attr-defined]
            raise OSError("the pool import's scratch vector file ended early")
    return out


def stage_pool_file(
    conn: Connection, path: Path, *, pool: PoolSettings, scratch_dir: Path, on_rows: Callable[[int], None] | None = None
) -> StagedFile:
    """Read, check and stage every row of ``path`` on ``conn``; commit the staging (it locks nothing).

    Checks are those of :func:`daemon.pool_files.read_pool_file`: each row, one embedding
    shape, and an id repeated with other text or label (an exact repeat is kept once).

    Args:
        conn: the import's connection; the staged table lives as long as it.
        path: the pool file.
        pool: its field names.
        scratch_dir: where the vectors of a file that carries them wait for the checks.
        on_rows: called with the count of valid rows read so far, every ``_STAGE_ROWS``.

    Raises:
        PoolFileError: the file is unreadable or any row is refused (up to ``MAX_PROBLEMS`` listed).
    """
    _staged.drop(conn, checkfirst=True)  # left by an import that failed on this connection
    _staged.create(conn)
    staged = StagedFile(conn, path, items=0, dim=None, vectors=None)
    try:
        problems = _stage_rows(staged, pool, scratch_dir, on_rows)
        _mark_repeats(conn)
        if len(problems) < MAX_PROBLEMS:
            problems = sorted([*problems, *_repeated_ids(conn, MAX_PROBLEMS - len(problems), position_word(path))],
                              key=lambda problem: problem[0] or 0)
        if problems:
            raise PoolFileError(str(path), problems)
        staged.items = int(conn.execute(select(func.count()).where(_staged.c.is_first)).scalar_one())
        staged.repeats = int(conn.execute(select(func.count()).select_from(_staged)).scalar_one()) - staged.items
        if staged.items == 0:
            raise PoolFileError(str(path), [(None, NO_ROWS)])
        conn.commit()
    except BaseException:
        staged.close()
        raise
    return staged


def _stage_rows(
    staged: StagedFile, pool: PoolSettings, scratch_dir: Path, on_rows: Callable[[int], None] | None
) -> list[tuple[int | None, str]]:
    """Insert the valid rows of the file into the staged table; return the invalid ones (stops at ``MAX_PROBLEMS``)."""
    problems: list[tuple[int | None, str]] = []
    chunk: list[PoolRow] = []
    staged_rows = 0
    statement = _driver_insert(staged.conn)
    stream = iter_pool_rows(staged.path, id_field=pool.id_field, text_field=pool.text_field,
                            label_field=pool.label_field, embedding_field=pool.embedding_field)
    for line, row, problem in stream:
        if row is None:
            problems.append((line, problem))
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        chunk.append(row)
        if len(chunk) == _STAGE_ROWS:
            _stage_chunk(staged, chunk, scratch_dir, statement)
            staged_rows, chunk = staged_rows + len(chunk), []
            if on_rows is not None:
                on_rows(staged_rows)
    if chunk:
        _stage_chunk(staged, chunk, scratch_dir, statement)
        if on_rows is not None:
            on_rows(staged_rows + len(chunk))
    return problems


def _stage_chunk(staged: StagedFile, rows: list[PoolRow], scratch_dir: Path, statement: str | None) -> None:
    """Stage ``rows``, with ``statement`` (:func:`_driver_insert`) when the driver's style allows."""
    first_vector = 0
    if rows[0].embedding is not None:
        if staged.vectors is None:
            scratch_dir.mkdir(parents=True, exist_ok=True)
            staged.vectors = tempfile.TemporaryFile(  # noqa: SIM115 -- closed by StagedFile.close
                dir=scratch_dir, prefix="pool-add-", suffix=".f32")
            staged.dim = len(rows[0].embedding)
        first_vector = staged.vectors.tell() // (4 * len(rows[0].embedding))
        staged.vectors.write(np.asarray([row.embedding for row in rows], dtype=np.float32).tobytes())
    has_vector = staged.vectors is not None
    values = [
        (row.line, row.item_id, row.text, row.label, _content_hash(row, has_vector=has_vector),
         json.dumps(dict(row.meta), ensure_ascii=False) if row.meta else "{}",
         None if row.embedding is None else first_vector + offset, True)
        for offset, row in enumerate(rows)
    ]
    if statement is None:
        staged.conn.execute(insert(_staged), [dict(zip(_staged.c.keys(), row, strict=True)) for row in values])
    else:
        staged.conn.exec_driver_sql(statement, values)


def _driver_insert(conn: Connection) -> str | None:
    """The staged table's INSERT in the driver's own parameter style, or None for a style not handled here.

    Rows then go to the driver's ``executemany`` as tuples: SQLAlchemy's per-row parameter
    processing took 8 of 26 s at a million rows.
    """
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if marks is None:
        return None
    columns = ", ".join(_staged.c.keys())
    return f"INSERT INTO {_staged.name} ({columns}) VALUES ({', '.join([marks] * len(_staged.c))})"


def _content_hash(row: PoolRow, *, has_vector: bool) -> str:
    """The embedding cache key: of the item for its own vector, else of its text."""
    return byo_hash(row.item_id) if has_vector else content_hash(row.text)


def _mark_repeats(conn: Connection) -> None:
    """Mark every row whose id an earlier row has (``is_first = false``)."""
    earlier = _staged.alias("earlier")
    repeated = exists().where(earlier.c.item_id == _staged.c.item_id, earlier.c.line < _staged.c.line)
    conn.execute(update(_staged).where(repeated).values(is_first=False))


def _repeated_ids(conn: Connection, limit: int, unit: str) -> list[tuple[int | None, str]]:
    """Rows that repeat an earlier id with other text or label, as problems (at most ``limit``); ``unit``
    names positions (``line`` or ``row``)."""
    first = _staged.alias("first")
    stmt = (
        select(_staged.c.line, _staged.c.item_id, _staged.c.text, _staged.c.label,
               first.c.line, first.c.text, first.c.label)
        .join(first, and_(first.c.item_id == _staged.c.item_id, first.c.is_first))
        .where(~_staged.c.is_first,
               (first.c.text != _staged.c.text) | ~first.c.label.is_not_distinct_from(_staged.c.label))
        .order_by(_staged.c.line)
        .limit(limit)
    )
    return [(line, repeated_id_problem(item_id, earlier_line, earlier_text, earlier_label, text, label, unit=unit))
            for line, item_id, text, label, earlier_line, earlier_text, earlier_label in conn.execute(stmt)]


def _in_pool() -> Any:
    """A condition on a staged row: its id is in the pool."""
    pool = table_of(PoolItem)
    return exists().where(pool.c.item_id == _staged.c.item_id)
