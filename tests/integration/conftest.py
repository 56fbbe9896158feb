"""Fixtures for tests against a real Label Studio on 127.0.0.1 (one server per session).

Every test in this directory is marked ``integration``. Set ``LABELLOOP_SKIP_INTEGRATION=1``
to skip them (loudly); otherwise a server that fails to start is an error, not a skip.

Fixtures:
    label_studio   (session) the running ``ls_local.LocalLabelStudio``: ``url``, ``username``,
                   ``password``, ``legacy_token``, ``pat``, ``data_dir``, ``log_path``, ``pid``,
                   ``stop()``, ``restart()``, ``is_running()``
    ls_client      (session) a label-studio-sdk ``LabelStudio`` client using the PAT
    ls_project     (function) factory ``ls_project(classes=("pos", "neg"), *, title=None,
                   label_config=None) -> project id``; each test gets fresh projects, deleted after
    ls_connector   (function) factory ``ls_connector(project_id, *, token="pat", **kwargs)`` →
                   a ``LabelStudioConnector`` (closed after the test)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk import LabelStudio

from connectors._label_config import choices_config
from connectors.label_studio import LabelStudioConnector
from tests.integration import ls_helpers

_HERE = Path(__file__).resolve().parent
_titles = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def label_studio(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return ls_helpers.shared_server(pytestconfig, tmp_path_factory)


@pytest.fixture(scope="session")
def ls_client(label_studio: Any) -> Iterator[LabelStudio]:
    client, http = ls_helpers.make_client(label_studio.url, label_studio.pat)
    yield client
    http.close()


@pytest.fixture
def ls_project(ls_client: LabelStudio, request: pytest.FixtureRequest) -> Iterator[Callable[..., int]]:
    created: list[int] = []

    def make(
        classes: Sequence[str] = ("pos", "neg"), *, title: str | None = None, label_config: str | None = None
    ) -> int:
        name = title or f"{next(_titles)} {request.node.name[:40]}"  # LS caps titles at 50
        project_id = ls_helpers.create_project(ls_client, name, label_config or choices_config(classes))
        created.append(project_id)
        return project_id

    yield make
    for project_id in created:
        ls_client.projects.delete(id=project_id)


@pytest.fixture
def ls_connector(label_studio: Any) -> Iterator[Callable[..., LabelStudioConnector]]:
    made: list[LabelStudioConnector] = []

    def make(project_id: int | None, *, token: str = "pat", **kwargs: Any) -> LabelStudioConnector:
        api_key = {"pat": label_studio.pat, "legacy": label_studio.legacy_token}.get(token, token)
        kwargs.setdefault("timeout_s", 30.0)
        connector = LabelStudioConnector.connect(url=label_studio.url, api_key=api_key, project_id=project_id, **kwargs)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()
