"""What the daemon says when it starts and when the queue cannot take a batch (QA12)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from daemon.cycle import cycle_due, queue_is_low, run_cycle
from daemon.service import HEARTBEAT_KEY, Service, queue_warnings, settings_summary
from daemon.settings import load_settings
from daemon.store import CycleRun, HealthEvent, set_value
from tests.unit.daemon.test_loop import annotate_batch, build_world


def test_a_full_queue_is_never_low_and_a_cycle_says_which_of_full_or_exhausted_stopped_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """max_waiting_tasks 8 under a low-water mark of 10: the queue counted as low while full, and a
    cycle every interval recorded 'queue full or pool exhausted'."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, batch_size=20, control_fraction=0.0)
    ctx.settings.label_studio.max_waiting_tasks = 8
    with caplog.at_level(logging.INFO, logger="daemon.selection"):
        first = run_cycle(ctx)
    assert first.batch_id is not None and first.pushed == 8  # cut to the room, and the log says so
    assert "the batch is cut to 8 items, the room left under label_studio.max_waiting_tasks (8)" in caplog.text
    assert not queue_is_low(ctx.settings, 8) and queue_is_low(ctx.settings, 7)
    assert not cycle_due(ctx).startswith("queue low")
    skipped = run_cycle(ctx, reason="test")
    assert skipped.batch_id is None
    with Session(ctx.engine) as session:
        reason = session.exec(select(CycleRun.reason).order_by(col(CycleRun.id).desc())).first()
    assert reason is not None and "queue full or pool" not in reason
    # with room but nothing left to ask for, it says the pool is exhausted
    ctx.settings.label_studio.max_waiting_tasks = 10_000
    annotate_batch(ctx, fake, gold, first.batch_id)
    while (report := run_cycle(ctx)).batch_id is not None:
        annotate_batch(ctx, fake, gold, report.batch_id)
    with Session(ctx.engine) as session:
        reasons = list(session.exec(select(CycleRun.reason).order_by(col(CycleRun.id).desc()).limit(3)))
    assert any(r and r.startswith("pool exhausted") for r in reasons), reasons


def test_the_daemon_warns_at_start_when_the_queue_cap_cuts_batches() -> None:
    settings = load_settings(None, label_studio={"max_waiting_tasks": 8}, loop={"batch_size": 20})
    assert queue_warnings(settings) == [
        "label_studio.max_waiting_tasks (8) leaves room for less than a batch when the queue is low (loop.batch_size "
        "20, a new batch at 7 waiting): batches are cut to the room left, as small as 1 item; set it to at least 30"]
    assert "a new batch at 7 waiting" in settings_summary(settings)  # one below the cap, not the low-water mark 10
    (warning,) = queue_warnings(load_settings(None, label_studio={"max_waiting_tasks": 29}))
    assert "a new batch at 25 waiting): batches are cut to the room left, as small as 4 items" in warning
    assert queue_warnings(load_settings(None)) == []  # 200 waiting, batches of 50 refilled at 25
    assert queue_warnings(load_settings(None, label_studio={"max_waiting_tasks": 75})) == []
    assert len(queue_warnings(load_settings(None, label_studio={"max_waiting_tasks": 74}))) == 1


def test_the_start_up_log_says_the_settings_that_shape_batches_and_an_unclean_end_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx, _, _ = build_world(tmp_path, strategy="margin", set_aside_near_copies=False)
    summary = settings_summary(ctx.settings)
    assert "strategy margin, batch_size 10" in summary and "near-copies kept" in summary
    assert "max_waiting_tasks 20 (a new batch at 5 waiting)" in summary
    with Session(ctx.engine) as session:  # the beat a daemon killed with -9 left behind
        set_value(session, HEARTBEAT_KEY, json.dumps({"pid": 999_999_999, "host": "h", "state": "running",
                                                      "last_beat": "2026-12-07T15:03:00+00:00"}))
        session.commit()
    for _ in range(2):
        service = Service(ctx)
        service.ctx.stop.set()
        with caplog.at_level(logging.INFO, logger="daemon.service"):
            service.run()
    said = caplog.text
    assert "settings: strategy margin, batch_size 10" in said
    with Session(ctx.engine) as session:
        events = [(e.kind, e.message) for e in session.exec(select(HealthEvent).order_by(col(HealthEvent.id)))]
    kinds = [kind for kind, _ in events]
    # once: the second start follows a graceful stop
    assert kinds.count("ended_uncleanly") == 1 and kinds.index("ended_uncleanly") < kinds.index("started")
    unclean = dict(events)["ended_uncleanly"]
    assert "pid 999999999" in unclean and "2026-12-07T15:03:00" in unclean
    assert str(os.getpid()) not in unclean
