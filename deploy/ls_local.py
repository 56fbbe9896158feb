"""Run a real Label Studio on 127.0.0.1 for tests, ``make demo`` and ``make up``.

Stdlib plus httpx, so the test fixtures and the demo script can import it by path
(``deploy/`` is not a package). Label Studio lives in its own virtualenv (it pins
Django and friends), by default ``$LABELLOOP_LS_VENV`` or ``~/.cache/labelloop/ls-venv``.

    python deploy/ls_local.py ensure-venv
    python deploy/ls_local.py start --data-dir D [--port P]     # foreground; Ctrl-C stops it

What :func:`start` sets up, and why:

* the admin user, its password and a random 40-hex legacy token come from env vars on the
  first start and are kept in ``<data_dir>/credentials.json`` (mode 0600): Label Studio
  creates the user only once per database, so a restart must reuse the same secrets;
* legacy tokens are off by default since LS 1.18, so it logs in with a session and enables
  them, then creates a Personal Access Token (a JWT refresh token; one per user);
* ``extra_env`` adds settings for the server process, e.g. ``SSRF_PROTECTION_ENABLED=false``
  so that it may call webhooks on loopback (LS 1.23 refuses local and private addresses
  by default, both when a webhook is saved and when it is sent);
* it binds ``--internal-host 127.0.0.1`` (``--host`` only sets the URL LS generates; the
  bind address defaults to 0.0.0.0), and fails if LS moved to another port because the
  one asked for was busy (LS does that silently).

Do not use ``label-studio --version`` as a health check: with no sub-command it runs the
migrations and then starts a server on 0.0.0.0:8080 in the default data dir.
Nothing here prints or logs a token; ``__main__`` prints where the secrets were written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = [
    "FAST_PREDICTION_IMPORT",
    "LS_REQUIREMENT",
    "LabelStudioStartError",
    "LocalLabelStudio",
    "default_venv",
    "ensure_venv",
    "start",
]

LS_REQUIREMENT = "label-studio>=1.23,<1.24"
# Label Studio's feature flag for importing predictions in batches and recounting only their tasks. As shipped,
# each import recounts every task of the project, so re-ranking's refresh grows with it (bench/refresh.py).
# The same name as connectors.label_studio.FAST_IMPORT_FLAG (this script cannot import the package).
FAST_PREDICTION_IMPORT = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
HOST = "127.0.0.1"
ADMIN_EMAIL = "admin@labelloop.local"
CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_TEXT = "credentials.txt"  # the same secrets for humans (`make up` points at it)
LOG_FILE = "label-studio.log"
_DATABASE = "label_studio.sqlite3"
_MARKER = ".labelloop-ls-ok"
_VERSION_PROBE = "import importlib.metadata as m; print(m.version('label-studio'))"


class LabelStudioStartError(RuntimeError):
    """Label Studio could not be installed, started or prepared; the message says where to look."""


def default_venv() -> Path:
    """``$LABELLOOP_LS_VENV`` or ``~/.cache/labelloop/ls-venv``."""
    return Path(os.environ.get("LABELLOOP_LS_VENV") or Path.home() / ".cache/labelloop/ls-venv").expanduser()


def ensure_venv(path: Path | str | None = None) -> Path:
    """Return a virtualenv with Label Studio 1.23 in it, creating or repairing it when needed.

    A marker file written after a verified install makes reruns take milliseconds; without
    the marker the installed version is probed (never ``label-studio --version``: see above).

    Raises:
        LabelStudioStartError: the path is not a virtualenv, or pip failed.
    """
    venv = Path(path).expanduser() if path is not None else default_venv()
    python, executable = venv / "bin" / "python", venv / "bin" / "label-studio"
    marker = venv / _MARKER
    if marker.is_file() and python.exists() and executable.exists():
        return venv
    found = _installed_version(python)
    if found is not None and executable.exists():
        marker.write_text(found)
        return venv
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise LabelStudioStartError(f"{venv} exists and is not a virtualenv; remove it or set LABELLOOP_LS_VENV")
    base_python = shutil.which("python3") or sys.executable
    _run([base_python, "-m", "venv", "--clear", str(venv)], what="create the Label Studio venv")
    _run([str(python), "-m", "pip", "install", "--quiet", LS_REQUIREMENT], what="pip install label-studio")
    version = _installed_version(python)
    if version is None or not executable.exists():
        raise LabelStudioStartError(f"label-studio is still missing from {venv} after pip install")
    marker.write_text(version)
    return venv


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=60)
    version = probe.stdout.strip()
    return version if probe.returncode == 0 and version.startswith("1.23.") else None


def _run(cmd: list[str], *, what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-20:])
        raise LabelStudioStartError(f"could not {what} (exit {done.returncode}):\n{tail}")


@dataclass(slots=True)
class LocalLabelStudio:
    """A Label Studio server process this module started. Not thread-safe."""

    url: str
    port: int
    username: str
    password: str = field(repr=False)
    legacy_token: str = field(repr=False)
    pat: str = field(repr=False)
    data_dir: Path
    log_path: Path
    venv: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    startup_s: float = 0.0  # wall time of the last start or restart, health check included
    log_offset: int = field(default=0, repr=False)  # where the current run's log starts
    extra_env: dict[str, str] = field(default_factory=dict)  # kept for restart()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

    def is_running(self) -> bool:
        """True while the process lives (it may still be booting)."""
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout_s: float = 20.0) -> None:
        """Terminate the server's process group, then kill it if it lingers. Idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        else:  # the leader died; reap any children it left in its group
            _signal_group(self.process, signal.SIGKILL)
        self.process = None

    def restart(self, *, timeout_s: float = 180.0) -> None:
        """Stop and start again on the same port and data dir ("LS went down and came back").

        Raises:
            LabelStudioStartError: it did not come back healthy.
        """
        self.stop()
        began = time.monotonic()
        self.process = _spawn(self)
        _wait_healthy(self, timeout_s=timeout_s)
        self.startup_s = time.monotonic() - began

    def __enter__(self) -> LocalLabelStudio:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start(
    data_dir: Path | str,
    *,
    port: int | None = None,
    venv: Path | str | None = None,
    timeout_s: float = 180.0,
    template: Path | str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> LocalLabelStudio:
    """Start a headless Label Studio on 127.0.0.1 and return it ready for API calls.

    Args:
        data_dir: its SQLite database, uploads, log and ``credentials.json``; created if missing.
            Reusing a data dir reuses its user and tokens.
        port: a free port is picked when ``None``.
        venv: see :func:`ensure_venv`.
        timeout_s: how long to wait for ``/health`` (the first start runs migrations: 30-60 s).
        template: a stopped data dir (see :func:`ensure_template`) copied into a *new*
            ``data_dir``, which skips the migrations: a start then takes a few seconds.
        extra_env: more environment for the server (and its restarts), applied last.

    Raises:
        LabelStudioStartError: the port is busy, the server did not become healthy (the message
            ends with the tail of its log), or the login/token set-up failed.
    """
    began = time.monotonic()
    data = Path(data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    venv_path = ensure_venv(venv)
    if template is not None and not (data / CREDENTIALS_FILE).exists() and not (data / _DATABASE).exists():
        shutil.copytree(Path(template), data, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOG_FILE))
    port = port if port is not None else _free_port()
    if _port_in_use(port):
        raise LabelStudioStartError(f"port {port} on {HOST} is already in use")
    saved = _load_credentials(data)
    server = LocalLabelStudio(
        url=f"http://{HOST}:{port}",
        port=port,
        username=saved.get("username", ADMIN_EMAIL),
        password=saved.get("password") or secrets.token_urlsafe(18),
        legacy_token=saved.get("legacy_token") or secrets.token_hex(20),
        pat=saved.get("pat", ""),
        data_dir=data,
        log_path=data / LOG_FILE,
        venv=venv_path,
        extra_env=dict(extra_env or {}),
    )
    _write_credentials(server)  # before the first start: the DB will hold these secrets
    server.process = _spawn(server)
    try:
        _wait_healthy(server, timeout_s=timeout_s)
        _prepare_tokens(server)
    except BaseException:
        server.stop()
        raise
    _write_credentials(server)
    server.startup_s = time.monotonic() - began
    return server


def ensure_template(path: Path | str | None = None, *, venv: Path | str | None = None) -> Path:
    """Return a migrated, stopped data dir with the admin and its tokens, building it once.

    Defaults to ``~/.cache/labelloop/ls-template-<LS version>``. Built in a scratch dir and
    renamed into place, so concurrent builders cannot leave a half-made template.

    Raises:
        LabelStudioStartError: building it failed.
    """
    venv_path = ensure_venv(venv)
    version = (venv_path / _MARKER).read_text().strip() or "unknown"
    target = Path(path).expanduser() if path is not None else default_venv().parent / f"ls-template-{version}"
    if (target / CREDENTIALS_FILE).exists() and (target / _DATABASE).exists():
        return target
    scratch = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    start(scratch, venv=venv_path).stop()
    (scratch / LOG_FILE).unlink(missing_ok=True)
    try:
        scratch.rename(target)
    except OSError:  # another process finished first, or a broken template is in the way
        shutil.rmtree(scratch, ignore_errors=True)
        if not (target / _DATABASE).exists():
            raise LabelStudioStartError(f"{target} is in the way of the Label Studio template; remove it") from None
    return target


def _spawn(server: LocalLabelStudio) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for name in ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "LABEL_STUDIO_API_KEY"):
        env.pop(name, None)  # LS also reads these bare names as fallbacks
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(server.data_dir),
            "LABEL_STUDIO_USERNAME": server.username,
            "LABEL_STUDIO_PASSWORD": server.password,
            "LABEL_STUDIO_USER_TOKEN": server.legacy_token,
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_HOST": "",
            "LATEST_VERSION_CHECK": "false",  # no internet: don't ask PyPI
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(server.extra_env)
    cmd = [
        str(server.venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        HOST,
        "--port",
        str(server.port),
        "--data-dir",
        str(server.data_dir),
        "--enable-legacy-api-token",
    ]
    with server.log_path.open("ab") as log:
        server.log_offset = log.tell()
        log.write(f"\n=== labelloop: starting Label Studio on {server.url} ===\n".encode())
        log.flush()
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=server.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )


def _wait_healthy(server: LocalLabelStudio, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        while time.monotonic() < deadline:
            if server.process is None or server.process.poll() is not None:
                code = server.process.returncode if server.process is not None else None
                raise LabelStudioStartError(
                    f"Label Studio exited (code {code}) before it was healthy\n" + _log_tail(server.log_path)
                )
            if "is in use" in _log_since(server.log_path, server.log_offset):
                raise LabelStudioStartError(
                    f"Label Studio found port {server.port} busy and moved elsewhere\n" + _log_tail(server.log_path)
                )
            with contextlib.suppress(httpx.TransportError):
                if http.get("/health").status_code == 200:
                    return
            time.sleep(0.5)
    raise LabelStudioStartError(
        f"Label Studio at {server.url} was not healthy after {timeout_s:.0f} s\n" + _log_tail(server.log_path)
    )


def _prepare_tokens(server: LocalLabelStudio) -> None:
    """Log in with a session, enable legacy + JWT tokens, create a PAT unless we have one."""
    with httpx.Client(base_url=server.url, timeout=30.0, follow_redirects=False) as http:
        http.get("/user/login/")
        referer = {"Referer": f"{server.url}/user/login/"}
        login = http.post(
            "/user/login/",
            data={
                "email": server.username,
                "password": server.password,
                "csrfmiddlewaretoken": (http.cookies.get("csrftoken") or ""),
            },
            headers=referer,
        )
        if login.status_code != 302 or "sessionid" not in http.cookies:
            raise LabelStudioStartError(
                f"session login as {server.username} failed (HTTP {login.status_code}); "
                f"if {server.data_dir} predates its {CREDENTIALS_FILE}, delete the dir"
            )
        headers = {"X-CSRFToken": (http.cookies.get("csrftoken") or ""), "Referer": f"{server.url}/"}
        enabled = http.post(
            "/api/jwt/settings",
            json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True},
            headers=headers,
        )
        if enabled.status_code >= 300:
            raise LabelStudioStartError(f"enabling API tokens failed (HTTP {enabled.status_code})")
        if server.pat:
            return
        created = http.post("/api/token/", headers=headers)
        if created.status_code == 409:
            raise LabelStudioStartError(
                f"the admin already has a Personal Access Token that {CREDENTIALS_FILE} "
                f"does not hold; delete {server.data_dir} to start afresh"
            )
        if created.status_code != 201:
            raise LabelStudioStartError(f"creating a Personal Access Token failed (HTTP {created.status_code})")
        server.pat = str(created.json()["token"])


def _load_credentials(data_dir: Path) -> dict[str, str]:
    path = data_dir / CREDENTIALS_FILE
    if not path.exists():
        return {}
    loaded = json.loads(path.read_text())
    return {key: str(value) for key, value in loaded.items() if isinstance(value, str)}


def _write_credentials(server: LocalLabelStudio) -> None:
    """Write the secrets to two 0600 files in the data dir (JSON for scripts, text for humans)."""
    values = {
        "url": server.url,
        "username": server.username,
        "password": server.password,
        "legacy_token": server.legacy_token,
        "pat": server.pat,
    }
    text = "".join(f"{key}: {value}\n" for key, value in values.items())
    for name, content in ((CREDENTIALS_FILE, json.dumps(values, indent=2) + "\n"), (CREDENTIALS_TEXT, text)):
        path = server.data_dir / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        path.chmod(0o600)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session=True: the group id is the leader's pid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((HOST, port)) == 0


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(65_536).decode(errors="replace")


def _log_tail(path: Path, *, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 16_000))
        tail = handle.read().decode(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {path} ---\n" + "\n".join(tail)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Label Studio for labelloop.")
    commands = parser.add_subparsers(dest="command", required=True)
    venv_cmd = commands.add_parser("ensure-venv", help="create or check the Label Studio virtualenv")
    venv_cmd.add_argument("--venv", default=None)
    start_cmd = commands.add_parser("start", help="start one in the foreground until Ctrl-C")
    start_cmd.add_argument("--data-dir", required=True)
    start_cmd.add_argument("--port", type=int, default=None)
    start_cmd.add_argument("--venv", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "ensure-venv":
            print(f"Label Studio venv ready at {ensure_venv(args.venv)}")
            return 0
        print(f"starting Label Studio on {HOST} (data in {args.data_dir}) …", flush=True)
        server = start(args.data_dir, port=args.port, venv=args.venv)
    except LabelStudioStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    print(
        f"Label Studio is at {server.url} (pid {server.pid}, ready in {server.startup_s:.0f} s); "
        f"log in as {server.username}.\nPassword and API tokens: {server.credentials_path} "
        f"(and {server.data_dir / CREDENTIALS_TEXT}); log: {server.log_path}\nCtrl-C stops it.",
        flush=True,
    )
    try:
        while not stopping and server.is_running():
            time.sleep(0.5)
    finally:
        server.stop()
    print("Label Studio stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
