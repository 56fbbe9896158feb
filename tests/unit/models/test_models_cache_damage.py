"""EmbeddingCache on damaged files: a short middle shard, a cut last shard, a deleted folder, NaN bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from models._types import Float32Array
from models.cache import EmbeddingCache, content_hash
from models.errors import CacheError

DIM = 4
KEY = "m"
ROWS, SHARD_ROWS = 50, 10  # five full shards


def hashes(n: int, start: int = 0) -> list[str]:
    return [content_hash(f"text {i}") for i in range(start, start + n)]


def vectors(n: int, seed: int = 0) -> Float32Array:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def filled(root: Path) -> Path:
    """A closed cache of ROWS rows in shards of SHARD_ROWS; return its folder."""
    with EmbeddingCache(root, model_key=KEY, dim=DIM, shard_rows=SHARD_ROWS) as cache:
        cache.put(hashes(ROWS), vectors(ROWS))
    return root / KEY


def shard(folder: Path, number: int) -> Path:
    return folder / f"shard-{number:05d}.f16"


def sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name != "writer.lock"}


@pytest.mark.parametrize("readonly", [False, True])
def test_a_short_middle_shard_is_refused_naming_it_and_nothing_is_cut(tmp_path: Path, readonly: bool) -> None:
    """It was taken for a torn tail: the writer cut keys.bin there and emptied every intact shard after it."""
    folder = filled(tmp_path)
    os.truncate(shard(folder, 2), 5 * DIM * 2)
    before = sizes(folder)
    with pytest.raises(CacheError, match=r"shard-00002\.f16 is damaged.*delete the folder"):
        EmbeddingCache(tmp_path, model_key=KEY, dim=DIM, readonly=readonly)
    assert sizes(folder) == before


def test_a_deleted_middle_shard_is_refused_too(tmp_path: Path) -> None:
    folder = filled(tmp_path)
    shard(folder, 1).unlink()
    with pytest.raises(CacheError, match=r"shard-00001\.f16 is damaged"):
        EmbeddingCache(tmp_path, model_key=KEY, dim=DIM)
    assert shard(folder, 4).stat().st_size == SHARD_ROWS * DIM * 2


def test_a_cut_last_shard_drops_only_the_rows_it_lost(tmp_path: Path) -> None:
    folder = filled(tmp_path)
    os.truncate(shard(folder, 4), 3 * DIM * 2)
    with EmbeddingCache(tmp_path, model_key=KEY, dim=DIM) as cache:
        assert len(cache) == 43
        rows = cache.lookup(hashes(ROWS))
        assert list(rows[:43]) == list(range(43)) and (rows[43:] == -1).all()
        np.testing.assert_allclose(cache.get(rows[:43]), vectors(ROWS)[:43], atol=1e-2)
        cache.put(hashes(7, start=43), vectors(ROWS)[43:])  # embedded again, where they were
    assert (folder / "keys.bin").stat().st_size == ROWS * 32


def test_a_folder_deleted_under_an_open_writer_is_read_again_and_rebuilt(tmp_path: Path) -> None:
    """The writer kept its stale index: it appended at row 50 of a new shard set, and wrote no meta.json."""
    cache = EmbeddingCache(tmp_path, model_key=KEY, dim=DIM, shard_rows=SHARD_ROWS)
    cache.put(hashes(ROWS), vectors(ROWS))
    shutil.rmtree(tmp_path / KEY)
    cache.refresh()
    assert len(cache) == 0 and (cache.lookup(hashes(3)) == -1).all()
    assert list(cache.put(hashes(3), vectors(3))) == [0, 1, 2]
    cache.close()
    with EmbeddingCache(tmp_path, model_key=KEY, dim=DIM, readonly=True) as reader:
        assert reader.shard_rows == SHARD_ROWS and len(reader) == 3
        np.testing.assert_allclose(reader.get(np.arange(3)), vectors(3), atol=1e-2)


def test_a_reader_sees_a_cut_cache_shrink_instead_of_reading_past_its_end(tmp_path: Path) -> None:
    folder = filled(tmp_path)
    reader = EmbeddingCache(tmp_path, model_key=KEY, dim=DIM, readonly=True)
    assert len(reader) == ROWS
    os.truncate(shard(folder, 4), 0)
    reader.refresh()
    assert len(reader) == 40 and reader.lookup(hashes(1, start=45))[0] == -1
    reader.close()


def test_nan_bytes_in_a_shard_are_an_error_naming_it(tmp_path: Path) -> None:
    """NaN rows reached the classifier: ``labelloop predict`` died with "X contains NaN or inf"."""
    folder = filled(tmp_path)
    with shard(folder, 3).open("r+b") as handle:  # rows 34 and 35
        handle.seek(4 * DIM * 2)
        handle.write(b"\xff" * (2 * DIM * 2))
    with EmbeddingCache(tmp_path, model_key=KEY, dim=DIM, readonly=True) as cache:
        np.testing.assert_allclose(cache.get(np.arange(30)), vectors(ROWS)[:30], atol=1e-2)
        with pytest.raises(CacheError, match=r"shard-00003\.f16 is damaged: row 34 holds NaN or inf.*delete"):
            cache.get(np.array([1, 34, 40]))


def test_check_finite_names_the_damaged_shard_only_when_the_rows_reach_it(tmp_path: Path) -> None:
    """The scoring pass streams rows unchecked; on a non-finite score it asks the cache which shard is damaged."""
    folder = filled(tmp_path)
    with shard(folder, 3).open("r+b") as handle:  # row 34
        handle.seek(4 * DIM * 2)
        handle.write(b"\xff\xff")
    with EmbeddingCache(tmp_path, model_key=KEY, dim=DIM, readonly=True) as cache:
        cache.check_finite(np.arange(30), chunk_rows=7)
        with pytest.raises(CacheError, match=r"shard-00003\.f16 is damaged: row 34 holds NaN or inf"):
            cache.check_finite(np.array([2, 40, 34, 5]), chunk_rows=2)
