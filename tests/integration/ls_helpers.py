"""Shared helpers for tests that run against a real Label Studio (see conftest.py here).

Import them from daemon integration tests too::

    from tests.integration.ls_helpers import annotate, skip, task_id_for

One server per pytest session: :func:`shared_server` keeps it in ``config.stash``, so
every conftest that asks for it (tests/integration, tests/contract) gets the same one,
and it is stopped when the session ends. The helpers do what an annotator's browser does,
through the SDK (``annotations.create`` is what "Submit" posts).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio

from connectors._ls_auth import auth_for

REPO = Path(__file__).resolve().parents[2]
SKIP_ENV = "LABELLOOP_SKIP_INTEGRATION"
SKIP_REASON = (
    f"{SKIP_ENV}=1: integration tests against a real Label Studio were NOT run; "
    "the Label Studio connector is untested in this run"
)
FROM_NAME, TO_NAME = "label", "text"  # what connectors._label_config.choices_config writes

_SERVER: pytest.StashKey[Any] = pytest.StashKey()
_FAILURE: pytest.StashKey[BaseException] = pytest.StashKey()


def ls_local() -> ModuleType:
    """Import ``deploy/ls_local.py`` by path (``deploy/`` is not a package), once."""
    module = sys.modules.get("ls_local")
    if module is None:
        spec = importlib.util.spec_from_file_location("ls_local", REPO / "deploy" / "ls_local.py")
        if spec is None or spec.loader is None:
            raise ImportError("cannot load deploy/ls_local.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ls_local"] = module
        spec.loader.exec_module(module)
    return module


def integration_skipped() -> bool:
    return os.environ.get(SKIP_ENV, "") == "1"


def shared_server(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start Label Studio once per session and return its ``LocalLabelStudio``.

    It starts from a copy of ``ls_local.ensure_template()`` (a migrated data dir cached
    under ~/.cache/labelloop), which cuts the start from 30-60 s to a few seconds.

    A failed start is remembered and re-raised (an error, not a skip), so the suite does
    not try again for every test.
    """
    if integration_skipped():
        pytest.skip(SKIP_REASON)
    if _FAILURE in config.stash:
        raise config.stash[_FAILURE]
    if _SERVER not in config.stash:
        try:
            module = ls_local()
            template = module.ensure_template()  # migrated once per machine: later starts take seconds
            server = module.start(tmp_path_factory.mktemp("label-studio"), template=template)
        except BaseException as e:
            config.stash[_FAILURE] = e
            raise
        config.stash[_SERVER] = server
        config.add_cleanup(server.stop)
    return config.stash[_SERVER]


def make_client(url: str, api_key: str) -> tuple[LabelStudio, httpx.Client]:
    """An SDK client on an httpx client the caller must close (renewing an access token refused in flight)."""
    http = httpx.Client(timeout=30.0, auth=auth_for(url, api_key))
    client = LabelStudio(  # type: ignore[no-untyped-call]  # the SDK's wrapper takes **kwargs
        base_url=url, api_key=api_key, httpx_client=http, timeout=30.0, max_retries=0
    )
    return client, http


def choices_result(*choices: str, from_name: str = FROM_NAME, to_name: str = TO_NAME) -> list[dict[str, Any]]:
    return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": list(choices)}}]


def task_id_for(client: LabelStudio, project_id: int, item_id: str) -> int:
    """The id of the (first) task labelloop created for ``item_id``."""
    ids = task_ids_for(client, project_id, item_id)
    if not ids:
        raise LookupError(f"no task for item {item_id} in project {project_id}")
    return ids[0]


def task_ids_for(client: LabelStudio, project_id: int, item_id: str) -> list[int]:
    """Every task for ``item_id`` (more than one would be a duplicate)."""
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:data.al_item_id",
                        "operator": "equal",
                        "type": "String",
                        "value": item_id,
                    }
                ],
            }
        }
    )
    page: Any = client.tasks.list(project=project_id, query=query, fields="task_only", include="id", page_size=100)
    return sorted(int(task.id) for task in page.items or [])


def task_count(client: LabelStudio, project_id: int) -> int:
    """All tasks in the project, ours or not."""
    return int(client.tasks.list(project=project_id, fields="task_only", include="id", page_size=1).response.total)


def annotate(
    client: LabelStudio,
    task_id: int,
    choice: str | Sequence[str],
    *,
    completed_by: int | None = None,
    from_name: str = FROM_NAME,
    to_name: str = TO_NAME,
) -> int:
    """Submit an annotation like an annotator's "Submit"; return its id. Any string is accepted."""
    choices = [choice] if isinstance(choice, str) else list(choice)
    kwargs: dict[str, Any] = {"completed_by": completed_by} if completed_by is not None else {}
    created = client.annotations.create(
        id=task_id,
        result=choices_result(*choices, from_name=from_name, to_name=to_name),
        lead_time=2.5,
        **kwargs,
    )
    return int(created.id or 0)


def update_annotation(client: LabelStudio, annotation_id: int, choice: str) -> None:
    """Change a submitted annotation's choice (what "Update" does)."""
    client.annotations.update(id=annotation_id, result=choices_result(choice))


def delete_annotation(client: LabelStudio, annotation_id: int) -> None:
    client.annotations.delete(id=annotation_id)


def skip(client: LabelStudio, task_id: int) -> int:
    """Skip the task (a cancelled annotation with no result); return the annotation id."""
    created = client.annotations.create(id=task_id, result=[], was_cancelled=True)
    return int(created.id or 0)


def latest_annotation_id(client: LabelStudio, task_id: int) -> int:
    annotations = client.annotations.list(id=task_id)
    if not annotations:
        raise LookupError(f"task {task_id} has no annotation")
    return max(int(a.id or 0) for a in annotations)


def delete_task(client: LabelStudio, task_id: int) -> None:
    client.tasks.delete(id=str(task_id))


def add_draft(server: Any, task_id: int, choice: str) -> None:
    """Save a draft (an annotator started but did not submit); the SDK has no call for it."""
    response = httpx.post(
        f"{server.url}/api/tasks/{task_id}/drafts",
        json={"result": choices_result(choice), "lead_time": 1.0},
        headers={"Authorization": f"Token {server.legacy_token}"},
        timeout=30,
    )
    response.raise_for_status()


def create_project(client: LabelStudio, title: str, label_config: str) -> int:
    return int(client.projects.create(title=title, label_config=label_config).id or 0)


def import_foreign_task(client: LabelStudio, project_id: int, text: str) -> int:
    """A task labelloop did not create (no ``al_item_id``)."""
    response = client.projects.import_tasks(
        id=project_id,
        request=[{"data": {"text": text}}],  # type: ignore[list-item]
        return_task_ids=True,
    )
    return int(getattr(response, "task_ids", [0])[0])


def next_task(server: Any, project_id: int) -> int:
    """Open the next task in the labeling stream as an annotator's browser does (Label Studio locks it); its id."""
    response = httpx.get(
        f"{server.url}/api/projects/{project_id}/next",
        headers={"Authorization": f"Token {server.legacy_token}"},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json()["id"])
