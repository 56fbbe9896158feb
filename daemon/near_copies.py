"""Pool items set aside as near-copies of labeled ones (``loop.set_aside_near_copies``).

A labeled item's near-copies stay as uncertain as it was, so an uncertainty strategy keeps
asking for them: in a soak on a pool of repeated texts, 90 % of late batches were copies of
texts already labeled. The select stage compares its shortlist with every labeled vector
(:func:`strategies.near_copies`) and records the copies it finds here, so later streamed
passes leave them out and their places in the shortlist go to other items. It compares
with the items waiting for an answer and the batch's control items too, and leaves their
copies out of the batch without recording them.

A record counts only while its original keeps a known-class label and is not removed: a
retracted, skipped, disputed or removed original frees its copies again. Nor does it count
while its cosine is below the ``loop.near_copy_cosine`` in force: a record found under a lower
setting is not a copy once the setting is raised again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, insert
from sqlmodel import Session, col, select

from daemon.store import (
    BatchItem,
    BatchItemState,
    LabelRecord,
    LabelStatus,
    NearCopy,
    PoolItem,
    not_removed,
    utcnow,
)

__all__ = ["n_set_aside", "pending_hashes", "record_near_copies", "set_aside_seqs"]

_CHUNK = 500  # items per statement
_ROUNDING = 5e-5  # half the last decimal a record keeps of its cosine


def _original_of() -> Any:
    """The join of :class:`NearCopy` to its original's :class:`LabelRecord`."""
    return col(LabelRecord.item_id) == col(NearCopy.of_item_id)


def _in_force(min_cosine: float) -> tuple[Any, ...]:
    """Conditions on that join: the original has a known-class label, neither item is removed, and the
    pair is at least ``min_cosine`` close (records keep 4 decimals: half a unit of the last is spared)."""
    return (LabelRecord.status == LabelStatus.LABELED, not_removed(NearCopy.of_item_id),
            not_removed(NearCopy.item_id), col(NearCopy.cosine) >= min_cosine - _ROUNDING)


def set_aside_seqs(session: Session, min_cosine: float) -> npt.NDArray[np.int64]:
    """Return the ``PoolItem.seq`` of every item set aside now at ``min_cosine``, increasing."""
    stmt = (
        select(PoolItem.seq)
        .join(NearCopy, col(NearCopy.item_id) == col(PoolItem.item_id))
        .join(LabelRecord, _original_of())
        .where(*_in_force(min_cosine))
        .order_by(col(PoolItem.seq))
    )
    return np.fromiter(session.exec(stmt), dtype=np.int64)


def n_set_aside(session: Session, min_cosine: float) -> int:
    """Return how many unlabeled items are set aside now at ``min_cosine`` (an item labeled since is not counted)."""
    labeled_copies = select(LabelRecord.item_id).where(LabelRecord.status == LabelStatus.LABELED)
    stmt = (
        select(func.count())
        .select_from(NearCopy)
        .join(LabelRecord, _original_of())
        .where(*_in_force(min_cosine), col(NearCopy.item_id).not_in(labeled_copies))
    )
    return int(session.exec(stmt).one())


def pending_hashes(session: Session) -> list[str]:
    """Return the content hashes of embedded items waiting for an answer (in a selected or pushed batch).

    A near-copy of a waiting item is left out of the next batch too (two batches in the queue
    held copies of each other's texts), but not recorded: the waiting item has no label yet.
    """
    stmt = (
        select(PoolItem.content_hash)
        .join(BatchItem, col(BatchItem.item_id) == col(PoolItem.item_id))
        .where(BatchItem.state == BatchItemState.PENDING, col(PoolItem.is_embedded))
    )
    return list(session.exec(stmt))


def record_near_copies(session: Session, pairs: Sequence[tuple[str, str, float]]) -> None:
    """Store ``(item_id, of_item_id, cosine)`` records, replacing an item's older one; commit is the caller's.

    An item set aside before under an original that lost its label gets its new original. One
    statement per 500 items, not a read per item: a shortlist may hold thousands of copies.
    """
    now = utcnow()
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start : start + _CHUNK]
        session.execute(delete(NearCopy).where(col(NearCopy.item_id).in_([item_id for item_id, _, _ in chunk])))
        session.execute(insert(NearCopy), [{"item_id": item_id, "of_item_id": of_item_id, "cosine": cosine,
                                            "found_at": now} for item_id, of_item_id, cosine in chunk])
