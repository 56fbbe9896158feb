"""The project webhook through which Label Studio tells the daemon about annotations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.core import ApiError

from connectors._ls_errors import display_url
from connectors.errors import ConnectorRejected

__all__ = ["deactivate_webhooks", "upsert_webhook"]


def upsert_webhook(
    client: LabelStudio,
    base_url: str,
    project_id: int,
    url: str,
    headers: Mapping[str, str],
    actions: Sequence[str],
) -> tuple[str, str, int, tuple[str, ...]]:
    """Create, update or keep project ``project_id``'s webhook to ``url``.

    The webhook fires only on ``actions`` (LS 1.23 turns ``send_for_all_actions`` on unless
    told otherwise) and sends no payload. Of several webhooks to ``url`` the oldest is used.

    Webhooks of the project to another URL that send the same ``headers`` (the same shared secret:
    an earlier address of this daemon) are deleted. One left on by a crash (or by a stop while
    Label Studio was unreachable) had Label Studio call the dead address, secret and all, on every
    answer; one switched off by a graceful stop would never be used again, and each change of port
    added one (QA: five after five ports).

    Returns:
        ``(webhook id, "created" | "updated" | "unchanged", webhooks of the project to url,
        the old addresses that were still on)``.

    Raises:
        ConnectorRejected: Label Studio refuses to call ``url`` (its SSRF protection).
        ApiError, httpx errors: for the caller's ``translated`` block.
    """
    wanted_headers, wanted_actions = dict(headers), sorted(set(actions))
    hooks = _of_project(client, project_id)
    ours = [hook for hook in hooks if hook.url == url]
    old = [hook for hook in hooks if hook.url != url and dict(hook.headers or {}) == wanted_headers]
    options: dict[str, Any] = {"headers": wanted_headers, "actions": wanted_actions, "is_active": True,
                               "send_for_all_actions": False, "send_payload": False}
    try:
        if not ours:
            created = client.webhooks.create(url=url, project=project_id, **options)
            hook_id, outcome, same_url = str(created.id), "created", 1
        elif _matches(ours[0], wanted_headers, wanted_actions):
            hook_id, outcome, same_url = str(ours[0].id), "unchanged", len(ours)
        else:
            client.webhooks.update(int(ours[0].id or 0), url=url, **options)
            hook_id, outcome, same_url = str(ours[0].id), "updated", len(ours)
    except ApiError as e:
        if e.status_code == 403 and "network address" in str(getattr(e, "body", "")):
            raise ConnectorRejected(
                f"Label Studio at {base_url} refuses to call {display_url(url)}: its SSRF protection "
                "blocks local and private addresses. Give the daemon a public webhook.public_url, or "
                "start Label Studio with USE_DEFAULT_BANNED_SUBNETS=false (or SSRF_PROTECTION_ENABLED=false)"
            ) from None
        raise
    for hook in old:  # only once ours works: polling alone would miss nothing, but be slower
        client.webhooks.delete(int(hook.id or 0))
    return hook_id, outcome, same_url, tuple(display_url(hook.url) for hook in old if hook.is_active)


def deactivate_webhooks(client: LabelStudio, project_id: int, url: str) -> int:
    """Switch off project ``project_id``'s active webhooks to ``url``; return how many.

    Raises:
        ApiError, httpx errors: for the caller's ``translated`` block.
    """
    active = [hook for hook in _to_url(client, project_id, url) if hook.is_active]
    for hook in active:
        client.webhooks.update(int(hook.id or 0), url=url, is_active=False)
    return len(active)


def _to_url(client: LabelStudio, project_id: int, url: str) -> list[Any]:
    """The project's webhooks to ``url``, oldest first."""
    return [hook for hook in _of_project(client, project_id) if hook.url == url]


def _of_project(client: LabelStudio, project_id: int) -> list[Any]:
    """The project's webhooks, oldest first."""
    return sorted((hook for hook in client.webhooks.list(project=str(project_id)) if hook.project == project_id),
                  key=lambda hook: hook.id or 0)


def _matches(hook: Any, headers: Mapping[str, str], actions: Sequence[str]) -> bool:
    return (
        dict(hook.headers or {}) == dict(headers)
        and sorted(hook.actions or []) == sorted(actions)
        and hook.is_active is True
        and hook.send_for_all_actions is False
        and hook.send_payload is False
    )
