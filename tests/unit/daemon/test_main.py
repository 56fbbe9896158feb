"""The entry point: logging settings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("name", "value", "allowed"), [
    ("LABELLOOP_LOG_LEVEL", "bogus", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("LABELLOOP_LOG_FORMAT", "xml", "human, json"),
])
def test_a_bad_log_setting_is_one_line_and_exit_2(tmp_path: Path, name: str, value: str, allowed: str) -> None:
    """LABELLOOP_LOG_LEVEL=bogus died in a traceback from logging.config; LABELLOOP_LOG_FORMAT=xml passed (QA)."""
    env = {**os.environ, name: value}
    ended = subprocess.run([sys.executable, "-m", "daemon", "status"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert ended.returncode == 2
    shown = value.upper() if name.endswith("LEVEL") else value
    assert ended.stderr == f"error: {name}={shown!r} is not one of {allowed}\n"


def test_log_settings_are_read_in_any_case(tmp_path: Path) -> None:
    env = {**os.environ, "LABELLOOP_LOG_LEVEL": "debug", "LABELLOOP_LOG_FORMAT": "JSON"}
    ended = subprocess.run([sys.executable, "-m", "daemon", "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert ended.returncode == 0, ended.stderr
