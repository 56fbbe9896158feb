"""The ``ray`` scale-out backend: embedding backfill and pool scoring as Ray Data jobs.

The daemon stays the coordinator and the store (SQLite + the embedding cache) stays the source
of truth: workers receive texts or vector chunks, compute, and send arrays back; only the
coordinator writes. Selected by ``[scaleout] backend = "ray"``; ``ray`` is an optional extra
(``pip install 'labelloop[ray]'``) imported only when this backend is used.

* Embedding: only the hashes the cache lacks are sent, as ``(content_hash, text)`` rows in
  blocks; an actor pool (one encoder load per actor) embeds them and the vectors stream back
  and are appended to the cache every ``store_chunk_rows`` rows. A job killed midway keeps
  what was appended, and the next one sends only the rest (as ``models.cache.embed_missing``).
* Scoring: the head's weights (numpy, :class:`models.head_weights.HeadWeights`) go to each
  actor once; actors read vector chunks from the shared cache path when every Ray node is this
  machine (a local instance), otherwise from chunks the coordinator put in the object store;
  each chunk returns only its top ``m`` candidates, which the coordinator merges.

GPUs are requested per actor only when the cluster reports some. The first use connects
(:func:`daemon.ray_connect.connect`) and the connection is kept for the process's lifetime (Ray
shuts it down at exit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from daemon._ray_workers import EncodeWorker, RowScorer, ScoreWorker, SharedCache, top_by_score_key
from daemon.context import LoopContext
from daemon.progress import ProgressLog
from daemon.ray_connect import connect
from daemon.scoring import SCORING_DTYPE, Shortlist, shortlist
from daemon.settings import ScaleoutSettings
from daemon.store import PoolItem
from daemon.training import active_cache, to_embed
from models.cache import EmbeddingCache, content_hash, missing_positions, model_key
from models.errors import EmbedderUnavailable, ModelError
from strategies import Prefilter

if TYPE_CHECKING:
    from models.embedder import Embedder
    from models.head_weights import HeadWeights

__all__ = ["connect", "embed_missing_ray", "embed_pool_ray", "job_actors", "shortlist_ray", "vector_mode"]

log = logging.getLogger(__name__)
_STORE_CHUNK_ROWS = 4096  # vectors appended to the cache at once (as embed_missing's default)
_IN_CHUNK = 500  # seqs per UPDATE ... IN (...)
IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]


def job_actors(ray: Any, settings: ScaleoutSettings, *, work_units: int) -> tuple[int, dict[str, float]]:
    """Return ``(actors, resources per actor)`` for a job of ``work_units`` blocks.

    One actor per GPU-share when the cluster reports GPUs (``num_gpus`` is requested only
    then), otherwise one per CPU; ``settings.actors`` overrides the count. Never more actors
    than blocks, never fewer than one.
    """
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    per_actor: dict[str, float] = {"num_cpus": 1.0}
    if gpus > 0:
        per_actor["num_gpus"] = settings.gpus_per_actor
        fits = int(gpus // settings.gpus_per_actor)
    else:
        fits = int(resources.get("CPU", 1.0))
    wanted = settings.actors if settings.actors is not None else fits
    return max(1, min(wanted, work_units)), per_actor


def embed_missing_ray(
    embedder_factory: Callable[[], Embedder],
    cache: EmbeddingCache,
    texts: Sequence[str],
    *,
    settings: ScaleoutSettings,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    store_chunk_rows: int = _STORE_CHUNK_ROWS,
) -> npt.NDArray[np.intp]:
    """Embed the texts the cache lacks on Ray workers; return every text's cache row.

    The Ray counterpart of :func:`models.cache.embed_missing`: each distinct missing text is
    sent once, and vectors are appended every ``store_chunk_rows`` rows as they stream back,
    so after a crash, an exception or ``stop`` the next call sends only what is still missing.

    Args:
        embedder_factory: builds the encoder; called here (to check the cache's model key, which
            reads no weights) and once in every actor.
        cache: the coordinator's writable cache.
        texts: ``n`` texts, duplicates allowed.
        settings: the ``[scaleout]`` section.
        progress: ``progress(done, total)`` after each append, counting missing texts.
        stop: when set, stop after the next append; rows not reached stay ``-1``.
        store_chunk_rows: >= 1, vectors appended to the cache at once.

    Returns:
        ``(n,)`` cache rows in the order of ``texts``; ``-1`` only when stopped early.

    Raises:
        ConfigError: ``ray`` is not installed, or ``ray_address`` is a Ray Client (``ray://``) address.
        ValueError: the encoder does not match the cache, or ``store_chunk_rows`` < 1.
        EmbedderUnavailable: the cluster is unreachable or the job failed (what was appended stays).
    """
    if store_chunk_rows < 1:
        raise ValueError(f"store_chunk_rows must be >= 1, got {store_chunk_rows}")
    embedder = embedder_factory()
    if embedder.dim != cache.dim or model_key(embedder) != cache.model_key:
        raise ValueError(f"embedder {model_key(embedder)} (dim {embedder.dim}) does not match cache {cache.model_key}")
    hashes = [content_hash(text) for text in texts]
    rows = cache.lookup(hashes)
    todo = missing_positions(hashes, rows)
    if not todo:
        return rows
    ray = connect(settings)
    batches = _encoded_batches(ray, embedder_factory, cache, [hashes[p] for p in todo], [texts[p] for p in todo],
                               settings=settings)
    _append_streamed(cache, batches, total=len(todo), chunk_rows=store_chunk_rows, progress=progress, stop=stop)
    return cache.lookup(hashes)


def _encoded_batches(
    ray: Any,
    embedder_factory: Callable[[], Embedder],
    cache: EmbeddingCache,
    hashes: list[str],
    texts: list[str],
    *,
    settings: ScaleoutSettings,
) -> Iterator[dict[str, npt.NDArray[Any]]]:
    """Stream ``{"content_hash", "vector"}`` batches from an actor-pool encoding job."""
    import pyarrow as pa

    step = settings.encode_batch_rows
    blocks = [
        pa.table({"content_hash": hashes[start : start + step], "text": texts[start : start + step]})
        for start in range(0, len(hashes), step)
    ]
    actors, per_actor = job_actors(ray, settings, work_units=len(blocks))
    log.info("ray: embedding %d texts in %d blocks on %d actors %s", len(hashes), len(blocks), actors, per_actor)
    dataset = ray.data.from_arrow(blocks).map_batches(
        EncodeWorker,
        batch_size=step,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"embedder_factory": embedder_factory, "expected_key": cache.model_key,
                               "dim": cache.dim},
        **per_actor,
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


def _append_streamed(
    cache: EmbeddingCache,
    batches: Iterator[dict[str, npt.NDArray[Any]]],
    *,
    total: int,
    chunk_rows: int,
    progress: Callable[[int, int], None] | None,
    stop: threading.Event | None,
) -> None:
    """Append streamed vectors to the cache in chunks; closing the stream cancels the job."""
    from ray.exceptions import RayError

    pending_hashes: list[str] = []
    pending: list[npt.NDArray[np.float16]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if pending_hashes:
            cache.put(pending_hashes, np.concatenate(pending))
            done += len(pending_hashes)
            pending_hashes.clear()
            pending.clear()
            if progress is not None:
                progress(done, total)

    try:
        for batch in batches:
            pending_hashes.extend(str(h) for h in batch["content_hash"])
            pending.append(np.asarray(batch["vector"]))
            if len(pending_hashes) >= chunk_rows:
                flush()
                if stop is not None and stop.is_set():
                    log.info("ray: embedding stopped after %d of %d texts", done, total)
                    return
        flush()
    except RayError as e:
        raise EmbedderUnavailable(f"the Ray embedding job failed after {done} of {total} texts: {e}") from e
    finally:
        getattr(batches, "close", lambda: None)()


def embed_pool_ray(ctx: LoopContext, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Run the embed stage on Ray: every pool item without a vector, ``embed_job_rows`` per job.

    Items are marked embedded only once their vectors are in the cache, so a daemon killed
    midway re-reads them next time and sends only the texts the cache still lacks.

    Args:
        progress: called as ``progress(done, total)`` in pool items: ``(0, total)`` first, then as
            vectors reach the cache (within a job, its items in proportion to its texts stored;
            they count as done, since a rerun finds them in the cache) and after each job;
            ``None`` logs done/total, rate and ETA at most every 10 s instead.

    Raises:
        ConfigError: ``ray`` is not installed, or ``ray_address`` is a Ray Client (``ray://``) address.
        EmbedderUnavailable: the cluster is unreachable or a job failed.
    """
    settings, done = ctx.settings.scaleout, 0
    report = progress if progress is not None else ProgressLog(log, "pool items embedded")
    with Session(ctx.engine) as session:
        total = session.exec(select(func.count()).where(*to_embed())).one()
    report(0, total)
    while not ctx.stop.is_set():
        with Session(ctx.engine) as session:
            todo = session.exec(
                select(PoolItem.seq, PoolItem.text).where(*to_embed())
                .order_by(col(PoolItem.seq)).limit(settings.embed_job_rows)
            ).all()
        if not todo:
            break
        cached = embed_missing_ray(ctx.embedder_factory, active_cache(ctx), [text for _, text in todo],
                                   settings=settings, stop=ctx.stop,
                                   progress=partial(_report_within_job, report, done, len(todo), total))
        seqs = [seq for (seq, _), row in zip(todo, cached, strict=True) if row >= 0]
        with Session(ctx.engine) as session:
            for start in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[start : start + _IN_CHUNK]
                session.execute(update(PoolItem).where(col(PoolItem.seq).in_(chunk)).values(is_embedded=True))
            session.commit()
        done += len(seqs)
        report(done, max(total, done))  # items added meanwhile are embedded too
        if len(seqs) < len(todo):  # stopped midway
            break
    if done:
        log.info("embedded %s pool items on Ray", done)
    return done


def _report_within_job(
    report: Callable[[int, int], None], before: int, job_items: int, total: int, texts_done: int, texts_total: int
) -> None:
    """Turn a job's ``(texts stored, texts sent)`` into ``report(pool items done, total)``."""
    done = before + job_items * texts_done // max(texts_total, 1)
    report(done, max(total, done))


def vector_mode(ray: Any, settings: ScaleoutSettings) -> str:
    """Return how scoring workers get vectors: ``"shared_path"`` or ``"object_store"``.

    ``auto`` means the shared cache path when this process is attached to a one-node cluster
    (a local instance, or ``ray start`` on this machine alone), where every worker sees this
    disk; the object store for Ray Client (``ray://``) or several nodes.
    """
    if settings.vectors != "auto":
        return settings.vectors
    is_client = (settings.ray_address or "").startswith("ray://")
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return "shared_path" if not is_client and len(alive) == 1 else "object_store"


def shortlist_ray(
    cache: EmbeddingCache,
    rows: IntArray,
    plan: Prefilter,
    *,
    head: HeadWeights,
    score: RowScorer,
    rng: np.random.Generator,
    settings: ScaleoutSettings,
) -> Shortlist:
    """Stage (a) of selection (:func:`daemon.scoring.shortlist`) with the scoring on Ray workers.

    Draws the same uniform sample and the same per-row tiebreak keys from ``rng`` as the
    in-process path, so the shortlist, and the state ``rng`` is left in, are the same; only
    per-block winners and sampled rows come back. A plan with no top has nothing to scale out
    and runs in process.

    Args:
        cache: the embedding cache ``rows`` point into.
        rows: (n,) cache rows of the pool, in pool order.
        plan: from :func:`strategies.prefilter`.
        head: the trained head, from :func:`models.head_weights.export_head`.
        score: (c, C) probabilities -> (c,) pre-filter scores; must pickle (cloudpickle).
        rng: draws the sample and the tiebreak keys.
        settings: the ``[scaleout]`` section.

    Raises:
        ValueError: as :func:`daemon.scoring.shortlist`.
        ConfigError: ``ray`` is not installed, or ``ray_address`` is a Ray Client (``ray://``) address.
        ModelError: the cluster is unreachable or the scoring job failed.
    """
    n = len(rows)
    if plan.n_top == 0:
        return shortlist(cache, rows, plan, predict_proba=partial(head.predict_proba, dtype=SCORING_DTYPE), score=score,
                         rng=rng)
    if not (0 < plan.n_top <= n and 0 <= plan.n_sample <= n):
        raise ValueError(f"cannot take {plan} of {n} rows")
    sample: IntArray = np.sort(rng.choice(n, size=plan.n_sample, replace=False)).astype(np.intp)
    keys: FloatArray = rng.random(n)  # the keys shortlist() draws chunk by chunk, in pool order
    try:
        ray = connect(settings)
    except EmbedderUnavailable as e:
        raise ModelError(str(e)) from e
    is_shared = vector_mode(ray, settings) == "shared_path"
    refs = [ray.put(block) for block in _score_blocks(cache, rows, keys, sample, settings, is_shared=is_shared)]
    actors, per_actor = job_actors(ray, settings, work_units=len(refs))
    log.info("ray: scoring %d candidates in %d blocks on %d actors (%s)", n, len(refs), actors,
             "shared cache path" if is_shared else "object store")
    shared = SharedCache(cache.root.resolve(), cache.model_key, cache.dim) if is_shared else None
    dataset = ray.data.from_arrow_refs(refs).map_batches(
        ScoreWorker, batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"head": head, "scorer": score, "top_m": plan.n_top, "shared": shared},
        **per_actor,
    )
    return _merged(dataset.iter_batches(batch_size=None, batch_format="numpy"), plan.n_top)


def _score_blocks(
    cache: EmbeddingCache, rows: IntArray, keys: FloatArray, sample: IntArray, settings: ScaleoutSettings,
    *, is_shared: bool,
) -> Iterator[Any]:
    """Yield one Arrow table per ``score_chunk_rows`` candidates (vectors included unless shared)."""
    import pyarrow as pa

    is_sample = np.zeros(len(rows), dtype=bool)
    is_sample[sample] = True
    step = settings.score_chunk_rows
    spans = (slice(start, min(start + step, len(rows))) for start in range(0, len(rows), step))
    stored = cache.iter_stored_chunks(rows, step) if not is_shared else None
    for span in spans:
        columns: dict[str, Any] = {
            "position": np.arange(span.start, span.stop, dtype=np.int64),
            "key": keys[span],
            "is_sample": is_sample[span],
        }
        if stored is None:
            columns["row"] = rows[span].astype(np.int64)
        else:  # the cache's own float16 rows: half the bytes, and the worker's float32 copy is exact
            _, vectors = next(stored)
            columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), cache.dim)
        yield pa.table(columns)


def _merged(batches: Iterator[dict[str, npt.NDArray[Any]]], n_top: int) -> Shortlist:
    """Merge per-block winners into the global top ``n_top`` and add the sampled rows."""
    from ray.exceptions import RayError

    top: list[dict[str, npt.NDArray[Any]]] = []
    sampled: list[dict[str, npt.NDArray[Any]]] = []
    held = 0
    try:
        for batch in batches:
            is_top, is_sample = batch["is_top"].astype(bool), batch["is_sample"].astype(bool)
            top.append({name: values[is_top] for name, values in batch.items()})
            sampled.append({name: values[is_sample] for name, values in batch.items()})
            held += int(is_top.sum())
            if held > 2 * n_top:  # keep the coordinator's memory at O(n_top)
                top, held = [_best_of(top, n_top)], n_top
    except RayError as e:  # a worker's NonFiniteInput arrives as text only (Ray drops the cause): selection checks
        raise ModelError(f"the Ray scoring job failed: {e}") from e
    finally:
        getattr(batches, "close", lambda: None)()
    best = _best_of(top, n_top)
    positions = np.concatenate([best["position"], *(part["position"] for part in sampled)])
    proba = np.concatenate([best["proba"], *(part["proba"] for part in sampled)])
    unique, first = np.unique(positions, return_index=True)
    return Shortlist(unique.astype(np.intp), proba[first])


def _best_of(parts: list[dict[str, npt.NDArray[Any]]], n_top: int) -> dict[str, npt.NDArray[Any]]:
    merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    keep = top_by_score_key(merged["score"], merged["key"], n_top)
    return {name: values[keep] for name, values in merged.items()}
