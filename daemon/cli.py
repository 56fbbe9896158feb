"""The ``labelloop`` command line: parse → call a query or stage → render.

Read commands (``batches``, ``status``, ``config show``) only read the store and work
while the daemon runs; each has ``--json`` for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from connectors.errors import ConnectorAuthError, ConnectorError
from daemon.errors import AlreadyRunning, ConfigError, DaemonError, PoolFileError
from daemon.settings import DEFAULT_CONFIG_FILE, Settings, load_settings
from daemon.store import is_disk_full, is_store_locked, make_engine
from models.errors import ModelError

if TYPE_CHECKING:  # pool.py loads numpy and the cache: not for every command
    from daemon.pool import ImportReport

__all__ = ["app"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold the token
    help="Active-learning labeling loop for Label Studio.",
)
pool_app = typer.Typer(no_args_is_help=True, help="Manage the unlabeled pool.")
batches_app = typer.Typer(help="Inspect queued batches (without a subcommand: list them).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")
app.add_typer(pool_app, name="pool")
app.add_typer(batches_app, name="batches")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class _State:
    config: Path | None = None


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help=f"Config file (default ./{DEFAULT_CONFIG_FILE}).")
    ] = None,
) -> None:
    _State.config = config


def settings() -> Settings:
    return load_settings(_State.config)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn our errors into one clear line and an exit code; never a traceback."""
    try:
        yield
    except (ConfigError, ConnectorAuthError) as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    except AlreadyRunning as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(3) from None
    except (PoolFileError, DaemonError, ConnectorError, ModelError) as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from None
    except OperationalError as e:
        if is_store_locked(e):
            err.print("[red]error:[/] another process held the store's write lock for longer than "
                      "store.busy_timeout_s (another `labelloop pool add`?); nothing was written, try again")
            raise typer.Exit(1) from None
        if not is_disk_full(e):
            raise
        _disk_full("the store's database")
    except OSError as e:
        if not is_disk_full(e):
            raise
        _disk_full(e.filename or "a file")


def _disk_full(where: object) -> NoReturn:
    err.print(f"[red]error:[/] no space left on the disk for {where} (SQLite's temporary files go to "
              "$SQLITE_TMPDIR, else /var/tmp or /tmp); the transaction in flight was rolled back, so "
              "nothing of it was written: free some space and run the command again")
    raise typer.Exit(1) from None


def _engine(cfg: Settings) -> Engine:
    return make_engine(cfg.store.url, busy_timeout_s=cfg.store.busy_timeout_s)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def init(
    url: Annotated[str, typer.Option(help="Label Studio URL.")] = "http://127.0.0.1:8080",
    project_id: Annotated[int | None, typer.Option(help="Use this existing project.")] = None,
    classes: Annotated[str, typer.Option(help="Comma-separated classes for a new project.")] = "",
    force: Annotated[bool, typer.Option(help="Overwrite an existing config file.")] = False,
) -> None:
    """Write a labelloop.toml and create the database."""
    from daemon.app import write_config

    with _errors():
        path = _State.config or Path(DEFAULT_CONFIG_FILE)
        write_config(path, url=url, project_id=project_id, classes=[c.strip() for c in classes.split(",") if c.strip()],
                     force=force)
        _engine(load_settings(path)).dispose()
        out.print(f"wrote {path}; set the token with [bold]export LABELLOOP_LABEL_STUDIO__API_KEY=…[/]")


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

    from daemon.cli_embed import RateColumn
    from daemon.pool import add_pool_file

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} rows"),
               RateColumn("rows"), TimeElapsedColumn())
    reports: list[ImportReport] = []
    with _errors(), Progress(*columns, console=err, transient=True) as bar:
        cfg = settings()
        fields = {k: v for k, v in {"id_field": id_field, "text_field": text_field, "label_field": label_field,
                                    "embedding_field": embedding_field}.items() if v}
        pool, engine = cfg.pool.model_copy(update=fields), _engine(cfg)
        for file in files:
            task = bar.add_task(f"reading {file.name}", total=None)

            def progress(phase: str, rows: int, task: TaskID = task, name: str = file.name) -> None:
                bar.update(task, description=f"{phase} {name}", completed=rows)

            try:
                reports.append(add_pool_file(engine, file, pool=pool, data_dir=cfg.store.data_dir,
                                             classes=cfg.loop.classes, progress=progress))
            except PoolFileError:
                if reports:
                    err.print(f"{len(reports)} files before it were added: {', '.join(r.path for r in reports)}")
                raise
            bar.remove_task(task)
            if not as_json:
                _print_import(reports[-1])
    if as_json:
        _print_json(asdict(reports[0]) if len(reports) == 1 else [asdict(report) for report in reports])


def _print_import(report: ImportReport) -> None:
    restored = f" ({report.restored} of them removed before, now back)" if report.restored else ""
    out.print(f"{report.path}: {report.rows} rows, {report.added} added, {report.already_present} already "
              f"in the pool{restored}, {report.labels_added} seed labels")


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
    from daemon.pool_files import read_pool_ids
    from daemon.removal import item_ids_of_source, remove_items

    with _errors():
        if [bool(files), bool(source), bool(item_id)].count(True) != 1:
            raise ConfigError("name the items one way: pool FILEs, --source NAME or --id ID")
        cfg = settings()
        engine, pool = _engine(cfg), cfg.pool
        ids: dict[str, None] = {}  # each once, in the order named
        for file in files or []:
            ids.update(dict.fromkeys(read_pool_ids(file, id_field=pool.id_field, text_field=pool.text_field,
                                                   label_field=pool.label_field,
                                                   embedding_field=pool.embedding_field)))
        for name in source or []:
            ids.update(dict.fromkeys(item_ids_of_source(engine, name)))
        ids.update(dict.fromkeys(item_id or []))
        report = remove_items(engine, list(ids), reason=reason)
    if as_json:
        _print_json(asdict(report))
        return
    out.print(f"{report.removed} items removed ({report.labeled} with a label, no longer trained on or exported; "
              f"{report.waiting} waiting in Label Studio, withdrawn at the next sync unless someone answered "
              f"them); {report.already_removed} were already removed, {report.not_in_pool} are not in the pool")


@app.command()
def run() -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    from daemon.app import run_service

    with _errors():
        run_service(settings())


@app.command()
def cycle(as_json: JsonOpt = False) -> None:
    """Run one cycle now (sync, embed, retrain, select, push)."""
    from daemon.app import one_cycle

    with _errors():
        report = one_cycle(settings())
    if as_json:
        _print_json(asdict(report))
    else:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in report.stage_seconds.items())
        out.print(f"cycle {report.cycle_id}: {report.status} {report.reason} batch={report.batch_id} "
                  f"pushed={report.pushed} model={report.model_version} ({stages})")


@app.command("sync")
def sync_command(as_json: JsonOpt = False) -> None:
    """Pull annotations from Label Studio now."""
    from daemon.app import one_sync

    with _errors():
        report = one_sync(settings())
    if as_json:
        _print_json(asdict(report))
    else:
        out.print(f"{report.tasks_seen} tasks read, {report.labels_changed} label changes, "
                  f"{report.unknown_choices} unknown choices, {report.batches_closed} batches closed")


@app.command()
def resume() -> None:
    """Lift a pause set by the stopping rule; the daemon queues batches again."""
    from daemon.pause import lift_pause

    with _errors():
        engine = _engine(settings())
    with Session(engine) as session:
        lifted = lift_pause(session, "operator asked (labelloop resume)")
        session.commit()
    out.print("resumed: the daemon will queue new batches" if lifted else "the queue was not paused")


@contextmanager
def _read_session() -> Iterator[Session]:

    with _errors():
        engine = _engine(settings())
    with Session(engine) as session:
        yield session


@batches_app.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="selected | pushed | closed | parked")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List batches, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from daemon.queries import list_batches
    from daemon.render import batches_table

    with _read_session() as session:
        rows = list_batches(session, status=status)
    if as_json:
        _print_json([asdict(r) for r in rows])
    else:
        out.print(batches_table(rows))


@batches_app.command("show")
def batches_show(batch_id: str, as_json: JsonOpt = False) -> None:
    """Show one batch's items: text preview, score, prediction, state."""
    from daemon.queries import batch_detail
    from daemon.render import batch_table

    with _read_session() as session:
        detail = batch_detail(session, batch_id)
    if detail is None:
        err.print(f"[red]error:[/] no batch {batch_id!r} (see `labelloop batches`)")
        raise typer.Exit(1)
    if as_json:
        _print_json(asdict(detail))
    else:
        out.print(batch_table(detail))


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Pool and label counts per class, model quality, queue, last cycles, daemon health."""
    from daemon.queries import status_report
    from daemon.render import status_panels

    with _read_session() as session:
        report = status_report(session)
    if as_json:
        _print_json(report.as_dict())
    else:
        for panel in status_panels(report):
            out.print(panel)


@app.command("export")
def export_command(
    file: Annotated[Path, typer.Argument(help="Output: .csv, .tsv, .jsonl or .parquet.")],
    everything: Annotated[bool, typer.Option("--all", help="Also skipped, unknown, disputed and retracted items, "
                                                            "with their status and answer.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the labels to a file (a pool file again: its labels are seed labels); safe while the daemon runs."""
    from daemon.export import export_labels

    with _errors():
        cfg = settings()
        report = export_labels(_engine(cfg), file, pool=cfg.pool, everything=everything,
                               overwrite=force)
    if as_json:
        _print_json(asdict(report))
    else:
        counts = ", ".join(f"{status} {n}" for status, n in report.statuses.items()) or "no labels yet"
        out.print(f"wrote {report.path}: {report.rows} items ({counts})")


@app.command("predict")
def predict_command(
    file: Annotated[Path, typer.Argument(help="Output: .csv, .tsv, .jsonl or .parquet.")],
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the model's prediction for every pool item (class, confidence, margin); safe while the daemon runs."""
    from daemon.app import predictions

    with _errors():
        report = predictions(settings(), file, overwrite=force)
    if as_json:
        _print_json(asdict(report))
        return
    counts = ", ".join(f"{label} {n}" for label, n in report.predicted.items())
    out.print(f"wrote {report.path}: {report.rows} items; model {report.model_version} trained on "
              f"{report.n_labels} labels predicts {counts}")
    if report.not_embedded:
        err.print(f"[yellow]{report.not_embedded} items have no vector yet and no prediction "
                  "(the daemon embeds them, or run labelloop embed)[/]")


@config_app.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Print the effective settings (secrets masked)."""
    with _errors():
        data = settings().public_dump()
    if as_json:
        _print_json(data)
    else:
        table = Table("setting", "value", title="effective configuration")
        for section, values in data.items():
            for key, value in values.items():
                table.add_row(f"{section}.{key}", json.dumps(value))
        out.print(table)


def _register_extra_commands() -> None:
    from daemon.cli_embed import register as register_embed
    from daemon.cli_simulate import register

    register(app)
    register_embed(app)


_register_extra_commands()
