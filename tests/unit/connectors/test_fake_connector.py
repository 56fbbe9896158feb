"""FakeConnector's test hooks: what the daemon's unit tests drive it with.

Its protocol semantics are pinned by tests/contract (the same assertions as Label Studio).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import OutgoingTask
from connectors.errors import ConnectorAuthError, ConnectorRejected, ConnectorUnavailable
from connectors.fake import FakeConnector

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _fake(**kwargs: object) -> FakeConnector:
    fake = FakeConnector(classes=("pos", "neg"), **kwargs)  # type: ignore[arg-type]
    fake.push([OutgoingTask(item_id=f"i{n}", batch_id="b", text="t") for n in range(3)])
    return fake


def test_the_injected_clock_stamps_events_strictly_increasing() -> None:
    fake = _fake(clock=lambda: T0)
    fake.annotate("i0", "pos")
    fake.annotate("i1", "neg")
    first, second = (fake.pull(since=None).tasks[n].updated_at for n in (0, 1))
    assert T0 < first < second < T0 + timedelta(seconds=1)


def test_an_explicit_time_is_kept_and_later_events_come_after_it() -> None:
    fake = _fake(clock=lambda: T0)
    fake.annotate("i0", "pos", annotator="ann@example.com", at=T0 + timedelta(hours=1))
    (annotation,) = fake.pull(since=T0 + timedelta(hours=1)).tasks[0].annotations
    assert (annotation.updated_at, annotation.annotator) == (T0 + timedelta(hours=1), "ann@example.com")
    fake.skip("i1")
    assert fake.pull(since=None).watermark > T0 + timedelta(hours=1)


def test_fail_next_fails_exactly_that_many_calls() -> None:
    fake = _fake()
    fake.fail_next(2, ConnectorUnavailable("blip"))
    for _ in range(2):
        with pytest.raises(ConnectorUnavailable, match="blip"):
            fake.count_waiting()
    assert fake.count_waiting() == 3
    assert fake.calls[-3:] == ["count_waiting"] * 3


def test_the_outage_switch() -> None:
    fake = _fake()
    fake.is_down = True
    with pytest.raises(ConnectorUnavailable):
        fake.pull(since=None)
    fake.is_down = False
    assert len(fake.pull(since=None).tasks) == 3


def test_a_crash_in_the_middle_of_a_push_leaves_the_first_tasks() -> None:
    fake = FakeConnector(classes=("pos",))
    tasks = [OutgoingTask(item_id=f"i{n}", batch_id="b", text="t") for n in range(4)]
    fake.crash_push_after(3)
    with pytest.raises(ConnectorUnavailable):
        fake.push(tasks)
    assert len(fake.list_tasks()) == 3
    assert len(set(fake.push(tasks).values())) == 4


def test_a_key_outside_the_accepted_ones_is_refused() -> None:
    with pytest.raises(ConnectorAuthError):
        FakeConnector(classes=("a",), api_key="old", accepted_keys=["new"]).check()


def test_a_project_must_exist_or_be_created_with_classes() -> None:
    fake = FakeConnector()
    with pytest.raises(ConnectorRejected):
        fake.push([])
    with pytest.raises(ConnectorRejected):
        fake.ensure_project(classes=None)
    assert fake.ensure_project(classes=["b", "a"]).classes == ("b", "a")
    with pytest.raises(ConnectorRejected, match="Choices"):
        FakeConnector(classes=()).ensure_project(classes=["x"])


def test_deleting_a_given_annotation_keeps_the_others() -> None:
    fake = _fake()
    first = fake.annotate("i0", "pos")
    fake.annotate("i0", "neg", annotator="second@example.com")
    fake.delete_annotation("i0", annotation_id=first)
    (left,) = fake.pull(since=None).tasks[0].annotations
    assert left.choices == ("neg",)
    with pytest.raises(LookupError):
        fake.delete_annotation("i1")
    with pytest.raises(LookupError):
        fake.annotate("nope", "pos")


def test_a_deleted_task_can_be_pushed_again_as_a_new_task() -> None:
    fake = _fake()
    old = fake.delete_task("i2")
    again = fake.push([OutgoingTask(item_id="i2", batch_id="b2", text="t")])
    assert again["i2"] != old
    assert fake.pull(since=None).deleted_task_ids == (old,)
