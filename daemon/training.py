"""Embedding and retraining stages: pool texts to cached vectors, labels to a proxy model."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import update
from sqlmodel import Session, col, func, select

from daemon.context import LoopContext, TrainedModel
from daemon.pool import known_classes
from daemon.pool_staging import byo_dim
from daemon.progress import ProgressLog
from daemon.store import LabelRecord, LabelStatus, ModelRun, PoolItem, get_value, not_removed, set_value, table_of
from models.cache import EmbeddingCache, embed_missing, model_key
from models.classifier import ProxyClassifier
from models.quality import estimate_quality

__all__ = ["QUALITY_PENDING", "LabeledSet", "embed_pool", "estimate_pending_quality", "fit_proxy", "labeled_set",
           "model_version", "reconcile_embedded", "retrain", "to_embed", "vectors_for"]

log = logging.getLogger(__name__)
# Embedding chunks: each is committed as done, so an interruption loses at most one. The first is
# small (a rate and an ETA show within seconds); later ones take about _CHUNK_S at the measured rate.
_FIRST_CHUNK, _MAX_CHUNK, _CHUNK_S = 256, 8192, 5.0
_clock = time.perf_counter  # a test's fake clock sets the chunk sizes
_EMBEDDED_WITH = "embedded_with"  # the encoder key the pool's items were embedded with
# The active cache's row count when items were last marked embedded. The cache only ever grows, so
# fewer rows now means vectors of marked items are gone (a deleted folder, a cut shard).
_CACHE_ROWS = "embedded_cache_rows"
_RECONCILE_ROWS = 65536  # marked items looked up in the cache per query


@dataclass(frozen=True, slots=True)
class LabeledSet:
    item_ids: list[str]
    hashes: list[str]
    labels: list[str]


def active_cache(ctx: LoopContext) -> EmbeddingCache:
    """Return the cache that holds this pool's vectors (the encoder's, or bring-your-own)."""
    with Session(ctx.engine) as session:
        source = get_value(session, "embedding_source")
    dim = byo_dim(source)
    if source is not None and dim is not None:  # only `pool add` writes a pool's own vectors: the daemon held the
        return ctx.cache(source, dim, readonly=True)  # writer lock for good, and `pool add` of vectors was refused
    embedder = ctx.embedder()
    return ctx.cache(model_key(embedder), embedder.dim)


def encoder_key(ctx: LoopContext) -> str:
    """The cache key of this pool's vectors: the encoder's model key, or ``byo-d<dim>``."""
    return active_cache(ctx).model_key


def embed_pool(
    ctx: LoopContext, *, progress: Callable[[int, int], None] | None = None, budget_s: float | None = None
) -> int:
    """Embed every pool item that has no vector yet; return how many were embedded.

    Works in chunks and marks each chunk in the store after its vectors are cached,
    so a process killed midway continues where it stopped. With ``[scaleout] backend = "ray"``
    the chunks are Ray Data jobs (:func:`daemon.scaleout_ray.embed_pool_ray`). After a change
    of encoder the pool is embedded again (:func:`_follow_encoder`).

    Args:
        progress: called as ``progress(done, total)`` after each chunk (on Ray, as vectors
            arrive); ``None`` logs done/total, rate and ETA at most every 10 s instead.
        budget_s: stop after the chunk that passes this many seconds (local backend); the rest
            waits for the next call. The daemon's cycle holds its work lock meanwhile, so a
            large import must not keep syncs and batches waiting for an hour of encoding.
    """
    cache = active_cache(ctx)
    if byo_dim(cache.model_key) is None:  # an encoder's vectors (a pool's own: nothing to follow or redo)
        _follow_encoder(ctx, cache.model_key)
        _reconcile(ctx, cache)
    if ctx.settings.scaleout.backend == "ray":
        return _embed_pool_ray(ctx, progress)
    report = progress if progress is not None else ProgressLog(log, "pool items embedded")
    with Session(ctx.engine) as session:
        total = session.exec(select(func.count()).where(*to_embed())).one()
    done, chunk = 0, _FIRST_CHUNK
    report(0, total)
    began = _clock()
    while not ctx.stop.is_set() and (budget_s is None or done == 0 or _clock() - began < budget_s):
        with Session(ctx.engine) as session:
            rows = session.exec(
                select(PoolItem.seq, PoolItem.text).where(*to_embed()).limit(chunk)
            ).all()
        if not rows:
            break
        cache = active_cache(ctx)
        started = _clock()
        embed_missing(ctx.embedder(), cache, [text for _, text in rows])
        rate = len(rows) / max(_clock() - started, 1e-3)
        chunk = int(min(_MAX_CHUNK, max(_FIRST_CHUNK, rate * _CHUNK_S)))
        with Session(ctx.engine) as session:  # one statement per chunk: cache hits make the chunks quick
            session.execute(update(table_of(PoolItem)).where(col(PoolItem.seq).in_([seq for seq, _ in rows]))
                            .values(is_embedded=True))
            _record_cache_rows(session, cache)
            session.commit()
        done += len(rows)
        report(done, max(total, done))  # items added meanwhile are embedded too
    if done:
        left = total - done
        log.info("embedded %s pool items%s", done, f"; {left} more in the next cycles" if left > 0 else "")
    return done


def _embed_pool_ray(ctx: LoopContext, progress: Callable[[int, int], None] | None) -> int:
    from daemon.scaleout_ray import embed_pool_ray  # ray is an optional extra: import on use

    done = embed_pool_ray(ctx, progress=progress)
    with Session(ctx.engine) as session:  # the rows its marks rely on, as embed_pool records them
        _record_cache_rows(session, active_cache(ctx))
        session.commit()
    return done


def _follow_encoder(ctx: LoopContext, key: str) -> None:
    """After a change of encoder (model, dtype or backend with a cache of its own; ``key`` is the
    current one), mark the pool for embedding again: its vectors are in the old encoder's cache, and
    training failed on every cycle with "items have no cached embedding" while the items read as embedded."""
    with Session(ctx.engine) as session:
        before = get_value(session, _EMBEDDED_WITH)
        if before == key:
            return
        if before is not None:
            reset = session.exec(select(func.count()).where(col(PoolItem.is_embedded))).one()
            session.execute(update(table_of(PoolItem)).where(col(PoolItem.is_embedded)).values(is_embedded=False))
            log.warning("the encoder changed (%s, was %s): %s pool items are embedded again; vectors the new "
                        "encoder's cache already holds are reused", key, before, reset)
        set_value(session, _EMBEDDED_WITH, key)
        set_value(session, _CACHE_ROWS, "0")  # nothing is marked for the new cache yet
        session.commit()


def reconcile_embedded(ctx: LoopContext) -> int:
    """Clear the embedded mark of items whose vector the active cache no longer holds; return how many.

    Cheap on every call: it compares the cache's row count with the count recorded when items were
    last marked (the cache only grows). Only when it shrank (the cache folder deleted, a shard cut
    and its rows dropped), or on a store that has no record yet, are the marked items looked up.

    Raises:
        CacheError: the cache is damaged in a way it cannot repair (the message names the shard).
    """
    cache = active_cache(ctx)
    return 0 if byo_dim(cache.model_key) is not None else _reconcile(ctx, cache)  # own vectors: none to redo


def _reconcile(ctx: LoopContext, cache: EmbeddingCache) -> int:
    cache.refresh()  # a cache this process opened before the damage reads its files again
    rows = len(cache)
    with Session(ctx.engine) as session:
        recorded = get_value(session, _CACHE_ROWS)
        if recorded is not None and rows >= int(recorded):
            return 0
        lost = _unmark_missing(session, cache)
        _record_cache_rows(session, cache)
        session.commit()
    if lost:
        log.warning("embedding cache %s holds %s rows (%s when items were last embedded): %s pool items lost "
                    "their vectors and are embedded again", cache.directory, rows, recorded or "unknown", lost)
    return lost


def _unmark_missing(session: Session, cache: EmbeddingCache) -> int:
    """Clear ``is_embedded`` on items whose content hash the cache lacks; return how many (not committed)."""
    stmt = select(PoolItem.seq, PoolItem.content_hash).where(col(PoolItem.is_embedded)).order_by(col(PoolItem.seq))
    lost: list[int] = []
    for part in session.execute(stmt).yield_per(_RECONCILE_ROWS).partitions():
        found = cache.lookup([digest for _, digest in part])
        lost += [seq for (seq, _), row in zip(part, found, strict=True) if row < 0]
    for start in range(0, len(lost), _RECONCILE_ROWS):
        chunk = lost[start : start + _RECONCILE_ROWS]
        session.execute(update(table_of(PoolItem)).where(col(PoolItem.seq).in_(chunk)).values(is_embedded=False))
    return len(lost)


def _record_cache_rows(session: Session, cache: EmbeddingCache) -> None:
    set_value(session, _CACHE_ROWS, str(len(cache)))


def to_embed() -> tuple[Any, Any]:
    """Conditions on ``PoolItem`` rows that still need a vector: not embedded, not removed (a removed
    import of a million texts must not cost hours of encoding)."""
    return col(PoolItem.is_embedded).is_(False), not_removed(PoolItem.item_id)


def vectors_for(ctx: LoopContext, hashes: list[str]) -> npt.NDArray[np.float32]:
    """Return the cached vectors of the given content hashes, shape (len(hashes), d)."""
    cache = active_cache(ctx)
    rows = cache.lookup(hashes)
    if (rows < 0).any():
        missing = int((rows < 0).sum())
        raise LookupError(f"{missing} items have no cached embedding; run the embed stage first")
    return cache.get(rows)


def labeled_set(session: Session) -> LabeledSet:
    """Return the items with a known-class label and a vector, in item-id order (removed items left out).

    An item not embedded yet (a large import the daemon embeds over several cycles) joins once it is.
    """
    classes = set(known_classes(session))
    stmt = (
        select(LabelRecord.item_id, LabelRecord.label, PoolItem.content_hash)
        .join(PoolItem, col(PoolItem.item_id) == col(LabelRecord.item_id))
        .where(LabelRecord.status == LabelStatus.LABELED, not_removed(LabelRecord.item_id), col(PoolItem.is_embedded))
        .order_by(col(LabelRecord.item_id))
    )
    ids, hashes, labels = [], [], []
    for item_id, label, digest in session.exec(stmt):
        if label is not None and (not classes or label in classes):
            ids.append(item_id)
            hashes.append(digest)
            labels.append(label)
    return LabeledSet(ids, hashes, labels)


QUALITY_PENDING = "cross-validation pending"  # ModelRun.quality_method until estimate_pending_quality ran


def retrain(ctx: LoopContext) -> TrainedModel | None:
    """Train the proxy head on every labeled item, unless the labels are unchanged.

    The model's cross-validated quality is left for :func:`estimate_pending_quality`, which the
    cycle runs after its push: the folds cost five fits to the model's one (1 s of 1.2 s at 3,700
    labels), and the next batch does not need them.

    Returns ``None`` while fewer than two classes have labels (the cold start).
    """
    with Session(ctx.engine) as session:
        labeled = labeled_set(session)
    if len(set(labeled.labels)) < 2:
        return None
    version = model_version(ctx, labeled)
    if ctx.model is not None and ctx.model.version == version:
        return ctx.model
    started = time.perf_counter()
    features, targets = _training_data(ctx, labeled)
    classifier = _new_classifier(ctx).fit(features, targets)
    elapsed = time.perf_counter() - started
    classes = tuple(str(c) for c in classifier.classes_)
    counts = {c: labeled.labels.count(c) for c in classes}
    with Session(ctx.engine) as session:
        run = session.get(ModelRun, version)
        if run is None:
            run = ModelRun(version=version, n_labels=len(labeled.labels), class_counts_json=json.dumps(counts),
                           quality_method=QUALITY_PENDING, encoder=encoder_key(ctx), train_s=round(elapsed, 3))
            session.add(run)
            session.commit()
        if run.quality_method == QUALITY_PENDING:  # a new model, or one whose estimate a restart cut short
            ctx.pending_quality = (version, features, targets)
    ctx.model = TrainedModel(version, classifier, classes, len(labeled.labels))
    log.info("trained model %s on %s labels in %.2fs", version, len(labeled.labels), elapsed,
             extra={"model_version": version})
    return ctx.model


def estimate_pending_quality(ctx: LoopContext) -> None:
    """Cross-validate the model :func:`retrain` trained last, if not done yet, and store its estimate."""
    if ctx.pending_quality is None:
        return
    version, features, targets = ctx.pending_quality
    started = time.perf_counter()
    quality = estimate_quality(
        features, targets, make_classifier=lambda: _new_classifier(ctx),
        n_folds=ctx.settings.model.cv_folds, random_state=ctx.settings.loop.seed,
    )
    with Session(ctx.engine) as session:
        run = session.get(ModelRun, version)
        if run is not None:
            run.macro_f1, run.accuracy, run.quality_method = quality.macro_f1, quality.accuracy, quality.method
            session.add(run)
            session.commit()
    ctx.pending_quality = None
    log.info("model %s: cv macro-F1 %s (%.2fs)", version,
             "n/a" if quality.macro_f1 is None else f"{quality.macro_f1:.3f}", time.perf_counter() - started,
             extra={"model_version": version})


def fit_proxy(ctx: LoopContext, labeled: LabeledSet) -> ProxyClassifier:
    """Train the proxy head on ``labeled`` as :func:`retrain` does, without its cross-validated estimate.

    The same labels, settings and seed give the model :func:`retrain` gives (``model_version``).

    Raises:
        LookupError: a labeled item has no cached vector yet.
    """
    return _new_classifier(ctx).fit(*_training_data(ctx, labeled))


def _training_data(ctx: LoopContext, labeled: LabeledSet) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.object_]]:
    return vectors_for(ctx, labeled.hashes), np.asarray(labeled.labels, dtype=object)


def _new_classifier(ctx: LoopContext) -> ProxyClassifier:
    model = ctx.settings.model
    return ProxyClassifier(
        hidden_dim=model.hidden_dim, epochs=model.epochs, device=model.device, random_state=ctx.settings.loop.seed
    )


def model_version(ctx: LoopContext, labeled: LabeledSet) -> str:
    """The model's id: a hash of the encoder, the model settings, the seed and the labels."""
    digest = hashlib.sha256()
    digest.update(encoder_key(ctx).encode())
    digest.update(ctx.settings.model.model_dump_json().encode())
    digest.update(str(ctx.settings.loop.seed).encode())
    for item_id, label in zip(labeled.item_ids, labeled.labels, strict=True):
        digest.update(f"{item_id}\x1f{label}\x1e".encode())
    return digest.hexdigest()[:12]
