"""What every ``labelloop`` command shares: the consoles, the ``--config`` choice, JSON output and one error policy.

``daemon/cli.py`` owns the app and its root option; the command modules (``cli_pool``,
``cli_embed``, ``cli_simulate``) import from here, never from ``cli.py``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from connectors.errors import ConnectorError, ConnectorRejected
from daemon.errors import AlreadyRunning, ConfigError, DaemonError, PoolFileError
from daemon.settings import Settings, load_settings
from daemon.store import is_disk_full, is_store_locked, make_engine, sqlite_path, store_problem
from daemon.wording import counted
from models.errors import ModelError

__all__ = [
    "PLAIN_LINE_INTERVAL_S", "ConfigChoice", "JsonOpt", "RateColumn", "cli_errors", "counted", "err",
    "interrupt_on_termination", "out", "print_error", "print_json", "settings", "store_engine",
]

log = logging.getLogger(__name__)
out = Console()
# soft_wrap: an error is one line however long (the terminal folds it), so piped output greps; rich
# hard-wrapped at 80 columns off a terminal. Not for `out`: its panels would crop their long lines.
err = Console(stderr=True, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class ConfigChoice:
    """The ``--config`` path the root command was given (set once per invocation)."""

    config: Path | None = None


def settings() -> Settings:
    return load_settings(ConfigChoice.config)


@contextmanager
def cli_errors(*, reads_only: bool = False) -> Iterator[None]:
    """Turn our errors into one clear line and an exit code; never a traceback.

    ``reads_only``: the command writes nothing to the store (status, export, predict), which an
    interruption's message says instead of a rollback.
    """
    try:
        yield
    except (ConfigError, ConnectorRejected) as e:  # a refused token or an unusable project: a human must act
        print_error(e)
        raise typer.Exit(2) from None
    except AlreadyRunning as e:
        print_error(e)
        raise typer.Exit(3) from None
    except (PoolFileError, DaemonError, ConnectorError, ModelError) as e:
        print_error(e)
        raise typer.Exit(1) from None
    except DBAPIError as e:
        if is_store_locked(e):
            err.print("[red]error:[/] another process held the store's write lock for longer than "
                      "store.busy_timeout_s (another `labelloop pool add`?); nothing was written, try again")
            raise typer.Exit(1) from None
        if is_disk_full(e):
            _disk_full("the store's database")
        _failed(f"the store's database refused: {store_problem(e)}", e)
    except OSError as e:
        if is_disk_full(e):
            _disk_full(e.filename or "a file")
        if e.filename is None:  # not about a path the user can fix
            raise
        _failed(f"cannot use {e.filename}: {e.strerror or type(e).__name__}", e)
    except KeyboardInterrupt:
        if reads_only:
            err.print("[yellow]interrupted[/]: the store was not changed and no partial output file is left")
        else:
            err.print("[yellow]interrupted[/]: the write in progress was rolled back and nothing is half-written; "
                      "run the command again to finish (nothing is done twice)")
        raise typer.Exit(130) from None


def _failed(message: str, error: BaseException) -> NoReturn:
    """One line for a store or file the user must fix (a 500-line traceback said no more); the traceback
    goes to the debug log (``LABELLOOP_LOG_LEVEL=DEBUG``)."""
    log.debug("the failure in full", exc_info=error)
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(1) from None


def interrupt_on_termination() -> None:
    """Make SIGTERM and SIGHUP interrupt a one-shot command as Ctrl-C does, so it cleans up the same way.

    Killed by ``timeout``, ``systemctl stop`` or a closed terminal, an export left its hidden
    ``.FILE.<pid>.partial`` file behind for good (QA); Ctrl-C removed it.
    """
    owner = os.getpid()

    def interrupt(signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a forked worker (simulate --jobs) ends as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


PLAIN_LINE_INTERVAL_S = 10.0  # off a terminal (piped, a log file): a plain progress line at most this often


def print_error(message: object) -> None:
    """Print ``error: message`` on stderr, the message as plain text.

    Rich reads ``[...]`` as markup and drops it: ``pip install 'labelloop[ray]'`` came out as
    ``pip install 'labelloop'``.
    """
    err.print(f"[red]error:[/] {escape(str(message))}")


def _disk_full(where: object) -> NoReturn:
    err.print(f"[red]error:[/] no space left on the disk for {escape(str(where))} (SQLite's temporary files go to "
              "$SQLITE_TMPDIR, else /var/tmp or /tmp); the transaction in flight was rolled back, so "
              "nothing of it was written: free some space and run the command again")
    raise typer.Exit(1) from None


def store_engine(cfg: Settings, *, existing: bool = False) -> Engine:
    """The store's engine; with ``existing``, a SQLite store that is not there yet is refused, not created.

    Commands that only read (or take away) need a store that exists: one run in the wrong
    folder used to create an empty store there and report an empty pool with exit 0.

    Raises:
        ConfigError: ``existing`` and there is no such store.
    """
    path = sqlite_path(cfg.store.url)
    if existing and path is not None and not path.exists():
        raise ConfigError(f"no store at {path}: run `labelloop init` and `labelloop pool add` here first, "
                          "or point --config (or store.url) at the store")
    return make_engine(cfg.store.url, busy_timeout_s=cfg.store.busy_timeout_s)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class RateColumn(ProgressColumn):
    """Things per second, as rich estimates it over its recent updates (``pool add`` shows rows/s)."""

    def __init__(self, unit: str = "items") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"-- {self.unit}/s" if speed is None else f"{speed:,.0f} {self.unit}/s",
                    style="progress.data.speed")
