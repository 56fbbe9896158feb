"""Joining a Ray cluster by an address that does not answer: a bounded wait, then one clear error.

Left alone, ``ray.init`` retried such an address 20 times for ~40 s each (13+ minutes, SIGTERM
acting only between tries) while the daemon held its work lock. Each probe runs ``connect`` in
a fresh process: a wait without end then fails the test on its timeout instead of hanging it,
and no Ray connection of another test module can be reused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.ray_connect import connect
from daemon.settings import ScaleoutSettings

try:
    import ray
except ImportError:
    ray = None

REPO = Path(__file__).resolve().parents[3]
PROBE = """
import sys
from daemon.ray_connect import connect
from daemon.settings import ScaleoutSettings
from models.errors import EmbedderUnavailable
try:
    connect(ScaleoutSettings(backend="ray", ray_address=sys.argv[1]))
except EmbedderUnavailable as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture(autouse=True)
def needs_ray() -> None:
    if ray is None:
        pytest.skip("RAY BACKEND NOT TESTED: `ray` is not importable; install it with pip install 'labelloop[ray]'")


def probe(
    address: str, tmp_path: Path, *, timeout_s: float, **ray_env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, **ray_env, "RAY_TMPDIR": str(tmp_path)}  # whatever Ray writes stays out of /tmp/ray
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_gcs_server_port_wait_time_s", None)
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PROBE, address], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    return done, time.monotonic() - began


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def error_lines(stderr: str) -> list[str]:
    """The probe's own lines, not Ray's log lines."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_an_address_where_nothing_listens_fails_at_once_with_one_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done, took_s = probe(address, tmp_path, timeout_s=60)
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert lines == [f"error: cannot reach the Ray cluster at '{address}': Connection refused (TCP connect, 10 s "
                     "limit); check scaleout.ray_address (the head's GCS port, 6379 by default) and that the "
                     "cluster is up; a cluster with token authentication also needs RAY_AUTH_MODE=token here (or "
                     "ray_address = 'auto')"]
    assert took_s < 30


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (no GCS there)."""
    server = socket.create_server(("0.0.0.0", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_a_port_that_is_no_gcs_fails_after_one_attempt(tmp_path: Path, silent_port: int) -> None:
    """One ``ray.init`` attempt instead of 20.

    By default an attempt lasts ~40 s (5 s to connect, 5 s for the pubsub, 30 s for the cluster id);
    Ray's own timeouts are cut here to 1 + 1 + 2 s so that one attempt ends within seconds and
    20 (about 100 s) overrun the probe's 60 s.
    """
    address = f"127.0.0.1:{silent_port}"
    done, took_s = probe(address, tmp_path, timeout_s=60, RAY_gcs_rpc_server_connect_timeout_s="1",
                         RAY_py_gcs_connect_timeout_s="2")
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot reach the Ray cluster at '{address}': Failed to connect to Ray cluster")
    assert took_s < 30


def test_an_address_that_is_not_host_port_is_a_config_error() -> None:
    if ray is not None and ray.is_initialized():
        pytest.fail("ray is still initialised by an earlier test module; it must call ray.shutdown()")
    with pytest.raises(ConfigError, match=r"scaleout.ray_address = 'head' is neither 'auto' nor host:port"):
        connect(ScaleoutSettings(backend="ray", ray_address="head"))


KEEPS_HANDLERS = """
import os, signal, sys
from daemon.ray_connect import connect
from daemon.settings import ScaleoutSettings

def ours(signum, frame):
    pass

for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, ours)
ray = connect(ScaleoutSettings(backend="ray", local_num_cpus=1))
kept = [signal.getsignal(signum) is ours for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)]
print(kept, os.environ.get("RAY_DISABLE_FAILURE_SIGNAL_HANDLER"))
ray.shutdown()
"""


def test_joining_ray_keeps_our_signal_handlers_and_leaves_out_its_crash_handler() -> None:
    """ray.init put in its own SIGTERM handler (sys.exit(15)) and a crash handler that aborted: embed on
    Ray ended a SIGTERM with exit 15 or SIGABRT, not 130 and its "run it again" line (QA)."""
    with tempfile.TemporaryDirectory(prefix="lr", dir="/tmp") as short:  # Ray's socket paths: 107 bytes at most
        env = {**os.environ, "RAY_TMPDIR": short}
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
        done = subprocess.run([sys.executable, "-c", KEEPS_HANDLERS], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[True, True, True] 1"
