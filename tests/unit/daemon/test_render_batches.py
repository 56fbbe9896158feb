"""`labelloop batches` stays readable in an 80-column terminal."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from daemon.queries import BatchSummary
from daemon.render import batches_table

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


def test_a_closed_batch_with_a_task_waiting_again_shows_as_reopened() -> None:
    for width in (80, 140):
        console = Console(width=width, record=True, color_system=None)
        console.print(batches_table([replace(BATCH, status="closed", pending=1),
                                     replace(BATCH, id="77" + BATCH.id[2:], status="closed", pending=0)], width=width))
        rows = [line.split() for line in console.export_text().splitlines() if line.lstrip().startswith(("853", "77"))]
        assert [row[2:3] for row in rows] == [["reopened"], ["closed"]]
