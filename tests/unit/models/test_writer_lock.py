"""The writer lock's refusal: what a user of the CLI and a Python caller each read in it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from models._writer_lock import acquire_writer_lock, release_writer_lock
from models.errors import CacheLocked


def test_a_cache_another_process_writes_is_refused_naming_it_with_advice_anyone_can_follow(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file description acts as another process
        os.pwrite(fd, b"3777\n", 0)
        with pytest.raises(CacheLocked) as refused:
            acquire_writer_lock(tmp_path)
    finally:
        os.close(fd)
    assert str(refused.value) == (f"cache {tmp_path.resolve()} is being written by another process (pid 3777); "
                                  "try again once it has finished")
    assert "readonly" not in str(refused.value)  # Python-only advice, which QA read at the command line
    release_writer_lock(acquire_writer_lock(tmp_path))  # free again once that process let go
