"""Take pool items out of the loop (``labelloop pool remove``), and bring them back.

A removed item keeps its row (pool order and the embedding index only grow) and gets a
:class:`~daemon.store.RemovedItem` row instead. From then on it is never selected, its label is
not trained on, exported or predicted, and the next sync withdraws its task from Label Studio
unless someone already annotated, skipped or drafted it (such an answer is still pulled and
kept, just not used). ``pool add`` of the same item brings it back.

Removal only writes the store, so it works while the daemon runs and needs no token.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, MetaData, String, Table, exists, func, insert, literal
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from daemon.store import (
    BatchItem,
    BatchItemState,
    LabelRecord,
    LabelStatus,
    PoolItem,
    RemovedItem,
    get_value,
    set_value,
    table_of,
    waiting_in_tool,
)

if TYPE_CHECKING:  # pool add imports this module and must not pay for torch (daemon.context)
    from daemon.context import LoopContext

__all__ = ["RemovalReport", "item_ids_of_source", "remove_items", "source_names", "unknown_ids", "withdraw_removed"]

log = logging.getLogger(__name__)
_CHUNK = 5_000  # ids staged at a time
_SHOWN = 5  # ids not in the pool that a report names
_KEPT_KEY = "removed_kept_tasks"  # the tasks of removed items the tool last kept, so the log says it once
# the ids asked for, on the removal's own connection: a million of them held as Python strings took 0.5 GB
_wanted = Table("labelloop_removal", MetaData(), Column("item_id", String, nullable=False), prefixes=["TEMPORARY"])


@dataclass(frozen=True, slots=True)
class RemovalReport:
    removed: int  # taken out by this call
    already_removed: int
    not_in_pool: int
    labeled: int  # of those taken out: items with a label, no longer trained on or exported
    waiting: int  # of those taken out: items with a task waiting in Label Studio, withdrawn at the next sync
    not_in_pool_first: tuple[str, ...] = ()  # the first few ids asked for that are not in the pool


def item_ids_of_source(engine: Engine, source: str) -> Iterator[str]:
    """Ids of the items imported from the file named ``source`` (``PoolItem.source``), in pool order, streamed."""
    with Session(engine) as session:
        stmt = select(PoolItem.item_id).where(PoolItem.source == source).order_by(col(PoolItem.seq))
        yield from session.exec(stmt.execution_options(yield_per=_CHUNK))


def has_source(engine: Engine, source: str) -> bool:
    """Whether any pool item was imported from the file named ``source``."""
    with Session(engine) as session:
        return session.exec(select(PoolItem.item_id).where(PoolItem.source == source).limit(1)).first() is not None


def source_names(engine: Engine) -> list[str]:
    """The file names pool items were imported from, sorted."""
    with Session(engine) as session:
        return sorted(name for name in session.exec(select(PoolItem.source).distinct()) if name)


def unknown_ids(engine: Engine, item_ids: Iterable[str]) -> list[str]:
    """Those of ``item_ids`` (a short list, as typed) that no pool item has, removed or not, in the order given."""
    wanted = list(dict.fromkeys(item_ids))
    known: set[str] = set()
    with Session(engine) as session:
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            known.update(session.exec(select(PoolItem.item_id).where(col(PoolItem.item_id).in_(chunk))))
    return [item_id for item_id in wanted if item_id not in known]


def remove_items(engine: Engine, item_ids: Iterable[str], *, reason: str = "") -> RemovalReport:
    """Take the given pool items out of the loop, in one transaction; ids not in the pool are counted, not errors.

    ``item_ids`` may be a stream, with repeats: it is read whole into a temporary table
    before anything is removed, so a stream that raises (a bad pool file) removes nothing.
    """
    with engine.connect() as conn:
        _wanted.drop(conn, checkfirst=True)
        _wanted.create(conn)
        try:
            stream = iter(item_ids)
            while chunk := list(itertools.islice(stream, _CHUNK)):
                conn.execute(insert(_wanted), [{"item_id": item_id} for item_id in chunk])
            conn.commit()  # the staging locks nothing: the write transaction below starts from a fresh snapshot
            report = _remove_wanted(conn, reason)
            conn.commit()
        finally:
            conn.rollback()
            _wanted.drop(conn, checkfirst=True)
            conn.commit()
    log.info("pool remove: %s items removed (%s labeled, %s waiting in Label Studio)", report.removed,
             report.labeled, report.waiting)
    return report


def _remove_wanted(conn: Connection, reason: str) -> RemovalReport:
    """Insert the removals first (the write lock, and the latest snapshot, come with it), then count."""
    pool, removed, records, tasks = (table_of(model) for model in (PoolItem, RemovedItem, LabelRecord, BatchItem))
    wanted = sa_select(_wanted.c.item_id).distinct().subquery()
    now = datetime.now(UTC)
    new = (sa_select(wanted.c.item_id, literal(reason, removed.c.reason.type), literal(now, removed.c.removed_at.type))
           .join(pool, pool.c.item_id == wanted.c.item_id)
           .where(~exists().where(removed.c.item_id == wanted.c.item_id)))
    count = int(conn.execute(insert(removed).from_select(["item_id", "reason", "removed_at"], new)).rowcount)
    just_removed = wanted.join(removed, (removed.c.item_id == wanted.c.item_id) & (removed.c.removed_at == now))

    def items(joined: Any, *where: Any) -> int:
        return int(conn.execute(sa_select(func.count(func.distinct(wanted.c.item_id))).select_from(joined)
                                .where(*where)).scalar_one())

    return RemovalReport(
        removed=count,
        already_removed=items(wanted.join(removed, removed.c.item_id == wanted.c.item_id)) - count,
        not_in_pool=items(wanted) - items(wanted.join(pool, pool.c.item_id == wanted.c.item_id)),
        labeled=items(just_removed.join(records, records.c.item_id == wanted.c.item_id),
                      records.c.status == LabelStatus.LABELED),
        waiting=items(just_removed.join(tasks, tasks.c.item_id == wanted.c.item_id),
                      tasks.c.state == BatchItemState.PENDING),
        not_in_pool_first=tuple(conn.execute(
            sa_select(wanted.c.item_id).where(~exists().where(pool.c.item_id == wanted.c.item_id))
            .order_by(wanted.c.item_id).limit(_SHOWN)).scalars()),
    )


def withdraw_removed(ctx: LoopContext) -> list[str]:
    """Withdraw the waiting tasks of removed items from the annotation tool; return the ids of those gone.

    The caller marks them withdrawn in the store (:func:`daemon.sync.sync` does, as for tasks
    deleted in the tool).

    A task someone annotated, skipped or drafted stays (the connector checks), and its answer is
    pulled as any other. Runs after each sync; costs one query when nothing was removed.

    Raises:
        ConnectorError: the tool is unreachable or refused; the next sync tries again.
    """
    with Session(ctx.engine) as session:
        stmt = (
            select(BatchItem.remote_task_id)
            .join(RemovedItem, col(RemovedItem.item_id) == col(BatchItem.item_id))
            .where(*waiting_in_tool())
        )
        tasks = [task for task in session.exec(stmt) if task is not None]
    if not tasks:
        return []
    gone = ctx.connector.withdraw(tasks)
    if gone:
        log.info("withdrew %s tasks of removed pool items", len(gone))
    kept = sorted(set(tasks) - set(gone))
    with Session(ctx.engine) as session:  # said once per set of kept tasks, not on every sync (QA)
        if kept and get_value(session, _KEPT_KEY) != ",".join(kept):
            log.info("%s of removed pool items %s in Label Studio: someone annotated, skipped or drafted %s",
                     *(("1 task", "stays", "it") if len(kept) == 1 else (f"{len(kept)} tasks", "stay", "them")))
            set_value(session, _KEPT_KEY, ",".join(kept))
            session.commit()
    return gone
