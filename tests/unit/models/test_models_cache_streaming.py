"""Streaming the embedding cache: same vectors as get(), read without growing the process's maps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.cache import EmbeddingCache

D = 5


def filled(tmp_path: Path, n: int = 230, shard_rows: int = 64) -> EmbeddingCache:
    cache = EmbeddingCache(tmp_path, model_key="m", dim=D, shard_rows=shard_rows)
    vectors = np.random.default_rng(0).normal(size=(n, D)).astype(np.float32)
    cache.put([f"{i:064x}" for i in range(n)], vectors)
    return cache


@pytest.mark.parametrize(
    "rows",
    [
        np.arange(230),  # a whole cache in order: positioned reads across shard boundaries
        np.arange(3, 200, 2),  # candidates with gaps: their dense span is read, one-row gaps into scratch
        np.r_[60:63, 65:70, 127:130, 131:140, 190:229],  # runs and gaps that cross shard ends (every 64 rows)
        np.arange(229, -1, -1),  # reversed
        np.array([0, 229, 5, 128, 64, 63]),  # scattered: through the maps
        np.array([], dtype=np.intp),
    ],
)
def test_stored_chunks_equal_get(tmp_path: Path, rows: npt.NDArray[np.intp]) -> None:
    with filled(tmp_path) as cache:
        expected = cache.get(rows)
        for chunk_rows in (1, 7, 64, 1000):
            stored = list(cache.iter_stored_chunks(rows, chunk_rows))
            converted = list(cache.iter_chunks(rows, chunk_rows))
            assert all(v.dtype == np.float16 for _, v in stored)
            assert all(v.dtype == np.float32 for _, v in converted)
            assert all(len(v) <= chunk_rows for _, v in stored)
            got = np.concatenate([v for _, v in stored]) if stored else np.empty((0, D), np.float16)
            np.testing.assert_array_equal(got.astype(np.float32), expected)
            spans = [s for s, _ in converted]
            assert [(s.start, s.stop) for s in spans] == [
                (a, min(a + chunk_rows, len(rows))) for a in range(0, len(rows), chunk_rows)
            ]


def test_short_reads_are_resumed_inside_a_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may return fewer bytes than asked, anywhere; every row still arrives whole and in place."""
    real_preadv = os.preadv
    calls: list[int] = []

    def stingy(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        budget, taken = 13, list[memoryview]()  # 13 bytes a call: never a whole row of 5 float16 values
        for buffer in buffers:
            taken.append(buffer[: min(len(buffer), budget)])
            budget -= len(taken[-1])
        return real_preadv(fd, [b for b in taken if len(b)], offset)

    rows = np.r_[3:40, 42:60, 61:70, 72:100]  # dense: one scattered read of the span per shard
    with filled(tmp_path) as cache:
        expected = cache.get(rows)
        monkeypatch.setattr("models._cache_files.os.preadv", stingy)
        got = np.concatenate([v for _, v in cache.iter_stored_chunks(rows, chunk_rows=1000)])
    np.testing.assert_array_equal(got.astype(np.float32), expected)
    assert len(calls) > 20 and max(calls) > 1  # many short reads, each handed several buffers


def test_a_shard_cut_short_under_a_reader_is_an_error_not_zeros(tmp_path: Path) -> None:
    with filled(tmp_path) as writer:
        reader = EmbeddingCache(tmp_path, model_key="m", dim=D, readonly=True)
        shard = next(tmp_path.rglob("shard-00001.f16"))
        os.truncate(shard, 10 * D * 2)  # rows 74.. are gone from the file the reader counted on
        with pytest.raises(OSError, match="shard-00001"):
            list(reader.iter_stored_chunks(np.r_[60:70, 80:90]))
        reader.close()
        del writer


def test_reads_map_no_shard_and_leave_no_file_open(tmp_path: Path) -> None:
    """Pages of a memory-mapped shard would stay in the reader's RSS; positioned reads leave nothing."""
    with filled(tmp_path) as cache:
        before = set(os.listdir("/proc/self/fd"))
        for _ in cache.iter_chunks(np.arange(0, 230, 3), chunk_rows=50):
            pass
        cache.get(np.array([1, 200, 5, 6, 7, 64]))
        assert set(os.listdir("/proc/self/fd")) <= before
        maps = Path("/proc/self/maps").read_text()
        assert "shard-" not in maps


def test_streaming_refuses_bad_rows(tmp_path: Path) -> None:
    with filled(tmp_path) as cache:
        with pytest.raises(ValueError, match="rows must be in"):
            list(cache.iter_stored_chunks(np.array([0, 230])))
        with pytest.raises(ValueError, match="1-D"):
            list(cache.iter_stored_chunks(np.zeros((2, 2), dtype=np.intp)))
        with pytest.raises(ValueError, match="chunk_rows"):
            list(cache.iter_stored_chunks(np.array([0]), chunk_rows=0))


def test_a_reader_streams_what_a_writer_appended(tmp_path: Path) -> None:
    with filled(tmp_path, n=100) as writer:
        reader = EmbeddingCache(tmp_path, model_key="m", dim=D, readonly=True)
        extra = np.ones((50, D), dtype=np.float32) / np.sqrt(D)
        writer.put([f"{i:064x}" for i in range(100, 150)], extra)
        with pytest.raises(ValueError):
            list(reader.iter_stored_chunks(np.arange(150)))
        reader.refresh()
        got = np.concatenate([v for _, v in reader.iter_chunks(np.arange(150), chunk_rows=40)])
        np.testing.assert_array_equal(got, writer.get(np.arange(150)))
        reader.close()
