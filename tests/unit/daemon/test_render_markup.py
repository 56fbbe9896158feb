"""Texts, class names, notes and error messages are shown as written: rich must not read them as markup.

A pool text with ``[/quote]`` made `labelloop batches show` die with rich's MarkupError, and one with
``[bold]`` lost the tag and changed the style of what followed.
"""

from __future__ import annotations

from rich.console import Console

from daemon.queries import BatchDetail, BatchItemRow, BatchSummary, StatusReport
from daemon.render import batch_table, status_panels

TRICKY = "[/quote] see [bold]this[/bold] and [link=http://x]here"


def rendered(*renderables: object) -> str:
    console = Console(width=400, record=True, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return " ".join(console.export_text().split())


def test_batch_items_show_their_text_label_and_note_as_written() -> None:
    summary = BatchSummary(id="b1", status="pushed", strategy="margin", model_version="m[1]", created_at="",
                           age_s=1.0, size=1, labeled=1, skipped=0, pending=0, withdrawn=0, control=0,
                           note="parked: [/red] refused")
    item = BatchItemRow(position=1, item_id="id[/x]", text=TRICKY, score=0.5, predicted_label="[b]spam",
                        predicted_score=0.9, is_control=True, state="labeled", label="[/i]ham", remote_task_id="7")
    text = rendered(batch_table(BatchDetail(summary, [item])))
    assert TRICKY in text
    assert "id[/x] (control)" in text and "[b]spam (0.90)" in text and "[/i]ham" in text
    assert "model m[1]" in text and "parked: [/red] refused" in text


def test_status_shows_class_names_pause_reasons_cycle_reasons_and_events_as_written() -> None:
    report = StatusReport(
        project={"id": "3", "classes": ["[/a]", "b"]}, pool={"items": 2, "embedded": 2}, labels={"labeled": 2},
        per_class={"[/a]": 1, "[bold]b": 1}, labels_outside_classes={"[/old]": 1}, unknown_choices={},
        queue={"waiting_items": 0}, model=None, control_slice={"n": 0, "accuracy": None},
        cycles=[{"id": 1, "started_at": "2026-12-06T10:00:00", "status": "error", "reason": "cycle failed: [/x] y",
                 "batch_id": None, "stage_seconds": {}}],
        daemon={"state": "running", "pid": 1, "healthy": True, "last_beat_age_s": 1.0,
                "recent_events": [{"at": "2026-12-06T10:00:00", "kind": "job_error",
                                   "message": "file shards[1].parquet: [/bad]"}]},
        stopping={"paused": {"reason": "an operator paused the queue: [/freeze] guide"}},
    )
    text = rendered(*status_panels(report))
    for shown in ("[/a]", "[bold]b", "label '[/old]'", "cycle failed: [/x] y", "shards[1].parquet: [/bad]",
                  "[/freeze] guide"):
        assert shown in text


def raw_lines(*renderables: object) -> list[str]:
    console = Console(width=400, record=True, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return console.export_text().splitlines()


def test_a_line_break_in_a_class_name_or_text_stays_inside_its_row() -> None:
    report = StatusReport(
        project={"id": "3", "classes": ["a\nb", "c"]}, pool={"items": 2, "embedded": 2}, labels={"labeled": 3},
        per_class={"a\nb": 2, "c\td": 1}, labels_outside_classes={}, unknown_choices={},
        queue={"waiting_items": 0}, model=None, control_slice={"n": 0, "accuracy": None}, cycles=[],
        daemon={"state": "running", "pid": 1, "healthy": True, "last_beat_age_s": 1.0, "recent_events": []},
        stopping={},
    )
    lines = raw_lines(*status_panels(report))
    assert [line for line in lines if "a\\nb" in line and "2" in line]  # one row: the name, then its count
    assert not [line for line in lines if line.strip(" │|") == "b"]
    assert [line for line in lines if "c\\td" in line]
    summary = BatchSummary(id="b1", status="pushed", strategy="margin", model_version="m", created_at="",
                           age_s=1.0, size=1, labeled=1, skipped=0, pending=0, withdrawn=0, control=0, note="")
    item = BatchItemRow(position=1, item_id="x", text="first line\nsecond line", score=0.5, predicted_label="a\nb",
                        predicted_score=0.9, is_control=False, state="labeled", label="a\nb", remote_task_id="7")
    [row] = [line for line in raw_lines(batch_table(BatchDetail(summary, [item]))) if "first line" in line]
    assert "first line\\nsecond line" in row and row.count("a\\nb") == 2
