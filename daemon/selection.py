"""The select stage: score the unlabeled pool, pick a batch plus a random control slice.

The pool is never loaded whole. The process keeps a positional index of it (pool order →
embedding-cache row; :mod:`daemon.pool_index`), and the batch is chosen in two stages
(:mod:`daemon.scoring`): one streamed pass scores every candidate with the strategy's own
pre-filter and keeps its shortlist, then the strategy runs on the shortlist alone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from sqlalchemy import func
from sqlmodel import Session, select

from daemon.context import LoopContext, TrainedModel
from daemon.named_rows import nearest_rows, unseen_prototypes
from daemon.pool import known_classes
from daemon.pool_index import CandidateRows, PoolIndex, item_ids_of
from daemon.queries import waiting_count
from daemon.scoring import (
    DEFAULT_CHUNK_ROWS,
    SCORING_DTYPE,
    AnyProba,
    ScoreFn,
    Shortlist,
    coarse_head_for,
    shortlist,
)
from daemon.store import Batch, BatchItem
from daemon.training import active_cache, labeled_set, vectors_for
from models.cache import EmbeddingCache
from models.errors import ModelError
from strategies import DEFAULT_STRATEGY, PoolView, Prefilter, prefilter, prefilter_scores, select_batch

__all__ = ["label_counts", "pool_index", "select_next_batch", "strategy_name", "waiting_count"]

log = logging.getLogger(__name__)


def strategy_name(ctx: LoopContext) -> str:
    name = ctx.settings.loop.strategy
    return DEFAULT_STRATEGY if name == "default" else name


def pool_index(ctx: LoopContext, session: Session, cache: EmbeddingCache) -> PoolIndex:
    """Return the context's pool index for ``cache``, caught up with the store (built on first use)."""
    if ctx.pool_index is None or ctx.pool_index.model_key != cache.model_key:
        ctx.pool_index = PoolIndex(cache.model_key)
    ctx.pool_index.refresh(session, cache)
    return ctx.pool_index


@dataclass(frozen=True, slots=True)
class _Inputs:
    pool: CandidateRows
    room: int
    labels: list[str]
    labeled_hashes: list[str]
    classes: list[str]
    n_batches: int


def select_next_batch(ctx: LoopContext, model: TrainedModel | None, *, cycle_id: int | None = None) -> Batch | None:
    """Choose the next batch and store it as ``SELECTED``; ``None`` when there is no room or no item.

    The batch fills the queue up to ``max_waiting_tasks``; a ``control_fraction`` share of it is
    drawn uniformly from the pool (the control slice) so accuracy can be estimated without bias.
    The rest is what the strategy picks from the shortlist of one streamed pass over the pool.
    """
    loop = ctx.settings.loop
    started = time.perf_counter()
    cache = active_cache(ctx)
    inputs = _read_inputs(ctx, cache)
    n = len(inputs.pool.seqs)
    k = min(loop.batch_size, inputs.room, n)
    if k <= 0:
        return None
    rng = np.random.default_rng([loop.seed, inputs.n_batches])
    n_control = min(_control_count(k * loop.control_fraction, rng), k - 1)
    control = rng.choice(n, size=n_control, replace=False) if n_control > 0 else np.zeros(0, dtype=np.intp)
    is_rest = np.ones(n, dtype=bool)
    is_rest[control] = False
    read = time.perf_counter()
    chosen, strategy = _strategy_picks(ctx, model, cache, inputs, np.flatnonzero(is_rest), k - n_control, rng)
    control_proba = None
    if model is not None and n_control:
        control_proba = model.classifier.predict_proba(cache.get(inputs.pool.cache_rows[control]))
    controls = [_Pick(int(p), 0.0, True, None if control_proba is None else control_proba[r])
                for r, p in enumerate(control)]
    chosen = _interleaved(chosen, controls, rng)
    picked = time.perf_counter()
    batch = _store_batch(ctx, inputs.pool, chosen, strategy, model, cycle_id)
    log.info("select: %s candidates; read %.3fs, score+pick %.3fs, store %.3fs", n, read - started,
             picked - read, time.perf_counter() - picked, extra={"batch_id": batch.id, "cycle_id": cycle_id})
    return batch


def _strategy_picks(
    ctx: LoopContext,
    model: TrainedModel | None,
    cache: EmbeddingCache,
    inputs: _Inputs,
    rest: npt.NDArray[np.intp],
    k: int,
    rng: np.random.Generator,
) -> tuple[list[_Pick], str]:
    """Stream ``rest`` (positions into the candidates) once, then run the strategy on its shortlist."""
    name = strategy_name(ctx)
    counts = label_counts(model, inputs.labels)
    labeled_embeddings = vectors_for(ctx, inputs.labeled_hashes) if inputs.labeled_hashes else None
    unseen = sorted(set(inputs.classes) - set(inputs.labels))  # labels are of known classes only
    n_unseen = len(unseen)
    has_labeled = labeled_embeddings is not None
    prototypes = unseen_prototypes(ctx, cache, unseen)
    plan = prefilter(name, k, len(rest), label_counts=None if model is None else counts,
                     n_unseen_classes=n_unseen, has_labeled_embeddings=has_labeled,
                     n_prototypes=0 if prototypes is None else len(prototypes))
    score: ScoreFn | None = None
    if model is not None and plan.n_top:
        def score(proba: AnyProba) -> npt.NDArray[np.float64]:
            return prefilter_scores(name, proba, counts, n_unseen_classes=n_unseen,
                                    has_labeled_embeddings=has_labeled)
    rows = inputs.pool.cache_rows[rest]
    try:
        short = _shortlist(ctx, cache, rows, plan, model, score, rng)
    except ModelError:  # NonFiniteInput in process; on Ray it arrives as a failed job, its cause lost
        cache.check_finite(rows)  # the pass reads rows unchecked: find the damaged shard and name it
        raise  # finite rows whose logits overflow, or a job that failed for another reason
    if plan.n_named and prototypes is not None:
        short = _with_named_rows(cache, rows, short, nearest_rows(cache, rows, prototypes, plan.n_named), model)
    view = PoolView(
        embeddings=cache.get(rows[short.positions]),
        proba=short.proba,
        label_counts=counts,
        n_unseen_classes=n_unseen,
        labeled_embeddings=labeled_embeddings,
        unseen_prototypes=prototypes,
    )
    picked = select_batch(name, view, k, rng=rng)
    chosen = [
        _Pick(int(rest[short.positions[p]]), float(s), False, None if short.proba is None else short.proba[p])
        for p, s in zip(picked.positions, picked.scores, strict=True)
    ]
    log.debug("select: %s of %s rows shortlisted for %s", len(short.positions), len(rest), name)
    return chosen, picked.strategy


def _with_named_rows(
    cache: EmbeddingCache,
    rows: npt.NDArray[np.intp],
    short: Shortlist,
    named: npt.NDArray[np.intp],
    model: TrainedModel | None,
) -> Shortlist:
    """Add the rows nearest the unseen classes' names (positions into ``rows``) to the shortlist."""
    extra = np.setdiff1d(named, short.positions)
    if extra.size == 0:
        return short
    positions = np.concatenate([short.positions, extra]).astype(np.intp)
    if short.proba is None or model is None:
        return Shortlist(positions, None)
    extra_proba = model.classifier.predict_proba(cache.get(rows[extra]), dtype=SCORING_DTYPE)
    return Shortlist(positions, np.concatenate([short.proba, extra_proba.astype(short.proba.dtype)]))


def _shortlist(
    ctx: LoopContext,
    cache: EmbeddingCache,
    rows: npt.NDArray[np.intp],
    plan: Prefilter,
    model: TrainedModel | None,
    score: ScoreFn | None,
    rng: np.random.Generator,
) -> Shortlist:
    """Stage (a) in process, or on Ray workers with ``[scaleout] backend = "ray"`` (the same shortlist)."""
    if ctx.settings.scaleout.backend == "ray" and model is not None and score is not None:
        from daemon.scaleout_ray import shortlist_ray  # ray is an optional extra: import on use
        from models.head_weights import export_head

        return shortlist_ray(cache, rows, plan, head=export_head(model.classifier), score=score, rng=rng,
                             settings=ctx.settings.scaleout)
    if model is None:
        return shortlist(cache, rows, plan, predict_proba=None, score=score, rng=rng, chunk_rows=DEFAULT_CHUNK_ROWS)
    return shortlist(cache, rows, plan, predict_proba=partial(model.classifier.predict_proba, dtype=SCORING_DTYPE),
                     score=score, rng=rng, chunk_rows=DEFAULT_CHUNK_ROWS,
                     coarse=coarse_head_for(model.classifier, len(rows), ctx.settings.model.scoring_prefilter))


def _read_inputs(ctx: LoopContext, cache: EmbeddingCache) -> _Inputs:
    with Session(ctx.engine) as session:
        room = ctx.settings.label_studio.max_waiting_tasks - waiting_count(session)
        pool = pool_index(ctx, session, cache).candidates(session)
        labeled = labeled_set(session)
        classes = known_classes(session)
        n_batches = int(session.exec(select(func.count()).select_from(Batch)).one())
    return _Inputs(pool, room, labeled.labels, labeled.hashes, classes, n_batches)


@dataclass(frozen=True, slots=True)
class _Pick:
    position: int  # into the candidates
    score: float
    is_control: bool
    proba: npt.NDArray[np.float64] | None  # (C,) the model's probabilities for this item


def label_counts(model: TrainedModel | None, labels: Sequence[str]) -> npt.NDArray[np.intp]:
    """Labels per class of ``model``, aligned with its probability columns; empty without a model."""
    if model is None:
        return np.zeros(0, dtype=np.intp)
    tally = Counter(labels)
    return np.asarray([tally[c] for c in model.classes], dtype=np.intp)


def _store_batch(
    ctx: LoopContext,
    pool: CandidateRows,
    chosen: list[_Pick],
    strategy: str,
    model: TrainedModel | None,
    cycle_id: int | None,
) -> Batch:
    batch = Batch(
        strategy=strategy, model_version=model.version if model else "cold-start",
        size=len(chosen), cycle_id=cycle_id,
    )
    with Session(ctx.engine) as session:
        item_ids = item_ids_of(session, [int(pool.seqs[pick.position]) for pick in chosen])
        items = []
        for order, pick in enumerate(chosen):
            label, confidence = None, None
            if pick.proba is not None and model is not None:
                label, confidence = model.classes[int(np.argmax(pick.proba))], float(np.max(pick.proba))
            items.append(BatchItem(
                batch_id=batch.id, item_id=item_ids[int(pool.seqs[pick.position])], position=order,
                score=pick.score, predicted_label=label, predicted_score=confidence, is_control=pick.is_control,
            ))
        session.add(batch)
        session.add_all(items)
        session.commit()
        session.refresh(batch)
    log.info("selected batch %s: %s items (%s control) by %s", batch.id, len(items),
             sum(1 for pick in chosen if pick.is_control), strategy, extra={"batch_id": batch.id})
    return batch


def _interleaved(picks: list[_Pick], controls: list[_Pick], rng: np.random.Generator) -> list[_Pick]:
    """``picks`` in their order with ``controls`` at uniformly random places among them.

    The batch's order is the order Label Studio serves its tasks in; appended, the control
    items were always a batch's last tasks, and annotators could tell them apart (QA).
    """
    if not controls:
        return picks
    is_control = np.zeros(len(picks) + len(controls), dtype=bool)
    is_control[rng.choice(len(is_control), size=len(controls), replace=False)] = True
    pick_iter, control_iter = iter(picks), iter(controls)
    return [next(control_iter) if here else next(pick_iter) for here in is_control]


def _control_count(expected: float, rng: np.random.Generator) -> int:
    """The control slice's size: ``expected`` rounded up or down at random, so small batches carry it
    on average (rounding 10 × 5% down to none left the stopping rule without its control items)."""
    whole = int(expected)
    return whole + int(expected > whole and rng.random() < expected - whole)
