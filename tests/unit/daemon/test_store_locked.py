"""Another process holding the store's write lock (a large ``pool add``) skips a daemon run; it loses nothing."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from daemon.cli import app
from daemon.context import LoopContext
from daemon.cycle import run_cycle
from daemon.service import HEARTBEAT_KEY, Service
from daemon.settings import load_settings
from daemon.store import HealthEvent, LabelRecord, get_value, is_store_locked, make_engine, sqlite_path
from tests.unit.daemon.test_cli import runner, workdir
from tests.unit.daemon.test_loop import batch_items, build_world

__all__ = ["workdir"]  # a fixture, used by name

BUSY_TIMEOUT_S = 0.2


@contextmanager
def write_locked(url: str) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as a running import does."""
    path = sqlite_path(url)
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.chdir(tmp_path)
    ctx, _fake, _gold = build_world(tmp_path)
    settings = ctx.settings.model_copy(update={"store": ctx.settings.store.model_copy(
        update={"busy_timeout_s": BUSY_TIMEOUT_S})})
    engine = make_engine(settings.store.url, busy_timeout_s=BUSY_TIMEOUT_S)
    yield Service(LoopContext(settings=settings, engine=engine, connector=ctx.connector,
                              embedder_factory=ctx.embedder_factory))
    engine.dispose()


def labels(service: Service) -> dict[str, str | None]:
    with Session(service.ctx.engine) as session:
        return {r.item_id: r.label for r in session.exec(select(LabelRecord))}


def test_a_locked_store_skips_the_run_and_the_next_run_catches_up(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = service.ctx
    fake = ctx.connector
    first = batch_items(ctx, run_cycle(ctx).batch_id or "")[0].item_id
    fake.annotate(first, "billing")  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="daemon.service"), write_locked(ctx.settings.store.url):
        service.sync_job()  # gives up after the busy timeout instead of raising
        service.sync_job()
        service.cycle_job()
        service.heartbeat()
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert [r.levelno for r in skipped][:2] == [logging.WARNING, logging.INFO]  # the cycle may only have read
    assert "pool add" in skipped[0].getMessage() and not any(r.exc_info for r in caplog.records)
    assert labels(service) == {}

    service.sync_job()
    assert labels(service) == {first: "billing"}  # the label annotated meanwhile is not lost
    with Session(ctx.engine) as session:
        events = [(e.kind, e.message) for e in session.exec(select(HealthEvent))]
        assert ("store_locked", f"{len(skipped)} runs skipped while another process held the store") in events
    service.heartbeat()
    with Session(ctx.engine) as session:
        assert get_value(session, HEARTBEAT_KEY) is not None


def test_only_a_lock_error_counts_as_a_locked_store(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: poolitem"))
    assert not is_store_locked(broken)

    def fail(_ctx: LoopContext, *, check_waiting: bool = False) -> None:
        raise broken

    monkeypatch.setattr("daemon.service.sync", fail)
    with pytest.raises(OperationalError, match="no such table"):  # a bug surfaces, it is not a busy store
        service.sync_job()


def test_pool_add_on_a_locked_store_says_so_and_writes_nothing(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n')
    monkeypatch.setenv("LABELLOOP_STORE__BUSY_TIMEOUT_S", str(BUSY_TIMEOUT_S))
    url = load_settings().store.url
    with write_locked(url):
        refused = runner.invoke(app, ["pool", "add", "pool.jsonl"])
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)
    assert "another process held the store's write lock" in " ".join(refused.output.split())
    assert "Traceback" not in refused.output
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["pool"]["items"] == 0
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0


def test_a_rejection_that_lasts_backs_off_instead_of_failing_every_run(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A project deleted in Label Studio made every sync fail, every 5 s, with no backoff, and status healthy."""
    from connectors.errors import ConnectorRejected

    fake = service.ctx.connector
    fake.fail_next(1, ConnectorRejected("Label Studio answered 404 during pull"))  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="daemon.service"):
        service.sync_job()
        service.sync_job()  # within the backoff: not tried
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1 and "next try at the first run after" in failed[0].getMessage()
    assert fake.calls.count("pull") == 0  # type: ignore[attr-defined]
    assert service.health()["backoff_failures"] == 1


def test_only_a_run_that_reached_label_studio_ends_a_backoff(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A cycle that was not due asked Label Studio nothing, yet logged "reachable again" and cleared
    the backoff in the middle of an outage, so status read healthy and the sync warned every 10 s."""
    from datetime import UTC, datetime, timedelta

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    service.ctx.clock = lambda: now[0]
    fake = service.ctx.connector
    service.sync_job()
    service.cycle_job()  # the first batch: the queue is full, so the next cycle is not due
    fake.is_down = True  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="daemon.service"):
        service.sync_job()
        assert service.health()["backoff_failures"] == 1
        now[0] += timedelta(hours=1)  # past the backoff
        service.cycle_job()
        assert service.health()["backoff_failures"] == 1
        assert not [r for r in caplog.records if "reachable again" in r.getMessage()]
        fake.is_down = False  # type: ignore[attr-defined]
        service.sync_job()
    assert service.health()["backoff_failures"] == 0
    assert [r for r in caplog.records if "reachable again" in r.getMessage()]


def test_the_end_of_a_rejection_is_not_reported_as_label_studio_reachable_again(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """After an admin fixed the project's labeling config, the daemon logged "Label Studio reachable
    again", though Label Studio had answered every call (QA)."""
    from datetime import UTC, datetime, timedelta

    from connectors.errors import ConnectorRejected

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    service.ctx.clock = lambda: now[0]
    fake = service.ctx.connector
    fake.fail_next(1, ConnectorRejected("project 1: its labeling config has no <Choices>"))  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="daemon.service"):
        service.sync_job()
        now[0] += timedelta(hours=1)
        service.sync_job()
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "reachable again" in m]
    assert ("Label Studio accepts labelloop's requests again (sync ran): the project or its labeling config "
            "was fixed") in said


def test_a_run_skipped_while_the_last_still_runs_is_not_a_warning_or_a_health_event(service: Service) -> None:
    """A long cycle (a large import being embedded) made a warning, an INFO line and a health event every
    interval, pushing the events that matter out of status."""
    from datetime import UTC, datetime

    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent

    from daemon.logfmt import ExpectedSkips

    service._on_event(JobExecutionEvent(EVENT_JOB_MAX_INSTANCES, "cycle", None, datetime.now(UTC)))
    with Session(service.ctx.engine) as session:
        assert session.exec(select(HealthEvent)).all() == []
    skipped = logging.LogRecord("apscheduler.scheduler", logging.WARNING, "", 0, 'Execution of job "cycle" skipped: '
                                "maximum number of running instances reached (1)", None, None)
    other = logging.LogRecord("apscheduler.scheduler", logging.WARNING, "", 0, "something else", None, None)
    ours = logging.LogRecord("daemon.service", logging.WARNING, "", 0, "was missed by nothing", None, None)
    assert [ExpectedSkips().filter(record) for record in (skipped, other, ours)] == [False, True, True]


def test_an_encoder_that_cannot_run_backs_cycles_off_while_syncs_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Ray cluster that was gone cost every cycle a connection attempt (10-40 s) under the work lock, so
    labels waited too, and nothing said when it came back."""
    from datetime import UTC, datetime, timedelta

    from models.errors import EmbedderUnavailable

    monkeypatch.chdir(tmp_path)
    ctx, fake, _ = build_world(tmp_path)
    working, tries = ctx.embedder_factory, []

    def unreachable() -> Any:
        tries.append(1)
        if len(tries) < 3:
            raise EmbedderUnavailable("cannot reach the Ray cluster at '10.0.0.9:6379': timed out")
        return working()

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    service = Service(LoopContext(settings=ctx.settings, engine=ctx.engine, connector=fake,
                                  embedder_factory=unreachable, clock=lambda: now[0]))
    with caplog.at_level(logging.INFO, logger="daemon.service"):
        service.cycle_job()
        service.cycle_job()  # within the delay: not tried
        service.sync_job()
        assert len(tries) == 1 and fake.calls.count("pull") == 2
        assert service.health()["backoff_failures"] == 0  # Label Studio is fine
        now[0] += timedelta(hours=1)
        service.cycle_job()  # fails again: a longer delay
        now[0] += timedelta(hours=1)
        service.cycle_job()
    assert len(tries) == 3 and batch_items(service.ctx, _latest_batch(service))  # the batch went out
    text = caplog.text
    assert text.count("the encoder cannot run (cannot reach the Ray cluster") == 2 and "syncs go on" in text
    assert "cycle: the encoder runs again" in text
    with Session(service.ctx.engine) as session:
        kinds = [e.kind for e in session.exec(select(HealthEvent))]
    assert kinds.count("unavailable") == 2 and "recovered" in kinds


def _latest_batch(service: Service) -> str:
    from daemon.store import Batch

    with Session(service.ctx.engine) as session:
        return session.exec(select(Batch.id)).one()
