"""Finding things in a Label Studio project: its tasks by page, by item id, and the project by title.

The calls here raise the SDK's and httpx's own errors; the connector's ``translated``
block turns them into ``ConnectorError`` subclasses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from label_studio_sdk import LabelStudio
from label_studio_sdk.core import ApiError

from connectors import _ls_tasks as lt
from connectors._label_config import choices_config
from connectors.errors import ConnectorRejected

__all__ = [
    "NO_ANNOTATION",
    "SEQUENTIAL_SAMPLING",
    "UNTOUCHED",
    "delete_untouched",
    "find_by_item_ids",
    "find_or_create_project",
    "iter_tasks",
    "user_names",
]

log = logging.getLogger("connectors.label_studio")  # one logger for the adapter, whichever module logs

NO_ANNOTATION = (
    lt.dm_filter("total_annotations", "equal", "Number", 0),
    lt.dm_filter("cancelled_annotations", "equal", "Number", 0),
)
SEQUENTIAL_SAMPLING = "Sequential sampling"  # a project's `sampling`: serve waiting tasks by id
UNTOUCHED = (*NO_ANNOTATION, lt.dm_filter("draft_exists", "equal", "Boolean", False))


def iter_tasks(
    client: LabelStudio,
    project_id: int,
    filters: Sequence[Mapping[str, Any]],
    *,
    fields: str,
    include: str,
    page_size: int,
) -> Iterator[Any]:
    """Yield matching tasks by ascending id, paging on ``id >`` (stable under inserts/deletes)."""
    after = 0
    while True:
        query = lt.dm_query([*filters, lt.dm_filter("id", "greater", "Number", after)], ordering="tasks:id")
        page: Any = client.tasks.list(
            project=project_id, query=query, fields=fields, include=include, page=1, page_size=page_size
        )
        items = list(page.items or [])
        yield from items
        if len(items) < page_size:
            return
        after = max(int(task.id) for task in items)


def find_by_item_ids(
    client: LabelStudio, project_id: int, item_ids: Sequence[str], *, page_size: int, chunk_size: int
) -> dict[str, str]:
    """Existing tasks for these items, ``{item_id: task id}``; the oldest wins if an item has several."""
    found: dict[str, str] = {}
    duplicates = 0
    for chunk in lt.id_chunks(item_ids, max_items=chunk_size):
        by_item = lt.dm_filter(f"data.{lt.DATA_ITEM_ID}", "in_list", "String", chunk)
        listed = iter_tasks(client, project_id, [by_item], fields="task_only", include="id,data", page_size=page_size)
        for task in listed:
            item_id = str(task.data.get(lt.DATA_ITEM_ID))
            if item_id in found:
                duplicates += 1
            else:
                found[item_id] = str(task.id)
    if duplicates:
        log.warning(
            "project %s holds %s duplicate tasks for the same items; using the oldest of each", project_id, duplicates
        )
    return found


def delete_untouched(client: LabelStudio, project_id: int, task_ids: list[int], *, page_size: int) -> set[str]:
    """Delete the tasks among ``task_ids`` that nobody annotated, skipped or drafted; return the ids still there.

    The delete is a Data Manager action that re-applies the same filters server-side, so a
    task annotated between the check and the delete is kept. Label Studio 1.23 lists the
    matching ids and then unlinks them in a second statement, and (without Redis) deletes them
    with their annotations in the same request: an answer submitted in that moment is lost, so
    callers must not withdraw tasks someone may have open.
    """
    by_id = [lt.dm_filter("id", "in_list", "Number", task_ids)]
    untouched = [*by_id, *UNTOUCHED]
    listed = iter_tasks(client, project_id, untouched, fields="task_only", include="id", page_size=page_size)
    candidates = [int(task.id) for task in listed]
    if candidates:
        client.actions.create(
            id="delete_tasks",
            project=project_id,
            filters=cast(Any, {"conjunction": "and", "items": untouched}),
            selected_items=cast(Any, {"all": False, "included": candidates}),
        )
    return existing_ids(client, project_id, task_ids, page_size=page_size)


def existing_ids(client: LabelStudio, project_id: int, task_ids: list[int], *, page_size: int) -> set[str]:
    """The ids among ``task_ids`` that are tasks of the project now."""
    by_id = [lt.dm_filter("id", "in_list", "Number", task_ids)]
    listed = iter_tasks(client, project_id, by_id, fields="task_only", include="id", page_size=page_size)
    return {str(task.id) for task in listed}


def find_or_create_project(
    client: LabelStudio, *, title: str, classes: Sequence[str] | None, text_key: str, display_url: str
) -> tuple[int, str | None, str | None]:
    """The oldest project titled ``title``, else a new one with ``classes``: ``(id, title, label config)``.

    Raises:
        ConnectorRejected: no such project and no classes to create it.
    """
    pager: Any = client.projects.list(title=title, include="id,title,label_config", page_size=100)
    matches = sorted(
        ((int(p.id), p) for p in pager if p.title == title and p.id is not None), key=lambda match: match[0]
    )
    if len(matches) > 1:
        log.warning("%s projects are titled %r; using the oldest, %s", len(matches), title, matches[0][0])
    if matches:
        found = matches[0][1]
        return matches[0][0], found.title, found.label_config
    if not classes:
        raise ConnectorRejected(
            f"Label Studio at {display_url} has no project titled {title!r} and no classes were given to create one"
        )
    config = choices_config(classes, text_key=text_key)
    created = client.projects.create(
        title=title,
        label_config=config,
        description="Active-learning batches pushed by labelloop.",
        sampling=SEQUENTIAL_SAMPLING,  # the default today; said so that annotators get the best tasks first
    )
    log.info("created Label Studio project %s (%s classes)", created.id, len(classes))
    return int(created.id or 0), title, created.label_config or config


def user_names(client: LabelStudio) -> dict[int, str]:
    """Every user's email (or username) by id; empty for a token without the right to list users."""
    try:
        users = client.users.list()
    except ApiError as e:
        if e.status_code != 403:
            raise
        return {}
    return {int(user.id): str(user.email or user.username or user.id) for user in users}
