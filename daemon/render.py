"""Rich renderings of query results for humans (scripts use ``--json``)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from daemon.queries import BatchDetail, BatchSummary, StatusReport
from daemon.store import NO_CHOICE

__all__ = ["batch_table", "batches_table", "status_panels"]


_CONTROL = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _cell(value: str) -> str:
    """``value`` for a table cell: markup escaped, line breaks and tabs shown as ``\\n`` ``\\r`` ``\\t``.

    A class named ``"a\\nb"`` otherwise took two lines of its row and read as two classes (QA).
    """
    return escape(value.translate(_CONTROL))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


_SHORT_ID = 8  # `labelloop batches show` takes any unique prefix of an id
_WIDE = 120  # columns the full table needs


def batches_table(rows: list[BatchSummary], *, width: int = _WIDE) -> Table:
    """One line per batch, ids and model versions by their first 8 characters (`--json` has them whole).

    Narrower than ``_WIDE`` columns the strategy is left out and the rarer counts share a column:
    at 80 columns the 12 columns were each cut to three characters and an ellipsis, ids included.
    """
    title = f"batches ({len(rows)}; `batches show ID` takes an id's first characters)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    wide = width >= _WIDE
    counts = ("size", "labeled", "unsettled", "skipped", "pending", "withdrawn", "control") if wide else (
        "labeled", "pending")
    for column in ("id", "age", "status", *(("strategy",) if wide else ()), "model"):
        table.add_column(column, no_wrap=True)
    for column in counts:
        table.add_column(column, justify="right", no_wrap=True)
    if not wide:
        table.add_column("also", overflow="fold")
    for r in rows:
        head = [r.id[:_SHORT_ID], _age(r.age_s), r.status, *((r.strategy,) if wide else ()),
                _short_version(r.model_version)]
        if wide:
            table.add_row(*head, str(r.size), str(r.labeled), str(r.unsettled), str(r.skipped), str(r.pending),
                          str(r.withdrawn), str(r.control))
            continue
        also = [f"{n} {what}" for n, what in ((r.unsettled, "unsettled"), (r.skipped, "skipped"),
                                              (r.withdrawn, "withdrawn"), (r.control, "control")) if n]
        table.add_row(*head, f"{r.labeled}/{r.size}", str(r.pending), ", ".join(also))
    return table


def batch_table(detail: BatchDetail) -> Table:
    b = detail.batch
    table = Table(title=escape(f"batch {b.id}: {b.status}, {b.strategy}, model {b.model_version}, "
                               f"{b.labeled}/{b.size} labeled"
                               + (f", {b.unsettled} disputed or unknown" if b.unsettled else "")
                               + (f" — {b.note}" if b.note else "")))
    for column in ("#", "item", "text", "score", "predicted", "state", "label"):
        table.add_column(column, overflow="fold")  # ids and class names whole: 'virtual_card…' named no class (QA)
    for item in detail.items:
        predicted = "" if item.predicted_label is None else f"{item.predicted_label} ({item.predicted_score:.2f})"
        table.add_row(str(item.position), _cell(item.item_id) + (" [dim](control)[/]" if item.is_control else ""),
                      _cell(item.text), f"{item.score:.3f}", _cell(predicted), item.state, _cell(item.label or ""))
    return table


def _short_version(version: str | None) -> str:
    """A model version's first 8 characters; the cold-start batch's "cold-start" whole ("cold-sta" read as a typo)."""
    return "" if version is None else version if not version.isalnum() else version[:_SHORT_ID]


def _project_text(report: StatusReport) -> str:
    """``project 3 (6 classes)``; before the daemon's first start, that it has none yet ("project None", QA)."""
    if report.project.get("id") is None:
        return "no Label Studio project yet (the daemon finds or creates it when it starts)"
    return f"project {report.project['id']} ({len(report.project.get('classes', []))} classes)"


def _unknown_choice(raw: str, classes: list[str]) -> str:
    """Why answers that gave ``raw`` are not trained on, and what to do."""
    if raw == NO_CHOICE:
        return ("answers with nothing chosen in the bound <Choices> (only another question answered, or the tag "
                "renamed): not trained on")
    parts = raw.split("|")
    if len(parts) > 1 and all(part in classes for part in parts):  # "add 'DESC|ENTY' to the config" misled (QA)
        return (f"answers with several choices ({', '.join(map(repr, parts))}): labelloop learns one class per item; "
                'answer them again with one (a <Choices> with choice="multiple", or an answer sent through the API '
                "with two regions, gives several)")
    return f"unknown choice {raw!r}: add it to the project's labeling config to count it"


def status_panels(report: StatusReport) -> list[Panel]:
    classes = Table("class", "labels", title="labels per class")
    for name, n in sorted(report.per_class.items(), key=lambda kv: -kv[1]):
        classes.add_row(_cell(name), str(n))
    for label, n in report.labels_outside_classes.items():
        classes.add_row(f"[yellow]{escape(f'label {label!r}: not a class of the project, not trained on')}[/]", str(n))
    for raw, n in report.unknown_choices.items():
        classes.add_row(f"[yellow]{escape(_unknown_choice(raw, report.project.get('classes', [])))}[/]", str(n))
    if report.labels.get("disputed"):
        classes.add_row("[yellow]disputed: annotators disagree, star a ground truth in Label Studio[/]",
                        str(report.labels["disputed"]))
    counts = ", ".join(f"{k} {v}" for k, v in report.labels.items())
    removed = f", {report.pool['removed']} removed" if report.pool.get("removed") else ""
    if report.pool.get("near_copies"):
        removed += f", {report.pool['near_copies']} set aside as near-copies of labeled items"
    pool = (f"pool: {report.pool['items']} items ({report.pool['embedded']} embedded{removed}); labels: {counts}\n"
            f"queue: {report.queue.get('waiting_items', 0)} items waiting in Label Studio; {_project_text(report)}")
    if report.queue.get("batches_parked"):
        pool += (f"\n[yellow]{report.queue['batches_parked']} batches parked[/]: Label Studio refused their tasks, "
                 "and their items went back to the pool (labelloop batches --status parked)")
    model = report.model
    model_text = (_no_model(report) if model is None else
                  f"model {model['version']} on {model['n_labels']} labels: macro-F1 {_fmt(model['macro_f1'])}, "
                  f"accuracy {_fmt(model['accuracy'])} ({model['quality_method']})")
    model_text += _control_text(report.control_slice)
    if model is not None and model["accuracy"] is not None and report.control_slice["n"]:
        # side by side the two read as a contradiction (CV 0.68 next to control 0.95, QA11)
        model_text += ("\n  (the control slice is the pool's unbiased estimate; cross-validation scores the "
                       "actively chosen labels, harder than the pool)")
    curve = report.control_slice.get("curve", [])
    if len(curve) > 1:
        model_text += "\n  by labels used: " + ", ".join(
            f"{p['n_labels']}→{p['accuracy']:.2f} (n={p['n_control']})" for p in curve[-6:])
    stopping = report.stopping
    kappas = [k for k in (p["kappa"] for p in stopping.get("kappa_history", [])) if k is not None]
    if kappas:
        model_text += f"\nagreement with the previous model (kappa): {', '.join(f'{k:.3f}' for k in kappas[-5:])}"
    if stopping.get("paused"):
        model_text += f"\n[yellow]queue PAUSED[/]: {escape(stopping['paused']['reason'])} (labelloop resume)"
    cycles = Table(title="last cycles")
    for name in ("cycle", "started (UTC)", "status", "reason", "batch", "seconds"):
        # the time whole: it read "12-06 21:50:…" at 80 columns (QA)
        cycles.add_column(name, min_width=14 if name == "started (UTC)" else None, overflow="fold")
    for c in report.cycles:
        started = c["started_at"][5:19].replace("T", " ")  # 12-06 10:00:00: whole in 80 columns
        seconds = f"{sum(c['stage_seconds'].values()):.2f}" if c["stage_seconds"] else "-"  # killed: not known
        cycles.add_row(str(c["id"]), Text(started, no_wrap=True), c["status"], escape(c["reason"]), c["batch_id"] or "",
                       seconds)
    daemon = report.daemon
    health = "daemon: never ran" if "state" not in daemon else _health(daemon)
    events = "\n".join(f"  {e['at'][:19]} {e['kind']}: {escape(e['message'])}" for e in daemon.get("recent_events", []))
    return [
        Panel(pool, title="pool"),
        Panel(classes, title="labels"),
        Panel(model_text, title="model"),
        Panel(Group(cycles), title="cycles"),
        Panel(health + ("\n" + events if events else ""), title="health"),
    ]


def _control_text(control: dict[str, Any]) -> str:
    """The control slice's accuracy: the latest models' first when older models' items are pooled in too."""
    if not control["n"]:
        return "\ncontrol slice: no labeled control items yet"
    recent = control.get("recent") or {}
    if not recent.get("n") or recent["n"] >= control["n"]:
        return f"\ncontrol slice: accuracy {_fmt(control['accuracy'])} on {control['n']} random items"
    return (f"\ncontrol slice: accuracy {_fmt(recent['accuracy'])} on the last {recent['n']} random items (models "
            f"trained on {recent['from_labels']}+ labels); {_fmt(control['accuracy'])} on all {control['n']}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _no_model(report: StatusReport) -> str:
    """Why there is no model: too few classes labeled, or no cycle has trained one yet."""
    if sum(1 for n in report.per_class.values() if n) < 2:
        return "no model yet (cold start: fewer than two classes labeled)"
    return ("no model yet: no cycle has run since the labels came (the daemon trains one at its next cycle; "
            "labelloop predict trains one now)")


def _health(daemon: dict[str, Any]) -> str:
    """``daemon pid N: <state>, last beat Ns ago, healthy`` (or why not)."""
    state, age = daemon["state"], daemon["last_beat_age_s"]
    if state == "stopped":  # a clean stop is not a fault: say when, not "NOT healthy"
        return f"daemon pid {daemon['pid']}: stopped cleanly {age}s ago, not running"
    if state == "gone":
        state = "gone (its process ended without stopping: killed?)"
    why = "healthy"
    if daemon["healthy"] and daemon.get("backoff_failures"):
        why = "healthy; its last run failed and is retried (see the events below)"
    if not daemon["healthy"]:
        failures = daemon.get("backoff_failures") or 0
        why = "NOT healthy"
        if state == "running":
            why = (f"NOT healthy: {failures} runs in a row failed (see the events below)" if failures
                   else "NOT healthy: no beat for that long (frozen, or its machine is unreachable?)")
    return f"daemon pid {daemon['pid']}: {state}, last beat {age}s ago, {why}"
