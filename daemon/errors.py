"""Errors raised by the daemon.

Tree::

    DaemonError
     ├── ConfigError          bad or missing settings; the message says which and how to fix it
     ├── PoolFileError        a pool file was refused as a whole (file, line, reason)
     ├── ExportError          labels could not be written (file type, an existing file, the disk)
     ├── InvalidTransition    a batch state change the state machine forbids (a bug if it happens)
     ├── AlreadyRunning       another daemon holds the single-instance lock for this database
     └── PoolExhausted        nothing left to select

Connector and model errors keep their own trees (``connectors.errors``, ``models.errors``);
the job boundary in ``cycle.py`` catches the roots of all three.
"""

from __future__ import annotations

import os

__all__ = [
    "MAX_PROBLEMS",
    "AlreadyRunning",
    "ConfigError",
    "DaemonError",
    "ExportError",
    "InvalidTransition",
    "PoolExhausted",
    "PoolFileError",
    "StoreUnavailable",
    "position_word",
]

MAX_PROBLEMS = 20  # a pool file's readers stop at this many problems; PoolFileError then says "at least"


class DaemonError(Exception):
    """Base class for the daemon's own errors."""


class ConfigError(DaemonError):
    """Settings are missing or inconsistent."""


def position_word(path: str | os.PathLike[str]) -> str:
    """What a pool file's numbered positions are called in messages: ``row`` in Parquet (no lines), else ``line``."""
    return "row" if str(path).lower().endswith((".parquet", ".pq")) else "line"


class PoolFileError(DaemonError):
    """A pool file was refused; nothing from it was imported (or, as ``outcome`` says, removed).

    The message shows the first five ``problems`` and counts the rest. The readers stop at
    ``MAX_PROBLEMS``: that many means the file may hold more, and the count says "at least"
    (with 325 bad rows it said "and 15 more").
    """

    def __init__(
        self, path: str, problems: list[tuple[int | None, str]], *, outcome: str = "nothing imported",
        advice: str = "",
    ) -> None:
        self.path = path
        self.problems = problems
        unit = position_word(path)
        shown = "; ".join(f"{unit} {line}: {why}" if line is not None else why for line, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        if len(problems) >= MAX_PROBLEMS:
            more = f" (and at least {len(problems) - 5} more; reading stops at {MAX_PROBLEMS} problems)"
        super().__init__(f"{path}: refused, {outcome}: {shown}{more}" + (f". {advice}" if advice else ""))


class StoreUnavailable(DaemonError):
    """The store's database or folder cannot be opened or written (permissions, not a database, a file
    where a folder should be); nothing was changed."""


class ExportError(DaemonError):
    """The labels could not be written; no file was left under the requested name."""


class InvalidTransition(DaemonError):
    """A batch cannot move from its current status to the requested one."""


class AlreadyRunning(DaemonError):
    """Another daemon already runs on this database."""


class PoolExhausted(DaemonError):
    """No unlabeled, unqueued pool item is left to select."""
