"""LabelStudioConnector without a server: the SDK runs on httpx.MockTransport.

Error translation (transport, 4xx, 5xx, bad token refresh), no SDK retries, token
redaction in messages, reprs, logs and tracebacks, and push's fallback when an import
does not return task ids.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from connectors.base import OutgoingTask
from connectors.errors import ConnectorAuthError, ConnectorRejected, ConnectorUnavailable
from connectors.label_studio import LabelStudioConnector

URL = "http://ls.test:8080"
LEGACY = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"
CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
    '<Choice value="pos"/><Choice value="neg"/></Choices></View>'
)
Handler = Callable[[httpx.Request], httpx.Response]
_SIGNING_KEY = "a-test-key-that-is-not-the-servers-0123456789"


def _pat(*, expires_in: timedelta = timedelta(days=365)) -> str:
    claims = {"token_type": "refresh", "exp": int((datetime.now(UTC) + expires_in).timestamp()), "user_id": 1}
    return jwt.encode(claims, _SIGNING_KEY, algorithm="HS256")


def _access() -> str:
    claims = {"token_type": "access", "exp": int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())}
    return jwt.encode(claims, _SIGNING_KEY, algorithm="HS256")


def _connector(
    handler: Handler, *, api_key: str = LEGACY, url: str = URL, **kwargs: Any
) -> LabelStudioConnector:
    return LabelStudioConnector.connect(
        url=url, api_key=api_key, timeout_s=2.0, transport=httpx.MockTransport(handler), **kwargs
    )


def _answer(status: int, body: Any = None, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            return httpx.Response(200, json={"access": _access()})
        return httpx.Response(status, json=body if body is not None else {"detail": "x"}, headers=headers)

    return handler


def _raise(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


def _assert_secret_free(
    error: BaseException, connector: LabelStudioConnector, secret: str, logs: str
) -> None:
    formatted = "".join(traceback.format_exception(error))
    for text in (str(error), repr(connector), formatted, logs):
        assert secret not in text


@pytest.mark.parametrize("api_key", [LEGACY, _pat()])
def test_a_refused_token_says_what_to_do_and_never_shows_the_token(
    api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = _connector(
        _answer(401, {"detail": "Invalid token."}, **{"set-cookie": "sessionid=s3cr3t"}), api_key=api_key
    )
    with pytest.raises(ConnectorAuthError) as caught:
        connector.check()
    message = str(caught.value)
    assert URL in message and "(401)" in message
    assert "Personal Access Token" in message and "LABELLOOP_LABEL_STUDIO__API_KEY" in message
    _assert_secret_free(caught.value, connector, api_key, caplog.text)
    _assert_secret_free(caught.value, connector, "s3cr3t", caplog.text)  # LS's session cookie


def test_disabled_legacy_tokens_are_named_as_the_reason() -> None:
    body = {"detail": "Authentication token no longer valid: legacy token authentication has been disabled"}
    with pytest.raises(ConnectorAuthError, match="legacy tokens are disabled"):
        _connector(_answer(401, body)).check()


def test_a_refused_pat_refresh_is_an_auth_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "Token is invalid", "code": "token_not_valid"})

    with pytest.raises(ConnectorAuthError, match="refused the API token"):
        _connector(handler, api_key=_pat()).check()


def test_an_expired_pat_is_refused_before_any_request() -> None:
    with pytest.raises(ConnectorAuthError):
        _connector(_raise(AssertionError("no request expected")), api_key=_pat(expires_in=timedelta(days=-1)))


def test_an_empty_token_or_a_non_http_url_fail_at_connect() -> None:
    with pytest.raises(ConnectorAuthError, match="no API token"):
        _connector(_answer(200), api_key="  ")
    with pytest.raises(ConnectorRejected, match="not an http"):
        _connector(_answer(200), url="ls.test:8080")


def test_forbidden_is_an_auth_error_about_permissions() -> None:
    with pytest.raises(ConnectorAuthError, match="lacks permission"):
        _connector(_answer(403)).check()


def test_not_found_is_rejected_and_names_the_project_id_as_the_suspect() -> None:
    with pytest.raises(ConnectorRejected, match=r"deleted there\? check label_studio\.project_id") as caught:
        _connector(_answer(404), project_id=42).ensure_project(classes=None)
    assert not isinstance(caught.value, ConnectorAuthError)


def test_a_validation_error_names_the_fields_but_not_the_values() -> None:
    body = {"detail": "Validation error", "validation_errors": {"title": ["secret text of a task"]}}
    with pytest.raises(ConnectorRejected, match=r"HTTP 400; check title") as caught:
        _connector(_answer(400, body)).check()
    assert "secret text" not in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_errors_and_throttling_are_unavailable_and_not_retried_by_the_sdk(status: int) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, text="<html>busy</html>")

    with pytest.raises(ConnectorUnavailable, match=f"HTTP {status}"):
        _connector(handler).check()
    assert len(requests) == 1  # the daemon retries on its next tick


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "check that it is running"),
        (httpx.ReadTimeout("timed out"), "did not answer in time"),
        (httpx.RemoteProtocolError("peer closed connection"), "check that it is running"),
    ],
)
def test_transport_failures_are_unavailable_and_name_the_url(error: Exception, words: str) -> None:
    with pytest.raises(ConnectorUnavailable, match=words) as caught:
        _connector(_raise(error)).check()
    assert URL in str(caught.value)


def test_an_html_error_page_on_token_refresh_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with pytest.raises(ConnectorUnavailable, match="not JSON"):
        _connector(handler, api_key=_pat()).check()


def test_a_password_in_the_url_stays_out_of_messages_and_repr() -> None:
    connector = _connector(_raise(httpx.ConnectError("refused")), url="http://bob:hunter2@ls.test:8080")
    with pytest.raises(ConnectorUnavailable) as caught:
        connector.check()
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(connector)
    assert "http://ls.test:8080" in str(caught.value)


class _AsyncImportServer:
    """Enough of LS for push: lookups by item id, and an import that returns no task ids."""

    def __init__(self, *, keeps_tasks: bool = True) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.keeps_tasks = keeps_tasks

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/projects/1/":
            return httpx.Response(200, json={"id": 1, "title": "p", "label_config": CONFIG})
        if path == "/api/projects/1/import":
            created = json.loads(request.content)
            if self.keeps_tasks:
                start = len(self.tasks) + 1
                self.tasks += [{"id": start + n, "data": task["data"]} for n, task in enumerate(created)]
            return httpx.Response(201, json={"import": 9})  # what non-Community editions answer
        if path == "/api/tasks/":
            items = json.loads(request.url.params["query"])["filters"]["items"]
            wanted = next(item["value"] for item in items if item["operator"] == "in_list")
            after = next(item["value"] for item in items if item["filter"] == "filter:tasks:id")
            found = [t for t in self.tasks if t["data"]["al_item_id"] in wanted and t["id"] > after]
            return httpx.Response(
                200,
                json={"tasks": found, "total": len(found), "total_annotations": 0, "total_predictions": 0},
            )
        return httpx.Response(404, json={"detail": "not here"})


def test_push_finds_ids_by_lookup_when_the_import_does_not_return_them() -> None:
    server = _AsyncImportServer()
    connector = _connector(server, project_id=1)
    tasks = [OutgoingTask(item_id=f"i{n}", batch_id="b", text="t") for n in range(3)]
    assert connector.push(tasks) == {"i0": "1", "i1": "2", "i2": "3"}


def test_push_raises_unavailable_when_imported_tasks_are_not_visible_yet() -> None:
    connector = _connector(_AsyncImportServer(keeps_tasks=False), project_id=1)
    with pytest.raises(ConnectorUnavailable, match="next push will find them"):
        connector.push([OutgoingTask(item_id="i0", batch_id="b", text="t")])


class _SlowImportServer(_AsyncImportServer):
    """An import the client gives up on while Label Studio is still committing it (QA: 2 cores, 4 daemons)."""

    def __init__(self, failure: Exception) -> None:
        super().__init__()
        self.failure = failure
        self.imports = 0
        self.committing: list[dict[str, Any]] = []  # created by an import whose answer never came

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/projects/1/import":
            self.imports += 1
            if self.imports == 1:
                self.committing = json.loads(request.content)
                raise self.failure
        return super().__call__(request)

    def commit(self) -> None:
        start = len(self.tasks) + 1
        self.tasks += [{"id": start + n, "data": task["data"]} for n, task in enumerate(self.committing)]


def test_a_push_whose_import_got_no_answer_waits_for_it_instead_of_creating_the_tasks_twice() -> None:
    server = _SlowImportServer(httpx.ReadTimeout("timed out"))
    connector = _connector(server, project_id=1)
    now = [0.0]
    connector._clock = lambda: now[0]
    tasks = [OutgoingTask(item_id=f"i{n}", batch_id="b", text="t") for n in range(3)]
    with pytest.raises(ConnectorUnavailable, match="did not answer in time"):
        connector.push(tasks)
    now[0] = 5.0  # the next cycle: Label Studio has not committed the first import yet
    with pytest.raises(ConnectorUnavailable, match="may still be committing") as caught:
        connector.push(tasks)
    assert "no item gets two tasks" in str(caught.value) and server.imports == 1
    server.commit()
    now[0] = 10.0
    assert connector.push(tasks) == {"i0": "1", "i1": "2", "i2": "3"}  # found, not created again
    assert server.imports == 1 and len(server.tasks) == 3


@pytest.mark.parametrize(("failure", "settles"), [(httpx.ReadTimeout("timed out"), True),
                                                  (httpx.RemoteProtocolError("peer closed"), True),
                                                  (httpx.ConnectError("refused"), False)])
def test_tasks_an_import_never_created_are_imported_again_once_it_cannot_commit_any_more(
    failure: Exception, settles: bool
) -> None:
    server = _SlowImportServer(failure)
    connector = _connector(server, project_id=1)
    now = [0.0]
    connector._clock = lambda: now[0]
    tasks = [OutgoingTask(item_id="i0", batch_id="b", text="t")]
    with pytest.raises(ConnectorUnavailable):
        connector.push(tasks)
    if settles:  # it reached Label Studio: wait out the settling time, then import again
        now[0] = connector.settle_s - 1
        with pytest.raises(ConnectorUnavailable, match="may still be committing"):
            connector.push(tasks)
        now[0] = connector.settle_s + 1
    assert connector.push(tasks) == {"i0": "1"}  # a refused connection created nothing: at once
    assert server.imports == 2 and len(server.tasks) == 1
