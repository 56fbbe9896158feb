"""Read-only queries behind the CLI. Safe while the daemon runs (SQLite WAL)."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from daemon.near_copies import n_set_aside
from daemon.store import (
    Batch,
    BatchItem,
    BatchItemState,
    BatchStatus,
    CycleRun,
    HealthEvent,
    LabelRecord,
    LabelStatus,
    ModelRun,
    PoolItem,
    RemovedItem,
    as_utc,
    get_value,
    not_removed,
)
from strategies import DEFAULT_NEAR_COPY_COSINE

__all__ = [
    "BATCH_STATUSES",
    "REOPENED",
    "BatchDetail",
    "BatchSummary",
    "StatusReport",
    "batch_detail",
    "labels_per_class",
    "list_batches",
    "recent_control_accuracy",
    "status_report",
    "waiting_count",
]

PREVIEW_CHARS = 80
REOPENED = "reopened"  # how a closed batch with a task waiting again (its answer deleted) is shown
BATCH_STATUSES = (BatchStatus.SELECTED, BatchStatus.PUSHED, BatchStatus.CLOSED, REOPENED, BatchStatus.PARKED)
_HEALTHY_WITHIN_S = 30.0
_UNSETTLED = (LabelStatus.DISPUTED, LabelStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    id: str
    status: str
    strategy: str
    model_version: str
    created_at: str
    age_s: float
    size: int
    labeled: int  # answered with a class the model trains on
    skipped: int
    pending: int
    withdrawn: int
    control: int
    note: str
    unsettled: int = 0  # answered, but not trained on: annotators disagree, or chose no class of the project


@dataclass(frozen=True, slots=True)
class BatchItemRow:
    position: int
    item_id: str
    text: str
    score: float
    predicted_label: str | None
    predicted_score: float | None
    is_control: bool
    state: str
    label: str | None
    remote_task_id: str | None


@dataclass(frozen=True, slots=True)
class BatchDetail:
    batch: BatchSummary
    items: list[BatchItemRow]


@dataclass(slots=True)
class StatusReport:
    project: dict[str, Any]
    pool: dict[str, int]
    labels: dict[str, int]
    per_class: dict[str, int]
    labels_outside_classes: dict[str, int]  # labels (seed, or from before a class left the project) not trained on
    unknown_choices: dict[str, int]
    queue: dict[str, int]
    model: dict[str, Any] | None
    control_slice: dict[str, Any]
    cycles: list[dict[str, Any]] = field(default_factory=list)
    daemon: dict[str, Any] = field(default_factory=dict)
    stopping: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat()


def _age_s(moment: datetime, now: datetime) -> float:
    return max(0.0, round((now - as_utc(moment)).total_seconds(), 1))  # a beat written just after `now` read -0.0


def list_batches(session: Session, *, status: str | None = None, now: datetime | None = None) -> list[BatchSummary]:
    """Return batches newest first, optionally only those with ``status``.

    ``status`` is a :class:`BatchStatus` or ``"reopened"``: a closed batch with a task waiting again
    (its answer deleted), which its summary shows as ``reopened``; ``"closed"`` lists those too.
    """
    now = now or datetime.now(UTC)
    stmt = select(Batch).order_by(col(Batch.created_at).desc())
    if status:
        stmt = stmt.where(Batch.status == (BatchStatus.CLOSED if status == REOPENED else BatchStatus(status)))
    rows = [_summary(session, batch, now) for batch in session.exec(stmt)]
    return [row for row in rows if row.status == REOPENED] if status == REOPENED else rows


def _summary(session: Session, batch: Batch, now: datetime) -> BatchSummary:
    rows = session.exec(
        select(BatchItem.state, BatchItem.is_control, func.count())
        .where(BatchItem.batch_id == batch.id)
        .group_by(col(BatchItem.state), col(BatchItem.is_control))
    ).all()
    states: Counter[str] = Counter()
    control = 0
    for state, is_control, n in rows:
        states[str(state)] += n
        control += n if is_control else 0
    unsettled = session.exec(
        select(func.count()).select_from(BatchItem)
        .join(LabelRecord, col(LabelRecord.item_id) == col(BatchItem.item_id))
        .where(BatchItem.batch_id == batch.id, BatchItem.state == BatchItemState.LABELED,
               col(LabelRecord.status).in_(_UNSETTLED))
    ).one()
    pending = states[BatchItemState.PENDING]
    # closed, then an answer was deleted: "closed" beside a pending task read as a stuck batch (QA)
    shown = REOPENED if batch.status is BatchStatus.CLOSED and pending else str(batch.status)
    return BatchSummary(
        id=batch.id, status=shown, strategy=batch.strategy, model_version=batch.model_version,
        created_at=_iso(batch.created_at), age_s=_age_s(batch.created_at, now), size=batch.size,
        labeled=states[BatchItemState.LABELED] - unsettled, skipped=states[BatchItemState.SKIPPED],
        pending=pending, withdrawn=states[BatchItemState.WITHDRAWN],
        control=control, note=batch.note, unsettled=unsettled,
    )


def batch_detail(session: Session, batch_id: str) -> BatchDetail | None:
    """Return one batch with its items in presentation order, or ``None``."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        matches = session.exec(select(Batch).where(col(Batch.id).startswith(batch_id))).all()
        batch = matches[0] if len(matches) == 1 else None
    if batch is None:
        return None
    stmt = (
        select(BatchItem, PoolItem.text, LabelRecord.label, LabelRecord.status)
        .join(PoolItem, col(PoolItem.item_id) == col(BatchItem.item_id))
        .join(LabelRecord, col(LabelRecord.item_id) == col(BatchItem.item_id), isouter=True)
        .where(BatchItem.batch_id == batch.id)
        .order_by(col(BatchItem.position))
    )
    items = [
        BatchItemRow(
            position=item.position, item_id=item.item_id, text=_preview(text), score=round(item.score, 4),
            predicted_label=item.predicted_label,
            predicted_score=None if item.predicted_score is None else round(item.predicted_score, 4),
            is_control=item.is_control, state=_item_state(item.state, label_status), label=label,
            remote_task_id=item.remote_task_id,
        )
        for item, text, label, label_status in session.exec(stmt)
    ]
    return BatchDetail(_summary(session, batch, datetime.now(UTC)), items)


def _item_state(state: BatchItemState, label_status: str | None) -> str:
    """The item's state; an answer the model does not train on says why (``disputed``, ``unknown``)."""
    if state is BatchItemState.LABELED and label_status in _UNSETTLED:
        return str(label_status)
    return str(state)


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


def status_report(
    session: Session,
    *,
    now: datetime | None = None,
    n_cycles: int = 5,
    declared: Sequence[str] = (),
    near_copy_cosine: float | None = DEFAULT_NEAR_COPY_COSINE,
) -> StatusReport:
    """Gather pool, label, queue, model, control-slice, cycle and daemon figures.

    ``declared``: the configured classes (``loop.classes``), listed with their counts until a
    project's classes are bound; before that a class without a label was missing from the table.
    ``near_copy_cosine``: ``loop.near_copy_cosine``, or None when near-copies are not set aside
    (``loop.set_aside_near_copies = false``): then none is counted as set aside.
    """
    now = now or datetime.now(UTC)
    per_class, outside = labels_per_class(session, declared=declared)
    return StatusReport(
        project=_project(session),
        pool=_pool_counts(session, near_copy_cosine),
        labels=_label_counts(session),
        per_class=per_class,
        labels_outside_classes=outside,
        unknown_choices=_unknown(session),
        queue=_queue(session),
        model=_model(session),
        control_slice=control_slice_accuracy(session),
        cycles=_cycles(session, n_cycles),
        daemon=_daemon(session, now),
        stopping=_stopping(session),
    )


def _stopping(session: Session) -> dict[str, Any]:
    raw_pause = get_value(session, "paused")
    raw_history = get_value(session, "stability_history")
    return {"paused": json.loads(raw_pause) if raw_pause else None,
            "kappa_history": (json.loads(raw_history) if raw_history else [])[-10:]}


def _project(session: Session) -> dict[str, Any]:
    raw = get_value(session, "classes")
    return {"id": get_value(session, "project_id"), "title": get_value(session, "project_title"),
            "classes": json.loads(raw) if raw else [], "watermark": get_value(session, "pull_watermark")}


def _pool_counts(session: Session, near_copy_cosine: float | None) -> dict[str, int]:
    """Items in the loop (removed ones apart), how many have a vector, how many were removed, and how
    many unlabeled ones are set aside as near-copies of labeled items (:mod:`daemon.near_copies`)."""
    removed = session.exec(select(func.count()).select_from(RemovedItem)).one()
    in_loop = [not_removed(PoolItem.item_id)] if removed else []  # a million-row probe only when needed
    total = session.exec(select(func.count()).select_from(PoolItem).where(*in_loop)).one()
    embedded = session.exec(
        select(func.count()).select_from(PoolItem).where(col(PoolItem.is_embedded), *in_loop)).one()
    return {"items": int(total), "embedded": int(embedded), "removed": int(removed),
            "near_copies": 0 if near_copy_cosine is None else n_set_aside(session, near_copy_cosine)}


def _label_counts(session: Session) -> dict[str, int]:
    rows = session.exec(select(LabelRecord.status, func.count()).where(not_removed(LabelRecord.item_id))
                        .group_by(col(LabelRecord.status))).all()
    counts = {str(status): 0 for status in LabelStatus}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def labels_per_class(session: Session, *, declared: Sequence[str] = ()) -> tuple[dict[str, int], dict[str, int]]:
    """Labels per class of the project, and labels naming no class of it (all go in the first before one is
    bound, where the ``declared`` classes are listed too, at 0 until labeled)."""
    raw = get_value(session, "classes")
    counts = {c: 0 for c in (json.loads(raw) if raw else declared)}
    outside: dict[str, int] = {}
    rows = session.exec(
        select(LabelRecord.label, func.count())
        .where(LabelRecord.status == LabelStatus.LABELED, not_removed(LabelRecord.item_id))
        .group_by(col(LabelRecord.label))
    ).all()
    for label, n in rows:
        (counts if not raw or label in counts else outside)[str(label)] = int(n)
    return counts, outside


def _unknown(session: Session) -> dict[str, int]:
    rows = session.exec(
        select(LabelRecord.label, func.count())
        .where(LabelRecord.status == LabelStatus.UNKNOWN, not_removed(LabelRecord.item_id))  # as the counts (QA)
        .group_by(col(LabelRecord.label))
    ).all()
    return {str(label): int(n) for label, n in rows}


def _queue(session: Session) -> dict[str, int]:
    rows = session.exec(
        select(Batch.status, func.count()).group_by(col(Batch.status))
    ).all()
    batches = {str(status): int(n) for status, n in rows}
    return {"waiting_items": waiting_count(session), **{f"batches_{k}": v for k, v in batches.items()}}


def waiting_count(session: Session) -> int:
    """Our items that are queued (selected or pushed) and not answered yet.

    Items of closed batches count too: a deleted annotation puts its task back in the tool's queue,
    and leaving those out let new batches go past ``max_waiting_tasks``.
    """
    stmt = (
        select(func.count())
        .select_from(BatchItem)
        .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
        .where(BatchItem.state == BatchItemState.PENDING)
        .where(col(Batch.status).in_([BatchStatus.SELECTED, BatchStatus.PUSHED, BatchStatus.CLOSED]))
    )
    return int(session.exec(stmt).one())


def _model(session: Session) -> dict[str, Any] | None:
    run = session.exec(select(ModelRun).order_by(col(ModelRun.created_at).desc())).first()
    if run is None:
        return None
    return {"version": run.version, "created_at": _iso(run.created_at), "n_labels": run.n_labels,
            "macro_f1": run.macro_f1, "accuracy": run.accuracy, "quality_method": run.quality_method,
            "class_counts": json.loads(run.class_counts_json), "encoder": run.encoder, "train_s": run.train_s}


RECENT_CONTROL = 20  # control items of the latest models that make the "recent" figure


def control_slice_accuracy(session: Session) -> dict[str, Any]:
    """Accuracy of the pushed prediction on the labeled random control items (an unbiased estimate).

    ``accuracy`` pools every control item ever answered, each judged by the model that pushed it,
    so early models weigh on it long after. ``recent`` is the latest models' figure: their control
    items, newest model first, until at least :data:`RECENT_CONTROL` (``from_labels`` is the
    fewest labels those models were trained on); it is what the stopping rule checks. ``curve``
    gives each model's own. Items removed from the pool since are left out: the estimate is of the
    pool as it is now.
    """
    rows = session.exec(
        select(BatchItem.predicted_label, LabelRecord.label)
        .join(LabelRecord, col(LabelRecord.item_id) == col(BatchItem.item_id))
        .where(col(BatchItem.is_control), LabelRecord.status == LabelStatus.LABELED,
               col(BatchItem.predicted_label).is_not(None), not_removed(BatchItem.item_id))
    ).all()
    correct = sum(1 for predicted, label in rows if predicted == label)
    curve = _control_curve(session)
    return {"n": len(rows), "accuracy": round(correct / len(rows), 4) if rows else None,
            "recent": _recent(curve), "curve": curve}


def recent_control_accuracy(session: Session) -> dict[str, Any]:
    """``control_slice_accuracy(session)["recent"]`` without the pooled figure's query (the stopping rule's check)."""
    return _recent(_control_curve(session))


def _recent(curve: list[dict[str, Any]]) -> dict[str, Any]:
    n = hits = 0
    from_labels = None
    for point in reversed(curve):
        n, hits, from_labels = n + point["n_control"], hits + point["n_correct"], point["n_labels"]
        if n >= RECENT_CONTROL:
            break
    return {"n": n, "accuracy": round(hits / n, 4) if n else None, "from_labels": from_labels}


def _control_curve(session: Session) -> list[dict[str, Any]]:
    """Unbiased accuracy per model: its predictions on labeled random control items, by labels used."""
    rows = session.exec(
        select(ModelRun.n_labels, Batch.model_version, BatchItem.predicted_label, LabelRecord.label)
        .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
        .join(ModelRun, col(ModelRun.version) == col(Batch.model_version))
        .join(LabelRecord, col(LabelRecord.item_id) == col(BatchItem.item_id))
        .where(col(BatchItem.is_control), LabelRecord.status == LabelStatus.LABELED, not_removed(BatchItem.item_id))
    ).all()
    by_model: dict[tuple[int, str], list[bool]] = {}
    for n_labels, version, predicted, label in rows:
        by_model.setdefault((n_labels, version), []).append(predicted == label)
    return [{"n_labels": n, "model_version": v, "n_control": len(hits), "n_correct": sum(hits),
             "accuracy": round(sum(hits) / len(hits), 4)} for (n, v), hits in sorted(by_model.items())]


def _cycles(session: Session, limit: int) -> list[dict[str, Any]]:
    runs = session.exec(
        select(CycleRun).order_by(col(CycleRun.id).desc()).limit(limit)
    ).all()
    return [{"id": run.id, "started_at": _iso(run.started_at), "status": run.status, "reason": run.reason,
             "batch_id": run.batch_id, "model_version": run.model_version,
             "stage_seconds": json.loads(run.stage_seconds_json)} for run in runs]


_FAILURES_UNHEALTHY = 2  # runs in a row that failed (Label Studio unreachable, say) before status says NOT healthy


def _daemon(session: Session, now: datetime) -> dict[str, Any]:
    raw = get_value(session, "daemon")
    beat: dict[str, Any] = json.loads(raw) if raw else {}
    if beat:
        age = _age_s(datetime.fromisoformat(beat["last_beat"]), now)
        beat["last_beat_age_s"] = age
        if beat.get("state") == "running" and beat.get("host") == socket.gethostname() and not _alive(beat["pid"]):
            beat["state"] = "gone"  # its process ended without saying so: killed, or the machine restarted
        # one failed run is retried at once: a 2-second stall read "NOT healthy" (QA); two in a row keep failing
        beat["healthy"] = (beat.get("state") == "running" and age <= _HEALTHY_WITHIN_S
                           and (beat.get("backoff_failures") or 0) < _FAILURES_UNHEALTHY)
    events = session.exec(select(HealthEvent).order_by(col(HealthEvent.id).desc()).limit(5)).all()
    beat["recent_events"] = [{"at": _iso(e.at), "kind": e.kind, "message": e.message} for e in events]
    return beat


def _alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
