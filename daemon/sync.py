"""Pull annotations back and fold them into the store, losing none.

``pull`` reports the current state of remote tasks; ``apply_task_states`` diffs that
against the store, so an edit overwrites, a deletion retracts, a skip is recorded and a
state seen twice changes nothing. The watermark advances in the same transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from connectors.base import AnnotationState, RemoteTaskState
from daemon.context import LoopContext
from daemon.pool import known_classes
from daemon.project import refresh_classes
from daemon.removal import withdraw_removed
from daemon.store import (
    NO_CHOICE,
    Batch,
    BatchItem,
    BatchItemState,
    BatchStatus,
    LabelEvent,
    LabelRecord,
    LabelStatus,
    PoolItem,
    advance,
    as_utc,
    get_value,
    ids_present,
    set_value,
    waiting_in_tool,
)

__all__ = ["SyncReport", "apply_task_states", "close_finished_batches", "mark_withdrawn", "record_pushed", "sync"]

log = logging.getLogger(__name__)
WATERMARK_KEY = "pull_watermark"
RECONCILE_SPACING = 20.0  # a full read waits at least this many times its last duration
_SLOW_RECONCILE_S = 10.0  # a full read this long is logged
REOPENED_NOTE = "a task wanted answers again after the batch closed"  # cleared once it is answered again


@dataclass(frozen=True, slots=True)
class SyncReport:
    tasks_seen: int
    labels_changed: int
    unknown_choices: int
    batches_closed: int
    full_reconcile: bool


@dataclass(frozen=True, slots=True)
class _Verdict:
    status: LabelStatus | None  # None: the task has no annotation (any more)
    label: str | None
    annotation: AnnotationState | None


def sync(ctx: LoopContext, *, check_waiting: bool = False) -> SyncReport:
    """Pull changed tasks since the watermark (minus an overlap) and apply them.

    The first sync of a process, and then one at most every ``full_reconcile_interval_s``,
    re-reads every task, which catches changes a tool does not stamp with a new time (a
    deleted task leaves none). A full read grows with the project (Label Studio 1.23 lists
    700-1,000 annotated tasks a second here, ``bench/reconcile.py``: over 2 minutes at 100k),
    so the next one also waits :data:`RECONCILE_SPACING` times as long as the last one took,
    which keeps full reads under 5% of the time.

    A full reconcile (but the process's first, which follows :func:`daemon.project.ensure_project`),
    or an answer naming a choice that is not a known class, first reads the project's classes
    again (:func:`daemon.project.refresh_classes`): an admin may have edited the labeling config
    while the daemon runs.

    With ``check_waiting``, a sync that is not a full read also asks the tool which of our waiting
    tasks are gone (:meth:`Connector.missing`, one cheap lookup): a task deleted there leaves no
    update to pull, and without the check its item counted as waiting, holding back new batches,
    until the next full read. The daemon's scheduled syncs check, and so does the sync a
    ``TASKS_DELETED`` webhook triggers; the sync a cycle runs does not (it stays fast).

    Then the waiting tasks of items removed from the pool are withdrawn
    (:func:`daemon.removal.withdraw_removed`).

    Raises:
        ConnectorError: the tool is unreachable or refused; no label was changed (or, from the
            withdrawal, every label pulled is stored and the next sync withdraws).
    """
    loop = ctx.settings.loop
    with Session(ctx.engine) as session:
        raw = get_value(session, WATERMARK_KEY)
    first_in_process = ctx.reconciled_at is None
    full = raw is None or ctx.reconciled_at is None or time.monotonic() - ctx.reconciled_at >= _spacing(ctx)
    since = None if full else datetime.fromisoformat(raw or "") - timedelta(seconds=loop.pull_overlap_s)
    began = time.monotonic()
    result = ctx.connector.pull(since=since)
    if full:
        ctx.reconcile_cost_s = time.monotonic() - began
        if ctx.reconcile_cost_s > _SLOW_RECONCILE_S:
            log.info("sync: a full read of %s tasks took %.0f s; the next one in %.0f s at the earliest",
                     len(result.tasks), ctx.reconcile_cost_s, _spacing(ctx))
    with Session(ctx.engine) as session:
        ours = _of_this_store(session, result.tasks)
        stray = _names_a_new_choice(session, ours)
        waiting = _waiting_task_ids(session) if check_waiting and since is not None else []
    gone = ctx.connector.missing(waiting) if waiting else []
    if gone:
        log.info("sync: %s of our waiting tasks deleted in the annotation tool; their items go back to the pool",
                 len(gone))
    # the labeling config may have changed (gained the class) while we run; the process's first
    # sync follows ensure_project, which has just read it
    if stray or (full and not first_in_process):
        refresh_classes(ctx)
    with Session(ctx.engine) as session:
        changed, unknown = apply_task_states(session, ours)
        mark_withdrawn(session, [*result.deleted_task_ids, *gone])  # only items still waiting: answers pulled stay
        if since is None:  # a full listing: any open task of ours it lacks was deleted in the tool
            _withdraw(_missing_from(session, {(task.remote_task_id, task.item_id) for task in result.tasks}), session)
        closed = close_finished_batches(session)
        _advance_watermark(session, raw, result.watermark)
        session.commit()
    ctx.synced_at = time.monotonic()
    if since is None:
        ctx.reconciled_at = ctx.synced_at
    withdrawn = withdraw_removed(ctx)  # the pulled answers are in: what is still untouched may go
    if withdrawn:
        with Session(ctx.engine) as session:
            mark_withdrawn(session, withdrawn)
            closed += close_finished_batches(session)
            session.commit()
    if changed or closed:
        log.info("sync: %s tasks, %s label changes, %s unknown, %s batches closed",
                 len(result.tasks), changed, unknown, closed)
    return SyncReport(len(result.tasks), changed, unknown, closed, full)


def _of_this_store(session: Session, tasks: Sequence[RemoteTaskState]) -> list[RemoteTaskState]:
    """The tasks whose item is in this store: in its pool, or with a label here (a removed item).

    Another store bound to the same project (or its pool before a change) made tasks whose answers
    were counted as this store's labels in ``status``, for items ``export`` could not write.
    """
    ids = [task.item_id for task in tasks]
    known = ids_present(session, PoolItem.item_id, ids) | ids_present(session, LabelRecord.item_id, ids)
    foreign = len(tasks) - sum(task.item_id in known for task in tasks)
    if foreign:
        log.info("sync: %s tasks name items this store's pool does not hold (another store's?); ignored", foreign)
    return [task for task in tasks if task.item_id in known]


def _spacing(ctx: LoopContext) -> float:
    """Seconds from one full read to the next: the configured interval, or longer after a slow read."""
    return max(ctx.settings.loop.full_reconcile_interval_s, RECONCILE_SPACING * ctx.reconcile_cost_s)


def apply_task_states(session: Session, tasks: Sequence[RemoteTaskState]) -> tuple[int, int]:
    """Fold remote task states into labels and batch items; return (changed, unknown)."""
    classes = set(known_classes(session))
    changed = unknown = disputed = 0
    items = _batch_items(session, [task.remote_task_id for task in tasks])
    # tasks with no answer first: of an item's two tasks read together, an emptied duplicate must not
    # retract the label after the other task's answer was read (sorted() is stable: order kept otherwise)
    for task in sorted(tasks, key=lambda task: bool(task.annotations)):
        verdict = _verdict(task.annotations, classes)
        if verdict.status is LabelStatus.UNKNOWN:
            unknown += 1
        if _record(session, task, verdict):
            changed += 1
            disputed += verdict.status is LabelStatus.DISPUTED
        item = items.get((task.remote_task_id, task.item_id))
        if item is not None:  # with overlap, a labeled task waits until the tool wants no more answers
            waits = not task.is_complete and verdict.status not in (None, LabelStatus.SKIPPED)
            _set_item_state(session, item, None if waits else verdict.status)
    if disputed:
        log.warning("sync: annotators disagree on %s with no majority; not trained on until a reviewer marks "
                    "one answer as ground truth in Label Studio", "1 task" if disputed == 1 else f"{disputed} tasks")
    return changed, unknown


def _verdict(annotations: Iterable[AnnotationState], classes: set[str]) -> _Verdict:
    """The task's label from its annotations.

    A ground-truth annotation decides alone (the latest, if several: Label Studio 1.23 keeps one
    per task, moving the star when another answer is starred). Otherwise each annotator has one
    vote, their latest answer (an annotation without a known annotator votes on its own), and the
    answer with the most votes wins; a tie is a dispute, not trained on until a reviewer marks a
    ground truth or an annotator changes their answer. A dispute's label names who gave each
    answer: ``a (alice) vs b (bob)``.
    """
    ordered = sorted(annotations, key=lambda a: (a.updated_at, a.remote_annotation_id))
    answered = [a for a in ordered if not a.is_skipped]
    if not answered:
        return _Verdict(LabelStatus.SKIPPED, None, ordered[-1]) if ordered else _Verdict(None, None, None)
    starred = [a for a in answered if a.is_ground_truth]
    latest = {_voter(a): a for a in answered}  # each person's last answer
    votes = starred[-1:] or [a for a in answered if latest[_voter(a)] is a]  # still oldest first
    tally = Counter(_answer(a) for a in votes)
    most = max(tally.values())
    leaders = sorted(answer for answer, n in tally.items() if n == most)
    if len(leaders) > 1:
        named = " vs ".join(f"{answer} ({', '.join(_voter(a) for a in votes if _answer(a) == answer)})"
                            for answer in leaders)
        return _Verdict(LabelStatus.DISPUTED, named, votes[-1])
    deciding = [a for a in votes if _answer(a) == leaders[0]][-1]
    if len(deciding.choices) == 1 and deciding.choices[0] in classes:
        return _Verdict(LabelStatus.LABELED, deciding.choices[0], deciding)
    return _Verdict(LabelStatus.UNKNOWN, leaders[0], deciding)


def _names_a_new_choice(session: Session, tasks: Iterable[RemoteTaskState]) -> bool:
    """Whether an answer names a choice that is no known class and is not stored as that unknown choice yet.

    (Pulls overlap and full reconciles list every task again: an answer already recorded as an
    unknown choice does not make each of them read the project again.)
    """
    classes = set(known_classes(session))
    if not classes:
        return False
    for task in tasks:
        # no choice at all: the tag may have been renamed (or only another question answered);
        # several: it may have been made choice="multiple" while we run, which ensure_project refuses
        strays = [a for a in task.annotations if not a.is_skipped
                  and (len(a.choices) != 1 or any(c not in classes for c in a.choices))]
        if not strays:
            continue
        record = session.get(LabelRecord, task.item_id)
        if any(record is None or record.status is not LabelStatus.UNKNOWN
               or (record.remote_annotation_id, record.label) != (a.remote_annotation_id, _answer(a))
               for a in strays):
            return True
    return False


def _voter(annotation: AnnotationState) -> str:
    return annotation.annotator or f"annotation {annotation.remote_annotation_id}"


def _answer(annotation: AnnotationState) -> str:
    return "|".join(annotation.choices) or NO_CHOICE


def _record(session: Session, task: RemoteTaskState, verdict: _Verdict) -> bool:
    current = session.get(LabelRecord, task.item_id)
    if verdict.status is None:
        if current is None or current.status is LabelStatus.RETRACTED or current.source == "seed":
            return False
        if _from_another_task(current, task):
            return False  # an untouched task of the item (a duplicate, another project's) retracted its label
        return _write(session, task, current, LabelStatus.RETRACTED, None, None)
    if current is not None and current.source == "seed" and verdict.status is not LabelStatus.LABELED:
        return False  # a skip or stray choice does not erase a seed label
    if (_from_another_task(current, task) and current is not None and current.status is not LabelStatus.RETRACTED
            and (verdict.status is LabelStatus.SKIPPED or _older(verdict, current))):
        return False  # of two tasks of one item the latest answer holds, whichever task is read last;
        # once the other task's answer is deleted, this one's (older) answer is the label again (QA)
    return _write(session, task, current, verdict.status, verdict.label, verdict.annotation)


def _from_another_task(current: LabelRecord | None, task: RemoteTaskState) -> bool:
    return (current is not None and current.source != "seed" and current.remote_task_id is not None
            and current.remote_task_id != task.remote_task_id)


def _older(verdict: _Verdict, current: LabelRecord | None) -> bool:
    """Whether the verdict's deciding answer is older than the one the current label came from."""
    if verdict.annotation is None or current is None or current.remote_updated_at is None:
        return False
    return verdict.annotation.updated_at < as_utc(current.remote_updated_at)


def _write(
    session: Session,
    task: RemoteTaskState,
    current: LabelRecord | None,
    status: LabelStatus,
    label: str | None,
    annotation: AnnotationState | None,
) -> bool:
    annotation_id = annotation.remote_annotation_id if annotation else None
    # a dispute's label names everyone who answered; one of them as its annotator read as theirs alone (QA)
    annotator = annotation.annotator if annotation and status is not LabelStatus.DISPUTED else None
    updated_at = annotation.updated_at if annotation else task.updated_at
    if current is not None and (current.status, current.label, current.remote_annotation_id) == (
        status, label, annotation_id
    ):
        return False
    previous = current.label if current is not None else None
    if current is None:
        current = LabelRecord(item_id=task.item_id, status=status)
    current.status, current.label, current.source = status, label, "label_studio"
    current.annotator, current.remote_task_id = annotator, task.remote_task_id
    current.remote_annotation_id, current.remote_updated_at = annotation_id, updated_at
    current.recorded_at = datetime.now(UTC)
    session.add(current)
    session.add(LabelEvent(
        item_id=task.item_id, status=status, label=label, previous_label=previous,
        annotator=annotator, remote_task_id=task.remote_task_id,
        remote_annotation_id=annotation_id, remote_updated_at=updated_at,
    ))
    return True


def _batch_items(
    session: Session, remote_task_ids: Sequence[str], *where: Any
) -> dict[tuple[str, str], BatchItem]:
    """The batch items of the given tasks (under the extra conditions), by ``(remote task id, item id)``.

    Keyed by both: Label Studio on SQLite hands a deleted task's id to the next task it creates,
    so one task id can have named two of our items (:func:`record_pushed` withdraws the first).
    """
    found: dict[tuple[str, str], BatchItem] = {}
    for start in range(0, len(remote_task_ids), 500):
        chunk = list(remote_task_ids[start : start + 500])
        for item in session.exec(select(BatchItem).where(col(BatchItem.remote_task_id).in_(chunk), *where)):
            found[(item.remote_task_id or "", item.item_id)] = item
    return found


def _set_item_state(session: Session, item: BatchItem, status: LabelStatus | None) -> None:
    new = {
        LabelStatus.LABELED: BatchItemState.LABELED,
        LabelStatus.UNKNOWN: BatchItemState.LABELED,  # answered: a human must fix the project config
        LabelStatus.DISPUTED: BatchItemState.LABELED,  # answered: a reviewer must settle it
        LabelStatus.SKIPPED: BatchItemState.SKIPPED,
        None: BatchItemState.PENDING,
    }[status]
    if item.state is not BatchItemState.WITHDRAWN and item.state is not new:
        item.state = new
        session.add(item)
        if new is BatchItemState.PENDING:
            _reopen(session, item.batch_id)


def _reopen(session: Session, batch_id: str) -> None:
    """A deleted annotation (or a raised overlap) makes its task pending again; a closed batch cannot
    reopen, so note it."""
    batch = session.get(Batch, batch_id)
    if batch is not None and batch.status is BatchStatus.CLOSED:
        batch.note = REOPENED_NOTE
        session.add(batch)


def mark_withdrawn(session: Session, remote_task_ids: Sequence[str]) -> None:
    """Mark the waiting items of tasks gone from the tool (deleted there or withdrawn by us) withdrawn. No commit."""
    _withdraw(_batch_items(session, remote_task_ids, BatchItem.state == BatchItemState.PENDING).values(), session)


def record_pushed(session: Session, items: Sequence[BatchItem], remote: Mapping[str, str]) -> None:
    """Give each pushed item its task id; an earlier item still waiting on the same id lost its task. No commit.

    Label Studio on SQLite reuses the id of its newest task once that task is deleted, so a new
    task's id can be one we hold for a task deleted there since the last full read. That item is
    withdrawn here: left waiting, it would never close its batch, and removing it would delete the
    new task.
    """
    for item in items:
        item.remote_task_id = remote[item.item_id]
        session.add(item)
    session.flush()
    ours = {item.item_id for item in items}
    earlier = _batch_items(session, list(remote.values()), BatchItem.state == BatchItemState.PENDING)
    stale = [item for (_, item_id), item in earlier.items() if item_id not in ours]
    for item in stale:
        log.warning("Label Studio gave task %s, deleted there, to a new task: item %s is withdrawn",
                    item.remote_task_id, item.item_id)
    _withdraw(stale, session)


def _withdraw(items: Iterable[BatchItem], session: Session) -> None:
    for item in items:
        item.state = BatchItemState.WITHDRAWN
        session.add(item)


def _waiting_task_ids(session: Session) -> list[str]:
    """The task ids of our waiting items."""
    found = session.exec(
        select(BatchItem.remote_task_id)
        .where(*waiting_in_tool())
    )
    return [task_id for task_id in found if task_id is not None]


def _missing_from(session: Session, present: set[tuple[str, str]]) -> list[BatchItem]:
    """Our waiting items whose task a full listing lacks (by task id and item id)."""
    pending = session.exec(
        select(BatchItem)
        .where(*waiting_in_tool())
    ).all()
    return [item for item in pending if (item.remote_task_id or "", item.item_id) not in present]


def close_finished_batches(session: Session) -> int:
    """Close pushed batches whose items are all labeled, skipped or withdrawn; a closed batch whose
    reopened tasks were all answered again loses the note that said it wanted answers."""
    closed = 0
    for batch in session.exec(select(Batch).where(Batch.status == BatchStatus.PUSHED)):
        if not _has_pending(session, batch.id):
            advance(session, batch, BatchStatus.CLOSED)
            closed += 1
    for batch in session.exec(select(Batch).where(Batch.status == BatchStatus.CLOSED, Batch.note == REOPENED_NOTE)):
        if not _has_pending(session, batch.id):
            batch.note = ""
            session.add(batch)
    return closed


def _has_pending(session: Session, batch_id: str) -> bool:
    found = session.exec(
        select(BatchItem.item_id).where(BatchItem.batch_id == batch_id, BatchItem.state == BatchItemState.PENDING)
    ).first()
    return found is not None


def _advance_watermark(session: Session, raw: str | None, watermark: datetime) -> None:
    watermark = as_utc(watermark)
    if raw is None or watermark > datetime.fromisoformat(raw):
        set_value(session, WATERMARK_KEY, watermark.isoformat())
