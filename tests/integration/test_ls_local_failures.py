"""deploy/ls_local.py's failure paths, with a stand-in ``label-studio`` (no real server)."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from tests.integration import ls_helpers


def _fake_venv(root: Path, script: str) -> Path:
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".labelloop-ls-ok").write_text("1.23.2")
    (venv / "bin" / "python").symlink_to(sys.executable)
    executable = venv / "bin" / "label-studio"
    executable.write_text("#!/bin/sh\n" + script)
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    return venv


def test_a_server_that_dies_at_start_is_an_error_with_its_log(tmp_path: Path) -> None:
    ls_local = ls_helpers.ls_local()
    venv = _fake_venv(tmp_path, 'echo "boom: no such table" >&2\nexit 3\n')
    with pytest.raises(ls_local.LabelStudioStartError, match=r"exited \(code 3\)") as caught:
        ls_local.start(tmp_path / "data", venv=venv, timeout_s=30)
    assert "boom: no such table" in str(caught.value)
    assert str(tmp_path / "data" / "label-studio.log") in str(caught.value)


def test_a_server_that_never_gets_healthy_times_out_and_is_killed(tmp_path: Path) -> None:
    ls_local = ls_helpers.ls_local()
    pid_file = tmp_path / "pid"
    venv = _fake_venv(tmp_path, f'echo "still migrating"\necho $$ > {pid_file}\nexec sleep 120\n')
    with pytest.raises(ls_local.LabelStudioStartError, match="not healthy after 2 s") as caught:
        ls_local.start(tmp_path / "data", venv=venv, timeout_s=2)
    assert "still migrating" in str(caught.value)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_busy_port_is_refused_rather_than_silently_moved(tmp_path: Path) -> None:
    ls_local = ls_helpers.ls_local()
    venv = _fake_venv(tmp_path, "exit 0\n")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ls_local.LabelStudioStartError, match="already in use"):
            ls_local.start(tmp_path / "data", venv=venv, port=port)


def test_a_directory_that_is_not_a_venv_is_left_alone(tmp_path: Path) -> None:
    ls_local = ls_helpers.ls_local()
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ls_local.LabelStudioStartError, match="not a virtualenv"):
        ls_local.ensure_venv(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
