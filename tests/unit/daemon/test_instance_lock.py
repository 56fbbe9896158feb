"""One process per store: a daemon waits for a one-shot command; it refuses another daemon at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from daemon.cycle import close_interrupted_cycles
from daemon.errors import AlreadyRunning
from daemon.service import InstanceLock
from daemon.store import Batch, CycleRun, make_engine


def test_a_daemon_waits_for_a_command_holding_the_store_and_then_takes_it(tmp_path: Path) -> None:
    """A daemon restarted by systemd while `labelloop cycle` ran exited 3, which the unit does not restart."""
    command = InstanceLock(tmp_path / "db.lock", "cycle")
    command.acquire()
    released = threading.Timer(0.6, command.release)
    released.start()
    began = time.monotonic()
    daemon = InstanceLock(tmp_path / "db.lock")
    daemon.acquire(wait_for_commands=True, poll_s=0.05)
    try:
        assert time.monotonic() - began >= 0.5
        assert (tmp_path / "db.lock").read_text().endswith(" daemon")
    finally:
        daemon.release()
        released.join()


def test_another_daemon_is_refused_at_once_and_a_command_says_which_command_holds_it(tmp_path: Path) -> None:
    daemon = InstanceLock(tmp_path / "db.lock")
    daemon.acquire()
    try:
        with pytest.raises(AlreadyRunning, match=r"another labelloop daemon \(pid \d+\) is already running"):
            InstanceLock(tmp_path / "db.lock").acquire(wait_for_commands=True)
    finally:
        daemon.release()
    sync = InstanceLock(tmp_path / "db.lock", "sync")
    sync.acquire()
    try:  # it used to call any holder "another labelloop daemon"
        with pytest.raises(AlreadyRunning, match=r"`labelloop sync` \(pid \d+\) is working on this store.*try again"):
            InstanceLock(tmp_path / "db.lock", "cycle").acquire()
    finally:
        sync.release()


def test_cycles_a_killed_process_left_running_are_marked_interrupted(tmp_path: Path) -> None:
    """status showed a SIGKILLed cycle as `running` for good, under newer cycles that finished."""
    engine = make_engine(f"sqlite:///{tmp_path}/db.sqlite")
    with Session(engine) as session:
        session.add(CycleRun(reason="new labels"))
        session.add(CycleRun(status="ok"))
        session.commit()
    assert close_interrupted_cycles(engine) == 1
    with Session(engine) as session:
        runs = {run.status: run.reason for run in session.exec(select(CycleRun))}
    assert runs == {"interrupted": "new labels; its process ended", "ok": ""}


def test_an_interrupted_cycle_names_the_batch_it_had_selected(tmp_path: Path) -> None:
    """Killed after selecting, the cycle's batch column stayed empty: nothing linked it to the batch pushed later."""
    engine = make_engine(f"sqlite:///{tmp_path}/db.sqlite")
    with Session(engine) as session:
        killed = CycleRun(reason="queue low (0 waiting)")
        session.add(killed)
        session.commit()
        session.refresh(killed)
        session.add(Batch(id="b-selected", strategy="margin", model_version="m", size=10, cycle_id=killed.id))
        session.commit()
    assert close_interrupted_cycles(engine) == 1
    with Session(engine) as session:
        run = session.exec(select(CycleRun)).one()
    assert (run.status, run.batch_id) == ("interrupted", "b-selected")
