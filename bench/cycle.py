"""Freshness at pool scale: from an annotation submitted in Label Studio to the next batch visible there.

    make bench-cycle                                    # 1M items, 20 measured rounds, webhook
    .venv/bin/python bench/cycle.py --n 1e5 --rounds 10
    .venv/bin/python bench/cycle.py --mode poll         # no webhook: the daemon polls every 0.5 s
    .venv/bin/python bench/cycle.py --dir /tmp/x --keep # keep the store and shards for a rerun

Everything real except the encoder: a Label Studio 1.23 on 127.0.0.1 (``deploy/ls_local.py``), the
real ``labelloop run`` (``python -m daemon run`` of this checkout) in a subprocess, and a store of
``--n`` pool items whose vectors are written straight into the embedding cache
(``bench/synthetic.py``, as bring-your-own embeddings) with ``--seed-labels`` seed labels. With
``--mode webhook`` (the default) Label Studio calls the daemon's webhook on each annotation; the
daemon's own polling is slowed to 30 s so it cannot explain a reaction. With ``--mode poll`` the
daemon syncs and checks for a due cycle every ``--poll-s``.

Each round plays an annotator: it answers the waiting tasks (true classes) down to one above the
low-water mark, waits until the daemon is idle, then submits one more annotation, the one that makes
the queue low. The latency is from just before that API call to the moment every task of the next
batch is listed by Label Studio. The cycle that chose the batch says how long each of its stages
took (``CycleRun.stage_seconds``); "trigger" is the time from the annotation to that cycle's start
(Label Studio's request and webhook call, the triggered pull, the due check). Re-ranking runs after the
push, so it is listed but is not part of the latency. The first
``--warmup`` rounds (a cold daemon: index build, first model) are reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))
sys.path.insert(2, str(ROOT / "deploy"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from label_studio_sdk import LabelStudio  # noqa: E402
from label_studio_sdk.core import ApiError  # noqa: E402
from sqlalchemy import delete, insert  # noqa: E402
from sqlmodel import Session, col, func, select  # noqa: E402
from synthetic import SyntheticPool, ensure_pool, item_hash, item_id  # noqa: E402

from connectors._ls_auth import RefreshOnExpiry  # noqa: E402
from daemon.store import (  # noqa: E402
    Batch,
    BatchItem,
    BatchItemState,
    BatchStatus,
    CycleRun,
    HealthEvent,
    KeyValue,
    LabelEvent,
    LabelRecord,
    LabelStatus,
    ModelRun,
    PoolItem,
    make_engine,
)

DEFAULT_DIR = Path("/tmp/labelloop-bench-cycle")
SECRET = "bench-" + "s" * 26
TARGET_P95_S = 5.0
_INSERT_ROWS = 20_000


def main() -> None:
    args = _parser().parse_args()
    n = int(float(args.n))
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"labelloop bench/cycle: {n:,} items, batch {args.batch}, {args.rounds} rounds (+{args.warmup} warm-up), "
          f"mode {args.mode}; load {_load()}", flush=True)
    import ls_local  # deploy/ls_local.py, a script beside the demo (not a package)

    shutil.rmtree(args.dir / "label-studio", ignore_errors=True)  # every run starts from an empty project
    server = ls_local.start(args.dir / "label-studio", template=ls_local.ensure_template(),
                            extra_env={"SSRF_PROTECTION_ENABLED": "false"})
    daemon: subprocess.Popen[bytes] | None = None
    # the annotator's client renews an access token refused in flight, as the daemon's connector does
    http = httpx.Client(timeout=60.0, auth=RefreshOnExpiry(server.url, server.pat))
    try:
        pool = ensure_pool(args.dir / "state" / "embeddings", n, log=True)
        engine = _build_store(args, pool)
        env = _daemon_env(args, server)
        client = LabelStudio(base_url=server.url, api_key=server.pat, httpx_client=http, timeout=60.0)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run"], cwd=args.dir, env=env,
                                  stdout=(args.dir / "daemon.log").open("ab"), stderr=subprocess.STDOUT)
        project_id = _wait_for(lambda: _project_id(engine), 300, "the daemon's project", args)
        _wait_for(lambda: _task_count(client, project_id) >= args.batch or None, 600, "the first batch", args)
        print(f"  first batch visible {time.monotonic() - started:.1f} s after `labelloop run` started", flush=True)
        truth = pool.labels()
        answered: set[str] = set()
        rounds = [_round(args, engine, client, truth, r, answered) for r in range(args.warmup + args.rounds)]
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
        http.close()
        server.stop()
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    _report(args, rounds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="1e6", help="pool items (default 1e6)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50, help="loop.batch_size")
    parser.add_argument("--seed-labels", type=int, default=1000)
    parser.add_argument("--mode", choices=["webhook", "poll"], default="webhook")
    parser.add_argument("--poll-s", type=float, default=0.5, help="sync/cycle interval in poll mode")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the store, shards and Label Studio data")
    return parser


def _build_store(args: argparse.Namespace, pool: SyntheticPool) -> Any:
    """The daemon's SQLite store: n pool items with bring-your-own vectors, and seed labels."""
    engine = make_engine(f"sqlite:///{args.dir}/state/labelloop.db")
    with Session(engine) as session:
        have = int(session.exec(select(func.count()).select_from(PoolItem)).one())
        if session.get(KeyValue, "embedding_source") is None:
            session.add(KeyValue(key="embedding_source", value=pool.model_key))
        session.commit()
    started = time.perf_counter()
    for start in range(have, pool.n, _INSERT_ROWS):
        stop = min(pool.n, start + _INSERT_ROWS)
        values = [{"item_id": item_id(i), "text": f"synthetic item {i}", "content_hash": item_hash(i),
                   "meta_json": "{}", "source": "bench", "is_embedded": True} for i in range(start, stop)]
        with Session(engine) as session:
            session.execute(insert(PoolItem), values)
            session.commit()
    if pool.n > have:
        print(f"  store: {pool.n - have:,} pool items inserted in {time.perf_counter() - started:.0f} s", flush=True)
    with Session(engine) as session:  # a kept store: forget the last run's project, tasks and labels
        for table in (BatchItem, Batch, LabelEvent, CycleRun, ModelRun, HealthEvent):
            session.execute(delete(table))
        session.execute(delete(LabelRecord).where(col(LabelRecord.source) != "seed"))
        session.execute(delete(KeyValue).where(col(KeyValue.key) != "embedding_source"))
        session.commit()
    with Session(engine) as session:
        if not session.exec(select(LabelRecord.item_id).limit(1)).first():
            truth = pool.labels()
            for i in np.random.default_rng(1).choice(pool.n, size=args.seed_labels, replace=False):
                session.add(LabelRecord(item_id=item_id(int(i)), status=LabelStatus.LABELED,
                                        label=_class_name(int(truth[i])), source="seed"))
            session.commit()
    return engine


def _class_name(c: int) -> str:
    return f"c{c:02d}"


def _daemon_env(args: argparse.Namespace, server: Any) -> dict[str, str]:
    interval = "30" if args.mode == "webhook" else str(args.poll_s)
    config = {
        "LABELLOOP_STORE__URL": f"sqlite:///{args.dir}/state/labelloop.db",
        "LABELLOOP_STORE__DATA_DIR": str(args.dir / "state"),
        "LABELLOOP_LABEL_STUDIO__URL": server.url,
        "LABELLOOP_LABEL_STUDIO__API_KEY": server.pat,
        "LABELLOOP_LABEL_STUDIO__PROJECT_TITLE": "labelloop bench cycle",
        "LABELLOOP_LABEL_STUDIO__TIMEOUT_S": "60",
        "LABELLOOP_LOOP__BATCH_SIZE": str(args.batch),
        "LABELLOOP_LOOP__CLASSES": json.dumps([_class_name(c) for c in range(77)]),
        "LABELLOOP_LOOP__SYNC_INTERVAL_S": interval,
        "LABELLOOP_LOOP__CYCLE_INTERVAL_S": interval,
        "LABELLOOP_LOOP__STOP_RULE_ENABLED": "false",  # keep the queue going for every round
        "LABELLOOP_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
    }
    if args.mode == "webhook":
        config.update({"LABELLOOP_WEBHOOK__ENABLED": "true", "LABELLOOP_WEBHOOK__PORT": str(_free_port()),
                       "LABELLOOP_WEBHOOK__SECRET": SECRET})
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env.update(config)
    env["PYTHONPATH"] = str(ROOT)  # `labelloop run` from this checkout, whatever the install points at
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(condition: Callable[[], Any], timeout_s: float, what: str, args: argparse.Namespace) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    tail = (args.dir / "daemon.log").read_text()[-3000:] if (args.dir / "daemon.log").exists() else ""
    raise TimeoutError(f"timed out waiting for {what}\n{tail}")


def _project_id(engine: Any) -> int | None:
    with Session(engine) as session:
        row = session.get(KeyValue, "project_id")
        return int(row.value) if row is not None else None


def _task_count(client: LabelStudio, project_id: int) -> int:
    return int(client.tasks.list(project=project_id, fields="task_only", include="id", page_size=1).response.total)


def _batch_tasks(client: LabelStudio, project_id: int, batch_id: str) -> int:
    """Tasks of one batch that Label Studio lists (filtered on the ``al_batch_id`` we write)."""
    query = json.dumps({"filters": {"conjunction": "and", "items": [{
        "filter": "filter:tasks:data.al_batch_id", "operator": "equal", "type": "String", "value": batch_id}]}})
    page: Any = client.tasks.list(project=project_id, query=query, fields="task_only", include="id", page_size=1)
    return int(page.response.total)


def _batch_size(engine: Any, batch_id: str) -> int:
    with Session(engine) as session:
        batch = session.get(Batch, batch_id)
        return batch.size if batch is not None else 1 << 30


def _annotate(client: LabelStudio, task_id: int, choice: str) -> None:
    client.annotations.create(
        id=task_id,
        result=[{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}],
        lead_time=2.0,
    )


def _round(
    args: argparse.Namespace, engine: Any, client: LabelStudio, truth: Any, number: int, answered: set[str],
) -> dict[str, Any]:
    """Answer tasks until one more answer makes the queue low, then time that one answer."""
    low_water = int(0.5 * args.batch)  # loop.low_water_fraction's default
    while True:
        _wait_idle(engine, answered, args)
        waiting = _waiting(engine)
        if len(waiting) == low_water + 1:
            break
        for item, task_id in waiting[: max(0, len(waiting) - low_water - 1)]:
            _answer(client, task_id, item, truth, answered)
    last_batch = _latest_batch(engine)
    item, task_id = waiting[0]
    load = _load()
    t0 = time.time()
    _answer(client, task_id, item, truth, answered)
    batch_id = _wait_for(lambda: _latest_batch(engine) if _latest_batch(engine) != last_batch else None, 300,
                         "a new batch in the store", args)
    _wait_for(lambda: _batch_tasks(client, _project_id(engine) or 0, batch_id) >= _batch_size(engine, batch_id),
              300, "the new batch's tasks in Label Studio", args)
    t1 = time.time()
    stages, cycle_start = _cycle_of(engine, batch_id)
    stages = {"trigger": max(0.0, cycle_start - t0), **stages}
    result = {"round": number, "latency_s": t1 - t0, "stages": stages, "load": load}
    print(f"  round {number:>2}: {t1 - t0:6.2f} s  " + " ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f"  (load {load})", flush=True)
    return result


def _answer(client: LabelStudio, task_id: str, item: str, truth: Any, answered: set[str]) -> None:
    """Submit the true class, as an annotator's "Submit" does; a task withdrawn meanwhile is skipped."""
    try:
        _annotate(client, int(task_id), _class_name(int(truth[int(item[3:])])))
    except ApiError as e:
        if e.status_code != 404 and not _unlinked(client, int(task_id)):
            raise
        return
    answered.add(item)


def _unlinked(client: LabelStudio, task_id: int) -> bool:
    """True when a re-ranking withdrawal has just taken the task: Label Studio 1.23's delete action
    first sets ``project=None`` and deletes later, and an annotation meanwhile fails with a 500."""
    try:
        return getattr(client.tasks.get(id=str(task_id)), "project", None) is None
    except ApiError as e:
        return e.status_code == 404


def _waiting(engine: Any) -> list[tuple[str, str]]:
    """``(item id, remote task id)`` of our pushed tasks nobody answered, oldest first (the store's view)."""
    with Session(engine) as session:
        rows = session.exec(
            select(BatchItem.item_id, BatchItem.remote_task_id)
            .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
            .where(BatchItem.state == BatchItemState.PENDING, col(BatchItem.remote_task_id).is_not(None))
            .where(col(Batch.status).in_([BatchStatus.SELECTED, BatchStatus.PUSHED]))
            .order_by(col(Batch.created_at), col(BatchItem.position))
        ).all()
    return [(item, remote or "") for item, remote in rows]


def _wait_idle(engine: Any, answered: set[str], args: argparse.Namespace) -> None:
    """Until the daemon has pulled every answer and no cycle runs, twice in a row 0.5 s apart."""

    def settled() -> bool:
        with Session(engine) as session:
            pulled = int(session.exec(select(func.count()).select_from(LabelRecord)
                                      .where(LabelRecord.source != "seed")).one())
            running = session.exec(select(CycleRun.id).where(CycleRun.status == "running").limit(1)).first()
        return pulled >= len(answered) and running is None

    for _ in range(2):
        _wait_for(settled, 300, "the daemon to pull every answer and finish its cycle", args)
        time.sleep(0.5)


def _latest_batch(engine: Any) -> str | None:
    with Session(engine) as session:
        batch = session.exec(select(Batch).order_by(col(Batch.created_at).desc()).limit(1)).first()
        return batch.id if batch is not None else None


def _cycle_of(engine: Any, batch_id: str) -> tuple[dict[str, float], float]:
    with Session(engine) as session:
        batch = session.get(Batch, batch_id)
        run = session.get(CycleRun, batch.cycle_id) if batch is not None and batch.cycle_id else None
        if run is None:
            return {}, 0.0
        for _ in range(100):  # the stage times are written when the cycle finishes
            session.refresh(run)
            if run.finished_at is not None:
                break
            time.sleep(0.05)
        started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
        return json.loads(run.stage_seconds_json), started.timestamp()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _report(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> None:
    warm, measured = rounds[: args.warmup], rounds[args.warmup :]
    latencies = sorted(r["latency_s"] for r in measured)
    if not latencies:
        return
    p95 = _p95(latencies)
    print(f"\nannotation -> next batch visible in Label Studio, {len(latencies)} rounds ({args.mode}, "
          f"{int(float(args.n)):,} items):")
    print(f"  p50 {statistics.median(latencies):.2f} s   p95 {p95:.2f} s   min {latencies[0]:.2f} s   "
          f"max {latencies[-1]:.2f} s   (target p95 <= {TARGET_P95_S} s)")
    if warm:
        print("  warm-up rounds: " + ", ".join(f"{r['latency_s']:.2f} s" for r in warm))
    names = sorted({name for r in measured for name in r["stages"]}, key=lambda s: _ORDER.get(s, 99))
    total = sum(r["latency_s"] for r in measured)
    print(f"\n  {'stage':<14} {'mean s':>7} {'p95 s':>7} {'share':>6}")
    for name in names:
        values = sorted(r["stages"].get(name, 0.0) for r in measured)
        share = "after" if name in _AFTER_VISIBLE else f"{sum(values) / total:.1%}"
        print(f"  {name:<14} {statistics.mean(values):>7.3f} {_p95(values):>7.3f} {share:>6}")
    other = total - sum(v for r in measured for k, v in r["stages"].items() if k not in _AFTER_VISIBLE)
    print(f"  {'(rest)':<14} {other / len(measured):>7.3f} {'':>7} {other / total:>6.1%}   "
          "Label Studio listing the new tasks, clock steps")
    print(f"  loads during the rounds: {', '.join(r['load'].split()[0] for r in measured)}; now {_load()}; "
          f"{datetime.now(UTC):%H:%M} UTC")


def _p95(ordered: list[float]) -> float:
    """Nearest-rank 95th percentile of an ascending list."""
    return ordered[max(0, int(np.ceil(0.95 * len(ordered))) - 1)]


_ORDER = {name: i for i, name in enumerate(
    ["trigger", "sync", "push_leftover", "embed", "train", "stability", "select", "push", "rerank"])}
# Stages the cycle runs once the batch is pushed: not part of the latency ("after" in the share column).
_AFTER_VISIBLE = frozenset({"rerank"})


if __name__ == "__main__":
    main()
