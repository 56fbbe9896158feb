"""`labelloop status` at 80 columns: the control slice's latest figure, kappa while paused, whole cycle times."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from daemon.queries import BatchSummary, StatusReport
from daemon.render import batches_table, status_panels


def report(**changes: Any) -> StatusReport:
    base = StatusReport(
        project={"id": "3", "classes": ["a", "b"]}, pool={"items": 2000, "embedded": 2000},
        labels={"labeled": 316}, per_class={"a": 200, "b": 116}, labels_outside_classes={}, unknown_choices={},
        queue={"waiting_items": 40},
        model={"version": "da81f8c6aa11", "n_labels": 316, "macro_f1": 0.7, "accuracy": 0.76, "quality_method": "cv"},
        control_slice={"n": 76, "accuracy": 0.6316, "recent": {"n": 21, "accuracy": 0.81, "from_labels": 240},
                       "curve": [{"n_labels": 240, "model_version": "x", "n_control": 21, "n_correct": 17,
                                  "accuracy": 0.8095}]},
        cycles=[{"id": 7, "started_at": "2026-12-06T19:04:05.123+00:00", "status": "skipped",
                 "reason": "paused by the stopping rule (labelloop resume)", "batch_id": None, "stage_seconds": {}}],
        stopping={"paused": {"reason": "successive models agree"},
                  "kappa_history": [{"model_version": "x", "n_labels": 300, "kappa": 0.991}]},
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def rendered(*renderables: Any, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return console.export_text()


def test_the_control_slice_leads_with_the_latest_models_figure() -> None:
    """All control items pooled (0.632) read as the current model's accuracy, which was 0.775."""
    text = " ".join(rendered(*status_panels(report()), width=200).split())
    assert ("control slice: accuracy 0.810 on the last 21 random items (models trained on 240+ labels); "
            "0.632 on all 76") in text


def test_beside_the_control_slice_status_says_which_estimate_is_unbiased() -> None:
    """CV macro-F1 0.683 next to control accuracy 0.950 read as a contradiction (QA11)."""
    hint = "the control slice is the pool's unbiased estimate; cross-validation scores the actively chosen labels"
    assert hint in " ".join(rendered(*status_panels(report()), width=200).split())
    no_control = report(control_slice={"n": 0, "accuracy": None, "curve": []})
    assert hint not in " ".join(rendered(*status_panels(no_control), width=200).split())


def test_kappa_stays_visible_while_paused_and_cycle_times_are_whole_at_80_columns() -> None:
    text = rendered(*status_panels(report()))
    flat = " ".join(text.split())
    assert "agreement with the previous model (kappa): 0.991" in flat and "queue PAUSED" in flat
    assert "12-06 19:04:05" in text  # cut to "2026-12-06T1…" before
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_cold_start_batch_shows_its_model_whole() -> None:
    row = BatchSummary(id="853a462c-5b1f", status="pushed", strategy="cold_start", model_version="cold-start",
                       created_at="", age_s=60.0, size=10, labeled=0, skipped=0, pending=10, withdrawn=0, control=1,
                       note="")
    assert "cold-start" in rendered(batches_table([row], width=140), width=140)


def test_recent_takes_the_newest_models_control_items_until_twenty() -> None:
    from daemon.queries import _recent

    curve = [{"n_labels": n, "model_version": str(n), "n_control": c, "n_correct": k, "accuracy": k / c}
             for n, c, k in [(24, 10, 2), (100, 8, 5), (200, 9, 8), (300, 12, 11)]]
    assert _recent(curve) == {"n": 21, "accuracy": round(19 / 21, 4), "from_labels": 200}
    assert _recent(curve[:1]) == {"n": 10, "accuracy": 0.2, "from_labels": 24}  # fewer than 20 in all: all
    assert _recent([]) == {"n": 0, "accuracy": None, "from_labels": None}


def test_cycle_times_stay_whole_beside_a_long_reason_and_a_batch_id() -> None:
    """With a batch id and a longer reason the time read "12-06 21:50:…" at 80 columns (QA)."""
    cycle = {"id": 1234, "started_at": "2026-12-06T21:50:33.5+00:00", "status": "ok",
             "reason": "new labels: 31 answers since the last model, and the queue is low (3 waiting)",
             "batch_id": "e2b5a9c1d3f4", "stage_seconds": {"sync": 1.25, "train": 20.5}}
    text = rendered(*status_panels(report(cycles=[cycle], stopping={})))
    assert "12-06 21:50:33" in text and "e2b5a9c1d3f4" in text.replace("\n", "").replace("│", "").replace(" ", "")
    assert max(len(line) for line in text.splitlines()) <= 80


def test_batch_items_show_class_names_and_ids_whole_at_80_columns() -> None:
    """'virtual_card…' and 'getting_spar…' named no class of 77 (QA)."""
    from daemon.queries import BatchDetail, BatchItemRow
    from daemon.render import batch_table

    summary = BatchSummary(id="b1", status="pushed", strategy="margin_diverse", model_version="da81f8c6aa11",
                           created_at="", age_s=1.0, size=1, labeled=0, skipped=0, pending=1, withdrawn=0, control=0,
                           note="")
    item = BatchItemRow(position=1, item_id="banking77-train-004711", text="Why is my card not working abroad?" * 3,
                        score=0.5, predicted_label="virtual_card_not_working", predicted_score=0.41,
                        is_control=False, state="pending", label="getting_spare_card", remote_task_id="7")
    text = rendered(batch_table(BatchDetail(summary, [item])))
    rows = [line.split("│") for line in text.splitlines() if line.startswith("│")]

    def column(n: int) -> str:  # a folded cell's lines, joined
        return "".join(row[n].strip() for row in rows)

    assert "…" not in text
    assert (column(2), column(5), column(7)) == ("banking77-train-004711", "virtual_card_not_working(0.41)",
                                                 "getting_spare_card")


def test_a_killed_cycle_shows_its_batch_and_no_made_up_duration() -> None:
    """A cycle killed mid-way showed 0.00 seconds and no batch, though it had selected one (QA)."""
    cycle = {"id": 4, "started_at": "2026-12-07T09:30:00+00:00", "status": "interrupted",
             "reason": "queue low (0 waiting); its process ended", "batch_id": "22d0b09eb9eb", "stage_seconds": {}}
    text = rendered(*status_panels(report(cycles=[cycle], stopping={})), width=160)
    (row,) = [line for line in text.splitlines() if "interrupted" in line]
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[cells.index("22d0b09eb9eb") + 1] == "-" and "0.00" not in row
