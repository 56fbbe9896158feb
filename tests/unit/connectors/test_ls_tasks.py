"""Task payloads, Data Manager filters and parsing for the Label Studio connector (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from connectors import _ls_tasks as lt
from connectors._label_config import ChoicesControl
from connectors.base import OutgoingTask

CONTROL = ChoicesControl(from_name="label", to_name="text", classes=("pos", "neg"), data_key="text")


def test_payload_has_flat_keys_meta_that_cannot_override_them_and_a_prediction() -> None:
    task = OutgoingTask(
        item_id="i1",
        batch_id="b1",
        text="hello",
        model_version="m",
        predicted_label="neg",
        predicted_score=0.55,
        meta={"channel": "mail", "al_batch_id": "x", "body": "x"},
    )
    payload = lt.task_payload(task, control=CONTROL, text_key="body")
    assert payload["data"] == {
        "channel": "mail",
        "body": "hello",
        "al_item_id": "i1",
        "al_batch_id": "b1",
        "al_model_version": "m",  # no score and no control flag: annotators see the data (QA)
    }
    assert payload["predictions"] == [
        {
            "model_version": "m",
            "score": 0.55,
            "result": [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["neg"]}}
            ],
        }
    ]


def test_no_prediction_for_a_label_outside_the_classes_or_without_one() -> None:
    outside = OutgoingTask(item_id="i", batch_id="b", text="t", predicted_label="maybe")
    assert "predictions" not in lt.task_payload(outside, control=CONTROL, text_key="text")
    assert "predictions" not in lt.task_payload(OutgoingTask("i", "b", "t"), control=CONTROL, text_key="text")


def test_remote_state_keeps_raw_choices_skips_and_annotators() -> None:
    task = SimpleNamespace(
        id=12,
        data={"al_item_id": "i9"},
        updated_at=datetime(2026, 5, 1, 12, tzinfo=UTC),
        annotations=[
            {
                "id": 3,
                "result": [
                    {"type": "choices", "from_name": "label", "value": {"choices": ["weird"]}},
                    {"type": "choices", "from_name": "other", "value": {"choices": ["no"]}},
                    {"type": "textarea", "from_name": "label", "value": {"text": ["x"]}},
                ],
                "completed_by": 5,
                "updated_at": "2026-05-01T11:59:00.123456Z",
                "was_cancelled": False,
            },
            {
                "id": 4,
                "result": [],
                "completed_by": {"id": 6},
                "updated_at": "2026-05-01T11:59:30Z",
                "was_cancelled": True,
            },
        ],
    )
    state = lt.remote_state(task, from_name="label", annotators={5: "five@example.com"})
    assert (state.item_id, state.remote_task_id) == ("i9", "12")
    first, second = state.annotations
    assert (first.remote_annotation_id, first.choices, first.annotator, first.is_skipped) == (
        "3",
        ("weird",),
        "five@example.com",
        False,
    )
    assert first.updated_at == datetime(2026, 5, 1, 11, 59, 0, 123456, tzinfo=UTC)
    assert (second.choices, second.annotator, second.is_skipped) == ((), "6", True)
    aliased = lt.remote_state(task, from_name="label", annotators={}, class_of=lambda c: {"weird": "W"}.get(c, c))
    assert aliased.annotations[0].choices == ("W",)


def test_dm_time_is_utc_with_microseconds_and_refuses_naive_times() -> None:
    moment = datetime(2026, 3, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert lt.dm_time(moment) == "2026-03-01T12:00:00.000005Z"
    with pytest.raises(ValueError, match="timezone"):
        lt.dm_time(datetime(2026, 3, 1))


def test_dm_query_is_json_with_and_conjunction() -> None:
    query = json.loads(lt.dm_query([lt.OURS], ordering="tasks:id"))
    assert query == {"filters": {"conjunction": "and", "items": [lt.OURS]}, "ordering": ["tasks:id"]}


def test_id_chunks_respect_both_limits_and_keep_order() -> None:
    ids = [f"item-{n:04d}" for n in range(100)]
    chunks = list(lt.id_chunks(ids, max_items=30, max_chars=200))
    assert [i for chunk in chunks for i in chunk] == ids
    assert all(len(chunk) <= 30 and len(json.dumps(chunk)) <= 200 + 2 * len(chunk) for chunk in chunks)
    assert list(lt.id_chunks(["x" * 5000], max_items=10)) == [["x" * 5000]]
