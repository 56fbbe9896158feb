"""Survive an access token that expires while a request is on its way.

With a Personal Access Token (a JWT refresh token), label-studio-sdk exchanges it for a
short-lived access token (five minutes on Label Studio 1.23) and asks for a new one only once
its own clock says the old one has expired. A request built in the last moments of a token's
life reaches the server after it expired and is refused with a 401; the SDK does not retry it.
On 2026-12-06 that happened to `bench/cycle.py`'s own annotator client after 12 rounds, and it
can happen to the daemon on any call (a refused push would park its batch).

:class:`RefreshOnExpiry` is an ``httpx`` auth flow on the connector's HTTP client: a request sent
with a ``Bearer`` token and refused with a 401 is sent once more with an access token fresh
from ``/api/token/refresh/``. Legacy ``Token`` keys, the refresh call itself and every other
answer pass through untouched. If the refresh is refused too (a revoked or expired PAT), the
request is sent again unchanged and its own 401 reaches the caller, so the error stays the one
the connector reports for a bad token.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx

__all__ = ["RefreshOnExpiry", "auth_for", "is_jwt"]

_REFRESH_PATH = "/api/token/refresh/"


def is_jwt(token: str) -> bool:
    """Whether ``token`` looks like a JWT (a Personal Access Token) rather than a legacy key."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


def auth_for(base_url: str, token: str) -> RefreshOnExpiry | None:
    """The auth flow an HTTP client for Label Studio with ``token`` needs: one for a PAT, none for a legacy key."""
    return RefreshOnExpiry(base_url, token) if is_jwt(token) else None


class RefreshOnExpiry(httpx.Auth):
    """Retry a request refused with a 401 once, with a fresh access token from ``refresh_token``.

    Args:
        base_url: Label Studio's root URL, e.g. ``http://127.0.0.1:8080``.
        refresh_token: the Personal Access Token. Never logged.
    """

    requires_response_body = True  # the refresh answer's body holds the new access token

    def __init__(self, base_url: str, refresh_token: str) -> None:
        self._refresh_url = base_url.rstrip("/") + _REFRESH_PATH
        self._refresh_token = refresh_token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        if (
            response.status_code != 401
            or not request.headers.get("Authorization", "").startswith("Bearer ")
            or request.url.path.endswith(_REFRESH_PATH)
        ):
            return
        refreshed = yield httpx.Request("POST", self._refresh_url, json={"refresh": self._refresh_token})
        access = _access_token(refreshed)
        if access is not None:
            request.headers["Authorization"] = f"Bearer {access}"
        yield request


def _access_token(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    access = body.get("access") if isinstance(body, dict) else None
    return access if isinstance(access, str) and access else None
