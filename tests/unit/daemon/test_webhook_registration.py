"""Registering the daemon's webhook in Label Studio: the connector's SDK calls on httpx.MockTransport.

Registration through the daemon, against a real Label Studio server: tests/integration/test_webhook_live.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from connectors.errors import ConnectorAuthError, ConnectorRejected
from connectors.label_studio import LabelStudioConnector
from daemon.webhook import PROJECT_HEADER, SECRET_HEADER, TRIGGER_ACTIONS

SECRET = "s3cret-" + "x" * 24


LS_URL = "http://ls.test:8080"
HOOK_URL = "http://127.0.0.1:8765/webhook"
LS_CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
    '<Choice value="a"/><Choice value="b"/></Choices></View>'
)


class FakeLabelStudioWebhooks:
    """Just enough of Label Studio's API for register_webhook: a project and its webhooks."""

    def __init__(self, hooks: list[dict[str, Any]] | None = None, *, refuse_local: bool = False) -> None:
        self.hooks = hooks or []
        self.refuse_local = refuse_local
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/projects/1/":
            return httpx.Response(200, json={"id": 1, "title": "p", "label_config": LS_CONFIG})
        if path == "/api/webhooks/" and request.method == "GET":
            assert request.url.params["project"] == "1"
            return httpx.Response(200, json=self.hooks)
        body = json.loads(request.content)
        if self.refuse_local:
            detail = "URL resolves to a reserved network address (block: 127.0.0.0/8)"  # LS 1.23's words
            return httpx.Response(403, json={"detail": detail})
        self.writes.append((request.method, body))
        if request.method == "POST":
            self.hooks.append({**body, "id": 5})
            return httpx.Response(201, json=self.hooks[-1])
        self.hooks[0].update(body)
        return httpx.Response(200, json=self.hooks[0])


def ls_connector(api: FakeLabelStudioWebhooks) -> LabelStudioConnector:
    return LabelStudioConnector.connect(
        url=LS_URL, api_key="f" * 40, project_id=1, transport=httpx.MockTransport(api), timeout_s=2.0
    )


def test_label_studio_registration_creates_once_then_leaves_it_alone() -> None:
    api = FakeLabelStudioWebhooks()
    connector = ls_connector(api)
    headers = {SECRET_HEADER: SECRET, PROJECT_HEADER: "1"}
    assert connector.register_webhook(HOOK_URL, headers, list(TRIGGER_ACTIONS)) == "5"
    assert connector.register_webhook(HOOK_URL, headers, list(reversed(TRIGGER_ACTIONS))) == "5"
    connector.close()
    assert [method for method, _ in api.writes] == ["POST"]  # the second call found it unchanged
    created = api.writes[0][1]
    assert created["headers"] == headers and created["project"] == 1 and created["url"] == HOOK_URL
    assert created["send_for_all_actions"] is False and created["send_payload"] is False  # no texts sent to us
    assert sorted(created["actions"]) == sorted(TRIGGER_ACTIONS)


def test_label_studio_registration_updates_our_webhook_found_by_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    old = {"id": 3, "url": HOOK_URL, "project": 1, "headers": {SECRET_HEADER: "old-secret-value-123"},
           "actions": ["ANNOTATION_CREATED"], "is_active": False, "send_for_all_actions": True, "send_payload": True}
    other = {**old, "id": 2, "url": "http://elsewhere:1/hook"}
    api = FakeLabelStudioWebhooks([old, other])
    connector = ls_connector(api)
    assert connector.register_webhook(HOOK_URL, {SECRET_HEADER: SECRET}, list(TRIGGER_ACTIONS)) == "3"
    connector.close()
    assert [method for method, _ in api.writes] == ["PATCH"]
    assert api.hooks[0]["headers"] == {SECRET_HEADER: SECRET} and api.hooks[0]["is_active"] is True
    assert api.hooks[1]["url"] == "http://elsewhere:1/hook"  # someone else's webhook is not touched
    assert SECRET not in caplog.text and "old-secret-value-123" not in caplog.text


def test_label_studio_deactivation_switches_off_only_our_active_webhook() -> None:
    ours = {"id": 3, "url": HOOK_URL, "project": 1, "headers": {}, "actions": ["ANNOTATION_CREATED"],
            "is_active": True, "send_for_all_actions": False, "send_payload": False}
    other = {**ours, "id": 2, "url": "http://elsewhere:1/hook"}
    api = FakeLabelStudioWebhooks([ours, other])
    connector = ls_connector(api)
    assert connector.deactivate_webhook(HOOK_URL) == 1
    assert connector.deactivate_webhook(HOOK_URL) == 0  # already off: no write
    assert connector.deactivate_webhook("http://unknown:1/hook") == 0
    connector.close()
    assert [(method, body.get("is_active")) for method, body in api.writes] == [("PATCH", False)]
    assert api.hooks[0]["is_active"] is False and api.hooks[1]["is_active"] is True


def test_label_studio_refusing_a_local_url_is_explained() -> None:
    connector = ls_connector(FakeLabelStudioWebhooks(refuse_local=True))
    with pytest.raises(ConnectorRejected, match="SSRF") as info:
        connector.register_webhook(HOOK_URL, {SECRET_HEADER: SECRET}, list(TRIGGER_ACTIONS))
    connector.close()
    assert "USE_DEFAULT_BANNED_SUBNETS=false" in str(info.value) and SECRET not in str(info.value)
    assert info.value.__cause__ is None and not isinstance(info.value, ConnectorAuthError)
