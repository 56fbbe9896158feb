"""Freshness: Label Studio calls the daemon on each annotation, and the daemon syncs at once.

The handler only checks and signals; it never syncs or trains itself. It answers 202
at once (Label Studio 1.23 calls webhooks inside the annotator's request, with a 1 s
timeout), and :class:`Coalescer` merges a burst of calls into one or two runs on one
background thread. Polling stays the fallback that loses nothing: a call that is lost,
refused or never made only delays a label until the next scheduled sync.

The endpoint:

* ``POST /webhook`` with the shared secret in ``X-Labelloop-Secret`` (compared in
  constant time) and a JSON object with an ``action``: 202. No secret: 401; a wrong one:
  403 (the body is drained, never parsed); no length: 411; more than ``max_body_bytes``:
  413; not a JSON object with an ``action``: 400. Nothing of the request is echoed.
* ``GET /healthz``: the daemon's state as JSON (no secrets; ``HEAD``: the status alone).
  Other paths: 404; other methods on ``/webhook``: 405; a method http.server does not know
  or a malformed request: its status (501, 400, ...) with a JSON body that echoes nothing.

Log lines carry the action, the project id and the status; never a body or a header value.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from connectors.base import Connector
from daemon.errors import ConfigError
from daemon.settings import Settings

__all__ = [
    "HEALTH_PATH",
    "PROJECT_HEADER",
    "SECRET_HEADER",
    "TASKS_DELETED",
    "TRIGGER_ACTIONS",
    "WEBHOOK_PATH",
    "Coalescer",
    "WebhookServer",
    "register",
    "start_server",
]

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhook"
HEALTH_PATH = "/healthz"
SECRET_HEADER = "X-Labelloop-Secret"
PROJECT_HEADER = "X-Labelloop-Project"  # Label Studio sends no payload (see register), so we tell it our id
TASKS_DELETED = "TASKS_DELETED"  # leaves nothing to pull: the sync it triggers asks which waiting tasks are gone
TRIGGER_ACTIONS = (
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", TASKS_DELETED,
)
_ACTION = re.compile(r"[A-Z_]{1,64}")
_READ_CHUNK = 65_536
_WARNINGS_PER_WINDOW = 10  # refused or broken calls logged per window; the rest are counted
_WARNING_WINDOW_S = 60.0


class Coalescer:
    """Run ``work`` on one background thread when asked, merging requests that come meanwhile.

    The first request runs ``work`` at once. Requests made while it runs, or less than
    ``min_interval_s`` after it started, are merged into one more run, which starts
    ``min_interval_s`` after the previous one. A burst of any size gives one or two runs.
    ``request`` never blocks and is thread-safe; the thread starts on the first request.
    """

    def __init__(
        self,
        work: Callable[[], None],
        *,
        min_interval_s: float,
        on_error: Callable[[Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "labelloop-trigger",
    ) -> None:
        self.work = work
        self.min_interval_s = min_interval_s
        self.on_error = on_error
        self.clock = clock
        self.name = name
        self.requests = 0  # requests accepted so far
        self.runs = 0  # runs of ``work`` finished so far
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a run as soon as allowed; ignored after :meth:`close`."""
        with self._lock:
            if self._closed.is_set():
                return
            self.requests += 1
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new requests and wait for a running ``work`` to return."""
        with self._lock:
            self._closed.set()
            self._wake.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _loop(self) -> None:
        last_start = float("-inf")
        while True:
            self._wake.wait()
            delay = last_start + self.min_interval_s - self.clock()
            if self._closed.is_set() or (delay > 0 and self._closed.wait(delay)):
                return
            self._wake.clear()  # requests from now on ask for one more run
            last_start = self.clock()
            try:
                self.work()
            except Exception as e:  # a bug in work must not stop later runs; it is logged with its traceback
                log.exception("%s: run failed", self.name)
                if self.on_error is not None:
                    self.on_error(e)
            self.runs += 1


class _WarningBudget:
    """At most ``per_window`` warnings in each ``window_s``, counting the ones held back (thread-safe)."""

    def __init__(self, *, per_window: int, window_s: float) -> None:
        self.per_window, self.window_s = per_window, window_s
        self._lock = threading.Lock()
        self._window_start = -math.inf
        self._used = 0
        self._dropped = 0

    def take(self, now: float) -> tuple[bool, int]:
        """``(allowed, held back since the last allowed one)``; the count is reset when it is reported."""
        with self._lock:
            if now - self._window_start >= self.window_s:
                self._window_start, self._used = now, 0
            if self._used >= self.per_window:
                self._dropped += 1
                return False, 0
            self._used += 1
            dropped, self._dropped = self._dropped, 0
            return True, dropped


class WebhookServer(ThreadingHTTPServer):
    """The webhook endpoint on a background thread: :meth:`start`, then :meth:`stop`.

    Args:
        address: ``(host, port)``; port 0 picks a free one (see :attr:`port`).
        secret: the shared secret Label Studio sends in ``X-Labelloop-Secret``.
        on_event: called with the action (and must return at once) for each accepted trigger action.
        health: returns the daemon's state for ``GET /healthz``; it must hold no secret.
    """

    daemon_threads = True
    request_timeout_s = 10.0  # a client that sends nothing for this long is dropped
    # http.server listens with a queue of 5: 10 calls at once (several annotators submitting) had
    # some wait 1 s for the kernel's retry, the timeout of Label Studio's call
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        secret: str,
        max_body_bytes: int,
        on_event: Callable[[str], None],
        health: Callable[[], Mapping[str, Any]],
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._secret = secret.encode("utf-8")
        self.max_body_bytes = max_body_bytes
        self.on_event = on_event
        self.health = health
        self._thread: threading.Thread | None = None
        self._warnings = _WarningBudget(per_window=_WARNINGS_PER_WINDOW, window_s=_WARNING_WINDOW_S)
        self.accepted_before = False  # the first accepted call is logged at INFO, the rest at DEBUG
        super().__init__(address, _Handler)

    def __repr__(self) -> str:
        return f"WebhookServer(port={self.port})"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def warn(self, message: str, *args: object) -> None:
        """Log a refused or broken call, at most ``_WARNINGS_PER_WINDOW`` a minute.

        Anyone who can reach the port could otherwise grow the log by a line per call (QA: 100
        wrong-secret calls, 100 lines); the first line after a quiet spell says how many were not logged.
        """
        allowed, dropped = self._warnings.take(time.monotonic())
        if allowed:
            suffix = f" ({dropped} more refused or broken calls were not logged before this one)" if dropped else ""
            log.warning(message + suffix, *args)

    def is_authentic(self, provided: str) -> bool:
        """Compare a header value with the secret in constant time."""
        return hmac.compare_digest(provided.encode("utf-8", "surrogateescape"), self._secret)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="labelloop-webhook", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting calls, let running handlers finish (they only signal), close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a broken pipe or reset: the caller hung up
            log.info("webhook: %s closed the connection before the answer was written", client_address[0])
            return
        log.exception("webhook: handler failed for a call from %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    server_version = "labelloop"
    sys_version = ""
    timeout = WebhookServer.request_timeout_s

    def do_POST(self) -> None:
        if self._path() != WEBHOOK_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            status, action, project = self._receive()
        except (TimeoutError, ConnectionError) as e:
            self.close_connection = True
            self.server.warn("webhook: a call from %s broke off (%s)", self.client_address[0], type(e).__name__)
            return
        if status is not HTTPStatus.ACCEPTED:
            self.server.warn("webhook %s project %s from %s -> %s", action, project, self.client_address[0],
                             status.value)
            self._answer(status, {"error": status.phrase.lower()})
            return
        # one INFO line per answer was two thirds of a soak's log (QA): the sync it triggers logs what it pulled
        first, self.server.accepted_before = not self.server.accepted_before, True
        log.log(logging.INFO if first else logging.DEBUG, "webhook %s project %s from %s -> %s%s", action, project,
                self.client_address[0], status.value, "; later accepted calls are logged at DEBUG" if first else "")
        if action in TRIGGER_ACTIONS:
            self.server.on_event(action)  # only signals: the sync runs on the trigger's thread
            self._answer(status, {"status": "accepted"})
        else:
            self._answer(status, {"status": "ignored"})

    def do_GET(self) -> None:
        if self._path() == HEALTH_PATH:
            self._answer(HTTPStatus.OK, self.server.health())
        else:
            self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_HEAD(self) -> None:
        status = HTTPStatus.OK if self._path() == HEALTH_PATH else (
            HTTPStatus.METHOD_NOT_ALLOWED if self._path() == WEBHOOK_PATH else HTTPStatus.NOT_FOUND)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        if status is HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "POST")
        self.end_headers()

    def do_OPTIONS(self) -> None:
        self._not_allowed()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (an unknown method, a malformed request line): a JSON
        answer that, unlike its HTML page, repeats nothing of the request, and a log line."""
        status = HTTPStatus(code)
        self.server.warn("webhook: a request from %s that is not well-formed HTTP for us -> %d",
                         self.client_address[0], status.value)
        self.close_connection = True
        self._answer(status, {"error": status.phrase.lower()})

    def log_message(self, format: str, *args: Any) -> None:
        """Keep http.server's own lines (request lines, parse errors) out of the daemon's log."""

    def _receive(self) -> tuple[HTTPStatus, str, str]:
        """Check the call; return ``(status, action, project)``, the last two safe to log."""
        project = _digits(self.headers.get(PROJECT_HEADER))
        provided = self.headers.get(SECRET_HEADER)
        length = self._length()
        if provided is None or not self.server.is_authentic(provided):
            if length is not None and length <= self.server.max_body_bytes:
                self._drain(length)  # unread bytes would reset the connection before the client reads 401/403
            return (HTTPStatus.UNAUTHORIZED if provided is None else HTTPStatus.FORBIDDEN), "-", project
        if length is None:
            return HTTPStatus.LENGTH_REQUIRED, "-", project
        if length > self.server.max_body_bytes:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "-", project
        try:
            payload = json.loads(self.rfile.read(length))
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            return HTTPStatus.BAD_REQUEST, "-", project
        action = payload.get("action") if isinstance(payload, dict) else None
        if not isinstance(action, str):
            return HTTPStatus.BAD_REQUEST, "-", project
        if isinstance(payload.get("project"), dict):  # a webhook set up by hand may send the payload
            project = _digits(str(payload["project"].get("id"))) if project == "-" else project
        return HTTPStatus.ACCEPTED, (action if _ACTION.fullmatch(action) else "?"), project

    def _length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") is not None or raw is None or not raw.strip().isdigit():
            return None
        return int(raw)

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _READ_CHUNK))
            if not chunk:
                return
            length -= len(chunk)

    def _not_allowed(self) -> None:
        if self._path() == WEBHOOK_PATH:
            self._answer(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"}, allow="POST")
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _answer(self, status: HTTPStatus, body: Mapping[str, Any], *, allow: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(data)


def _digits(value: str | None) -> str:
    return value if value is not None and value.isdigit() and len(value) <= 20 else "-"


def start_server(
    settings: Settings, *, on_event: Callable[[str], None], health: Callable[[], Mapping[str, Any]]
) -> WebhookServer:
    """Listen on ``webhook.host:port`` and serve on a background thread.

    Raises:
        ConfigError: no usable secret, or the address cannot be bound (say, the port is taken).
    """
    hook = settings.webhook
    secret = settings.webhook_secret()
    try:
        server = WebhookServer(
            (hook.host, hook.port),
            secret=secret,
            max_body_bytes=hook.max_body_bytes,
            on_event=on_event,
            health=health,
        )
    except OSError as e:
        raise ConfigError(
            f"cannot listen for webhooks on {hook.host}:{hook.port} ({e.strerror or type(e).__name__}); "
            "set webhook.port to a free port"
        ) from None
    server.start()
    log.info("listening for Label Studio webhooks on %s:%s", hook.host, server.port)
    return server


def register(connector: Connector, settings: Settings, *, project_id: str) -> str:
    """Create or update the project's webhook to ``settings.webhook_url()``; return its id.

    Raises:
        ConfigError: no usable secret or URL.
        ConnectorError: the tool refused (e.g. its SSRF protection) or is unreachable.
    """
    headers = {SECRET_HEADER: settings.webhook_secret(), PROJECT_HEADER: project_id}
    return connector.register_webhook(settings.webhook_url(), headers, list(TRIGGER_ACTIONS))
