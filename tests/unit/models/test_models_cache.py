"""EmbeddingCache: round trips, dedup, reopening, torn tails, readers, and embed_missing's resume."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models._types import Float32Array
from models.cache import EmbeddingCache, content_hash, embed_missing, model_key
from models.errors import CacheError
from models.hashing import HashingEmbedder
from tests.doubles import CountingEmbedder

DIM = 8
KEY = "test-model"


def hashes_of(*texts: str) -> list[str]:
    return [content_hash(t) for t in texts]


def unit_rows(n: int, seed: int = 0) -> Float32Array:
    rows = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    normalised: Float32Array = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def open_cache(root: Path, **kwargs: object) -> EmbeddingCache:
    return EmbeddingCache(root, model_key=KEY, dim=DIM, **kwargs)  # type: ignore[arg-type]


def test_content_hash_is_sha256_of_utf8() -> None:
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash("é") != content_hash("e")


def test_round_trip(tmp_path: Path) -> None:
    vectors = unit_rows(5)
    with open_cache(tmp_path) as cache:
        rows = cache.put(hashes_of("a", "b", "c", "d", "e"), vectors)
        assert list(rows) == [0, 1, 2, 3, 4]
        assert len(cache) == 5
        np.testing.assert_array_equal(cache.lookup(hashes_of("c", "zzz", "a")), [2, -1, 0])
        got = cache.get(np.array([4, 0, 2]))
        assert got.dtype == np.float32 and got.shape == (3, DIM)
        np.testing.assert_allclose(got, vectors[[4, 0, 2]], atol=1e-3)  # stored as float16
        assert cache.get(np.array([], dtype=np.intp)).shape == (0, DIM)


def test_duplicates_are_stored_once(tmp_path: Path) -> None:
    vectors = unit_rows(4)
    with open_cache(tmp_path) as cache:
        rows = cache.put(hashes_of("a", "b", "a", "c"), vectors)
        assert list(rows) == [0, 1, 0, 2]
        again = cache.put(hashes_of("c", "d", "a"), unit_rows(3, seed=1))
        assert list(again) == [2, 3, 0]
        assert len(cache) == 4
        np.testing.assert_allclose(cache.get(np.array([0])), vectors[[0]], atol=1e-3)  # first write wins


def test_reopen_after_close_keeps_rows_and_appends(tmp_path: Path) -> None:
    vectors = unit_rows(6)
    with open_cache(tmp_path, shard_rows=4) as cache:
        cache.put(hashes_of("a", "b", "c"), vectors[:3])
    with open_cache(tmp_path, shard_rows=999) as cache:  # an existing cache keeps its shard size
        assert cache.shard_rows == 4
        assert len(cache) == 3
        cache.put(hashes_of("d", "e", "f"), vectors[3:])  # crosses into the second shard
    with open_cache(tmp_path) as cache:
        rows = cache.lookup(hashes_of("a", "b", "c", "d", "e", "f"))
        np.testing.assert_array_equal(rows, np.arange(6))
        np.testing.assert_allclose(cache.get(rows), vectors, atol=1e-3)
    assert sorted(p.name for p in (tmp_path / KEY).glob("shard-*")) == ["shard-00000.f16", "shard-00001.f16"]


def test_iter_chunks_streams_the_same_vectors(tmp_path: Path) -> None:
    with open_cache(tmp_path, shard_rows=5) as cache:
        cache.put(hashes_of(*"abcdefghijkl"), unit_rows(12))
        rows = np.array([11, 0, 5, 5, 3, 7, 9, 1, 2])
        chunks = list(cache.iter_chunks(rows, chunk_rows=4))
        assert [span for span, _ in chunks] == [slice(0, 4), slice(4, 8), slice(8, 9)]
        np.testing.assert_array_equal(np.vstack([v for _, v in chunks]), cache.get(rows))


def test_torn_vector_tail_is_cut_on_open(tmp_path: Path) -> None:
    vectors = unit_rows(3)
    with open_cache(tmp_path) as cache:
        cache.put(hashes_of("a", "b", "c"), vectors)
    shard = tmp_path / KEY / "shard-00000.f16"
    with shard.open("ab") as handle:  # killed after writing 1.5 vector rows, before their keys
        handle.write(b"\x01" * (DIM * 2 + DIM))
    with open_cache(tmp_path) as cache:
        assert len(cache) == 3
        assert shard.stat().st_size == 3 * DIM * 2
        np.testing.assert_allclose(cache.get(np.arange(3)), vectors, atol=1e-3)
        cache.put(hashes_of("d"), unit_rows(1, seed=7))
        np.testing.assert_allclose(cache.get(np.array([3])), unit_rows(1, seed=7), atol=1e-3)


def test_torn_key_tail_loses_only_the_incomplete_row(tmp_path: Path) -> None:
    vectors = unit_rows(4)
    with open_cache(tmp_path) as cache:
        cache.put(hashes_of("a", "b", "c", "d"), vectors)
    keys = tmp_path / KEY / "keys.bin"
    with keys.open("r+b") as handle:  # the last key was half written
        handle.truncate(3 * 32 + 17)
    with open_cache(tmp_path) as cache:
        assert len(cache) == 3
        np.testing.assert_array_equal(cache.lookup(hashes_of("a", "b", "c", "d")), [0, 1, 2, -1])
        np.testing.assert_allclose(cache.get(np.arange(3)), vectors[:3], atol=1e-3)
        assert cache.put(hashes_of("d"), vectors[3:])[0] == 3
    assert keys.stat().st_size == 4 * 32


def test_reader_ignores_a_torn_tail_without_touching_files(tmp_path: Path) -> None:
    with open_cache(tmp_path) as cache:
        cache.put(hashes_of("a", "b"), unit_rows(2))
    shard = tmp_path / KEY / "shard-00000.f16"
    with shard.open("ab") as handle:
        handle.write(b"\x00" * 5)
    reader = open_cache(tmp_path, readonly=True)
    assert len(reader) == 2
    assert shard.stat().st_size == 2 * DIM * 2 + 5
    with pytest.raises(CacheError, match="read-only"):
        reader.put(hashes_of("c"), unit_rows(1))
    reader.close()


def test_reader_runs_beside_the_writer_and_refreshes(tmp_path: Path) -> None:
    writer = open_cache(tmp_path)
    writer.put(hashes_of("a"), unit_rows(1))
    reader = open_cache(tmp_path, readonly=True)
    writer.put(hashes_of("b", "c"), unit_rows(2, seed=1))
    assert len(reader) == 1
    reader.refresh()
    assert len(reader) == 3
    np.testing.assert_array_equal(reader.get(np.arange(3)), writer.get(np.arange(3)))
    reader.close()
    writer.close()


def test_a_reader_of_a_missing_cache_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    with open_cache(tmp_path, readonly=True) as reader:
        assert len(reader) == 0
        np.testing.assert_array_equal(reader.lookup(hashes_of("a")), [-1])
    assert not (tmp_path / KEY).exists()


def test_another_process_holding_the_lock_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY).mkdir()
    fd = os.open(tmp_path / KEY / "writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file description acts as another process
        os.pwrite(fd, b"4242\n", 0)
        with pytest.raises(CacheError, match="pid 4242"):
            open_cache(tmp_path)
    finally:
        os.close(fd)
    open_cache(tmp_path).close()


def test_two_writers_in_one_process_do_not_clobber_each_other(tmp_path: Path) -> None:
    first, second = open_cache(tmp_path), open_cache(tmp_path)
    first.put(hashes_of("a", "b"), unit_rows(2))
    second.put(hashes_of("b", "c"), unit_rows(2, seed=1))
    first.put(hashes_of("d"), unit_rows(1, seed=2))
    first.close()
    second.close()
    with open_cache(tmp_path) as cache:
        np.testing.assert_array_equal(cache.lookup(hashes_of("a", "b", "c", "d")), [0, 1, 2, 3])


def test_a_cache_of_another_width_is_refused(tmp_path: Path) -> None:
    open_cache(tmp_path).close()
    with pytest.raises(CacheError, match="dim"):
        EmbeddingCache(tmp_path, model_key=KEY, dim=DIM + 1)


@pytest.mark.parametrize(
    ("hashes", "vectors"),
    [
        (["not-hex"], unit_rows(1)),
        (hashes_of("a"), unit_rows(2)),
        (hashes_of("a"), np.full((1, DIM), np.nan)),
        (hashes_of("a"), np.full((1, DIM), 1e6)),
    ],
)
def test_bad_puts_write_nothing(tmp_path: Path, hashes: list[str], vectors: Float32Array) -> None:
    with open_cache(tmp_path) as cache:
        with pytest.raises(ValueError):
            cache.put(hashes, vectors)
        assert len(cache) == 0


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_key"):
        EmbeddingCache(tmp_path, model_key="../escape", dim=DIM)
    with open_cache(tmp_path) as cache:
        cache.put(hashes_of("a"), unit_rows(1))
        with pytest.raises(ValueError, match="rows must be in"):
            cache.get(np.array([0, -1]))
        with pytest.raises(ValueError, match="chunk_rows"):
            list(cache.iter_chunks(np.array([0]), chunk_rows=0))


def test_model_key_is_filesystem_safe_and_tracks_the_revision() -> None:
    key = model_key(HashingEmbedder(dim=16, seed=0))
    assert key.startswith("hashing-dim16-")
    assert all(c.isalnum() or c in "._-" for c in key)
    assert key != model_key(HashingEmbedder(dim=16, seed=1))


def test_embed_missing_encodes_only_distinct_misses(tmp_path: Path) -> None:
    embedder = CountingEmbedder(dim=DIM)
    texts = ["a b", "c d", "a b", "e f"]
    with EmbeddingCache(tmp_path, model_key=model_key(embedder), dim=DIM) as cache:
        rows = embed_missing(embedder, cache, texts)
        assert sorted(embedder.encoded) == ["a b", "c d", "e f"]
        assert rows[0] == rows[2] and len(set(rows.tolist())) == 3
        np.testing.assert_allclose(cache.get(rows), HashingEmbedder(dim=DIM).encode(texts), atol=1e-3)
        embedder.encoded.clear()
        again = embed_missing(embedder, cache, ["e f", "g h", "a b"])
        assert embedder.encoded == ["g h"]
        assert again[0] == rows[3] and again[2] == rows[0]


def test_embed_missing_resumes_after_a_failure_midway(tmp_path: Path) -> None:
    texts = [f"text number {i}" for i in range(10)]
    progress: list[tuple[int, int]] = []
    failing = CountingEmbedder(dim=DIM, fail_on_call=3)
    with EmbeddingCache(tmp_path, model_key=model_key(failing), dim=DIM) as cache:
        with pytest.raises(RuntimeError, match="killed midway"):
            embed_missing(failing, cache, texts, batch_rows=3, progress=lambda d, n: progress.append((d, n)))
        assert progress == [(3, 10), (6, 10)]
        assert len(cache) == 6  # the two chunks before the failure are kept
    healthy = CountingEmbedder(dim=DIM)
    with EmbeddingCache(tmp_path, model_key=model_key(healthy), dim=DIM) as cache:
        rows = embed_missing(healthy, cache, texts, batch_rows=3)
        assert healthy.encoded == texts[6:]
        np.testing.assert_allclose(cache.get(rows), HashingEmbedder(dim=DIM).encode(texts), atol=1e-3)


def test_embed_missing_refuses_a_cache_of_another_model(tmp_path: Path) -> None:
    with open_cache(tmp_path) as cache, pytest.raises(ValueError, match="does not match"):
        embed_missing(CountingEmbedder(dim=DIM), cache, ["x"])


_APPEND_FOREVER = """
import sys
from pathlib import Path
from models.cache import EmbeddingCache, content_hash
from models.hashing import HashingEmbedder
from tests.doubles import CountingEmbedder
embedder = HashingEmbedder(dim=DIM)
with EmbeddingCache(Path(sys.argv[1]), model_key="killed", dim=DIM, shard_rows=50) as cache:
    start = 0
    while True:
        texts = [f"text {i}" for i in range(start, start + 7)]
        cache.put([content_hash(t) for t in texts], embedder.encode(texts))
        start += 7
        if start == 140:
            print("ready", flush=True)
"""


def test_a_writer_killed_mid_append_leaves_a_readable_cache(tmp_path: Path) -> None:
    script = _APPEND_FOREVER.replace("DIM", str(DIM))
    repo = Path(__file__).resolve().parents[3]
    command = [sys.executable, "-c", script, str(tmp_path)]
    with subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(0.05)  # let it get into the middle of some later append
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    with EmbeddingCache(tmp_path, model_key="killed", dim=DIM) as cache:
        n = len(cache)
        assert n >= 140
        texts = [f"text {i}" for i in range(n)]
        rows = cache.lookup(hashes_of(*texts))
        np.testing.assert_array_equal(rows, np.arange(n))
        np.testing.assert_allclose(cache.get(rows), HashingEmbedder(dim=DIM).encode(texts), atol=1e-3)
        assert (tmp_path / "killed" / "keys.bin").stat().st_size == 32 * n
        cache.put(hashes_of("after the crash"), unit_rows(1))
        assert len(cache) == n + 1
