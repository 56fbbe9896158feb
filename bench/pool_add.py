"""``pool add`` on a large file: time, peak memory, and how long a concurrent writer waits.

    make bench-pool-add                                   # 1M rows, 10% seed labels (about 3 min)
    .venv/bin/python bench/pool_add.py --rows 200000 --vectors 384    # own vectors, in Parquet

A synthetic pool file (Banking77 texts with a row number appended, so every row is its own
item; every tenth row carries its gold label as a seed label; with ``--vectors D``, random
D-wide vectors in a Parquet file of 10,000-row groups, and no text) is imported into a fresh
SQLite store twice, each in its own process:

* **labelloop**: ``daemon.pool.add_pool_file``, exactly what ``labelloop pool add`` runs;
* **baseline**: the plainest correct import, ``csv``/``pyarrow`` rows into the same ``poolitem``
  and ``labelrecord`` tables with ``sqlite3.executemany`` in one transaction, the file read
  inside it (no checks, no metadata, no embedding cache; own vectors go in as JSON text): a
  floor for time, not for safety.

While each runs, a probe process opens a write transaction on the store every 0.5 s (as the
daemon's stages do) and records how long it waited: the import's hold on the write lock.
Peak memory is the importing process's own ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages first

DATA = Path("/work/shared/data/banking77/data.csv")

_OURS = """
import json, resource, sys, time
from pathlib import Path
from daemon.pool import add_pool_file
from daemon.settings import PoolSettings
from daemon.store import make_engine
store, path = Path(sys.argv[1]), Path(sys.argv[2])
started = time.perf_counter()
engine = make_engine(f"sqlite:///{store / 'labelloop.db'}")
report = add_pool_file(engine, path, pool=PoolSettings(), data_dir=store)
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"s": time.perf_counter() - started, "rss_mb": rss_mb, "added": report.added,
                  "labels": report.labels_added}))
"""

_BASELINE = """
import csv, hashlib, json, resource, sqlite3, sys, time
from datetime import datetime, UTC
from pathlib import Path
store, path = Path(sys.argv[1]), Path(sys.argv[2])
started = time.perf_counter()
db = sqlite3.connect(store / "labelloop.db", timeout=60)
now = datetime.now(UTC).isoformat(" ")
def rows():
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for r in batch.to_pylist():
                yield r["id"], json.dumps(r["embedding"]), r["label"]
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            for r in csv.DictReader(handle):
                yield r["id"], r["text"], r["label"] or None
added = labels = 0
db.execute("BEGIN IMMEDIATE")
batch = []
def flush():
    db.executemany("INSERT INTO poolitem (item_id, text, content_hash, meta_json, source, is_embedded, created_at) "
                   "VALUES (?, ?, ?, '{}', 'bench', 0, ?)", [(i, t, hashlib.sha256(t.encode()).hexdigest(), now)
                                                              for i, t, _ in batch])
    seeds = [(i, "LABELED", l, "seed", now) for i, _, l in batch if l]
    db.executemany("INSERT INTO labelrecord (item_id, status, label, source, recorded_at) "
                   "VALUES (?, ?, ?, ?, ?)", seeds)
    return len(seeds)
for row in rows():
    batch.append(row)
    if len(batch) == 5000:
        labels += flush(); added += len(batch); batch = []
labels += flush(); added += len(batch)
db.commit()
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"s": time.perf_counter() - started, "rss_mb": rss_mb, "added": added, "labels": labels}))
"""

_PROBE = """
import sqlite3, sys, time
from pathlib import Path
db_path, stop = sys.argv[1], Path(sys.argv[2])
worst = 0.0
while not stop.exists():
    started = time.perf_counter()
    db = sqlite3.connect(db_path, timeout=600)
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE IF NOT EXISTS bench_probe (at REAL)")
    db.execute("INSERT INTO bench_probe VALUES (?)", (time.time(),))
    db.commit()
    db.close()
    worst = max(worst, time.perf_counter() - started)
    time.sleep(0.5)
print(worst)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--vectors", type=int, default=0, help="width of own vectors (Parquet, no text); 0 = text CSV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-pool-add-") as workdir:
        work = Path(workdir)
        started = time.perf_counter()
        path = _write_pool(work, args.rows, args.vectors)
        print(f"pool file: {path.name}, {args.rows:,} rows, {path.stat().st_size / 2**20:,.0f} MB "
              f"(written in {time.perf_counter() - started:.0f} s)", flush=True)
        results = {name: _run(work / name, path, script) for name, script in (("labelloop", _OURS),
                                                                               ("baseline", _BASELINE))}
    print()
    print(f"{'variant':<10} {'import s':>9} {'peak RSS MB':>12} {'writer waited s':>16} {'items':>10} {'labels':>8}")
    for name, got in results.items():
        print(f"{name:<10} {got['s']:>9.1f} {got['rss_mb']:>12,.0f} {got['waited_s']:>16.1f} "
              f"{got['added']:>10,} {got['labels']:>8,}")
    print("\nbaseline: one transaction of sqlite3.executemany with the file read inside it; no checks, "
          "metadata or vectors cached")


def _write_pool(work: Path, rows: int, dim: int) -> Path:
    with DATA.open(newline="", encoding="utf-8") as handle:
        source = [(row["text"], row["label"]) for row in csv.DictReader(handle)]
    if dim:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        path, rng = work / "pool.parquet", np.random.default_rng(0)
        with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("label", pa.string()),
                                               ("embedding", pa.list_(pa.float32(), dim))])) as writer:
            for start in range(0, rows, 10_000):
                n = min(10_000, rows - start)
                vectors = rng.standard_normal((n, dim), dtype=np.float32)
                writer.write_table(pa.table({
                    "id": [f"it{start + k:09d}" for k in range(n)],
                    "label": [source[(start + k) % len(source)][1] if (start + k) % 10 == 0 else None
                              for k in range(n)],
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                }))
        return path
    path = work / "pool.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "text", "label", "source"])
        for k in range(rows):
            text, label = source[k % len(source)]
            out.writerow([f"it{k:09d}", f"{text} #{k}", label if k % 10 == 0 else "", "synthetic"])
    return path


def _run(store: Path, path: Path, script: str) -> dict[str, float]:
    """Import ``path`` into a fresh store at ``store`` with ``script`` while the probe writes; return its figures."""
    from daemon.store import make_engine

    store.mkdir()
    make_engine(f"sqlite:///{store / 'labelloop.db'}").dispose()  # the tables, as `labelloop init` makes them
    stop = store / "stop-probe"
    probe = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PROBE), str(store / "labelloop.db"), str(stop)],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(store), str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    stop.touch()
    waited, _ = probe.communicate(timeout=700)
    if done.returncode != 0:
        raise SystemExit(f"{store.name} failed:\n{done.stderr[-3000:]}")
    got: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    got["waited_s"] = float(waited.strip())
    print(f"  {store.name}: {got['s']:.1f} s", flush=True)
    return got


if __name__ == "__main__":
    main()
