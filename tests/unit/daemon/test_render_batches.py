"""`labelloop batches` stays readable in an 80-column terminal."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from sqlmodel import Session

from daemon.cli import app
from daemon.queries import BatchSummary
from daemon.render import batches_table
from daemon.store import Batch, BatchItem, BatchItemState, BatchStatus, make_engine
from tests.unit.daemon.test_cli import runner, workdir

__all__ = ["workdir"]  # a fixture, used by name

BATCH = BatchSummary(id="853a462c-5b1f-4f6e-9c1e-0a6b3f5d2e10", status="pushed", strategy="scarce_margin_diverse",
                     model_version="1d523c07aa91", created_at="2026-12-06T15:00:00+00:00", age_s=3720.0, size=50,
                     labeled=31, skipped=0, pending=1, withdrawn=17, control=2, note="", unsettled=1)


def rendered(width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(batches_table([BATCH], width=width))
    return console.export_text()


def test_at_80_columns_ids_counts_and_the_rarer_counts_are_whole() -> None:
    # every cell was cut to three characters and an ellipsis ("853…", "sta…")
    text = rendered(80)
    assert "…" not in text
    assert "853a462c" in text and "1d523c07" in text and "31/50" in text
    flat = " ".join(text.split())  # the last column folds its list over lines
    assert "1 unsettled, 17 withdrawn, 2 control" in flat
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_wide_terminal_gets_every_column_with_the_strategy() -> None:
    text = rendered(140)
    assert "…" not in text and "scarce_margin_diverse" in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("id"))
    assert header.split() == ["id", "age", "status", "strategy", "model", "size", "labeled", "unsettled", "skipped",
                              "pending", "withdrawn", "control"]


def _batch(session: Session, batch_id: str, status: BatchStatus, *states: BatchItemState) -> None:
    session.add(Batch(id=batch_id, strategy="margin", model_version="m1", status=status, size=len(states)))
    for n, state in enumerate(states):
        session.add(BatchItem(batch_id=batch_id, item_id=f"{batch_id}-{n}", position=n, score=1.0, state=state,
                              remote_task_id=str(n)))


def test_a_closed_batch_with_a_task_waiting_again_is_reopened_in_the_table_the_json_and_the_filter(
    workdir: Path
) -> None:
    """QA: the table said `reopened`, `--json` said `closed`, and `--status reopened` was refused."""
    engine = make_engine(f"sqlite:///{workdir / '.labelloop' / 'labelloop.db'}")
    with Session(engine) as session:
        _batch(session, "aaa-reopened", BatchStatus.CLOSED, BatchItemState.LABELED, BatchItemState.PENDING)
        _batch(session, "bbb-closed", BatchStatus.CLOSED, BatchItemState.LABELED, BatchItemState.SKIPPED)
        _batch(session, "ccc-pushed", BatchStatus.PUSHED, BatchItemState.PENDING)
        session.commit()
    shown = {row["id"]: row["status"] for row in json.loads(runner.invoke(app, ["batches", "--json"]).output)}
    assert shown == {"aaa-reopened": "reopened", "bbb-closed": "closed", "ccc-pushed": "pushed"}
    only = json.loads(runner.invoke(app, ["batches", "--status", "reopened", "--json"]).output)
    assert [row["id"] for row in only] == ["aaa-reopened"]
    closed = json.loads(runner.invoke(app, ["batches", "--status", "closed", "--json"]).output)
    assert {row["id"] for row in closed} == {"aaa-reopened", "bbb-closed"}  # its stored status, as documented
    table = runner.invoke(app, ["batches"], terminal_width=80).output
    rows = [line.split() for line in table.splitlines() if line.lstrip().startswith(("aaa", "bbb"))]
    assert {row[0][:3]: row[2] for row in rows} == {"aaa": "reopened", "bbb": "closed"}
    refused = runner.invoke(app, ["batches", "--status", "stuck"])
    assert refused.exit_code == 2 and "use selected | pushed | closed | reopened | parked" in refused.output
