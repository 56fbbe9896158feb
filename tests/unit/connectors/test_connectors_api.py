"""Pin the public API of the connectors package (httpx's exported-members test)."""

from __future__ import annotations

import connectors
from connectors.base import Connector
from connectors.fake import FakeConnector
from connectors.label_studio import LabelStudioConnector


def test_exported_names() -> None:
    assert sorted(connectors.__all__) == [
        "AnnotationState",
        "Connector",
        "ConnectorAuthError",
        "ConnectorError",
        "ConnectorRejected",
        "ConnectorUnavailable",
        "OutgoingTask",
        "PredictionUpdate",
        "ProjectInfo",
        "PullResult",
        "Refreshed",
        "RemoteTaskState",
        "TaskSummary",
    ]
    assert all(hasattr(connectors, name) for name in connectors.__all__)


def test_both_implementations_have_every_protocol_method() -> None:
    methods = {name for name in vars(Connector) if not name.startswith("_")}
    assert methods == {"check", "ensure_project", "push", "pull", "list_tasks", "count_waiting", "withdraw",
                       "refresh_predictions", "first_waiting", "missing", "serves_in_push_order", "register_webhook",
                       "deactivate_webhook"}
    for implementation in (FakeConnector, LabelStudioConnector):
        assert methods <= set(vars(implementation)), implementation


def test_the_error_tree() -> None:
    assert issubclass(connectors.ConnectorAuthError, connectors.ConnectorRejected)
    assert issubclass(connectors.ConnectorRejected, connectors.ConnectorError)
    assert issubclass(connectors.ConnectorUnavailable, connectors.ConnectorError)
    assert not issubclass(connectors.ConnectorUnavailable, connectors.ConnectorRejected)
