"""An access token refused in flight is refreshed and the request sent again, once (connectors._ls_auth)."""

from __future__ import annotations

import json

import httpx
import pytest

from connectors._ls_auth import RefreshOnExpiry, auth_for, is_jwt

PAT = "aaa.bbb.ccc"
BASE = "http://ls.test"


class FakeServer:
    """Accepts ``Bearer fresh`` and ``Token good``; ``/api/token/refresh/`` gives ``fresh`` for PAT."""

    def __init__(self, *, refresh_works: bool = True) -> None:
        self.refresh_works = refresh_works
        self.fresh = "fresh"
        self.seen: list[tuple[str, str, bytes]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, request.headers.get("Authorization", ""), request.content))
        if request.url.path == "/api/token/refresh/":
            if self.refresh_works and json.loads(request.content) == {"refresh": PAT}:
                return httpx.Response(200, json={"access": self.fresh})
            return httpx.Response(401, json={"detail": "Token is invalid or expired"})
        if request.headers.get("Authorization") in ("Bearer fresh", "Token good"):
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(401, json={"detail": "Authentication credentials were not provided."})


def client(server: FakeServer) -> httpx.Client:
    return httpx.Client(base_url=BASE, transport=httpx.MockTransport(server), auth=RefreshOnExpiry(BASE, PAT))


def test_a_bearer_token_refused_in_flight_is_refreshed_and_the_request_sent_again() -> None:
    server = FakeServer()
    with client(server) as http:
        response = http.post("/api/tasks/1/annotations/", json={"result": []}, headers={"Authorization": "Bearer old"})
    assert response.status_code == 200
    assert [(path, auth) for path, auth, _ in server.seen] == [
        ("/api/tasks/1/annotations/", "Bearer old"),
        ("/api/token/refresh/", ""),
        ("/api/tasks/1/annotations/", "Bearer fresh"),
    ]
    assert server.seen[0][2] == server.seen[2][2] == b'{"result":[]}'  # the same body, sent again


def test_a_request_that_succeeds_is_sent_once() -> None:
    server = FakeServer()
    with client(server) as http:
        assert http.get("/api/projects/", headers={"Authorization": "Bearer fresh"}).status_code == 200
    assert len(server.seen) == 1


def test_legacy_tokens_are_not_retried() -> None:
    server = FakeServer()
    with client(server) as http:
        assert http.get("/api/projects/", headers={"Authorization": "Token wrong"}).status_code == 401
    assert [path for path, _, _ in server.seen] == ["/api/projects/"]


def test_a_refused_refresh_leaves_the_request_s_own_401() -> None:
    server = FakeServer(refresh_works=False)
    with client(server) as http:
        response = http.get("/api/projects/", headers={"Authorization": "Bearer old"})
    assert response.status_code == 401 and response.request.url.path == "/api/projects/"
    assert response.json()["detail"].startswith("Authentication credentials")
    assert [auth for path, auth, _ in server.seen if path == "/api/projects/"] == ["Bearer old", "Bearer old"]


def test_only_one_retry() -> None:
    server = FakeServer()
    server.fresh = "also-refused"  # a refresh that hands out a token the API refuses too
    with client(server) as http:
        assert http.get("/api/projects/", headers={"Authorization": "Bearer old"}).status_code == 401
    assert [auth for _, auth, _ in server.seen] == ["Bearer old", "", "Bearer also-refused"]


@pytest.mark.parametrize(("token", "expected"), [("a.b.c", True), ("0" * 40, False), ("a..c", False), ("a.b", False)])
def test_is_jwt(token: str, expected: bool) -> None:
    assert is_jwt(token) is expected


def test_auth_for_a_pat_only() -> None:
    assert isinstance(auth_for(BASE, PAT), RefreshOnExpiry)
    assert auth_for(BASE, "0" * 40) is None
