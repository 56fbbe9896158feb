"""Joining Ray for the ``ray`` scale-out backend, bounded in time and with one clear error.

Left alone, ``ray.init`` retries an address where nothing answers 20 times for ~40 s each,
holding the daemon's work lock all along; :func:`connect` bounds it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from daemon.errors import ConfigError
from daemon.settings import ScaleoutSettings
from models.errors import EmbedderUnavailable

__all__ = ["connect"]

log = logging.getLogger(__name__)
_INSTALL_HINT = "pip install 'labelloop[ray]'"
_GCS_CONNECT_TIMEOUT_S = 10.0  # a TCP connect to the head's GCS port before ray.init
_GCS_ATTEMPTS_ENV = "RAY_gcs_server_port_wait_time_s"  # ray.init's GCS attempts, ~1 s apart
_ADDRESS_HINT = ("check scaleout.ray_address (the head's GCS port, 6379 by default) and that the cluster is up; a "
                 "cluster with token authentication also needs RAY_AUTH_MODE=token here (or ray_address = 'auto')")


def connect(settings: ScaleoutSettings) -> Any:
    """Return the ``ray`` module, connected: reuse a live connection, else ``ray.init`` one.

    ``ray_address`` ``None`` starts a private local instance (``local_num_cpus`` CPUs);
    ``"auto"`` joins the cluster ``ray start`` made this machine a node of; ``"host:port"``
    joins the cluster whose head (GCS) listens there, and this machine must be one of its nodes.
    A ``"ray://"`` (Ray Client) address is refused: Ray Data jobs need a driver with a local
    raylet, which Ray Client does not give (ray-project/ray#42739).

    Joining is bounded: left alone, ``ray.init`` retries an address where nothing answers 20
    times for ~40 s each, holding the daemon's work lock all along. So a ``host:port`` must first
    accept a TCP connection within ``_GCS_CONNECT_TIMEOUT_S`` (10 s), and ``ray.init`` then gets
    one attempt (~40 s at most against a port that answers but is no GCS).

    Raises:
        ConfigError: ``ray`` is not installed (the message says ``pip install 'labelloop[ray]'``),
            or ``ray_address`` is a ``ray://`` address or neither ``"auto"`` nor ``host:port``.
        EmbedderUnavailable: the cluster cannot be reached.
    """
    if (settings.ray_address or "").startswith("ray://"):
        raise ConfigError(
            f"scaleout.ray_address = {settings.ray_address!r} connects through Ray Client, which cannot run "
            "Ray Data jobs; make this machine a node of the cluster (ray start --address=<head>:6379) "
            "and set scaleout.ray_address = 'auto'"
        )
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(
            f"scaleout.backend = 'ray' needs Ray, which is not installed: {_INSTALL_HINT} "
            "(or set scaleout.backend = 'local')"
        ) from e
    if not ray.is_initialized():
        address = settings.ray_address
        local = address is None
        if address is not None and address != "auto":
            _check_gcs_answers(address)
        try:
            with _one_gcs_attempt(enabled=not local), _our_signal_handlers():
                ray.init(
                    address=address,
                    num_cpus=settings.local_num_cpus if local else None,
                    include_dashboard=False if local else None,
                    log_to_driver=True,
                )
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            raise EmbedderUnavailable(
                f"cannot reach the Ray cluster at {address!r}: {_first_line(e)}; {_ADDRESS_HINT}"
            ) from e
        log.info("connected to Ray (%s): %s", address or "local instance", ray.cluster_resources())
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _check_gcs_answers(address: str) -> None:
    """Refuse at once a ``host:port`` where no TCP connection opens within ``_GCS_CONNECT_TIMEOUT_S``.

    Ray's own head listens on every interface, so the address as written is the one to try.

    Raises:
        ConfigError: ``address`` is not ``host:port``.
        EmbedderUnavailable: the connection was refused, timed out or the host has no address.
    """
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"scaleout.ray_address = {address!r} is neither 'auto' nor host:port "
                          "(the head's GCS port, 6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_GCS_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise EmbedderUnavailable(
            f"cannot reach the Ray cluster at {address!r}: {reason} (TCP connect, {_GCS_CONNECT_TIMEOUT_S:.0f} s "
            f"limit); {_ADDRESS_HINT}"
        ) from e


@contextmanager
def _our_signal_handlers() -> Iterator[None]:
    """Keep this process's SIGTERM, SIGINT and SIGHUP handlers across ``ray.init``, and Ray's C++ crash handler out.

    ``ray.init`` on the main thread put in its own SIGTERM handler (``sys.exit(15)``), and its core
    worker a crash handler that dumped a stack trace and aborted: ``labelloop embed`` on Ray ended a
    SIGTERM with exit 15 or a SIGABRT instead of 130 and its "run it again" line, and the daemon,
    stopped during a Ray job, died with SIGABRT before its clean stop (QA). The crash handler is
    switched off for this process only (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``); an operator's own
    setting of it wins.
    """
    os.environ.setdefault(_NO_CRASH_HANDLER_ENV, "1")
    on_main = threading.current_thread() is threading.main_thread()
    saved = {signum: signal.getsignal(signum) for signum in _OUR_SIGNALS} if on_main else {}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


_OUR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_NO_CRASH_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


@contextmanager
def _one_gcs_attempt(*, enabled: bool) -> Iterator[None]:
    """Make ``ray.init`` try the GCS once instead of 20 times, unless the operator chose a count.

    ``RAY_gcs_server_port_wait_time_s`` is Ray's own override of that count (read when
    ``ray.init`` runs, ray/_private/node.py); it is restored afterwards, as a local instance
    started later in this process waits on its GCS port by the same variable.
    """
    if not enabled or _GCS_ATTEMPTS_ENV in os.environ:
        yield
        return
    os.environ[_GCS_ATTEMPTS_ENV] = "1"
    try:
        yield
    finally:
        os.environ.pop(_GCS_ATTEMPTS_ENV, None)


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (Ray appends whole tracebacks to some)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
