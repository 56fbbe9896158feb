"""The webhook endpoint, the coalescing trigger and the webhook settings, without Label Studio."""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from connectors.errors import ConnectorAuthError, ConnectorRejected, ConnectorUnavailable
from connectors.fake import FakeConnector
from daemon.app import run_service
from daemon.context import LoopContext
from daemon.errors import ConfigError
from daemon.service import Service
from daemon.settings import Settings, load_settings
from daemon.store import HealthEvent, make_engine
from daemon.webhook import _WARNING_WINDOW_S as WARNING_WINDOW_S
from daemon.webhook import _WARNINGS_PER_WINDOW as WARNINGS_PER_WINDOW
from daemon.webhook import (
    PROJECT_HEADER,
    SECRET_HEADER,
    TASKS_DELETED,
    TRIGGER_ACTIONS,
    Coalescer,
    WebhookServer,
    start_server,
)
from models.hashing import HashingEmbedder

SECRET = "s3cret-" + "x" * 24
PRIVATE = "PRIVATE-TEXT-7f3a"  # stands for a task text: it must never reach a log


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def server(events: list[str]) -> Iterator[WebhookServer]:
    running = WebhookServer(
        ("127.0.0.1", 0),
        secret=SECRET,
        max_body_bytes=1024,
        on_event=events.append,
        health=lambda: {"state": "running", "webhook": {"triggers": len(events)}},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
def client(server: WebhookServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0) as http:
        yield http


def post(client: httpx.Client, body: Any, *, secret: str | None = SECRET, path: str = "/webhook") -> httpx.Response:
    headers = {"Content-Type": "application/json", PROJECT_HEADER: "7"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=headers)


# -- the endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize("action", TRIGGER_ACTIONS)
def test_a_signed_annotation_call_is_accepted_and_triggers(
    client: httpx.Client, events: list[str], action: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.webhook")
    response = post(client, {"action": action, "task": {"data": {"text": PRIVATE}}})
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    assert events == [action]
    assert f"webhook {action} project 7 from 127.0.0.1 -> 202" in caplog.text
    assert PRIVATE not in caplog.text and SECRET not in caplog.text
    assert post(client, {"action": action}).status_code == 202
    accepted = [r for r in caplog.records if "-> 202" in r.getMessage()]
    assert [r.levelno for r in accepted] == [logging.INFO]  # one line per answer filled a soak's log (QA)
    caplog.set_level(logging.DEBUG, logger="daemon.webhook")
    assert post(client, {"action": action}).status_code == 202
    assert caplog.records[-1].levelno == logging.DEBUG and "-> 202" in caplog.records[-1].getMessage()


def test_a_flood_of_refused_calls_logs_a_few_lines_and_counts_the_rest(
    client: httpx.Client, server: WebhookServer, events: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """QA: 100 wrong-secret calls wrote 100 warnings; anyone who reaches the port could grow the log."""
    caplog.set_level(logging.INFO, logger="daemon.webhook")
    for _ in range(100):
        assert post(client, {"action": "ANNOTATION_CREATED"}, secret="wrong-" + "y" * 24).status_code == 403
    refused = [r.getMessage() for r in caplog.records if "-> 403" in r.getMessage()]
    assert len(refused) == WARNINGS_PER_WINDOW
    server._warnings._window_start -= WARNING_WINDOW_S  # a minute later
    assert post(client, {"action": "ANNOTATION_CREATED"}, secret=None).status_code == 401
    last = caplog.records[-1].getMessage()
    assert "-> 401" in last and f"({100 - WARNINGS_PER_WINDOW} more refused or broken calls were not logged" in last
    assert post(client, {"action": "ANNOTATION_CREATED"}).status_code == 202 and events == ["ANNOTATION_CREATED"]
    assert "-> 202" in caplog.records[-1].getMessage()  # accepted calls are never held back


def test_other_actions_are_accepted_but_trigger_nothing(client: httpx.Client, events: list[str]) -> None:
    response = post(client, {"action": "TASKS_CREATED", "tasks": []})
    assert response.status_code == 202 and response.json() == {"status": "ignored"}
    assert events == []


def test_the_project_id_comes_from_a_payload_when_there_is_no_header(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.webhook")
    body = json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 12, "token": PRIVATE}}).encode()
    with httpx.Client(timeout=5.0) as http:
        response = http.post(f"http://127.0.0.1:{server.port}/webhook", content=body, headers={SECRET_HEADER: SECRET})
    assert response.status_code == 202
    assert "project 12 " in caplog.text and PRIVATE not in caplog.text


@pytest.mark.parametrize(("secret", "status"), [(None, 401), ("wrong-" + "y" * 24, 403), ("", 403)])
def test_unsigned_or_badly_signed_calls_are_refused_without_logging_the_body(
    client: httpx.Client, events: list[str], caplog: pytest.LogCaptureFixture, secret: str | None, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    response = post(client, {"action": "ANNOTATION_CREATED", "text": PRIVATE}, secret=secret)
    assert response.status_code == status
    assert events == []
    assert PRIVATE not in caplog.text and PRIVATE not in response.text
    assert SECRET not in caplog.text and (secret is None or secret == "" or secret not in caplog.text)
    assert f"-> {status}" in caplog.text  # the refusal is logged, with its status


def test_an_oversized_body_is_refused_unread(server: WebhookServer, events: list[str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.putrequest("POST", "/webhook")
        connection.putheader(SECRET_HEADER, SECRET)
        connection.putheader("Content-Length", str(10_000_000))  # announced, never sent
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        response.read()
    finally:
        connection.close()
    assert events == []


def test_a_body_without_length_is_refused(client: httpx.Client, events: list[str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"action": "ANNOTATION_CREATED"}'

    response = client.post("/webhook", content=chunks(), headers={SECRET_HEADER: SECRET})  # chunked
    assert response.status_code == 411
    assert events == []


@pytest.mark.parametrize(
    "body",
    [b"{not json " + PRIVATE.encode(), b"[1, 2]", b'{"actions": "x"}', b'{"action": 3}', b"\xff\xfe", b"[" * 900],
)
def test_malformed_calls_get_400_without_echo(
    client: httpx.Client, events: list[str], body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = post(client, body)
    assert response.status_code == 400
    assert response.json() == {"error": "bad request"}
    assert events == [] and PRIVATE not in caplog.text


def test_deeply_nested_json_is_a_400_not_a_crash(server: WebhookServer, events: list[str]) -> None:
    server.max_body_bytes = 200_000
    with httpx.Client(timeout=5.0) as http:
        response = http.post(
            f"http://127.0.0.1:{server.port}/webhook", content=b"[" * 150_000, headers={SECRET_HEADER: SECRET}
        )
    assert response.status_code == 400 and events == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/hook", 404), ("GET", "/webhook", 405), ("PUT", "/webhook", 405), ("DELETE", "/webhook", 405),
     ("GET", "/", 404), ("PATCH", "/other", 404), ("OPTIONS", "/webhook", 405), ("HEAD", "/webhook", 405),
     ("HEAD", "/healthz", 200)],
)
def test_wrong_paths_and_methods(client: httpx.Client, events: list[str], method: str, path: str, status: int) -> None:
    body = b'{"action": "ANNOTATION_CREATED"}'
    response = client.request(method, path, headers={SECRET_HEADER: SECRET}, content=body)
    assert response.status_code == status
    if status == 405:
        assert response.headers["Allow"] == "POST"
    assert events == []


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"GARBAGE /x<b>ECHO</b> HTTP/1.1", 501), (b"GET /x<b>ECHO</b> HTTP/7.0", 505), (b"<b>ECHO</b>", 400)],
)
def test_requests_http_server_refuses_itself_echo_nothing_and_are_logged(
    server: WebhookServer, events: list[str], caplog: pytest.LogCaptureFixture, request_line: bytes, status: int
) -> None:
    # http.server answered these with its HTML error page, which repeats the method, and logged nothing
    caplog.set_level(logging.INFO, logger="daemon.webhook")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(request_line + b"\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65_536):
            answer += chunk
    if status == 501:  # the others parse as HTTP/0.9, which has no status line: the body alone
        assert answer.startswith(b"HTTP/1.0 501 ")
    assert b"ECHO" not in answer and b"GARBAGE" not in answer and b"<" not in answer
    assert answer.endswith(b'"}')  # the JSON body
    assert f"not well-formed HTTP for us -> {status}" in caplog.text and "ECHO" not in caplog.text
    assert events == []


def test_the_listen_queue_takes_a_burst_of_connections(server: WebhookServer) -> None:
    assert server.request_queue_size >= 64  # http.server's 5 made a burst of 10 wait 1 s for the kernel's retry
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(30)]
    try:
        for raw in sockets:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert all(raw.recv(64).startswith(b"HTTP/1.0 200") for raw in sockets)
    finally:
        for raw in sockets:
            raw.close()


def test_healthz_reports_state_without_secrets(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["state"] == "running"
    assert SECRET not in response.text
    assert "Python" not in response.headers.get("Server", "")


def test_a_taken_port_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings(None, webhook={"enabled": True, "secret": SECRET, "port": taken.getsockname()[1]})
        with pytest.raises(ConfigError, match="cannot listen"):
            start_server(settings, on_event=lambda action: None, health=dict)


# -- coalescing --------------------------------------------------------------------------


def test_a_burst_of_requests_gives_one_or_two_runs() -> None:
    runs: list[float] = []

    def work() -> None:
        runs.append(time.monotonic())
        time.sleep(0.05)

    trigger = Coalescer(work, min_interval_s=0.3)
    def ten() -> None:
        for _ in range(10):
            trigger.request()

    threads = [threading.Thread(target=ten) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.8)
    assert trigger.requests == 50
    assert 1 <= len(runs) <= 2
    assert len(runs) < 2 or runs[1] - runs[0] >= 0.29  # never sooner than min_interval_s
    before = len(runs)
    trigger.request()  # a lone request later runs again, at once
    wait_for(lambda: len(runs) == before + 1)
    trigger.close()
    trigger.request()  # ignored after close
    time.sleep(0.1)
    assert len(runs) == before + 1


def test_a_request_during_a_run_is_not_lost() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def work() -> None:
        runs.append(1)
        started.set()
        release.wait(5)

    trigger = Coalescer(work, min_interval_s=0.0)
    trigger.request()
    assert started.wait(5)
    trigger.request()  # arrives while the first run is busy
    release.set()
    wait_for(lambda: trigger.runs == 2)
    trigger.close()
    assert len(runs) == 2


def test_a_failing_run_is_reported_and_later_requests_still_run(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[Exception] = []
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    trigger = Coalescer(work, min_interval_s=0.0, on_error=errors.append)
    trigger.request()
    wait_for(lambda: trigger.runs == 1)
    trigger.request()
    wait_for(lambda: trigger.runs == 2)
    trigger.close()
    assert [type(e) for e in errors] == [RuntimeError]
    assert "run failed" in caplog.text


# -- the service -------------------------------------------------------------------------


def make_service(tmp_path: Path, connector: FakeConnector, loop: dict[str, Any] | None = None,
                 **webhook: Any) -> Service:
    settings = load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/state/db.sqlite", "data_dir": str(tmp_path / "state")},
        loop={"classes": ["a", "b"], **(loop or {})},
        webhook={"enabled": True, "secret": SECRET, **webhook},
    )
    ctx = LoopContext(
        settings=settings,
        engine=make_engine(settings.store.url),
        connector=connector,
        embedder_factory=lambda: HashingEmbedder(dim=8),
    )
    return Service(ctx)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fake_sync(ctx: LoopContext, *, check_waiting: bool = False) -> None:
        calls.append("sync" if not check_waiting else "sync+check")
        time.sleep(0.02)

    monkeypatch.setattr("daemon.service.sync", fake_sync)
    def fake_cycle_due(ctx: LoopContext) -> str:
        calls.append("cycle_due")
        return ""

    monkeypatch.setattr("daemon.service.cycle_due", fake_cycle_due)
    return calls


def test_fifty_webhook_calls_in_a_second_give_one_or_two_syncs(tmp_path: Path, counted: list[str]) -> None:
    service = make_service(tmp_path, FakeConnector(classes=["a", "b"]))  # min_interval_s: the default, 1 s
    started = time.monotonic()
    for _ in range(50):
        service.trigger_now()
        time.sleep(0.01)
    burst = time.monotonic() - started  # about 0.5 s; longer on a loaded host
    time.sleep(1.5)
    service._trigger.close()
    # at most one run per min_interval_s (1 s) while the calls come, and one for the last of them
    assert 1 <= counted.count("sync") <= 1 + math.ceil(burst)
    assert counted.count("cycle_due") == counted.count("sync")  # each triggered sync is followed by the cycle check
    assert threading.active_count() < 10


def test_a_trigger_waits_for_a_running_job_instead_of_skipping(tmp_path: Path, counted: list[str]) -> None:
    service = make_service(tmp_path, FakeConnector(classes=["a", "b"]))
    service._work.acquire()  # a scheduled job is running
    service.trigger_now()
    time.sleep(0.3)
    assert counted == []
    service._work.release()
    wait_for(lambda: "cycle_due" in counted)
    service._trigger.close()
    assert counted == ["sync", "cycle_due"]


def test_a_scheduled_sync_waits_for_a_cycle_that_only_checks_instead_of_skipping(
    tmp_path: Path, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due at the same instant as a cycle that is not due, the sync used to lose its turn."""
    service = make_service(tmp_path, FakeConnector(classes=["a", "b"]))
    checking = threading.Event()

    def slow_check(ctx: LoopContext) -> str:
        counted.append("cycle_due")
        checking.set()
        time.sleep(0.3)
        return ""

    monkeypatch.setattr("daemon.service.cycle_due", slow_check)
    cycle = threading.Thread(target=service.cycle_job)
    cycle.start()
    assert checking.wait(5)
    service.sync_job()  # scheduled: the cycle holds the lock
    cycle.join()
    assert counted == ["cycle_due", "sync+check"]


def test_a_scheduled_job_skips_its_turn_when_the_lock_stays_taken_past_its_interval(
    tmp_path: Path, counted: list[str]
) -> None:
    service = make_service(tmp_path, FakeConnector(classes=["a", "b"]), loop={"sync_interval_s": 0.4})
    service._work.acquire()  # a long cycle (one that embeds) is running
    started = time.monotonic()
    service.sync_job()
    waited = time.monotonic() - started
    service._work.release()
    assert counted == [] and 0.35 <= waited < 3  # waited until its next turn, then gave this one up


def test_with_sync_and_cycle_due_together_every_sync_turn_runs(
    tmp_path: Path, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's setup (both jobs every second, due at the same instants) pulled one turn in
    ten and let labels wait up to 100 s; here both run every 0.25 s for 3 s."""
    service = make_service(tmp_path, FakeConnector(classes=["a", "b"]), enabled=False,
                           loop={"sync_interval_s": 0.25, "cycle_interval_s": 0.25})

    def check(ctx: LoopContext) -> str:
        counted.append("cycle_due")
        time.sleep(0.02)  # reading the store
        return ""

    monkeypatch.setattr("daemon.service.cycle_due", check)
    runner = threading.Thread(target=service.run)
    runner.start()
    time.sleep(3)
    service.ctx.stop.set()
    runner.join(10)
    assert not runner.is_alive()
    checks, syncs = counted.count("cycle_due"), counted.count("sync+check")
    assert checks >= 6, counted  # of 12 turns; fewer only on a badly overloaded host
    assert syncs >= 0.75 * checks, counted  # both jobs get the same turns (before: 4 syncs to 12 checks)


def test_only_a_tasks_deleted_call_and_the_scheduled_sync_ask_which_waiting_tasks_are_gone(
    tmp_path: Path, counted: list[str]
) -> None:
    """A deleted task leaves nothing to pull; an annotation's sync stays one pull, without the lookup."""
    service = make_service(tmp_path, FakeConnector(classes=["a", "b"]))
    service.trigger_now("ANNOTATION_CREATED")
    wait_for(lambda: "cycle_due" in counted)
    service.trigger_now(TASKS_DELETED)
    wait_for(lambda: counted.count("cycle_due") == 2)
    service.trigger_now("ANNOTATIONS_DELETED")
    wait_for(lambda: counted.count("cycle_due") == 3)
    service._trigger.close()
    service.sync_job()  # a scheduled one
    assert counted == ["sync", "cycle_due", "sync+check", "cycle_due", "sync", "cycle_due", "sync+check"]


def test_the_webhook_is_registered_once_with_the_secret_in_a_header(tmp_path: Path, counted: list[str]) -> None:
    fake = FakeConnector(classes=["a", "b"])
    service = make_service(tmp_path, fake, port=9999)
    service.sync_job()
    service.sync_job()
    assert fake.calls.count("register_webhook") == 1
    hook = fake.webhooks["http://127.0.0.1:9999/webhook"]
    assert hook.headers == {SECRET_HEADER: SECRET, PROJECT_HEADER: "1"}
    assert set(hook.actions) == set(TRIGGER_ACTIONS)
    assert SECRET not in json.dumps(service.health())


def test_a_refused_registration_leaves_polling_running(
    tmp_path: Path, counted: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeConnector(classes=["a", "b"])

    def refuse(url: str, headers: Any, actions: Any) -> str:
        raise ConnectorRejected("Label Studio refuses to call it: SSRF protection")

    fake.register_webhook = refuse  # type: ignore[method-assign]
    service = make_service(tmp_path, fake)
    service.sync_job()
    service.sync_job()
    assert counted.count("sync+check") == 2  # polling goes on
    assert "webhook not registered, polling only" in caplog.text and SECRET not in caplog.text
    with Session(service.ctx.engine) as session:
        assert [e.kind for e in session.exec(select(HealthEvent))].count("webhook_error") == 1


def test_a_registration_label_studio_fails_on_while_up_leaves_polling_running_and_is_tried_again_later(
    tmp_path: Path, counted: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Label Studio answers 500 to the webhook's POST when it cannot resolve public_url's host (QA: the daemon
    logged "Label Studio unavailable" on every sync and never pulled)."""
    fake = FakeConnector(classes=["a", "b"])
    register = fake.register_webhook
    failures, tries = [1], []

    def server_error(url: str, headers: Any, actions: Any) -> str:
        tries.append(url)
        if failures[0]:
            failures[0] -= 1
            raise ConnectorUnavailable("Label Studio at http://ls failed during register_webhook (HTTP 500); "
                                       "will retry")
        return register(url, headers, actions)

    fake.register_webhook = server_error  # type: ignore[method-assign]
    service = make_service(tmp_path, fake)
    service.sync_job()
    service.sync_job()
    assert counted == ["sync+check", "sync+check"] and service.health()["backoff_failures"] == 0
    assert len(tries) == 1  # not again before _WEBHOOK_RETRY_S
    assert "webhook not registered, polling only: Label Studio at http://ls failed during register_webhook (HTTP " \
           "500); will retry (in 300s)" in caplog.text
    assert "check that it can resolve and reach webhook.public_url" in caplog.text and SECRET not in caplog.text
    assert service.health()["webhook"]["registration_pending"] is True
    service._webhook_retry_at = 0.0  # the wait is over
    service.sync_job()
    assert len(tries) == 2 and fake.webhooks[service.ctx.settings.webhook_url()].is_active
    assert service.health()["webhook"]["registration_pending"] is False


def test_a_registration_failing_because_label_studio_is_down_backs_off_and_stays_pending(
    tmp_path: Path, counted: list[str]
) -> None:
    fake = FakeConnector(classes=["a", "b"])
    service = make_service(tmp_path, fake)

    def down(url: str, headers: Any, actions: Any) -> str:
        fake.is_down = True  # it went down between the project lookup and the call
        raise ConnectorUnavailable("Label Studio at http://ls failed during register_webhook (connection refused)")

    fake.register_webhook = down  # type: ignore[method-assign]
    service.sync_job()
    assert counted == [] and service.health()["backoff_failures"] == 1
    assert service.health()["webhook"]["registration_pending"] is True


def test_a_token_refused_at_registration_backs_off_and_registers_once_it_works(
    tmp_path: Path, counted: list[str]
) -> None:
    fake = FakeConnector(classes=["a", "b"], api_key="good", accepted_keys=["good"])
    service = make_service(tmp_path, fake)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    service.ctx.clock = lambda: now[0]
    register = fake.register_webhook

    def revoked(url: str, headers: Any, actions: Any) -> str:
        fake._accepted_keys = frozenset()  # the token is revoked between the project lookup and the call
        return register(url, headers, actions)

    fake.register_webhook = revoked  # type: ignore[method-assign]
    service.sync_job()
    assert counted == [] and service.health()["webhook"]["registration_pending"] is True
    assert service.health()["backoff_failures"] == 1
    fake._accepted_keys = frozenset({"good"})  # the operator fixes the token
    fake.register_webhook = register  # type: ignore[method-assign]
    now[0] += timedelta(hours=1)
    service.sync_job()
    assert counted == ["sync+check"] and fake.webhooks[service.ctx.settings.webhook_url()].is_active
    assert service.health()["webhook"]["registration_pending"] is False


def test_a_token_without_webhook_permission_leaves_polling_running(tmp_path: Path, counted: list[str]) -> None:
    fake = FakeConnector(classes=["a", "b"])
    service = make_service(tmp_path, fake)

    def forbidden(url: str, headers: Any, actions: Any) -> str:
        raise ConnectorAuthError("Label Studio denied register_webhook (403): the token's user lacks permission")

    fake.register_webhook = forbidden  # type: ignore[method-assign]
    service.sync_job()
    service.sync_job()
    assert counted == ["sync+check", "sync+check"] and service.health()["backoff_failures"] == 0
    assert fake.calls.count("check") == 1 and service.health()["webhook"]["registration_pending"] is False


def test_register_false_never_touches_the_project(tmp_path: Path, counted: list[str]) -> None:
    fake = FakeConnector(classes=["a", "b"])
    make_service(tmp_path, fake, register=False).sync_job()
    assert "register_webhook" not in fake.calls and counted == ["sync+check"]


def test_a_graceful_stop_switches_the_webhook_off_and_a_start_back_on(tmp_path: Path, counted: list[str]) -> None:
    fake = FakeConnector(classes=["a", "b"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/webhook"
    for run in range(2):
        service = make_service(tmp_path, fake, port=port)
        runner = threading.Thread(target=service.run)
        runner.start()
        wait_for(lambda: url in fake.webhooks and fake.webhooks[url].is_active)
        service.ctx.stop.set()
        runner.join(timeout=10)
        assert not runner.is_alive() and fake.webhooks[url].is_active is False, run
    assert fake.calls.count("deactivate_webhook") == 2 and len(fake.webhooks) == 1


def test_a_stop_without_a_registered_webhook_touches_nothing(tmp_path: Path, counted: list[str]) -> None:
    fake = FakeConnector(classes=["a", "b"])
    service = make_service(tmp_path, fake, register=False)
    service.ctx.stop.set()
    service.run()
    assert "deactivate_webhook" not in fake.calls


# -- settings ----------------------------------------------------------------------------


def webhook_settings(**webhook: Any) -> Settings:
    return load_settings(None, webhook=webhook)


def test_webhook_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    hook = load_settings().webhook
    assert (hook.enabled, hook.host, hook.register_on_start, hook.public_url) == (False, "127.0.0.1", True, None)
    assert load_settings().public_dump()["webhook"]["register"] is True
    assert not load_settings(webhook={"register": False}).webhook.register_on_start
    assert load_settings(webhook={"port": 9000}).webhook_url() == "http://127.0.0.1:9000/webhook"
    assert webhook_settings(host="::1", port=9000).webhook_url() == "http://[::1]:9000/webhook"
    assert webhook_settings(public_url="https://hooks.example.com/webhook").webhook_url() == (
        "https://hooks.example.com/webhook"
    )


@pytest.mark.parametrize("secret", [None, "", "changeme", "CHANGEME", "short-secret", "has a space in it 123456"])
def test_missing_placeholder_or_weak_secrets_are_refused(secret: str | None) -> None:
    settings = webhook_settings(enabled=True, secret=secret)
    with pytest.raises(ConfigError, match="LABELLOOP_WEBHOOK__SECRET") as info:
        settings.webhook_secret()
    assert not secret or secret not in str(info.value)


def test_the_secret_is_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELLOOP_WEBHOOK__SECRET", SECRET)
    settings = load_settings(None, webhook={"enabled": True})
    assert settings.webhook_secret() == SECRET
    assert SECRET not in repr(settings) and SECRET not in json.dumps(settings.public_dump())
    assert settings.public_dump()["webhook"]["secret"] == "**********"


@pytest.mark.parametrize(
    ("webhook", "message"),
    [({"host": "0.0.0.0"}, "public_url"), ({"public_url": "ftp://x/webhook"}, "http"), ({"public_url": "x"}, "http")],
)
def test_unusable_urls_are_refused(webhook: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        webhook_settings(**webhook).webhook_url()


@pytest.mark.parametrize("webhook", [{"port": 0}, {"port": 70000}, {"max_body_bytes": 0}, {"min_interval_s": -1},
                                     {"secrets": "x"}])
def test_bad_webhook_values_are_refused_at_load(webhook: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="webhook"):
        webhook_settings(**webhook)


def test_the_daemon_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/db.sqlite", "data_dir": str(tmp_path)},
        webhook={"enabled": True, "secret": "changeme"},
    )
    fake = FakeConnector(classes=["a", "b"])
    with pytest.raises(ConfigError, match="secret"):
        run_service(settings, connector=fake)
    assert fake.calls == []  # refused before anything was sent


def test_a_caller_that_hangs_up_early_is_noted_without_a_traceback(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Label Studio closing the connection before the 202 was written logged an error and a traceback."""
    with caplog.at_level(logging.INFO, logger="daemon.webhook"):
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            server.handle_error(None, ("127.0.0.1", 5555))
        try:
            raise ValueError("a real bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 5555))
    hung_up, bug = caplog.records
    assert (hung_up.levelno, hung_up.exc_info) == (logging.INFO, None)
    assert "closed the connection" in hung_up.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
