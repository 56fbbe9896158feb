"""deploy/labelloop.service stays in step with its own setup steps and the CLI (no systemd needed)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from daemon.settings import load_settings

UNIT = Path(__file__).resolve().parents[3] / "deploy" / "labelloop.service"


def directives() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (keys may repeat, as ``Environment=`` does)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def environment() -> dict[str, str]:
    return dict(value.split("=", 1) for value in directives()["Environment"])


def setup_steps() -> list[str]:
    return [line.removeprefix("#").strip() for line in UNIT.read_text().splitlines() if line.startswith("#   ")]


def test_the_config_and_its_store_live_where_the_service_may_write() -> None:
    unit = directives()
    config = Path(environment()["LABELLOOP_CONFIG"])
    assert config.parent == Path(unit["WorkingDirectory"][0])
    assert str(config.parent) in unit["ReadWritePaths"][0].split()  # the store sits beside the config
    steps = setup_steps()
    assert any(f"--home-dir {config.parent}" in step and "--create-home" in step for step in steps)
    assert any(step.startswith(f"cd {config.parent} &&") and " init " in step for step in steps)


def test_exec_start_is_the_venv_the_setup_steps_create() -> None:
    program = shlex.split(directives()["ExecStart"][0])
    assert program[1:] == ["run"]
    venv = Path(program[0]).parent.parent
    assert any(step.endswith(f"-m venv {venv}") for step in setup_steps())


def test_exit_codes_that_restarting_cannot_mend_are_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert directives()["RestartPreventExitStatus"][0].split() == ["2", "3"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    (tmp_path / "labelloop.toml").write_text('[label_studio]\nurl = "ftp://x"\n')
    assert CliRunner().invoke(app, ["run"]).exit_code == 2  # a configuration problem


def test_the_init_the_steps_run_gives_a_store_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    assert CliRunner().invoke(app, ["init", "--classes", "a,b"]).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the operator's shell, anywhere
    store = load_settings(tmp_path / "labelloop.toml").store
    assert store.data_dir.is_relative_to(tmp_path.resolve())
