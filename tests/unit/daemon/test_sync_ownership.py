"""Whose answers a sync takes: tasks of this store's items, and of an item's tasks the one its label came from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from connectors.base import AnnotationState, OutgoingTask, RemoteTaskState
from daemon.context import LoopContext
from daemon.queries import status_report
from daemon.store import LabelRecord, LabelStatus
from daemon.sync import apply_task_states, sync
from tests.unit.daemon.test_loop import build_world

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoopContext:
    monkeypatch.chdir(tmp_path)
    return build_world(tmp_path)[0]


def task(remote_task_id: str, *answers: tuple[str, datetime], item_id: str = "it-001") -> RemoteTaskState:
    annotations = tuple(AnnotationState(f"{remote_task_id}-{n}", (label,), f"ann-{remote_task_id}", at)
                        for n, (label, at) in enumerate(answers))
    updated = max((at for _, at in answers), default=T0)
    return RemoteTaskState(item_id=item_id, remote_task_id=remote_task_id, updated_at=updated, annotations=annotations)


def label(ctx: LoopContext, item_id: str = "it-001") -> tuple[LabelStatus, str | None] | None:
    with Session(ctx.engine) as session:
        record = session.get(LabelRecord, item_id)
        return None if record is None else (record.status, record.label)


def apply(ctx: LoopContext, *tasks: RemoteTaskState) -> None:
    with Session(ctx.engine) as session:
        apply_task_states(session, list(tasks))
        session.commit()


def test_an_untouched_task_of_the_item_does_not_retract_the_label_another_task_gave(ctx: LoopContext) -> None:
    # after a project swap and back (or a re-imported task), every full read retracted the label
    apply(ctx, task("12", ("billing", T0)))
    apply(ctx, task("11"))
    assert label(ctx) == (LabelStatus.LABELED, "billing")
    apply(ctx, task("12"))  # the answer deleted in the task it came from: retracted
    assert label(ctx) == (LabelStatus.RETRACTED, None)


def test_of_two_tasks_of_one_item_the_latest_answer_holds_in_either_order(ctx: LoopContext) -> None:
    early, late = task("11", ("delivery", T0)), task("12", ("billing", T0 + timedelta(hours=1)))
    apply(ctx, late, early)
    assert label(ctx) == (LabelStatus.LABELED, "billing")
    apply(ctx, early)  # read again (a full read): no flip
    assert label(ctx) == (LabelStatus.LABELED, "billing")
    apply(ctx, task("11", ("delivery", T0), ("fraud", T0 + timedelta(hours=2))))  # a newer answer there wins
    assert label(ctx) == (LabelStatus.LABELED, "fraud")


def test_an_answer_deleted_in_a_duplicate_task_gives_back_the_label_the_first_task_holds(ctx: LoopContext) -> None:
    """A task re-imported with the same item (QA): its answer, deleted, retracted the item's label for
    good; the first task's older answer was refused on every later read as older than the retraction."""
    first, duplicate = task("6", ("billing", T0)), task("81", ("delivery", T0 + timedelta(hours=1)))
    emptied = RemoteTaskState(item_id="it-001", remote_task_id="81", updated_at=T0 + timedelta(hours=2),
                              annotations=())
    apply(ctx, first)
    apply(ctx, duplicate)
    assert label(ctx) == (LabelStatus.LABELED, "delivery")  # the latest answer holds
    apply(ctx, emptied)  # that answer deleted: nothing left in the duplicate, so retracted until …
    assert label(ctx) == (LabelStatus.RETRACTED, None)
    apply(ctx, first, emptied)  # … a full read lists the first task again, whichever it reads first
    assert label(ctx) == (LabelStatus.LABELED, "billing")
    apply(ctx, emptied, first)
    assert label(ctx) == (LabelStatus.LABELED, "billing")


def test_in_one_read_an_emptied_duplicate_gives_way_to_the_other_tasks_answer(ctx: LoopContext) -> None:
    apply(ctx, task("6", ("billing", T0)), task("81", ("delivery", T0 + timedelta(hours=1))))
    assert label(ctx) == (LabelStatus.LABELED, "delivery")
    emptied = RemoteTaskState(item_id="it-001", remote_task_id="81", updated_at=T0 + timedelta(hours=2),
                              annotations=())
    apply(ctx, task("6", ("billing", T0)), emptied)  # a full read: the duplicate's answer gone, read last
    assert label(ctx) == (LabelStatus.LABELED, "billing")


def test_a_skip_in_another_task_does_not_undo_an_answer(ctx: LoopContext) -> None:
    apply(ctx, task("12", ("billing", T0)))
    skipped = AnnotationState("11-0", (), "ann", T0 + timedelta(hours=1), is_skipped=True)
    apply(ctx, RemoteTaskState("it-001", "11", T0 + timedelta(hours=1), (skipped,)))
    assert label(ctx) == (LabelStatus.LABELED, "billing")


def test_answers_for_items_this_store_does_not_hold_are_not_its_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        ) -> None:
    # a second store bound to the project counted the first store's 80 labels in status
    monkeypatch.chdir(tmp_path)
    ctx, fake, _ = build_world(tmp_path)
    fake.push([OutgoingTask(item_id="another-store-7", batch_id="theirs", text="not in this pool")])
    fake.annotate("another-store-7", "billing")
    sync(ctx)
    assert label(ctx, "another-store-7") is None
    with Session(ctx.engine) as session:
        report = status_report(session)
    assert report.labels["labeled"] == 0
