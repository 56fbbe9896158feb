"""Label Studio adapter on label-studio-sdk 2.x.

Every call has a timeout and no SDK-level retries (the daemon retries on its next tick,
and a retried bulk import could create tasks twice). Failures are translated here:
transport errors, 408/429 and 5xx → ``ConnectorUnavailable``; 401/403 →
``ConnectorAuthError``; other 4xx → ``ConnectorRejected``. Messages carry the URL,
the operation and the HTTP status, never the token or a response body.

What was verified against Label Studio 1.23.2 (tests/contract, tests/integration):
creating, editing and deleting an annotation, a skip, and the Data Manager's bulk
"delete annotations" all bump the task's ``updated_at``; saving a draft does not;
``import_tasks(return_task_ids=True)`` returns ids in the order of the payload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core import ApiError

from connectors import _ls_lookup as lk
from connectors import _ls_predictions as lp
from connectors import _ls_tasks as lt
from connectors._label_config import ChoicesControl, read_choices
from connectors._ls_auth import auth_for
from connectors._ls_errors import TOKEN_ADVICE, display_url, translated
from connectors._ls_webhooks import deactivate_webhooks, upsert_webhook
from connectors.base import OutgoingTask, PredictionUpdate, ProjectInfo, PullResult, Refreshed, TaskSummary
from connectors.errors import ConnectorAuthError, ConnectorError, ConnectorRejected, ConnectorUnavailable

__all__ = ["FAST_IMPORT_FLAG", "LabelStudioConnector"]

log = logging.getLogger(__name__)
# Label Studio 1.23's feature flag (an environment variable of the server) for importing predictions in batches
# and recounting only their tasks; off, each import recounts every task of the project (ImportPredictionsAPI).
FAST_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
SLOW_IMPORT_S = 2.0  # a prediction import slower than this gets the warning about FAST_IMPORT_FLAG


@dataclass(frozen=True, slots=True)
class _Project:
    project_id: int
    title: str
    control: ChoicesControl


class LabelStudioConnector:
    """The :class:`~connectors.base.Connector` for one Label Studio project.

    Build it with :meth:`connect`; the constructor takes a ready SDK client (tests pass one
    on ``httpx.MockTransport``). The project is resolved on :meth:`ensure_project` or on
    first use. Not thread-safe: the daemon calls it from one job at a time.
    """

    def __init__(
        self,
        client: LabelStudio,
        *,
        url: str,
        project_id: int | None = None,
        project_title: str = "labelloop",
        text_key: str = "text",
        choices_name: str | None = None,
        timeout_s: float = 30.0,
        page_size: int = 500,
        import_chunk_size: int = 500,
        lookup_chunk_size: int = 200,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._client = client
        self._http_client = http_client  # closed by close(); connect() passes the one it made
        self.url = display_url(url)
        self.project_id = project_id
        self.project_title = project_title
        self.text_key = text_key
        self.choices_name = choices_name  # the <Choices> tag of the classes; None: the config's only one
        self.timeout_s = timeout_s
        self.page_size = page_size
        self.import_chunk_size = import_chunk_size
        self.lookup_chunk_size = lookup_chunk_size
        self._project: _Project | None = None
        self._known_task_ids: set[str] = set()  # pushed or seen by this instance: for deletions
        self._annotators: dict[int, str] = {}
        self._warned_slow_import = False  # about Label Studio's prediction import flag, once per connector
        # item id -> monotonic time until which an import that got no answer may still commit its task:
        # under load the retry's lookup ran before Label Studio committed, and the items got two tasks (QA)
        self._unsettled: dict[str, float] = {}
        self._clock: Callable[[], float] = time.monotonic

    @classmethod
    def connect(
        cls,
        *,
        url: str,
        api_key: str,
        project_id: int | None = None,
        project_title: str = "labelloop",
        text_key: str = "text",
        choices_name: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> LabelStudioConnector:
        """Build a connector from a URL and a token (legacy token or Personal Access Token).

        Nothing is sent yet (a PAT is exchanged for an access token on the first call).

        Raises:
            ConnectorRejected: the URL is not http(s).
            ConnectorAuthError: the token is empty, or a PAT that has expired.
        """
        display = display_url(url)
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ConnectorRejected(f"Label Studio URL {display!r} is not an http(s) URL")
        if not api_key.strip():
            raise ConnectorAuthError(f"no API token for Label Studio at {display}. {TOKEN_ADVICE}")
        token = api_key.strip()
        # an access token may expire in flight: connectors/_ls_auth.py
        http = httpx.Client(timeout=timeout_s, follow_redirects=True, transport=transport, auth=auth_for(url, token))
        try:
            with translated(display, "connect"):
                client = LabelStudio(  # type: ignore[no-untyped-call]  # the SDK's wrapper takes **kwargs
                    base_url=url.rstrip("/"),
                    api_key=token,
                    httpx_client=http,
                    timeout=timeout_s,
                    max_retries=0,
                )
        except ConnectorError:
            http.close()
            raise
        return cls(
            client,
            url=url,
            project_id=project_id,
            project_title=project_title,
            text_key=text_key,
            choices_name=choices_name,
            timeout_s=timeout_s,
            http_client=http,
        )

    def close(self) -> None:
        """Close the HTTP connection pool if this connector made it."""
        if self._http_client is not None:
            self._http_client.close()

    def __repr__(self) -> str:
        return f"LabelStudioConnector(url={self.url!r}, project_id={self.project_id!r})"

    def check(self) -> str:
        """Return the email (or username) the token acts as.

        Raises:
            ConnectorAuthError, ConnectorUnavailable, ConnectorRejected.
        """
        with translated(self.url, "check"):
            me = self._client.users.whoami()
        return str(me.email or me.username or me.id)

    def ensure_project(self, *, classes: Sequence[str] | None, known_project_id: str | None = None) -> ProjectInfo:
        """Use the configured project id, else ``known_project_id`` while it exists, else find the
        project by title, else create it.

        The project's own ``<Choices>`` decide the classes (in its order); ``classes`` is
        only used to create a project. Once bound, the connector stays with that project: a
        later call reads it again by id (its classes may have changed), even if it was renamed;
        ``known_project_id`` carries that over a restart.

        Raises:
            ConnectorRejected: no such project id; no project with that title and no
                classes to create it; its config has no ``<Choices>``; its text field is
                not ``text_key``.
        """
        with translated(self.url, "ensure_project"):
            bound = self.project_id if self.project_id is not None else (
                self._project.project_id if self._project is not None else None)
            if bound is None and known_project_id is not None and known_project_id.isdigit():
                bound = self._existing_project(int(known_project_id))
            if bound is not None:
                found = self._client.projects.get(id=bound)
                project_id, title, config = int(found.id or bound), found.title, found.label_config
            else:
                project_id, title, config = lk.find_or_create_project(
                    self._client,
                    title=self.project_title,
                    classes=classes,
                    text_key=self.text_key,
                    display_url=self.url,
                )
        control = read_choices(config or "", project_id=str(project_id), control_name=self.choices_name)
        if control.data_key is not None and control.data_key != self.text_key:
            raise ConnectorRejected(
                f"project {project_id} shows task field {control.data_key!r} but labelloop sends the text as "
                f"{self.text_key!r}; set LABELLOOP_LABEL_STUDIO__TEXT_KEY={control.data_key}"
            )
        extra = [key for key in control.required_keys if key != self.text_key]
        if extra:
            log.warning("project %s's labeling config shows task fields %s besides the text: every pool item needs "
                        "them as columns of its pool file, or its task is refused", project_id,
                        ", ".join(map(repr, extra)))
        self._project = _Project(project_id=project_id, title=str(title or self.project_title), control=control)
        return ProjectInfo(project_id=str(project_id), title=self._project.title, classes=control.classes)

    def push(self, tasks: Sequence[OutgoingTask]) -> Mapping[str, str]:
        """Create tasks for items that have none yet; return ``{item_id: remote_task_id}`` for all.

        Items that already have a task in the project (an earlier push that crashed half
        way, say) keep it. New tasks go in bulk imports of ``import_chunk_size``.

        Raises:
            ConnectorUnavailable: a transient failure; tasks created so far are found next time.
            ConnectorRejected: Label Studio refused the payload.
        """
        if not tasks:
            return {}
        project = self._resolved()
        unique: dict[str, OutgoingTask] = {}
        for task in tasks:
            unique.setdefault(task.item_id, task)  # push order is kept: LS serves tasks by id
        with translated(self.url, "push"):
            remote = self._find_by_item_ids(project, list(unique))
            missing = [task for item_id, task in unique.items() if item_id not in remote]
            self._settle(remote, missing)
            self._check_fields(project, missing)
            for start in range(0, len(missing), self.import_chunk_size):
                remote.update(self._import(project, missing[start : start + self.import_chunk_size]))
        lost = [item_id for item_id in unique if item_id not in remote]
        if lost:
            self._mark_unsettled(lost)
            raise ConnectorUnavailable(
                f"Label Studio at {self.url} did not return ids for {len(lost)} imported "
                "tasks; the next push will find them"
            )
        self._known_task_ids.update(remote.values())
        log.info(
            "push: %s %s to project %s (%s new, %s already there)",
            len(unique),
            "task" if len(unique) == 1 else "tasks",
            project.project_id,
            len(missing),
            len(unique) - len(missing),
        )
        return {task.item_id: remote[task.item_id] for task in tasks}

    @property
    def settle_s(self) -> float:
        """Seconds an import that got no answer may still commit its tasks in Label Studio: 4 timeouts, at least 60."""
        return max(60.0, 4.0 * self.timeout_s)

    def _mark_unsettled(self, item_ids: Sequence[str]) -> None:
        """Record that the tasks of ``item_ids`` may still appear for :attr:`settle_s` from now."""
        self._unsettled.update(dict.fromkeys(item_ids, self._clock() + self.settle_s))

    def _settle(self, found: Mapping[str, str], missing: Sequence[OutgoingTask]) -> None:
        """Refuse to import again, for now, tasks whose last import got no answer a short while ago.

        That import may still be committing: importing them again made two tasks per item, each
        answered by annotators. Found tasks are settled; missing ones are imported again once
        :attr:`settle_s` passed without them appearing.

        Raises:
            ConnectorUnavailable: some missing tasks are still within that time.
        """
        for item_id in found:
            self._unsettled.pop(item_id, None)
        now = self._clock()
        pending = [self._unsettled[task.item_id] for task in missing if self._unsettled.get(task.item_id, 0.0) > now]
        if pending:
            raise ConnectorUnavailable(
                f"an earlier import of {len(pending)} of these tasks got no answer from Label Studio at {self.url} "
                f"and may still be committing there; they are created again only if they have not appeared "
                f"{self.settle_s:.0f}s after it ({max(pending) - now:.0f}s from now), so that no item gets two tasks"
            )
        for task in missing:
            self._unsettled.pop(task.item_id, None)

    def _check_fields(self, project: _Project, tasks: Sequence[OutgoingTask]) -> None:
        """Refuse tasks lacking a field the labeling config shows, naming it, before Label Studio does.

        Label Studio refuses the whole import for one such task, and the reason it gives was
        reported only as "HTTP 400; check non_field_errors" (QA: a ``$subject`` header beside the text).
        """
        needed = [key for key in project.control.required_keys if key != self.text_key]
        short = {key: sum(1 for task in tasks if key not in task.meta) for key in needed}
        lacking = {key: n for key, n in short.items() if n}
        if lacking:
            fields = ", ".join(f"{key!r} (lacked by {n} of {len(tasks)})" for key, n in lacking.items())
            raise ConnectorRejected(
                f"project {project.project_id}'s labeling config shows task fields labelloop does not have for "
                f"these items: {fields}. labelloop sends the text as {self.text_key!r} and a pool file's other "
                "columns as further fields: add those columns to the pool file (labelloop pool add), or take "
                "the tags that show them out of the project's labeling config"
            )

    def pull(self, *, since: datetime | None) -> PullResult:
        """Current state of our tasks whose ``updated_at`` is at or after ``since``.

        With ``since=None`` every task of ours is listed, and tasks this instance pushed or
        saw before but that are gone are reported in ``deleted_task_ids``.

        Raises:
            ValueError: ``since`` is naive.
            ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        filters = [lt.OURS]
        if since is not None:
            filters.append(lt.dm_filter("updated_at", "greater_or_equal", "Datetime", lt.dm_time(since)))
        with translated(self.url, "pull"):
            listed = list(self._iter_tasks(project, filters, fields="all", include=lt.PULL_FIELDS))
            self._learn_annotators(listed)
        states = [
            lt.remote_state(task, from_name=project.control.from_name, annotators=self._annotators,
                            class_of=project.control.class_of)
            for task in listed
        ]
        seen = {state.remote_task_id for state in states}
        deleted: tuple[str, ...] = ()
        if since is None:
            deleted = tuple(sorted(self._known_task_ids - seen, key=lt.numeric_order))
            self._known_task_ids = set(seen)
        else:
            self._known_task_ids |= seen
        watermark = max((state.updated_at for state in states), default=since or lt.EPOCH)
        return PullResult(tasks=tuple(states), watermark=watermark, deleted_task_ids=deleted)

    def list_tasks(self) -> Sequence[TaskSummary]:
        """Every task of ours with annotation and skip counts, without data (cheap).

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        with translated(self.url, "list_tasks"):
            return [
                lt.summary(task)
                for task in self._iter_tasks(project, [lt.OURS], fields="task_only", include=lt.SUMMARY_FIELDS)
            ]

    def count_waiting(self) -> int:
        """Our tasks with no annotation and no skip (one request, ``page_size=1``).

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        query = lt.dm_query([lt.OURS, *lk.NO_ANNOTATION])
        with translated(self.url, "count_waiting"):
            page: Any = self._client.tasks.list(
                project=project.project_id, query=query, fields="task_only", include="id", page=1, page_size=1
            )
            return int(page.response.total)

    def refresh_predictions(self, updates: Sequence[PredictionUpdate]) -> Refreshed:
        """Add the newer model's prediction to each task and make it the project's current version.

        Label Studio pre-annotates from the project's ``model_version``, so annotators see the
        current model's suggestion, and the Data Manager can sort by the new prediction score.
        Updates whose label is not a class of the project are skipped, and so are tasks deleted
        there (one missing task made Label Studio refuse its whole chunk, and the cycle fail,
        until a full read noticed the deletion); they are returned as deleted.

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        with translated(self.url, "refresh_predictions"):
            refreshed, import_s = lp.refresh(self._client, project.project_id, project.control, updates,
                                             page_size=self.page_size, lookup_chunk_size=self.lookup_chunk_size)
        log.info("refresh_predictions: %s of %s tasks in project %s", refreshed.refreshed, len(updates),
                 project.project_id)
        if import_s > SLOW_IMPORT_S and not self._warned_slow_import:
            self._warned_slow_import = True
            log.warning("Label Studio took %.1fs to import %s predictions into project %s: unless the server runs with "
                        "%s=true it recounts every task of the project on each import, so this grows with the "
                        "project (16 s for 200 at 20,000 tasks, 0.6 s with it: make bench-refresh); set it in "
                        "Label Studio's environment and restart it", import_s, refreshed.refreshed, project.project_id,
                        FAST_IMPORT_FLAG)
        return refreshed

    def withdraw(self, remote_task_ids: Sequence[str]) -> list[str]:
        """Delete the given tasks that nobody annotated, skipped or drafted; return the ids now gone.

        Candidates are checked first, and the delete itself is a Data Manager action that
        re-applies the same conditions server-side, so a task annotated in between is kept
        (but for the moment inside that action between its listing and its unlink; see
        ``_ls_lookup.delete_untouched``). Task locks (someone has it open) are not visible
        through the API, so the caller must spare the tasks people may have open. Ids that are not
        (or no longer) in the project are returned as gone.

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        gone = self._gone_after(project, remote_task_ids, lk.delete_untouched, "withdraw")
        kept = len(remote_task_ids) - len(gone)
        log.info(  # "0 of 10 tasks gone" read unclearly (QA): say what became of the rest
            "withdraw: %s of %s tasks withdrawn from project %s%s", len(gone), len(remote_task_ids), project.project_id,
            f"; {kept} kept, as someone answered, skipped or drafted them meanwhile" if kept else "",
        )
        return gone

    def missing(self, remote_task_ids: Sequence[str]) -> list[str]:
        """The given ids that are not tasks of the project now (one lookup per ``lookup_chunk_size`` ids).

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        return self._gone_after(self._resolved(), remote_task_ids, lk.existing_ids, "missing")

    def first_waiting(self, n: int) -> list[str]:
        """The first ``n`` untouched tasks of ours by id (one request).

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        if n <= 0:
            return []
        project = self._resolved()
        query = lt.dm_query([lt.OURS, *lk.UNTOUCHED], ordering="tasks:id")
        with translated(self.url, "first_waiting"):
            page: Any = self._client.tasks.list(
                project=project.project_id, query=query, fields="task_only", include="id", page=1, page_size=n
            )
        return [str(task.id) for task in page.items or []]

    def serves_in_push_order(self) -> bool:
        """True when the project uses sequential sampling (tasks by id, as pushed).

        Raises:
            ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        with translated(self.url, "serves_in_push_order"):
            found: Any = self._client.projects.get(id=project.project_id)
        return bool(found.sampling == lk.SEQUENTIAL_SAMPLING)

    def register_webhook(self, url: str, headers: Mapping[str, str], actions: Sequence[str]) -> str:
        """Create or update the project's webhook to ``url``; return its id.

        The webhook belongs to the project, fires only on ``actions`` (LS 1.23 turns
        ``send_for_all_actions`` on unless told otherwise) and sends no payload, just
        ``{"action": ...}``: task texts and the project's settings never travel to the
        daemon. A webhook of the project with the same URL is updated, or left alone when
        it already matches; the project's active webhooks to other URLs with the same headers
        (an old address of this daemon) are switched off. ``headers`` are never logged.

        Raises:
            ConnectorRejected: Label Studio refuses to call ``url`` (its SSRF protection
                blocks local and private addresses unless told otherwise).
            ConnectorAuthError, ConnectorUnavailable.
        """
        project = self._resolved()
        with translated(self.url, "register_webhook"):
            hook_id, outcome, same_url, retired = upsert_webhook(
                self._client, self.url, project.project_id, url, headers, actions
            )
        if retired:
            log.warning("project %s had webhooks to %s with this daemon's secret, left on by a crash or by a stop "
                        "while Label Studio was unreachable, before the address changed; deleted them",
                        project.project_id, ", ".join(retired))
        if same_url > 1:
            log.warning("project %s has %s webhooks to the same URL; using %s", project.project_id, same_url, hook_id)
        log.info("webhook %s of project %s: %s", hook_id, project.project_id, outcome)
        return hook_id

    def deactivate_webhook(self, url: str) -> int:
        """Switch off the project's webhook to ``url`` (kept for ``register_webhook`` to reuse).

        Raises:
            ConnectorAuthError, ConnectorUnavailable, ConnectorRejected.
        """
        project = self._resolved()
        with translated(self.url, "deactivate_webhook"):
            count = deactivate_webhooks(self._client, project.project_id, url)
        if count:
            log.info("webhook of project %s switched off", project.project_id)
        return count

    # -- internals -------------------------------------------------------------------

    def _resolved(self) -> _Project:
        if self._project is None:
            self.ensure_project(classes=None)
        if self._project is None:  # pragma: no cover - ensure_project sets it or raises
            raise ConnectorRejected("no Label Studio project")
        return self._project

    def _gone_after(
        self, project: _Project, remote_task_ids: Sequence[str], lookup: Callable[..., set[str]], what: str
    ) -> list[str]:
        """Run ``lookup(client, project id, ids, page_size=...)`` (the ids it finds still there) over the
        numeric ids in chunks; return the given ids not there, in the order given, and forget them."""
        numeric = sorted({task_id for task_id in remote_task_ids if task_id.isdigit()}, key=int)
        there: set[str] = set()
        with translated(self.url, what):
            for chunk in lt.id_chunks(numeric, max_items=self.lookup_chunk_size):
                there |= lookup(self._client, project.project_id, [int(task_id) for task_id in chunk],
                                page_size=self.page_size)
        gone = [task_id for task_id in remote_task_ids if task_id not in there]
        self._known_task_ids.difference_update(gone)
        return gone

    def _existing_project(self, project_id: int) -> int | None:
        """``project_id`` if that project exists, else None (deleted: the caller finds one by title)."""
        try:
            self._client.projects.get(id=project_id)
        except ApiError as e:
            if e.status_code != 404:
                raise
            log.warning("project %s, which this store worked with, no longer exists in Label Studio", project_id)
            return None
        return project_id

    def _iter_tasks(
        self, project: _Project, filters: Sequence[Mapping[str, Any]], *, fields: str, include: str
    ) -> Iterator[Any]:
        return lk.iter_tasks(
            self._client, project.project_id, filters, fields=fields, include=include, page_size=self.page_size
        )

    def _find_by_item_ids(self, project: _Project, item_ids: Sequence[str]) -> dict[str, str]:
        return lk.find_by_item_ids(
            self._client, project.project_id, item_ids, page_size=self.page_size, chunk_size=self.lookup_chunk_size
        )

    def _import(self, project: _Project, chunk: Sequence[OutgoingTask]) -> dict[str, str]:
        payload = [lt.task_payload(task, control=project.control, text_key=self.text_key) for task in chunk]
        dropped = sum(
            1
            for task, body in zip(chunk, payload, strict=True)
            if task.predicted_label is not None and "predictions" not in body
        )
        if dropped:
            log.warning(
                "push: %s predictions left out: their label is not a class of project %s",
                dropped,
                project.project_id,
            )
        try:
            response = self._client.projects.import_tasks(
                id=project.project_id, request=cast(Any, payload), return_task_ids=True
            )
        except Exception as e:
            if _may_have_committed(e):
                self._mark_unsettled([task.item_id for task in chunk])
            raise
        task_ids = list(getattr(response, "task_ids", None) or [])
        if len(task_ids) == len(chunk):  # verified: ids come back in payload order
            return {task.item_id: str(task_id) for task, task_id in zip(chunk, task_ids, strict=True)}
        return self._find_by_item_ids(project, [task.item_id for task in chunk])

    def _learn_annotators(self, listed: Sequence[Any]) -> None:
        wanted = {
            who for task in listed for raw in (task.annotations or ()) if (who := lt.annotator_id(raw)) is not None
        }
        if wanted <= self._annotators.keys():
            return
        self._annotators.update(lk.user_names(self._client))
        self._annotators.update({who: str(who) for who in wanted - self._annotators.keys()})  # ask once


def _may_have_committed(error: Exception) -> bool:
    """Whether a failed import may still have created its tasks: it reached Label Studio and got no clear refusal."""
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return False  # the request never reached the server
    if isinstance(error, ApiError):
        return error.status_code is None or error.status_code >= 500  # a 4xx refused the whole import
    return True
