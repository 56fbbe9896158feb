"""Progress of a long backfill as plain lines: done/total, rate and ETA, at most every ``interval_s``.

:class:`ProgressLines` hands each line to any callable (the CLI prints it when stderr is not a
terminal, where a redrawn bar would show only at the end); :class:`ProgressLog` logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ProgressLines", "ProgressLog", "eta_text"]


def eta_text(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLines:
    """A ``progress(done, total)`` callback: ``done/total what (rate/s, ETA …)`` at most once per ``interval_s``.

    The first line comes ``interval_s`` after construction; plain text, no control characters.

    Args:
        emit: takes each line.
        what: noun for the counted things, e.g. ``"pool items embedded"``.
        interval_s: minimum seconds between lines, > 0.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        what: str,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit = emit
        self.what = what
        self.interval_s = interval_s
        self.clock = clock
        self._started = clock()
        self._last_emitted = self._started

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self._last_emitted < self.interval_s:
            return
        self._last_emitted = now
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = eta_text((total - done) / rate) if rate > 0 else "?"
        self.emit(f"{done}/{total} {self.what} ({rate:.0f}/s, ETA {eta})")


class ProgressLog(ProgressLines):
    """:class:`ProgressLines` logged at INFO on ``logger``.

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
        super().__init__(lambda line: logger.info("%s", line), what, interval_s=interval_s, clock=clock)
        self.logger = logger
