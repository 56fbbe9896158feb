"""``labelloop embed``: embed every pool item without a vector now, with a progress bar.

Parsing (typer) -> :func:`daemon.app.embed_backfill` -> rendering (rich). ``daemon/cli.py`` calls
:func:`register` to add the command. A killed run loses at most the chunk in flight: rerunning
continues where it stopped.
"""

from __future__ import annotations

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from daemon.cli_common import RateColumn, cli_errors, err, out, settings
from daemon.errors import AlreadyRunning

__all__ = ["register"]



def register(app: typer.Typer) -> None:
    """Add the ``embed`` command to ``app``."""
    app.command("embed")(embed)


def embed() -> None:
    """Embed every pool item that has no vector yet (a backfill), showing rate and ETA.

    Refuses while the daemon runs on the same store. Interrupting is safe: rerun to continue.
    """
    from daemon.app import embed_backfill

    columns = (
        TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with cli_errors(), Progress(*columns, console=err, transient=False) as bar:
        tasks: list[TaskID] = []  # the bar appears once the work starts (a refusal draws none)

        def progress(done: int, total: int) -> None:
            if not tasks:
                tasks.append(bar.add_task("embed", total=total))
            bar.update(tasks[0], completed=done, total=total)

        try:
            done = embed_backfill(settings(), progress=progress)
        except AlreadyRunning as e:
            raise AlreadyRunning(f"{e} (stop the daemon, or let its embed stage do the work)") from None
        except KeyboardInterrupt:
            completed = int(bar.tasks[0].completed) if bar.tasks else 0
            err.print(f"interrupted after {completed} items; run `labelloop embed` again to continue")
            raise typer.Exit(130) from None
    out.print(f"embedded {done} pool items" if done else "every pool item already has a vector")
