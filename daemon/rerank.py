"""Stale queue re-ranking: when a new model arrives, refresh what waits in Label Studio.

Tasks chosen by an older model may have become uninformative (the new model is now sure
about them). For every waiting task of ours that an older model chose, the new model's
prediction replaces the old pre-annotation, and unstarted tasks whose score fell below ``stale_score_ratio`` × their
score at selection are withdrawn (never a task someone annotated, skipped or drafted;
never a control item), which frees room for a batch chosen by the current model. Nor is any
of the ``loop.rerank_keep_next`` waiting tasks that annotators are handed next: Label Studio's
stream hands out tasks in the order they were pushed (its default sequential sampling), skipping
those someone has open, so the tasks people have open are the first waiting ones, and Label
Studio's task locks are not visible through its API. The first waiting tasks are read from Label
Studio itself just before withdrawing, not from the store, which lags by the answers it has not
pulled yet. In a project that hands out tasks in
another order (Label Studio's uniform or uncertainty sampling) any waiting task may be open, so
none is withdrawn there, and a warning says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from connectors.base import PredictionUpdate
from daemon.context import LoopContext, TrainedModel
from daemon.pool import known_classes
from daemon.selection import label_counts
from daemon.store import (
    Batch,
    BatchItem,
    BatchStatus,
    HealthEvent,
    PoolItem,
    get_value,
    set_value,
    waiting_in_tool,
)
from daemon.sync import close_finished_batches, mark_withdrawn
from daemon.training import labeled_set, vectors_for
from strategies import FloatArray, PoolView, select_batch

__all__ = ["RerankReport", "rerank_queue"]

log = logging.getLogger(__name__)
_KEY = "reranked_model"


@dataclass(frozen=True, slots=True)
class RerankReport:
    refreshed: int
    withdrawn: int


@dataclass(frozen=True, slots=True)
class _Waiting:
    item_id: str
    remote_task_id: str
    content_hash: str
    old_score: float
    is_comparable: bool  # chosen by the same strategy, so its score is on the same scale; withdrawn only if so
    is_control: bool  # refreshed in the tool like the rest; never withdrawn, and its pushed prediction is kept


def rerank_queue(ctx: LoopContext, model: TrainedModel, *, strategy: str) -> RerankReport:
    """Refresh predictions of waiting tasks for ``model`` and withdraw the stale ones, once per model.

    Raises:
        ConnectorError: the tool is unreachable; the next cycle tries again.
    """
    loop = ctx.settings.loop
    with Session(ctx.engine) as session:
        if not loop.rerank_enabled or get_value(session, _KEY) == model.version:
            return RerankReport(0, 0)
        waiting = _waiting(session, strategy, model.version)
    if not waiting:
        return _done(ctx, model, RerankReport(0, 0))
    vectors = vectors_for(ctx, [w.content_hash for w in waiting])
    proba = model.classifier.predict_proba(vectors)
    chosen = [i for i, w in enumerate(waiting) if not w.is_control]
    new_scores = _scores(ctx, model, strategy, vectors[chosen], proba[chosen]) if chosen else np.zeros(0)
    updates = [
        PredictionUpdate(w.remote_task_id, model.version, model.classes[int(np.argmax(row))], float(np.max(row)))
        for w, row in zip(waiting, proba, strict=True)
    ]
    refreshed = ctx.connector.refresh_predictions(updates)  # no push comes before the marks below
    stale = [waiting[i].remote_task_id for i, new in zip(chosen, new_scores, strict=True)
             if waiting[i].is_comparable and new < loop.stale_score_ratio * waiting[i].old_score]
    stale = _withdrawable(ctx, stale)
    gone = set(ctx.connector.withdraw(stale)) if stale else set()
    with Session(ctx.engine) as session:
        by_task = {(i.remote_task_id, i.item_id): i for i in session.exec(
            select(BatchItem).where(col(BatchItem.remote_task_id).in_([w.remote_task_id for w in waiting])))}
        for w, update in zip(waiting, updates, strict=True):
            item = by_task.get((w.remote_task_id, w.item_id))
            if item is None or w.is_control:  # a control item's pushed prediction is the unbiased estimate's
                continue
            item.predicted_label, item.predicted_score = update.predicted_label, update.predicted_score
            session.add(item)
        mark_withdrawn(session, sorted(gone | set(refreshed.deleted_task_ids)))  # deleted there: not waiting
        close_finished_batches(session)
        session.commit()
    if gone:
        log.info("re-ranked the queue for model %s: %s tasks withdrawn as stale", model.version, len(gone),
                 extra={"model_version": model.version})
    return _done(ctx, model, RerankReport(refreshed.refreshed, len(gone)))


def _withdrawable(ctx: LoopContext, stale: list[str]) -> list[str]:
    """``stale`` less the tasks annotators may have open, by the tool's live view."""
    if not stale:
        return []
    if not ctx.connector.serves_in_push_order():
        _keep_all(ctx, len(stale))
        return []
    next_up = set(ctx.connector.first_waiting(ctx.settings.loop.rerank_keep_next))  # counts unpulled answers
    return [task_id for task_id in stale if task_id not in next_up]


def _keep_all(ctx: LoopContext, n_stale: int) -> None:
    """Out of push order, any waiting task may be open in someone's browser: withdraw none."""
    message = (f"{n_stale} waiting tasks are stale but none is withdrawn: the project does not hand out tasks "
               "in the order they were pushed, so any of them may be open; set its sampling to sequential")
    log.warning("re-ranking: %s", message)
    with Session(ctx.engine) as session:
        session.add(HealthEvent(kind="rerank_kept", message=message))
        session.commit()


def _done(ctx: LoopContext, model: TrainedModel, report: RerankReport) -> RerankReport:
    with Session(ctx.engine) as session:
        set_value(session, _KEY, model.version)
        session.commit()
    return report


def _waiting(session: Session, strategy: str, version: str) -> list[_Waiting]:
    """Our pushed, unanswered tasks, except those ``version`` itself chose.

    Tasks reopened after their batch closed (an answer deleted) are among them, refreshed but never
    withdrawn: someone answered them once, and whoever deleted the answer wants a new one.

    Control tasks are among them: the project's ``model_version`` moves on, and Label Studio shows
    only that version's predictions, so a control task left out lost its suggestion and annotators
    could tell the control items apart.
    """
    rows = session.exec(
        select(BatchItem, Batch.strategy, Batch.status, PoolItem.content_hash)
        .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
        .join(PoolItem, col(PoolItem.item_id) == col(BatchItem.item_id))
        .where(col(Batch.status).in_([BatchStatus.PUSHED, BatchStatus.CLOSED]))
        .where(*waiting_in_tool())
        .where(Batch.model_version != version)
    ).all()
    return [_Waiting(item.item_id, item.remote_task_id or "", digest, item.score,
                     batch_strategy == strategy and status is BatchStatus.PUSHED, item.is_control)
            for item, batch_strategy, status, digest in rows]


def _scores(
    ctx: LoopContext, model: TrainedModel, strategy: str, vectors: npt.NDArray[np.float32], proba: FloatArray
) -> FloatArray:
    """The strategy's score of every waiting item under the new model (same scale as at selection)."""
    with Session(ctx.engine) as session:
        labeled = labeled_set(session)
        n_project_classes = len(known_classes(session))
    view = PoolView(
        embeddings=vectors,
        proba=proba,
        label_counts=label_counts(model, labeled.labels),
        n_unseen_classes=max(0, n_project_classes - len(model.classes)),
        labeled_embeddings=vectors_for(ctx, labeled.hashes) if labeled.hashes else None,
    )
    picked = select_batch(strategy, view, len(vectors), rng=np.random.default_rng(ctx.settings.loop.seed))
    scores: FloatArray = np.zeros(len(vectors))
    scores[picked.positions] = picked.scores
    return scores
