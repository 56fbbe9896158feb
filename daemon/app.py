"""Wiring at the edge: settings → engine, connector, encoder → context → stage or service."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from connectors.base import Connector, OutgoingTask, PredictionUpdate, ProjectInfo, PullResult, Refreshed, TaskSummary
from connectors.errors import ConnectorUnavailable
from connectors.label_studio import LabelStudioConnector
from daemon.context import LoopContext, default_embedder_factory
from daemon.cycle import CycleReport, close_interrupted_cycles, run_cycle
from daemon.errors import ConfigError
from daemon.project import check_binding, ensure_project
from daemon.service import InstanceLock, Service
from daemon.settings import LabelStudioSettings, LoopSettings, Settings, describe_invalid, masked_url
from daemon.store import make_engine
from daemon.sync import SyncReport, sync

if TYPE_CHECKING:  # predictions import torch; the CLI's read commands import this module
    from daemon.predict import PredictionReport

__all__ = [
    "apply_torch_threads",
    "build_connector",
    "build_context",
    "embed_backfill",
    "one_cycle",
    "one_sync",
    "run_service",
    "write_config",
]

log = logging.getLogger(__name__)


def build_connector(settings: Settings) -> Connector:
    """Connect to Label Studio as configured (nothing is sent yet).

    Raises:
        ConfigError: no usable token.
    """
    ls = settings.label_studio
    return LabelStudioConnector.connect(
        url=ls.url, api_key=settings.api_key(), project_id=ls.project_id, project_title=ls.project_title,
        text_key=ls.text_key, choices_name=ls.choices_name, timeout_s=ls.timeout_s,
    )


def apply_torch_threads(settings: Settings) -> None:
    """Set torch's intra-op thread count when ``model.torch_threads`` is configured (process-wide)."""
    if settings.model.torch_threads is not None:
        import torch  # only the commands that encode pay for importing torch

        torch.set_num_threads(settings.model.torch_threads)


def build_context(settings: Settings, *, connector: Connector | None = None) -> LoopContext:
    apply_torch_threads(settings)
    return LoopContext(
        settings=settings,
        engine=make_engine(settings.store.url, busy_timeout_s=settings.store.busy_timeout_s),
        connector=connector if connector is not None else build_connector(settings),
        embedder_factory=default_embedder_factory(settings),
    )


def one_cycle(settings: Settings, *, connector: Connector | None = None) -> CycleReport:
    """Run a single cycle now, refusing while a daemon runs on the same store.

    Raises:
        AlreadyRunning, ConnectorError, ModelError.
    """
    lock = InstanceLock.for_store(settings.store.url, settings.store.data_dir, "cycle")
    lock.acquire()  # first: a refusal came after the whole context was built, 5-80 s later
    try:
        ctx = build_context(settings, connector=connector)
        close_interrupted_cycles(ctx.engine)
        ensure_project(ctx)
        return run_cycle(ctx, reason="manual")
    finally:
        lock.release()


def one_sync(settings: Settings, *, connector: Connector | None = None) -> SyncReport:
    lock = InstanceLock.for_store(settings.store.url, settings.store.data_dir, "sync")
    lock.acquire()
    try:
        ctx = build_context(settings, connector=connector)
        ensure_project(ctx)
        return sync(ctx)
    finally:
        lock.release()


def embed_backfill(settings: Settings, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Embed every pool item that has no vector yet, refusing while a daemon runs on the store.

    Needs no Label Studio token. Resumable: chunks already stored stay done after a kill.

    Raises:
        AlreadyRunning, ModelError.
    """
    from daemon.training import embed_pool

    apply_torch_threads(settings)
    lock = InstanceLock.for_store(settings.store.url, settings.store.data_dir, "embed")
    lock.acquire()
    try:
        ctx = LoopContext(
            settings=settings,
            engine=make_engine(settings.store.url, busy_timeout_s=settings.store.busy_timeout_s),
            connector=_OfflineConnector(),
            embedder_factory=default_embedder_factory(settings),
        )
        return embed_pool(ctx, progress=progress)
    finally:
        lock.release()


def predictions(
    settings: Settings, path: Path, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None
) -> PredictionReport:
    """Write the proxy model's prediction for every pool item (:mod:`daemon.predict`); safe while a daemon runs.

    Needs no Label Studio token.

    Raises:
        ExportError, ModelError.
    """
    from daemon.predict import export_predictions

    apply_torch_threads(settings)
    ctx = LoopContext(
        settings=settings,
        engine=make_engine(settings.store.url, busy_timeout_s=settings.store.busy_timeout_s),
        connector=_OfflineConnector(),
        embedder_factory=default_embedder_factory(settings),
        readonly_caches=True,  # the daemon may hold the caches' writer lock
    )
    return export_predictions(ctx, path, overwrite=overwrite, progress=progress)


class _OfflineConnector:
    """For commands that never talk to the annotation tool: every call is refused."""

    def _refuse(self) -> ConnectorUnavailable:
        return ConnectorUnavailable("this command works offline and does not talk to Label Studio")

    def check(self) -> str:
        raise self._refuse()

    def ensure_project(self, *, classes: Sequence[str] | None, known_project_id: str | None = None) -> ProjectInfo:
        raise self._refuse()

    def push(self, tasks: Sequence[OutgoingTask]) -> Mapping[str, str]:
        raise self._refuse()

    def pull(self, *, since: datetime | None) -> PullResult:
        raise self._refuse()

    def list_tasks(self) -> Sequence[TaskSummary]:
        raise self._refuse()

    def count_waiting(self) -> int:
        raise self._refuse()

    def refresh_predictions(self, updates: Sequence[PredictionUpdate]) -> Refreshed:
        raise self._refuse()

    def withdraw(self, remote_task_ids: Sequence[str]) -> list[str]:
        raise self._refuse()

    def missing(self, remote_task_ids: Sequence[str]) -> list[str]:
        raise self._refuse()

    def first_waiting(self, n: int) -> list[str]:
        raise self._refuse()

    def serves_in_push_order(self) -> bool:
        raise self._refuse()

    def register_webhook(self, url: str, headers: Mapping[str, str], actions: Sequence[str]) -> str:
        raise self._refuse()

    def deactivate_webhook(self, url: str) -> int:
        raise self._refuse()


def run_service(settings: Settings, *, connector: Connector | None = None) -> None:
    """Run the daemon until a signal. A refused token stops it at once; an unreachable server does not.

    Raises:
        AlreadyRunning: another daemon runs on this store.
        ConnectorAuthError: the token was refused at startup.
        ConfigError: the webhook is enabled without a usable secret, URL or port.
    """
    if settings.webhook.enabled:  # refuse a bad webhook config before connecting
        settings.webhook_secret()
        settings.webhook_url()
    lock = InstanceLock.for_store(settings.store.url, settings.store.data_dir)
    lock.acquire(wait_for_commands=True)  # a `labelloop cycle` finishes; refusing left a restarted daemon down
    try:
        ctx = build_context(settings, connector=connector)
        check_binding(ctx)  # a daemon on the wrong project id refuses to start, before asking Label Studio
        close_interrupted_cycles(ctx.engine)
        try:
            who = ctx.connector.check()
            log.info("connected to Label Studio at %s as %s", masked_url(settings.label_studio.url), who)
        except ConnectorUnavailable as e:
            log.warning("Label Studio is not reachable yet (%s); will keep retrying", e)
        service = Service(ctx)
        service.install_signal_handlers()
        service.run()
    finally:
        lock.release()


_TEMPLATE = """# labelloop configuration. Environment variables override it: LABELLOOP_<SECTION>__<KEY>.
# The API token is a secret: keep it out of this file and set LABELLOOP_LABEL_STUDIO__API_KEY.

[label_studio]
url = {url}
{project_line}
project_title = "labelloop"
max_waiting_tasks = 200

[loop]
strategy = "default"
batch_size = 50
control_fraction = 0.05
classes = {classes}

[store]
url = "sqlite:///.labelloop/labelloop.db"
data_dir = ".labelloop"
"""


def write_config(path: Path, *, url: str, project_id: int | None, classes: list[str], force: bool) -> None:
    """Write a starter config file.

    Raises:
        ConfigError: the file exists and ``force`` is false, or a value is refused (nothing is written).
    """
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite)")
    try:
        LabelStudioSettings(url=url, project_id=project_id)
        classes = LoopSettings(classes=classes).classes  # trimmed
    except ValidationError as e:
        raise ConfigError(f"nothing written: {describe_invalid(e)}") from None
    project_line = f"project_id = {project_id}" if project_id is not None else "# project_id = 1"
    path.write_text(_TEMPLATE.format(url=json.dumps(url), project_line=project_line, classes=json.dumps(classes)))

