"""Adapters to annotation tools (Label Studio first). No imports of the rest of labelloop."""

from connectors.base import (
    AnnotationState,
    Connector,
    OutgoingTask,
    PredictionUpdate,
    ProjectInfo,
    PullResult,
    Refreshed,
    RemoteTaskState,
    TaskSummary,
)
from connectors.errors import ConnectorAuthError, ConnectorError, ConnectorRejected, ConnectorUnavailable

__all__ = [
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
