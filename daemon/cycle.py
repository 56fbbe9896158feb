"""One cycle of the loop: sync → embed → retrain → select → push, each stage resumable.

Each stage reads its inputs from the store and commits its outputs, and the cycle
checks the stop event between stages. A crash anywhere leaves a state the next cycle
finishes: a ``SELECTED`` batch is pushed before anything new is chosen, and the
connector never creates a second task for an item.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from connectors.base import OutgoingTask
from connectors.errors import ConnectorAuthError, ConnectorError, ConnectorRejected, ConnectorUnavailable
from daemon.context import LoopContext, TrainedModel
from daemon.pause import is_paused, update_stability
from daemon.rerank import RerankReport, rerank_queue
from daemon.selection import select_next_batch, strategy_name, waiting_count
from daemon.settings import LoopSettings, Settings
from daemon.store import (
    Batch,
    BatchItem,
    BatchItemState,
    BatchStatus,
    CycleRun,
    LabelRecord,
    LabelStatus,
    ModelRun,
    PoolItem,
    advance,
    not_removed,
    utcnow,
)
from daemon.sync import record_pushed, sync
from daemon.training import embed_pool, estimate_pending_quality, retrain, to_embed

__all__ = ["CycleReport", "close_interrupted_cycles", "cycle_due", "low_water_mark", "push_pending", "queue_is_low",
           "refill_at", "run_cycle"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_Timer = Callable[[str, Callable[[], Any]], Any]
_PUSH_CHUNK = 100
EMBED_BUDGET_S = 20.0  # a cycle embeds this long at most; syncs and batches go on between cycles


@dataclass(slots=True)
class CycleReport:
    cycle_id: int
    status: str = "ok"  # ok | skipped | stopped | failed
    reason: str = ""
    batch_id: str | None = None
    pushed: int = 0
    model_version: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


def close_interrupted_cycles(engine: Engine) -> int:
    """Mark cycles a killed process left ``running`` as ``interrupted``; call it holding the store's instance lock.

    Only the lock's holder runs cycles, so a ``running`` row older than this process is one whose
    process died (SIGKILL, power loss): ``status`` showed such rows as running for good. A batch
    it had selected is named on it (the batch column stayed empty, so nothing linked the two, QA);
    the next cycle pushes that batch.
    """
    with Session(engine) as session:
        stale = session.exec(select(CycleRun).where(CycleRun.status == "running")).all()
        for run in stale:
            run.status, run.reason = "interrupted", (run.reason + "; " if run.reason else "") + "its process ended"
            run.batch_id = run.batch_id or session.exec(
                select(Batch.id).where(Batch.cycle_id == run.id).order_by(col(Batch.created_at).desc())).first()
            session.add(run)
        session.commit()
    return len(stale)


def cycle_due(ctx: LoopContext) -> str:
    """Say why a cycle should run now, or return ``""`` when it need not."""
    loop = ctx.settings.loop
    with Session(ctx.engine) as session:
        if session.exec(select(Batch.id).where(Batch.status == BatchStatus.SELECTED)).first():
            return "a selected batch is waiting to be pushed"
        waiting = waiting_count(session)
        latest = session.exec(select(ModelRun).order_by(col(ModelRun.created_at).desc())).first()
        labeled = int(session.exec(
            select(func.count()).select_from(LabelRecord)
            .where(LabelRecord.status == LabelStatus.LABELED, not_removed(LabelRecord.item_id))
        ).one())
        paused = is_paused(session) is not None
    if queue_is_low(ctx.settings, waiting) and not paused:
        return f"queue low ({waiting} waiting)"
    trained_on = latest.n_labels if latest is not None else 0
    if labeled - trained_on >= loop.min_new_labels:
        return f"{labeled - trained_on} new labels"
    if labeled < trained_on:  # labeled items were removed from the pool: the model still learns from them
        return f"{trained_on - labeled} labels removed"
    with Session(ctx.engine) as session:
        if session.exec(select(PoolItem.seq).where(*to_embed()).limit(1)).first() is not None:
            return "pool items to embed"
    return ""


def low_water_mark(loop: LoopSettings) -> int:
    """``low_water_fraction × batch_size``, rounded down: at most this many waiting items, a new batch is due."""
    return int(loop.low_water_fraction * loop.batch_size)


def refill_at(settings: Settings) -> int:
    """The most waiting items at which a new batch is selected: the low-water mark, or one below the cap.

    A full queue is not low however small ``max_waiting_tasks`` is: below the low-water mark, a
    cycle ran every ``cycle_interval_s`` only to find no room (QA).
    """
    return min(low_water_mark(settings.loop), settings.label_studio.max_waiting_tasks - 1)


def queue_is_low(settings: Settings, waiting: int) -> bool:
    """True when at most :func:`refill_at` items wait for annotators."""
    return waiting <= refill_at(settings)


def run_cycle(ctx: LoopContext, *, reason: str = "manual", synced_within_s: float = 0.0) -> CycleReport:
    """Run every stage once and record the cycle with each stage's duration.

    Args:
        reason: why the cycle runs, kept with its record.
        synced_within_s: skip the sync stage when a sync succeeded this many seconds ago or
            less (the webhook path syncs, then runs a cycle at once: a second pull would only
            cost time at a million items). 0 always syncs.

    Raises:
        ConnectorError, ModelError: recorded as a failed cycle, then re-raised for the caller.
    """
    with Session(ctx.engine) as session:
        run = CycleRun(kind="cycle", reason=reason)
        session.add(run)
        session.commit()
        session.refresh(run)
    report = CycleReport(cycle_id=run.id or 0)
    try:
        _stages(ctx, report, synced_within_s)
    except ConnectorError as e:
        report.status, report.reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        _finish(ctx, report)
    return report


def _stages(ctx: LoopContext, report: CycleReport, synced_within_s: float) -> None:
    """sync → push_leftover → embed → train → stability → select → push → rerank → quality.

    Re-ranking the waiting tasks runs after the push: the next batch is in the annotators' hands
    first, and the batch just pushed (chosen by this model) is not re-ranked. The model's
    cross-validated quality estimate comes last (five fits to the model's one; nothing before
    it needs the new model's). When re-ranking frees
    room, a second select → push fills it in the same cycle. During a backfill, when a batch
    is due and a batch's worth of items has vectors already, the embed stage runs after the
    push instead (:func:`_embed_after_push`).
    """
    def timed(name: str, stage: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return stage()
        finally:
            report.stage_seconds[name] = round(report.stage_seconds.get(name, 0.0) + time.perf_counter() - started, 3)

    fresh = ctx.synced_at is not None and time.monotonic() - ctx.synced_at <= synced_within_s
    steps: list[tuple[str, Callable[[], object]]] = [
        ("sync", (lambda: None) if fresh else (lambda: sync(ctx))),
        ("push_leftover", lambda: _push_leftover(ctx, report)),
    ]
    for name, stage in steps:
        if ctx.stop.is_set():
            report.status = "stopped"
            return
        timed(name, stage)
    embed_later = _embed_after_push(ctx)
    if not embed_later:
        timed("embed", lambda: embed_pool(ctx, budget_s=EMBED_BUDGET_S))
    model = timed("train", lambda: retrain(ctx))
    report.model_version = model.version if model else None
    if model is not None:
        timed("stability", lambda: update_stability(ctx, model))
    if ctx.stop.is_set():
        report.status = "stopped"
        return
    _fill_queue(ctx, report, model, timed)
    if embed_later and not ctx.stop.is_set():
        timed("embed", lambda: embed_pool(ctx, budget_s=EMBED_BUDGET_S))
    if model is None or ctx.stop.is_set():
        return
    try:
        reranked = timed("rerank", lambda: rerank_queue(ctx, model, strategy=strategy_name(ctx)))
    except ConnectorUnavailable as e:  # the batch is pushed: a stalled refresh failed the cycle and skipped the
        # model's estimate (QA); re-ranking this model is tried again by the next cycle, and the next sync backs off
        log.warning("re-ranking for model %s: %s; the waiting tasks keep their predictions until the next cycle",
                    model.version, e, extra={"model_version": model.version})
        reranked = RerankReport(0, 0)
    if reranked.withdrawn and not ctx.stop.is_set() and report.status == "ok":
        _fill_queue(ctx, report, model, timed)
    if not ctx.stop.is_set():
        timed("quality", lambda: estimate_pending_quality(ctx))


def _embed_after_push(ctx: LoopContext) -> bool:
    """Whether this cycle embeds after its push: items wait for vectors, a batch is due, and at least a
    batch's worth of unlabeled items has vectors to choose from.

    Embedding first made annotators of a pool being backfilled wait the embed stage's 20-30 s for
    every batch (answer to next batch: p50 25 s, against 1.9 s once the backfill was done; QA).
    """
    loop = ctx.settings.loop
    with Session(ctx.engine) as session:
        if session.exec(select(PoolItem.seq).where(*to_embed()).limit(1)).first() is None:
            return False
        if is_paused(session) is not None or not queue_is_low(ctx.settings, waiting_count(session)):
            return False
        ready = session.exec(select(PoolItem.seq).where(col(PoolItem.is_embedded), not_removed(PoolItem.item_id),
                                                        col(PoolItem.item_id).not_in(select(LabelRecord.item_id)))
                             .limit(loop.batch_size)).all()
    return len(ready) >= loop.batch_size


def _fill_queue(ctx: LoopContext, report: CycleReport, model: TrainedModel | None, timed: _Timer) -> None:
    """Select and push a batch when the queue is low and the stopping rule has not paused it."""
    with Session(ctx.engine) as session:
        waiting = waiting_count(session)
        paused = is_paused(session)
    if paused is not None:
        by = "an operator" if paused.get("by") == "operator" else "the stopping rule"
        report.status, report.reason = "skipped", f"paused by {by} (labelloop resume)"
        return
    if not queue_is_low(ctx.settings, waiting):
        if report.batch_id is None:  # a refill after re-ranking must not say no batch came
            leftover = f"pushed {report.pushed} tasks of an earlier batch; " if report.pushed else ""
            report.reason = report.reason or f"{leftover}retrained; {waiting} items still waiting, no new batch"
        return
    batch = timed("select", lambda: select_next_batch(ctx, model, cycle_id=report.cycle_id))
    if batch is None:
        if report.batch_id is None:
            cap = ctx.settings.label_studio.max_waiting_tasks
            report.status, report.reason = "skipped", (
                f"queue full: {waiting} items waiting, label_studio.max_waiting_tasks is {cap}" if waiting >= cap
                else "pool exhausted: no unlabeled item left to ask for")
        return
    report.batch_id = batch.id
    report.pushed += timed("push", lambda: push_pending(ctx))


def _push_leftover(ctx: LoopContext, report: CycleReport) -> None:
    """Push what an earlier cycle selected and did not push (a crash, Label Studio down); counted on this cycle."""
    report.pushed += push_pending(ctx)


def _finish(ctx: LoopContext, report: CycleReport) -> None:
    with Session(ctx.engine) as session:
        run = session.get(CycleRun, report.cycle_id)
        if run is not None:
            run.finished_at = utcnow()
            run.status = report.status if report.status != "ok" or report.batch_id else "ok"
            run.reason = report.reason or run.reason
            run.batch_id, run.model_version = report.batch_id, report.model_version
            run.stage_seconds_json = json.dumps(report.stage_seconds)
            session.add(run)
            session.commit()


def push_pending(ctx: LoopContext) -> int:
    """Push every ``SELECTED`` batch, oldest first; return the number of tasks created or found.

    Remote ids are stored chunk by chunk, and the connector finds tasks created before a
    crash, so a push interrupted at any point is finished without duplicates.

    Raises:
        ConnectorUnavailable: the tool is down; what was pushed so far is kept.
        ConnectorRejected: the tool refused a batch's tasks; their items went back to the pool
            (the batch is parked, or goes on as pushed with the tasks created before).
    """
    pushed = 0
    with Session(ctx.engine) as session:
        batch_ids = list(session.exec(
            select(Batch.id).where(Batch.status == BatchStatus.SELECTED).order_by(col(Batch.created_at))
        ))
    for batch_id in batch_ids:
        if ctx.stop.is_set():
            break
        pushed += _push_batch(ctx, batch_id)
    return pushed


def _push_batch(ctx: LoopContext, batch_id: str) -> int:
    pushed = 0
    while True:
        with Session(ctx.engine) as session:
            batch = session.get(Batch, batch_id)
            if batch is None:
                return pushed
            todo = session.exec(
                select(BatchItem, PoolItem)
                .join(PoolItem, col(PoolItem.item_id) == col(BatchItem.item_id))
                .where(BatchItem.batch_id == batch_id, col(BatchItem.remote_task_id).is_(None))
                .order_by(col(BatchItem.position))
                .limit(_PUSH_CHUNK)
            ).all()
            if not todo:
                advance(session, batch, BatchStatus.PUSHED)
                session.commit()
                return pushed
            tasks = [_outgoing(item, pool_item, batch) for item, pool_item in todo]
            try:
                remote = ctx.connector.push(tasks)
            except ConnectorAuthError:
                raise  # the token, not the batch: it stays queued and is pushed once the token works
            except ConnectorRejected as e:
                _park(session, batch, e)
                session.commit()
                raise  # the cycle fails and the daemon backs off: the next batch would be refused too
            record_pushed(session, [item for item, _ in todo], remote)
            session.commit()
            pushed += len(todo)


def _park(session: Session, batch: Batch, error: ConnectorRejected) -> None:
    """The tool refused part of ``batch``: give its unpushed items back to the pool. No commit.

    Parked batches used to keep their items for good, and the next cycles parked the next best
    items too (QA: 110 of 280 candidates gone), though nothing ever un-parks a batch. A batch with
    tasks already created goes on as pushed, without the rest.
    """
    items = session.exec(select(BatchItem).where(BatchItem.batch_id == batch.id)).all()
    unpushed = [item for item in items if item.remote_task_id is None]
    for item in unpushed:
        item.state = BatchItemState.WITHDRAWN
        session.add(item)
    batch.note = f"{len(unpushed)} of {len(items)} items not pushed, back in the pool: refused by the tool: {error}"
    advance(session, batch, BatchStatus.PUSHED if len(unpushed) < len(items) else BatchStatus.PARKED)
    log.error("batch %s: %s", batch.id, batch.note, extra={"batch_id": batch.id})


def _outgoing(item: BatchItem, pool_item: PoolItem, batch: Batch) -> OutgoingTask:
    return OutgoingTask(
        item_id=item.item_id,
        batch_id=batch.id,
        text=pool_item.text,
        model_version=batch.model_version if item.predicted_label else None,
        predicted_label=item.predicted_label,
        predicted_score=item.predicted_score,
        meta=json.loads(pool_item.meta_json),
    )
