"""Held-out evaluation and the printed table for the demo (deploy/demo.py)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import f1_score

from models.classifier import ProxyClassifier
from models.embedder import TransformerEmbedder


class HeldOut:
    """Embeds the held-out set once; per round trains the same head on the store's labels."""

    def __init__(self, held_out: dict[str, tuple[str, str]]) -> None:
        self.embedder = TransformerEmbedder()
        texts = [text for text, _ in held_out.values()]
        self.x_test = self.embedder.encode(texts)
        self.y_test = np.asarray([label for _, label in held_out.values()], dtype=object)

    def round_row(self, number: int, state_db: Path, batch_labels: list[str]) -> dict[str, Any]:
        texts, labels = _labeled(state_db)
        macro_f1 = 0.0
        if len(set(labels)) >= 2:
            model = ProxyClassifier(random_state=0).fit(self.embedder.encode(texts), np.asarray(labels, dtype=object))
            predicted = model.predict(self.x_test)
            macro_f1 = float(f1_score(self.y_test, predicted, average="macro", zero_division=0))
        mix = Counter(batch_labels)
        return {
            "round": number,
            "labels": len(labels),
            "classes_seen": len(set(labels)),
            "macro_f1": macro_f1,
            "mix": ", ".join(f"{label} {n}" for label, n in mix.most_common()),
        }


def _labeled(state_db: Path) -> tuple[list[str], list[str]]:
    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
        rows = db.execute(
            "select p.text, l.label from labelrecord l join poolitem p on p.item_id = l.item_id "
            "where l.status = 'LABELED' or l.status = 'labeled'"
        ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def render_rounds(rounds: list[dict[str, Any]], state_db: Path) -> None:
    console = Console(width=160)
    table = Table(title="labelloop demo: one row per annotated batch")
    for column in ("round", "labels", "classes seen", "held-out macro-F1", "batch class mix"):
        table.add_column(column)
    for row in rounds:
        table.add_row(str(row["round"]), str(row["labels"]), str(row["classes_seen"]), f"{row['macro_f1']:.3f}",
                      row["mix"])
    console.print(table)
    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
        cycles = db.execute(
            "select id, reason, stage_seconds_json from cyclerun where status = 'ok' and batch_id is not null "
            "order by id desc limit 1"
        ).fetchall()
    for cycle_id, reason, stages in cycles:
        timing = ", ".join(f"{k} {v:.2f}s" for k, v in json.loads(stages).items())
        console.print(f"time per stage of the last cycle that pushed a batch (cycle {cycle_id}, {reason}): {timing}")
