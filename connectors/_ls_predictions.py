"""Give waiting tasks a newer model's prediction in place of our older ones, and make it the project's current version.

The calls here raise the SDK's and httpx's own errors; the connector's ``translated``
block turns them into ``ConnectorError`` subclasses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

from label_studio_sdk import LabelStudio, PredictionRequest

from connectors import _ls_lookup as lk
from connectors import _ls_tasks as lt
from connectors._label_config import ChoicesControl
from connectors.base import PredictionUpdate, Refreshed

__all__ = ["refresh"]

log = lk.log
_CHUNK = 500  # predictions per bulk import request


def refresh(
    client: LabelStudio,
    project_id: int,
    control: ChoicesControl,
    updates: Sequence[PredictionUpdate],
    *,
    page_size: int,
    lookup_chunk_size: int,
) -> Refreshed:
    """Import one prediction per update whose label is a class of the project and whose task exists.

    An untouched task whose predictions are all ours loses them first (:func:`_drop_predictions_of_untouched`).

    Tasks are checked first: one deleted task made Label Studio refuse its whole chunk. Those
    gone are returned as deleted, sorted by id. The project's ``model_version`` moves to the
    updates' version when they share one, so Label Studio pre-annotates from it.
    """
    wanted = [u for u in updates
              if u.predicted_label is not None and u.predicted_label in control.classes and u.remote_task_id.isdigit()]
    versions = {update.model_version for update in wanted}
    present: set[str] = set()
    ours_only: list[int] = []  # untouched tasks whose every prediction is one of ours: superseded now
    for chunk in lt.id_chunks([u.remote_task_id for u in wanted], max_items=lookup_chunk_size):
        by_id = [lt.dm_filter("id", "in_list", "Number", [int(task_id) for task_id in chunk])]
        for task in lk.iter_tasks(client, project_id, by_id, fields="all", include=_LISTED, page_size=page_size):
            present.add(str(task.id))
            if _only_ours(getattr(task, "predictions_model_versions", None)):
                ours_only.append(int(task.id))
    if len(present) < len(wanted):
        log.info("refresh_predictions: %s tasks were deleted in project %s; skipped", len(wanted) - len(present),
                 project_id)
    deleted = tuple(sorted({u.remote_task_id for u in wanted} - present, key=lt.numeric_order))
    wanted = [update for update in wanted if update.remote_task_id in present]
    for chunk in lt.id_chunks([str(task_id) for task_id in ours_only], max_items=lookup_chunk_size):
        _drop_predictions_of_untouched(client, project_id, [int(task_id) for task_id in chunk])
    for start in range(0, len(wanted), _CHUNK):  # one request per chunk, not per task
        client.projects.import_predictions(id=project_id, request=[
            PredictionRequest(
                task=int(update.remote_task_id),
                result=lt.choices_result(str(update.predicted_label), control=control),
                model_version=update.model_version,
                score=update.predicted_score,
            )
            for update in wanted[start : start + _CHUNK]
        ])
    if len(versions) == 1:
        client.projects.update(id=project_id, model_version=versions.pop())
    return Refreshed(len(wanted), deleted)


_LISTED = "id,predictions_model_versions"
# labelloop's model versions (daemon.training.model_version); another tool's (an ML backend's) differ
OUR_MODEL_VERSION = re.compile(r"[0-9a-f]{12}")


def _only_ours(listed: object) -> bool:
    """Whether a task's ``predictions_model_versions`` (Label Studio's comma-joined, 500-character summary)
    names only versions of ours. A summary cut short ends in a piece that is no version: not ours."""
    pieces = [piece.strip() for piece in str(listed or "").split(",") if piece.strip()]
    return bool(pieces) and all(OUR_MODEL_VERSION.fullmatch(piece) for piece in pieces)


def _drop_predictions_of_untouched(client: LabelStudio, project_id: int, task_ids: list[int]) -> None:
    """Delete every prediction of the given tasks that nobody annotated, skipped or drafted (one request).

    Each retrain added one more to every waiting task and none went (QA: up to 8 per task within 40
    minutes); Label Studio shows only the project's current ``model_version``, so the older ones were
    dead weight in its database. An answered or started task keeps its predictions: they record what
    its annotator was shown. The server re-applies the untouched conditions.
    """
    untouched = [lt.dm_filter("id", "in_list", "Number", task_ids), *lk.UNTOUCHED]
    client.actions.create(
        id="delete_tasks_predictions",
        project=project_id,
        filters=cast(Any, {"conjunction": "and", "items": untouched}),
        selected_items=cast(Any, {"all": False, "included": task_ids}),
    )
