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
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import numpy.typing as npt
from sqlalchemy import func
from sqlmodel import Session, select

from daemon.context import LoopContext, TrainedModel
from daemon.named_rows import nearest_rows, unseen_prototypes
from daemon.near_copies import pending_hashes, record_near_copies, set_aside_seqs
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
from daemon.wording import for_count
from models.cache import EmbeddingCache
from models.errors import ModelError
from strategies import (
    DEFAULT_STRATEGY,
    PoolView,
    Prefilter,
    near_copies,
    prefilter,
    prefilter_scores,
    repeats,
    select_batch,
    select_distinct,
)

__all__ = ["label_counts", "pool_index", "select_next_batch", "strategy_name", "waiting_count"]

log = logging.getLogger(__name__)
# streamed passes per selection at most: a pass whose shortlist held near-copies of labeled items
# runs again without them (they are recorded, so later cycles leave them out from the start)
_NEAR_COPY_PASSES = 3
# shortlists up to this many rows are also checked for near-copies of each other (0.1 s at 4,096 x 384):
# a ranking strategy's shortlist is the batch itself, and near-copies score alike, so they come in together
_SELF_CHECK_ROWS = 4_096


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
    set_aside: npt.NDArray[np.intp]  # positions into pool: near-copies of labeled items
    room: int
    labels: list[str]
    labeled_ids: list[str]
    labeled_hashes: list[str]
    pending_hashes: list[str]  # items waiting for an answer
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
    if k < loop.batch_size and k == inputs.room:  # QA: a batch of 1 read like a bug beside 'queue low'
        log.info("select: the batch is cut to %s %s, the room left under label_studio.max_waiting_tasks (%s)", k,
                 for_count(k, "item", "items"), ctx.settings.label_studio.max_waiting_tasks)
    rng = np.random.default_rng([loop.seed, inputs.n_batches])
    n_control = min(_control_count(k * loop.control_fraction, rng), k - 1)
    control = rng.choice(n, size=n_control, replace=False) if n_control > 0 else np.zeros(0, dtype=np.intp)
    is_rest = np.ones(n, dtype=bool)
    is_rest[control] = False
    if inputs.set_aside.size and is_rest.sum() - np.count_nonzero(is_rest[inputs.set_aside]) >= k - n_control:
        is_rest[inputs.set_aside] = False  # unless fewer than a batch of other items is left
    read = time.perf_counter()
    chosen, strategy = _strategy_picks(ctx, model, cache, inputs, np.flatnonzero(is_rest), k - n_control, rng,
                                       control)
    control_proba = None
    if model is not None and n_control:
        control_proba = model.classifier.predict_proba(cache.get(inputs.pool.cache_rows[control]))
    controls = [_Pick(int(p), 0.0, True, None if control_proba is None else control_proba[r])
                for r, p in enumerate(control)]
    chosen = _interleaved(chosen, controls, rng)
    picked = time.perf_counter()
    batch = _store_batch(ctx, inputs.pool, chosen, strategy, model, cycle_id)
    aside = f" ({len(inputs.set_aside)} set aside as near-copies)" if len(inputs.set_aside) else ""
    log.info("select: %s candidates%s; read %.3fs, score+pick %.3fs, store %.3fs", n, aside, read - started,
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
    control: npt.NDArray[np.intp],
) -> tuple[list[_Pick], str]:
    """Stream ``rest`` (positions into the candidates), then run the strategy on its shortlist.

    ``control`` (positions into the candidates) is the batch's control slice: no pick copies one.
    """
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
    named = None
    if plan.n_named and prototypes is not None:
        named = nearest_rows(cache, rows, prototypes, plan.n_named)
    # labeled items first (_without_near_copies records copies of those only), then those waiting for
    # an answer and the batch's control items (a control item and a pick shared a text, QA)
    unanswered = [vectors_for(ctx, inputs.pending_hashes)] if inputs.pending_hashes else []
    if len(control):
        unanswered.append(cache.get(inputs.pool.cache_rows[control]))
    parts = ([] if labeled_embeddings is None else [labeled_embeddings]) + unanswered
    references = np.concatenate(parts) if parts else None
    short = _shortlist_without_copies(ctx, inputs, cache, rest, _Pass(plan, model, score, named), references, k, rng)
    view = PoolView(
        embeddings=cache.get(rows[short.positions]),
        proba=short.proba,
        label_counts=counts,
        n_unseen_classes=n_unseen,
        labeled_embeddings=labeled_embeddings,
        unseen_prototypes=prototypes,
    )
    if ctx.settings.loop.set_aside_near_copies:
        picked, n_dropped = select_distinct(name, view, k, rng=rng, min_cosine=ctx.settings.loop.near_copy_cosine)
        if n_dropped:
            log.info("select: %s near-copies of other picks left out of the batch", n_dropped)
    else:
        picked = select_batch(name, view, k, rng=rng)
    chosen = [
        _Pick(int(rest[short.positions[p]]), float(s), False, None if short.proba is None else short.proba[p])
        for p, s in zip(picked.positions, picked.scores, strict=True)
    ]
    log.debug("select: %s of %s rows shortlisted for %s", len(short.positions), len(rest), name)
    return chosen, picked.strategy


@dataclass(frozen=True, slots=True)
class _Pass:
    """What one streamed pass needs besides the rows."""

    plan: Prefilter
    model: TrainedModel | None
    score: ScoreFn | None
    named: npt.NDArray[np.intp] | None  # positions into the rows nearest the unseen classes' names


def _shortlist_without_copies(
    ctx: LoopContext,
    inputs: _Inputs,
    cache: EmbeddingCache,
    rest: npt.NDArray[np.intp],
    how: _Pass,
    references: npt.NDArray[np.float32] | None,
    k: int,
    rng: np.random.Generator,
) -> Shortlist:
    """The streamed pass's shortlist of ``rest`` (positions into the candidates), near-copies left out.

    Left out are the near-copies of labeled, waiting and control items (``references``), and, in
    a shortlist of at most ``_SELF_CHECK_ROWS`` rows, those of a better-scored shortlisted row.
    Copies of labeled items are recorded. While fewer rows than the first pass's shortlist are
    left (for near-copies of each other: fewer than ``k``), the pass runs again without the
    copies, its top and sample deeper by twice the copies found so far, at most
    ``_NEAR_COPY_PASSES`` times; the copies stay in when fewer than ``k`` other rows were found.
    """
    rows = inputs.pool.cache_rows[rest]
    live: npt.NDArray[np.intp] = np.arange(len(rows), dtype=np.intp)  # positions into rows the pass may shortlist
    needed, n_copies, kinds = 0, 0, Counter[str]()
    for attempt in range(_NEAR_COPY_PASSES):
        extra = 2 * n_copies
        plan = replace(how.plan, n_top=min(how.plan.n_top + extra if how.plan.n_top else 0, len(live)),
                       n_sample=min(how.plan.n_sample + extra if how.plan.n_sample else 0, len(live)))
        try:
            found = _shortlist(ctx, cache, rows[live], plan, how.model, how.score, rng)
        except ModelError:  # NonFiniteInput in process; on Ray it arrives as a failed job, its cause lost
            cache.check_finite(rows)  # the pass reads rows unchecked: find the damaged shard and name it
            raise  # finite rows whose logits overflow, or a job that failed for another reason
        short = Shortlist(live[found.positions], found.proba)
        if how.named is not None:
            short = _with_named_rows(cache, rows, short, how.named, how.model)
        if not ctx.settings.loop.set_aside_near_copies or references is None:
            return short
        needed = needed or len(short.positions)
        kept, copies, this_pass = _without_near_copies(ctx, inputs, rows, rest, short, cache, references, how.score)
        n_copies += len(copies)
        kinds += this_pass
        live = np.setdiff1d(live, copies, assume_unique=True).astype(np.intp)
        enough = len(kept.positions) >= k and len(kept.positions) + this_pass[_OF_EACH_OTHER] >= needed
        if enough or not live.size or attempt == _NEAR_COPY_PASSES - 1:
            if n_copies:  # one line per selection, each kind apart (QA: one sum of all read as copies of labels)
                log.info("select: near-copies (cosine >= %s) left out of the shortlist: %s, in %s",
                         ctx.settings.loop.near_copy_cosine, _kinds_said(kinds),
                         f"{attempt + 1} {for_count(attempt + 1, 'pass', 'passes')}")
            return kept if len(kept.positions) >= k else short  # too few others: the copies stay in
    raise AssertionError("unreachable: the last pass returns")


_OF_LABELED, _OF_UNANSWERED, _OF_EACH_OTHER = "of labeled items (set aside)", "of waiting or control items", \
    "of each other"


def _kinds_said(kinds: Counter[str]) -> str:
    """``12 of labeled items (set aside), 40 of each other``: the kinds found, in a fixed order."""
    return ", ".join(f"{kinds[kind]} {kind}" for kind in (_OF_LABELED, _OF_UNANSWERED, _OF_EACH_OTHER) if kinds[kind])


def _without_near_copies(
    ctx: LoopContext,
    inputs: _Inputs,
    rows: npt.NDArray[np.intp],
    rest: npt.NDArray[np.intp],
    short: Shortlist,
    cache: EmbeddingCache,
    references: npt.NDArray[np.float32],
    score: ScoreFn | None,
) -> tuple[Shortlist, npt.NDArray[np.intp], Counter[str]]:
    """Drop the shortlisted near-copies; return the shortlist without them, them, and how many of each kind.

    ``references`` are the labeled items' vectors (``inputs.labeled_ids`` order), then those of items
    waiting for an answer and of the batch's control items. Copies of labeled items are recorded;
    copies of the others only dropped. A shortlist of at most ``_SELF_CHECK_ROWS`` rows also loses
    the rows that nearly copy a shortlisted row ``score`` ranks higher. Copies are positions into ``rows``.
    """
    min_cosine = ctx.settings.loop.near_copy_cosine
    vectors = cache.get(rows[short.positions])
    nearest = near_copies(vectors, references, min_cosine=min_cosine)
    is_copy = nearest >= 0
    is_repeat = np.zeros_like(is_copy)
    if len(short.positions) <= _SELF_CHECK_ROWS:
        ranked: npt.NDArray[np.intp] = np.arange(len(short.positions), dtype=np.intp)  # no scores: pool order
        if score is not None and short.proba is not None:
            ranked = np.argsort(-score(short.proba), kind="stable").astype(np.intp)
        ranked = ranked[~is_copy[ranked]]
        is_repeat[ranked[repeats(vectors[ranked], min_cosine=min_cosine) >= 0]] = True
    if not (is_copy | is_repeat).any():
        return short, np.zeros(0, dtype=np.intp), Counter()
    of_labeled = is_copy & (nearest < len(inputs.labeled_ids))
    found = Counter({_OF_LABELED: int(np.count_nonzero(of_labeled)),
                     _OF_UNANSWERED: int(np.count_nonzero(is_copy & ~of_labeled)),
                     _OF_EACH_OTHER: int(np.count_nonzero(is_repeat))})
    if of_labeled.any():
        originals = nearest[of_labeled]
        cosines = np.einsum("ij,ij->i", vectors[of_labeled], references[originals])
        seqs = [int(inputs.pool.seqs[rest[p]]) for p in short.positions[of_labeled]]
        with Session(ctx.engine) as session:
            item_ids = item_ids_of(session, seqs)
            record_near_copies(session, [(item_ids[seq], inputs.labeled_ids[int(o)], round(float(c), 4))
                                         for seq, o, c in zip(seqs, originals, cosines, strict=True)])
            session.commit()
    keep = ~(is_copy | is_repeat)
    proba = None if short.proba is None else short.proba[keep]
    return Shortlist(short.positions[keep], proba), short.positions[~keep], found


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
        set_aside: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        pending: list[str] = []
        if ctx.settings.loop.set_aside_near_copies:
            aside_seqs = set_aside_seqs(session, ctx.settings.loop.near_copy_cosine)
            set_aside = np.flatnonzero(np.isin(pool.seqs, aside_seqs))
            pending = pending_hashes(session)
    return _Inputs(pool, set_aside, room, labeled.labels, labeled.item_ids, labeled.hashes, pending, classes,
                   n_batches)


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
    log.info("selected batch %s: %s %s (%s control) by %s", batch.id, len(items),
             for_count(len(items), "item", "items"), sum(1 for pick in chosen if pick.is_control), strategy,
             extra={"batch_id": batch.id})
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
