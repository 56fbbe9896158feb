"""The daemon against a real Label Studio: rounds, edits, crashes, outages, bad tokens.

In-process tests drive the stages with the real connector and a hashing encoder (fast);
subprocess tests run the real `labelloop` command with the bundled transformer encoder.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from sqlmodel import Session, col, select

from connectors._label_config import choices_config
from connectors.base import OutgoingTask, Refreshed
from connectors.errors import ConnectorRejected
from daemon.context import LoopContext
from daemon.cycle import CycleReport, push_pending, run_cycle
from daemon.export import export_labels
from daemon.pool import add_pool_file
from daemon.project import ensure_project
from daemon.queries import status_report
from daemon.selection import select_next_batch
from daemon.settings import Settings, load_settings
from daemon.store import (
    Batch,
    BatchItem,
    BatchItemState,
    BatchStatus,
    HealthEvent,
    LabelRecord,
    LabelStatus,
    make_engine,
)
from daemon.sync import sync
from daemon.training import embed_pool
from models.hashing import HashingEmbedder
from tests.integration import ls_helpers

CLASSES = ("billing", "delivery", "fraud")
WORDS = {
    "billing": ["invoice", "charged", "refund", "payment", "bill", "price", "fee"],
    "delivery": ["parcel", "courier", "shipping", "arrived", "tracking", "late", "box"],
    "fraud": ["stolen", "scam", "unauthorised", "hacked", "phishing"],
}
LABELLOOP = str(Path(sys.executable).parent / "labelloop")


def write_pool(path: Path, n: int) -> dict[str, str]:
    gold: dict[str, str] = {}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "channel"])
        for i in range(n):
            label = "fraud" if i % 10 == 0 else ("billing" if i % 2 else "delivery")
            words = WORDS[label]
            text = f"{words[i % len(words)]} {words[(i * 3 + 1) % len(words)]} problem number {i}"
            writer.writerow([f"it-{i:04d}", text, "email"])
            gold[f"it-{i:04d}"] = label
    return gold


def settings_for(tmp_path: Path, server: Any, project_id: int, **loop: Any) -> Settings:
    return load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/state/labelloop.db", "data_dir": str(tmp_path / "state")},
        label_studio={
            "url": server.url,
            "api_key": server.pat,
            "project_id": project_id,
            "max_waiting_tasks": loop.pop("max_waiting_tasks", 10),
            "timeout_s": 30,
        },
        loop={
            "batch_size": 10,
            "control_fraction": 0.1,
            "low_water_fraction": 0.0,
            "min_new_labels": 1,
            "sync_interval_s": 1,
            "cycle_interval_s": 1,
            "backoff_max_s": 4,
            "full_reconcile_interval_s": 3,
            **loop,
        },
        model={"epochs": 60, "cv_folds": 3},
    )


@pytest.fixture
def loop_ctx(
    tmp_path: Path,
    label_studio: Any,
    ls_project: Callable[..., int],
    ls_connector: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[LoopContext, int, dict[str, str]]]:
    monkeypatch.chdir(tmp_path)
    project_id = ls_project(CLASSES)
    settings = settings_for(tmp_path, label_studio, project_id)
    gold = write_pool(tmp_path / "pool.csv", 60)
    ctx = LoopContext(
        settings=settings,
        engine=make_engine(settings.store.url),
        connector=ls_connector(project_id),
        embedder_factory=lambda: HashingEmbedder(dim=64),
    )
    add_pool_file(ctx.engine, tmp_path / "pool.csv", pool=settings.pool, data_dir=settings.store.data_dir)
    ensure_project(ctx)
    yield ctx, project_id, gold
    ctx.engine.dispose()


def items_of(ctx: LoopContext, batch_id: str) -> list[BatchItem]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(BatchItem).where(BatchItem.batch_id == batch_id)))


def labels(ctx_or_url: LoopContext | str) -> dict[str, tuple[LabelStatus, str | None]]:
    engine = ctx_or_url.engine if isinstance(ctx_or_url, LoopContext) else make_engine(ctx_or_url)
    with Session(engine) as session:
        return {r.item_id: (r.status, r.label) for r in session.exec(select(LabelRecord))}


def _unmapped(url: str) -> int:
    """Batch items the store has not matched to a Label Studio task yet."""
    with Session(make_engine(url)) as session:
        return len(session.exec(select(BatchItem.item_id).where(col(BatchItem.remote_task_id).is_(None))).all())


def answer(ls_client: LabelStudio, gold: dict[str, str], items: list[BatchItem]) -> None:
    """Submit each item's gold choice on its task, as an annotator would."""
    for item in items:
        ls_helpers.annotate(ls_client, int(item.remote_task_id or 0), gold[item.item_id])


def states(ctx: LoopContext, batch_id: str | None) -> dict[str, BatchItemState]:
    return {i.item_id: i.state for i in items_of(ctx, batch_id or "")}


def assert_only_behind_withdrawn(ctx: LoopContext, batch_id: str | None, in_hand: BatchItem,
                                 behind: list[BatchItem]) -> None:
    """The task an annotator has open still waits; the stale ones behind it (control items aside) are gone."""
    after = states(ctx, batch_id)
    assert after[in_hand.item_id] is BatchItemState.PENDING
    withdrawable = [i for i in behind if not i.is_control]
    assert withdrawable and all(after[i.item_id] is BatchItemState.WITHDRAWN for i in withdrawable)


def stale_queue(
    ctx: LoopContext, ls_client: LabelStudio, gold: dict[str, str], monkeypatch: pytest.MonkeyPatch, *,
    keep_next: int, answered: int,
) -> tuple[CycleReport, list[BatchItem]]:
    """Two cycles, the first batch answered and the first ``answered`` tasks of the second (in push
    order); the next model will find every waiting task worthless, so all of them are stale."""
    ctx.settings.loop.stale_score_ratio = 1.0
    ctx.settings.loop.rerank_keep_next = keep_next
    answer(ls_client, gold, items_of(ctx, run_cycle(ctx).batch_id or ""))
    second = run_cycle(ctx)
    items = sorted(items_of(ctx, second.batch_id or ""), key=lambda i: i.position)
    answer(ls_client, gold, items[:answered])
    monkeypatch.setattr("daemon.rerank._scores", lambda ctx, model, strategy, vectors, proba: np.zeros(len(vectors)))
    return second, items


def test_full_round_on_real_label_studio(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, project_id, gold = loop_ctx
    first = run_cycle(ctx)
    assert first.pushed == 10 and ls_helpers.task_count(ls_client, project_id) == 10
    answer(ls_client, gold, items_of(ctx, first.batch_id or ""))
    second = run_cycle(ctx)
    assert second.model_version is not None and second.batch_id is not None
    assert len([s for s, _ in labels(ctx).values() if s is LabelStatus.LABELED]) == 10
    with Session(ctx.engine) as session:
        assert session.get(Batch, first.batch_id).status is BatchStatus.CLOSED  # type: ignore[union-attr]
    second_items = items_of(ctx, second.batch_id)
    assert {i.item_id for i in second_items}.isdisjoint({i.item_id for i in items_of(ctx, first.batch_id or "")})
    task = ls_client.tasks.get(id=str(second_items[0].remote_task_id))
    assert task.data["al_item_id"] == second_items[0].item_id
    predictions = ls_client.predictions.list(task=int(second_items[0].remote_task_id or 0))
    assert predictions and predictions[0].model_version == second.model_version  # the model's pre-annotation
    export_labels(ctx.engine, ctx.settings.store.data_dir / "labels.csv", pool=ctx.settings.pool)
    with (ctx.settings.store.data_dir / "labels.csv").open(newline="") as handle:
        exported = {row["id"]: row for row in csv.DictReader(handle)}
    first_items = items_of(ctx, first.batch_id or "")
    assert {row["label"] for row in exported.values()} <= set(CLASSES) and len(exported) == 10
    for item in first_items:  # who answered, which task: as Label Studio has it
        row = exported[item.item_id]
        assert (row["label"], row["remote_task_id"]) == (gold[item.item_id], item.remote_task_id)
        assert row["annotator"] and "@" in row["annotator"]


def test_new_model_refreshes_predictions_of_waiting_tasks(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, project_id, gold = loop_ctx
    ctx.settings.loop.stale_score_ratio = 0.0  # refresh only: nothing is withdrawn
    ctx.settings.loop.control_fraction = 0.3  # three control tasks a batch, anywhere in it
    first = run_cycle(ctx)
    answer(ls_client, gold, items_of(ctx, first.batch_id or ""))
    second = run_cycle(ctx)
    items = items_of(ctx, second.batch_id or "")
    answered = [i for i in items if not i.is_control][:5]
    answer(ls_client, gold, answered)
    third = run_cycle(ctx)
    assert third.model_version not in (None, second.model_version)
    waiting = [i for i in items if i not in answered]
    assert any(i.is_control for i in waiting)  # control tasks keep a current suggestion too
    for item in waiting:
        versions = {p.model_version for p in ls_client.predictions.list(task=int(item.remote_task_id or 0))}
        assert versions == {second.model_version, third.model_version}
    project = ls_client.projects.get(id=project_id)
    assert project.model_version == third.model_version  # Label Studio pre-annotates from the new model


def test_a_task_reopened_after_its_batch_closed_gets_the_new_models_suggestion_and_is_kept(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    """An answer deleted after its batch closed puts the task back in the queue; re-ranking left it
    without a suggestion for good, and the batch said it wanted answers after it had them again."""
    ctx, _, gold = loop_ctx
    ctx.settings.loop.stale_score_ratio = 1.0  # the open batch's stale tasks go; the reopened one must stay
    ctx.settings.loop.rerank_keep_next = 0
    first = run_cycle(ctx).batch_id or ""
    first_items = items_of(ctx, first)
    answers = [ls_helpers.annotate(ls_client, int(i.remote_task_id or 0), gold[i.item_id]) for i in first_items]
    second = run_cycle(ctx)
    reopened = first_items[0]
    ls_helpers.delete_annotation(ls_client, answers[0])
    answer(ls_client, gold, items_of(ctx, second.batch_id or "")[:5])
    third = run_cycle(ctx)
    assert third.model_version not in (None, second.model_version)
    versions = {p.model_version for p in ls_client.predictions.list(task=int(reopened.remote_task_id or 0))}
    assert third.model_version in versions
    assert states(ctx, first)[reopened.item_id] is BatchItemState.PENDING
    with Session(ctx.engine) as session:
        assert session.get(Batch, first).note  # type: ignore[union-attr]
    answer(ls_client, gold, [reopened])
    run_cycle(ctx)
    assert labels(ctx)[reopened.item_id] == (LabelStatus.LABELED, gold[reopened.item_id])
    with Session(ctx.engine) as session:
        assert session.get(Batch, first).note == ""  # type: ignore[union-attr]


def test_a_waiting_task_deleted_in_label_studio_does_not_stop_the_refresh_of_the_others(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    """Label Studio refused the whole chunk of predictions for one deleted task (HTTP 400), and every
    cycle with a new model failed until a full read noticed the deletion."""
    ctx, _, gold = loop_ctx
    ctx.settings.loop.stale_score_ratio = 0.0  # refresh only: nothing is withdrawn
    ctx.settings.loop.full_reconcile_interval_s = 600  # no full read notices the deletion first
    answer(ls_client, gold, items_of(ctx, run_cycle(ctx).batch_id or ""))
    second = run_cycle(ctx)
    items = sorted(items_of(ctx, second.batch_id or ""), key=lambda i: int(i.remote_task_id or 0))
    deleted = next(i for i in items if not i.is_control)  # the oldest task: Label Studio will not reuse its id
    ls_helpers.delete_task(ls_client, int(deleted.remote_task_id or 0))
    answer(ls_client, gold, items[-3:])
    third = run_cycle(ctx)
    assert third.status == "ok", third.reason
    assert third.model_version not in (None, second.model_version)
    for item in items[1:-3]:
        if not item.is_control:
            versions = {p.model_version for p in ls_client.predictions.list(task=int(item.remote_task_id or 0))}
            assert third.model_version in versions
    # and the refresh found the deletion: the item is withdrawn now, not at the next full read
    assert states(ctx, second.batch_id or "")[deleted.item_id] is BatchItemState.WITHDRAWN


def test_a_second_untouched_task_of_an_answered_item_does_not_retract_its_label(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    """A task of one of our items imported again (or left in a project the store was bound to before)
    retracted the item's label at every full read: the empty task was read after the answered one."""
    ctx, project_id, gold = loop_ctx
    first = run_cycle(ctx).batch_id or ""
    answered = next(i for i in items_of(ctx, first) if not i.is_control)
    answer(ls_client, gold, [answered])
    again = {"data": {"text": "the same item, imported again", "al_item_id": answered.item_id}}
    ls_client.projects.import_tasks(id=project_id, request=[again])  # type: ignore[list-item]
    sync(ctx)
    ctx.reconciled_at = None  # the next sync is a full read, which lists both tasks
    sync(ctx)
    assert labels(ctx)[answered.item_id] == (LabelStatus.LABELED, gold[answered.item_id])


def test_an_answer_deleted_in_a_reimported_task_gives_back_the_label_the_first_task_holds(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    """QA: answered on its task, then on a re-imported copy; the copy's answer deleted retracted the
    item's label for good, though the first task still held its answer in Label Studio."""
    ctx, project_id, gold = loop_ctx
    first = run_cycle(ctx).batch_id or ""
    answered = next(i for i in items_of(ctx, first) if not i.is_control)
    answer(ls_client, gold, [answered])
    sync(ctx)
    again = {"data": {"text": "the same item, imported again", "al_item_id": answered.item_id}}
    ls_client.projects.import_tasks(id=project_id, request=[again])  # type: ignore[list-item]
    copy = max(ls_helpers.task_ids_for(ls_client, project_id, answered.item_id))
    other = next(c for c in CLASSES if c != gold[answered.item_id])
    time.sleep(1.1)
    second = ls_helpers.annotate(ls_client, copy, other)
    sync(ctx)
    assert labels(ctx)[answered.item_id] == (LabelStatus.LABELED, other)  # the latest answer holds
    ls_helpers.delete_annotation(ls_client, second)
    sync(ctx)
    ctx.reconciled_at = None  # a full read lists the first task again
    sync(ctx)
    assert labels(ctx)[answered.item_id] == (LabelStatus.LABELED, gold[answered.item_id])


def test_a_deleted_task_whose_id_label_studio_gives_to_a_new_task_withdraws_the_item_it_named(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    """Label Studio on SQLite gives the id of its newest task, once deleted, to the next task it creates."""
    ctx, _, gold = loop_ctx
    ctx.settings.loop.full_reconcile_interval_s = 600  # no full read notices the deletion first
    ctx.settings.loop.low_water_fraction = 0.5  # the next batch comes with the deleted task still waiting
    first = run_cycle(ctx).batch_id or ""
    batch = items_of(ctx, first)
    newest = max(batch, key=lambda i: int(i.remote_task_id or 0))
    ls_helpers.delete_task(ls_client, int(newest.remote_task_id or 0))
    answer(ls_client, gold, [i for i in batch if i is not newest])
    second = run_cycle(ctx)
    heirs = [i for i in items_of(ctx, second.batch_id or "") if i.remote_task_id == newest.remote_task_id]
    assert len(heirs) == 1  # the id was reused: the case under test
    assert states(ctx, first)[newest.item_id] is BatchItemState.WITHDRAWN
    sync(ctx)
    with Session(ctx.engine) as session:
        assert session.get(Batch, first).status is BatchStatus.CLOSED  # type: ignore[union-attr]
    answer(ls_client, gold, heirs)
    sync(ctx)
    assert states(ctx, second.batch_id)[heirs[0].item_id] is BatchItemState.LABELED
    assert labels(ctx)[heirs[0].item_id] == (LabelStatus.LABELED, gold[heirs[0].item_id])


def test_rerank_never_withdraws_the_task_an_annotator_has_open(
    loop_ctx: tuple[LoopContext, int, dict[str, str]],
    ls_client: LabelStudio,
    label_studio: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Label Studio's stream hands out waiting tasks in push order, and its task locks are invisible to the API."""
    ctx, project_id, gold = loop_ctx
    second, items = stale_queue(ctx, ls_client, gold, monkeypatch, keep_next=1, answered=3)
    in_hand = items[3]
    assert not in_hand.is_control
    assert ls_helpers.next_task(label_studio, project_id) == int(in_hand.remote_task_id or 0)  # now open in a browser
    third = run_cycle(ctx)
    assert third.model_version not in (None, second.model_version)
    assert_only_behind_withdrawn(ctx, second.batch_id, in_hand, items[4:])
    ls_helpers.annotate(ls_client, int(in_hand.remote_task_id or 0), gold[in_hand.item_id])  # the annotator submits
    run_cycle(ctx)
    assert labels(ctx)[in_hand.item_id] == (LabelStatus.LABELED, gold[in_hand.item_id])


def test_rerank_spares_the_open_task_of_an_annotator_ahead_of_the_store(
    loop_ctx: tuple[LoopContext, int, dict[str, str]],
    ls_client: LabelStudio,
    label_studio: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers the daemon has not pulled yet: the open task is found from Label Studio, not the store."""
    ctx, project_id, gold = loop_ctx
    second, items = stale_queue(ctx, ls_client, gold, monkeypatch, keep_next=1, answered=3)  # a new model next
    opened: list[int] = []
    refresh = ctx.connector.refresh_predictions

    def annotator_races_ahead(updates: Any) -> Refreshed:
        answer(ls_client, gold, items[3:5])  # answered after the cycle's pull
        opened.append(ls_helpers.next_task(label_studio, project_id))  # and opens the next one
        return refresh(updates)

    monkeypatch.setattr(ctx.connector, "refresh_predictions", annotator_races_ahead)
    third = run_cycle(ctx)
    assert third.model_version not in (None, second.model_version)
    in_hand = items[5]
    assert opened == [int(in_hand.remote_task_id or 0)] and not in_hand.is_control
    assert_only_behind_withdrawn(ctx, second.batch_id, in_hand, items[6:])


def test_rerank_withdraws_nothing_from_a_project_that_serves_tasks_at_random(
    loop_ctx: tuple[LoopContext, int, dict[str, str]],
    ls_client: LabelStudio,
    label_studio: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With uniform sampling the task someone has open can be any waiting one."""
    ctx, project_id, gold = loop_ctx
    second, items = stale_queue(ctx, ls_client, gold, monkeypatch, keep_next=0, answered=3)
    ls_client.projects.update(id=project_id, sampling="Uniform sampling")
    in_hand = ls_helpers.next_task(label_studio, project_id)  # a random waiting task, open in a browser
    third = run_cycle(ctx)
    assert third.model_version not in (None, second.model_version)
    after = states(ctx, second.batch_id)
    assert all(after[i.item_id] is BatchItemState.PENDING for i in items[3:])
    assert in_hand in {int(i.remote_task_id or 0) for i in items[3:]}
    for item in items[3:]:  # still in the project, still to be labeled
        assert ls_helpers.task_ids_for(ls_client, project_id, item.item_id) == [int(item.remote_task_id or 0)]


def test_edit_delete_skip_and_unknown_choice(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, _, _ = loop_ctx
    batch = items_of(ctx, run_cycle(ctx).batch_id or "")
    a, b, c, d = (int(i.remote_task_id or 0) for i in batch[:4])
    ids = [i.item_id for i in batch[:4]]
    first_a = ls_helpers.annotate(ls_client, a, "billing")
    first_b = ls_helpers.annotate(ls_client, b, "delivery")
    ls_helpers.skip(ls_client, c)
    ls_helpers.annotate(ls_client, d, "spam-of-the-week")
    run_cycle(ctx)
    ls_helpers.update_annotation(ls_client, first_a, "fraud")
    ls_helpers.delete_annotation(ls_client, first_b)
    run_cycle(ctx)
    got = labels(ctx)
    assert got[ids[0]] == (LabelStatus.LABELED, "fraud")
    assert got[ids[1]] == (LabelStatus.RETRACTED, None)
    assert got[ids[2]] == (LabelStatus.SKIPPED, None)
    assert got[ids[3]] == (LabelStatus.UNKNOWN, "spam-of-the-week")


def test_a_class_added_to_the_labeling_config_while_the_daemon_runs_counts_every_answer_of_it(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, project_id, _ = loop_ctx
    batch = items_of(ctx, run_cycle(ctx).batch_id or "")
    early, late = (int(i.remote_task_id or 0) for i in batch[:2])
    ls_helpers.annotate(ls_client, early, "refund")  # through the API, before the class exists
    sync(ctx)
    assert labels(ctx)[batch[0].item_id] == (LabelStatus.UNKNOWN, "refund")
    ls_client.projects.update(id=project_id, label_config=choices_config([*CLASSES, "refund"]))
    ls_helpers.annotate(ls_client, late, "refund")
    sync(ctx)
    got = labels(ctx)
    assert got[batch[0].item_id] == got[batch[1].item_id] == (LabelStatus.LABELED, "refund")
    with Session(ctx.engine) as session:
        assert status_report(session).per_class["refund"] == 2


def test_a_choices_tag_made_multiple_while_the_daemon_runs_is_refused_at_the_first_answer_with_two(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    """Answers of known classes did not make the daemon read the config again, so a choice="multiple"
    tag went unnoticed until the next full read, 10 minutes later (QA)."""
    ctx, project_id, _ = loop_ctx
    batch = items_of(ctx, run_cycle(ctx).batch_id or "")
    config = choices_config(CLASSES).replace('choice="single-radio"', 'choice="multiple"')
    ls_client.projects.update(id=project_id, label_config=config)
    ls_helpers.annotate(ls_client, int(batch[0].remote_task_id or 0), CLASSES[:2])
    with pytest.raises(ConnectorRejected, match='allows several choices per task \\(choice="multiple"\\)'):
        sync(ctx)
    assert batch[0].item_id not in labels(ctx)  # not trained on as one class, nor lost: read once the tag is fixed
    ls_client.projects.update(id=project_id, label_config=choices_config(CLASSES))
    sync(ctx)
    assert labels(ctx)[batch[0].item_id] == (LabelStatus.UNKNOWN, "|".join(CLASSES[:2]))


def test_two_annotators_who_disagree_wait_for_a_ground_truth(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, _, _ = loop_ctx
    item = items_of(ctx, run_cycle(ctx).batch_id or "")[0]
    task_id = int(item.remote_task_id or 0)
    users = [ls_client.users.create(email=f"{who}-{time.time_ns()}@example.com", username=f"{who}-{time.time_ns()}")
             for who in ("ann", "bob")]
    anns = ls_helpers.annotate(ls_client, task_id, "billing", completed_by=int(users[0].id or 0))
    bobs = ls_helpers.annotate(ls_client, task_id, "fraud", completed_by=int(users[1].id or 0))
    sync(ctx)
    named = f"billing ({users[0].email}) vs fraud ({users[1].email})"  # who said what
    assert labels(ctx)[item.item_id] == (LabelStatus.DISPUTED, named)
    ls_client.annotations.update(id=bobs, ground_truth=True)  # a reviewer settles it
    sync(ctx)
    assert labels(ctx)[item.item_id] == (LabelStatus.LABELED, "fraud")
    ls_client.annotations.update(id=anns, ground_truth=True)  # the star moves: one ground truth per task (QA)
    assert ls_client.annotations.get(id=bobs).ground_truth is False
    sync(ctx)
    assert labels(ctx)[item.item_id] == (LabelStatus.LABELED, "billing")


def test_with_overlap_a_labeled_task_waits_for_its_second_answer(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, project_id, gold = loop_ctx
    ls_client.projects.update(id=project_id, maximum_annotations=2)
    item = items_of(ctx, run_cycle(ctx).batch_id or "")[0]
    users = [ls_client.users.create(email=f"{who}-{time.time_ns()}@example.com", username=f"{who}-{time.time_ns()}")
             for who in ("ann", "bob")]
    task_id = int(item.remote_task_id or 0)
    for user in users:
        ls_helpers.annotate(ls_client, task_id, gold[item.item_id], completed_by=int(user.id or 0))
        sync(ctx)
        state = states(ctx, item.batch_id)[item.item_id]
        assert labels(ctx)[item.item_id] == (LabelStatus.LABELED, gold[item.item_id])
        assert state is (BatchItemState.PENDING if user is users[0] else BatchItemState.LABELED)


def test_push_cut_off_after_tasks_were_created_leaves_no_duplicate(
    loop_ctx: tuple[LoopContext, int, dict[str, str]],
    ls_client: LabelStudio,
    ls_connector: Callable[..., Any],
) -> None:
    """The worst moment: Label Studio created the tasks, the process died before storing their ids."""
    ctx, project_id, _ = loop_ctx
    embed_pool(ctx)
    batch = select_next_batch(ctx, None)
    assert batch is not None
    chosen = items_of(ctx, batch.id)
    ls_connector(project_id).push([OutgoingTask(i.item_id, batch.id, "text") for i in chosen[:6]])  # "before" the kill
    assert push_pending(ctx) == 10  # the restarted process finishes the push
    assert ls_helpers.task_count(ls_client, project_id) == 10
    for item in items_of(ctx, batch.id):
        assert ls_helpers.task_ids_for(ls_client, project_id, item.item_id) == [int(item.remote_task_id or 0)]


# -- the real command, in a subprocess ------------------------------------------------------


def daemon_env(
    tmp_path: Path, server: Any, project_id: int, *, token: str | None = None, **loop: Any
) -> dict[str, str]:
    config = tmp_path / "labelloop.toml"
    settings = settings_for(tmp_path, server, project_id, **loop)
    data = settings.public_dump()
    data["label_studio"].pop("api_key")
    config.write_text(_toml(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env.update(
        {
            "LABELLOOP_CONFIG": str(config),
            "LABELLOOP_LABEL_STUDIO__API_KEY": token or server.pat,
            "LABELLOOP_LOG_FORMAT": "json",
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def _toml(data: dict[str, Any]) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None)
    return "\n".join(lines) + "\n"


def start_daemon(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (tmp_path / "daemon.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([LABELLOOP, "run"], cwd=tmp_path, env=env, stdout=log, stderr=log)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=180)  # a loaded CI machine may need a while to finish the running stage
    return process.returncode


@pytest.fixture
def workdir(tmp_path: Path, ls_project: Callable[..., int]) -> tuple[Path, int, dict[str, str]]:
    project_id = ls_project(CLASSES)
    gold = write_pool(tmp_path / "pool.csv", 400)
    return tmp_path, project_id, gold


def our_tasks(client: LabelStudio, project_id: int) -> dict[str, int]:
    """``{item_id: task_id}`` for every task of ours in the project."""
    found: dict[str, int] = {}
    task: Any
    for task in client.tasks.list(project=project_id, fields="all", page_size=100):
        item_id = (task.data or {}).get("al_item_id")
        if item_id:
            found[item_id] = int(task.id or 0)
    return found


def pool_add(tmp_path: Path, env: dict[str, str]) -> None:
    subprocess.run([LABELLOOP, "pool", "add", "pool.csv"], cwd=tmp_path, env=env, check=True, capture_output=True)


def test_sigkill_mid_push_then_restart_loses_nothing(
    workdir: tuple[Path, int, dict[str, str]], label_studio: Any, ls_client: LabelStudio
) -> None:
    tmp_path, project_id, gold = workdir
    env = daemon_env(tmp_path, label_studio, project_id, batch_size=300, max_waiting_tasks=300)
    pool_add(tmp_path, env)
    daemon = start_daemon(tmp_path, env)
    try:
        wait_until(
            lambda: ls_helpers.task_count(ls_client, project_id) > 0,
            timeout_s=120,
            what="the first tasks",
            log=tmp_path / "daemon.log",
        )
        daemon.send_signal(signal.SIGKILL)  # while the 300-item batch is being pushed in chunks
        daemon.wait(timeout=30)
        created = ls_helpers.task_count(ls_client, project_id)
        annotated = {}
        for item_id, task_id in list(our_tasks(ls_client, project_id).items())[:5]:  # labels made while it is down
            ls_helpers.annotate(ls_client, task_id, gold[item_id])
            annotated[item_id] = gold[item_id]
        daemon = start_daemon(tmp_path, env)
        db_url = f"sqlite:///{tmp_path}/state/labelloop.db"
        wait_until(
            lambda: ls_helpers.task_count(ls_client, project_id) >= 300,
            timeout_s=120,
            what="the rest of the batch",
            log=tmp_path / "daemon.log",
        )
        wait_until(
            lambda: all(labels(db_url).get(i, (None, None))[1] == lab for i, lab in annotated.items()),
            timeout_s=60,
            what="labels made during the outage",
            log=tmp_path / "daemon.log",
        )
        # Label Studio may hold all 300 tasks already (the kill came after the last chunk's import, before the
        # store noted it): the restart's push maps them as "already there", which the count above cannot see
        wait_until(lambda: _unmapped(db_url) == 0, timeout_s=120, what="every item mapped to its task",
                   log=tmp_path / "daemon.log")
    finally:
        stop(daemon)
    assert created <= 300
    engine = make_engine(f"sqlite:///{tmp_path}/state/labelloop.db")
    with Session(engine) as session:
        items = list(session.exec(select(BatchItem)))
    assert len(items) == ls_helpers.task_count(ls_client, project_id) == 300
    remote = [i.remote_task_id for i in items]
    assert None not in remote and len(set(remote)) == 300  # one task per item, no duplicates


def test_daemon_survives_label_studio_restart(
    workdir: tuple[Path, int, dict[str, str]], label_studio: Any, ls_client: LabelStudio
) -> None:
    tmp_path, project_id, gold = workdir
    env = daemon_env(tmp_path, label_studio, project_id)
    pool_add(tmp_path, env)
    db_url = f"sqlite:///{tmp_path}/state/labelloop.db"
    daemon = start_daemon(tmp_path, env)
    try:
        wait_until(
            lambda: ls_helpers.task_count(ls_client, project_id) == 10,
            timeout_s=120,
            what="first batch",
            log=tmp_path / "daemon.log",
        )
        label_studio.stop()
        time.sleep(4)  # a few failed syncs
        assert daemon.poll() is None, "the daemon died while Label Studio was down"
        label_studio.restart()
        for item_id, task_id in our_tasks(ls_client, project_id).items():
            ls_helpers.annotate(ls_client, task_id, gold[item_id])
        wait_until(
            lambda: len(labels(db_url)) >= 10,
            timeout_s=120,
            what="labels after the restart",
            log=tmp_path / "daemon.log",
        )
        wait_until(
            lambda: ls_helpers.task_count(ls_client, project_id) == 20,
            timeout_s=120,
            what="the next batch",
            log=tmp_path / "daemon.log",
        )
    finally:
        code = stop(daemon)
    assert code == 0  # graceful SIGTERM
    with Session(make_engine(db_url)) as session:
        kinds = {e.kind for e in session.exec(select(HealthEvent))}
    assert {"unavailable", "recovered", "stopped"} <= kinds


def test_wrong_token_is_refused_with_advice(workdir: tuple[Path, int, dict[str, str]], label_studio: Any) -> None:
    tmp_path, project_id, _ = workdir
    bad = "f" * 40
    env = daemon_env(tmp_path, label_studio, project_id, token=bad)
    result = subprocess.run([LABELLOOP, "run"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 2, output
    assert "token" in output.lower() and "LABELLOOP_LABEL_STUDIO__API_KEY" in output
    assert bad not in output


def test_second_daemon_on_the_same_store_refuses(workdir: tuple[Path, int, dict[str, str]], label_studio: Any) -> None:
    tmp_path, project_id, _ = workdir
    env = daemon_env(tmp_path, label_studio, project_id)
    pool_add(tmp_path, env)
    first = start_daemon(tmp_path, env)
    try:
        wait_until(lambda: (tmp_path / "state" / "labelloop.db.lock").exists(), timeout_s=60, what="the lock")
        time.sleep(1)
        second = subprocess.run([LABELLOOP, "run"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
        assert second.returncode == 3
        assert b"already running" in second.stderr
        status = subprocess.run(
            [LABELLOOP, "status", "--json"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=True
        )  # reads work while the daemon runs
        assert json.loads(status.stdout)["pool"]["items"] == 400
    finally:
        assert stop(first) == 0
