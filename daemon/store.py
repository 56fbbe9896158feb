"""Durable state: SQLModel tables and the engine. The database is the source of truth.

Every stage of the loop reads what it needs from here and writes its result back in
one transaction, so a process killed at any moment leaves a state the next run finishes.
Query functions for the CLI live in ``daemon/queries.py``.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Index, Table, Text, event, func
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from daemon.errors import ConfigError, InvalidTransition, StoreUnavailable

__all__ = [
    "NO_CHOICE",
    "SCHEMA_VERSION",
    "Batch",
    "BatchItem",
    "BatchItemState",
    "BatchStatus",
    "CycleRun",
    "HealthEvent",
    "KeyValue",
    "LabelEvent",
    "LabelRecord",
    "LabelStatus",
    "ModelRun",
    "NearCopy",
    "PoolItem",
    "RemovedItem",
    "advance",
    "get_value",
    "ids_present",
    "is_disk_full",
    "is_store_locked",
    "make_engine",
    "not_removed",
    "set_value",
    "sqlite_path",
    "store_problem",
    "table_of",
    "utcnow",
]


log = logging.getLogger(__name__)
SCHEMA_VERSION = 1  # the store's layout, kept in SQLite's user_version; raise it with a step in _MIGRATIONS
# Each step takes a store from version ``key`` to ``key + 1`` inside the opening transaction (an ALTER TABLE ADD
# COLUMN with a default, say); a change to the tables above that is not one of these would break older stores.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {}
_IN_CHUNK = 500  # ids per IN (...) list
_SCAN_SHARE = 0.05  # ids_present reads the whole column when asked about this share of the rows or more
_SCAN_ROWS = 20_000  # rows fetched at a time by that read


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored moment with its zone: SQLite gives datetimes back without one, and they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model: bulk inserts into it skip the ORM's per-row work."""
    table: Table = SQLModel.metadata.tables[str(model.__tablename__)]
    return table


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class BatchStatus(enum.StrEnum):
    SELECTED = "selected"  # chosen locally, not yet (fully) sent
    PUSHED = "pushed"  # every item has a remote task
    CLOSED = "closed"  # every item labeled, skipped or withdrawn
    PARKED = "parked"  # the tool rejected it: a human must look


_ALLOWED: dict[BatchStatus, set[BatchStatus]] = {
    BatchStatus.SELECTED: {BatchStatus.PUSHED, BatchStatus.PARKED},
    BatchStatus.PUSHED: {BatchStatus.CLOSED, BatchStatus.PARKED},
    BatchStatus.PARKED: {BatchStatus.SELECTED},
    BatchStatus.CLOSED: set(),
}


class BatchItemState(enum.StrEnum):
    PENDING = "pending"  # waiting for an annotator
    LABELED = "labeled"
    SKIPPED = "skipped"
    WITHDRAWN = "withdrawn"  # task deleted (by us or in the tool) before it was labeled


NO_CHOICE = "<no choice>"  # an answer with nothing chosen in the bound <Choices> (stored as an unknown choice)


class LabelStatus(enum.StrEnum):
    LABELED = "labeled"  # a known class: used for training
    SKIPPED = "skipped"  # the annotator skipped the task
    UNKNOWN = "unknown"  # a choice that is not one of the project's classes: reported, not trained on
    RETRACTED = "retracted"  # the annotation was deleted
    DISPUTED = "disputed"  # annotators disagree with no majority and no ground truth: not trained on


class PoolItem(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)  # insertion order, dense for arrays
    item_id: str = Field(unique=True, index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    content_hash: str = Field(index=True)  # embedding cache key
    meta_json: str = "{}"
    source: str = ""
    is_embedded: bool = Field(default=False, index=True)
    created_at: datetime = Field(default_factory=utcnow)


class RemovedItem(SQLModel, table=True):
    """A pool item taken out of the loop (``labelloop pool remove``): never selected, trained on or exported.

    The item's row stays (pool order and the embedding index never shrink); adding the item
    again with ``pool add`` deletes this row and brings it back.
    """

    item_id: str = Field(primary_key=True)
    removed_at: datetime = Field(default_factory=utcnow)
    reason: str = ""


class NearCopy(SQLModel, table=True):
    """An unlabeled pool item set aside as a near-copy of a labeled one (``loop.near_copy_cosine``).

    It is left out of what the strategy picks from while ``of_item_id`` keeps its label (a
    retracted, disputed or removed original frees it); the control slice still draws from it.
    """

    item_id: str = Field(primary_key=True)
    of_item_id: str = Field(index=True)
    cosine: float
    found_at: datetime = Field(default_factory=utcnow)


class LabelRecord(SQLModel, table=True):
    """The current label of an item (one row per labeled/skipped item)."""

    item_id: str = Field(primary_key=True)
    status: LabelStatus = Field(index=True)
    label: str | None = None  # the class (LABELED) or the raw choice (UNKNOWN)
    source: str = "label_studio"  # or "seed"
    annotator: str | None = None
    remote_task_id: str | None = None
    remote_annotation_id: str | None = None
    remote_updated_at: datetime | None = None
    recorded_at: datetime = Field(default_factory=utcnow, index=True)


class LabelEvent(SQLModel, table=True):
    """Append-only history of every label change we observed."""

    id: int | None = Field(default=None, primary_key=True)
    item_id: str = Field(index=True)
    status: LabelStatus
    label: str | None = None
    previous_label: str | None = None
    source: str = "label_studio"
    annotator: str | None = None
    remote_task_id: str | None = None
    remote_annotation_id: str | None = None
    remote_updated_at: datetime | None = None
    recorded_at: datetime = Field(default_factory=utcnow)


class Batch(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    strategy: str
    model_version: str
    status: BatchStatus = Field(default=BatchStatus.SELECTED, index=True)
    size: int = 0
    cycle_id: int | None = None
    note: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class BatchItem(SQLModel, table=True):
    __table_args__ = (Index("ix_batchitem_remote", "remote_task_id"),)

    batch_id: str = Field(foreign_key="batch.id", primary_key=True)
    item_id: str = Field(primary_key=True, index=True)
    position: int
    score: float
    predicted_label: str | None = None
    predicted_score: float | None = None
    is_control: bool = False
    state: BatchItemState = Field(default=BatchItemState.PENDING, index=True)
    remote_task_id: str | None = None


class ModelRun(SQLModel, table=True):
    version: str = Field(primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    n_labels: int
    class_counts_json: str
    macro_f1: float | None = None
    accuracy: float | None = None
    quality_method: str = ""
    control_accuracy: float | None = None  # on the random control slice, when it has labels
    encoder: str = ""
    train_s: float = 0.0


class CycleRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = "cycle"  # cycle | sync
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    status: str = "running"  # running | ok | skipped | failed
    reason: str = ""
    batch_id: str | None = None
    model_version: str | None = None
    stage_seconds_json: str = "{}"


class HealthEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    kind: str  # started | stopped | heartbeat | job_error | job_missed | unavailable | recovered
    message: str = ""


class KeyValue(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


def advance(session: Session, batch: Batch, to: BatchStatus) -> None:
    """Move ``batch`` to status ``to``; commit is the caller's.

    Raises:
        InvalidTransition: the state machine does not allow it.
    """
    if to not in _ALLOWED[batch.status]:
        raise InvalidTransition(f"batch {batch.id}: {batch.status} -> {to} is not allowed")
    batch.status, batch.updated_at = to, utcnow()
    session.add(batch)


def get_value(session: Session, key: str) -> str | None:
    row = session.get(KeyValue, key)
    return row.value if row is not None else None


def set_value(session: Session, key: str, value: str) -> None:
    row = session.get(KeyValue, key)
    if row is None:
        session.add(KeyValue(key=key, value=value))
    else:
        row.value = value
        session.add(row)


def sqlite_path(url: str) -> Path | None:
    """Return the file of a ``sqlite:///`` URL, ``None`` for other databases or memory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        return None
    return Path(url[len(prefix) :])


def ids_present(session: Session, column: Any, ids: Sequence[str], *where: Any) -> set[str]:
    """Which of ``ids`` appear in ``column`` (under the extra conditions).

    Asked about a few ids, it looks them up ``_IN_CHUNK`` at a time; about a sizeable share of
    the table's rows (``_SCAN_SHARE``), it reads the column once instead: a million ids took
    2,000 lookups and 14 s per call, the scan of a million rows about a second.
    """
    if len(ids) > _IN_CHUNK:
        rows = session.exec(select(func.count()).select_from(column.class_)).one()  # the model class
        if len(ids) >= _SCAN_SHARE * rows:
            wanted = set(ids)
            scan = select(column).where(*where).execution_options(yield_per=_SCAN_ROWS)
            return {value for value in session.exec(scan) if value in wanted}
    found: set[str] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        found.update(session.exec(select(column).where(col(column).in_(ids[start : start + _IN_CHUNK]), *where)))
    return found


def not_removed(item_id: Any) -> Any:
    """A condition on an ``item_id`` column: the item is not removed (:class:`RemovedItem`)."""
    return col(item_id).not_in(select(RemovedItem.item_id))


def waiting_in_tool() -> tuple[Any, Any]:
    """Conditions on :class:`BatchItem`: pushed and not yet answered, skipped or withdrawn (a task waits)."""
    return BatchItem.state == BatchItemState.PENDING, col(BatchItem.remote_task_id).is_not(None)


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """Create the engine (WAL, busy timeout) and the tables; a SQLite store's schema version is checked.

    See :func:`_check_schema`: a store from a newer labelloop, or one that lacks columns, is
    refused with :class:`StoreUnavailable` before anything is written. The parent folder of a
    SQLite file is created when missing. A write that finds another writer's transaction open
    waits up to ``busy_timeout_s``, then raises ``OperationalError`` (see :func:`is_store_locked`).
    """
    path = sqlite_path(url)
    where = str(path) if path is not None else "store.url"
    connect_args: dict[str, Any] = {}
    try:
        if url.startswith("sqlite"):
            connect_args = {"check_same_thread": False, "timeout": busy_timeout_s}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                _refuse_an_emptied_file(path)
                url = _snapshot_url(path) or url
        engine = create_engine(url, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError):  # the message may quote the URL, password and all
        raise ConfigError("store.url is not a database URL labelloop can open; it keeps its state in SQLite: "
                          "sqlite:///.labelloop/labelloop.db, say") from None
    except OSError as e:
        why = (f"{e.filename} is a file, not a folder" if isinstance(e, FileExistsError | NotADirectoryError)
               else e.strerror or type(e).__name__)
        raise StoreUnavailable(f"cannot create the store's folder {path.parent if path else ''}: {why}") from None
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        if url.startswith("sqlite"):
            _check_schema(engine, where)
        else:
            SQLModel.metadata.create_all(engine)
    except DBAPIError as e:
        if is_store_locked(e) or is_disk_full(e):
            raise
        raise StoreUnavailable(f"cannot open the store's database {where}: {store_problem(e)}") from None
    return engine


def _refuse_an_emptied_file(path: Path) -> None:
    """Refuse a store file of 0 bytes (and no write-ahead log): SQLite would make it a new, empty store.

    labelloop never leaves one (``init`` writes the tables at once); a truncated copy or a full
    disk does, and every command then reported an empty pool as if all were well (QA).
    """
    try:
        emptied = path.stat().st_size == 0 and not _wal_has_data(path)
    except FileNotFoundError:
        return
    if emptied:
        raise StoreUnavailable(f"the store's database {path} is an empty file (0 bytes), not a labelloop store: "
                               "restore it from a backup, or delete it and run `labelloop init --force` for a new one")


def _wal_has_data(path: Path) -> bool:
    """Whether the store at ``path`` has a write-ahead log with something in it."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def _check_schema(engine: Engine, where: str) -> None:
    """Create what is missing, refuse a store this labelloop cannot read, and stamp its schema version.

    The version lives in SQLite's ``user_version``. A store from a newer labelloop is refused
    before anything is written to it. A store at this version only gets tables that are missing
    (as every open always did). Otherwise, in one write transaction with the new stamp (a process
    killed midway leaves the store as it was): an unstamped store (a fresh file, or one from
    before the stamp) gets the missing tables and indexes, and is refused by column name when a
    table lacks columns this code reads, instead of failing later on a query; a store stamped
    with an older version runs the :data:`_MIGRATIONS` from its version up.

    Raises:
        StoreUnavailable: the store is newer than this code or lacks columns.
    """
    with engine.connect() as conn:
        version = _stamped_version(conn, where)
        if version == SCHEMA_VERSION:
            SQLModel.metadata.create_all(conn)
            conn.commit()
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # DDL is transactional in SQLite; one process upgrades at a time
        version = _stamped_version(conn, where)  # another process may have stamped it meanwhile
        SQLModel.metadata.create_all(conn)
        if version == 0:
            _require_columns(conn, where)
            for table in SQLModel.metadata.sorted_tables:  # create_all makes only a new table's indexes
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
        for step in range(max(version, 1), SCHEMA_VERSION):
            _MIGRATIONS[step](conn)
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.commit()


def _stamped_version(conn: Connection, where: str) -> int:
    """The store's schema version (0: unstamped); a newer one than this code's is refused."""
    version = int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
    if version < 0:  # labelloop never writes one: another program's database
        raise StoreUnavailable(f"the store {where} carries a layout version labelloop never writes ({version}): "
                               "store.url must name a labelloop store; nothing was changed")
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the store {where} was written by a newer labelloop (store schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}): upgrade labelloop, or point store.url at another store; nothing was changed")
    return version


def _require_columns(conn: Connection, where: str) -> None:
    """Refuse an unstamped store whose tables lack columns this code reads (an early development build's)."""
    missing = []
    for table in SQLModel.metadata.sorted_tables:
        present = {row[1] for row in conn.exec_driver_sql(f'PRAGMA table_info("{table.name}")')}
        missing += [f"{table.name}.{column.name}" for column in table.columns if column.name not in present]
    if missing:
        raise StoreUnavailable(
            f"the store {where} was made by another labelloop version and lacks {', '.join(missing)}: export its "
            "labels with the labelloop that made it (`labelloop export labels.csv`) and add them to a new store, "
            "where they are seed labels (`labelloop pool add labels.csv`); nothing was changed")


def _snapshot_url(path: Path) -> str | None:
    """A read-only URL for a store in a folder nobody may write (a read-only mount, an archived copy), else None.

    SQLite opens a WAL store by making its ``-shm`` file beside it, which such a folder refuses:
    ``status`` and ``export`` of a snapshot failed with "unable to open database file" (QA). With
    no write-ahead log to replay there, the file is all there is, and SQLite may read it as
    immutable; every write is refused. A log with content is left to SQLite's own open.
    """
    if not path.is_file() or _folder_writable(path.parent) or _wal_has_data(path):
        return None
    log.warning("the store %s is in a folder this process may not write: reading it as a snapshot (no writes)",
                path)
    return f"sqlite:///file:{path.resolve()}?mode=ro&immutable=1&uri=true"


def _folder_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def store_problem(error: DBAPIError) -> str:
    """SQLite's own words for a store that cannot be used, and what to check."""
    said = str(error.orig).strip() or type(error.orig).__name__
    if "readonly" in said or "unable to open" in said:
        return f"{said} (check that the path is a file in a folder this user may write)"
    if "not a database" in said:
        return f"{said} (store.url must name a labelloop SQLite database, or a path where one can be made)"
    return said


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL and friends; the busy timeout is sqlite3's ``timeout`` connect argument (the same setting)."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # the CLI reads while the daemon writes
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_store_locked(error: BaseException) -> bool:
    """Whether ``error`` is SQLite giving up on a write lock another process holds (past the busy timeout)."""
    return isinstance(error, OperationalError) and "locked" in str(error.orig)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write refused for lack of space: SQLite's SQLITE_FULL, or ENOSPC from a file write."""
    if isinstance(error, OperationalError):
        return "database or disk is full" in str(error.orig)
    return isinstance(error, OSError) and error.errno == errno.ENOSPC


def count(session: Session, model: type[SQLModel]) -> int:
    result = session.exec(select(func.count()).select_from(model)).one()
    return int(result)
