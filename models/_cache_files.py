"""File-level helpers of the embedding cache: count complete rows, cut torn tails, positioned writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models._digest_index import DIGEST_BYTES
from models._types import IntArray

__all__ = ["assign_new_rows", "committed_rows", "read_into", "read_keys", "repair_tail", "write_at"]

_IOV_MAX = 1024  # buffers per preadv call: POSIX's minimum for IOV_MAX is 16, Linux's is 1024


def committed_rows(directory: Path, *, row_bytes: int, shard_rows: int) -> int:
    """Rows that have both a complete key and a complete vector: ``min(keys, vector rows)``."""
    keys = _size(directory / "keys.bin") // DIGEST_BYTES
    vectors = 0
    shard = 0
    while (path := _shard_path(directory, shard)).exists():
        in_shard = min(_size(path) // row_bytes, shard_rows)
        vectors += in_shard
        if in_shard < shard_rows:
            break
        shard += 1
    return min(keys, vectors)


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
