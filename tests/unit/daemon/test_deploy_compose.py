"""deploy/docker-compose.yml stays in step with the settings it sets (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.label_studio import FAST_IMPORT_FLAG
from daemon.settings import load_settings

COMPOSE = Path(__file__).resolve().parents[3] / "deploy" / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return dict(loaded["services"])


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` against ``shell``."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if shell.get(name):
            return shell[name]
        if kind == "?":
            raise KeyError(f"compose would refuse to start: {name} unset ({rest})")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(one, str(value))


def daemon_env(shell: dict[str, str]) -> dict[str, str]:
    return {key: interpolate(value, shell) for key, value in services()["labelloop"]["environment"].items()}


REQUIRED = {"LABELLOOP_LABEL_STUDIO__API_KEY": "a-token", "LABEL_STUDIO_PASSWORD": "pw"}


def test_the_daemon_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = daemon_env(REQUIRED)
    assert all(key.startswith("LABELLOOP_") for key in env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(None)
    assert settings.label_studio.url == "http://label-studio:8080"
    assert settings.webhook.enabled is False  # off unless the operator opts in with a secret


def test_the_webhook_opt_in_reaches_the_daemon_on_the_compose_network(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = {**REQUIRED, "LABELLOOP_WEBHOOK__ENABLED": "true", "LABELLOOP_WEBHOOK__SECRET": "s3cret",
             "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false"}
    for key, value in daemon_env(shell).items():
        monkeypatch.setenv(key, value)
    hook = load_settings(None).webhook
    assert hook.enabled and hook.secret is not None and hook.secret.get_secret_value() == "s3cret"
    assert hook.host == "0.0.0.0" and hook.public_url == f"http://labelloop:{hook.port}/webhook"
    studio = services()["label-studio"]["environment"]
    assert interpolate(studio["SSRF_PROTECTION_ENABLED"], shell) == "false"
    assert interpolate(studio["SSRF_PROTECTION_ENABLED"], REQUIRED) == "true"  # protection stays on by default


def test_the_api_key_is_required() -> None:
    with pytest.raises(KeyError, match="LABELLOOP_LABEL_STUDIO__API_KEY"):
        daemon_env({})


def test_label_studio_runs_with_the_batched_prediction_import() -> None:
    """Re-ranking's refresh grows with the project on Label Studio as shipped (bench/refresh.py)."""
    from tests.integration.ls_helpers import ls_local  # deploy/ls_local.py by path

    flag = ls_local().FAST_PREDICTION_IMPORT
    assert flag == FAST_IMPORT_FLAG  # the name the connector's warning gives
    assert services()["label-studio"]["environment"][flag] == "true"
