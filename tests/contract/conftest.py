"""One harness per Connector implementation, so the contract runs the same assertions on each.

``harness`` is parametrized: ``fake`` always, ``label_studio`` (a real server on 127.0.0.1,
shared with tests/integration, marked ``integration``) unless LABELLOOP_SKIP_INTEGRATION=1.
A harness holds a connector on a fresh project plus the annotator-side actions the
protocol does not have (annotate, edit, delete, skip, draft, delete a task, change the
project's task order, annotate as another user, mark a ground truth, set the overlap).
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio

from connectors._label_config import choices_config
from connectors.base import Connector, OutgoingTask
from connectors.fake import FakeConnector
from connectors.label_studio import LabelStudioConnector
from tests.integration import ls_helpers

CLASSES = ("pos", "neg", "neutral")
_titles = itertools.count(1)
_users = itertools.count(1)


class FakeHarness:
    name = "fake"

    def __init__(self) -> None:
        self.fake = FakeConnector(classes=CLASSES, user="annotator@example.com")
        self.connector: Connector = self.fake

    def fresh_connector(self) -> Connector:
        return self.fake  # the tool's state lives in the fake itself

    def annotate(self, item_id: str, choice: str) -> None:
        self.fake.annotate(item_id, choice)

    def update_annotation(self, item_id: str, choice: str) -> None:
        self.fake.update_annotation(item_id, choice)

    def delete_annotation(self, item_id: str) -> None:
        self.fake.delete_annotation(item_id)

    def skip(self, item_id: str) -> None:
        self.fake.skip(item_id)

    def add_draft(self, item_id: str) -> None:
        self.fake.add_draft(item_id)

    def delete_task(self, item_id: str) -> str:
        return self.fake.delete_task(item_id)

    def serve_at_random(self) -> None:
        self.fake.in_push_order = False

    def new_annotator(self) -> str:
        return f"annotator{next(_users)}@example.com"

    def annotate_as(self, item_id: str, choice: str, annotator: str) -> str:
        return self.fake.annotate(item_id, choice, annotator=annotator)

    def mark_ground_truth(self, item_id: str, annotation_id: str) -> None:
        self.fake.mark_ground_truth(item_id, annotation_id)

    def want_answers_from(self, people: int) -> None:
        self.fake.overlap = people

    def remote_task_count(self) -> int:
        return len(self.fake.list_tasks())

    def push_interrupted(self, tasks: Sequence[OutgoingTask], *, created: int) -> None:
        self.fake.crash_push_after(created)
        self.fake.push(tasks)

    def connector_with_token(self, kind: str) -> Connector:
        return FakeConnector(classes=CLASSES, api_key=kind, accepted_keys=["pat", "legacy"])

    def unreachable(self) -> Connector:
        down = FakeConnector(classes=CLASSES)
        down.is_down = True
        return down

    def close(self) -> None:
        pass


class LabelStudioHarness:
    name = "label_studio"

    def __init__(self, server: Any, client: LabelStudio, project_id: int) -> None:
        self.server, self.client, self.project_id = server, client, project_id
        self._made: list[LabelStudioConnector] = []
        self._user_ids: dict[str, int] = {}
        self.connector: Connector = self._connect(server.pat)

    def _connect(
        self, api_key: str, *, url: str | None = None, project_id: int | None = -1
    ) -> LabelStudioConnector:
        connector = LabelStudioConnector.connect(
            url=url or self.server.url,
            api_key=api_key,
            project_id=self.project_id if project_id == -1 else project_id,
            timeout_s=30.0,
        )
        self._made.append(connector)
        return connector

    def fresh_connector(self) -> Connector:
        return self._connect(self.server.pat)  # a new process: no memory of earlier pushes

    def _task(self, item_id: str) -> int:
        return ls_helpers.task_id_for(self.client, self.project_id, item_id)

    def annotate(self, item_id: str, choice: str) -> None:
        ls_helpers.annotate(self.client, self._task(item_id), choice)

    def update_annotation(self, item_id: str, choice: str) -> None:
        task_id = self._task(item_id)
        ls_helpers.update_annotation(
            self.client, ls_helpers.latest_annotation_id(self.client, task_id), choice
        )

    def delete_annotation(self, item_id: str) -> None:
        task_id = self._task(item_id)
        ls_helpers.delete_annotation(self.client, ls_helpers.latest_annotation_id(self.client, task_id))

    def skip(self, item_id: str) -> None:
        ls_helpers.skip(self.client, self._task(item_id))

    def add_draft(self, item_id: str) -> None:
        ls_helpers.add_draft(self.server, self._task(item_id), CLASSES[0])

    def delete_task(self, item_id: str) -> str:
        task_id = self._task(item_id)
        ls_helpers.delete_task(self.client, task_id)
        return str(task_id)

    def serve_at_random(self) -> None:
        self.client.projects.update(id=self.project_id, sampling="Uniform sampling")

    def new_annotator(self) -> str:
        email = f"annotator{next(_users)}-{time.time_ns()}@example.com"  # users outlive projects on the server
        made = self.client.users.create(email=email, username=email.split("@")[0])
        self._user_ids[email] = int(made.id or 0)
        return email

    def annotate_as(self, item_id: str, choice: str, annotator: str) -> str:
        user_id = self._user_ids[annotator]
        return str(ls_helpers.annotate(self.client, self._task(item_id), choice, completed_by=user_id))

    def mark_ground_truth(self, item_id: str, annotation_id: str) -> None:
        self.client.annotations.update(id=int(annotation_id), ground_truth=True)

    def want_answers_from(self, people: int) -> None:
        self.client.projects.update(id=self.project_id, maximum_annotations=people)

    def remote_task_count(self) -> int:
        return ls_helpers.task_count(self.client, self.project_id)

    def push_interrupted(self, tasks: Sequence[OutgoingTask], *, created: int) -> None:
        """Import ``created`` tasks, then lose the answer to the next import after LS applied it."""
        connector = self._connect(self.server.pat)
        connector.import_chunk_size = created
        projects = connector._client.projects
        real_import = projects.import_tasks
        calls = itertools.count(1)

        def import_then_lose_answer(*args: Any, **kwargs: Any) -> Any:
            answer = real_import(*args, **kwargs)
            if next(calls) >= 2:
                raise httpx.ReadTimeout("simulated: the answer to this import was lost")
            return answer

        projects.import_tasks = import_then_lose_answer  # type: ignore[method-assign]
        connector.push(tasks)

    def connector_with_token(self, kind: str) -> Connector:
        api_key = {"pat": self.server.pat, "legacy": self.server.legacy_token}.get(kind, kind)
        return self._connect(api_key)

    def unreachable(self) -> Connector:
        return self._connect(self.server.pat, url=f"http://127.0.0.1:{closed_port()}")

    def close(self) -> None:
        for connector in self._made:
            connector.close()


Harness = FakeHarness | LabelStudioHarness


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["fake", pytest.param("label_studio", marks=pytest.mark.integration)])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "fake":
        yield FakeHarness()
        return
    server = ls_helpers.shared_server(request.config, request.getfixturevalue("tmp_path_factory"))
    client, http = ls_helpers.make_client(server.url, server.pat)
    try:
        title = f"contract {next(_titles)} {request.node.name[:30]}"
        project_id = ls_helpers.create_project(client, title, choices_config(CLASSES))
        made = LabelStudioHarness(server, client, project_id)
        try:
            yield made
        finally:
            made.close()
            client.projects.delete(id=project_id)
    finally:
        http.close()
