"""``labelloop pool remove``: removed items leave selection, training, export and Label Studio; pool add restores."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlmodel import Session, select

from connectors.fake import FakeConnector
from daemon.cli import app
from daemon.context import LoopContext
from daemon.cycle import cycle_due, run_cycle
from daemon.export import export_labels
from daemon.pool import add_pool_file
from daemon.predict import export_predictions
from daemon.queries import status_report
from daemon.removal import item_ids_of_source, remove_items
from daemon.store import (
    BatchItem,
    BatchItemState,
    LabelRecord,
    LabelStatus,
    PoolItem,
    get_value,
    ids_present,
    make_engine,
)
from daemon.sync import sync
from daemon.training import embed_pool, labeled_set
from tests.unit.daemon.test_cli import runner, workdir
from tests.unit.daemon.test_export import read_back
from tests.unit.daemon.test_loop import annotate_batch, batch_items, build_world

__all__ = ["workdir"]  # a fixture, used by name

World = tuple[LoopContext, FakeConnector, dict[str, str]]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.chdir(tmp_path)
    return build_world(tmp_path)


def item_states(ctx: LoopContext, item_ids: list[str]) -> dict[str, BatchItemState]:
    with Session(ctx.engine) as session:
        return {i.item_id: i.state for i in session.exec(select(BatchItem)) if i.item_id in item_ids}


def test_a_removed_item_is_never_selected_and_pool_add_brings_it_back(world: World, tmp_path: Path) -> None:
    ctx, fake, gold = world
    unlabeled = sorted(gold)[:60]
    report = remove_items(ctx.engine, [*unlabeled, "not-there"], reason="wrong file")
    assert (report.removed, report.not_in_pool, report.labeled, report.waiting) == (60, 1, 0, 0)
    assert remove_items(ctx.engine, unlabeled[:5]).already_removed == 5
    with Session(ctx.engine) as session:
        assert status_report(session).pool == {"items": 30, "embedded": 0, "removed": 60, "near_copies": 0}
    for _ in range(3):  # 30 items left: three batches of 10, and none of them removed
        batch = run_cycle(ctx)
        picked = [i.item_id for i in batch_items(ctx, batch.batch_id or "")]
        assert picked and not set(picked) & set(unlabeled)
        annotate_batch(ctx, fake, gold, batch.batch_id or "")
    assert run_cycle(ctx).batch_id is None  # the pool is exhausted: the removed items stay out

    back = add_pool_file(ctx.engine, tmp_path / "pool.csv", pool=ctx.settings.pool, data_dir=ctx.data_dir)
    assert (back.added, back.restored) == (0, 60)
    batch = run_cycle(ctx)
    assert set(i.item_id for i in batch_items(ctx, batch.batch_id or "")) <= set(unlabeled)


def test_a_removed_items_unknown_choice_leaves_status(world: World) -> None:
    """status counted 1 unknown label but listed 2 unknown choices, one of a removed item, with advice
    to add it to the labeling config (QA)."""
    ctx, fake, _ = world
    first, second = batch_items(ctx, run_cycle(ctx).batch_id or "")[:2]
    fake.annotate(first.item_id, "spam-of-the-week")
    fake.annotate(second.item_id, "refund")
    sync(ctx)
    remove_items(ctx.engine, [first.item_id])
    with Session(ctx.engine) as session:
        report = status_report(session)
    assert report.labels["unknown"] == 1 and report.unknown_choices == {"refund": 1}


def test_a_removed_label_is_not_trained_on_exported_or_predicted(world: World, tmp_path: Path) -> None:
    ctx, fake, gold = world
    first = run_cycle(ctx)
    annotate_batch(ctx, fake, gold, first.batch_id or "")
    sync(ctx)
    labeled = [i.item_id for i in batch_items(ctx, first.batch_id or "")]
    report = remove_items(ctx.engine, labeled[:3])
    assert (report.removed, report.labeled, report.waiting) == (3, 3, 0)
    with Session(ctx.engine) as session:
        assert set(labeled_set(session).item_ids) == set(labeled[3:])
        assert sum(status_report(session).per_class.values()) == 7
    export_labels(ctx.engine, tmp_path / "labels.csv", pool=ctx.settings.pool)
    assert {row["id"] for row in read_back(tmp_path / "labels.csv")} == set(labeled[3:])
    everything = export_labels(ctx.engine, tmp_path / "all.csv", pool=ctx.settings.pool, everything=True)
    assert everything.statuses == {"labeled": 7, "removed": 3}
    shown = {row["id"]: row for row in read_back(tmp_path / "all.csv") if row["label_status"] == "removed"}
    assert set(shown) == set(labeled[:3])
    assert all(row["label"] is None and row["answer"] == gold[item] for item, row in shown.items())
    predictions = export_predictions(ctx, tmp_path / "predictions.csv")
    rows = read_back(tmp_path / "predictions.csv")
    assert predictions.n_labels == 7 and len(rows) == len(gold) - 3
    assert not {row["id"] for row in rows} & set(labeled[:3])


def test_the_next_sync_withdraws_waiting_tasks_of_removed_items_but_not_answered_ones(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, fake, gold = world
    caplog.set_level(logging.INFO, logger="daemon.removal")
    items = [i.item_id for i in batch_items(ctx, run_cycle(ctx).batch_id or "")]
    answered, drafted, waiting = items[0], items[1], items[2:5]
    fake.annotate(answered, gold[answered])
    fake.add_draft(drafted)
    report = remove_items(ctx.engine, [answered, drafted, *waiting])
    assert report.waiting == 5
    sync(ctx)
    states = item_states(ctx, [answered, drafted, *waiting])
    assert [states[i] for i in waiting] == [BatchItemState.WITHDRAWN] * 3
    assert states[answered] is BatchItemState.LABELED and states[drafted] is BatchItemState.PENDING
    assert fake.calls.count("withdraw") == 1
    tasks = {t.remote_task_id for t in fake.list_tasks()}
    assert fake.remote_task_id(drafted) in tasks and fake.remote_task_id(answered) in tasks
    sync(ctx)  # the drafted task is asked about again, nothing else
    sync(ctx)
    assert fake.calls.count("withdraw") == 3
    assert caplog.text.count("1 task of removed pool items stays in Label Studio") == 1  # QA: on every sync
    with Session(ctx.engine) as session:
        assert answered not in labeled_set(session).item_ids  # its answer is kept, not trained on


def test_the_cli_removes_by_file_source_or_id(workdir: Path) -> None:
    (workdir / "good.jsonl").write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "win"}\n')
    (workdir / "wrong.jsonl").write_text('{"text": "oops one"}\n{"text": "oops two"}\n')  # ids from the text
    for name in ("good.jsonl", "wrong.jsonl"):
        assert runner.invoke(app, ["pool", "add", name]).exit_code == 0
    by_file = runner.invoke(app, ["pool", "remove", "wrong.jsonl", "--json"])
    assert by_file.exit_code == 0, by_file.output
    assert json.loads(by_file.stdout) == {"removed": 2, "already_removed": 0, "not_in_pool": 0, "labeled": 0,
                                          "waiting": 0, "not_in_pool_first": []}
    by_source = runner.invoke(app, ["pool", "remove", "--source", "wrong.jsonl", "--json"])
    assert json.loads(by_source.stdout)["already_removed"] == 2
    mistyped = runner.invoke(app, ["pool", "remove", "--id", "b", "--id", "zzz"])  # exit 0, nothing said (QA)
    assert mistyped.exit_code == 2
    assert "not in the pool: 'zzz'; nothing was removed" in " ".join(mistyped.output.split())
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["pool"]["removed"] == 2  # b is still in
    by_id = runner.invoke(app, ["pool", "remove", "--id", "b"])
    assert by_id.exit_code == 0 and "1 item removed (" in " ".join(by_id.output.split())
    again = runner.invoke(app, ["pool", "remove", "--id", "b"])  # a removed item is known: not refused
    assert again.exit_code == 0 and "1 was already removed, 0 are not in the pool" in " ".join(again.output.split())
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["pool"] == {"items": 1, "embedded": 0, "removed": 3, "near_copies": 0}
    assert "3 removed" in runner.invoke(app, ["status"]).output
    both = runner.invoke(app, ["pool", "remove", "good.jsonl", "--id", "a"])
    assert both.exit_code == 2 and "one way" in both.output
    again = runner.invoke(app, ["pool", "add", "wrong.jsonl"])
    assert "2 of them removed before, now back" in " ".join(again.output.split())


def test_ids_of_a_source_come_in_pool_order(world: World) -> None:
    ctx, _fake, gold = world
    assert list(item_ids_of_source(ctx.engine, "pool.csv")) == list(gold)
    assert list(item_ids_of_source(ctx.engine, "other.csv")) == []


def test_removed_items_are_not_embedded(world: World) -> None:
    ctx, _fake, gold = world
    removed = sorted(gold)[:30]
    remove_items(ctx.engine, removed)
    assert embed_pool(ctx) == len(gold) - 30  # a removed import costs no encoding
    assert embed_pool(ctx) == 0
    with Session(ctx.engine) as session:
        assert status_report(session).pool == {"items": 60, "embedded": 60, "removed": 30, "near_copies": 0}
        assert not any(i.is_embedded for i in session.exec(select(PoolItem)) if i.item_id in removed)


def test_removing_labeled_items_makes_the_next_cycle_retrain_without_them(world: World) -> None:
    ctx, fake, gold = world
    first = run_cycle(ctx)
    annotate_batch(ctx, fake, gold, first.batch_id or "")
    run_cycle(ctx)  # trains on the 10 labels
    assert ctx.model is not None and ctx.model.n_labels == 10
    assert cycle_due(ctx) == ""  # the queue is full, nothing new
    remove_items(ctx.engine, [i.item_id for i in batch_items(ctx, first.batch_id or "")][:2])
    assert cycle_due(ctx) == "2 labels removed"
    run_cycle(ctx)
    assert ctx.model.n_labels == 8 and cycle_due(ctx) == ""


def test_control_items_removed_since_leave_the_accuracy_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, control_fraction=0.2)
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = run_cycle(ctx).batch_id or ""
    annotate_batch(ctx, fake, gold, second)
    sync(ctx)
    control = [i.item_id for i in batch_items(ctx, second) if i.is_control]
    with Session(ctx.engine) as session:
        assert status_report(session).control_slice["n"] == len(control) == 2
    remove_items(ctx.engine, control[:1])
    with Session(ctx.engine) as session:
        report = status_report(session).control_slice
    assert report["n"] == 1 and report["curve"][0]["n_control"] == 1


def test_removed_items_leave_the_stopping_rule_sample(world: World) -> None:
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = run_cycle(ctx).batch_id or ""  # the first model: the sample is drawn and predicted
    with Session(ctx.engine) as session:
        sampled = sorted(json.loads(get_value(session, "stability_predictions") or "[]")[-1]["predictions"])
    assert len(sampled) > 5
    remove_items(ctx.engine, sampled[:5])
    annotate_batch(ctx, fake, gold, second)
    run_cycle(ctx)  # a new model: it is compared with the first on the sample again
    with Session(ctx.engine) as session:
        compared = json.loads(get_value(session, "stability_predictions") or "[]")[-1]["predictions"]
    assert compared and not set(compared) & set(sampled[:5])


@pytest.mark.parametrize("share", [0.0, 1e9], ids=["scan", "lookup"])
def test_ids_present_by_lookup_or_by_one_scan_agree(
    world: World, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    sync(ctx)
    monkeypatch.setattr("daemon.store._IN_CHUNK", 4)  # more ids than a lookup takes at once: either way applies
    monkeypatch.setattr("daemon.store._SCAN_SHARE", share)
    asked = [*sorted(gold)[::3], "not-there", "also-not"]
    with Session(ctx.engine) as session:
        skipped = next(i for i in asked[:-2] if session.get(LabelRecord, i) is None)
        session.add(LabelRecord(item_id=skipped, status=LabelStatus.SKIPPED))  # present, but not labeled
        session.commit()
        labeled = {r.item_id for r in session.exec(select(LabelRecord)) if r.status == LabelStatus.LABELED}
        assert len(labeled) == 10
        assert ids_present(session, PoolItem.item_id, asked) == set(sorted(gold)[::3])
        got = ids_present(session, LabelRecord.item_id, asked, LabelRecord.status == LabelStatus.LABELED)
        assert got == labeled & set(asked)


def test_the_cli_removes_several_files_or_sources_at_once_and_a_bad_file_removes_nothing(workdir: Path) -> None:
    for name, ids in (("a.jsonl", "xy"), ("b.jsonl", "z"), ("c.jsonl", "w")):
        (workdir / name).write_text("".join(f'{{"id": "{i}", "text": "text {i}"}}\n' for i in ids))
        assert runner.invoke(app, ["pool", "add", name]).exit_code == 0
    (workdir / "bad.csv").write_text("id,text\nw,fine\nv\n")
    refused = runner.invoke(app, ["pool", "remove", "c.jsonl", "bad.csv"])
    assert refused.exit_code == 1 and "line 3" in refused.output and "nothing removed" in refused.output
    by_files = runner.invoke(app, ["pool", "remove", "a.jsonl", "b.jsonl", "a.jsonl", "--json"])
    assert json.loads(by_files.stdout)["removed"] == 3
    by_sources = runner.invoke(app, ["pool", "remove", "--source", "b.jsonl", "--source", "c.jsonl", "--json"])
    assert (json.loads(by_sources.stdout)["removed"], json.loads(by_sources.stdout)["already_removed"]) == (1, 1)


def test_remove_by_source_takes_a_path_as_its_file_name_and_refuses_a_name_nothing_came_from(workdir: Path) -> None:
    (workdir / "shards").mkdir()
    (workdir / "shards" / "a.jsonl").write_text('{"id": "x", "text": "text x"}\n')
    assert runner.invoke(app, ["pool", "add", "shards/a.jsonl"]).exit_code == 0
    unknown = runner.invoke(app, ["pool", "remove", "--source", "nonexist.csv"])
    assert unknown.exit_code == 2
    assert "no pool items were imported from a file named 'nonexist.csv'; nothing removed (sources: a.jsonl)" in (
        " ".join(unknown.output.split()))
    by_path = runner.invoke(app, ["pool", "remove", "--source", "shards/a.jsonl", "--json"])
    assert json.loads(by_path.stdout)["removed"] == 1



def test_removing_a_file_streams_its_ids_instead_of_holding_them(tmp_path: Path) -> None:
    """Python's peak memory for a file 4× larger stays about the same (0.5 GB at a million ids before)."""
    import tracemalloc

    from daemon.pool_files import iter_pool_ids
    from daemon.settings import PoolSettings

    peaks = []
    for n, name in ((5_000, "small"), (20_000, "large")):
        engine = make_engine(f"sqlite:///{tmp_path / name / 'db.sqlite'}")
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}-{i}", "text": f"item {i} " * 4}) + "\n" for i in range(n)))
        add_pool_file(engine, path, pool=PoolSettings(), data_dir=tmp_path / name)
        tracemalloc.start()
        report = remove_items(engine, iter_pool_ids(path))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.removed == n
        engine.dispose()
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_a_removal_counts_repeats_once_and_reports_what_it_did(world: World) -> None:
    ctx, _fake, gold = world
    ids = list(gold)
    first = remove_items(ctx.engine, iter([ids[0], ids[1], ids[0], "not-there"]), reason="dup")
    assert (first.removed, first.already_removed, first.not_in_pool) == (2, 0, 1)
    again = remove_items(ctx.engine, [ids[1], ids[2], ids[2]])
    assert (again.removed, again.already_removed, again.not_in_pool) == (1, 1, 0)


def test_items_brought_back_lift_the_rules_pause_and_say_so(workdir: Path) -> None:
    """The pause's end read '1 new pool items' for an item a re-imported file brought back (QA)."""
    from daemon.pause import PAUSE_KEY
    from daemon.store import HealthEvent, make_engine, set_value

    (workdir / "good.jsonl").write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "win"}\n')
    assert runner.invoke(app, ["pool", "add", "good.jsonl"]).exit_code == 0
    assert runner.invoke(app, ["pool", "remove", "--id", "b"]).exit_code == 0
    engine = make_engine(f"sqlite:///{workdir / '.labelloop' / 'labelloop.db'}")
    with Session(engine) as session:
        set_value(session, PAUSE_KEY, json.dumps({"reason": "successive models agree", "n_labels": 600}))
        session.commit()
    assert runner.invoke(app, ["pool", "add", "good.jsonl"]).exit_code == 0
    with Session(engine) as session:
        events = [e.message for e in session.exec(select(HealthEvent).where(HealthEvent.kind == "resumed"))]
    engine.dispose()
    assert events == ["1 removed pool item brought back"]
