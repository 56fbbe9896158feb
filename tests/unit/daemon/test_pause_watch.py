"""The daemon's log says when the queue is paused or resumed, whoever did it (daemon.pause.PauseWatch)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlmodel import Session

from daemon.pause import PauseWatch, lift_pause, pause_by_operator
from daemon.store import make_engine
from tests.unit.daemon.test_loop import make_settings


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [record.getMessage() for record in caplog.records if record.name == "daemon.pause"]
    caplog.clear()
    return found


def test_a_restart_while_paused_and_changes_by_other_processes_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, control_fraction=0.1)
    engine = make_engine(settings.store.url)
    with Session(engine) as session:
        pause_by_operator(session, "guide review")
        session.commit()
    caplog.set_level(logging.INFO, logger="daemon.pause")
    caplog.clear()
    watch = PauseWatch(settings.loop)
    with Session(engine) as session:
        watch.check(session)  # the daemon's first check, after a restart
        assert messages(caplog) == ["queue paused: an operator paused the queue: guide review; run `labelloop "
                                    "resume` to keep labeling"]
        watch.check(session)
        assert messages(caplog) == []  # said once
        lift_pause(session, "operator asked")
        session.commit()
        messages(caplog)  # the resuming process's own line
        watch.check(session)
        assert messages(caplog) == ["queue resumed: new batches are queued again"]
        pause_by_operator(session, "")
        session.commit()
        messages(caplog)
        watch.check(session)
        assert messages(caplog) == ["queue paused: an operator paused the queue; run `labelloop resume` to keep "
                                    "labeling"]


def test_a_stopping_rule_without_a_control_slice_is_called_out_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With control_fraction 0 the rule never paused, and nothing said why."""
    settings = make_settings(tmp_path)  # control_fraction 0.0
    caplog.set_level(logging.INFO, logger="daemon.pause")
    with Session(make_engine(settings.store.url)) as session:
        PauseWatch(settings.loop).check(session)
    assert any("never pauses" in line and "control_fraction is 0" in line for line in messages(caplog))
