"""What a full reconcile costs as a project grows: the connector's full read against an incremental one.

    make bench-reconcile                           # 2,000 annotated tasks (about 4 min, most of it annotating)
    .venv/bin/python bench/reconcile.py --tasks 500

A Label Studio 1.23 on 127.0.0.1 (``deploy/ls_local.py``), a project the connector creates, ``--tasks``
tasks pushed by the connector and each annotated once through the REST API (one request per task, as
annotators' browsers do). Then, ``--repeat`` times each: the daemon's full read
(``LabelStudioConnector.pull(since=None)``: every task of ours with its annotations), the cheap id
listing re-ranking uses (``list_tasks``), and the baseline every sync pays, an incremental pull with
nothing new since its watermark. Figures are medians; the daemon spaces full reads by their cost
(``daemon/sync.py``: ``RECONCILE_SPACING``), and this says what that cost is per task.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages first
sys.path.insert(1, str(ROOT / "deploy"))  # ls_local.py, a script beside the demo (not a package)

import httpx  # noqa: E402

from connectors.base import OutgoingTask  # noqa: E402
from connectors.label_studio import LabelStudioConnector  # noqa: E402


def main() -> None:
    args = _parser().parse_args()
    import ls_local

    with tempfile.TemporaryDirectory(prefix="labelloop-reconcile-") as workdir:
        server = ls_local.start(Path(workdir) / "ls", template=ls_local.ensure_template())
        try:
            _run(args, server)
        finally:
            server.stop()


def _run(args: argparse.Namespace, server: object) -> None:
    url, token = server.url, server.legacy_token  # type: ignore[attr-defined]
    connector = LabelStudioConnector.connect(url=url, api_key=token, project_title="reconcile bench")
    connector.ensure_project(classes=["a", "b", "c"])
    began = time.perf_counter()
    ids = connector.push([OutgoingTask(item_id=f"item-{i}", batch_id="bench", text=f"text {i} " * 8)
                          for i in range(args.tasks)])
    print(f"labelloop bench/reconcile: {args.tasks:,} tasks pushed in {time.perf_counter() - began:.1f} s", flush=True)
    began = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=60) as http:
        for n, task_id in enumerate(ids.values()):
            choice = "abc"[n % 3]
            result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]
            http.post(f"/api/tasks/{task_id}/annotations/", json={"result": result}).raise_for_status()
    print(f"  annotated each once in {time.perf_counter() - began:.0f} s", flush=True)
    now = datetime.now(UTC)
    rows = [
        ("full read: pull(since=None)", _median(args.repeat, lambda: len(connector.pull(since=None).tasks))),
        ("ids and counts: list_tasks()", _median(args.repeat, lambda: len(connector.list_tasks()))),
        ("baseline: incremental pull, nothing new", _median(args.repeat, lambda: len(connector.pull(since=now).tasks))),
    ]
    connector.close()
    print(f"\n  {'read':<42}{'tasks':>8}{'median s':>10}{'tasks/s':>10}")
    for name, (seconds, count) in rows:
        rate = f"{count / seconds:,.0f}" if count else "-"
        print(f"  {name:<42}{count:>8,}{seconds:>10.3f}{rate:>10}")
    full_s = rows[0][1][0]
    print(f"\n  a full read costs {full_s / max(rows[2][1][0], 1e-9):.0f}x an incremental pull here; at this rate "
          f"100,000 annotated tasks take about {100_000 * full_s / args.tasks:.0f} s")


def _median(repeat: int, read: Callable[[], int]) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        began = time.perf_counter()
        count = read()
        times.append(time.perf_counter() - began)
    return statistics.median(times), count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks pushed and annotated")
    parser.add_argument("--repeat", type=int, default=3, help="reads of each kind (median reported)")
    return parser


if __name__ == "__main__":
    main()
