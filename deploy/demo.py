"""`make demo`: the whole loop on a live Label Studio, with a simulated annotator.

Starts Label Studio on 127.0.0.1 (its own venv), imports the bundled demo pool (a quarter
of it held out with gold labels for evaluation), runs the real `labelloop run` daemon, and
answers each pushed batch through Label Studio's API the way an annotator's browser does
(fetch the next task, submit a choice). After every round it prints the labels so far, the
held-out macro-F1 and the batch's class mix; then it stops everything it started.

`make up` (``--live``) does the same set-up but leaves the labeling to you in the browser.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "deploy"))
import ls_local  # noqa: E402  (a sibling script, not a package)

DEMO_DATA = REPO / "daemon" / "demo_data"
LABELLOOP = Path(sys.executable).parent / "labelloop"


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main() -> int:
    """Run the demo; Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stop everything it started."""
    args = _parse()
    for signum in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: Label Studio runs in its own session
        signal.signal(signum, _interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; everything the demo started is stopped.", file=sys.stderr, flush=True)
        return 130
    except ls_local.LabelStudioStartError as e:
        print(f"error: {e}" + ("; choose another with `make up PORT=8081`" if "in use" in str(e) else ""),
              file=sys.stderr, flush=True)
        return 1


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    if not args.live and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"starting Label Studio on 127.0.0.1 (data in {workdir / 'ls-data'}) …", flush=True)
    template = None if args.live else ls_local.ensure_template()  # a migrated data dir: starts in seconds
    # as shipped, Label Studio recounts every task of the project on each prediction import (re-ranking's)
    server = ls_local.start(workdir / "ls-data", port=args.port, template=template,
                            extra_env={ls_local.FAST_PREDICTION_IMPORT: "true"})
    daemon: subprocess.Popen[bytes] | None = None
    try:
        env = _daemon_env(server, workdir)
        pool_file, held_out = _split(workdir, seed=args.seed)
        _write_config(workdir, args)
        subprocess.run([str(LABELLOOP), "pool", "add", str(pool_file)], cwd=workdir, env=env, check=True)
        with (workdir / "daemon.log").open("ab") as log:
            daemon = subprocess.Popen([str(LABELLOOP), "run"], cwd=workdir, env=env, stdout=log, stderr=log)
        print(f"daemon started (pid {daemon.pid}, log {workdir / 'daemon.log'})", flush=True)
        if args.live:
            return _live(server, daemon)
        code = _simulate(server, workdir, held_out, args, daemon)
        if code == 0:
            gold = json.loads((workdir / "gold.json").read_text())  # every pool item's answer
            _export(workdir, env, gold)
            _predict(workdir, env, gold)
            config = workdir / "labelloop.toml"
            print(f"\nThe demo's store stays: `.venv/bin/labelloop -c {config} status` (or `batches`, `export`) "
                  "looks around in it.\nTo run it for real: `make up`, then label in the browser at the printed "
                  "address.")
        return code
    finally:
        _stop(daemon, server)


def _stop(daemon: subprocess.Popen[bytes] | None, server: ls_local.LocalLabelStudio) -> None:
    """Stop the daemon, then Label Studio, deaf to further stop signals: a second Ctrl-C landing
    here used to leave Label Studio running (it is in a session of its own)."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    print("stopping the daemon and Label Studio …", flush=True)
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
    server.stop()
    print("stopped the daemon and Label Studio.", flush=True)


def _export(workdir: Path, env: dict[str, str], gold: dict[str, str]) -> None:
    """Write the labels out with `labelloop export` and check them against what the annotator answered."""
    _quiet(["export", "labels.csv", "--force"], workdir, env)
    with (workdir / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    agree = sum(gold.get(row["id"]) == row["label"] for row in rows)
    print(f"labels exported to {workdir / 'labels.csv'}: {len(rows)} items, {agree} as the annotator answered "
          "(`labelloop export`; a pool file again)", flush=True)


def _predict(workdir: Path, env: dict[str, str], gold: dict[str, str]) -> None:
    """Write the model's guesses with `labelloop predict` and score those for the items nobody labeled."""
    _quiet(["predict", "predictions.csv", "--force"], workdir, env)
    with (workdir / "predictions.csv").open(newline="") as handle:
        unlabeled = [row for row in csv.DictReader(handle) if not row["label"] and row["id"] in gold]
    agree = sum(gold[row["id"]] == row["predicted"] for row in unlabeled)
    print(f"predictions written to {workdir / 'predictions.csv'}: of the {len(unlabeled)} pool items nobody "
          f"labeled, the model guesses {agree} as their gold label (`labelloop predict`)", flush=True)


def _quiet(args: list[str], workdir: Path, env: dict[str, str]) -> None:
    """Run a labelloop command without its output; on failure show what it said, then raise."""
    done = subprocess.run([str(LABELLOOP), *args], cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout + done.stderr, file=sys.stderr, flush=True)
        done.check_returncode()


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="label in the browser instead of simulating")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.workdir is None:
        args.workdir = str(REPO / (".labelloop/live" if args.live else "demo-run"))
    if args.live and args.port is None:
        args.port = 8080
    return args


def _daemon_env(server: ls_local.LocalLabelStudio, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LABELLOOP_CONFIG": str(workdir / "labelloop.toml"),
        "LABELLOOP_LABEL_STUDIO__URL": server.url,
        "LABELLOOP_LABEL_STUDIO__API_KEY": server.pat,
        "LABELLOOP_LOG_FORMAT": "human",
        "HF_HUB_OFFLINE": "1",
    })
    return env


def _split(workdir: Path, *, seed: int) -> tuple[Path, dict[str, tuple[str, str]]]:
    """Hold out a quarter of the demo pool per class; return the pool file and {id: (text, label)}."""
    with (DEMO_DATA / "gold.csv").open(newline="") as handle:
        gold = {row["id"]: row["label"] for row in csv.DictReader(handle)}
    with (DEMO_DATA / "pool.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_class.setdefault(gold[row["id"]], []).append(row)
    rng = random.Random(seed)
    held_out: dict[str, tuple[str, str]] = {}
    for label, members in sorted(by_class.items()):
        rng.shuffle(members)
        for row in members[: max(2, len(members) // 4)]:
            held_out[row["id"]] = (row["text"], label)
    pool_file = workdir / "pool.csv"
    with pool_file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "channel"])
        writer.writeheader()
        writer.writerows(row for row in rows if row["id"] not in held_out)
    (workdir / "gold.json").write_text(json.dumps(gold))
    return pool_file, held_out


def _write_config(workdir: Path, args: argparse.Namespace) -> None:
    classes = sorted(set(json.loads((workdir / "gold.json").read_text()).values()))
    fast = not args.live
    (workdir / "labelloop.toml").write_text(
        "[label_studio]\n"
        'project_title = "labelloop demo"\n'
        f"max_waiting_tasks = {args.batch_size}\n"
        "[loop]\n"
        f"batch_size = {args.batch_size}\n"
        f"classes = {json.dumps(classes)}\n"
        f"sync_interval_s = {1.0 if fast else 5.0}\n"
        f"cycle_interval_s = {1.0 if fast else 10.0}\n"
        "min_new_labels = 5\n"
        f"low_water_fraction = {0.0 if fast else 0.5}\n"
        f"seed = {args.seed}\n"
        "[store]\n"
        'url = "sqlite:///state/labelloop.db"\n'
        'data_dir = "state"\n'
    )


def _live(server: ls_local.LocalLabelStudio, daemon: subprocess.Popen[bytes]) -> int:
    secrets = server.credentials_path
    print(f"\nLabel Studio is at {server.url} — log in as {server.username}; the password is in {secrets}.")
    print("Open the project 'labelloop demo' and label; the daemon queues new batches as you go.")
    print("In another terminal: `.venv/bin/labelloop -c .labelloop/live/labelloop.toml status` (from the repo).")
    print("Press Ctrl-C to stop (the labels stay in .labelloop/live for the next `make up`).", flush=True)
    try:
        while daemon.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    return daemon.returncode or 0


def _simulate(server: ls_local.LocalLabelStudio, workdir: Path, held_out: dict[str, tuple[str, str]],
              args: argparse.Namespace, daemon: subprocess.Popen[bytes]) -> int:
    from demo_eval import HeldOut, render_rounds

    gold = json.loads((workdir / "gold.json").read_text())
    evaluator = HeldOut(held_out)
    annotator = Annotator(server.url, server.legacy_token, gold)
    state_db = workdir / "state" / "labelloop.db"
    rounds = []
    total = seen_withdrawn = 0
    for number in range(1, args.rounds + 1):
        project_id = _wait_for_project(state_db, daemon)
        answered = annotator.label_queue(project_id, timeout_s=180)
        if not answered and _paused(state_db):
            print(f"the stopping rule paused the queue: {_paused(state_db)}", flush=True)
            break
        if not answered:
            print("no tasks arrived in time; see daemon.log", flush=True)
            return 1
        total += len(answered)
        if not _wait_for_labels(state_db, total):
            print(f"the daemon did not bring the {total} answers given so far into its store within 60 s; "
                  "see daemon.log", flush=True)
            return 1
        row = evaluator.round_row(number, state_db, answered)
        rounds.append(row)
        # a retrain in the middle of the round made waiting tasks stale: fewer labels than the batch
        now_withdrawn = _count(state_db, "select count(*) from batchitem where state = 'WITHDRAWN'")  # enum name
        withdrawn, seen_withdrawn = now_withdrawn - seen_withdrawn, now_withdrawn
        note = f" (re-ranking withdrew {withdrawn} stale task{'s' if withdrawn > 1 else ''})" if withdrawn else ""
        print(f"round {number}: {row['labels']} labels{note}, held-out macro-F1 {row['macro_f1']:.3f}, "
              f"batch mix {row['mix']}", flush=True)
    render_rounds(rounds, state_db)
    return 0


def _wait_for_project(state_db: Path, daemon: subprocess.Popen[bytes], timeout_s: float = 120) -> str:
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with code {daemon.returncode}; see daemon.log")
        if state_db.exists():
            with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
                try:
                    row = db.execute("select value from keyvalue where key='project_id'").fetchone()
                except sqlite3.OperationalError:
                    row = None
            if row:
                return str(row[0])
        time.sleep(0.5)
    raise TimeoutError("the daemon did not bind a Label Studio project; see daemon.log")


def _paused(state_db: Path) -> str:
    import sqlite3

    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
        row = db.execute("select value from keyvalue where key='paused'").fetchone()
    return json.loads(row[0])["reason"] if row and row[0] else ""


def _count(state_db: Path, query: str) -> int:
    """The number a ``select count(*) …`` gives, read without locking the daemon's store."""
    import sqlite3

    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
        (n,) = db.execute(query).fetchone()
    return int(n)


def _wait_for_labels(state_db: Path, expected: int, timeout_s: float = 60) -> bool:
    """Let the daemon's next sync bring every submitted answer into the store; False if it did not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _count(state_db, "select count(*) from labelrecord") >= expected:
            return True
        time.sleep(0.5)
    return False


class Annotator:
    """Answers tasks like a person in the labeling stream: next task, read it, submit a choice."""

    def __init__(self, url: str, token: str, gold: dict[str, str]) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=30)
        self.gold = gold

    def label_queue(self, project_id: str, *, timeout_s: float) -> list[str]:
        """Wait for tasks, then answer every waiting one; return the gold labels given."""
        deadline = time.monotonic() + timeout_s
        answered: list[str] = []
        while time.monotonic() < deadline:
            task = self._next(project_id)
            if task is None:
                if answered:
                    return answered
                time.sleep(0.5)
                continue
            label = self.gold[task["data"]["al_item_id"]]
            response = self.client.post(
                f"/api/tasks/{task['id']}/annotations/",
                json={"result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                  "value": {"choices": [label]}}], "lead_time": 3.0},
            )
            if response.is_error and self._withdrawn(task["id"]):
                # withdrawn while open: with more people at once than loop.rerank_keep_next, or one who
                # answers that many tasks between the daemon's look at the queue and its withdrawal, as
                # this scripted annotator can (about a second)
                continue
            response.raise_for_status()
            answered.append(label)
        return answered

    def _withdrawn(self, task_id: int) -> bool:
        """True when the daemon withdrew the task: it is gone (404), or Label Studio 1.23's delete
        action has unlinked it from the project (an annotation then fails with a 500)."""
        response = self.client.get(f"/api/tasks/{task_id}")
        return response.status_code == 404 or (response.is_success and response.json().get("project") is None)

    def _next(self, project_id: str) -> dict | None:
        response = self.client.get(f"/api/projects/{project_id}/next")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        task = response.json()
        return task if task.get("id") and "al_item_id" in task.get("data", {}) else None


if __name__ == "__main__":
    sys.exit(main())
