"""``labelloop export``: the labels out of the store, every format alike, and back in as a pool file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from daemon.cli import app
from daemon.context import LoopContext
from daemon.cycle import run_cycle
from daemon.errors import ExportError
from daemon.export import export_labels
from daemon.pool import add_pool_file
from daemon.settings import PoolSettings
from daemon.store import LabelEvent, LabelRecord, LabelStatus, make_engine
from daemon.sync import sync
from tests.unit.daemon.conftest import set_classes
from tests.unit.daemon.test_loop import batch_items, build_world


def read_back(path: Path) -> list[dict[str, Any]]:
    """Rows as strings, None for an empty cell, whatever the format."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [{k: v or None for k, v in row.items()} for row in csv.DictReader(handle)]
    if path.suffix == ".jsonl":
        return [{k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in json.loads(line).items()}
                for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


@pytest.fixture
def labeled_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LoopContext, dict[str, str]]:
    """A store with a label, a skip, an unknown choice and a label of a class the project later lost."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path)
    a, b, c, d = (i.item_id for i in batch_items(ctx, run_cycle(ctx).batch_id or "")[:4])
    fake.annotate(a, gold[a], annotator="ann@example.com")
    fake.skip(b)
    fake.annotate(c, "not-a-class")
    fake.annotate(d, "fraud")
    sync(ctx)
    return ctx, {"labeled": a, "skipped": b, "unknown": c, "fraud": d}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_format_holds_the_same_rows(labeled_world: tuple[LoopContext, dict[str, str]], tmp_path: Path,
                                          suffix: str) -> None:
    ctx, items = labeled_world
    labels = export_labels(ctx.engine, tmp_path / f"labels{suffix}", pool=ctx.settings.pool)
    assert labels.statuses == {"labeled": 2} and labels.rows == 2  # the label and the fraud label
    rows = {row["id"]: row for row in read_back(tmp_path / f"labels{suffix}")}
    assert set(rows) == {items["labeled"], items["fraud"]}
    row = rows[items["labeled"]]
    with Session(ctx.engine) as session:
        record = session.get(LabelRecord, items["labeled"])
    assert record is not None
    assert (row["label"], row["label_status"], row["label_source"], row["annotator"], row["answer"]) == (
        record.label, "labeled", "label_studio", "ann@example.com", None)
    assert row["remote_task_id"] == record.remote_task_id and row["channel"] in {"email", "chat"}
    assert row["text"] and row["labeled_at"].endswith("+00:00")

    everything = export_labels(ctx.engine, tmp_path / f"all{suffix}", pool=ctx.settings.pool, everything=True)
    assert everything.statuses == {"labeled": 2, "skipped": 1, "unknown": 1}
    rows = {row["id"]: row for row in read_back(tmp_path / f"all{suffix}")}
    assert (rows[items["unknown"]]["label"], rows[items["unknown"]]["answer"]) == (None, "not-a-class")
    assert rows[items["skipped"]]["label_status"] == "skipped" and rows[items["skipped"]]["label"] is None


def test_a_label_of_a_class_the_project_lacks_is_left_out_or_marked(
    labeled_world: tuple[LoopContext, dict[str, str]], tmp_path: Path
) -> None:
    ctx, items = labeled_world
    set_classes(ctx.engine, ["billing", "delivery"])  # "fraud" left the labeling config
    default = export_labels(ctx.engine, tmp_path / "labels.csv", pool=ctx.settings.pool)
    assert [row["id"] for row in read_back(tmp_path / "labels.csv")] == [items["labeled"]]
    assert default.statuses == {"labeled": 1}
    export_labels(ctx.engine, tmp_path / "all.csv", pool=ctx.settings.pool, everything=True)
    row = {r["id"]: r for r in read_back(tmp_path / "all.csv")}[items["fraud"]]
    assert (row["label"], row["label_status"], row["answer"]) == (None, "not_a_class", "fraud")


def test_an_export_is_a_pool_file_whose_labels_are_seeds(tmp_path: Path) -> None:
    pool = PoolSettings(id_field="uid", text_field="body", label_field="y")
    texts = {"u1": 'a "quoted", comma\nand a second line', "u2": "plain", "u3": "no label"}
    with (tmp_path / "in.jsonl").open("w") as handle:
        for uid, body in texts.items():
            seed = {"u1": "ham", "u2": "spam"}.get(uid)
            handle.write(json.dumps({"uid": uid, "body": body, "y": seed, "label_status": "mine", "n": 3}) + "\n")
    first = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    add_pool_file(first, tmp_path / "in.jsonl", pool=pool, data_dir=tmp_path / "a")
    export_labels(first, tmp_path / "out.csv", pool=pool)
    header = (tmp_path / "out.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["uid", "body", "y"] and "meta_label_status" in header and "n" in header

    second = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    report = add_pool_file(second, tmp_path / "out.csv", pool=pool, data_dir=tmp_path / "b")
    assert (report.added, report.labels_added) == (2, 2)
    with Session(second) as session:
        seeds = {r.item_id: (r.status, r.label, r.source) for r in session.exec(select(LabelRecord))}
    assert seeds == {"u1": (LabelStatus.LABELED, "ham", "seed"), "u2": (LabelStatus.LABELED, "spam", "seed")}
    with Session(second) as session:
        history = {(e.item_id, e.status, e.label, e.source) for e in session.exec(select(LabelEvent))}
    assert history == {("u1", LabelStatus.LABELED, "ham", "seed"), ("u2", LabelStatus.LABELED, "spam", "seed")}
    export_labels(second, tmp_path / "again.csv", pool=pool)
    again = {row["uid"]: row["body"] for row in read_back(tmp_path / "again.csv")}
    assert again == {"u1": texts["u1"], "u2": texts["u2"]}  # quotes, commas and newlines survive
    second_header = (tmp_path / "again.csv").read_text().splitlines()[0].split(",")
    assert second_header == header  # the status columns read back are not metadata: no meta_meta_… pile-up


def test_a_metadata_column_named_like_a_prefixed_one_loses_nothing(tmp_path: Path) -> None:
    """QA: ``answer`` became ``meta_answer`` beside an item's own ``meta_answer``: two columns alike in the CSV,
    one value gone from the JSONL, and a Parquet file pyarrow could not read."""
    pool = PoolSettings()
    (tmp_path / "in.csv").write_text("id,text,label,answer,meta_answer,predicted\nr1,hello,a,A1,M1,P1\n"
                                     "r2,bye,b,A2,M2,P2\n")
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    add_pool_file(engine, tmp_path / "in.csv", pool=pool, data_dir=tmp_path / "a")
    for name in ("out.csv", "out.jsonl", "out.parquet"):
        export_labels(engine, tmp_path / name, pool=pool)
        rows = {row["id"]: row for row in read_back(tmp_path / name)}
        assert (rows["r1"]["meta_meta_answer"], rows["r1"]["meta_answer"], rows["r1"]["predicted"]) == (
            "A1", "M1", "P1"), name
    header = (tmp_path / "out.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))


def test_parquet_columns_keep_the_metadata_types_and_own_vectors_are_lists(tmp_path: Path) -> None:
    """QA: every Parquet column was text: numbers, booleans, and vectors as JSON."""
    import pyarrow.parquet as pq

    rows = [{"id": "a", "text": "x", "label": "ham", "n": 3, "f": True, "s": "t", "mixed": 1, "none": None},
            {"id": "b", "text": "y", "label": "spam", "n": 4.5, "f": False, "s": "u", "mixed": "one", "none": None}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    add_pool_file(engine, tmp_path / "in.jsonl", pool=PoolSettings(), data_dir=tmp_path / "a")
    export_labels(engine, tmp_path / "out.parquet", pool=PoolSettings())
    table = pq.read_table(tmp_path / "out.parquet")
    types = {name: str(table.schema.field(name).type) for name in ("n", "f", "s", "mixed", "none", "label_status")}
    assert types == {"n": "double", "f": "bool", "s": "string", "mixed": "string", "none": "string",
                     "label_status": "string"}
    got = {row["id"]: row for row in table.to_pylist()}
    assert (got["a"]["n"], got["b"]["n"], got["a"]["f"], got["b"]["mixed"]) == (3.0, 4.5, True, "one")
    assert got["a"]["mixed"] == "1"  # a column of ints and text is text


def test_jsonl_export_writes_null_for_nan_and_infinity(tmp_path: Path) -> None:
    """Python's json wrote NaN, which JSON.parse (and strict readers) refuse."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b"], "text": ["x", "y"], "label": ["ham", "spam"], "score": [float("nan"), 1.5]})
    pq.write_table(table, tmp_path / "in.parquet")
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    add_pool_file(engine, tmp_path / "in.parquet", pool=PoolSettings(), data_dir=tmp_path / "a")
    export_labels(engine, tmp_path / "out.jsonl", pool=PoolSettings())

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    rows = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["score"] for row in rows] == [None, 1.5]


def test_refusals_leave_no_file(labeled_world: tuple[LoopContext, dict[str, str]], tmp_path: Path) -> None:
    ctx, _ = labeled_world
    with pytest.raises(ExportError, match=r"unknown file type '\.xlsx'"):
        export_labels(ctx.engine, tmp_path / "labels.xlsx", pool=ctx.settings.pool)
    (tmp_path / "labels.csv").write_text("mine\n")
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_labels(ctx.engine, tmp_path / "labels.csv", pool=ctx.settings.pool)
    assert (tmp_path / "labels.csv").read_text() == "mine\n"
    (tmp_path / "taken.csv").mkdir()  # the rename onto a directory fails after the rows were written
    with pytest.raises(ExportError, match="cannot write"):
        export_labels(ctx.engine, tmp_path / "taken.csv", pool=ctx.settings.pool, overwrite=True)
    assert not list(tmp_path.glob(".*.partial")) and not list(tmp_path.glob("taken.csv/*"))


def test_the_cli_writes_and_reports(labeled_world: tuple[LoopContext, dict[str, str]], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = labeled_world
    monkeypatch.setenv("LABELLOOP_STORE__URL", ctx.settings.store.url)
    runner = CliRunner()
    first = runner.invoke(app, ["export", "labels.jsonl", "--all"])
    assert first.exit_code == 0, first.output
    assert "wrote labels.jsonl: 4 items (labeled 2, skipped 1, unknown 1)" in " ".join(first.output.split())
    again = runner.invoke(app, ["export", "labels.jsonl"])
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(app, ["export", "labels.jsonl", "--force", "--json"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["rows"] == 2


def test_an_empty_store_exports_a_header(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    for suffix in (".csv", ".parquet"):
        report = export_labels(engine, tmp_path / f"none{suffix}", pool=PoolSettings())
        assert report.rows == 0 and read_back(tmp_path / f"none{suffix}") == []
    assert (tmp_path / "none.csv").read_text().startswith("id,text,label,label_status")



@pytest.mark.parametrize("value", [0.1, 1e-7, 0.9996, 2.5e20, float("nan"), float("inf"), 3, True, {"a": [1.5]}])
def test_a_cell_holds_what_json_would_write(value: Any) -> None:
    from daemon.export import _flat

    assert _flat(value) == json.dumps(value)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_pool_of_own_vectors_exports_them_and_adds_to_another_store_as_it_came(
    tmp_path: Path, suffix: str
) -> None:
    """The vectors were left out, so the export added to a fresh store as a text pool (the encoder's
    vectors), and to a store of own vectors not at all."""
    from daemon.pool_staging import byo_hash
    from models.cache import EmbeddingCache

    rows = [{"id": "a", "text": "x", "label": "ham", "embedding": [3.0, 4.0]},
            {"id": "b", "text": "y", "label": "spam", "embedding": [0.0, 2.0]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    first = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    add_pool_file(first, tmp_path / "in.jsonl", pool=PoolSettings(), data_dir=tmp_path / "a")
    out = tmp_path / f"out{suffix}"
    export_labels(first, out, pool=PoolSettings(), data_dir=tmp_path / "a")
    exported = [json.loads(v) if isinstance(v := row["embedding"], str) else v for row in read_back(out)]
    assert exported == [pytest.approx([0.6, 0.8], abs=1e-3), [0.0, 1.0]]  # unit length, kept as float16

    second = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    report = add_pool_file(second, out, pool=PoolSettings(), data_dir=tmp_path / "b")
    assert (report.added, report.labels_added, report.embedding_dim) == (2, 2, 2)
    with EmbeddingCache(tmp_path / "b" / "embeddings", model_key="byo-d2", dim=2, readonly=True) as cache:
        vectors = cache.get(cache.lookup([byo_hash("a"), byo_hash("b")]))
    assert vectors.ravel().tolist() == pytest.approx([0.6, 0.8, 0.0, 1.0], abs=1e-3)
