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
