"""On-disk embedding cache keyed by ``(model_id, revision, sha256(text))``, and filling it.

Layout of one cache (one per embedder ``model_key``)::

    <root>/<model_key>/
        meta.json          {"format": 1, "dim": 384, "dtype": "float16", "shard_rows": 262144}
        keys.bin           row r's sha256 digest at bytes [32 r, 32 r + 32)
        shard-00000.f16    rows [0, shard_rows): little-endian float16, dim * 2 bytes per row
        shard-00001.f16    rows [shard_rows, 2 shard_rows), ...
        writer.lock        flock()ed by the one writer, which writes its pid in it

Rows are only ever appended. ``put`` writes and fsyncs a chunk's vectors *before* its keys, and a
row exists once its key does, so a kill mid-append leaves complete rows plus a torn tail. Every
open counts the keyed rows whose vectors are complete; the writer also truncates the tail. A
read-only opener (the CLI) never writes and never sees rows past that count, so it can run while
the daemon appends.

Damage is not a torn tail: a shard missing keyed rows that later shards follow, or a row holding
NaN or inf, raises :class:`CacheError` naming the shard (cutting there would throw the intact
shards away). When the files hold fewer rows than a process read (the folder deleted, the last
shard cut), it reads them again, and the store embeds the items whose vectors are gone.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from models._cache_files import (
    ShardFiles,
    assign_new_rows,
    committed_rows,
    read_into,
    read_keys,
    read_or_create_meta,
    repair_tail,
    write_at,
)
from models._digest_index import DIGEST_BYTES, DigestIndex, digests_from_hex
from models._types import Float32Array, IntArray
from models._writer_lock import WriterLock, acquire_writer_lock, release_writer_lock
from models.errors import CacheError

if TYPE_CHECKING:  # typing only: the cache must not import torch (the CLI reads it)
    from models.embedder import Embedder

__all__ = ["EmbeddingCache", "content_hash", "embed_missing", "missing_positions", "model_key"]

log = logging.getLogger(__name__)

_VECTOR = np.dtype("<f2")
_FLOAT16_MAX = 65504.0
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DENSE_FACTOR = 4  # iter_stored_chunks reads a chunk's whole span when at most this many times its rows


def content_hash(text: str) -> str:
    """Return the sha256 hex digest of ``text`` encoded as UTF-8 (lone surrogates passed through)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def model_key(embedder: Embedder) -> str:
    """Return a filesystem-safe cache key: a readable tail of ``model_id`` plus a hash of both ids.

    Raises:
        EmbedderUnavailable: the embedder cannot compute its revision.
    """
    model_id = embedder.model_id
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-._")[-40:].lstrip("-._") or "model"
    digest = hashlib.sha256(f"{model_id}\0{embedder.revision}".encode()).hexdigest()[:16]
    return f"{slug}-{digest}"


class EmbeddingCache:
    """Append-only float16 vectors in fixed-size shard files; one writer, any number of readers.

    Rows are read with positioned reads (one per run of consecutive rows), not through memory
    maps: a mapped page stays in the reader's RSS, so maps made a daemon that streamed or sampled
    a million-row pool grow to the whole pool's size over a few cycles. The shard files are
    plain arrays, so any other tool may still memory-map them.

    Args:
        root: folder holding one sub-folder per model key (created by the writer).
        model_key: sub-folder name, from :func:`model_key`.
        dim: vector length; must match an existing cache.
        shard_rows: rows per shard file for a new cache (an existing cache keeps its own).
        readonly: open for reading only: no lock, no repair, never creates files.

    Raises:
        CacheLocked: another process holds the writer lock.
        CacheError: the cache on disk has another ``dim`` or format.
        ValueError: ``model_key`` is not filesystem-safe, or ``dim``/``shard_rows`` < 1.
    """

    def __init__(
        self, root: Path, *, model_key: str, dim: int, shard_rows: int = 1 << 18, readonly: bool = False
    ) -> None:
        self._writer: WriterLock | None = None  # set first: close() and __del__ rely on it
        if not _SAFE_KEY.fullmatch(model_key):
            raise ValueError(f"model_key must match {_SAFE_KEY.pattern}, got {model_key!r}")
        if dim < 1 or shard_rows < 1:
            raise ValueError(f"dim and shard_rows must be >= 1, got {dim} and {shard_rows}")
        self.root = Path(root)
        self.model_key = model_key
        self.dim = dim
        self.readonly = readonly
        self.directory = self.root / model_key
        self._mutex = threading.Lock()
        self._index = DigestIndex()
        self._writer = None if readonly else acquire_writer_lock(self.directory)
        try:
            with self._writing():
                self.shard_rows = self._read_or_create_meta(shard_rows)
                self._extend_index(repair=not readonly)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._index)

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer lock. Idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            release_writer_lock(writer)

    def __del__(self) -> None:
        self.close()

    def refresh(self) -> None:
        """Pick up rows appended since this cache opened, or read it again if its files lost rows.

        Raises:
            CacheError: a shard lost rows that later shards follow.
        """
        with self._writing(), self._mutex:
            self._extend_index(repair=False)

    def lookup(self, hashes: Sequence[str]) -> IntArray:
        """Return the row of each content hash, -1 when absent; ``(len(hashes),)``.

        Rows appended by another writer since the last call are picked up first.

        Raises:
            ValueError: a hash is not 64 hex digits.
            CacheError: a shard lost rows that later shards follow (see :func:`committed_rows`).
        """
        digests = digests_from_hex(list(hashes))
        with self._writing(), self._mutex:
            self._extend_index(repair=False)  # rows appended since: by a sibling writer, or for a reader
            return self._index.row_of(digests)

    def get(self, rows: npt.ArrayLike) -> Float32Array:
        """Return the vectors of ``rows`` (each in ``[0, len(self))``) as ``(len(rows), dim)`` float32.

        Raises:
            ValueError: ``rows`` is not 1-D or holds a row outside ``[0, len(self))``.
            CacheError: a row holds NaN or inf (a damaged shard; the message names it).
        """
        positions = self._checked_rows(rows)
        vectors = self._gather(positions).astype(np.float32)
        self._check_finite(positions, vectors)
        return vectors

    def check_finite(self, rows: npt.ArrayLike, chunk_rows: int = 65536) -> None:
        """Read ``rows`` a chunk at a time and refuse the first that holds NaN or inf, as :meth:`get` does.

        For callers that stream rows through :meth:`iter_stored_chunks` (unchecked, for speed) and
        met a non-finite value: this finds which shard is damaged.

        Raises:
            ValueError: as :meth:`iter_stored_chunks`.
            CacheError: naming the first damaged row's shard file.
        """
        positions = self._checked_rows(rows)
        for span, stored in self.iter_stored_chunks(positions, chunk_rows):
            self._check_finite(positions[span], stored)

    def _check_finite(self, positions: IntArray, vectors: npt.NDArray[np.floating]) -> None:
        """Refuse rows holding NaN or inf: ``put`` stores finite values only, so such a row is damage.

        A row's float32 sum is finite exactly when its values are (float16 values cannot overflow
        it): 0.12 s per million 384-d rows, against 1.7 s for the cast before it.

        Raises:
            CacheError: naming the first damaged row's shard file.
        """
        damaged = np.flatnonzero(~np.isfinite(vectors.sum(axis=1, dtype=np.float32)))
        if len(damaged):
            row = int(positions[damaged[0]])
            raise CacheError(
                f"embedding cache shard {self._shard_path(row // self.shard_rows)} is damaged: row {row} holds "
                f"NaN or inf; delete the folder {self.directory} and run `labelloop embed` to embed again"
            )

    def iter_chunks(self, rows: npt.ArrayLike, chunk_rows: int = 65536) -> Iterator[tuple[slice, Float32Array]]:
        """Yield ``(span, vectors)``: ``vectors == get(rows[span])``, ``chunk_rows`` rows at a time.

        Peak memory is one chunk (``chunk_rows * dim * 4`` bytes), whatever the pool size; see
        :meth:`iter_stored_chunks` for how the rows are read.

        Raises:
            ValueError: ``chunk_rows`` < 1, or as :meth:`get`.
        """
        for span, stored in self.iter_stored_chunks(rows, chunk_rows):
            yield span, stored.astype(np.float32)

    def iter_stored_chunks(
        self, rows: npt.ArrayLike, chunk_rows: int = 65536
    ) -> Iterator[tuple[slice, npt.NDArray[np.float16]]]:
        """Yield ``(span, vectors)`` like :meth:`iter_chunks`, with the stored float16 values.

        For a caller with a faster float16 conversion than numpy's (whose cast is scalar code,
        ~1 s per million 384-d rows here). A chunk whose rows lie close together (a pool's
        candidates, in pool order) is read with one positioned read of its span, scattered rows
        one run at a time; nothing is mapped, so the pages read stay in the OS page cache,
        outside the process's RSS.

        Raises:
            ValueError: ``chunk_rows`` < 1, or as :meth:`get`.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        positions = self._checked_rows(rows)
        for start in range(0, len(positions), chunk_rows):
            span = slice(start, min(start + chunk_rows, len(positions)))
            chunk = positions[span]
            first, last = int(chunk.min()), int(chunk.max())
            if last - first + 1 > _DENSE_FACTOR * len(chunk):
                yield span, self._gather(chunk)
                continue
            if bool((np.diff(chunk) > 0).all()):  # a pool's candidates, in pool order
                yield span, self._read_runs(chunk)
            else:
                yield span, self._read_contiguous(first, last + 1)[chunk - first]

    def _checked_rows(self, rows: npt.ArrayLike) -> IntArray:
        positions = np.asarray(rows, dtype=np.intp)
        if positions.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {positions.shape}")
        with self._mutex:
            size = len(self._index)
        if len(positions) and (positions.min() < 0 or positions.max() >= size):
            raise ValueError(f"rows must be in [0, {size}); -1 marks a hash that is not cached")
        return positions

    def _gather(self, positions: IntArray) -> npt.NDArray[np.float16]:
        """Rows (checked), as stored: one positioned read per run of consecutive rows."""
        rows, inverse = np.unique(positions, return_inverse=True)
        stored = np.empty((len(rows), self.dim), dtype=_VECTOR)
        if not len(rows):
            return stored
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with ShardFiles(self.directory) as files:
            for first, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
                stored[first:stop] = self._read_contiguous(int(rows[first]), int(rows[stop - 1]) + 1, files)
        gathered: npt.NDArray[np.float16] = stored[inverse.reshape(-1)]
        return gathered

    def _read_contiguous(self, first: int, stop: int, files: ShardFiles | None = None) -> npt.NDArray[np.float16]:
        """Read rows ``[first, stop)`` (all committed) with one positioned read per shard."""
        out = np.empty((stop - first, self.dim), dtype=_VECTOR)
        with ShardFiles(self.directory) if files is None else nullcontext(files) as opened:
            self._read_span(opened, first, [out.data.cast("B")], self.dim * _VECTOR.itemsize)
        return out

    def _read_runs(self, rows: IntArray) -> npt.NDArray[np.float16]:
        """Rows ``rows`` (checked, committed, strictly increasing), read with the span they cover.

        Each shard's part of the span is one scattered positioned read (:func:`read_into`): every
        run of consecutive rows lands in its place in the result and the rows between runs (a
        chunk's already-labeled rows) in a scratch buffer. Reading the span and then picking the
        rows from it copied every row twice: 0.07 s against 0.035 s per 1M rows, alone, and ~0.15
        CPU-seconds in a scoring pass that shares the cores with the head.
        """
        out = np.empty((len(rows), self.dim), dtype=_VECTOR)
        if not len(rows):
            return out
        row_bytes = self.dim * _VECTOR.itemsize
        target = out.data.cast("B")
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)  # where each run starts
        skipped = (rows[starts[1:]] - rows[starts[1:] - 1] - 1).tolist()  # rows between a run and the next
        starts_list = starts.tolist()
        stops = [*starts_list[1:], len(rows)]
        scratch = memoryview(bytearray(max(skipped, default=0) * row_bytes))
        pieces = [target[: stops[0] * row_bytes]]  # contiguous in the file from rows[0]
        for start, stop, gap in zip(starts_list[1:], stops[1:], skipped, strict=True):
            pieces += [scratch[: gap * row_bytes], target[start * row_bytes : stop * row_bytes]]
        with ShardFiles(self.directory) as opened:
            self._read_span(opened, int(rows[0]), pieces, row_bytes)
        return out

    def _read_span(self, opened: ShardFiles, row: int, pieces: list[memoryview], row_bytes: int) -> None:
        """Fill ``pieces`` with the rows that follow ``row`` in the shards, cutting them at shard ends."""
        shard, offset = divmod(row, self.shard_rows)
        room = (self.shard_rows - offset) * row_bytes  # bytes left in this shard
        batch: list[memoryview] = []
        for piece in pieces:
            while len(piece) > room:
                batch.append(piece[:room])
                piece = piece[room:]
                read_into(opened.fd(shard), batch, offset * row_bytes, path=self._shard_path(shard))
                shard, offset, room, batch = shard + 1, 0, self.shard_rows * row_bytes, []
            batch.append(piece)
            room -= len(piece)
        read_into(opened.fd(shard), batch, offset * row_bytes, path=self._shard_path(shard))

    def put(self, hashes: Sequence[str], vectors: npt.NDArray[np.floating]) -> IntArray:
        """Store vectors for hashes not cached yet; return the row of every hash, ``(len(hashes),)``.

        Repeated hashes (already cached, or twice in this call) are stored once.

        Args:
            hashes: content hashes, from :func:`content_hash`.
            vectors: ``(len(hashes), dim)``, finite and within float16 range.

        Raises:
            CacheError: the cache was opened read-only or has been closed.
            ValueError: bad shapes, hashes or values. Nothing is written then.
        """
        if self._writer is None:
            raise CacheError(f"cache {self.directory} is read-only or closed; it cannot be written")
        values = np.asarray(vectors)
        if values.shape != (len(hashes), self.dim):
            raise ValueError(f"vectors must have shape ({len(hashes)}, {self.dim}), got {values.shape}")
        if values.size and not (np.isfinite(values).all() and np.abs(values).max() <= _FLOAT16_MAX):
            raise ValueError("vectors must be finite and within float16 range")
        digests = digests_from_hex(list(hashes))
        with self._writing(), self._mutex:
            self._extend_index(repair=False)  # rows another writer of this process appended
            rows = self._index.row_of(digests)
            new_positions = assign_new_rows(digests, rows, first_row=len(self._index))
            if new_positions:
                self._append(digests[new_positions], values[new_positions].astype(_VECTOR))
        return rows

    def _writing(self) -> AbstractContextManager[object]:
        """Hold the process-wide mutex of this directory's writers (nothing for a reader)."""
        return self._writer.mutex if self._writer is not None else nullcontext()

    def _append(self, digests: npt.NDArray[np.uint8], vectors: npt.NDArray[np.float16]) -> None:
        """Write vectors (fsynced, shard by shard), then keys, then publish the rows in memory."""
        first = len(self._index)
        done = 0
        while done < len(vectors):
            row = first + done
            shard, offset = divmod(row, self.shard_rows)
            take = min(self.shard_rows - offset, len(vectors) - done)
            write_at(self._shard_path(shard), offset * self.dim * _VECTOR.itemsize, vectors[done : done + take])
            done += take
        write_at(self.directory / "keys.bin", first * DIGEST_BYTES, digests)
        self._index.extend(digests)

    def _extend_index(self, *, repair: bool) -> None:
        row_bytes = self.dim * _VECTOR.itemsize
        size = committed_rows(self.directory, row_bytes=row_bytes, shard_rows=self.shard_rows)
        if size < len(self._index):  # rows read before are gone (the folder deleted, a shard cut): start over
            log.warning("embedding cache %s: holds %d rows, %d before; reading it again", self.directory, size,
                        len(self._index))
            self._index = DigestIndex()
            if not self.readonly:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._read_or_create_meta(self.shard_rows)
                repair = True
        if repair:
            dropped = repair_tail(self.directory, size, row_bytes=row_bytes, shard_rows=self.shard_rows)
            if dropped:
                log.warning("embedding cache %s: dropped a torn tail of %d bytes", self.directory, dropped)
        known = len(self._index)
        if size > known:
            self._index.extend(read_keys(self.directory / "keys.bin", start=known, stop=size))

    def _shard_path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.f16"

    def _read_or_create_meta(self, shard_rows: int) -> int:
        return read_or_create_meta(self.directory, dim=self.dim, shard_rows=shard_rows, create=not self.readonly)


def embed_missing(
    embedder: Embedder,
    cache: EmbeddingCache,
    texts: Sequence[str],
    *,
    batch_rows: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> IntArray:
    """Embed the texts the cache lacks, in chunks, and return every text's cache row.

    Each distinct missing text is encoded once. Every chunk of ``batch_rows`` is stored before
    the next is encoded, so after a crash or an exception the next call starts where this stopped.

    Args:
        embedder: must have the cache's ``model_key`` and ``dim``.
        cache: a writable cache.
        texts: ``n`` texts, duplicates allowed.
        batch_rows: texts encoded and stored per chunk, >= 1.
        progress: called as ``progress(done, total)`` after each chunk, with counts of missing texts.

    Returns:
        ``(n,)`` rows into ``cache``, in the order of ``texts``.

    Raises:
        ValueError: the embedder does not match the cache, or ``batch_rows`` < 1.
        EmbedderUnavailable: the model cannot be loaded (only when something is missing).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if embedder.dim != cache.dim or model_key(embedder) != cache.model_key:
        raise ValueError(f"embedder {model_key(embedder)} (dim {embedder.dim}) does not match cache {cache.model_key}")
    hashes = [content_hash(text) for text in texts]
    rows = cache.lookup(hashes)
    todo = missing_positions(hashes, rows)
    for start in range(0, len(todo), batch_rows):
        chunk = todo[start : start + batch_rows]
        cache.put([hashes[p] for p in chunk], embedder.encode([texts[p] for p in chunk]))
        if progress is not None:
            progress(start + len(chunk), len(todo))
    if todo:
        rows = cache.lookup(hashes)
    return rows


def missing_positions(hashes: list[str], rows: npt.NDArray[np.intp]) -> list[int]:
    """Positions whose row is -1 (not cached), the first of each distinct hash only, in order."""
    todo: list[int] = []
    seen: set[str] = set()
    for position in np.flatnonzero(rows < 0):
        if hashes[position] not in seen:
            seen.add(hashes[position])
            todo.append(int(position))
    return todo
