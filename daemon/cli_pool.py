"""``labelloop pool add`` and ``pool remove``: bring items into the loop and take them out.

Parsing (typer) -> :mod:`daemon.pool` / :mod:`daemon.removal` -> rendering (rich).
``daemon/cli.py`` calls :func:`register` to add the ``pool`` group.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from daemon.cli_common import (
    PLAIN_LINE_INTERVAL_S,
    JsonOpt,
    RateColumn,
    cli_errors,
    counted,
    err,
    out,
    print_json,
    settings,
    store_engine,
)
from daemon.errors import ConfigError, PoolFileError
from daemon.wording import for_count

if TYPE_CHECKING:  # pool.py loads numpy and the cache: not for every command
    from sqlalchemy.engine import Engine

    from daemon.pool import ImportReport

__all__ = ["register"]

pool_app = typer.Typer(no_args_is_help=True, help="Manage the unlabeled pool.")


def register(app: typer.Typer) -> None:
    """Add the ``pool`` command group to ``app``."""
    app.add_typer(pool_app, name="pool")


@pool_app.command("add")
def pool_add(
    files: Annotated[list[Path], typer.Argument(help="CSV, TSV, JSONL or Parquet files (shards of one pool, say), "
                                                     "each added whole or not at all, in the order given.")],
    id_field: Annotated[str | None, typer.Option(help="Column with the item id.")] = None,
    text_field: Annotated[str | None, typer.Option(help="Column with the text.")] = None,
    label_field: Annotated[str | None, typer.Option(help="Column with seed labels.")] = None,
    embedding_field: Annotated[str | None, typer.Option(help="Column with precomputed vectors.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add items (and seed labels) from files; nothing is added twice.

    Each file is its own transaction: when one is refused, the files before it stay added and
    the rest are not read; rerunning the same command adds nothing twice.
    """
    from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    from daemon.pool import add_pool_file

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} rows"),
               RateColumn("rows"), TimeElapsedColumn())
    reports: list[ImportReport] = []
    # off the terminal the plain lines below say the same, and a live bar's stop left a blank line (QA)
    with cli_errors(), Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        cfg = settings()
        fields = {k: v for k, v in {"id_field": id_field, "text_field": text_field, "label_field": label_field,
                                    "embedding_field": embedding_field}.items() if v}
        pool, engine = cfg.pool.model_copy(update=fields), store_engine(cfg)
        for file in files:
            task = bar.add_task(f"reading {file.name}", total=None)

            plain = _PlainLines(file.name) if not err.is_terminal else None

            def progress(phase: str, rows: int, task: TaskID = task, name: str = file.name,
                         plain: _PlainLines | None = plain) -> None:
                bar.update(task, description=f"{phase} {escape(name)}", completed=rows)
                if plain is not None:
                    plain(phase, rows)

            try:
                reports.append(add_pool_file(engine, file, pool=pool, data_dir=cfg.store.data_dir,
                                             classes=cfg.loop.classes, progress=progress))
            except PoolFileError as e:
                if reports:
                    added = escape(", ".join(r.path for r in reports))
                    err.print(f"{len(reports)} files before it were added: {added}")
                if as_json:  # a script learns what was added and why the file was refused
                    print_json({"added": [asdict(report) for report in reports], "refused": e.path,
                                "problems": [{"line": line, "reason": why} for line, why in e.problems]})
                raise
            bar.remove_task(task)
            if not as_json:
                _print_import(reports[-1])
    if as_json:
        print_json(asdict(reports[0]) if len(reports) == 1 else [asdict(report) for report in reports])


def _source_name(engine: Engine, name: str) -> str:
    """The source name items were imported under (a path names its file); a name nothing came from is an error."""
    from daemon.removal import has_source, source_names

    for candidate in (name, Path(name).name):
        if has_source(engine, candidate):
            return candidate
    known = source_names(engine)
    shown = ", ".join(known[:10]) + (f", … ({len(known)} in all)" if len(known) > 10 else "")
    raise ConfigError(f"no pool items were imported from a file named {name!r}; nothing removed "
                      f"(sources: {shown or 'none'})")


class _PlainLines:
    """Off a terminal (nohup, systemd, CI), one plain line per phase and every ``PLAIN_LINE_INTERVAL_S``:
    the spinner shows nothing there, and a 1M-row import ran 56 s without a word (QA)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.clock = name, clock
        self.started = self.last = clock()
        self.phase = ""

    def __call__(self, phase: str, rows: int) -> None:
        now = self.clock()
        if phase == self.phase and now - self.last < PLAIN_LINE_INTERVAL_S:
            return
        self.phase, self.last = phase, now
        rate = rows / (now - self.started) if now > self.started else 0.0
        err.print(f"{phase} {self.name}: {rows:,} rows ({rate:,.0f} rows/s, {now - self.started:.0f} s)",
                  markup=False, highlight=False)


def _print_import(report: ImportReport) -> None:
    restored = f" ({report.restored} of them removed before, now back)" if report.restored else ""
    repeats = (f" (and {report.repeated_rows} rows repeating an earlier one, kept once)"
               if report.repeated_rows else "")
    out.print(f"{escape(report.path)}: {report.rows} rows{repeats}, {report.added} added, "
              f"{report.already_present} already in the pool{restored}, {report.labels_added} seed labels",
              soft_wrap=True)  # one line off a terminal too (rich folded it at 80 columns: "0 seed⏎labels", QA)
    if report.labels_differing:
        err.print(f"[yellow]{report.labels_differing} seed labels differ from the store's and were not applied "
                  f"(a label is changed in Label Studio): {escape('; '.join(report.labels_differing_first))}[/]")
    if report.vectors_differing:
        err.print(f"[yellow]{report.vectors_differing} rows carry another vector than the store's for their id and "
                  "were not applied (an id keeps its first vector, as its text: labels and tasks belong to it; "
                  "give a changed item a new id): "
                  f"{escape('; '.join(report.vectors_differing_first))}[/]")


@pool_app.command("remove")
def pool_remove(
    files: Annotated[list[Path] | None, typer.Argument(help="Pool files: their items are removed (ids as pool add "
                                                            "derives them).")] = None,
    source: Annotated[list[str] | None, typer.Option(help="Remove every item imported from the file of this name "
                                                          "(repeatable).")] = None,
    item_id: Annotated[list[str] | None, typer.Option("--id", help="Remove this item (repeatable).")] = None,
    reason: Annotated[str, typer.Option(help="Kept with each removal.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Take items out of the loop: never selected, trained on or exported; their waiting tasks are withdrawn.

    Every file is read before anything is removed, and the removal is one transaction. Works
    while the daemon runs; `pool add` of the same items brings them back.
    """
    from daemon.pool_files import iter_pool_ids
    from daemon.removal import item_ids_of_source, remove_items, unknown_ids

    with cli_errors():
        if [bool(files), bool(source), bool(item_id)].count(True) != 1:
            raise ConfigError("name the items one way: pool FILEs, --source NAME or --id ID")
        cfg = settings()
        engine, pool = store_engine(cfg, existing=True), cfg.pool
        names = [_source_name(engine, name) for name in source or []]  # every name checked before any is read
        if typed := unknown_ids(engine, item_id or []):  # a mistyped --id removed nothing, with exit 0 (QA)
            raise ConfigError(f"not in the pool: {', '.join(map(repr, typed[:5]))}"
                              + (f" and {len(typed) - 5} more" if len(typed) > 5 else "")
                              + "; nothing was removed (an item's id is its pool file's id field, or made from its "
                              "text when the file has none: remove those by FILE)")
        streams: list[Iterable[str]] = [
            *(iter_pool_ids(file, id_field=pool.id_field, text_field=pool.text_field, label_field=pool.label_field,
                            embedding_field=pool.embedding_field) for file in files or []),
            *(item_ids_of_source(engine, name) for name in names),
            item_id or [],
        ]
        try:  # the ids are streamed into a temporary table: every file is read before anything is removed
            report = remove_items(engine, itertools.chain.from_iterable(streams), reason=reason)
        except PoolFileError as e:
            raise PoolFileError(e.path, e.problems, outcome="nothing removed") from None
    if as_json:
        print_json(asdict(report))
        return
    more = ", …" if report.not_in_pool > len(report.not_in_pool_first) else ""
    missing = f" ({escape(', '.join(report.not_in_pool_first))}{more})" if report.not_in_pool else ""
    out.print(f"{counted(report.removed, 'item')} removed ({report.labeled} with a label, no longer trained on or "
              f"exported; {report.waiting} waiting in Label Studio, withdrawn at the next sync unless someone answered "
              f"them); {report.already_removed} {for_count(report.already_removed, 'was', 'were')} already removed, "
              f"{report.not_in_pool} {for_count(report.not_in_pool, 'is', 'are')} not in the pool"
              f"{missing}", soft_wrap=True)
