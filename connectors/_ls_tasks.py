"""Label Studio task payloads, Data Manager filters and parsing, kept apart from the I/O."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from connectors._label_config import ChoicesControl
from connectors.base import AnnotationState, OutgoingTask, RemoteTaskState, TaskSummary

__all__ = [
    "DATA_BATCH_ID",
    "DATA_ITEM_ID",
    "DATA_MODEL_VERSION",
    "EPOCH",
    "OURS",
    "PULL_FIELDS",
    "SUMMARY_FIELDS",
    "annotator_id",
    "dm_filter",
    "dm_query",
    "dm_time",
    "id_chunks",
    "numeric_order",
    "remote_state",
    "summary",
    "task_payload",
]

# Flat keys in task.data, so the Data Manager can filter and sort on them.
DATA_ITEM_ID = "al_item_id"
DATA_BATCH_ID = "al_batch_id"
DATA_MODEL_VERSION = "al_model_version"
_RESERVED_PREFIX = "al_"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DM_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what the Data Manager's Datetime filters parse

# The `include` query parameter (drf-flex-fields) restricts the task's fields AND those of
# the annotations nested in it, so the list names fields of both.
PULL_FIELDS = "id,data,updated_at,is_labeled,annotations,result,was_cancelled,ground_truth,completed_by"
SUMMARY_FIELDS = "id,updated_at,total_annotations,cancelled_annotations"


def dm_filter(column: str, operator: str, value_type: str, value: Any) -> dict[str, Any]:
    """One Data Manager filter item on a task column (``data.<key>`` for task data)."""
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": value_type, "value": value}


OURS = dm_filter(f"data.{DATA_ITEM_ID}", "empty", "String", False)  # tasks labelloop created


def dm_query(filters: Iterable[Mapping[str, Any]], *, ordering: str | None = None) -> str:
    """The JSON ``query`` parameter of ``GET /api/tasks``: AND of ``filters``."""
    query: dict[str, Any] = {"filters": {"conjunction": "and", "items": list(filters)}}
    if ordering is not None:
        query["ordering"] = [ordering]
    return json.dumps(query)


def id_chunks(ids: Sequence[str], *, max_items: int, max_chars: int = 1500) -> Iterator[list[str]]:
    """Split ids for ``in_list`` filters that travel in the URL (servers cap it near 4-8 KB)."""
    chunk: list[str] = []
    size = 0
    for item_id in ids:
        cost = len(json.dumps(item_id)) + 2
        if chunk and (len(chunk) >= max_items or size + cost > max_chars):
            yield chunk
            chunk, size = [], 0
        chunk.append(item_id)
        size += cost
    if chunk:
        yield chunk


def dm_time(moment: datetime) -> str:
    """Format an aware datetime for a Datetime filter (UTC, microseconds).

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    return moment.astimezone(UTC).strftime(_DM_TIME_FORMAT)


def task_payload(task: OutgoingTask, *, control: ChoicesControl, text_key: str) -> dict[str, Any]:
    """The import JSON for one task: data (meta first, ours win) and the pre-annotation.

    The prediction is left out when ``predicted_label`` is not one of the project's
    classes: Label Studio may reject the whole import for one invalid prediction.
    """
    data: dict[str, Any] = {
        key: value for key, value in task.meta.items() if key != text_key and not key.startswith(_RESERVED_PREFIX)
    }
    data.update(
        {
            text_key: task.text,
            DATA_ITEM_ID: task.item_id,
            DATA_BATCH_ID: task.batch_id,
        }
    )
    if task.model_version is not None:
        data[DATA_MODEL_VERSION] = task.model_version
    payload: dict[str, Any] = {"data": data}
    if task.predicted_label is not None and task.predicted_label in control.classes:
        prediction: dict[str, Any] = {
            "model_version": task.model_version or "labelloop",
            "result": choices_result(task.predicted_label, control=control),
        }
        if task.predicted_score is not None:
            prediction["score"] = task.predicted_score
        payload["predictions"] = [prediction]
    return payload


def choices_result(choice: str, *, control: ChoicesControl) -> list[dict[str, Any]]:
    """A Label Studio ``result`` choosing ``choice`` in the project's ``<Choices>``."""
    return [
        {
            "from_name": control.from_name,
            "to_name": control.to_name,
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]


def remote_state(
    task: Any, *, from_name: str, annotators: Mapping[int, str], class_of: Callable[[str], str] = str
) -> RemoteTaskState:
    """Turn a listed task (``PULL_FIELDS``) into its current state; ``class_of`` names each choice's class
    (:meth:`ChoicesControl.class_of`: a Choice's value written through the API becomes its alias)."""
    annotations = tuple(
        _annotation(raw, from_name=from_name, annotators=annotators, class_of=class_of)
        for raw in (task.annotations or ())
    )
    return RemoteTaskState(
        item_id=str(task.data[DATA_ITEM_ID]),
        remote_task_id=str(task.id),
        updated_at=_aware(task.updated_at),
        annotations=annotations,
        is_complete=bool(getattr(task, "is_labeled", True)),  # as many people answered as the task's overlap
    )


def summary(task: Any) -> TaskSummary:
    """Turn a listed task (``SUMMARY_FIELDS``) into a :class:`TaskSummary`."""
    return TaskSummary(
        remote_task_id=str(task.id),
        annotation_count=int(task.total_annotations or 0),
        skip_count=int(task.cancelled_annotations or 0),
        updated_at=_aware(task.updated_at),
    )


def annotator_id(raw: Mapping[str, Any]) -> int | None:
    """The user id in an annotation's ``completed_by`` (an id, or a user object when expanded)."""
    who = raw.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id")
    return who if isinstance(who, int) else None


def _annotation(
    raw: Mapping[str, Any], *, from_name: str, annotators: Mapping[int, str], class_of: Callable[[str], str]
) -> AnnotationState:
    choices: list[str] = []
    for region in raw.get("result") or ():
        if region.get("type") == "choices" and region.get("from_name", from_name) == from_name:
            choices.extend(class_of(str(choice)) for choice in (region.get("value") or {}).get("choices") or ())
    who = annotator_id(raw)
    return AnnotationState(
        remote_annotation_id=str(raw["id"]),
        choices=tuple(choices),
        annotator=annotators.get(who, str(who)) if who is not None else None,
        updated_at=_aware(raw.get("updated_at")),
        is_skipped=bool(raw.get("was_cancelled")),
        is_ground_truth=bool(raw.get("ground_truth")),
    )


def _aware(value: datetime | str | None) -> datetime:
    if value is None:
        return EPOCH
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def numeric_order(task_id: str) -> tuple[int, str]:
    """Sort key for task ids: numerically, the odd non-numeric id first."""
    return (int(task_id), "") if task_id.isdigit() else (0, task_id)
