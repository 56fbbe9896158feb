"""The ``labelloop`` command line: parse → call a query or stage → render.

Read commands (``batches``, ``status``, ``config show``) only read the store and work
while the daemon runs; each has ``--json`` for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlmodel import Session

from daemon.cli_common import (
    ConfigChoice,
    JsonOpt,
    cli_errors,
    err,
    interrupt_on_termination,
    out,
    print_error,
    print_json,
    settings,
    store_engine,
)
from daemon.settings import DEFAULT_CONFIG_FILE, Settings, load_settings

__all__ = ["app"]

_CLASSES_SHOWN = 10  # predict's summary names the most common classes, not all 77

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold the token
    help="Active-learning labeling loop for Label Studio.",
)
batches_app = typer.Typer(help="Inspect queued batches (without a subcommand: list them).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")
app.add_typer(batches_app, name="batches")
app.add_typer(config_app, name="config")

@app.callback()
def _root(
    context: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help=f"Config file (default ./{DEFAULT_CONFIG_FILE}).")
    ] = None,
) -> None:
    ConfigChoice.config = config
    if context.invoked_subcommand != "run":  # the daemon handles its own signals (a graceful stop)
        interrupt_on_termination()


@app.command()
def init(
    url: Annotated[str, typer.Option(help="Label Studio URL.")] = "http://127.0.0.1:8080",
    project_id: Annotated[int | None, typer.Option(help="Use this existing project.")] = None,
    classes: Annotated[str, typer.Option(help="Comma-separated classes for a new project.")] = "",
    force: Annotated[bool, typer.Option(help="Overwrite an existing config file.")] = False,
) -> None:
    """Write a labelloop.toml and create the database."""
    from daemon.app import write_config

    with cli_errors():
        path = ConfigChoice.config or Path(DEFAULT_CONFIG_FILE)
        previous = path.read_bytes() if path.is_file() else None
        write_config(path, url=url, project_id=project_id, classes=classes.split(",") if classes else [],
                     force=force)
        try:
            store_engine(load_settings(path)).dispose()
        except BaseException:  # a store it refuses: the config file is put back as it was (QA: --force kept it)
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(previous)
            raise
        # the command on a line of its own: folded at 80 columns, a copy-paste broke it in two (QA)
        out.print(f"wrote {escape(str(path))}; set the token with\n  [bold]export LABELLOOP_LABEL_STUDIO__API_KEY=…[/]",
                  soft_wrap=True)


@app.command()
def run() -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    from daemon.app import run_service

    with cli_errors():
        run_service(settings())


@app.command()
def cycle(as_json: JsonOpt = False) -> None:
    """Run one cycle now (sync, embed, retrain, select, push)."""
    from daemon.app import one_cycle

    with cli_errors():
        report = one_cycle(settings())
    if as_json:
        print_json(asdict(report))
    else:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in report.stage_seconds.items())
        made = f"batch {report.batch_id}, {report.pushed} tasks pushed; " if report.batch_id else ""
        model = f"model {report.model_version}" if report.model_version else "no model yet (cold start)"
        why = f", {escape(report.reason)}" if report.reason else ""
        out.print(f"cycle {report.cycle_id}: {report.status}{why}; {made}{model} ({stages})")


@app.command("sync")
def sync_command(as_json: JsonOpt = False) -> None:
    """Pull annotations from Label Studio now."""
    from daemon.app import one_sync

    with cli_errors():
        report = one_sync(settings())
    if as_json:
        print_json(asdict(report))
    else:
        out.print(f"{report.tasks_seen} tasks read, {report.labels_changed} label changes, "
                  f"{report.unknown_choices} unknown choices, {report.batches_closed} batches closed")


@app.command()
def pause(
    reason: Annotated[str, typer.Option(help="Why, for `status` and the log (no secrets).")] = "",
) -> None:
    """Stop queueing new batches (tasks already in Label Studio stay and are still pulled) until `resume`."""
    from daemon.pause import pause_by_operator

    with cli_errors():
        engine = store_engine(settings(), existing=True)
    with Session(engine) as session:
        paused = pause_by_operator(session, reason.strip())
        session.commit()
    out.print("paused: no new batches until `labelloop resume`" if paused else "the queue was already paused")


@app.command()
def resume() -> None:
    """Lift a pause (the stopping rule's or `labelloop pause`); the daemon queues batches again."""
    from daemon.pause import is_paused, lift_pause

    with cli_errors():
        config = settings()
        engine = store_engine(config, existing=True)
    loop = config.loop
    with Session(engine) as session:
        paused = is_paused(session)
        lifted = lift_pause(session, "operator asked (labelloop resume)")
        session.commit()
    if not lifted:
        out.print("the queue was not paused")
        return
    out.print("resumed: the daemon will queue new batches")
    if paused is not None and paused.get("by") != "operator" and loop.stop_rule_enabled:
        # it paused again 36 labels after a resume, which read as a queue that never refills (QA)
        out.print(f"the stopping rule pauses it again if the next {loop.stop_window} retrains (one per "
                  f"{loop.min_new_labels} new labels) still agree; to label on regardless, set "
                  "loop.stop_rule_enabled = false and restart the daemon")


@contextmanager
def _read_session(cfg: Settings | None = None) -> Iterator[Session]:
    """A session on the existing store of ``cfg`` (the command's config when None)."""
    with cli_errors(reads_only=True):
        engine = store_engine(cfg or settings(), existing=True)
    with Session(engine) as session:
        yield session


@batches_app.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="selected | pushed | closed | reopened | parked")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List batches, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from daemon.queries import BATCH_STATUSES, list_batches
    from daemon.render import batches_table

    if status is not None and status not in BATCH_STATUSES:
        print_error(f"no batch status {status!r}: use {' | '.join(BATCH_STATUSES)}")
        raise typer.Exit(2)
    with _read_session() as session:
        rows = list_batches(session, status=status)
    if as_json:
        print_json([asdict(r) for r in rows])
    elif not rows:  # an empty table's header said nothing (QA)
        out.print(f"no {status} batches" if status else "no batches yet")
    else:
        out.print(batches_table(rows, width=out.width))


@batches_app.command("show")
def batches_show(batch_id: str, as_json: JsonOpt = False) -> None:
    """Show one batch's items: text preview, score, prediction, state."""
    from daemon.queries import batch_detail
    from daemon.render import batch_table

    with _read_session() as session:
        detail = batch_detail(session, batch_id)
    if detail is None:
        print_error(f"no batch {batch_id!r} (see `labelloop batches`)")
        raise typer.Exit(1)
    if as_json:
        print_json(asdict(detail))
    else:
        out.print(batch_table(detail))


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Pool and label counts per class, model quality, queue, last cycles, daemon health."""
    from daemon.queries import status_report
    from daemon.render import status_panels

    with cli_errors(reads_only=True):
        cfg = settings()
    with _read_session(cfg) as session:
        report = status_report(session, declared=cfg.loop.classes, near_copy_cosine=(
            cfg.loop.near_copy_cosine if cfg.loop.set_aside_near_copies else None))
    if as_json:
        print_json(report.as_dict())
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

    with cli_errors(reads_only=True):
        cfg = settings()
        report = export_labels(store_engine(cfg, existing=True), file, pool=cfg.pool, everything=everything,
                               overwrite=force, data_dir=cfg.store.data_dir)
    if as_json:
        print_json(asdict(report))
    else:
        counts = ", ".join(f"{status} {n}" for status, n in report.statuses.items()) or "no labels yet"
        out.print(f"wrote {escape(str(report.path))}: {report.rows} items ({counts})")


@app.command("predict")
def predict_command(
    file: Annotated[Path, typer.Argument(help="Output: .csv, .tsv, .jsonl or .parquet.")],
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the model's prediction for every pool item (class, confidence, margin); safe while the daemon runs."""
    from daemon.app import predictions
    from daemon.cli_embed import progress_view

    with cli_errors(reads_only=True), progress_view(err, label="predicting", what="pool items predicted") as show:
        cfg = settings()
        store_engine(cfg, existing=True).dispose()
        report = predictions(cfg, file, overwrite=force, progress=show)
    if as_json:
        print_json(asdict(report))
        return
    out.print(f"wrote {escape(str(report.path))}: {report.rows} items; model {report.model_version} trained on "
              f"{report.n_labels} labels")
    by_class = sorted(report.predicted.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{escape(label or '(no vector)')} {n}" for label, n in by_class[:_CLASSES_SHOWN])
    rest = len(by_class) - _CLASSES_SHOWN
    more = f", and {rest} more classes (the file has each item's)" if rest > 0 else ""
    out.print(f"predicted, most common first: {shown}{more}", soft_wrap=True)  # 77 classes made ~30 lines (QA)
    if report.not_embedded:
        err.print(f"[yellow]{report.not_embedded} items have no vector yet and no prediction "
                  "(the daemon embeds them, or run labelloop embed)[/]")


@config_app.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Print the effective settings (secrets masked)."""
    with cli_errors(reads_only=True):
        data = settings().public_dump()
    if as_json:
        print_json(data)
    elif not out.is_terminal:  # piped: one whole "key = value" line each (the table cut paths for grep, QA)
        for section, values in data.items():
            for key, value in values.items():
                out.print(f"{section}.{key} = {json.dumps(value)}", markup=False, highlight=False, soft_wrap=True)
    else:
        table = Table("setting", "value", title="effective configuration")
        table.columns[1].overflow = "fold"  # a long path wraps whole, never cut to "…"
        for section, values in data.items():
            for key, value in values.items():
                table.add_row(f"{section}.{key}", escape(json.dumps(value)))
        out.print(table)


def _register_extra_commands() -> None:
    from daemon.cli_embed import register as register_embed
    from daemon.cli_pool import register as register_pool
    from daemon.cli_simulate import register

    register(app)
    register_embed(app)
    register_pool(app)


_register_extra_commands()
