"""deploy/ls_local.py: secrets stay private, and "Label Studio went down and came back".

The restart test stops the shared server, so it lives in the last module of the session.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable
from typing import Any

import pytest

from connectors.errors import ConnectorUnavailable
from connectors.label_studio import LabelStudioConnector
from tests.integration import ls_helpers


def test_ensure_venv_is_quick_when_the_venv_is_ready(label_studio: Any) -> None:
    started = time.monotonic()
    assert ls_helpers.ls_local().ensure_venv(label_studio.venv) == label_studio.venv
    assert time.monotonic() - started < 5


def test_secrets_are_in_private_files_and_nowhere_else(label_studio: Any) -> None:
    secrets = [label_studio.password, label_studio.legacy_token, label_studio.pat]
    for name in ("credentials.json", "credentials.txt"):
        path = label_studio.data_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert all(secret in path.read_text() for secret in secrets)
    saved = json.loads(label_studio.credentials_path.read_text())
    assert (saved["legacy_token"], saved["pat"]) == (label_studio.legacy_token, label_studio.pat)
    assert len(label_studio.legacy_token) == 40 and int(label_studio.legacy_token, 16) >= 0
    assert not any(secret in repr(label_studio) for secret in secrets)
    log_text = label_studio.log_path.read_text(errors="replace")
    assert not any(secret in log_text for secret in secrets[1:])  # tokens never reach LS's log


def test_it_listens_on_loopback_only(label_studio: Any) -> None:
    assert label_studio.url.startswith("http://127.0.0.1:")
    assert label_studio.is_running()
    assert label_studio.pid is not None


@pytest.mark.slow
def test_a_connector_survives_label_studio_going_down_and_coming_back(
    label_studio: Any, ls_project: Callable[..., int], ls_connector: Callable[..., LabelStudioConnector]
) -> None:
    from connectors.base import OutgoingTask

    connector = ls_connector(ls_project())
    mapping = connector.push([OutgoingTask(item_id="survivor", batch_id="b", text="still here")])
    legacy = ls_connector(None, token="legacy")
    label_studio.stop()
    assert not label_studio.is_running()
    with pytest.raises(ConnectorUnavailable, match="running"):
        connector.pull(since=None)
    label_studio.restart()
    assert label_studio.is_running()
    (state,) = connector.pull(since=None).tasks  # same port, data dir, PAT and legacy token
    assert state.remote_task_id == mapping["survivor"]
    assert legacy.check() == label_studio.username
