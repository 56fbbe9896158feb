"""Webhooks on a real Label Studio: the real `labelloop run` reacts to annotations at once.

Label Studio 1.23 refuses webhooks to loopback and private addresses (SSRF protection,
checked when a webhook is saved and again when it is sent), so these tests start their own
server with ``SSRF_PROTECTION_ENABLED=false`` instead of using the session's shared one.
The daemon polls every 300 s here, so only the webhook can explain a reaction within seconds.

``LABELLOOP_MEASURE_FRESHNESS=1`` also runs a slow comparison with polling alone (the
default 10 s / 30 s intervals) and writes the timings to stderr (run pytest with ``-s``).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from connectors._label_config import choices_config
from daemon.store import BatchItem, BatchItemState, LabelRecord, LabelStatus, make_engine
from daemon.webhook import SECRET_HEADER
from tests.integration import ls_helpers
from tests.integration.test_daemon_live import (
    CLASSES,
    daemon_env,
    our_tasks,
    pool_add,
    start_daemon,
    stop,
    wait_until,
    write_pool,
)

SECRET = "it-" + "k" * 29
PRIVATE = "PRIVATE-TEXT-c0ffee"  # must never reach the daemon's log
BATCH = 10
MEASURE_ENV = "LABELLOOP_MEASURE_FRESHNESS"


@pytest.fixture(scope="module")
def ls_webhooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Label Studio of this module's own that may call loopback URLs."""
    if ls_helpers.integration_skipped():
        pytest.skip(ls_helpers.SKIP_REASON)
    module = ls_helpers.ls_local()
    server = module.start(
        tmp_path_factory.mktemp("label-studio-webhooks"),
        template=module.ensure_template(),
        extra_env={"SSRF_PROTECTION_ENABLED": "false"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(ls_webhooks: Any) -> Iterator[LabelStudio]:
    sdk, http = ls_helpers.make_client(ls_webhooks.url, ls_webhooks.pat)
    yield sdk
    http.close()


@pytest.fixture
def project(client: LabelStudio, request: pytest.FixtureRequest) -> Iterator[int]:
    project_id = ls_helpers.create_project(client, f"webhooks {request.node.name[:35]}", choices_config(CLASSES))
    yield project_id
    client.projects.delete(id=project_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Daemon:
    """One `labelloop run` in a subprocess, and what it needs to be observed."""

    tmp_path: Path
    env: dict[str, str]
    gold: dict[str, str]
    port: int | None
    engine: Engine = field(init=False)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.engine = make_engine(f"sqlite:///{self.tmp_path}/state/labelloop.db")

    @property
    def log(self) -> Path:
        return self.tmp_path / "daemon.log"

    def start(self) -> None:
        self.process = start_daemon(self.tmp_path, self.env)

    def stop(self) -> int:
        return stop(self.process) if self.process is not None else 0

    def label_of(self, item_id: str) -> str | None:
        with Session(self.engine) as session:
            record = session.get(LabelRecord, item_id)
            return record.label if record is not None and record.status is LabelStatus.LABELED else None

    def has_label(self, item_id: str) -> bool:
        return self.label_of(item_id) == self.gold[item_id]


def has_tasks(client: LabelStudio, project_id: int, count: int) -> bool:
    return ls_helpers.task_count(client, project_id) >= count


def make_daemon(tmp_path: Path, server: Any, project_id: int, *, webhook: bool, **loop: Any) -> Daemon:
    gold = write_pool(tmp_path / "pool.csv", 200)
    env = daemon_env(
        tmp_path, server, project_id, max_waiting_tasks=BATCH, batch_size=BATCH, min_new_labels=10_000, **loop
    )
    port = free_port() if webhook else None
    if webhook:
        env.update({
            "LABELLOOP_WEBHOOK__ENABLED": "true",
            "LABELLOOP_WEBHOOK__PORT": str(port),
            "LABELLOOP_WEBHOOK__SECRET": SECRET,
        })
    pool_add(tmp_path, env)
    return Daemon(tmp_path, env, gold, port)


def poll(condition: Callable[[], bool], *, timeout_s: float, what: str, log: Path) -> None:
    """``wait_until`` with a 20 ms step (it sleeps 250 ms), for timings worth reporting."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            wait_until(condition, timeout_s=0, what=what, log=log)  # raises with the log's tail
        time.sleep(0.02)


@dataclass
class Timings:
    label_s: list[float] = field(default_factory=list)  # annotations.create returned → label in the store
    batch_s: list[float] = field(default_factory=list)  # last annotation of a batch returned → next batch in LS


def run_rounds(daemon: Daemon, client: LabelStudio, project_id: int, *, rounds: int, timeout_s: float) -> Timings:
    """Label each waiting batch: a few items one at a time, then the rest; time both reactions."""
    timings = Timings()
    done: set[str] = set()
    for round_no in range(rounds):
        tasks = {item: task for item, task in our_tasks(client, project_id).items() if item not in done}
        assert len(tasks) == BATCH, f"round {round_no}: {len(tasks)} waiting tasks"
        items = sorted(tasks)
        for item_id in items[:3]:  # one at a time, as an annotator works
            time.sleep(1.2)  # more than webhook.min_interval_s: each is its own trigger
            ls_helpers.annotate(client, tasks[item_id], daemon.gold[item_id])
            returned = time.monotonic()
            poll(partial(daemon.has_label, item_id), timeout_s=timeout_s, what=f"label of {item_id}", log=daemon.log)
            timings.label_s.append(time.monotonic() - returned)
        for item_id in items[3:]:
            ls_helpers.annotate(client, tasks[item_id], daemon.gold[item_id])
        returned = time.monotonic()
        done.update(items)
        wanted = len(done) + BATCH
        poll(partial(has_tasks, client, project_id, wanted), timeout_s=timeout_s, what=f"batch {round_no + 2}",
             log=daemon.log)
        timings.batch_s.append(time.monotonic() - returned)
    return timings


def describe(name: str, timings: Timings) -> str:
    def stats(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"

    return f"{name}: label in store {stats(timings.label_s)}; next batch in LS {stats(timings.batch_s)}\n"


def test_annotations_reach_the_store_and_the_next_batch_is_pushed_within_seconds(
    tmp_path: Path, ls_webhooks: Any, client: LabelStudio, project: int
) -> None:
    daemon = make_daemon(tmp_path, ls_webhooks, project, webhook=True, sync_interval_s=300, cycle_interval_s=300)
    daemon.start()
    try:
        wait_until(lambda: ls_helpers.task_count(client, project) == BATCH, timeout_s=180,
                   what="the first batch", log=daemon.log)
        hooks = client.webhooks.list(project=str(project))
        assert [hook.url for hook in hooks] == [f"http://127.0.0.1:{daemon.port}/webhook"]
        assert hooks[0].headers[SECRET_HEADER] == SECRET and hooks[0].send_payload is False

        timings = run_rounds(daemon, client, project, rounds=2, timeout_s=60)
        assert max(timings.label_s) < 5.0, timings  # polling alone would take up to 300 s here
        assert max(timings.batch_s) < 30.0, timings
        sys.stderr.write(describe("webhook", timings))

        base = f"http://127.0.0.1:{daemon.port}"
        body = json.dumps({"action": "ANNOTATION_CREATED", "text": PRIVATE})
        refused = httpx.post(f"{base}/webhook", content=body, headers={SECRET_HEADER: "wrong-" + "z" * 20})
        unsigned = httpx.post(f"{base}/webhook", content=body)
        assert (refused.status_code, unsigned.status_code) == (403, 401)
        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 200 and health.json()["state"] == "running"
        assert SECRET not in health.text
        assert health.json()["webhook"]["triggers"] >= 2 * BATCH  # LS called us for each annotation
    finally:
        code = daemon.stop()
    assert code == 0
    text = daemon.log.read_text()
    assert "-> 403" in text and "-> 401" in text and "ANNOTATION_CREATED project" in text
    assert PRIVATE not in text and SECRET not in text
    with pytest.raises(httpx.ConnectError):  # the server stopped with the daemon
        httpx.get(f"http://127.0.0.1:{daemon.port}/healthz", timeout=2)


def test_a_restart_reuses_the_webhook_and_edits_and_deletions_arrive(
    tmp_path: Path, ls_webhooks: Any, client: LabelStudio, project: int
) -> None:
    daemon = make_daemon(tmp_path, ls_webhooks, project, webhook=True, sync_interval_s=300, cycle_interval_s=300)
    daemon.env["LABELLOOP_LOG_LEVEL"] = "DEBUG"  # accepted calls after the first are logged at DEBUG
    daemon.start()
    try:
        wait_until(lambda: ls_helpers.task_count(client, project) == BATCH, timeout_s=180,
                   what="the first batch", log=daemon.log)
    finally:
        assert daemon.stop() == 0
    stopped = client.webhooks.list(project=str(project))
    assert [hook.is_active for hook in stopped] == [False]  # nobody to call while the daemon is down
    daemon.start()  # registers again: finds its webhook by URL and switches it back on
    try:
        wait_until(lambda: daemon.log.read_text().count("Label Studio calls http") == 2, timeout_s=60,
                   what="the second registration", log=daemon.log)
        restarted = client.webhooks.list(project=str(project))
        assert [(hook.id, hook.is_active) for hook in restarted] == [(stopped[0].id, True)]
        item_id, task_id = sorted(our_tasks(client, project).items())[0]
        other = "fraud" if daemon.gold[item_id] != "fraud" else "billing"
        annotation = ls_helpers.annotate(client, task_id, daemon.gold[item_id])
        wait_until(lambda: daemon.label_of(item_id) == daemon.gold[item_id], timeout_s=10, what="the label",
                   log=daemon.log)
        time.sleep(1.2)
        ls_helpers.update_annotation(client, annotation, other)  # ANNOTATION_UPDATED
        wait_until(lambda: daemon.label_of(item_id) == other, timeout_s=10, what="the edit", log=daemon.log)
        time.sleep(1.2)
        ls_helpers.delete_annotation(client, annotation)  # ANNOTATIONS_DELETED
        wait_until(lambda: daemon.label_of(item_id) is None, timeout_s=10, what="the retraction", log=daemon.log)
    finally:
        assert daemon.stop() == 0
    text = daemon.log.read_text()
    assert "ANNOTATION_UPDATED project" in text and "ANNOTATIONS_DELETED project" in text


def test_waiting_tasks_deleted_in_label_studio_leave_the_queue_at_once_and_a_new_batch_fills_it(
    tmp_path: Path, ls_webhooks: Any, client: LabelStudio, project: int
) -> None:
    """A deletion leaves nothing to pull: the deleted tasks counted as waiting, and held back the next
    batch, until the next full read (10 minutes by default)."""
    daemon = make_daemon(tmp_path, ls_webhooks, project, webhook=True, sync_interval_s=300, cycle_interval_s=300,
                         full_reconcile_interval_s=600, low_water_fraction=0.5)
    daemon.start()
    try:
        wait_until(lambda: ls_helpers.task_count(client, project) == BATCH, timeout_s=180,
                   what="the first batch", log=daemon.log)
        first = our_tasks(client, project)
        doomed = sorted(first.items())[:6]
        ls_helpers.delete_task(client, doomed[0][1])  # one by one, as from the task's page
        client.actions.create(  # the rest at once, as from the Data Manager
            id="delete_tasks", project=project, selected_items={"all": False, "included": [t for _, t in doomed[1:]]}
        )
        gone = {item_id for item_id, _ in doomed}
        wait_until(lambda: len(our_tasks(client, project)) == BATCH, timeout_s=30,
                   what="a new batch in place of the deleted tasks", log=daemon.log)  # polling: 300 s
    finally:
        assert daemon.stop() == 0
    with Session(daemon.engine) as session:
        states = {(item.item_id, item.state) for item in session.exec(select(BatchItem))}
    assert all((item_id, BatchItemState.WITHDRAWN) in states for item_id in gone)  # back in the pool
    text = daemon.log.read_text()
    assert "TASKS_DELETED project" in text
    assert "of our waiting tasks deleted in the annotation tool" in text  # the webhook's sync found them


def test_a_webhook_left_at_an_old_address_is_deleted(client: LabelStudio, project: int) -> None:
    """SIGKILLed, then started on another port: Label Studio kept calling the dead address, with the
    secret, on every answer, and a graceful stop switched off only the new one (QA). Another tool's
    webhook (other headers) stays on."""
    from connectors._ls_webhooks import upsert_webhook

    secret = {"X-Labelloop-Secret": "s" * 32}
    actions = ["ANNOTATION_CREATED"]
    upsert_webhook(client, "ls", project, "http://127.0.0.1:18613/webhook", secret, actions)
    others = client.webhooks.create(url="http://127.0.0.1:18999/hook", project=project, headers={"X-Other": "1"},
                                    actions=actions, send_for_all_actions=False)
    second, outcome, _, retired = upsert_webhook(client, "ls", project, "http://127.0.0.1:18614/webhook", secret,
                                                 actions)
    assert outcome == "created" and retired == ("http://127.0.0.1:18613/webhook",)
    active = {hook.id: hook.is_active for hook in client.webhooks.list(project=str(project))}
    assert active == {others.id: True, int(second): True}  # the old address is gone, not only off
    again = upsert_webhook(client, "ls", project, "http://127.0.0.1:18614/webhook", secret, actions)
    assert again[1:] == ("unchanged", 1, ())  # nothing more to switch off
    client.webhooks.update(int(second), url="http://127.0.0.1:18614/webhook", is_active=False)  # a graceful stop
    third, outcome, _, retired = upsert_webhook(client, "ls", project, "http://127.0.0.1:18615/webhook", secret,
                                                actions)
    assert outcome == "created" and retired == ()  # switched off already: deleted without a warning
    hooks = {hook.id for hook in client.webhooks.list(project=str(project))}
    assert hooks == {others.id, int(third)}  # one of ours per project, however often the port changed (QA)


def polled_without_a_webhook(daemon: Daemon, ls_client: LabelStudio, project_id: int) -> str:
    """Start ``daemon``, answer one task of its first batch, wait for the label to be polled in; return its log."""
    daemon.start()
    try:
        wait_until(lambda: ls_helpers.task_count(ls_client, project_id) == BATCH, timeout_s=180,
                   what="the first batch", log=daemon.log)
        item_id, task_id = sorted(our_tasks(ls_client, project_id).items())[0]
        ls_helpers.annotate(ls_client, task_id, daemon.gold[item_id])
        wait_until(lambda: daemon.label_of(item_id) == daemon.gold[item_id], timeout_s=30, what="a polled label",
                   log=daemon.log)
    finally:
        assert daemon.stop() == 0
    return daemon.log.read_text()


def test_a_refused_webhook_leaves_polling_working(
    tmp_path: Path, label_studio: Any, ls_project: Any, ls_client: LabelStudio
) -> None:
    """The session's server keeps SSRF protection on: registration fails, the loop does not."""
    project_id = ls_project(CLASSES)
    text = polled_without_a_webhook(make_daemon(tmp_path, label_studio, project_id, webhook=True), ls_client,
                                    project_id)
    assert "webhook not registered, polling only" in text and "SSRF" in text and SECRET not in text
    assert ls_client.webhooks.list(project=str(project_id)) == []


def test_a_public_url_label_studio_cannot_resolve_leaves_polling_working(
    tmp_path: Path, label_studio: Any, ls_project: Any, ls_client: LabelStudio
) -> None:
    """Label Studio answers HTTP 500 to a webhook it cannot resolve (QA: the daemon then never pulled)."""
    project_id = ls_project(CLASSES)
    daemon = make_daemon(tmp_path, label_studio, project_id, webhook=True)
    daemon.env["LABELLOOP_WEBHOOK__PUBLIC_URL"] = "https://labelloop-hook.invalid/webhook"
    text = polled_without_a_webhook(daemon, ls_client, project_id)
    assert "failed during the webhook's registration (HTTP 500)" in text
    assert "check that it can resolve and reach" in text
    assert "labelloop-hook.invalid" in text and SECRET not in text
    assert ls_client.webhooks.list(project=str(project_id)) == []


@pytest.mark.skipif(os.environ.get(MEASURE_ENV) != "1", reason=f"set {MEASURE_ENV}=1 to compare with polling")
def test_measure_webhook_against_polling(tmp_path: Path, ls_webhooks: Any, client: LabelStudio) -> None:
    report = ""
    for name, webhook, loop in (
        ("webhook (polling every 300 s)", True, {"sync_interval_s": 300, "cycle_interval_s": 300}),
        ("polling only (defaults: sync 10 s, cycle 30 s)", False, {"sync_interval_s": 10, "cycle_interval_s": 30}),
    ):
        project_id = ls_helpers.create_project(client, f"measure {name[:20]}", choices_config(CLASSES))
        workdir = tmp_path / ("webhook" if webhook else "polling")
        workdir.mkdir()
        daemon = make_daemon(workdir, ls_webhooks, project_id, webhook=webhook, **loop)
        daemon.start()
        try:
            wait_until(partial(has_tasks, client, project_id, BATCH), timeout_s=180,
                       what="the first batch", log=daemon.log)
            report += describe(name, run_rounds(daemon, client, project_id, rounds=3, timeout_s=120))
        finally:
            daemon.stop()
            client.projects.delete(id=project_id)
    sys.stderr.write("\n" + report)
