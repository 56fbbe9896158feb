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


_LOG_AT_DEBUG = """
import logging
from daemon.__main__ import configure_logging
configure_logging("DEBUG")
import connectors.label_studio  # label-studio-sdk loads faker, which logs its locale lookups at DEBUG
for name in ("daemon.cycle", "connectors.label_studio", "models.embedder", "strategies.scores", "httpcore.http11",
             "matplotlib.font_manager", "apscheduler.scheduler"):
    logging.getLogger(name).debug("debug from %s", name)
logging.getLogger("httpx").info("HTTP Request: GET http://ls.test/api/projects/ 200 OK")
logging.getLogger("other.library").info("info from other.library")
"""


def test_debug_is_for_our_packages_not_for_third_party_chatter(tmp_path: Path) -> None:
    """LABELLOOP_LOG_LEVEL=DEBUG printed 46 lines from faker.factory on every command that loads the SDK (QA)."""
    env = {**os.environ, "LABELLOOP_LOG_FORMAT": "human"}
    ended = subprocess.run([sys.executable, "-c", _LOG_AT_DEBUG], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert ended.returncode == 0, ended.stderr
    loggers = [line.split()[2].rstrip(":") for line in ended.stderr.splitlines()]
    assert loggers == ["daemon.cycle", "connectors.label_studio", "models.embedder", "strategies.scores", "httpx",
                       "other.library"]
