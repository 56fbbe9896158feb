"""Give waiting tasks a newer model's prediction, and make it the project's current version.

The calls here raise the SDK's and httpx's own errors; the connector's ``translated``
block turns them into ``ConnectorError`` subclasses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

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
) -> tuple[Refreshed, float]:
    """Import one prediction per update whose label is a class of the project and whose task exists.

    Returns what was refreshed, and the seconds Label Studio took to import the predictions.

    Tasks are checked first: one deleted task made Label Studio refuse its whole chunk. Those
    gone are returned as deleted, sorted by id. The project's ``model_version`` moves to the
    updates' version when they share one, so Label Studio pre-annotates from it.
    """
    wanted = [u for u in updates
              if u.predicted_label is not None and u.predicted_label in control.classes and u.remote_task_id.isdigit()]
    versions = {update.model_version for update in wanted}
    present: set[str] = set()
    for chunk in lt.id_chunks([u.remote_task_id for u in wanted], max_items=lookup_chunk_size):
        present |= lk.existing_ids(client, project_id, [int(task_id) for task_id in chunk], page_size=page_size)
    if len(present) < len(wanted):
        log.info("refresh_predictions: %s tasks were deleted in project %s; skipped", len(wanted) - len(present),
                 project_id)
    deleted = tuple(sorted({u.remote_task_id for u in wanted} - present, key=lt.numeric_order))
    wanted = [update for update in wanted if update.remote_task_id in present]
    began = time.monotonic()
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
    import_s = time.monotonic() - began
    if len(versions) == 1:
        client.projects.update(id=project_id, model_version=versions.pop())
    return Refreshed(len(wanted), deleted), import_s
