"""The Ray scale-out backend against the in-process path, on one local Ray instance.

Every Ray test shares one module-scoped local instance (about 7 s to start on 2 cores), and each
Ray Data job starts its actors afresh (2-4 s), so the module runs in well under a minute.
"""

from __future__ import annotations

import csv
import functools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sqlmodel import Session, select

from connectors.fake import FakeConnector
from daemon.context import LoopContext
from daemon.cycle import run_cycle
from daemon.errors import ConfigError
from daemon.pool import add_pool_file
from daemon.project import ensure_project
from daemon.scaleout_ray import connect, embed_missing_ray, embed_pool_ray, shortlist_ray, vector_mode
from daemon.scoring import SCORING_DTYPE, shortlist
from daemon.settings import ScaleoutSettings, load_settings
from daemon.store import BatchItem, PoolItem, make_engine
from daemon.training import embed_pool
from models.cache import EmbeddingCache, embed_missing, model_key
from models.classifier import ProxyClassifier
from models.embedder import TransformerEmbedder
from models.errors import CacheError
from models.hashing import HashingEmbedder
from models.head_weights import export_head
from strategies import Prefilter, prefilter_scores

try:
    import ray
except ImportError:
    ray = None

DEMO_POOL = Path(__file__).resolve().parents[3] / "daemon" / "demo_data" / "pool.csv"
RAY_SETTINGS = ScaleoutSettings(backend="ray", actors=2, encode_batch_rows=64, score_chunk_rows=700)
ONE_ACTOR = RAY_SETTINGS.model_copy(update={"actors": 1})  # scoring actors import torch: one is cheaper here


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    if ray is None:
        pytest.skip("RAY BACKEND NOT TESTED: `ray` is not importable; install it with pip install 'labelloop[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def texts(n: int, *, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["refund", "parcel", "late", "card", "stolen", "invoice", "courier", "help", "again", "price"]
    made = [" ".join(rng.choice(words, size=4)) + f" {i}" for i in range(n)]
    return made + made[: n // 10]  # some duplicates


def new_cache(root: Path, embedder: Any) -> EmbeddingCache:
    return EmbeddingCache(root, model_key=model_key(embedder), dim=embedder.dim)


def vectors(cache: EmbeddingCache, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
    assert (rows >= 0).all()
    return cache.get(rows)


def test_missing_ray_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ConfigError, match=r"pip install 'labelloop\[ray\]'"):
        connect(RAY_SETTINGS)
    embedder = HashingEmbedder(dim=16)
    with new_cache(tmp_path, embedder) as cache, pytest.raises(ConfigError, match=r"labelloop\[ray\]"):
        embed_missing_ray(functools.partial(HashingEmbedder, 16), cache, ["a text"], settings=RAY_SETTINGS)


def test_interrupted_embedding_keeps_its_chunks_and_resumes(local_ray: Any, tmp_path: Path) -> None:
    """An interrupted job keeps what it appended; the rerun sends only the rest; the vectors equal in-process ones."""
    pool = texts(600, seed=1)
    distinct = len(set(pool))
    factory = functools.partial(HashingEmbedder, 32)

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt  # as a kill right after the first append

    with new_cache(tmp_path, factory()) as cache:
        with pytest.raises(KeyboardInterrupt):
            embed_missing_ray(factory, cache, pool, settings=RAY_SETTINGS, progress=interrupt, store_chunk_rows=128)
        kept = len(cache)
        assert 128 <= kept < distinct
    totals: list[int] = []
    with new_cache(tmp_path, factory()) as cache:  # a new process would reopen the cache like this
        rows = embed_missing_ray(factory, cache, pool, settings=RAY_SETTINGS,
                                 progress=lambda done, total: totals.append(total), store_chunk_rows=128)
        assert set(totals) == {distinct - kept}  # only the rest was sent
        assert len(cache) == distinct  # each distinct text stored once
        with new_cache(tmp_path / "local", factory()) as here:
            expected = vectors(here, embed_missing(factory(), here, pool))
        np.testing.assert_array_equal(vectors(cache, rows), expected)


@pytest.mark.slow
def test_minilm_on_ray_matches_in_process(local_ray: Any, tmp_path: Path) -> None:
    with DEMO_POOL.open(newline="", encoding="utf-8") as handle:
        pool = [row["text"] for row in csv.DictReader(handle)][:200]
    factory = functools.partial(TransformerEmbedder, None)
    settings = ONE_ACTOR
    with new_cache(tmp_path / "local", factory()) as here, new_cache(tmp_path / "ray", factory()) as there:
        expected = vectors(here, embed_missing(factory(), here, pool))
        got = vectors(there, embed_missing_ray(factory, there, pool, settings=settings))
    cosine = (expected * got).sum(axis=1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.9999


def scoring_setup(tmp_path: Path) -> tuple[EmbeddingCache, npt.NDArray[np.intp], ProxyClassifier, Any]:
    embedder = HashingEmbedder(dim=32)
    pool = texts(2500, seed=2)
    cache = new_cache(tmp_path, embedder)
    rows = embed_missing(embedder, cache, pool)
    rows = np.concatenate([rows, rows[:300]])  # repeated vectors: exact score ties for the keys to break
    labels = np.asarray(["billing", "delivery", "fraud"])[np.arange(90) % 3]
    classifier = ProxyClassifier(device="cpu", epochs=40).fit(cache.get(rows[:90]), labels)
    counts = np.asarray([30, 30, 30], dtype=np.intp)
    score = functools.partial(prefilter_scores, "margin_diverse", label_counts=counts)
    return cache, rows[90:], classifier, score


@pytest.mark.parametrize("mode", ["shared_path", "object_store"])
def test_shortlist_on_ray_equals_in_process(local_ray: Any, tmp_path: Path, mode: str) -> None:
    cache, rows, classifier, score = scoring_setup(tmp_path)
    plan = Prefilter(n_top=120, n_sample=150)
    here_rng, there_rng = np.random.default_rng(7), np.random.default_rng(7)
    as_the_daemon = functools.partial(classifier.predict_proba, dtype=SCORING_DTYPE)  # as daemon.selection
    expected = shortlist(cache, rows, plan, predict_proba=as_the_daemon, score=score, rng=here_rng, chunk_rows=1000)
    settings = ONE_ACTOR.model_copy(update={"vectors": mode})
    got = shortlist_ray(cache, rows, plan, head=export_head(classifier), score=score, rng=there_rng,
                        settings=settings)
    assert expected.proba is not None and got.proba is not None
    np.testing.assert_array_equal(got.positions, expected.positions)
    np.testing.assert_allclose(got.proba, expected.proba, rtol=0, atol=1e-12)
    np.testing.assert_allclose(score(got.proba), score(expected.proba), rtol=0, atol=1e-12)
    assert there_rng.random() == here_rng.random()  # stage (b) draws the same numbers next
    cache.close()


def test_auto_vectors_use_the_shared_path_on_a_local_instance(local_ray: Any) -> None:
    assert vector_mode(local_ray, RAY_SETTINGS) == "shared_path"
    client = RAY_SETTINGS.model_copy(update={"ray_address": "ray://head:10001"})
    assert vector_mode(local_ray, client) == "object_store"


def loop_world(tmp_path: Path, backend: str, **scaleout: Any) -> tuple[LoopContext, FakeConnector]:
    tmp_path.mkdir()
    settings = load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/state/db.sqlite", "data_dir": str(tmp_path / "state")},
        label_studio={"max_waiting_tasks": 40},
        loop={"batch_size": 12, "classes": ["billing", "delivery", "fraud"], "min_new_labels": 1},
        model={"epochs": 40, "cv_folds": 3},
        scaleout=ONE_ACTOR.model_copy(update={"backend": backend, **scaleout}).model_dump(),
    )
    with (tmp_path / "pool.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((f"it-{i:04d}", text) for i, text in enumerate(texts(1500, seed=3)[:1500]))
    fake = FakeConnector()
    ctx = LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=fake,
                      embedder_factory=functools.partial(HashingEmbedder, 32))
    add_pool_file(ctx.engine, tmp_path / "pool.csv", pool=settings.pool, data_dir=settings.store.data_dir)
    ensure_project(ctx)
    return ctx, fake


def two_rounds(ctx: LoopContext, fake: FakeConnector) -> list[tuple[str, float]]:
    classes = ["billing", "delivery", "fraud"]
    first = run_cycle(ctx)
    assert first.batch_id is not None
    with Session(ctx.engine) as session:
        for item in session.exec(select(BatchItem).where(BatchItem.batch_id == first.batch_id)):
            fake.annotate(item.item_id, classes[int(item.item_id[-4:]) % 3])
    second = run_cycle(ctx)
    assert second.batch_id is not None
    with Session(ctx.engine) as session:
        picked = session.exec(select(BatchItem).where(BatchItem.batch_id == second.batch_id)).all()
        assert all(session.exec(select(PoolItem.is_embedded)).all())
    return sorted((item.item_id, item.score) for item in picked)


def test_the_loop_picks_the_same_batch_with_either_backend(
    local_ray: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    here = two_rounds(*loop_world(tmp_path / "local", "local"))
    assert not [r for r in caplog.records if r.name == "daemon.scaleout_ray"]
    with caplog.at_level(logging.INFO, logger="daemon.scaleout_ray"):
        there = two_rounds(*loop_world(tmp_path / "ray", "ray"))
    ran = " ".join(r.getMessage() for r in caplog.records if r.name == "daemon.scaleout_ray")
    assert "ray: embedding 1500 texts" in ran and "ray: scoring" in ran  # both hooks took the Ray path
    assert [item_id for item_id, _ in there] == [item_id for item_id, _ in here]
    np.testing.assert_allclose([s for _, s in there], [s for _, s in here], rtol=0, atol=1e-9)


def test_a_damaged_vector_fails_a_ray_cycle_naming_its_shard_as_in_process(
    local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN row failed a Ray cycle with "the Ray scoring job failed" and a page of Ray's traceback:
    the worker's NonFiniteInput reaches the coordinator without its cause, so selection never asked
    the cache which shard was damaged, as it does in process."""
    from tests.unit.daemon.test_loop import damage_a_candidate

    ctx, fake = loop_world(tmp_path / "ray", "ray")
    monkeypatch.setattr("daemon.cycle.update_stability", lambda *_: None)  # its sample would read the row
    first = run_cycle(ctx)
    with Session(ctx.engine) as session:
        for item in session.exec(select(BatchItem).where(BatchItem.batch_id == first.batch_id)):
            fake.annotate(item.item_id, ["billing", "delivery", "fraud"][int(item.item_id[-4:]) % 3])
    shard, row = damage_a_candidate(ctx)
    with pytest.raises(CacheError, match=rf"{shard.name} is damaged: row {row} holds NaN or inf.*labelloop embed"):
        run_cycle(ctx)


def test_embedding_the_pool_on_ray_reports_progress_in_pool_items(local_ray: Any, tmp_path: Path) -> None:
    """``labelloop embed`` draws its bar and counts an interruption from these calls (2 jobs of 1,000)."""
    ctx, _ = loop_world(tmp_path / "pool", "ray", embed_job_rows=1000)
    seen: list[tuple[int, int]] = []

    def interrupt_once_some_are_done(done: int, total: int) -> None:
        seen.append((done, total))
        if done > 0:
            raise KeyboardInterrupt  # Ctrl-C once the first job's vectors are in the cache

    with pytest.raises(KeyboardInterrupt):
        embed_pool_ray(ctx, progress=interrupt_once_some_are_done)
    assert seen == [(0, 1500), (1000, 1500)]  # what "interrupted after N items" reads
    seen.clear()
    # through embed_pool, as `labelloop embed` calls it: it used to drop the callback on Ray
    assert embed_pool(ctx, progress=lambda done, total: seen.append((done, total))) == 1500
    assert seen[0] == (0, 1500) and seen[-1] == (1500, 1500)
    assert (1000, 1500) in seen and seen == sorted(seen)
