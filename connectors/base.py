"""What the daemon needs from an annotation tool, and nothing more.

The daemon owns state; a connector only translates. ``pull`` reports the *current*
state of remote tasks that changed, and the daemon diffs that against its store, so
an edited annotation overwrites, a deleted one retracts, and a re-delivered state is
harmless (pulls are idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "AnnotationState",
    "Connector",
    "OutgoingTask",
    "PredictionUpdate",
    "ProjectInfo",
    "PullResult",
    "Refreshed",
    "RemoteTaskState",
    "TaskSummary",
]


@dataclass(frozen=True, slots=True)
class OutgoingTask:
    """One pool item to be shown to annotators.

    ``predicted_label``/``predicted_score`` become a pre-annotation tagged with
    ``model_version``. Nothing says whether the item belongs to the random control slice, nor how
    informative the strategy found it: annotators see a task's data, and control tasks must not
    stand out (a 0 score and a flag gave them away, QA). The store keeps both.
    """

    item_id: str  # our key; written into the remote task so a re-push is detectable
    batch_id: str
    text: str
    model_version: str | None = None
    predicted_label: str | None = None
    predicted_score: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AnnotationState:
    """One annotation as it is now in the tool.

    ``choices`` are the raw chosen values, unvalidated: the daemon decides whether
    they are known classes. ``is_skipped`` marks a cancelled/skipped annotation;
    ``is_ground_truth`` one that a reviewer marked as the reference answer for its task.
    """

    remote_annotation_id: str
    choices: tuple[str, ...]
    annotator: str | None
    updated_at: datetime  # timezone-aware UTC
    is_skipped: bool = False
    is_ground_truth: bool = False


@dataclass(frozen=True, slots=True)
class RemoteTaskState:
    """The current state of one of our tasks; ``annotations`` empty means unlabeled.

    ``is_complete`` is false while the tool still hands the task out for answers: with
    Label Studio's overlap, a task wants answers from several people.
    """

    item_id: str
    remote_task_id: str
    updated_at: datetime  # timezone-aware UTC
    annotations: tuple[AnnotationState, ...] = ()
    is_complete: bool = True


@dataclass(frozen=True, slots=True)
class PullResult:
    """Tasks that changed at or after ``since``, plus the watermark to pass next time.

    ``watermark`` is the largest task ``updated_at`` seen, or ``since`` when nothing
    changed (the Unix epoch when ``since`` was ``None`` and there are no tasks, so
    ``watermark - overlap`` is always a valid datetime).
    ``deleted_task_ids`` lists our remote tasks that no longer exist in the tool. A
    connector can only notice a deleted task it has pushed or seen before (in this
    process) and only on a full pull (``since=None``); to catch tasks deleted while the
    daemon was down, diff the store against a full pull or :meth:`Connector.list_tasks`.
    """

    tasks: tuple[RemoteTaskState, ...]
    watermark: datetime
    deleted_task_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """One of our tasks without its data or annotations: what a cheap full listing returns.

    ``annotation_count`` counts submitted (not skipped) annotations, ``skip_count`` skips.
    """

    remote_task_id: str
    annotation_count: int
    skip_count: int
    updated_at: datetime  # timezone-aware UTC


@dataclass(frozen=True, slots=True)
class PredictionUpdate:
    """A newer model's view of a task still waiting in the queue (stale re-ranking)."""

    remote_task_id: str
    model_version: str
    predicted_label: str | None
    predicted_score: float | None


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What :meth:`Connector.refresh_predictions` did: tasks updated, and tasks found deleted in the tool.

    A task deleted in the tool leaves no trace an incremental pull can see; the refresh has to ask
    which tasks exist, so it says which are gone and the daemon withdraws them at once instead of
    at the next full read.
    """

    refreshed: int
    deleted_task_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    project_id: str
    title: str
    classes: tuple[str, ...]  # in the tool's order


class Connector(Protocol):
    """The seam between the daemon and an annotation tool. Every call has a timeout.

    Raises (every method): ``ConnectorUnavailable`` (retry later),
    ``ConnectorRejected``/``ConnectorAuthError`` (a human must act).
    """

    def check(self) -> str:
        """Verify reachability and credentials; return the user name we act as."""
        ...

    def ensure_project(self, *, classes: Sequence[str] | None, known_project_id: str | None = None) -> ProjectInfo:
        """Use the configured project (reading its classes) or create one from ``classes``.

        ``known_project_id`` is the project the caller worked with before (a restart): with no
        project configured, it is used while it exists, whatever its title has become since.
        """
        ...

    def push(self, tasks: Sequence[OutgoingTask]) -> Mapping[str, str]:
        """Create remote tasks; return ``{item_id: remote_task_id}`` for every task given.

        Idempotent per ``item_id``: items that already have a task (say, after a crash
        in the middle of an earlier push) get the existing task's id, never a second task.
        """
        ...

    def pull(self, *, since: datetime | None) -> PullResult:
        """Current state of our tasks updated at or after ``since`` (all when ``None``).

        ``since`` is timezone-aware. Creating, editing or deleting an annotation and
        skipping a task all count as an update (verified on Label Studio 1.23).
        """
        ...

    def list_tasks(self) -> Sequence[TaskSummary]:
        """List every task of ours cheaply (ids and counts, no data), for reconciling.

        A task missing here but known to the daemon was deleted in the tool.
        """
        ...

    def count_waiting(self) -> int:
        """Number of our tasks in the tool that have no annotation yet."""
        ...

    def refresh_predictions(self, updates: Sequence[PredictionUpdate]) -> Refreshed:
        """Attach a newer model's prediction to waiting tasks; say how many, and which are gone.

        Annotators then start from the current model's suggestion, and the tool can sort
        the queue by the new prediction scores.
        """
        ...

    def withdraw(self, remote_task_ids: Sequence[str]) -> list[str]:
        """Delete the given tasks that have no annotation, skip or draft; return the ids now gone.

        Tasks that someone annotated, skipped or started (a draft) are kept. Ids that
        were already gone are returned too, in the order given.
        """
        ...

    def missing(self, remote_task_ids: Sequence[str]) -> list[str]:
        """The given ids that are no longer tasks of ours in the tool (deleted there), in the order given.

        One cheap lookup for a few hundred ids, not a listing of the project: the daemon asks it
        about its waiting tasks between full reads, so a task deleted in the tool leaves the queue
        within a sync instead of counting as waiting until the next full read.
        """
        ...

    def first_waiting(self, n: int) -> list[str]:
        """Remote ids of the first ``n`` of our tasks nobody annotated, skipped or drafted, in push order.

        Read live from the tool: the daemon's own view lags by the annotations it has not
        pulled yet. In push order, these are the tasks annotators are handed (or have open) next.
        """
        ...

    def serves_in_push_order(self) -> bool:
        """Whether the tool hands annotators the waiting tasks in the order they were pushed.

        Then the tasks people have open are the first waiting ones, and the most informative
        tasks of a batch are labeled first. Label Studio does so in its default sequential
        sampling, not in its uniform or uncertainty sampling.
        """
        ...

    def register_webhook(self, url: str, headers: Mapping[str, str], actions: Sequence[str]) -> str:
        """Make the project call ``url`` on ``actions``, sending ``headers``; return the webhook's id.

        Idempotent: the project's webhook with this URL is updated (or left alone when it
        already matches) instead of adding a second one. ``headers`` may carry a shared
        secret: never log them.
        """
        ...

    def deactivate_webhook(self, url: str) -> int:
        """Stop the project calling ``url``; return how many of its webhooks were switched off.

        The webhook is kept, inactive, so that ``register_webhook`` switches it back on
        instead of adding another. Unknown URLs and inactive webhooks are left alone (0).
        """
        ...
