"""The Connector contract: the same assertions for FakeConnector and for Label Studio.

The ``harness`` fixture (conftest.py) gives a connector on a fresh project plus the
annotator's side of the tool. Timestamps are only ever compared with watermarks the
connector returned, never with this machine's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import Connector, OutgoingTask, PullResult, RemoteTaskState
from connectors.errors import ConnectorAuthError, ConnectorUnavailable
from tests.contract.conftest import CLASSES, Harness


def _tasks(count: int, *, batch_id: str = "b1", prefix: str = "item") -> list[OutgoingTask]:
    return [
        OutgoingTask(
            item_id=f"{prefix}-{n}",
            batch_id=batch_id,
            text=f"text number {n}",
            model_version="m1",
            predicted_label=CLASSES[n % len(CLASSES)],
            predicted_score=0.5,
            meta={"channel": "email"},
        )
        for n in range(count)
    ]


def _by_item(result: PullResult) -> dict[str, RemoteTaskState]:
    return {task.item_id: task for task in result.tasks}


def _ready(connector: Connector) -> Connector:
    connector.ensure_project(classes=list(CLASSES))
    return connector


def test_ensure_project_reports_the_projects_classes_in_order(harness: Harness) -> None:
    info = harness.connector.ensure_project(classes=["ignored", "because", "the project exists"])
    assert info.classes == CLASSES
    assert info.project_id


def test_check_names_the_user(harness: Harness) -> None:
    assert harness.connector.check()


def test_push_returns_an_id_per_item_and_is_idempotent(harness: Harness) -> None:
    connector = _ready(harness.connector)
    tasks = _tasks(5)
    first = connector.push(tasks)
    assert set(first) == {task.item_id for task in tasks}
    assert len(set(first.values())) == 5
    assert connector.push(tasks) == first
    assert harness.fresh_connector().push(tasks[2:]) == {k: first[k] for k in ("item-2", "item-3", "item-4")}
    assert harness.remote_task_count() == 5


def test_push_with_the_same_item_twice_creates_one_task(harness: Harness) -> None:
    connector = _ready(harness.connector)
    task = _tasks(1)[0]
    mapping = connector.push([task, task])
    assert list(mapping) == [task.item_id]
    assert harness.remote_task_count() == 1


def test_push_after_an_interrupted_push_creates_no_duplicates(harness: Harness) -> None:
    _ready(harness.connector)
    tasks = _tasks(6)
    with pytest.raises(ConnectorUnavailable):
        harness.push_interrupted(tasks, created=2)
    assert 2 <= harness.remote_task_count() < 6
    retry = _ready(harness.fresh_connector())
    mapping = retry.push(tasks)
    assert set(mapping) == {task.item_id for task in tasks}
    assert len(set(mapping.values())) == 6
    assert harness.remote_task_count() == 6


def test_pull_returns_current_annotations(harness: Harness) -> None:
    connector = _ready(harness.connector)
    mapping = connector.push(_tasks(3))
    harness.annotate("item-1", "neg")
    result = connector.pull(since=None)
    states = _by_item(result)
    assert set(states) == {"item-0", "item-1", "item-2"}
    assert states["item-1"].remote_task_id == mapping["item-1"]
    assert states["item-0"].annotations == ()
    (annotation,) = states["item-1"].annotations
    assert annotation.choices == ("neg",)
    assert annotation.annotator
    assert not annotation.is_skipped
    assert annotation.updated_at.tzinfo is not None
    assert states["item-1"].updated_at >= annotation.updated_at
    assert result.watermark == max(task.updated_at for task in result.tasks)


def test_an_edit_overwrites_the_choice_and_bumps_the_task(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(2))
    harness.annotate("item-0", "pos")
    before = connector.pull(since=None)
    harness.update_annotation("item-0", "neutral")
    after = connector.pull(since=before.watermark)
    state = _by_item(after)["item-0"]
    (annotation,) = state.annotations
    assert annotation.choices == ("neutral",)
    assert annotation.remote_annotation_id == _by_item(before)["item-0"].annotations[0].remote_annotation_id
    assert state.updated_at > before.watermark


def test_a_deleted_annotation_is_visible_as_an_unlabeled_task(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(2))
    harness.annotate("item-0", "pos")
    before = connector.pull(since=None)
    harness.delete_annotation("item-0")
    after = connector.pull(since=before.watermark)
    state = _by_item(after)["item-0"]
    assert state.annotations == ()
    assert state.updated_at > before.watermark


def test_a_skip_is_visible(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(2))
    before = connector.pull(since=None)
    harness.skip("item-1")
    after = connector.pull(since=before.watermark)
    (annotation,) = _by_item(after)["item-1"].annotations
    assert annotation.is_skipped
    assert annotation.choices == ()


def test_an_unknown_choice_comes_through_raw(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(1))
    harness.annotate("item-0", "not-a-class")
    (annotation,) = _by_item(connector.pull(since=None))["item-0"].annotations
    assert annotation.choices == ("not-a-class",)


def test_watermark_is_inclusive_and_only_moves_forward(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(3))
    everything = connector.pull(since=None)
    assert len(everything.tasks) == 3
    again = connector.pull(since=everything.watermark)  # at-or-after: the newest task comes again
    assert again.tasks
    assert all(task.updated_at == everything.watermark for task in again.tasks)
    assert again.watermark == everything.watermark
    later = everything.watermark + timedelta(hours=1)
    nothing = connector.pull(since=later)
    assert nothing.tasks == ()
    assert nothing.watermark == later
    harness.annotate("item-0", "pos")
    changed = connector.pull(since=everything.watermark)
    assert "item-0" in _by_item(changed)
    assert changed.watermark > everything.watermark


def test_pull_with_a_naive_since_is_a_programming_error(harness: Harness) -> None:
    connector = _ready(harness.connector)
    with pytest.raises(ValueError, match="timezone"):
        connector.pull(since=datetime(2026, 1, 1))


def test_an_empty_project_pulls_nothing_with_a_usable_watermark(harness: Harness) -> None:
    result = _ready(harness.connector).pull(since=None)
    assert result.tasks == ()
    assert result.watermark - timedelta(days=1) < datetime.now(UTC)


def test_count_waiting_counts_tasks_nobody_answered(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(4))
    assert connector.count_waiting() == 4
    harness.annotate("item-0", "pos")
    harness.skip("item-1")
    harness.add_draft("item-2")  # started, not submitted: still waiting
    assert connector.count_waiting() == 2


def test_withdraw_never_deletes_a_touched_task(harness: Harness) -> None:
    connector = _ready(harness.connector)
    mapping = connector.push(_tasks(5))
    harness.annotate("item-0", "pos")
    harness.skip("item-1")
    harness.add_draft("item-2")
    ids = [mapping[f"item-{n}"] for n in range(5)] + ["987654321"]
    gone = connector.withdraw(ids)
    assert gone == [mapping["item-3"], mapping["item-4"], "987654321"]
    assert {task.item_id for task in connector.pull(since=None).tasks} == {"item-0", "item-1", "item-2"}
    assert connector.count_waiting() == 1  # the drafted one


def test_every_annotators_answer_and_a_ground_truth_star_come_through(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(1))
    first, second = harness.new_annotator(), harness.new_annotator()
    starred = harness.annotate_as("item-0", "pos", first)
    harness.annotate_as("item-0", "neg", second)
    result = connector.pull(since=None)
    answers = _by_item(result)["item-0"].annotations
    assert sorted((a.annotator, a.choices, a.is_ground_truth) for a in answers) == [
        (first, ("pos",), False), (second, ("neg",), False)]
    harness.mark_ground_truth("item-0", starred)
    changed = _by_item(connector.pull(since=result.watermark))
    assert changed["item-0"].updated_at > result.watermark  # the star counts as an update of the task
    assert [a.remote_annotation_id for a in changed["item-0"].annotations if a.is_ground_truth] == [starred]


def test_a_task_is_complete_once_as_many_people_answered_as_the_overlap(harness: Harness) -> None:
    connector = _ready(harness.connector)
    harness.want_answers_from(2)
    connector.push(_tasks(1))
    first, second = harness.new_annotator(), harness.new_annotator()
    harness.annotate_as("item-0", "pos", first)
    assert _by_item(connector.pull(since=None))["item-0"].is_complete is False  # still handed out
    harness.annotate_as("item-0", "pos", second)
    assert _by_item(connector.pull(since=None))["item-0"].is_complete is True


def test_first_waiting_lists_untouched_tasks_in_push_order(harness: Harness) -> None:
    connector = _ready(harness.connector)
    mapping = connector.push(_tasks(6))
    harness.annotate("item-0", "pos")
    harness.skip("item-1")
    harness.add_draft("item-3")  # someone started it
    assert connector.first_waiting(2) == [mapping["item-2"], mapping["item-4"]]
    assert connector.first_waiting(10) == [mapping["item-2"], mapping["item-4"], mapping["item-5"]]
    assert connector.first_waiting(0) == []


def test_the_task_order_is_push_order_until_the_project_serves_at_random(harness: Harness) -> None:
    connector = _ready(harness.connector)
    assert connector.serves_in_push_order()
    harness.serve_at_random()
    assert not connector.serves_in_push_order()


def test_a_deleted_task_is_reported_on_the_next_full_pull(harness: Harness) -> None:
    connector = _ready(harness.connector)
    connector.push(_tasks(3))
    connector.pull(since=None)
    deleted = harness.delete_task("item-2")
    result = connector.pull(since=None)
    assert result.deleted_task_ids == (deleted,)
    assert "item-2" not in _by_item(result)
    assert connector.pull(since=None).deleted_task_ids == ()  # reported once


def test_missing_names_the_given_tasks_that_are_gone_without_a_listing(harness: Harness) -> None:
    connector = _ready(harness.connector)
    mapping = connector.push(_tasks(3))
    deleted = harness.delete_task("item-1")
    asked = [mapping["item-2"], deleted, mapping["item-0"], "999999", "not-a-task"]
    assert connector.missing(asked) == [deleted, "999999", "not-a-task"]  # in the order given
    assert connector.missing([]) == []
    assert connector.pull(since=None).deleted_task_ids == ()  # already reported: not again by the full read


def test_list_tasks_is_a_cheap_census_with_counts(harness: Harness) -> None:
    connector = _ready(harness.connector)
    mapping = connector.push(_tasks(3))
    harness.annotate("item-0", "pos")
    harness.skip("item-1")
    summaries = {summary.remote_task_id: summary for summary in connector.list_tasks()}
    assert set(summaries) == set(mapping.values())
    assert (summaries[mapping["item-0"]].annotation_count, summaries[mapping["item-0"]].skip_count) == (1, 0)
    assert (summaries[mapping["item-1"]].annotation_count, summaries[mapping["item-1"]].skip_count) == (0, 1)
    assert (summaries[mapping["item-2"]].annotation_count, summaries[mapping["item-2"]].skip_count) == (0, 0)


@pytest.mark.parametrize("kind", ["pat", "legacy"])
def test_both_token_kinds_work(harness: Harness, kind: str) -> None:
    connector = harness.connector_with_token(kind)
    assert connector.check()
    connector.ensure_project(classes=list(CLASSES))
    mapping = connector.push(_tasks(1, prefix=kind))
    assert _by_item(connector.pull(since=None))[f"{kind}-0"].remote_task_id == mapping[f"{kind}-0"]


def test_a_wrong_token_is_an_auth_error_that_says_what_to_do(harness: Harness) -> None:
    wrong = "0123456789abcdef0123456789abcdef01234567"
    connector = harness.connector_with_token(wrong)
    with pytest.raises(ConnectorAuthError) as caught:
        connector.check()
    assert "LABELLOOP_LABEL_STUDIO__API_KEY" in str(caught.value)
    assert wrong not in str(caught.value)
    assert wrong not in repr(connector)


def test_an_unreachable_tool_is_unavailable_not_rejected(harness: Harness) -> None:
    connector = harness.unreachable()
    with pytest.raises(ConnectorUnavailable, match="running"):
        connector.check()
