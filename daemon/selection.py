"""The select stage: score the unlabeled pool, pick a batch plus a random control slice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func
from sqlmodel import Session, col, select

from daemon.context import LoopContext, TrainedModel
from daemon.pool import known_classes
from daemon.store import Batch, BatchItem, BatchItemState, BatchStatus, LabelRecord, LabelStatus, PoolItem
from daemon.training import labeled_set, vectors_for
from strategies import DEFAULT_STRATEGY, PoolView, select_batch

__all__ = ["Candidates", "candidates", "select_next_batch", "strategy_name", "waiting_count"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Candidates:
    item_ids: list[str]
    hashes: list[str]


def strategy_name(ctx: LoopContext) -> str:
    name = ctx.settings.loop.strategy
    return DEFAULT_STRATEGY if name == "default" else name


def waiting_count(session: Session) -> int:
    """Our items that are queued (selected or pushed) and not answered yet."""
    stmt = (
        select(func.count())
        .select_from(BatchItem)
        .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
        .where(BatchItem.state == BatchItemState.PENDING)
        .where(col(Batch.status).in_([BatchStatus.SELECTED, BatchStatus.PUSHED]))
    )
    return int(session.exec(stmt).one())


def candidates(session: Session) -> Candidates:
    """Embedded pool items with no label (or a retracted one) and no open task, in pool order."""
    labeled = select(LabelRecord.item_id).where(LabelRecord.status != LabelStatus.RETRACTED)
    queued = select(BatchItem.item_id).where(BatchItem.state != BatchItemState.WITHDRAWN)
    stmt = (
        select(PoolItem.item_id, PoolItem.content_hash)
        .where(col(PoolItem.is_embedded).is_(True))
        .where(col(PoolItem.item_id).not_in(labeled))
        .where(col(PoolItem.item_id).not_in(queued))
        .order_by(col(PoolItem.seq))
    )
    ids, hashes = [], []
    for item_id, digest in session.exec(stmt):
        ids.append(item_id)
        hashes.append(digest)
    return Candidates(ids, hashes)


def select_next_batch(ctx: LoopContext, model: TrainedModel | None, *, cycle_id: int | None = None) -> Batch | None:
    """Choose the next batch and store it as ``SELECTED``; ``None`` when there is no room or no item.

    The batch fills the queue up to ``max_waiting_tasks``; a ``control_fraction`` share of it is
    drawn uniformly from the pool (the control slice) so accuracy can be estimated without bias.
    """
    loop = ctx.settings.loop
    with Session(ctx.engine) as session:
        room = ctx.settings.label_studio.max_waiting_tasks - waiting_count(session)
        pool = candidates(session)
        labeled = labeled_set(session)
        n_classes = len(known_classes(session))
        n_batches = int(session.exec(select(func.count()).select_from(Batch)).one())
    k = min(loop.batch_size, room, len(pool.item_ids))
    if k <= 0:
        return None
    rng = np.random.default_rng([loop.seed, n_batches])
    n_control = min(round(k * loop.control_fraction), k - 1)
    positions = np.arange(len(pool.item_ids))
    control = rng.choice(positions, size=n_control, replace=False) if n_control > 0 else positions[:0]
    rest = np.setdiff1d(positions, control, assume_unique=True)
    embeddings = vectors_for(ctx, [pool.hashes[p] for p in rest])
    proba = model.classifier.predict_proba(embeddings) if model is not None else None
    view = PoolView(
        embeddings=embeddings,
        proba=proba,
        label_counts=_label_counts(model, labeled.labels),
        n_unseen_classes=max(0, n_classes - len(set(labeled.labels))),
        labeled_embeddings=vectors_for(ctx, labeled.hashes) if labeled.hashes else None,
    )
    picked = select_batch(strategy_name(ctx), view, k - n_control, rng=rng)
    control_proba = None
    if model is not None and n_control:
        control_proba = model.classifier.predict_proba(vectors_for(ctx, [pool.hashes[p] for p in control]))
    chosen = [
        _Pick(int(rest[p]), float(s), False, None if proba is None else proba[p])
        for p, s in zip(picked.positions, picked.scores, strict=True)
    ]
    chosen += [
        _Pick(int(p), 0.0, True, None if control_proba is None else control_proba[r])
        for r, p in enumerate(control)
    ]
    return _store_batch(ctx, pool, chosen, picked.strategy, model, cycle_id)


@dataclass(frozen=True, slots=True)
class _Pick:
    position: int  # into Candidates
    score: float
    is_control: bool
    proba: npt.NDArray[np.float64] | None  # (C,) the model's probabilities for this item


def _label_counts(model: TrainedModel | None, labels: Sequence[str]) -> npt.NDArray[np.intp]:
    if model is None:
        return np.zeros(0, dtype=np.intp)
    return np.asarray([labels.count(c) for c in model.classes], dtype=np.intp)


def _store_batch(
    ctx: LoopContext,
    pool: Candidates,
    chosen: list[_Pick],
    strategy: str,
    model: TrainedModel | None,
    cycle_id: int | None,
) -> Batch:
    batch = Batch(
        strategy=strategy, model_version=model.version if model else "cold-start",
        size=len(chosen), cycle_id=cycle_id,
    )
    items = []
    for order, pick in enumerate(chosen):
        label, confidence = None, None
        if pick.proba is not None and model is not None:
            label, confidence = model.classes[int(np.argmax(pick.proba))], float(np.max(pick.proba))
        items.append(BatchItem(
            batch_id=batch.id, item_id=pool.item_ids[pick.position], position=order, score=pick.score,
            predicted_label=label, predicted_score=confidence, is_control=pick.is_control,
        ))
    with Session(ctx.engine) as session:
        session.add(batch)
        session.add_all(items)
        session.commit()
        session.refresh(batch)
    log.info("selected batch %s: %s items (%s control) by %s", batch.id, len(items),
             sum(1 for pick in chosen if pick.is_control), strategy, extra={"batch_id": batch.id})
    return batch
