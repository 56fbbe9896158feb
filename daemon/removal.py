"""Take pool items out of the loop (``labelloop pool remove``), and bring them back.

A removed item keeps its row (pool order and the embedding index only grow) and gets a
:class:`~daemon.store.RemovedItem` row instead. From then on it is never selected, its label is
not trained on, exported or predicted, and the next sync withdraws its task from Label Studio
unless someone already annotated, skipped or drafted it (such an answer is still pulled and
kept, just not used). ``pool add`` of the same item brings it back.

Removal only writes the store, so it works while the daemon runs and needs no token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from daemon.store import (
    BatchItem,
    BatchItemState,
    LabelRecord,
    LabelStatus,
    PoolItem,
    RemovedItem,
    bulk_insert,
    ids_present,
)

if TYPE_CHECKING:  # pool add imports this module and must not pay for torch (daemon.context)
    from daemon.context import LoopContext

__all__ = ["RemovalReport", "item_ids_of_source", "remove_items", "source_names", "withdraw_removed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemovalReport:
    removed: int  # taken out by this call
    already_removed: int
    not_in_pool: int
    labeled: int  # of those taken out: items with a label, no longer trained on or exported
    waiting: int  # of those taken out: items with a task waiting in Label Studio, withdrawn at the next sync


def item_ids_of_source(engine: Engine, source: str) -> list[str]:
    """Ids of the items imported from the file named ``source`` (``PoolItem.source``), in pool order."""
    with Session(engine) as session:
        stmt = select(PoolItem.item_id).where(PoolItem.source == source).order_by(col(PoolItem.seq))
        return list(session.exec(stmt))


def source_names(engine: Engine) -> list[str]:
    """The file names pool items were imported from, sorted."""
    with Session(engine) as session:
        return sorted(name for name in session.exec(select(PoolItem.source).distinct()) if name)


def remove_items(engine: Engine, item_ids: Sequence[str], *, reason: str = "") -> RemovalReport:
    """Take the given pool items out of the loop, in one transaction; ids not in the pool are counted, not errors."""
    wanted = list(dict.fromkeys(item_ids))
    with Session(engine) as session:
        in_pool = ids_present(session, PoolItem.item_id, wanted)
        gone = ids_present(session, RemovedItem.item_id, wanted)
        new = [item_id for item_id in wanted if item_id in in_pool and item_id not in gone]
        labeled = ids_present(session, LabelRecord.item_id, new, LabelRecord.status == LabelStatus.LABELED)
        waiting = ids_present(session, BatchItem.item_id, new, BatchItem.state == BatchItemState.PENDING)
        bulk_insert(session, RemovedItem, [{"item_id": item_id, "reason": reason} for item_id in new])
        session.commit()
    report = RemovalReport(len(new), len(gone), len(wanted) - len(in_pool), len(labeled), len(waiting))
    log.info("pool remove: %s items removed (%s labeled, %s waiting in Label Studio)", report.removed,
             report.labeled, report.waiting)
    return report


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
            .where(BatchItem.state == BatchItemState.PENDING, col(BatchItem.remote_task_id).is_not(None))
        )
        tasks = [task for task in session.exec(stmt) if task is not None]
    if not tasks:
        return []
    gone = ctx.connector.withdraw(tasks)
    if gone:
        log.info("withdrew %s tasks of removed pool items", len(gone))
    kept = len(tasks) - len(gone)
    if kept:
        log.info("%s tasks of removed pool items stay in Label Studio: someone annotated, skipped or drafted them",
                 kept)
    return gone
