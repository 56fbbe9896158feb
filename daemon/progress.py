"""Progress of a long backfill as log lines: done/total, rate and ETA, at most every ``interval_s``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ProgressLog", "eta_text"]


def eta_text(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog:
    """A ``progress(done, total)`` callback that logs at most once per ``interval_s``.

    Args:
        logger: where the lines go (INFO).
        what: noun for the counted things, e.g. ``"pool items embedded"``.
        interval_s: minimum seconds between lines.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval_s = interval_s
        self.clock = clock
        self._started = clock()
        self._last_logged = self._started

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self._last_logged < self.interval_s:
            return
        self._last_logged = now
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = eta_text((total - done) / rate) if rate > 0 else "?"
        self.logger.info("%s/%s %s (%.0f/s, ETA %s)", done, total, self.what, rate, eta)
