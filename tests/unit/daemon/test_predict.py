"""``labelloop predict``: the daemon's own model, one row per pool item, human labels kept apart from guesses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session, select

from connectors.fake import FakeConnector
from daemon.cli import app
from daemon.context import LoopContext
from daemon.cycle import run_cycle
from daemon.errors import ExportError
from daemon.pool import add_pool_file
from daemon.predict import export_predictions
from daemon.store import PoolItem
from daemon.sync import sync
from daemon.training import vectors_for
from tests.unit.daemon.test_cli import runner, workdir
from tests.unit.daemon.test_loop import CLASSES, annotate_batch, build_world

__all__ = ["workdir"]  # a fixture, used by name


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LoopContext, FakeConnector, dict[str, str]]:
    """A store after two rounds: a model trained on the first batch's labels."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path)
    first = run_cycle(ctx)
    annotate_batch(ctx, fake, gold, first.batch_id or "")
    run_cycle(ctx)
    return ctx, fake, gold


def test_every_item_gets_the_daemons_models_prediction(
    trained: tuple[LoopContext, FakeConnector, dict[str, str]], tmp_path: Path
) -> None:
    ctx, _fake, gold = trained
    assert ctx.model is not None
    report = export_predictions(ctx, tmp_path / "predictions.csv")
    rows = read_csv(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["id", "text", "predicted", "confidence", "margin", "label", "label_status", "channel"]
    assert [r["id"] for r in rows] == list(gold)  # every item, in pool order
    pool = {r["id"]: r["channel"] for r in read_csv(tmp_path / "pool.csv")}
    assert {r["id"]: r["channel"] for r in rows} == pool  # the items' metadata, as export writes it
    assert report.model_version == ctx.model.version and report.n_labels == ctx.model.n_labels == 10
    assert report.rows == len(gold) and report.not_embedded == 0 and sum(report.predicted.values()) == len(gold)

    with Session(ctx.engine) as session:
        hashes = {i.item_id: i.content_hash for i in session.exec(select(PoolItem))}
    proba = ctx.model.classifier.predict_proba(vectors_for(ctx, [hashes[r["id"]] for r in rows]))
    expected = np.asarray(ctx.model.classes)[proba.argmax(axis=1)]
    assert [r["predicted"] for r in rows] == list(expected)  # the same model the daemon trained
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], proba.max(axis=1), atol=1e-3)
    assert all(0 <= float(r["margin"]) <= float(r["confidence"]) for r in rows)

    labeled = [r for r in rows if r["label_status"] == "labeled"]
    assert len(labeled) == 10 and all(r["label"] == gold[r["id"]] for r in labeled)
    assert all(r["label"] == "" and r["label_status"] == "" for r in rows if r not in labeled)


def test_items_without_a_vector_are_written_without_a_guess(
    trained: tuple[LoopContext, FakeConnector, dict[str, str]], tmp_path: Path
) -> None:
    ctx, _fake, _gold = trained
    (tmp_path / "late.csv").write_text("id,text\nlate-1,a message that came in late\n")
    add_pool_file(ctx.engine, tmp_path / "late.csv", pool=ctx.settings.pool, data_dir=ctx.settings.store.data_dir)
    report = export_predictions(ctx, tmp_path / "predictions.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert rows[-1] == {"id": "late-1", "text": "a message that came in late", "predicted": None,
                        "confidence": None, "margin": None, "label": None, "label_status": None, "channel": None}
    assert report.not_embedded == 1 and report.rows == len(rows)


def test_refusals_leave_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path)
    first = run_cycle(ctx)
    annotate_batch(ctx, fake, {k: CLASSES[0] for k in gold}, first.batch_id or "")  # every answer one class
    sync(ctx)
    with pytest.raises(ExportError, match=r"at least two classes; its 10 labels with a vector are all 'billing'$"):
        export_predictions(ctx, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    (tmp_path / "p.csv").write_text("keep me")
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_predictions(ctx, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == "keep me"


def test_labels_waiting_for_their_vectors_are_said_not_called_no_labels(workdir: Path) -> None:
    """With 12 seed labels in a pool not embedded yet, predict said "it has no labels yet" (QA)."""
    rows = (json.dumps({"id": f"i{n}", "text": f"text {n}", "label": "ham" if n % 2 else "spam"}) for n in range(12))
    (workdir / "pool.jsonl").write_text("\n".join(rows) + "\n")
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    refused = runner.invoke(app, ["predict", "p.csv"])
    assert refused.exit_code == 1
    assert ("it has no labels with a vector yet, and 12 labeled items wait for theirs (labelloop embed"
            in " ".join(refused.output.split()))


def test_the_cli_predicts_without_a_token_on_a_pool_of_own_vectors(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    centres = {"ham": rng.normal(size=8), "spam": rng.normal(size=8)}
    lines = []
    for i in range(40):
        label = "ham" if i % 2 else "spam"
        row = {"id": f"v{i}", "embedding": (centres[label] + 0.1 * rng.normal(size=8)).round(4).tolist()}
        lines.append(json.dumps(row | ({"label": label} if i < 6 else {})))
    (workdir / "pool.jsonl").write_text("\n".join(lines) + "\n")
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    result = runner.invoke(app, ["predict", "out.parquet", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 40 and report["n_labels"] == 6 and report["predicted"] == {"ham": 20, "spam": 20}
    import pyarrow.parquet as pq

    read = pq.read_table(workdir / "out.parquet")
    assert str(read.schema.field("confidence").type) == "double" == str(read.schema.field("margin").type)  # QA
    table = read.to_pylist()
    assert all(r["predicted"] == ("ham" if int(r["id"][1:]) % 2 else "spam") for r in table)
    assert max(r["confidence"] for r in table) <= 1.0  # numbers, not text that sorts "1e-05" after "0.9"
    again = runner.invoke(app, ["predict", "out.parquet"])
    assert again.exit_code == 1 and "pass --force" in again.output


def test_predict_reports_progress_and_sums_up_many_classes_in_a_few_lines(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """45 s on 1M items passed in silence, and 77 class counts made one run-on sentence of ~30 lines (QA)."""
    monkeypatch.setattr("daemon.predict._CHUNK", 16)
    monkeypatch.setattr("daemon.cli_common.PLAIN_LINE_INTERVAL_S", 0.0)
    rng = np.random.default_rng(1)
    names = [f"class_{k:02d}" for k in range(14)]
    centres = {name: rng.normal(size=8) * 3 for name in names}
    lines = [json.dumps({"id": f"v{i}", "embedding": (centres[names[i % 14]] + 0.05 * rng.normal(size=8)).tolist(),
                         "label": names[i % 14]}) for i in range(70)]
    (workdir / "pool.jsonl").write_text("\n".join(lines) + "\n")
    assert runner.invoke(app, ["init", "--force", "--classes", ",".join(names)]).exit_code == 0
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    result = runner.invoke(app, ["predict", "out.csv"])
    assert result.exit_code == 0, result.output
    assert "16/70 pool items predicted" in result.output and "70/70 pool items predicted" in result.output
    summary = [line for line in result.output.splitlines() if line.startswith("predicted, most common first")]
    assert len(summary) == 1 and summary[0].endswith("and 4 more classes (the file has each item's)")



def test_predict_reads_the_caches_while_the_daemon_holds_their_writer_lock(
    trained: tuple[LoopContext, FakeConnector, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from daemon.app import predictions
    from models.cache import model_key
    from models.hashing import HashingEmbedder

    ctx, _fake, gold = trained
    for cache in ctx._caches.values():
        cache.close()  # hand the writer lock over to another process, as a running daemon holds it
    key = model_key(HashingEmbedder(dim=64))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom models.cache import EmbeddingCache\n"
         f"cache = EmbeddingCache(Path({str(ctx.data_dir / 'embeddings')!r}), model_key={key!r}, dim=64)\n"
         "print('held', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr("daemon.app.default_embedder_factory", lambda settings: lambda: HashingEmbedder(dim=64))
        report = predictions(ctx.settings, tmp_path / "predictions.csv")
    finally:
        holder.communicate("", timeout=30)
    assert report.rows == len(gold) and report.not_embedded == 0
    assert ctx.model is not None and report.model_version == ctx.model.version
