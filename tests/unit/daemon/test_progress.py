"""Plain progress lines (``daemon.progress``): rate-limited, done/total, rate, ETA, no control characters."""

from __future__ import annotations

import logging

import pytest

from daemon.progress import ProgressLines, ProgressLog, eta_text


def test_lines_come_at_most_every_interval_with_rate_and_eta() -> None:
    now = [100.0]
    lines: list[str] = []
    report = ProgressLines(lines.append, "pool items embedded", interval_s=10.0, clock=lambda: now[0])
    for done, at in [(0, 100.0), (500, 109.9), (1000, 110.0), (1500, 115.0), (3000, 130.0), (3100, 131.0)]:
        now[0] = at
        report(done, 50_000)
    assert lines == [
        "1000/50000 pool items embedded (100/s, ETA 8m10s)",
        "3000/50000 pool items embedded (100/s, ETA 7m50s)",
    ]


def test_a_line_before_any_progress_says_the_eta_is_unknown() -> None:
    now = [0.0]
    lines: list[str] = []
    report = ProgressLines(lines.append, "items", interval_s=10.0, clock=lambda: now[0])
    now[0] = 12.0
    report(0, 40)
    assert lines == ["0/40 items (0/s, ETA ?)"]


def test_progress_log_logs_the_same_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    report = ProgressLog(logging.getLogger("test.progress"), "items", interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.progress"):
        now[0] = 10.0
        report(200, 1000)
    assert [record.getMessage() for record in caplog.records] == ["200/1000 items (20/s, ETA 40s)"]
    assert eta_text(3725) == "1h02m"
