"""Translate label-studio-sdk and httpx failures into the connector error tree.

Messages carry the URL (without any user:password), the operation and the HTTP status;
never the token, a request or a response body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import httpx
from label_studio_sdk.core import ApiError

from connectors.errors import ConnectorAuthError, ConnectorRejected, ConnectorUnavailable

__all__ = ["TOKEN_ADVICE", "display_url", "translated"]

TOKEN_ADVICE = (
    "Create a Personal Access Token in Label Studio (Account & Settings), or enable legacy tokens "
    "(Organization → API Tokens Settings), and set LABELLOOP_LABEL_STUDIO__API_KEY"
)


# what each connector call does, as its messages say it: "during serves_in_push_order" named a method (QA)
_DOING = {
    "check": "the token check",
    "connect": "connecting",
    "ensure_project": "reading the project",
    "push": "the push of tasks",
    "pull": "the pull of answers",
    "list_tasks": "listing tasks",
    "count_waiting": "counting waiting tasks",
    "refresh_predictions": "the refresh of predictions",
    "withdraw": "withdrawing tasks",
    "missing": "the lookup of deleted tasks",
    "first_waiting": "the lookup of the tasks annotators get next",
    "serves_in_push_order": "reading the project's task order",
    "register_webhook": "the webhook's registration",
    "deactivate_webhook": "switching the webhook off",
}


@contextmanager
def translated(url: str, op: str) -> Iterator[None]:
    """Map SDK and transport failures onto the connector error tree; ``op`` names the call (a key of ``_DOING``)."""
    op = _DOING.get(op, op)
    try:
        yield
    except httpx.TimeoutException as e:
        raise ConnectorUnavailable(
            f"Label Studio at {url} did not answer in time during {op} ({type(e).__name__}); is it overloaded?"
        ) from e
    except httpx.TransportError as e:
        raise ConnectorUnavailable(
            f"cannot reach Label Studio at {url} during {op} ({type(e).__name__}); "
            "check that it is running and that the URL is right"
        ) from e
    except httpx.TooManyRedirects as e:
        raise ConnectorRejected(f"Label Studio at {url} redirected too often during {op}; check the URL") from e
    except httpx.RequestError as e:
        raise ConnectorUnavailable(f"Label Studio at {url} failed during {op} ({type(e).__name__})") from e
    except json.JSONDecodeError as e:  # e.g. an HTML error page from a proxy on token refresh
        raise ConnectorUnavailable(
            f"Label Studio at {url} answered {op} with something that is not JSON; is a proxy in front of it failing?"
        ) from e
    except ApiError as e:
        # Chain a copy without headers or body: its str() would carry them into tracebacks,
        # and LS answers token calls with a Set-Cookie session id.
        raise _api_error(url, op, e) from ApiError(status_code=e.status_code)


def _api_error(url: str, op: str, error: ApiError) -> ConnectorUnavailable | ConnectorRejected:
    status = error.status_code
    if status is None or status >= 500 or status in (408, 429):
        return ConnectorUnavailable(f"Label Studio at {url} failed during {op} (HTTP {status}); will retry")
    if status == 401:
        detail = str(error.body.get("detail", "")) if isinstance(error.body, dict) else ""
        why = " because legacy tokens are disabled there" if "legacy" in detail.lower() else ""
        return ConnectorAuthError(f"Label Studio at {url} refused the API token (401){why}. {TOKEN_ADVICE}")
    if status == 403:
        return ConnectorAuthError(
            f"Label Studio at {url} denied {op} (403): the token's user lacks permission; "
            "use a token of a user with access to the project"
        )
    if status == 404:
        return ConnectorRejected(
            f"Label Studio at {url} answered 404 during {op}: the project or task does not exist (deleted there? "
            "check label_studio.project_id; with none set, a restart finds or creates the project by title)"
        )
    fields = error.body.get("validation_errors") if isinstance(error.body, dict) else None
    about = f"; check {', '.join(sorted(map(str, fields)))}" if isinstance(fields, dict) and fields else ""
    return ConnectorRejected(f"Label Studio at {url} rejected {op} (HTTP {status}{about})")


def display_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")
