"""deploy/demo.py (`make demo`, `make up`) stops what it started, however it is told to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_busy_port_is_one_line_that_says_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, str(DEMO), "--live", "--port", str(port), "--workdir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr  # it was a 30-line traceback
    assert f"port {port} on 127.0.0.1 is already in use; choose another with `make up PORT=8081`" in done.stderr


@pytest.mark.slow
def test_a_terminal_closed_then_ctrl_c_during_the_stop_still_stops_label_studio(tmp_path: Path) -> None:
    """SIGTERM and SIGHUP skipped the clean-up, and a second Ctrl-C landing in it left Label Studio
    running (it runs in a session of its own, so no signal of the terminal reaches it)."""
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-u", str(DEMO), "--live", "--port", str(port), "--workdir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert demo.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 300
    for line in demo.stdout:  # Label Studio's first start in a new data folder migrates (~1 min)
        seen.append(line)
        if "Press Ctrl-C to stop" in line or time.monotonic() > deadline:
            break
    assert any("Press Ctrl-C to stop" in line for line in seen), "".join(seen)
    assert listening(port)
    try:
        demo.send_signal(signal.SIGHUP)  # the terminal closed
        time.sleep(0.3)
        demo.send_signal(signal.SIGINT)  # and an impatient Ctrl-C lands in the clean-up
        rest, _ = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert "stopped the daemon and Label Studio." in rest, rest
    assert not listening(port)
