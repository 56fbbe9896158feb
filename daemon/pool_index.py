"""An in-memory positional index of the pool: pool order → embedding-cache row, and the candidates.

The store stays the source of truth; this is a process-local cache of the part of it that is
large and append-only. Pool items are never deleted or changed once embedded, and cache rows
are never rewritten, so the index is built from the store once (about a second per million
items) and then extended at each use with what changed since: items added after the last
``seq`` seen, and items embedded since. Labels and queued tasks change all the time but are
few, so which items are candidates is recomputed from the store at each use, in
O(labels + queued items) — never O(pool) rows read, and never a ``NOT IN`` over Python lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from daemon.store import BatchItem, BatchItemState, LabelRecord, LabelStatus, PoolItem, RemovedItem

__all__ = ["CandidateRows", "HashLookup", "PoolIndex"]

log = logging.getLogger(__name__)
_FETCH_ROWS = 100_000  # pool rows read from SQLite at once while building
_IN_CHUNK = 500  # ids per IN (...) list
_RANGE_SCAN_FROM = 50_000  # newly embedded items above which one range scan replaces IN lists

IntArray = npt.NDArray[np.intp]
SeqArray = npt.NDArray[np.int64]


class HashLookup(Protocol):
    """The part of :class:`models.cache.EmbeddingCache` the index needs."""

    model_key: str

    def lookup(self, hashes: Sequence[str]) -> IntArray: ...


@dataclass(frozen=True, slots=True)
class CandidateRows:
    """Embedded pool items with no label and no open task, in pool order.

    Attributes:
        seqs: (n,) ``PoolItem.seq`` of each candidate, increasing.
        cache_rows: (n,) row of each candidate's vector in the embedding cache.
    """

    seqs: SeqArray
    cache_rows: IntArray


class PoolIndex:
    """Pool ``seq`` → cache row for one embedding cache; see the module docstring.

    Args:
        model_key: the cache the rows point into; a context rebuilds the index when it changes.
    """

    def __init__(self, model_key: str) -> None:
        self.model_key = model_key
        self._seqs: SeqArray = np.empty(0, dtype=np.int64)
        self._rows: IntArray = np.empty(0, dtype=np.intp)  # -1: not embedded (or not cached) yet

    def __len__(self) -> int:
        return len(self._seqs)

    @property
    def n_embedded(self) -> int:
        return int(np.count_nonzero(self._rows >= 0))

    def refresh(self, session: Session, cache: HashLookup) -> None:
        """Catch up with the store: items embedded and items added since the last call.

        Raises:
            ValueError: ``cache`` is not the cache this index was built for.
        """
        if cache.model_key != self.model_key:
            raise ValueError(f"index is for cache {self.model_key}, got {cache.model_key}")
        self._catch_up_embedded(session, cache)
        self._append_new(session, cache)

    def candidates(self, session: Session) -> CandidateRows:
        """Return the embedded items that have no label (or a retracted one) and no open task."""
        is_candidate = self._rows >= 0
        is_candidate[self.positions_of(_blocked_seqs(session))] = False
        positions = np.flatnonzero(is_candidate)
        return CandidateRows(seqs=self._seqs[positions], cache_rows=self._rows[positions])

    def positions_of(self, seqs: npt.ArrayLike) -> IntArray:
        """Return the index positions of ``seqs`` that the index holds (others are dropped)."""
        wanted = np.asarray(seqs, dtype=np.int64)
        at = np.searchsorted(self._seqs, wanted)
        inside = at < len(self._seqs)
        found = at[inside][self._seqs[at[inside]] == wanted[inside]]
        positions: IntArray = found.astype(np.intp)
        return positions

    def cache_rows_of(self, seqs: npt.ArrayLike) -> IntArray:
        """Return the cache rows of the embedded items among ``seqs``."""
        rows = self._rows[self.positions_of(seqs)]
        embedded: IntArray = rows[rows >= 0]
        return embedded

    def _append_new(self, session: Session, cache: HashLookup) -> None:
        last = int(self._seqs[-1]) if len(self._seqs) else -1
        stmt = (
            select(PoolItem.seq, PoolItem.content_hash, PoolItem.is_embedded)
            .where(col(PoolItem.seq) > last)
            .order_by(col(PoolItem.seq))
            .execution_options(yield_per=_FETCH_ROWS)
        )
        for part in session.exec(stmt).partitions():
            seqs = np.fromiter((seq for seq, _, _ in part), dtype=np.int64, count=len(part))
            rows = np.full(len(part), -1, dtype=np.intp)
            embedded = [p for p, (_, _, is_embedded) in enumerate(part) if is_embedded]
            if embedded:
                rows[embedded] = self._lookup(cache, [part[p][1] for p in embedded])
            self._seqs = np.concatenate([self._seqs, seqs])
            self._rows = np.concatenate([self._rows, rows])

    def _catch_up_embedded(self, session: Session, cache: HashLookup) -> None:
        pending = np.flatnonzero(self._rows < 0)
        if not len(pending):
            return
        still = np.fromiter(
            session.exec(select(PoolItem.seq).where(col(PoolItem.is_embedded).is_(False))), dtype=np.int64
        )
        done = pending[~np.isin(self._seqs[pending], still)]
        if not len(done):
            return
        found = _hashes_of(session, self._seqs[done])
        seqs = np.fromiter(found, dtype=np.int64, count=len(found))
        self._rows[self.positions_of(seqs)] = self._lookup(cache, list(found.values()))

    @staticmethod
    def _lookup(cache: HashLookup, hashes: list[str]) -> IntArray:
        rows = cache.lookup(hashes)
        missing = int(np.count_nonzero(rows < 0))
        if missing:
            log.warning("%s embedded pool items have no vector in cache %s; they are not candidates "
                        "until the embed stage stores one", missing, cache.model_key)
        return rows


def _hashes_of(session: Session, seqs: SeqArray) -> dict[int, str]:
    """Return ``seq -> content_hash`` of the given (increasing) seqs that are embedded."""
    if len(seqs) <= _RANGE_SCAN_FROM:
        chunks = [seqs[start : start + _IN_CHUNK] for start in range(0, len(seqs), _IN_CHUNK)]
        statements = [
            select(PoolItem.seq, PoolItem.content_hash).where(col(PoolItem.seq).in_([int(s) for s in chunk]))
            for chunk in chunks
        ]
    else:  # many (a fresh import just embedded): one range scan beats thousands of IN lists
        statements = [select(PoolItem.seq, PoolItem.content_hash).where(
            col(PoolItem.seq) >= int(seqs[0]), col(PoolItem.seq) <= int(seqs[-1])
        )]
    wanted = set(seqs.tolist())
    found: dict[int, str] = {}
    for stmt in statements:
        for seq, digest in session.exec(stmt.where(col(PoolItem.is_embedded).is_(True))):
            if seq is not None and seq in wanted:
                found[seq] = digest
    return found


def _blocked_seqs(session: Session) -> SeqArray:
    """Seqs of items with a label (not retracted), a task that was not withdrawn, or removed from the pool."""
    labeled = (
        select(PoolItem.seq)
        .join(LabelRecord, col(LabelRecord.item_id) == col(PoolItem.item_id))
        .where(LabelRecord.status != LabelStatus.RETRACTED)
    )
    queued = (
        select(PoolItem.seq)
        .join(BatchItem, col(BatchItem.item_id) == col(PoolItem.item_id))
        .where(BatchItem.state != BatchItemState.WITHDRAWN)
    )
    removed = select(PoolItem.seq).join(RemovedItem, col(RemovedItem.item_id) == col(PoolItem.item_id))
    seqs = [*session.exec(labeled), *session.exec(queued), *session.exec(removed)]
    return np.asarray(seqs, dtype=np.int64)


def item_ids_of(session: Session, seqs: Sequence[int]) -> dict[int, str]:
    """Return ``seq -> item_id`` for the given pool seqs (a batch's worth, read in chunks)."""
    found: dict[int, str] = {}
    for start in range(0, len(seqs), _IN_CHUNK):
        chunk = [int(s) for s in seqs[start : start + _IN_CHUNK]]
        for seq, item_id in session.exec(select(PoolItem.seq, PoolItem.item_id).where(col(PoolItem.seq).in_(chunk))):
            if seq is not None:
                found[seq] = item_id
    return found
