"""The long-running service: a scheduler with a sync job and a cycle job, one per database.

APScheduler only triggers; the store holds every state. Jobs never overlap each other
(a shared lock; a job that finds it taken waits until its next turn at most, then skips
this one), late runs are coalesced, not
dropped silently (misfire grace ≥ interval, and misses are written to the health log),
and the Label Studio connection is retried with exponential backoff while it is down.
With ``webhook.enabled``, Label Studio's calls trigger a sync (and a due cycle) at once
through :mod:`daemon.webhook`; the scheduled jobs stay the fallback.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from connectors.errors import ConnectorAuthError, ConnectorError, ConnectorRejected, ConnectorUnavailable
from daemon.context import LoopContext
from daemon.cycle import cycle_due, low_water_mark, refill_at, run_cycle
from daemon.errors import AlreadyRunning
from daemon.pause import PauseWatch
from daemon.project import ensure_project
from daemon.settings import Settings, masked_url
from daemon.store import HealthEvent, get_value, is_disk_full, is_store_locked, set_value, sqlite_path
from daemon.sync import sync
from daemon.webhook import TASKS_DELETED, Coalescer, WebhookServer, register, start_server
from daemon.wording import for_count
from models.errors import EmbedderUnavailable, ModelError

__all__ = ["InstanceLock", "Service", "queue_warnings", "settings_summary"]

log = logging.getLogger(__name__)
HEARTBEAT_KEY = "daemon"
HEARTBEAT_INTERVAL_S = 5.0
HEALTH_EVENTS_KEPT = 1000
_RECOVERED = {  # what a run that reached Label Studio again says ended, by the failures' cause
    "unavailable": "Label Studio reachable again (%s ran)",
    "auth": "Label Studio accepts the API token again (%s ran)",
    "rejected": ("Label Studio accepts labelloop's requests again (%s ran): the project or its labeling config "
                 "was fixed"),
}
_WEBHOOK_RETRY_S = 300.0  # a webhook registration Label Studio failed on (HTTP 5xx) is tried again after this
_JUST_SYNCED_S = 2.0  # a cycle skips its own pull when the last sync is this fresh


def prune_health_events(session: Session, *, keep: int = HEALTH_EVENTS_KEPT) -> None:
    """Keep only the newest ``keep`` health rows, so a flapping job cannot grow the database."""
    cutoff = session.exec(
        select(HealthEvent.id).order_by(col(HealthEvent.id).desc()).offset(keep).limit(1)
    ).first()
    if cutoff is not None:
        session.execute(delete(HealthEvent).where(col(HealthEvent.id) <= cutoff))


class InstanceLock:
    """An exclusive ``flock`` next to the database: one daemon, or one one-shot command, per store.

    The lock file names its holder (``<pid> <role>``: ``daemon``, ``cycle``, ``sync``, ``embed``).
    """

    def __init__(self, path: Path, role: str = "daemon") -> None:
        self.path = path
        self.role = role
        self._handle: IO[str] | None = None

    @classmethod
    def for_store(cls, url: str, data_dir: Path, role: str = "daemon") -> InstanceLock:
        db = sqlite_path(url)
        return cls(Path(f"{db}.lock") if db is not None else data_dir / "labelloop.lock", role)

    def acquire(self, *, wait_for_commands: bool = False, poll_s: float = 0.5) -> None:
        """Take the lock or refuse; with ``wait_for_commands``, wait while a one-shot command holds it.

        A daemon restarted (by systemd, 10 s after a crash) while an operator's ``labelloop cycle``
        ran used to exit 3, which the unit does not restart: the loop stayed down. It now waits
        for the command to finish; another daemon is still refused at once.

        Raises:
            AlreadyRunning: another process holds it (a daemon, or a command when not waiting).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        said = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                pid, _, role = (handle.read().strip() or "unknown").partition(" ")
                role = role or "daemon"  # a lock written before roles were recorded
                if role != "daemon" and wait_for_commands:
                    if not said:
                        log.info("waiting for `labelloop %s` (pid %s) to finish with the store", role, pid)
                        said = True
                    time.sleep(poll_s)
                    continue
                handle.close()
                raise AlreadyRunning(_held_by(role, pid, self.path)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {self.role}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _held_by(role: str, pid: str, path: Path) -> str:
    if role == "daemon":
        return (f"another labelloop daemon (pid {pid}) is already running on this store (lock {path}); stop it "
                "first, or point store.url at another database")
    return f"`labelloop {role}` (pid {pid}) is working on this store (lock {path}); try again once it has finished"


@dataclass(slots=True)
class _Backoff:
    max_s: float
    failures: int = 0
    not_before: datetime | None = None
    cause: str = ""  # of the latest failure: what the recovery message says ended

    def failed(self, now: datetime, rng: random.Random, cause: str) -> float:
        self.failures, self.cause = self.failures + 1, cause
        delay = min(self.max_s, 2.0 ** min(self.failures, 16)) * (0.5 + rng.random() / 2)
        self.not_before = now + timedelta(seconds=delay)
        return delay

    def succeeded(self) -> str:
        """Clear the backoff; return the latest failure's cause, or ``""`` when there was none."""
        cause = self.cause if self.failures > 0 else ""
        self.failures, self.not_before, self.cause = 0, None, ""
        return cause

    def waiting(self, now: datetime) -> bool:
        return self.not_before is not None and now < self.not_before


def settings_summary(settings: Settings) -> str:
    """The settings that shape the batches, in one line for the start-up log (no secret among them)."""
    loop, ls = settings.loop, settings.label_studio
    copies = f"set aside at cosine {loop.near_copy_cosine}" if loop.set_aside_near_copies else "kept"
    low = refill_at(settings)
    stop = f"kappa {loop.stop_kappa} over {loop.stop_window} retrains" if loop.stop_rule_enabled else "off"
    return (f"strategy {loop.strategy}, batch_size {loop.batch_size}, control_fraction {loop.control_fraction}, "
            f"max_waiting_tasks {ls.max_waiting_tasks} (a new batch at {low} waiting), "
            f"min_new_labels {loop.min_new_labels}, near-copies {copies}, stopping rule {stop}, "
            f"re-ranking {'on' if loop.rerank_enabled else 'off'}")


def queue_warnings(settings: Settings) -> list[str]:
    """What in the queue's settings keeps batches smaller than ``loop.batch_size``; empty when nothing does."""
    loop, cap = settings.loop, settings.label_studio.max_waiting_tasks
    enough = loop.batch_size + low_water_mark(loop)
    if cap >= enough:
        return []
    low = refill_at(settings)
    return [f"label_studio.max_waiting_tasks ({cap}) leaves room for less than a batch when the queue is low "
            f"(loop.batch_size {loop.batch_size}, a new batch at {low} waiting): batches are cut to the room left, "
            f"as small as {cap - low} {for_count(cap - low, 'item', 'items')}; set it to at least {enough}"]


class Service:
    """Schedule sync and cycle jobs until SIGTERM/SIGINT (or ``ctx.stop``)."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self._work = threading.Lock()
        self._backoff = _Backoff(ctx.settings.loop.backoff_max_s)  # Label Studio unreachable or refusing
        self._encoder_backoff = _Backoff(ctx.settings.loop.backoff_max_s)  # the encoder (or Ray cluster) unreachable
        self._locked_runs = 0  # runs in a row skipped because another process held the store
        self._full_runs = 0  # runs in a row stopped because the disk was full
        self._rng = random.Random(ctx.settings.loop.seed)
        self._has_project = False
        self._pause_watch = PauseWatch(ctx.settings.loop)
        self._project_id = ""
        self.started_at = ctx.clock()
        hook = ctx.settings.webhook
        self._webhook_pending = hook.enabled and hook.register_on_start  # registered once the project is known
        self._webhook_registered = False  # switched off again on a graceful stop
        self._webhook_retry_at = 0.0  # monotonic: a registration Label Studio failed on waits until then
        self._tasks_deleted = False  # a TASKS_DELETED call came: the trigger's sync asks which waiting tasks are gone
        self._flags = threading.Lock()
        self._trigger = Coalescer(self._triggered, min_interval_s=hook.min_interval_s,
                                  on_error=lambda e: self._health("job_error", f"trigger: {type(e).__name__}"))

    def run(self) -> None:
        """Block until stopped. Signals must be installed by the caller on the main thread.

        Raises:
            ConfigError: the webhook is enabled but has no usable secret or port.
        """
        loop = self.ctx.settings.loop
        server: WebhookServer | None = None
        if self.ctx.settings.webhook.enabled:
            server = start_server(self.ctx.settings, on_event=self.trigger_now, health=self.health)
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(3)},  # sync, cycle, heartbeat: one may wait for the lock
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": int(max(loop.sync_interval_s, loop.cycle_interval_s)) + 1},
        )
        now = datetime.now(UTC)
        scheduler.add_job(self.sync_job, "interval", seconds=loop.sync_interval_s, id="sync",
                          replace_existing=True, next_run_time=now)
        scheduler.add_job(self.cycle_job, "interval", seconds=loop.cycle_interval_s, id="cycle",
                          replace_existing=True, next_run_time=now + timedelta(seconds=1))
        scheduler.add_job(self.heartbeat, "interval", seconds=HEARTBEAT_INTERVAL_S, id="heartbeat",
                          replace_existing=True, next_run_time=now)
        scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._note_unclean_end()
        log.info("settings: %s", settings_summary(self.ctx.settings))
        for warning in queue_warnings(self.ctx.settings):
            log.warning("%s", warning)
        self._health("started", f"pid {os.getpid()}")
        scheduler.start()
        try:
            self.ctx.stop.wait()
        finally:
            log.info("stopping: waiting for running jobs to finish")
            if server is not None:
                server.stop()
            self._trigger.close()
            scheduler.shutdown(wait=True)
            self._deactivate_webhook()
            self.heartbeat(state="stopped")
            self._health("stopped", "graceful shutdown")
            log.info("stopped")

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.ctx.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def sync_job(self, *, wait: bool = False, check_waiting: bool = True) -> None:
        """Pull and apply; a scheduled sync also asks the tool which waiting tasks are gone (one lookup)."""

        def body() -> bool:
            sync(self.ctx, check_waiting=check_waiting)
            return True  # a pull answered

        self._guarded("sync", body, patience_s=math.inf if wait else self.ctx.settings.loop.sync_interval_s)

    def cycle_job(self, *, wait: bool = False) -> None:
        """Run a cycle when one is due; its own pull is skipped right after a sync (scheduled or triggered).

        With polling every 0.5 s the scheduled sync had just pulled the labels that made the cycle
        due, and the cycle pulled again: 0.6 s of a 3.7 s annotation-to-batch round at 1M items.
        """

        def body() -> bool:
            with Session(self.ctx.engine) as session:
                self._pause_watch.check(session)
            if self._encoder_backoff.waiting(self.ctx.clock()):
                return False
            reason = cycle_due(self.ctx)
            if reason:  # a cycle pulls, or runs right after a pull that answered
                self._run_cycle(reason)
            return bool(reason)

        self._guarded("cycle", body, patience_s=math.inf if wait else self.ctx.settings.loop.cycle_interval_s)

    def _run_cycle(self, reason: str) -> None:
        """Run a due cycle; an encoder or scale-out backend that cannot be reached backs cycles off.

        A Ray cluster that was gone cost every cycle a connection attempt (10-40 s) under the work
        lock, so labels waited for it too; now cycles wait out a growing delay (syncs do not) and
        the first cycle that works again says so.
        """
        try:
            run_cycle(self.ctx, reason=reason, synced_within_s=_JUST_SYNCED_S)
        except EmbedderUnavailable as e:
            delay = self._encoder_backoff.failed(self.ctx.clock(), self._rng, "encoder")
            log.error("cycle: the encoder cannot run (%s); syncs go on, the next cycle waits %.0fs", e, delay)
            self._health("unavailable", f"encoder: {e}")
            return
        if self._encoder_backoff.succeeded():
            log.info("cycle: the encoder runs again")
            self._health("recovered", "encoder")

    def trigger_now(self, action: str = "") -> None:
        """Ask for a sync and, when due, a cycle as soon as possible (e.g. from a webhook).

        Returns at once. Calls are coalesced: a burst gives one or two runs, on one thread,
        at most one per ``webhook.min_interval_s``; a job already running is waited for,
        not skipped, so a change it may have missed is still picked up. After a ``TASKS_DELETED``
        call the sync also asks which of our waiting tasks are gone.
        """
        if action == TASKS_DELETED:
            with self._flags:
                self._tasks_deleted = True
        self._trigger.request()

    def health(self) -> dict[str, Any]:
        """The daemon's state for ``GET /healthz``: no secrets, no payloads."""
        return {"state": "stopping" if self.ctx.stop.is_set() else "running", "pid": os.getpid(),
                "started_at": self.started_at.isoformat(), "backoff_failures": self._backoff.failures,
                "webhook": {"triggers": self._trigger.requests, "runs": self._trigger.runs,
                            "registration_pending": self._webhook_pending}}

    def _triggered(self) -> None:
        with self._flags:
            check, self._tasks_deleted = self._tasks_deleted, False
        self.sync_job(wait=True, check_waiting=check)  # annotation calls stay fast: no lookup
        self.cycle_job(wait=True)  # no second pull right after this one

    def _note_unclean_end(self) -> None:
        """Say in the health log when the daemon before this one ended without stopping (kill -9, a crash, a reboot).

        Its last beat still says running: a graceful stop beats "stopped". The store's lock is ours, so
        no other daemon runs on this store now. Without the event, the history read "started" twice (QA).
        """
        with Session(self.ctx.engine) as session:
            raw = get_value(session, HEARTBEAT_KEY)
        beat: dict[str, Any] = json.loads(raw) if raw else {}
        if beat.get("state") != "running" or beat.get("pid") == os.getpid():
            return
        message = (f"the daemon before this one (pid {beat.get('pid')}) ended without stopping (killed, crashed or "
                   f"its machine restarted); its last beat was at {beat.get('last_beat', '?')}")
        log.warning("%s", message)
        self._health("ended_uncleanly", message)

    def heartbeat(self, state: str = "running") -> None:
        beat = {"pid": os.getpid(), "host": socket.gethostname(), "state": state,
                "started_at": self.started_at.isoformat(),
                "last_beat": datetime.now(UTC).isoformat(), "backoff_failures": self._backoff.failures}
        try:
            with Session(self.ctx.engine) as session:
                set_value(session, HEARTBEAT_KEY, json.dumps(beat))
                prune_health_events(session)
                session.commit()
        except OperationalError as e:
            if not is_store_locked(e):
                raise
            log.debug("heartbeat skipped: the store is locked by another writer")

    def _guarded(self, name: str, body: Callable[[], bool], *, patience_s: float) -> None:
        """Run ``body`` under the work lock and the backoff; it returns whether it reached Label Studio.

        Only a run that reached Label Studio ends a backoff: a cycle that was not due asks it
        nothing, and used to log "reachable again" and clear the backoff in the middle of an outage.
        """
        if self._backoff.waiting(self.ctx.clock()) or not self._acquire(patience_s):
            return
        now = self.ctx.clock()
        reached = False
        try:
            if not self._has_project:
                self._project_id = ensure_project(self.ctx).project_id
                self._has_project = reached = True
            if self._webhook_pending and time.monotonic() >= self._webhook_retry_at:
                self._register_webhook()  # it returns once Label Studio answered, yes or no
                reached = True
            reached = body() or reached
        except ConnectorUnavailable as e:
            delay = self._backoff.failed(now, self._rng, "unavailable")
            log.warning("%s: Label Studio unavailable (%s); next try at the first run after %.0fs", name, e, delay)
            self._health("unavailable", str(e))
        except ConnectorAuthError as e:
            delay = self._backoff.failed(now, self._rng, "auth")
            log.error("%s: %s (next try at the first run after %.0fs)", name, e, delay)
            self._health("auth_error", str(e))
        except ConnectorRejected as e:  # often lasting (the project was deleted): back off, do not flood the log
            delay = self._backoff.failed(now, self._rng, "rejected")
            log.error("%s failed: %s (next try at the first run after %.0fs)", name, e, delay)
            self._health("job_error", f"{name}: ConnectorRejected: {e}")
        except (ConnectorError, ModelError) as e:
            log.error("%s failed: %s: %s", name, type(e).__name__, e)
            self._health("job_error", f"{name}: {type(e).__name__}: {e}")
        except OperationalError as e:
            if is_store_locked(e):
                self._store_locked(name)
            elif is_disk_full(e):
                self._disk_full(name, "the store's database")
            else:
                raise
        except OSError as e:
            if not is_disk_full(e):
                raise
            self._disk_full(name, e.filename or "a file under store.data_dir")
        else:
            ended = self._backoff.succeeded() if reached else ""
            if ended:
                log.info(_RECOVERED[ended], name)
                self._health("recovered", name)
            self._store_unlocked()
            if self._full_runs:
                log.info("space on disk again after %d runs stopped for lack of it", self._full_runs)
                self._full_runs = 0
        finally:
            self._work.release()

    def _store_locked(self, name: str) -> None:
        """A run gave up waiting for another writer (a large ``pool add``): skip it, quietly after the first.

        Nothing is lost: every stage commits its own work, so the next run carries on where this
        one stopped. No health row now: writing it would wait for the same lock.
        """
        self._locked_runs += 1
        level = logging.WARNING if self._locked_runs == 1 else logging.INFO
        log.log(level, "%s skipped: another process held the store's write lock for over %g s "
                "(a large `labelloop pool add`?); retrying on the next run",
                name, self.ctx.settings.store.busy_timeout_s)

    def _disk_full(self, name: str, where: object) -> None:
        """A write found no space left: log it (an error the first time, INFO while it lasts), no traceback.

        Nothing is lost: the transaction in flight rolled back, every stage before it committed,
        and the next run retries. No health row: writing it needs space too.
        """
        self._full_runs += 1
        level = logging.ERROR if self._full_runs == 1 else logging.INFO
        log.log(level, "%s stopped: no space left on the disk for %s (store.data_dir is %s); "
                "free some space, the next run retries", name, where, self.ctx.settings.store.data_dir)

    def _store_unlocked(self) -> None:
        """After runs skipped for a locked store, record them once a write goes through again."""
        if not self._locked_runs:
            return
        try:
            self._health("store_locked", f"{self._locked_runs} runs skipped while another process held the store")
        except OperationalError as e:
            if not is_store_locked(e):
                raise
            return  # this run only read: still locked
        log.info("the store is writable again after %d skipped runs", self._locked_runs)
        self._locked_runs = 0

    def _acquire(self, patience_s: float) -> bool:
        """Take the work lock, waiting for a running job ``patience_s`` at most (unless stopping): a
        triggered run waits for as long as it takes, a scheduled one until its next turn.

        A scheduled job used to skip its turn whenever the lock was taken. A cycle that is not
        due holds it for milliseconds, and with the sync and the cycle due at the same instant
        (both every second, as in the demo) the sync lost nine turns in ten: labels reached the
        store up to 100 s late. A long job (a cycle that embeds) still makes the others skip
        turns rather than queue up.
        """
        deadline = time.monotonic() + patience_s
        while True:
            if self._work.acquire(timeout=max(0.0, min(0.5, deadline - time.monotonic()))):
                return True
            if self.ctx.stop.is_set() or time.monotonic() >= deadline:
                return False

    def _register_webhook(self) -> None:
        """Point the project's webhook at us; a refusal is logged once and polling carries on.

        A refused token is not such a refusal: if the token no longer works for anything (checked
        with ``check()``), the job backs off as for any call and registration is tried again.
        A token that works but may not manage webhooks (403) gives polling only.

        Nor is Label Studio failing on this one call while it answers others (an HTTP 500: it
        does that when it cannot resolve ``public_url``'s host): polling goes on, and registration
        is tried again after ``_WEBHOOK_RETRY_S``. It used to fail every sync with "Label Studio
        unavailable" and stall the daemon (QA).

        Raises:
            ConnectorUnavailable, ConnectorAuthError: tried again on the next job.
        """
        try:
            hook_id = register(self.ctx.connector, self.ctx.settings, project_id=self._project_id)
        except ConnectorAuthError as e:
            self.ctx.connector.check()  # raises when the token itself is refused: back off, stay pending
            self._webhook_off(e)
        except ConnectorRejected as e:
            self._webhook_off(e)
        except ConnectorUnavailable as e:
            self.ctx.connector.check()  # raises when Label Studio is down: back off as for any call
            self._webhook_retry_at = time.monotonic() + _WEBHOOK_RETRY_S
            log.error("webhook not registered, polling only: %s (in %.0fs); Label Studio answers other calls, so "
                      "check that it can resolve and reach webhook.public_url %s", e, _WEBHOOK_RETRY_S,
                      masked_url(self.ctx.settings.webhook_url()))
            self._health("webhook_error", str(e))
            return
        else:
            log.info("Label Studio calls %s (webhook %s)", self.ctx.settings.webhook_url(), hook_id)
            self._webhook_registered = True
        self._webhook_pending = False

    def _webhook_off(self, e: ConnectorRejected) -> None:
        log.error("webhook not registered, polling only: %s", e)
        self._health("webhook_error", str(e))

    def _deactivate_webhook(self) -> None:
        """On a graceful stop, stop Label Studio calling us: with the daemon gone, every submitted
        annotation would wait for a call that cannot connect. The next start switches it back on
        (and its first full sync catches up on what happened meanwhile)."""
        if not self._webhook_registered:
            return
        try:
            self.ctx.connector.deactivate_webhook(self.ctx.settings.webhook_url())
        except ConnectorError as e:
            log.warning("could not switch the webhook off (%s); Label Studio keeps calling until the next start",
                        type(e).__name__)
        else:
            log.info("webhook switched off until the next start")

    def _on_event(self, event: JobExecutionEvent) -> None:
        kind = {EVENT_JOB_ERROR: "job_error", EVENT_JOB_MISSED: "job_missed",
                EVENT_JOB_MAX_INSTANCES: "job_max_instances"}.get(event.code, "job_event")
        exception = getattr(event, "exception", None)
        detail = f"{event.job_id}: {type(exception).__name__}" if exception else event.job_id
        if exception is None and event.code in (EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED):
            # a run still going (a long embed) when the next is due: expected, and it filled the
            # health log, pushing out the events that matter
            log.debug("scheduler: %s %s", kind, detail)
            return
        log.log(logging.ERROR if exception else logging.INFO, "scheduler: %s %s", kind, detail)
        self._health(kind, detail)

    def _health(self, kind: str, message: str) -> None:
        with Session(self.ctx.engine) as session:
            session.add(HealthEvent(kind=kind, message=message[:500]))
            session.commit()
