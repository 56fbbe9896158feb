"""One writer per cache directory: an ``flock`` across processes, a shared mutex within one.

``flock`` belongs to an open file description, so a second ``EmbeddingCache`` on the same folder in
the *same* process would be refused by its own process. Instead, writers in one process share the
lock (reference-counted) and serialise their appends on its mutex; each catches up on rows the
others appended before it writes.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import CacheLocked

__all__ = ["WriterLock", "acquire_writer_lock", "release_writer_lock"]

_HELD: dict[Path, WriterLock] = {}
_REGISTRY = threading.Lock()


@dataclass(slots=True)
class WriterLock:
    """The process's hold on one cache directory."""

    directory: Path
    fd: int
    mutex: threading.RLock = field(default_factory=threading.RLock)
    holders: int = 0


def acquire_writer_lock(directory: Path) -> WriterLock:
    """Take (or share, within this process) the writer lock of ``directory``, creating it.

    Raises:
        CacheLocked: another process holds it; the message names its pid and says to try again once it
            has finished (a CLI may add its own way out).
            A process that only reads needs no lock: ``EmbeddingCache(..., readonly=True)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    with _REGISTRY:
        lock = _HELD.get(key)
        if lock is None:
            lock = _HELD[key] = WriterLock(directory=key, fd=_flock(key))
        lock.holders += 1
        return lock


def release_writer_lock(lock: WriterLock) -> None:
    """Drop one hold; the last one unlocks and closes the file."""
    with _REGISTRY:
        lock.holders -= 1
        if lock.holders == 0:
            del _HELD[lock.directory]
            fcntl.flock(lock.fd, fcntl.LOCK_UN)
            os.close(lock.fd)


def _flock(directory: Path) -> int:
    fd = os.open(directory / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CacheLocked(  # no readonly=True here: a CLI user read it as advice (QA, two simulate runs)
            f"cache {directory} is being written by another process (pid {holder}); try again once it has finished"
        ) from error
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
