"""What re-ranking's prediction refresh costs as a project grows, on stock Label Studio and with its import flag.

    make bench-refresh                                  # 1,000 / 5,000 / 20,000 answered tasks (about 6 min)
    .venv/bin/python bench/refresh.py --sizes 1000,5000

Two Label Studio 1.23 servers on 127.0.0.1 (``deploy/ls_local.py``), one as shipped and one started with
``connectors.label_studio.FAST_IMPORT_FLAG=true``. In each, a project grows to every ``--sizes`` count
of answered tasks (imported with their annotation and a prediction, as a project looks after a long
run). At each size the connector pushes ``--waiting`` tasks, as a batch the annotators have not reached,
and then refreshes their predictions for a newer model (``LabelStudioConnector.refresh_predictions``,
what re-ranking calls once per retrain), ``--repeat`` times. The push is the baseline: it also imports
predictions (inside the tasks) and does not grow with the project. Figures are the best of the repeats.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages first
sys.path.insert(1, str(ROOT / "deploy"))  # ls_local.py, a script beside the demo (not a package)

from connectors.base import OutgoingTask, PredictionUpdate  # noqa: E402
from connectors.label_studio import FAST_IMPORT_FLAG, LabelStudioConnector  # noqa: E402

CLASSES = ["a", "b", "c"]
_IMPORT_ROWS = 2000  # answered tasks per import request while the project grows


def main() -> None:
    args = _parser().parse_args()
    import ls_local

    sizes = sorted(int(size) for size in args.sizes.split(","))
    print(f"labelloop bench/refresh: {args.waiting} waiting tasks refreshed at {', '.join(f'{s:,}' for s in sizes)} "
          "answered tasks", flush=True)
    results: dict[str, list[tuple[int, float, float]]] = {}
    for name, env in (("stock", {}), (f"{FAST_IMPORT_FLAG}=true", {FAST_IMPORT_FLAG: "true"})):
        with tempfile.TemporaryDirectory(prefix="labelloop-refresh-") as workdir:
            server = ls_local.start(Path(workdir) / "ls", template=ls_local.ensure_template(), extra_env=env)
            try:
                results[name] = _run(args, server, sizes)
            finally:
                server.stop()
    print(f"\n  {'Label Studio':<28}{'tasks':>8}{'push s':>9}{'refresh s':>11}")
    for name, rows in results.items():
        label = "stock" if name == "stock" else "with the import flag"
        for tasks, push_s, refresh_s in rows:
            print(f"  {label:<28}{tasks:>8,}{push_s:>9.2f}{refresh_s:>11.2f}")
    stock, fast = results["stock"][-1], results[f"{FAST_IMPORT_FLAG}=true"][-1]
    print(f"\n  at {stock[0]:,} tasks a refresh of {args.waiting} costs {stock[2]:.1f} s on stock Label Studio, "
          f"{fast[2]:.2f} s with {FAST_IMPORT_FLAG}=true ({stock[2] / max(fast[2], 1e-9):.0f}x)")


def _run(args: argparse.Namespace, server: Any, sizes: list[int]) -> list[tuple[int, float, float]]:
    connector = LabelStudioConnector.connect(url=server.url, api_key=server.legacy_token, project_title="refresh bench")
    project_id = int(connector.ensure_project(classes=CLASSES).project_id)
    client = connector._client  # the SDK client the connector made, for the bulk import of answered tasks
    answered, rows = 0, []
    for size in sizes:
        while answered < size:
            count = min(_IMPORT_ROWS, size - answered)
            client.projects.import_tasks(id=project_id, request=[
                {"data": {"text": f"answered {answered + i}"}, "annotations": [{"result": _choice("a")}],
                 "predictions": [{"result": _choice("b"), "model_version": "v0"}]}
                for i in range(count)
            ])
            answered += count
        began = time.perf_counter()
        ids = connector.push([OutgoingTask(item_id=f"w{size}-{i}", batch_id=f"b{size}", text=f"waiting {size} {i}",
                                           score=1.0, model_version="v1", predicted_label="c", predicted_score=0.5)
                              for i in range(args.waiting)])
        push_s = time.perf_counter() - began
        times = []
        for repeat in range(args.repeat):
            updates = [PredictionUpdate(task_id, f"v{size}-{repeat}", "a", 0.6) for task_id in ids.values()]
            began = time.perf_counter()
            connector.refresh_predictions(updates)
            times.append(time.perf_counter() - began)
        rows.append((answered + len(ids), push_s, min(times)))
        print(f"  {server.url}: {answered + len(ids):,} tasks, push {push_s:.2f} s, refresh {min(times):.2f} s",
              flush=True)
    connector.close()
    return rows


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000", help="answered tasks in the project, comma-separated")
    parser.add_argument("--waiting", type=int, default=200, help="waiting tasks refreshed (loop.max_waiting_tasks)")
    parser.add_argument("--repeat", type=int, default=2, help="refreshes at each size (best reported)")
    return parser


if __name__ == "__main__":
    main()
