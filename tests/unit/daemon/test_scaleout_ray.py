"""The Ray scale-out backend against the in-process path, on one local Ray instance.

Every Ray test shares one module-scoped local instance (about 7 s to start on 2 cores), and each
Ray Data job starts its actors afresh (2-4 s), so the module runs in well under a minute.
"""

from __future__ import annotations

import csv
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from daemon.errors import ConfigError
from daemon.scaleout_ray import connect, embed_missing_ray
from daemon.settings import ScaleoutSettings
from models.cache import EmbeddingCache, embed_missing, model_key
from models.embedder import TransformerEmbedder
from models.hashing import HashingEmbedder

try:
    import ray
except ImportError:
    ray = None

DEMO_POOL = Path(__file__).resolve().parents[3] / "daemon" / "demo_data" / "pool.csv"
RAY_SETTINGS = ScaleoutSettings(backend="ray", actors=2, encode_batch_rows=64, score_chunk_rows=700)


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


def test_embedding_on_ray_equals_in_process(local_ray: Any, tmp_path: Path) -> None:
    pool = texts(600)
    factory = functools.partial(HashingEmbedder, 32)
    with new_cache(tmp_path / "local", factory()) as here, new_cache(tmp_path / "ray", factory()) as there:
        expected = vectors(here, embed_missing(factory(), here, pool))
        rows = embed_missing_ray(factory, there, pool, settings=RAY_SETTINGS, store_chunk_rows=200)
        np.testing.assert_array_equal(vectors(there, rows), expected)
        assert len(there) == len(set(pool))  # each distinct text stored once


def test_interrupted_embedding_keeps_its_chunks_and_resumes(local_ray: Any, tmp_path: Path) -> None:
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
        assert len(cache) == distinct
        np.testing.assert_array_equal(vectors(cache, rows), factory().encode(pool).astype(np.float16))


@pytest.mark.slow
def test_minilm_on_ray_matches_in_process(local_ray: Any, tmp_path: Path) -> None:
    with DEMO_POOL.open(newline="", encoding="utf-8") as handle:
        pool = [row["text"] for row in csv.DictReader(handle)][:200]
    factory = functools.partial(TransformerEmbedder, None)
    settings = RAY_SETTINGS.model_copy(update={"actors": 1})
    with new_cache(tmp_path / "local", factory()) as here, new_cache(tmp_path / "ray", factory()) as there:
        expected = vectors(here, embed_missing(factory(), here, pool))
        got = vectors(there, embed_missing_ray(factory, there, pool, settings=settings))
    cosine = (expected * got).sum(axis=1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.9999

