"""The loop's stages end to end on a FakeConnector, a HashingEmbedder and a real SQLite file."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, col, select

from connectors.base import OutgoingTask, Refreshed
from connectors.errors import ConnectorAuthError, ConnectorRejected, ConnectorUnavailable
from connectors.fake import FakeConnector
from daemon.context import LoopContext
from daemon.cycle import cycle_due, run_cycle
from daemon.pool import add_pool_file
from daemon.project import ensure_project, refresh_classes
from daemon.queries import batch_detail, list_batches, status_report, waiting_count
from daemon.rerank import RerankReport
from daemon.settings import Settings, load_settings
from daemon.store import (
    NO_CHOICE,
    Batch,
    BatchItem,
    BatchItemState,
    BatchStatus,
    CycleRun,
    HealthEvent,
    LabelEvent,
    LabelRecord,
    LabelStatus,
    ModelRun,
    PoolItem,
    get_value,
    make_engine,
)
from daemon.sync import sync
from daemon.training import QUALITY_PENDING, embed_pool, estimate_pending_quality, retrain, to_embed
from models.hashing import HashingEmbedder

CLASSES = ["billing", "delivery", "fraud"]
WORDS = {
    "billing": ["invoice", "charged", "refund", "payment", "bill", "price"],
    "delivery": ["parcel", "courier", "shipping", "arrived", "tracking", "late"],
    "fraud": ["stolen", "scam", "unauthorised", "hacked"],
}


def make_pool(path: Path, n: int = 90, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    gold = {}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "channel"])
        for i in range(n):
            label = "fraud" if i % 15 == 0 else ("billing" if i % 2 else "delivery")
            words = [*rng.sample(WORDS[label], 3), rng.choice(["please", "help", "today", "again"])]
            item_id = f"it-{i:03d}"
            writer.writerow([item_id, " ".join(words) + f" {i}", rng.choice(["email", "chat"])])
            gold[item_id] = label
    return gold


def make_settings(tmp_path: Path, **loop: object) -> Settings:
    loop_settings = {"batch_size": 10, "classes": CLASSES, "control_fraction": 0.0, "min_new_labels": 1, **loop}
    return load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/state/db.sqlite", "data_dir": str(tmp_path / "state")},
        label_studio={"max_waiting_tasks": 20},
        loop=loop_settings,
        model={"epochs": 60, "cv_folds": 3},
    )


def build_world(tmp_path: Path, **loop: object) -> tuple[LoopContext, FakeConnector, dict[str, str]]:
    """A store with the synthetic pool imported and a project bound, on a fake Label Studio."""
    settings = make_settings(tmp_path, **loop)
    gold = make_pool(tmp_path / "pool.csv")
    fake = FakeConnector()
    ctx = LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=fake,
                      embedder_factory=lambda: HashingEmbedder(dim=64))
    add_pool_file(ctx.engine, tmp_path / "pool.csv", pool=settings.pool, data_dir=settings.store.data_dir)
    ensure_project(ctx)
    return ctx, fake, gold


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LoopContext, FakeConnector, dict[str, str]]:
    monkeypatch.chdir(tmp_path)
    return build_world(tmp_path)


def batch_items(ctx: LoopContext, batch_id: str) -> list[BatchItem]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(BatchItem).where(BatchItem.batch_id == batch_id)))


def annotate_batch(ctx: LoopContext, fake: FakeConnector, gold: dict[str, str], batch_id: str) -> None:
    for item in batch_items(ctx, batch_id):
        fake.annotate(item.item_id, gold[item.item_id])


def test_full_round_cold_start_then_model(world: tuple[LoopContext, FakeConnector, dict[str, str]]) -> None:
    ctx, fake, gold = world
    first = run_cycle(ctx)
    assert first.batch_id is not None and first.pushed == 10
    assert first.model_version is None  # cold start: no labels yet
    with Session(ctx.engine) as session:
        assert session.get(Batch, first.batch_id).strategy == "cold_start"  # type: ignore[union-attr]
    annotate_batch(ctx, fake, gold, first.batch_id)
    second = run_cycle(ctx)
    assert second.model_version is not None
    first_ids = {i.item_id for i in batch_items(ctx, first.batch_id)}
    second_items = batch_items(ctx, second.batch_id or "")
    assert first_ids.isdisjoint({i.item_id for i in second_items})
    assert all(i.predicted_label in CLASSES for i in second_items)  # pre-annotations carry the model
    with Session(ctx.engine) as session:
        assert session.get(Batch, first.batch_id).status is BatchStatus.CLOSED  # type: ignore[union-attr]
        report = status_report(session)
        detail = batch_detail(session, second.batch_id or "")
    assert sum(report.per_class.values()) == 10
    assert report.model is not None and report.model["n_labels"] == 10
    assert detail is not None and detail.items[0].text
    assert set(second.stage_seconds) >= {"sync", "embed", "train", "select", "push"}


def test_push_interrupted_midway_is_finished_without_duplicates(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    ctx, fake, _ = world
    fake.crash_push_after(4)
    with pytest.raises(ConnectorUnavailable):
        run_cycle(ctx)
    with Session(ctx.engine) as session:
        batch = session.exec(select(Batch)).one()
        assert batch.status is BatchStatus.SELECTED
        failed = session.exec(select(CycleRun)).one()
        assert failed.status == "failed"
    assert cycle_due(ctx) == "a selected batch is waiting to be pushed"
    report = run_cycle(ctx)  # a restart: the leftover batch is pushed first
    assert report.batch_id is None or report.batch_id != batch.id
    assert report.pushed == 10 and report.reason.startswith("pushed 10 tasks of an earlier batch; retrained")
    assert len(fake.list_tasks()) == 10
    remote_ids = [i.remote_task_id for i in batch_items(ctx, batch.id)]
    assert len(set(remote_ids)) == 10 and None not in remote_ids


def test_queue_cap_stops_new_batches(world: tuple[LoopContext, FakeConnector, dict[str, str]]) -> None:
    ctx, _, _ = world
    run_cycle(ctx)
    second = run_cycle(ctx)  # 10 waiting > low water (5): no new batch
    assert second.batch_id is None
    with Session(ctx.engine) as session:
        assert len(list_batches(session)) == 1


def test_edit_delete_skip_and_unknown_choice_reach_the_store(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    ctx, fake, _ = world
    batch_id = run_cycle(ctx).batch_id or ""
    a, b, c, d = (i.item_id for i in batch_items(ctx, batch_id)[:4])
    fake.annotate(a, "billing")
    fake.annotate(b, "delivery")
    fake.skip(c)
    fake.annotate(d, "not-a-class")
    run_cycle(ctx)
    fake.update_annotation(a, "fraud")
    fake.delete_annotation(b)
    run_cycle(ctx)
    with Session(ctx.engine) as session:
        labels = {r.item_id: (r.status, r.label) for r in session.exec(select(LabelRecord))}
        report = status_report(session)
    assert labels[a] == (LabelStatus.LABELED, "fraud")
    assert labels[b] == (LabelStatus.RETRACTED, None)
    assert labels[c] == (LabelStatus.SKIPPED, None)
    assert labels[d] == (LabelStatus.UNKNOWN, "not-a-class")
    assert report.unknown_choices == {"not-a-class": 1}
    with Session(ctx.engine) as session:  # the batch counts the unknown choice apart from the labels
        detail = batch_detail(session, batch_id)
    assert detail is not None
    assert {row.item_id: row.state for row in detail.items}[d] == "unknown"
    assert (detail.batch.labeled, detail.batch.unsettled, detail.batch.skipped) == (1, 1, 1)


def test_outage_is_recorded_and_nothing_is_lost(world: tuple[LoopContext, FakeConnector, dict[str, str]]) -> None:
    ctx, fake, gold = world
    batch_id = run_cycle(ctx).batch_id or ""
    annotate_batch(ctx, fake, gold, batch_id)
    fake.is_down = True
    with pytest.raises(ConnectorUnavailable):
        run_cycle(ctx)
    fake.is_down = False
    run_cycle(ctx)
    with Session(ctx.engine) as session:
        assert len(session.exec(select(LabelRecord)).all()) == 10


def test_rejected_push_parks_the_batch(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, fake, _ = world

    def refuse(tasks: object) -> None:
        raise ConnectorRejected("HTTP 400: schema mismatch")

    monkeypatch.setattr(fake, "push", refuse)
    with pytest.raises(ConnectorRejected):  # the daemon backs off; `labelloop cycle` exits 2
        run_cycle(ctx)
    with Session(ctx.engine) as session:
        batch = session.exec(select(Batch)).one()
        run = session.exec(select(CycleRun)).one()
    assert batch.status is BatchStatus.PARKED
    assert "schema mismatch" in batch.note and "10 of 10 items not pushed, back in the pool" in batch.note
    assert run.status == "failed" and "schema mismatch" in run.reason  # it said "ok"
    assert {i.state for i in batch_items(ctx, batch.id)} == {BatchItemState.WITHDRAWN}


def test_a_parked_batch_gives_its_items_back_and_the_next_cycle_offers_them_again(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing ever un-parked a batch, yet its items stayed blocked, and each next cycle parked the
    next best ones: 110 of 280 candidates were gone before the admin fixed the project (QA)."""
    from daemon.render import status_panels
    from daemon.selection import _read_inputs
    from daemon.training import active_cache
    from tests.unit.daemon.test_render_markup import rendered

    ctx, fake, _ = world
    push = fake.push
    monkeypatch.setattr(fake, "push", lambda tasks: (_ for _ in ()).throw(ConnectorRejected("refused")))
    for _ in range(3):
        with pytest.raises(ConnectorRejected):
            run_cycle(ctx)
    monkeypatch.setattr(fake, "push", push)
    report = run_cycle(ctx)  # the project was fixed
    assert report.pushed == 10
    with Session(ctx.engine) as session:
        assert [b.status for b in session.exec(select(Batch))].count(BatchStatus.PARKED) == 3
    n_pool = len(_read_inputs(ctx, active_cache(ctx)).pool.cache_rows) + 10  # candidates + the batch now queued
    with Session(ctx.engine) as session:
        assert n_pool == len(session.exec(select(PoolItem)).all())  # no parked item held back
        shown = rendered(*status_panels(status_report(session)))
    assert "3 batches parked: Label Studio refused their tasks" in shown  # status said nothing of them


def test_a_push_refused_half_way_keeps_the_tasks_made_and_frees_the_rest(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, fake, _ = world
    push = fake.push
    calls = []

    def second_chunk_refused(tasks: Any) -> Any:
        calls.append(len(tasks))
        if len(calls) > 1:
            raise ConnectorRejected("refused")
        return push(tasks)

    monkeypatch.setattr("daemon.cycle._PUSH_CHUNK", 4)
    monkeypatch.setattr(fake, "push", second_chunk_refused)
    with pytest.raises(ConnectorRejected):
        run_cycle(ctx)
    with Session(ctx.engine) as session:
        batch = session.exec(select(Batch)).one()
    assert batch.status is BatchStatus.PUSHED and "6 of 10 items not pushed" in batch.note
    states = [i.state for i in sorted(batch_items(ctx, batch.id), key=lambda i: i.position)]
    assert states == [BatchItemState.PENDING] * 4 + [BatchItemState.WITHDRAWN] * 6


def test_refused_token_during_push_leaves_the_batch_queued(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, fake, _ = world
    real_push = fake.push

    def refused(tasks: object) -> object:
        raise ConnectorAuthError("Label Studio refused the API token (401)")

    monkeypatch.setattr(fake, "push", refused)
    with pytest.raises(ConnectorAuthError):
        run_cycle(ctx)
    with Session(ctx.engine) as session:
        batch = session.exec(select(Batch)).one()
    assert batch.status is BatchStatus.SELECTED  # not parked: nothing is wrong with the batch
    monkeypatch.setattr(fake, "push", real_push)
    run_cycle(ctx)  # the token works again
    with Session(ctx.engine) as session:
        assert session.exec(select(Batch)).one().status is BatchStatus.PUSHED


def test_control_slice_is_marked_and_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx, _, gold = build_world(tmp_path, control_fraction=0.2)
    batch_id = run_cycle(ctx).batch_id or ""
    control = [i for i in batch_items(ctx, batch_id) if i.is_control]
    assert len(control) == 2
    fake = ctx.connector
    assert isinstance(fake, FakeConnector)
    annotate_batch(ctx, fake, gold, batch_id)
    second = run_cycle(ctx).batch_id or ""
    assert all(i.predicted_label for i in batch_items(ctx, second) if i.is_control)
    annotate_batch(ctx, fake, gold, second)
    run_cycle(ctx)
    with Session(ctx.engine) as session:
        control_report = status_report(session).control_slice
    assert control_report["n"] == 2  # only control items predicted by a trained model count
    (point,) = control_report["curve"]
    assert point["n_labels"] == 10 and point["n_control"] == 2


def test_control_items_take_random_places_in_the_batch_and_nothing_pushed_marks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appended, control items were always a batch's last tasks, with score 0 and a flag in their data (QA)."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, control_fraction=0.2)
    places = []
    for _ in range(4):
        batch_id = run_cycle(ctx).batch_id or ""
        items = sorted(batch_items(ctx, batch_id), key=lambda i: i.position)
        places += [i.position for i in items if i.is_control]
        annotate_batch(ctx, fake, gold, batch_id)
    assert len(places) == 8 and set(places) != {8, 9}  # 2 of 10 each time; appended they were always 8 and 9
    assert {"score", "is_control"}.isdisjoint(OutgoingTask.__dataclass_fields__)


def test_stopping_rule_pauses_and_resume_or_new_items_lift_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.pause import is_paused, lift_pause

    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, control_fraction=0.5, stop_kappa=0.5, stop_window=2, stability_sample=40)
    settings = ctx.settings
    reports = []
    for _ in range(6):
        report = run_cycle(ctx)
        reports.append(report)
        if report.batch_id:
            annotate_batch(ctx, fake, gold, report.batch_id)
    with Session(ctx.engine) as session:
        paused = is_paused(session)
        status = status_report(session)
    assert paused is not None and "kappa" in paused["reason"]
    assert reports[-1].batch_id is None and "paused" in reports[-1].reason
    assert status.stopping["paused"] == paused
    with Session(ctx.engine) as session:
        assert lift_pause(session, "test") is True
        session.commit()
    assert run_cycle(ctx).batch_id is not None  # resumed
    extra = tmp_path / "more.csv"
    extra.write_text("id,text\nnew-1,stolen card scam again\n")
    with Session(ctx.engine) as session:  # pause again by hand, then new items lift it
        from daemon.store import set_value

        set_value(session, "paused", '{"reason": "x"}')
        session.commit()
    add_pool_file(ctx.engine, extra, pool=settings.pool, data_dir=settings.store.data_dir)
    with Session(ctx.engine) as session:
        assert is_paused(session) is None


def test_the_stopping_rule_compares_each_model_with_one_at_least_a_batch_of_labels_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retrained every label or two, successive models agreed at kappa 0.99 from a few hundred labels on, and a
    soak's queue paused at macro-F1 0.67 (QA): a model is compared with the newest one max(batch, 10%) back."""
    from daemon.pause import history

    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, stability_sample=40, stale_score_ratio=0.0)  # nothing withdrawn
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = batch_items(ctx, run_cycle(ctx).batch_id or "")  # the first model, on 10 labels
    for pair in (second[0:2], second[2:4], second[4:6], second[6:8], second[8:10]):
        for item in pair:
            fake.annotate(item.item_id, gold[item.item_id])
        run_cycle(ctx)  # a retrain on 2 more labels each time
    with Session(ctx.engine) as session:
        points = {point.n_labels: point.kappa for point in history(session)}
    assert sorted(points) == [10, 12, 14, 16, 18, 20]
    assert [points[n] for n in (10, 12, 14, 16, 18)] == [None] * 5  # no model 10 labels back yet
    assert points[20] is not None  # against the model on 10 labels


def test_during_a_backfill_a_due_batch_is_pushed_before_the_embed_stage(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedding first made annotators wait the embed stage's 20-30 s for every batch of a backfill (QA)."""
    import daemon.cycle as cycle

    ctx, fake, gold = world
    batches_at_embed: list[int] = []
    real_embed = embed_pool

    def embed(ctx: LoopContext, **kwargs: Any) -> int:
        with Session(ctx.engine) as session:
            batches_at_embed.append(len(session.exec(select(Batch)).all()))
        return real_embed(ctx, **kwargs)

    monkeypatch.setattr(cycle, "embed_pool", embed)
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")  # nothing had vectors: embedded first
    assert batches_at_embed == [0]
    more = tmp_path / "more.csv"
    make_pool(more, n=40, seed=1)
    more.write_text(more.read_text().replace("it-", "more-"))
    add_pool_file(ctx.engine, more, pool=ctx.settings.pool, data_dir=ctx.settings.store.data_dir)
    report = run_cycle(ctx)  # 40 new items wait for vectors, and a batch is due: the batch goes first
    assert report.batch_id is not None and batches_at_embed == [0, 2]
    with Session(ctx.engine) as session:
        assert session.exec(select(PoolItem.seq).where(*to_embed()).limit(1)).first() is None  # still embedded


def test_an_operator_pause_holds_new_batches_until_resume_and_new_items_do_not_lift_it(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], tmp_path: Path,
) -> None:
    from daemon.pause import is_paused, lift_pause, pause_by_operator

    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    with Session(ctx.engine) as session:
        assert pause_by_operator(session, "new labeling guide") is True
        assert pause_by_operator(session, "again") is False  # already the operator's
        session.commit()
    report = run_cycle(ctx)
    assert report.batch_id is None and report.reason == "paused by an operator (labelloop resume)"
    assert report.model_version is not None  # answers are still pulled and trained on
    extra = tmp_path / "more.csv"
    extra.write_text("id,text\nnew-1,stolen card scam again\n")
    add_pool_file(ctx.engine, extra, pool=ctx.settings.pool, data_dir=ctx.settings.store.data_dir)
    with Session(ctx.engine) as session:
        paused = is_paused(session)
        assert paused is not None and paused["reason"] == "an operator paused the queue: new labeling guide"
        assert status_report(session).stopping["paused"] == paused
        assert lift_pause(session, "operator asked") is True
        session.commit()
    assert run_cycle(ctx).batch_id is not None


def test_task_deleted_while_the_daemon_was_away_is_withdrawn(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    ctx, fake, gold = world
    batch_id = run_cycle(ctx).batch_id or ""
    items = batch_items(ctx, batch_id)
    fake.delete_task(items[0].item_id)
    real_pull = fake.pull
    # a restarted connector never saw the task, so it cannot report the deletion itself
    monkeypatch.setattr(fake, "pull", lambda *, since: dataclasses.replace(real_pull(since=since), deleted_task_ids=()))
    sync(ctx)  # the cycle's pull was the process's full one: this one is incremental, and misses the deletion …
    assert {i.item_id: i.state for i in batch_items(ctx, batch_id)}[items[0].item_id] == "pending"
    assert ctx.reconciled_at is not None
    ctx.reconciled_at -= ctx.settings.loop.full_reconcile_interval_s  # … the next one is full, and sees it
    sync(ctx)
    for item in items[1:]:
        fake.annotate(item.item_id, gold[item.item_id])
    sync(ctx)
    states = {i.item_id: i.state for i in batch_items(ctx, batch_id)}
    assert states[items[0].item_id] == "withdrawn"
    with Session(ctx.engine) as session:
        assert session.get(Batch, batch_id).status is BatchStatus.CLOSED  # type: ignore[union-attr]


def test_a_sync_that_checks_waiting_tasks_withdraws_one_deleted_since_without_a_full_read(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted task leaves no update to pull: its item counted as waiting, and held back new
    batches, until the next full read (10 minutes by default)."""
    import dataclasses

    ctx, fake, gold = world
    batch_id = run_cycle(ctx).batch_id or ""  # the process's full read
    items = batch_items(ctx, batch_id)
    deleted, answered_then_deleted = items[0], items[1]
    fake.delete_task(deleted.item_id)
    fake.annotate(answered_then_deleted.item_id, gold[answered_then_deleted.item_id])
    real_pull = fake.pull
    answered_pull = real_pull(since=None)  # what the sync pulls: the answer, before its task went too
    fake.delete_task(answered_then_deleted.item_id)
    monkeypatch.setattr(fake, "pull", lambda *, since: dataclasses.replace(
        answered_pull if since is not None else real_pull(since=since), deleted_task_ids=()))
    sync(ctx)  # incremental, no check: the deletion is not seen
    assert {i.item_id: i.state for i in batch_items(ctx, batch_id)}[deleted.item_id] == "pending"
    with Session(ctx.engine) as session:
        waiting_before = waiting_count(session)
    report = sync(ctx, check_waiting=True)
    assert not report.full_reconcile
    states = {i.item_id: i.state for i in batch_items(ctx, batch_id)}
    assert states[deleted.item_id] == "withdrawn"
    assert states[answered_then_deleted.item_id] == "labeled"  # its answer was pulled first: kept
    with Session(ctx.engine) as session:
        assert waiting_count(session) == waiting_before - 1
    calls = len(fake.calls)
    sync(ctx, check_waiting=True)
    assert fake.calls[calls:].count("missing") == 1  # one lookup per sync


def test_a_deleted_task_whose_id_label_studio_gives_to_a_new_task_withdraws_the_item_it_named(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Label Studio on SQLite reuses the id of its newest task once deleted. Two items then held one
    task id: the first stayed pending for good (its batch never closed), and removing it deleted the
    second's live task."""
    import dataclasses

    from daemon.removal import remove_items

    ctx, fake, gold = world
    fake.reuses_deleted_ids = True
    real_pull = fake.pull  # as the real connector between full reads: a deletion goes unreported
    monkeypatch.setattr(fake, "pull", lambda *, since: dataclasses.replace(real_pull(since=since), deleted_task_ids=()))
    first = run_cycle(ctx).batch_id or ""
    items = batch_items(ctx, first)
    newest = max(items, key=lambda item: int(item.remote_task_id or 0))
    reused = fake.delete_task(newest.item_id)
    for item in items:
        if item is not newest:
            fake.annotate(item.item_id, gold[item.item_id])
    second = run_cycle(ctx).batch_id or ""
    heir = next(item for item in batch_items(ctx, second) if item.remote_task_id == reused)
    assert {i.item_id: i.state for i in batch_items(ctx, first)}[newest.item_id] == "withdrawn"
    sync(ctx)
    with Session(ctx.engine) as session:
        assert session.get(Batch, first).status is BatchStatus.CLOSED  # type: ignore[union-attr]
    remove_items(ctx.engine, [newest.item_id])
    sync(ctx)
    assert fake.remote_task_id(heir.item_id) == reused  # the heir's task was not withdrawn
    fake.annotate(heir.item_id, gold[heir.item_id])
    sync(ctx)
    assert {i.item_id: i.state for i in batch_items(ctx, second)}[heir.item_id] == "labeled"


def test_new_model_refreshes_waiting_tasks_and_withdraws_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, strategy="margin", stale_score_ratio=1.0, control_fraction=0.2,
                                  rerank_keep_next=0)
    first = run_cycle(ctx).batch_id or ""
    annotate_batch(ctx, fake, gold, first)
    second = run_cycle(ctx)
    assert second.batch_id is not None
    items = batch_items(ctx, second.batch_id)
    answered = items[:6]
    for item in answered:
        fake.annotate(item.item_id, gold[item.item_id])
    controls = [i for i in items[6:] if i.is_control]
    assert controls, "the test needs a waiting control task"
    third = run_cycle(ctx)  # a new model: the 4 waiting tasks are re-ranked
    assert third.model_version not in (None, second.model_version)
    waiting = [i for i in items[6:] if not i.is_control]
    refreshed = {rid for rid, updates in fake.predictions.items() if updates[-1].model_version == third.model_version}
    # control tasks too: Label Studio shows only the project's current model_version, and a control
    # task without a suggestion among tasks with one was easy to tell apart
    assert refreshed == {i.remote_task_id for i in items[6:]}
    after_controls = {i.item_id: i for i in batch_items(ctx, second.batch_id) if i.is_control}
    assert all(after_controls[i.item_id].predicted_label == i.predicted_label for i in controls)  # kept as pushed
    after = {i.item_id: i for i in batch_items(ctx, second.batch_id)}
    withdrawn = [i for i in waiting if after[i.item_id].state == "withdrawn"]
    assert withdrawn, "with stale_score_ratio=1.0 some task should have lost informativeness"
    remaining = {t.remote_task_id for t in fake.list_tasks()}
    assert all(i.remote_task_id not in remaining for i in withdrawn)
    assert all(after[i.item_id].state != "withdrawn" for i in items if i.is_control)  # control is never withdrawn


def stale_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, keep_next: int, answered: int = 4
) -> tuple[LoopContext, FakeConnector, dict[str, str], str, list[BatchItem]]:
    """Two cycles, the first batch answered and the first ``answered`` tasks of the second (in push
    order); the next model will find every waiting task worthless, so all of them are stale."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, stale_score_ratio=1.0, control_fraction=0.0, rerank_keep_next=keep_next)
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = run_cycle(ctx).batch_id or ""
    items = sorted(batch_items(ctx, second), key=lambda i: i.position)
    for item in items[:answered]:
        fake.annotate(item.item_id, gold[item.item_id])
    monkeypatch.setattr("daemon.rerank._scores", lambda ctx, model, strategy, vectors, proba: np.zeros(len(vectors)))
    return ctx, fake, gold, second, items


def test_rerank_refreshes_a_task_reopened_after_its_batch_closed_and_never_withdraws_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose answer was deleted after its batch closed waits in Label Studio again, but the
    re-ranking read only open batches: it kept the cold start's suggestion under every later model."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, stale_score_ratio=1.0, control_fraction=0.0, rerank_keep_next=0)
    first = run_cycle(ctx).batch_id or ""
    annotate_batch(ctx, fake, gold, first)
    second = run_cycle(ctx).batch_id or ""
    reopened = batch_items(ctx, first)[0]
    fake.delete_annotation(reopened.item_id)
    items = sorted(batch_items(ctx, second), key=lambda i: i.position)
    for item in items[:4]:
        fake.annotate(item.item_id, gold[item.item_id])
    monkeypatch.setattr("daemon.rerank._scores", lambda ctx, model, strategy, vectors, proba: np.zeros(len(vectors)))
    third = run_cycle(ctx)
    assert third.model_version is not None
    updates = fake.predictions.get(reopened.remote_task_id or "", [])
    assert updates and updates[-1].model_version == third.model_version
    after = {i.item_id: i for i in batch_items(ctx, first)}[reopened.item_id]
    assert after.state is BatchItemState.PENDING and after.predicted_label == updates[-1].predicted_label
    assert any(i.state is BatchItemState.WITHDRAWN for i in batch_items(ctx, second))  # the stale open ones go


def test_rerank_keeps_the_waiting_tasks_annotators_get_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _, _, second, items = stale_queue(tmp_path, monkeypatch, keep_next=2)
    third = run_cycle(ctx)
    assert third.batch_id not in (None, second)
    after = {i.item_id: i.state for i in batch_items(ctx, second)}
    assert [after[i.item_id] for i in items[4:]] == [BatchItemState.PENDING] * 2 + [BatchItemState.WITHDRAWN] * 4
    assert all(i.state is BatchItemState.PENDING for i in batch_items(ctx, third.batch_id or ""))  # pushed after


def test_rerank_keeps_the_next_tasks_by_the_tools_live_view_when_the_store_lags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, fake, gold, second, items = stale_queue(tmp_path, monkeypatch, keep_next=2)
    refresh = fake.refresh_predictions

    def annotator_races_ahead(updates: Any) -> Refreshed:  # answered in the tool while the daemon re-ranks
        for item in items[4:7]:
            fake.annotate(item.item_id, gold[item.item_id])
        return refresh(updates)

    monkeypatch.setattr(fake, "refresh_predictions", annotator_races_ahead)
    run_cycle(ctx)
    after = {i.item_id: i.state for i in batch_items(ctx, second)}
    # the store still counted items[4:6] as the next two; the tool hands out items[7:9] next
    assert [after[i.item_id] for i in items[7:]] == [BatchItemState.PENDING] * 2 + [BatchItemState.WITHDRAWN] * 1


def test_a_waiting_task_the_refresh_finds_deleted_is_withdrawn_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted in the tool, it stayed pending until the next full read (10 minutes by default): its
    batch could not close and the queue looked fuller than it was."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, stale_score_ratio=0.0, control_fraction=0.0,
                                  full_reconcile_interval_s=3600)
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = run_cycle(ctx).batch_id or ""
    items = sorted(batch_items(ctx, second), key=lambda i: i.position)
    fake.annotate(items[0].item_id, gold[items[0].item_id])  # a new model comes, so the queue is re-ranked
    fake.delete_task(items[-1].item_id)
    third = run_cycle(ctx)
    assert third.model_version is not None and "refresh_predictions" in fake.calls
    after = {i.item_id: i.state for i in batch_items(ctx, second)}
    assert after[items[-1].item_id] is BatchItemState.WITHDRAWN
    assert [after[i.item_id] for i in items[1:-1]] == [BatchItemState.PENDING] * (len(items) - 2)


def test_rerank_withdraws_nothing_when_the_project_serves_tasks_at_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, fake, _, second, items = stale_queue(tmp_path, monkeypatch, keep_next=0)
    fake.in_push_order = False  # any waiting task may be open in a browser
    third = run_cycle(ctx)
    assert third.model_version is not None
    waiting = {i.remote_task_id for i in items[4:]}
    after = {i.item_id: i.state for i in batch_items(ctx, second)}
    assert all(after[i.item_id] is BatchItemState.PENDING for i in items[4:])
    assert waiting <= {t.remote_task_id for t in fake.list_tasks()}
    refreshed = {rid for rid, updates in fake.predictions.items() if updates[-1].model_version == third.model_version}
    assert refreshed == waiting  # predictions are still refreshed
    assert "none is withdrawn" in caplog.text
    with Session(ctx.engine) as session:
        assert [e.kind for e in session.exec(select(HealthEvent))].count("rerank_kept") == 1


def test_a_project_that_serves_tasks_at_random_is_reported_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx, fake, _ = build_world(tmp_path)
    ensure_project(ctx)
    assert "order they were pushed" not in caplog.text
    fake.in_push_order = False
    ensure_project(ctx)
    assert "does not hand out tasks in the order they were pushed" in caplog.text


def test_rerank_runs_after_the_push_and_leaves_the_new_batch_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch reaches annotators before re-ranking; tasks the current model chose are not re-ranked."""
    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, strategy="margin", stale_score_ratio=0.0)
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = run_cycle(ctx)
    for item in batch_items(ctx, second.batch_id or "")[:6]:
        fake.annotate(item.item_id, gold[item.item_id])
    fake.calls.clear()
    third = run_cycle(ctx)
    assert third.batch_id is not None and third.batch_id != second.batch_id
    assert fake.calls.index("refresh_predictions") > max(i for i, c in enumerate(fake.calls) if c == "push")
    assert list(third.stage_seconds)[-2:] == ["rerank", "quality"]
    new_tasks = {i.remote_task_id for i in batch_items(ctx, third.batch_id)}
    refreshed = {rid for rid, updates in fake.predictions.items() if updates[-1].model_version == third.model_version}
    assert refreshed and refreshed.isdisjoint(new_tasks)
    assert refreshed == {i.remote_task_id for i in batch_items(ctx, second.batch_id or "")[6:]}


def test_room_freed_by_reranking_is_filled_in_the_same_cycle(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")

    def withdraw_everything(ctx: LoopContext, model: object, *, strategy: str) -> RerankReport:
        with Session(ctx.engine) as session:
            pending = list(session.exec(select(BatchItem).where(BatchItem.state == BatchItemState.PENDING)))
            for item in pending:
                item.state = BatchItemState.WITHDRAWN
                session.add(item)
            session.commit()
        return RerankReport(refreshed=0, withdrawn=len(pending))

    monkeypatch.setattr("daemon.cycle.rerank_queue", withdraw_everything)
    report = run_cycle(ctx)
    with Session(ctx.engine) as session:
        chosen = list(session.exec(select(Batch).where(Batch.cycle_id == report.cycle_id)))
    assert len(chosen) == 2 and report.batch_id in {b.id for b in chosen}  # selected, withdrawn, selected again
    assert report.pushed == sum(b.size for b in chosen)


def test_a_cycle_right_after_a_sync_skips_its_own_pull(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    sync(ctx)
    fake.calls.clear()
    report = run_cycle(ctx, reason="webhook", synced_within_s=60.0)
    assert "pull" not in fake.calls and report.batch_id is not None and report.model_version is not None
    with Session(ctx.engine) as session:
        latest = session.exec(select(ModelRun).order_by(col(ModelRun.created_at).desc())).first()
    assert latest is not None and latest.n_labels == 10  # the labels the sync brought in were trained on
    fake.calls.clear()
    run_cycle(ctx, reason="timer")  # the default: always pull
    assert "pull" in fake.calls
    ctx.synced_at = None  # no sync yet in this process: the cycle pulls whatever it is told
    fake.calls.clear()
    run_cycle(ctx, synced_within_s=60.0)
    assert "pull" in fake.calls


def test_bring_your_own_embeddings_need_no_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import numpy as np

    from daemon.errors import PoolFileError

    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    with (tmp_path / "vectors.jsonl").open("w") as handle:
        for i in range(60):
            vector = centers[i % 3] + 0.1 * rng.normal(size=16)
            handle.write(json.dumps({"id": f"img-{i}", "embedding": vector.round(5).tolist(), "url": f"s3://x/{i}.png"}))
            handle.write("\n")

    def no_encoder() -> HashingEmbedder:
        raise AssertionError("a pool with its own vectors must not load an encoder")

    fake = FakeConnector()
    ctx = LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=fake,
                      embedder_factory=no_encoder)
    report = add_pool_file(ctx.engine, tmp_path / "vectors.jsonl", pool=settings.pool, data_dir=settings.store.data_dir)
    assert report.embedding_dim == 16 and report.added == 60
    ensure_project(ctx)
    first = run_cycle(ctx)
    for item in batch_items(ctx, first.batch_id or ""):
        fake.annotate(item.item_id, CLASSES[int(item.item_id.split("-")[1]) % 3])
    second = run_cycle(ctx)
    assert second.model_version is not None and second.batch_id is not None
    (tmp_path / "texts.csv").write_text("id,text\nt1,plain text\n")
    with pytest.raises(PoolFileError, match="precomputed embeddings"):
        add_pool_file(ctx.engine, tmp_path / "texts.csv", pool=settings.pool, data_dir=settings.store.data_dir)


def test_pool_add_of_own_vectors_works_while_the_daemon_holds_the_pool(tmp_path: Path) -> None:
    """The daemon opened a pool's own-vector cache for writing and held its lock for good, so `pool add`
    of more vectors (another process) was refused: "being written by another process; try again"."""
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(0)

    def vectors_file(name: str, prefix: str, n: int) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": f"{prefix}-{i}", "embedding": rng.normal(size=8).round(4).tolist()})
                                + "\n" for i in range(n)))
        return path

    settings = make_settings(tmp_path)
    fake = FakeConnector()
    ctx = LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=fake,
                      embedder_factory=lambda: HashingEmbedder(dim=8))
    add_pool_file(ctx.engine, vectors_file("first.jsonl", "a", 40), pool=settings.pool,
                  data_dir=settings.store.data_dir)
    ensure_project(ctx)
    first = run_cycle(ctx).batch_id  # the daemon's context now has the pool's cache open
    assert first is not None
    config = tmp_path / "labelloop.toml"
    config.write_text(f'[store]\nurl = "{settings.store.url}"\ndata_dir = "{settings.store.data_dir}"\n'
                      f'[loop]\nclasses = {json.dumps(CLASSES)}\n')
    added = subprocess.run([sys.executable, "-m", "daemon", "-c", str(config), "pool", "add",
                            str(vectors_file("more.jsonl", "b", 5))], capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    with Session(ctx.engine) as session:
        assert status_report(session).pool["items"] == 45
    for n, item in enumerate(batch_items(ctx, first)):
        fake.annotate(item.item_id, CLASSES[n % 3])
    report = run_cycle(ctx)  # the daemon trains and selects on the vectors another process appended
    assert report.status == "ok" and report.model_version is not None and report.batch_id is not None


@pytest.mark.parametrize("use_names", [True, False])
def test_after_the_cold_start_the_item_nearest_an_unseen_class_name_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_names: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, classes=[*CLASSES, "subscription"], use_class_names=use_names)
    gold = make_pool(tmp_path / "pool.csv") | {"it-rare": "subscription"}
    with (tmp_path / "pool.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["it-rare", "subscription invoice payment help", "email"])
    fake = FakeConnector()
    ctx = LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=fake,
                      embedder_factory=lambda: HashingEmbedder(dim=64))
    add_pool_file(ctx.engine, tmp_path / "pool.csv", pool=settings.pool, data_dir=settings.store.data_dir)
    ensure_project(ctx)
    first = run_cycle(ctx)  # the cold start: representative, names or not
    assert "it-rare" not in [item.item_id for item in batch_items(ctx, first.batch_id or "")]
    annotate_batch(ctx, fake, gold, first.batch_id or "")
    second = run_cycle(ctx)
    picked = [item.item_id for item in sorted(batch_items(ctx, second.batch_id or ""), key=lambda i: i.position)]
    assert len(picked) == 10
    # one unseen class of four: ceil(10 * 1 / 4) = 1 named pick, presented first; the item reads like
    # a billing message, so without its class's name nothing singles it out
    assert (picked[0] == "it-rare") is use_names


def test_seed_labels_of_a_class_the_project_lacks_are_reported_not_trained_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, classes=[])  # no classes configured: any seed label is accepted
    with (tmp_path / "seeds.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for i in range(12):
            label = ["billing", "delivery", "fraud"][i % 3]
            writer.writerow([f"s-{i}", " ".join(random.Random(i).sample(WORDS[label], 3)) + f" {i}", label])
    fake = FakeConnector(classes=["billing", "delivery"])  # an existing project without "fraud"
    ctx = LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=fake,
                      embedder_factory=lambda: HashingEmbedder(dim=64))
    add_pool_file(ctx.engine, tmp_path / "seeds.csv", pool=settings.pool, data_dir=settings.store.data_dir)
    make_pool(tmp_path / "pool.csv")
    add_pool_file(ctx.engine, tmp_path / "pool.csv", pool=settings.pool, data_dir=settings.store.data_dir)
    with caplog.at_level("WARNING", logger="daemon.project"):
        ensure_project(ctx)
    assert "4 labels name no class of project 1 and are not trained on ('fraud': 4)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="daemon.project"):
        refresh_classes(ctx)  # every full reconcile does this: no new warning while nothing changed
    assert "not trained on" not in caplog.text
    run_cycle(ctx)
    with Session(ctx.engine) as session:
        model = session.exec(select(ModelRun)).one()
        report = status_report(session)
    assert model.n_labels == 8
    assert report.per_class == {"billing": 4, "delivery": 4} and report.labels_outside_classes == {"fraud": 4}


def test_an_answer_with_several_known_choices_reads_the_labeling_config_again_and_status_says_why(
    world: tuple[LoopContext, FakeConnector, dict[str, str]]
) -> None:
    """A <Choices> made choice="multiple" while the daemon ran went unnoticed for up to 10 minutes:
    answers of known classes did not make it read the config, and status advised adding 'DESC|ENTY'
    to the labeling config as if it were one missing class (QA)."""
    from daemon.render import status_panels
    from tests.unit.daemon.test_render_markup import rendered

    ctx, fake, gold = world
    item = batch_items(ctx, run_cycle(ctx).batch_id or "")[0]
    two = tuple(sorted(set(gold.values())))[:2]
    fake.annotate(item.item_id, two)
    before = fake.calls.count("ensure_project")
    sync(ctx)
    assert fake.calls.count("ensure_project") == before + 1  # Label Studio's connector refuses choice="multiple"
    with Session(ctx.engine) as session:
        report = status_report(session)
    assert report.unknown_choices == {"|".join(two): 1}
    shown = rendered(*status_panels(report))
    assert f"answers with several choices ({two[0]!r}, {two[1]!r}): labelloop learns one class per item" in shown
    flat = " ".join(shown.split())
    assert "answer them again with one" in flat and 'make the <Choices> choice="single"' not in flat  # it may be (QA)


def test_an_answer_with_nothing_chosen_reads_the_labeling_config_again_once(
    world: tuple[LoopContext, FakeConnector, dict[str, str]]
) -> None:
    """A renamed <Choices> tag makes every answer come back empty; that went unnoticed until the next
    full read, 10 minutes later, while the batch closed on answers the model could not use."""
    ctx, fake, _ = world
    batch = run_cycle(ctx).batch_id or ""
    first, second = batch_items(ctx, batch)[:2]
    fake.annotate(first.item_id, None)
    before = fake.calls.count("ensure_project")
    sync(ctx)
    assert fake.calls.count("ensure_project") == before + 1
    sync(ctx)  # already recorded as such: not read again
    assert fake.calls.count("ensure_project") == before + 1
    fake.annotate(second.item_id, None)
    sync(ctx)
    assert fake.calls.count("ensure_project") == before + 2
    with Session(ctx.engine) as session:
        report = status_report(session)
    assert report.unknown_choices == {NO_CHOICE: 2}


def test_a_class_added_to_the_project_while_the_daemon_runs_turns_its_answers_into_labels(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    ctx, fake, _ = world
    a, b, c = (i.item_id for i in batch_items(ctx, run_cycle(ctx).batch_id or "")[:3])
    fake.annotate(a, "billing")
    fake.annotate(b, "refund")  # submitted through the API before anyone added the class
    fake.calls.clear()
    sync(ctx)
    assert fake.calls.count("ensure_project") == 1  # the stray choice made it look at the project again
    fake.calls.clear()
    sync(ctx)
    assert "ensure_project" not in fake.calls  # nothing new: no extra request
    assert fake.classes is not None
    fake.classes = (*fake.classes, "refund")  # an admin adds the class to the labeling config
    fake.annotate(c, "refund")
    sync(ctx)
    with Session(ctx.engine) as session:
        labels = {r.item_id: (r.status, r.label) for r in session.exec(select(LabelRecord))}
        history = session.exec(select(LabelEvent).where(LabelEvent.item_id == b)).all()
        report = status_report(session)
    assert labels[b] == labels[c] == (LabelStatus.LABELED, "refund")
    assert [(e.status, e.label) for e in history] == [(LabelStatus.UNKNOWN, "refund"), (LabelStatus.LABELED, "refund")]
    assert report.unknown_choices == {} and report.per_class["refund"] == 2
    assert run_cycle(ctx).model_version is not None


def test_a_choice_that_is_still_no_class_stays_an_unknown_choice(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    ctx, fake, _ = world
    item = batch_items(ctx, run_cycle(ctx).batch_id or "")[0].item_id
    fake.annotate(item, "not-a-class")
    fake.calls.clear()
    sync(ctx)
    assert fake.calls.count("ensure_project") == 1
    fake.calls.clear()
    sync(ctx)  # the pull's overlap lists the task again: it is stored as that unknown choice already
    assert "ensure_project" not in fake.calls
    with Session(ctx.engine) as session:
        assert status_report(session).unknown_choices == {"not-a-class": 1}


def test_a_full_reconcile_learns_an_edited_labeling_config(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    ctx, fake, _ = world
    run_cycle(ctx)
    fake.classes = ("billing", "delivery", "fraud", "chargeback")  # edited in Label Studio, no answer names it yet
    sync(ctx)
    with Session(ctx.engine) as session:
        assert "chargeback" not in status_report(session).per_class  # an incremental pull reads no config
    assert ctx.reconciled_at is not None
    ctx.reconciled_at -= ctx.settings.loop.full_reconcile_interval_s  # the interval passed: a full reconcile
    sync(ctx)
    with Session(ctx.engine) as session:
        assert status_report(session).per_class["chargeback"] == 0  # now a class to find, by its name too


def test_full_reconciles_are_spaced_in_time_however_often_syncs_run(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, fake, _ = world
    run_cycle(ctx)  # the process's first pull: a full one
    assert fake.calls.count("ensure_project") == 1  # at start only: the first full pull does not read it again
    sinces: list[object] = []
    real_pull = fake.pull

    def recording_pull(*, since: Any) -> Any:
        sinces.append(since)
        return real_pull(since=since)

    monkeypatch.setattr(fake, "pull", recording_pull)
    for _ in range(40):  # a webhook makes every annotation a sync
        sync(ctx)
    assert len(sinces) == 40 and None not in sinces
    assert ctx.reconciled_at is not None
    ctx.reconciled_at -= ctx.settings.loop.full_reconcile_interval_s
    sync(ctx)
    sync(ctx)
    assert sinces[40:] == [None, sinces[41]] and sinces[41] is not None


def test_a_slow_full_read_spaces_the_next_one_out(world: tuple[LoopContext, FakeConnector, dict[str, str]]) -> None:
    from daemon.sync import RECONCILE_SPACING

    ctx, _, _ = world
    run_cycle(ctx)
    assert ctx.reconciled_at is not None
    interval = ctx.settings.loop.full_reconcile_interval_s
    ctx.reconcile_cost_s = interval  # a project so large that a full read took as long as the interval
    ctx.reconciled_at -= interval
    assert sync(ctx).full_reconcile is False  # the interval passed, but not 20 times the read's duration
    ctx.reconciled_at -= RECONCILE_SPACING * interval
    assert sync(ctx).full_reconcile is True
    assert ctx.reconcile_cost_s < 1.0  # measured again: the fake project is small


def test_switching_the_store_to_another_project_says_what_happens_to_the_waiting_items(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    ctx, _, _ = world
    batch_id = run_cycle(ctx).batch_id or ""
    other = FakeConnector(classes=CLASSES, project_id="7")  # labelloop.toml now names another (empty) project
    ctx.connector = other
    with caplog.at_level("WARNING", logger="daemon.project"):
        ensure_project(ctx)
    assert "worked with project 1 and is now bound to project 7" in caplog.text
    ctx.reconciled_at = None
    sync(ctx)
    assert {item.state for item in batch_items(ctx, batch_id)} == {BatchItemState.WITHDRAWN}
    assert run_cycle(ctx).pushed > 0  # the new project gets tasks


def test_start_warns_when_loop_classes_differ_from_the_projects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A class added to loop.classes for an existing project was ignored without a word."""
    ctx, _fake, _ = build_world(tmp_path)
    ctx.settings.loop.classes = [*CLASSES, "refund"]
    with caplog.at_level("WARNING", logger="daemon.project"):
        ensure_project(ctx)
    assert any("loop.classes (billing, delivery, fraud, refund) differs from the classes of project" in r.getMessage()
               for r in caplog.records)


def test_a_new_encoder_embeds_the_pool_again_instead_of_failing_every_cycle(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    """Switching model.dtype to int8 (its own cache) left every item marked embedded with no vector in
    the new cache: each cycle failed with "items have no cached embedding", and embed had nothing to do."""
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    assert run_cycle(ctx).model_version is not None
    switched = LoopContext(settings=ctx.settings, engine=ctx.engine, connector=fake,
                           embedder_factory=lambda: HashingEmbedder(dim=32))  # another encoder, another cache
    report = run_cycle(switched)
    assert report.status == "ok" and report.model_version is not None
    with Session(ctx.engine) as session:
        assert status_report(session).pool["embedded"] == len(gold)
    assert run_cycle(switched).stage_seconds["embed"] < 1.0  # once: the next cycle has nothing to embed


def test_a_cycle_embeds_a_large_import_a_bounded_while_and_trains_on_what_has_a_vector(
    world: tuple[LoopContext, FakeConnector, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 50k-row import made one cycle embed for minutes under the work lock: no sync, no batch meanwhile."""
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    late = tmp_path / "late.csv"
    late.write_text("id,text,label\n" + "".join(f"late-{i},late message {i},billing\n" for i in range(600)))
    add_pool_file(ctx.engine, late, pool=ctx.settings.pool, data_dir=ctx.settings.store.data_dir)
    monkeypatch.setattr("daemon.cycle.EMBED_BUDGET_S", 0.0)  # one chunk per cycle
    monkeypatch.setattr("daemon.training._MAX_CHUNK", 256)
    assert cycle_due(ctx) != ""
    report = run_cycle(ctx)
    assert report.status == "ok" and report.model_version is not None  # trained on the labels with a vector
    with Session(ctx.engine) as session:
        status = status_report(session)
        n_labels = session.exec(select(ModelRun.n_labels).where(ModelRun.version == report.model_version)).one()
    assert status.pool["embedded"] == len(gold) + 256  # one chunk of the import
    assert n_labels == 10  # a batch was due: trained and pushed first, the chunk embedded after the push
    for _ in range(2):  # the rest, a chunk per cycle
        report = run_cycle(ctx)
    with Session(ctx.engine) as session:
        assert status_report(session).pool["embedded"] == len(gold) + 600
        n_labels = session.exec(select(ModelRun.n_labels).where(ModelRun.version == report.model_version)).one()
    assert n_labels >= 10 + 256  # the seed labels of the chunks embedded before
    assert cycle_due(ctx) != "pool items to embed"


def test_the_stability_sample_is_drawn_again_once_labels_took_half_of_it(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    """Once every sample item was labeled, the stopping rule recorded no agreement, silently, for good;
    and items added after the first draw never joined it."""
    from daemon.pause import _sample, lift_pause

    ctx, _fake, gold = world
    ctx.settings.loop.stability_sample = 10
    embed_pool(ctx)
    with Session(ctx.engine) as session:
        first = _sample(session, ctx)
        assert len(first) == 10
        for item_id in first[:4]:  # under half labeled: the same sample, less those
            session.add(LabelRecord(item_id=item_id, status=LabelStatus.LABELED, label=gold[item_id]))
        assert _sample(session, ctx) == first[4:]
        for item_id in first[4:6]:  # over half: a new draw of unlabeled items
            session.add(LabelRecord(item_id=item_id, status=LabelStatus.LABELED, label=gold[item_id]))
        again = _sample(session, ctx)
        assert len(again) == 10 and not set(again) & set(first[:6])
        lift_pause(session, "new pool items", operator=False)  # drawn afresh at the next retrain, new items eligible
        assert len(_sample(session, ctx)) == 10


def test_small_batches_carry_the_control_slice_on_average(tmp_path: Path) -> None:
    """10 items × 5% rounded down to no control item at all, so the stopping rule could never pause."""
    ctx, fake, gold = build_world(tmp_path, control_fraction=0.05)
    control = 0
    for _ in range(6):
        batch_id = run_cycle(ctx).batch_id or ""
        control += sum(item.is_control for item in batch_items(ctx, batch_id))
        annotate_batch(ctx, fake, gold, batch_id)
    assert 1 <= control <= 6  # half an item per batch of ten, on average


def test_a_damaged_vector_among_the_candidates_fails_the_cycle_naming_its_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The streamed scoring pass reads shards without get()'s check: a NaN row among the candidates
    failed every cycle with a bare "ValueError: X contains NaN or inf", which names no file and no fix."""
    from models.errors import CacheError

    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path)
    monkeypatch.setattr("daemon.cycle.update_stability", lambda *_: None)  # its sample of 90 would read the row
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")  # the queue is empty again
    shard, row = damage_a_candidate(ctx)
    with pytest.raises(CacheError, match=rf"{shard.name} is damaged: row {row} holds NaN or inf.*labelloop embed"):
        run_cycle(ctx)


def damage_a_candidate(ctx: LoopContext) -> tuple[Path, int]:
    """Write one float16 NaN into the vector of a candidate (neither labeled nor queued); return its shard and row."""
    from daemon.selection import _read_inputs
    from daemon.training import active_cache

    cache = active_cache(ctx)
    row = int(_read_inputs(ctx, cache).pool.cache_rows[-1])
    shard = cache.directory / f"shard-{row // 262144:05d}.f16"
    with shard.open("r+b") as handle:
        handle.seek((row % 262144) * cache.dim * 2)
        handle.write(b"\xff\xff")
    return shard, row


def test_after_a_lift_the_window_needs_new_retrains_and_a_resume_of_a_running_queue_changes_nothing(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    """After `resume`, the next retrain was compared with the same model's own predictions (kappa 1.0),
    so the queue paused again one retrain early; and `resume` of a running queue wiped the progress."""
    from daemon.pause import history, lift_pause, pause_by_operator, update_stability
    from daemon.training import retrain

    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    run_cycle(ctx)
    with Session(ctx.engine) as session:
        before = history(session)
        assert before and lift_pause(session, "operator asked") is False  # not paused: nothing changes
        session.commit()
        assert history(session) == before
        pause_by_operator(session, "")
        assert lift_pause(session, "operator asked") is True
        session.commit()
    model = retrain(ctx)
    assert model is not None and model.version == before[-1].model_version  # no new label: the same model
    point = update_stability(ctx, model)
    assert point is not None and point.kappa is None  # compared with nothing, not with itself


def test_a_task_reopened_after_its_batch_closed_counts_as_waiting(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    """Deleting an answer in a closed batch put the task back in Label Studio's queue, but the store did
    not count it: status said 0 waiting and the next batches went past max_waiting_tasks (13 of 10)."""
    from daemon.selection import waiting_count
    from daemon.sync import REOPENED_NOTE

    ctx, fake, gold = world
    first = run_cycle(ctx).batch_id or ""
    annotate_batch(ctx, fake, gold, first)
    sync(ctx)
    with Session(ctx.engine) as session:
        assert session.get(Batch, first).status == BatchStatus.CLOSED  # type: ignore[union-attr]
    reopened = batch_items(ctx, first)[0]
    fake.delete_annotation(reopened.item_id)
    sync(ctx)
    with Session(ctx.engine) as session:
        assert waiting_count(session) == 1 and status_report(session).queue["waiting_items"] == 1
        assert session.get(Batch, first).note == REOPENED_NOTE  # type: ignore[union-attr]
    fake.annotate(reopened.item_id, gold[reopened.item_id])
    sync(ctx)
    with Session(ctx.engine) as session:  # answered again: the note no longer holds
        assert waiting_count(session) == 0 and session.get(Batch, first).note == ""  # type: ignore[union-attr]
    fake.delete_annotation(reopened.item_id)
    sync(ctx)
    for _ in range(3):
        run_cycle(ctx)
    waiting_in_tool = sum(1 for task in fake.list_tasks() if not task.annotation_count and not task.skip_count)
    assert waiting_in_tool <= ctx.settings.label_studio.max_waiting_tasks


def test_a_scheduled_cycle_right_after_a_sync_skips_its_own_pull(
    world: tuple[LoopContext, FakeConnector, dict[str, str]]
) -> None:
    """Polling every 0.5 s, the sync had just pulled the labels that made the cycle due, and the
    cycle pulled again: 0.6 s of a 3.7 s annotation-to-batch round at 1M items (bench/cycle.py)."""
    from daemon.service import Service

    ctx, fake, gold = world
    service = Service(ctx)
    service.cycle_job()  # the cold start: no sync yet, so it pulls
    with Session(ctx.engine) as session:
        (first,) = session.exec(select(Batch.id)).all()
    annotate_batch(ctx, fake, gold, first)
    service.sync_job()
    fake.calls.clear()
    service.cycle_job()
    assert "pull" not in fake.calls and "push" in fake.calls  # it trained on the synced labels and pushed
    with Session(ctx.engine) as session:
        second = session.exec(select(Batch.id).where(Batch.id != first)).one()
    annotate_batch(ctx, fake, gold, second)
    service.sync_job()
    assert ctx.synced_at is not None
    ctx.synced_at -= 3  # the last sync is no longer fresh
    fake.calls.clear()
    service.cycle_job()
    assert fake.calls[0] == "pull"


def test_the_cross_validated_estimate_comes_after_the_push_and_a_restart_finishes_one_cut_short(
    world: tuple[LoopContext, FakeConnector, dict[str, str]],
) -> None:
    """The folds cost five fits to the model's one; the next batch does not need them."""
    ctx, fake, gold = world
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    sync(ctx)
    model = retrain(ctx)  # as the cycle's train stage, and then the process is killed
    assert model is not None
    with Session(ctx.engine) as session:
        run = session.get(ModelRun, model.version)
        assert run is not None and (run.quality_method, run.macro_f1, run.accuracy) == (QUALITY_PENDING, None, None)
    restarted = LoopContext(settings=ctx.settings, engine=ctx.engine, connector=fake,
                            embedder_factory=ctx.embedder_factory)
    report = run_cycle(restarted)
    assert report.model_version == model.version and list(report.stage_seconds)[-1] == "quality"
    assert report.stage_seconds.get("push") is not None  # the batch went out before the estimate
    with Session(ctx.engine) as session:
        run = session.get(ModelRun, model.version)
        assert run is not None and run.quality_method.startswith("too few labels")  # 10 labels: estimated, as such
    assert restarted.pending_quality is None
    estimate_pending_quality(restarted)  # nothing left to do: no fit, no change



def test_a_project_id_naming_another_project_is_refused_unless_the_move_is_allowed(
    world: tuple[LoopContext, FakeConnector, dict[str, str]]
) -> None:
    """`LABELLOOP_LABEL_STUDIO__PROJECT_ID=2 labelloop sync` moved the store to project 2 with a warning and
    exit 0, and the items waiting in project 1 counted as withdrawn (QA)."""
    from daemon.app import one_sync, run_service
    from daemon.errors import ConfigError

    ctx, _, _ = world
    batch_id = run_cycle(ctx).batch_id or ""
    other = FakeConnector(classes=CLASSES, project_id="7")
    moved = ctx.settings.model_copy(update={"label_studio": ctx.settings.label_studio.model_copy(
        update={"project_id": 7})})
    with pytest.raises(ConfigError, match=r"bound to Label Studio project 1, and label_studio\.project_id is 7"):
        one_sync(moved, connector=other)
    with pytest.raises(ConfigError, match="LABELLOOP_LABEL_STUDIO__ALLOW_PROJECT_CHANGE=true"):
        run_service(moved, connector=other)  # the daemon refuses to start too
    assert other.calls == []  # refused before asking Label Studio anything
    with Session(ctx.engine) as session:
        assert get_value(session, "project_id") == "1"
    assert {item.state for item in batch_items(ctx, batch_id)} == {BatchItemState.PENDING}
    same = ctx.settings.model_copy(update={"label_studio": ctx.settings.label_studio.model_copy(
        update={"project_id": 1})})
    one_sync(same, connector=ctx.connector)  # naming the bound project is fine
    allowed = moved.model_copy(update={"label_studio": moved.label_studio.model_copy(
        update={"allow_project_change": True})})
    one_sync(allowed, connector=other)
    with Session(ctx.engine) as session:
        assert get_value(session, "project_id") == "7"


def test_a_stalled_refresh_after_the_push_neither_fails_the_cycle_nor_skips_the_models_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Label Studio stalled between the push and the re-ranking's refresh: the cycle that pushed a batch read
    'failed', and the model stayed 'cross-validation pending' for good (QA)."""
    from connectors.errors import ConnectorUnavailable

    monkeypatch.chdir(tmp_path)
    ctx, fake, gold = build_world(tmp_path, strategy="margin", stale_score_ratio=0.0)
    annotate_batch(ctx, fake, gold, run_cycle(ctx).batch_id or "")
    second = run_cycle(ctx)
    for item in batch_items(ctx, second.batch_id or "")[:6]:
        fake.annotate(item.item_id, gold[item.item_id])
    refresh = fake.refresh_predictions
    stalls = [ConnectorUnavailable("Label Studio at http://ls did not answer in time during refresh_predictions")]

    def stalled(updates: Any) -> Refreshed:
        if stalls:
            raise stalls.pop()
        return refresh(updates)

    monkeypatch.setattr(fake, "refresh_predictions", stalled)
    third = run_cycle(ctx)
    assert third.batch_id is not None and third.status == "ok" and not stalls  # pushed, and the refresh failed
    with Session(ctx.engine) as session:
        run = session.get(ModelRun, third.model_version)
        assert run is not None and run.quality_method != QUALITY_PENDING and run.macro_f1 is not None
    fake.calls.clear()
    run_cycle(ctx, reason="test")  # the next cycle re-ranks for the same model
    assert "refresh_predictions" in fake.calls
