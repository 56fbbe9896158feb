"""An in-memory annotation tool with Label Studio's semantics, for the daemon's unit tests.

It keeps the same promises as :class:`~connectors.label_studio.LabelStudioConnector`
(the contract suite in ``tests/contract`` runs the same assertions on both):
idempotent ``push``, state-based ``pull`` at-or-after a watermark, skips, deleted
annotations, deleted tasks reported on a full pull, ``withdraw`` that spares touched tasks.

Test hooks, not part of the protocol: :meth:`FakeConnector.annotate`, ``update_annotation``,
``skip``, ``delete_annotation``, ``mark_ground_truth``, ``delete_task``, ``add_draft``, ``fail_next``,
``crash_push_after``, and the ``is_down``, ``in_push_order`` and ``overlap`` switches. The clock is
injectable; every event without an explicit ``at`` gets a strictly later time than the one before.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from connectors.base import (
    AnnotationState,
    OutgoingTask,
    PredictionUpdate,
    ProjectInfo,
    PullResult,
    Refreshed,
    RemoteTaskState,
    TaskSummary,
)
from connectors.errors import ConnectorAuthError, ConnectorError, ConnectorRejected, ConnectorUnavailable

__all__ = ["FakeConnector", "FakeWebhook"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class FakeWebhook:
    webhook_id: str
    headers: Mapping[str, str]
    actions: tuple[str, ...]
    is_active: bool = True


@dataclass(slots=True)
class _Task:
    remote_task_id: str
    outgoing: OutgoingTask
    updated_at: datetime
    annotations: list[AnnotationState] = field(default_factory=list)
    has_draft: bool = False


class FakeConnector:
    """A :class:`~connectors.base.Connector` backed by dicts.

    Args:
        classes: the project's classes if it already exists; ``()`` makes a project whose
            config has no ``<Choices>`` (``ensure_project`` then raises ConnectorRejected).
        api_key / accepted_keys: when ``accepted_keys`` is given, a key outside it makes
            every call raise ConnectorAuthError (a revoked or wrong token).
        clock: returns aware UTC datetimes; defaults to the wall clock.
    """

    def __init__(
        self,
        *,
        classes: Sequence[str] | None = None,
        project_title: str = "labelloop",
        user: str = "annotator@example.com",
        api_key: str | None = None,
        accepted_keys: Sequence[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        url: str = "fake://label-studio",
        project_id: str = "1",
    ) -> None:
        self.classes = tuple(classes) if classes is not None else None
        self.project_id = project_id
        self.project_title = project_title
        self.user = user
        self.url = url
        self.is_down = False  # flip to simulate an outage: every call raises ConnectorUnavailable
        self.in_push_order = True  # False: the project hands out tasks at random (uniform sampling)
        self.overlap = 1  # answers from this many people complete a task (Label Studio's overlap)
        # True: a new task's id is the largest existing one + 1, as Label Studio's on SQLite, so the
        # id of the newest task, once deleted, goes to the next task created
        self.reuses_deleted_ids = False
        self._api_key = api_key
        self._accepted_keys = frozenset(accepted_keys) if accepted_keys is not None else None
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        self._last_event = _EPOCH
        self._ids = itertools.count(1)
        self._tasks: dict[str, _Task] = {}  # by remote_task_id
        self._by_item: dict[str, str] = {}
        self._deleted_unreported: set[str] = set()
        self._failures: list[ConnectorError] = []
        self._crash_after: int | None = None
        self.calls: list[str] = []  # protocol methods called, in order
        self.webhooks: dict[str, FakeWebhook] = {}  # registered webhooks by URL
        self.predictions: dict[str, list[PredictionUpdate]] = {}  # refreshed predictions per task

    def __repr__(self) -> str:
        return f"FakeConnector(url={self.url!r}, tasks={len(self._tasks)})"

    # -- the Connector protocol ------------------------------------------------------

    def check(self) -> str:
        self._enter("check")
        return self.user

    def ensure_project(self, *, classes: Sequence[str] | None, known_project_id: str | None = None) -> ProjectInfo:
        self._enter("ensure_project")
        if self.classes is None:
            if not classes:
                raise ConnectorRejected(f"no project titled {self.project_title!r} and no classes to create it")
            self.classes = tuple(classes)
        if not self.classes:
            raise ConnectorRejected(f"project {self.project_id}: its labeling config has no <Choices> tag")
        return ProjectInfo(project_id=self.project_id, title=self.project_title, classes=self.classes)

    def push(self, tasks: Sequence[OutgoingTask]) -> Mapping[str, str]:
        self._enter("push")
        self._require_project()
        created = 0
        for task in tasks:
            if task.item_id in self._by_item:
                continue
            if self._crash_after is not None and created >= self._crash_after:
                self._crash_after = None
                raise ConnectorUnavailable(f"{self.url} went away during push (simulated crash)")
            remote_task_id = self._new_task_id()
            self._tasks[remote_task_id] = _Task(remote_task_id, task, self._event_time(None))
            self._by_item[task.item_id] = remote_task_id
            created += 1
        return {task.item_id: self._by_item[task.item_id] for task in tasks}

    def pull(self, *, since: datetime | None) -> PullResult:
        self._enter("pull")
        self._require_project()
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        states = [
            RemoteTaskState(
                item_id=task.outgoing.item_id,
                remote_task_id=task.remote_task_id,
                updated_at=task.updated_at,
                annotations=tuple(task.annotations),
                is_complete=self._is_complete(task),
            )
            for task in self._tasks.values()
            if since is None or task.updated_at >= since
        ]
        deleted: tuple[str, ...] = ()
        if since is None:
            deleted = tuple(sorted(self._deleted_unreported, key=int))
            self._deleted_unreported.clear()
        watermark = max((state.updated_at for state in states), default=since or _EPOCH)
        return PullResult(tasks=tuple(states), watermark=watermark, deleted_task_ids=deleted)

    def list_tasks(self) -> Sequence[TaskSummary]:
        self._enter("list_tasks")
        self._require_project()
        return [
            TaskSummary(
                remote_task_id=task.remote_task_id,
                annotation_count=sum(1 for a in task.annotations if not a.is_skipped),
                skip_count=sum(1 for a in task.annotations if a.is_skipped),
                updated_at=task.updated_at,
            )
            for task in self._tasks.values()
        ]

    def count_waiting(self) -> int:
        self._enter("count_waiting")
        self._require_project()
        return sum(1 for task in self._tasks.values() if not task.annotations)

    def refresh_predictions(self, updates: Sequence[PredictionUpdate]) -> Refreshed:
        self._enter("refresh_predictions")
        self._require_project()
        done, deleted = 0, set()
        for update in updates:
            task = self._tasks.get(update.remote_task_id)
            if task is None:
                deleted.add(update.remote_task_id)
                continue
            self.predictions.setdefault(update.remote_task_id, []).append(update)
            done += 1
        return Refreshed(done, tuple(sorted(deleted, key=int)))

    def withdraw(self, remote_task_ids: Sequence[str]) -> list[str]:
        self._enter("withdraw")
        self._require_project()
        for remote_task_id in remote_task_ids:
            task = self._tasks.get(remote_task_id)
            if task is not None and not task.annotations and not task.has_draft:
                self._remove(remote_task_id)
        return [remote_task_id for remote_task_id in remote_task_ids if remote_task_id not in self._tasks]

    def missing(self, remote_task_ids: Sequence[str]) -> list[str]:
        self._enter("missing")
        self._require_project()
        gone = [remote_task_id for remote_task_id in remote_task_ids if remote_task_id not in self._tasks]
        self._deleted_unreported.difference_update(gone)  # as Label Studio's connector: reported once
        return gone

    def first_waiting(self, n: int) -> list[str]:
        self._enter("first_waiting")
        self._require_project()
        untouched = [rid for rid, task in self._tasks.items() if not task.annotations and not task.has_draft]
        return sorted(untouched, key=int)[: max(0, n)]

    def serves_in_push_order(self) -> bool:
        self._enter("serves_in_push_order")
        self._require_project()
        return self.in_push_order

    def register_webhook(self, url: str, headers: Mapping[str, str], actions: Sequence[str]) -> str:
        self._enter("register_webhook")
        self._require_project()
        known = self.webhooks.get(url)
        hook_id = known.webhook_id if known is not None else str(next(self._ids))
        self.webhooks[url] = FakeWebhook(hook_id, dict(headers), tuple(actions))
        return hook_id

    def deactivate_webhook(self, url: str) -> int:
        self._enter("deactivate_webhook")
        known = self.webhooks.get(url)
        if known is None or not known.is_active:
            return 0
        self.webhooks[url] = FakeWebhook(known.webhook_id, known.headers, known.actions, is_active=False)
        return 1

    # -- test hooks ------------------------------------------------------------------

    def annotate(
        self, item_id: str, choice: str | tuple[str, ...] | None, *, annotator: str | None = None,
        at: datetime | None = None,
    ) -> str:
        """Submit a new annotation choosing ``choice`` (any string; a tuple: several, as a tag made
        ``choice="multiple"`` gives; ``None``: nothing chosen in the bound tag, as when only another
        question was answered or the tag was renamed); return its id."""
        choices = () if choice is None else (choice,) if isinstance(choice, str) else choice
        return self._add(item_id, choices, annotator=annotator, at=at, is_skipped=False)

    def skip(self, item_id: str, *, annotator: str | None = None, at: datetime | None = None) -> str:
        """Skip the task (a cancelled annotation with no choice); return the annotation id."""
        return self._add(item_id, (), annotator=annotator, at=at, is_skipped=True)

    def update_annotation(self, item_id: str, choice: str, *, at: datetime | None = None) -> None:
        """Change the latest annotation's choice (an annotator editing their answer)."""
        task = self._task(item_id)
        if not task.annotations:
            raise LookupError(f"item {item_id} has no annotation to update")
        moment = self._event_time(at)
        old = task.annotations[-1]
        task.annotations[-1] = dataclasses.replace(old, choices=(choice,), updated_at=moment)
        task.updated_at = max(task.updated_at, moment)

    def mark_ground_truth(self, item_id: str, annotation_id: str, *, at: datetime | None = None) -> None:
        """Mark one annotation of the task as its ground truth (a reviewer's star in Label Studio)."""
        task = self._task(item_id)
        moment = self._event_time(at)
        found = [n for n, a in enumerate(task.annotations) if a.remote_annotation_id == annotation_id]
        if not found:
            raise LookupError(f"item {item_id} has no annotation {annotation_id}")
        task.annotations[found[0]] = dataclasses.replace(task.annotations[found[0]], is_ground_truth=True)
        task.updated_at = max(task.updated_at, moment)

    def delete_annotation(self, item_id: str, *, annotation_id: str | None = None, at: datetime | None = None) -> None:
        """Delete one annotation of the task (the latest by default)."""
        task = self._task(item_id)
        if not task.annotations:
            raise LookupError(f"item {item_id} has no annotation to delete")
        target = annotation_id if annotation_id is not None else task.annotations[-1].remote_annotation_id
        kept = [a for a in task.annotations if a.remote_annotation_id != target]
        if len(kept) == len(task.annotations):
            raise LookupError(f"item {item_id} has no annotation {target}")
        task.annotations = kept
        task.updated_at = max(task.updated_at, self._event_time(at))

    def delete_task(self, item_id: str) -> str:
        """Delete the task in the tool (as a manager might); return its remote id."""
        remote_task_id = self._task(item_id).remote_task_id
        self._remove(remote_task_id)
        self._deleted_unreported.add(remote_task_id)
        return remote_task_id

    def add_draft(self, item_id: str) -> None:
        """Start an annotation without submitting it (does not change ``updated_at``)."""
        self._task(item_id).has_draft = True

    def remote_task_id(self, item_id: str) -> str:
        return self._task(item_id).remote_task_id

    def fail_next(self, count: int, error: ConnectorError) -> None:
        """Make the next ``count`` protocol calls raise ``error``."""
        self._failures.extend([error] * count)

    def crash_push_after(self, created: int) -> None:
        """Make the next push create ``created`` new tasks, then raise ConnectorUnavailable."""
        self._crash_after = created

    # -- internals -------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self.is_down:
            raise ConnectorUnavailable(f"cannot reach {self.url} during {method}; check that it is running")
        if self._failures:
            raise self._failures.pop(0)
        if self._accepted_keys is not None and self._api_key not in self._accepted_keys:
            raise ConnectorAuthError(f"{self.url} refused the API token (401); set LABELLOOP_LABEL_STUDIO__API_KEY")

    def _require_project(self) -> None:
        if not self.classes:
            raise ConnectorRejected(f"no project titled {self.project_title!r} yet; call ensure_project first")

    def _task(self, item_id: str) -> _Task:
        remote_task_id = self._by_item.get(item_id)
        if remote_task_id is None:
            raise LookupError(f"item {item_id} has no task")
        return self._tasks[remote_task_id]

    def _add(
        self,
        item_id: str,
        choices: tuple[str, ...],
        *,
        annotator: str | None,
        at: datetime | None,
        is_skipped: bool,
    ) -> str:
        task = self._task(item_id)
        moment = self._event_time(at)
        annotation_id = str(next(self._ids))
        task.annotations.append(
            AnnotationState(annotation_id, choices, annotator or self.user, moment, is_skipped=is_skipped)
        )
        task.updated_at = max(task.updated_at, moment)
        return annotation_id

    def _new_task_id(self) -> str:
        if not self.reuses_deleted_ids:
            return str(next(self._ids))
        remote_task_id = str(max((int(task_id) for task_id in self._tasks), default=0) + 1)
        self._deleted_unreported.discard(remote_task_id)  # it exists again
        return remote_task_id

    def _is_complete(self, task: _Task) -> bool:
        """As Label Studio's ``is_labeled``: answered by ``overlap`` different people."""
        return len({a.annotator for a in task.annotations if not a.is_skipped}) >= self.overlap

    def _remove(self, remote_task_id: str) -> None:
        task = self._tasks.pop(remote_task_id)
        del self._by_item[task.outgoing.item_id]

    def _event_time(self, at: datetime | None) -> datetime:
        if at is not None:
            if at.tzinfo is None:
                raise ValueError("at must be timezone-aware")
            self._last_event = max(self._last_event, at)
            return at
        moment = max(self._clock(), self._last_event + _TICK)
        self._last_event = moment
        return moment
