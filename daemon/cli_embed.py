"""``labelloop embed``: embed every pool item without a vector now, showing progress.

Parsing (typer) -> :func:`daemon.app.embed_backfill` -> rendering (rich). ``daemon/cli.py`` calls
:func:`register` to add the command. A killed run loses at most the chunk in flight: rerunning
continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from daemon import cli_common
from daemon.cli_common import RateColumn, cli_errors, err, out, settings
from daemon.errors import AlreadyRunning
from daemon.progress import ProgressLines

__all__ = ["progress_view", "register"]



def register(app: typer.Typer) -> None:
    """Add the ``embed`` command to ``app``."""
    app.command("embed")(embed)


def embed() -> None:
    """Embed every pool item that has no vector yet (a backfill), showing rate and ETA.

    Refuses while the daemon runs on the same store. Interrupting is safe: rerun to continue.
    """
    from daemon.app import embed_backfill

    reached = [0]  # items done when last reported, for the interruption message
    with cli_errors(), progress_view(err) as show:

        def progress(done: int, total: int) -> None:
            reached[0] = done
            show(done, total)

        try:
            done = embed_backfill(settings(), progress=progress)
        except AlreadyRunning as e:
            raise AlreadyRunning(f"{e} (stop the daemon, or let its embed stage do the work)") from None
        except KeyboardInterrupt:
            err.print(f"interrupted after {reached[0]} items; run `labelloop embed` again to continue")
            raise typer.Exit(130) from None
    out.print(f"embedded {done} pool items" if done else "every pool item already has a vector")


@contextmanager
def progress_view(
    console: Console, *, interval_s: float | None = None, clock: Callable[[], float] = time.monotonic,
    label: str = "embedding", what: str = "pool items embedded",
) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``progress(done, total)`` that shows a long job's progress (embedding by default) on ``console``.

    On a terminal, a live bar (items, rate, elapsed, ETA); elsewhere (piped, a log file) a
    plain line every ``interval_s`` with no control characters, since a redrawn bar shows there
    only once it ends. Nothing at all while ``total`` is 0 (nothing to embed), nor before the
    first call (a refusal draws nothing).

    Args:
        console: where to show it.
        interval_s: seconds between plain lines (``None``: ``cli_common.PLAIN_LINE_INTERVAL_S``).
        clock: monotonic seconds for the plain lines' rate; injectable for tests.
        label: the bar's name; what: the plain lines' noun for what is counted.
    """
    if not console.is_terminal:
        every = cli_common.PLAIN_LINE_INTERVAL_S if interval_s is None else interval_s
        lines = ProgressLines(lambda line: console.print(line, markup=False, highlight=False), what,
                              interval_s=every, clock=clock)

        def plain(done: int, total: int) -> None:
            if total > 0:
                lines(done, total)

        yield plain
        return
    columns = (
        TextColumn(label), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, transient=False)
    tasks: list[TaskID] = []

    def draw(done: int, total: int) -> None:
        if not tasks:
            if total <= 0:
                return
            bar.start()  # only now: an idle run leaves the terminal as it was
            tasks.append(bar.add_task("embed", total=total))
        bar.update(tasks[0], completed=done, total=total)

    try:
        yield draw
    finally:
        if tasks:
            bar.stop()
