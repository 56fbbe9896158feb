"""File-level helpers of the embedding cache: meta.json, count complete rows, cut torn tails, positioned I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models._digest_index import DIGEST_BYTES
from models._types import IntArray
from models.errors import CacheError

__all__ = ["ShardFiles", "assign_new_rows", "committed_rows", "read_into", "read_keys", "read_or_create_meta",
           "repair_tail", "write_at"]

_FORMAT = 1
_IOV_MAX = 1024  # buffers per preadv call: POSIX's minimum for IOV_MAX is 16, Linux's is 1024


def read_or_create_meta(directory: Path, *, dim: int, shard_rows: int, create: bool) -> int:
    """Return the cache's rows per shard from ``meta.json``, writing it first (when ``create``) if absent.

    Raises:
        CacheError: the cache on disk has another format or ``dim``.
    """
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT or meta.get("dim") != dim:
            raise CacheError(
                f"cache {directory} holds format {meta.get('format')} dim {meta.get('dim')}, "
                f"expected format {_FORMAT} dim {dim}; use another model_key or root"
            )
        return int(meta["shard_rows"])
    if create:
        meta = {"format": _FORMAT, "dim": dim, "dtype": "float16", "shard_rows": shard_rows}
        partial = meta_path.with_suffix(".tmp")
        partial.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(partial, meta_path)
    return shard_rows


class ShardFiles:
    """Read-only descriptors of a cache's shard files, opened on first use and closed on exit."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fds: dict[int, int] = {}

    def __enter__(self) -> ShardFiles:
        return self

    def __exit__(self, *_exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def fd(self, shard: int) -> int:
        found = self._fds.get(shard)
        if found is None:
            found = self._fds[shard] = os.open(_shard_path(self._directory, shard), os.O_RDONLY)
        return found


def committed_rows(directory: Path, *, row_bytes: int, shard_rows: int) -> int:
    """Rows that have both a complete key and a complete vector.

    Vectors are fsynced before their keys, so a crash leaves vector rows past the last key (a torn
    tail, cut by :func:`repair_tail`), never keys past the vectors. Keyed rows whose vectors are gone
    at the end of the rows are dropped with their keys (they are embedded again); keyed rows missing
    *before* intact ones are damage, and cutting there would throw the intact shards away.

    Raises:
        CacheError: a shard lacks keyed rows that later shards follow (cut short or deleted).
    """
    keys = _size(directory / "keys.bin") // DIGEST_BYTES
    counts = [min(_size(_shard_path(directory, shard)) // row_bytes, shard_rows)
              for shard in range(-(-keys // shard_rows))]
    for shard, in_shard in enumerate(counts):
        needed = min(shard_rows, keys - shard * shard_rows)
        if in_shard >= needed:
            continue
        if any(counts[shard + 1 :]):
            path = _shard_path(directory, shard)
            raise CacheError(
                f"embedding cache shard {path} is damaged: it holds {in_shard} of its {needed} rows and later "
                f"shards follow; delete the folder {directory} and run `labelloop embed` to embed again"
            )
        return shard * shard_rows + in_shard
    return keys


def repair_tail(directory: Path, size: int, *, row_bytes: int, shard_rows: int) -> int:
    """Truncate ``keys.bin`` and every shard to exactly ``size`` rows; return the bytes dropped.

    Only the writer calls this, and only bytes past ``size`` rows go, which readers never read.
    """
    dropped = _truncate(directory / "keys.bin", size * DIGEST_BYTES)
    shard = 0
    while (path := _shard_path(directory, shard)).exists():
        keep_rows = min(max(size - shard * shard_rows, 0), shard_rows)
        dropped += _truncate(path, keep_rows * row_bytes)
        shard += 1
    return dropped


def read_keys(path: Path, *, start: int, stop: int) -> npt.NDArray[np.uint8]:
    """Read the digests of rows ``start..stop-1``: ``(stop - start, 32)`` uint8."""
    with path.open("rb") as handle:
        handle.seek(start * DIGEST_BYTES)
        raw = handle.read((stop - start) * DIGEST_BYTES)
    if len(raw) != (stop - start) * DIGEST_BYTES:
        raise OSError(f"{path} is shorter than {stop} rows")
    return np.frombuffer(raw, dtype=np.uint8).reshape(stop - start, DIGEST_BYTES).copy()


def read_into(fd: int, buffers: list[memoryview], offset: int, *, path: Path) -> None:
    """Fill ``buffers``, in order, from the bytes of ``fd`` that start at ``offset``.

    One scattered positioned read (``preadv``) per :data:`_IOV_MAX` buffers, repeated after a
    short read (a read may stop anywhere, even inside a buffer).

    Raises:
        OSError: the file ends before every buffer is full.
    """
    pending = [buffer for buffer in buffers if len(buffer)]
    first = 0
    while first < len(pending):
        got = os.preadv(fd, pending[first : first + _IOV_MAX], offset)
        if got <= 0:
            raise OSError(f"{path} ended at byte {offset}, before the rows asked for")
        offset += got
        while first < len(pending) and got >= len(pending[first]):
            got -= len(pending[first])
            first += 1
        if got:
            pending[first] = pending[first][got:]


def write_at(path: Path, offset: int, values: npt.NDArray[np.generic]) -> None:
    """Write ``values`` at byte ``offset`` (cutting anything after it first) and fsync.

    Writing at the committed offset rather than the file's end means a write that failed half
    way earlier in this process cannot shift later rows.
    """
    data = memoryview(np.ascontiguousarray(values).tobytes())
    is_new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, offset)
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], offset + written)
        os.fsync(fd)
    finally:
        os.close(fd)
    if is_new:
        _fsync_directory(path.parent)


def assign_new_rows(digests: npt.NDArray[np.uint8], rows: IntArray, *, first_row: int) -> list[int]:
    """Give each distinct absent digest the next free row, in place in ``rows``; return positions to store."""
    assigned: dict[bytes, int] = {}
    new_positions: list[int] = []
    for position in np.flatnonzero(rows < 0):
        key = digests[position].tobytes()
        row = assigned.get(key)
        if row is None:
            row = assigned[key] = first_row + len(new_positions)
            new_positions.append(int(position))
        rows[position] = row
    return new_positions


def _truncate(path: Path, size: int) -> int:
    current = _size(path)
    if current <= size:
        return 0
    with path.open("r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())
    return current - size


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:05d}.f16"
