"""Scoring and selection at pool scale: the daemon's streamed path against plain in-memory numpy.

    make bench-score                                   # 1M x 384, 77 classes, a batch of 1,000
    .venv/bin/python bench/score.py --sizes 1e6,1e7    # also 10M, streamed from 7.7 GB of shards
    .venv/bin/python bench/score.py --dir /tmp/x --keep   # keep the generated shards for a rerun

A synthetic, clustered pool (``bench/synthetic.py``: 77 long-tailed classes, float16 shards in the
daemon's own embedding-cache format) is scored by a ProxyClassifier trained on 2,000 labels drawn
from it (rare classes stay unseen, so the default strategy also explores). Each variant runs in its
own subprocess (with ``OMP_WAIT_POLICY=PASSIVE``, as ``labelloop run`` sets) so its memory is its own:

* ``baseline`` -- the pre-streaming path, plain numpy float32 in memory: every vector loaded, one
  ``predict_proba`` over the pool, the scores, then ``select_batch`` on the full pool.
* ``streamed`` -- the daemon's path (``daemon.scoring.shortlist``): one pass over the shards in
  chunks (float16 read -> float32 -> head -> pre-filter score -> running top), then
  ``select_batch`` on the shortlist only. With the daemon's default ``scoring_prefilter = "auto"``
  the pass runs a bfloat16 head where the CPU computes bfloat16 natively and re-scores its deeper
  top in float32; "float32 only" times the plain pass and says whether it found the same rows.

Phases: *score + top-1000* (head, scarce-margin score and the 1,000 best rows; "proba given" is
the same without the head), *diverse batch* (the default strategy's 1,000 picks, including its own
pass for the streamed variant), and peak RSS per phase (VmHWM, reset through
``/proc/self/clear_refs`` before each phase) and per process (``ru_maxrss``). Times are the
median of ``--repeat`` runs. These are figures to read, not timed tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages first
sys.path.insert(1, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from synthetic import SyntheticPool, ensure_pool  # noqa: E402

DEFAULT_DIR = Path("/tmp/labelloop-bench-score")
N_LABELS = 2_000
TARGETS = {"score + top-1000 (s)": 0.5, "diverse batch (s)": 5.0, "peak RSS (MB)": 2048}


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    from daemon.scoring import DEFAULT_CHUNK_ROWS

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    _check_disk(args.dir, max(sizes), args.dim)
    print(f"labelloop bench/score: d={args.dim}, {args.classes} classes, k={args.k}, chunks of "
          f"{args.chunk_rows or DEFAULT_CHUNK_ROWS:,} rows, {os.cpu_count()} CPUs; load {_load()}")
    results: list[dict[str, Any]] = []
    try:
        for n in sizes:
            pool = ensure_pool(args.dir / "embeddings", n, dim=args.dim, n_classes=args.classes)
            _train(args, pool)
            for variant in ("baseline", "streamed"):
                if variant == "baseline" and n * args.dim * 4 > args.baseline_max_gb * 1e9:
                    results.append({"n": n, "variant": variant, "skipped": (
                        f"needs ~{(n * args.dim * 4 + n * args.classes * 8) / 1e9:.0f} GB in memory")})
                    continue
                results.append(_run_worker(args, variant, n))
                print(f"  {n:,} {variant}: done (load {_load()})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    _report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6", help="pool sizes, comma-separated (default 1e6)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=77)
    parser.add_argument("--k", type=int, default=1000, help="batch size")
    parser.add_argument("--chunk-rows", type=int, default=0, help="rows per streamed chunk (0: the daemon's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where shards go (7.7 GB at 1e7)")
    parser.add_argument("--keep", action="store_true", help="keep the generated shards")
    parser.add_argument("--baseline-max-gb", type=float, default=8.0, help="skip the in-memory baseline above")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=["baseline", "streamed"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return parser


def _check_disk(folder: Path, n: int, dim: int) -> None:
    need = n * dim * 2 * 1.05
    probe = folder if folder.exists() else folder.parent
    free = shutil.disk_usage(probe).free
    have = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
    if need - have > free:
        sys.exit(f"{probe}: {free / 1e9:.1f} GB free, the pool needs {need / 1e9:.1f} GB; use --dir elsewhere")


def _train(args: argparse.Namespace, pool: SyntheticPool) -> None:
    """Train the proxy on N_LABELS rows drawn from the pool (once per size); workers unpickle it."""
    from models.cache import EmbeddingCache
    from models.classifier import ProxyClassifier

    path = args.dir / f"model-{pool.n}-{_code_digest()}.pkl"  # a pickle of older head code would not load
    if path.exists():
        return
    labels = pool.labels()
    labeled = np.sort(np.random.default_rng(1).choice(pool.n, size=N_LABELS, replace=False))
    with EmbeddingCache(pool.root, model_key=pool.model_key, dim=pool.dim, readonly=True) as cache:
        vectors = cache.get(labeled)
    names = np.asarray([f"c{c:02d}" for c in labels[labeled]])
    started = time.perf_counter()
    classifier = ProxyClassifier(random_state=0).fit(vectors, names)
    print(f"  proxy trained on {N_LABELS:,} labels ({len(classifier.classes_)} of {pool.n_classes} classes seen) "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    path.write_bytes(pickle.dumps({"classifier": classifier, "labeled": labeled, "names": names}))


def _run_worker(args: argparse.Namespace, variant: str, n: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", variant, "--n", str(n), "--dir", str(args.dir),
               "--dim", str(args.dim), "--classes", str(args.classes), "--k", str(args.k),
               "--chunk-rows", str(args.chunk_rows), "--repeat", str(args.repeat)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as `labelloop run`
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"the {variant} worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- worker side (one variant per process)


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from daemon.scoring import DEFAULT_CHUNK_ROWS
    from models.cache import EmbeddingCache

    chunk_rows = args.chunk_rows or DEFAULT_CHUNK_ROWS
    state = pickle.loads((args.dir / f"model-{args.n}-{_code_digest()}.pkl").read_bytes())
    classifier, labeled = state["classifier"], state["labeled"]
    counts = np.asarray([int((state["names"] == c).sum()) for c in classifier.classes_], dtype=np.intp)
    scenario = {"counts": counts, "n_unseen": args.classes - len(classifier.classes_)}
    cache = EmbeddingCache(args.dir / "embeddings", model_key=f"byo-d{args.dim}", dim=args.dim, readonly=True)
    is_labeled = np.zeros(args.n, dtype=bool)
    is_labeled[labeled] = True
    rows = np.flatnonzero(~is_labeled)  # the candidates, in pool order (cache row = pool position here)
    anchors = cache.get(labeled)
    run = _baseline if args.worker == "baseline" else _streamed
    phases, picks = run(args, cache, classifier, rows, anchors, scenario, chunk_rows)
    truth = np.fromfile(args.dir / "embeddings" / f"byo-d{args.dim}.labels.i16", dtype=np.int16, count=args.n)
    seen = {int(c[1:]) for c in classifier.classes_}
    picked_classes = truth[rows[picks]]
    return {
        "n": args.n, "variant": args.worker, "chunk_rows": chunk_rows if args.worker == "streamed" else None,
        "phases": phases, "process peak RSS (MB)": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "batch": {"classes covered": len(set(picked_classes.tolist())),
                  "picks of unseen classes": int(sum(1 for c in picked_classes if int(c) not in seen))},
    }


Phase = dict[str, Any]


def _measure(name: str, repeat: int, body: Callable[[], Any]) -> tuple[Phase, Any]:
    """Median time of ``repeat`` runs and the peak RSS over them (VmHWM reset first)."""
    _reset_peak()
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = body()
        times.append(time.perf_counter() - started)
    return {"name": name, "s": statistics.median(times), "min s": min(times), "peak RSS (MB)": _peak_mb()}, result


def _baseline(
    args: argparse.Namespace, cache: Any, classifier: Any, rows: Any, anchors: Any, scenario: dict[str, Any],
    chunk_rows: int,
) -> tuple[list[Phase], Any]:
    from strategies import DEFAULT_STRATEGY, PoolView, prefilter_scores, select_batch
    from strategies.select import top_k

    load, vectors = _measure("load all vectors (float32)", 1, lambda: cache.get(rows))
    predict, proba = _measure("head over the pool", 1, lambda: classifier.predict_proba(vectors))

    def score() -> Any:
        values = prefilter_scores(DEFAULT_STRATEGY, proba, scenario["counts"], n_unseen_classes=scenario["n_unseen"],
                                  has_labeled_embeddings=True)
        return top_k(values, 1000, rng=np.random.default_rng(0))

    given, _ = _measure("score + top-1000, proba given", args.repeat, score)
    full = {"name": "score + top-1000", "s": predict["s"] + given["s"], "min s": predict["min s"] + given["min s"],
            "peak RSS (MB)": max(predict["peak RSS (MB)"], given["peak RSS (MB)"])}
    view = PoolView(embeddings=vectors, proba=proba, label_counts=scenario["counts"],
                    n_unseen_classes=scenario["n_unseen"], labeled_embeddings=anchors)
    diverse, picked = _measure("diverse batch (select_batch on the pool)", args.repeat,
                               lambda: select_batch(DEFAULT_STRATEGY, view, args.k, rng=np.random.default_rng(0)))
    total = {"name": "cycle's select stage (load + head + select)", "s": load["s"] + predict["s"] + diverse["s"],
             "min s": load["min s"] + predict["min s"] + diverse["min s"],
             "peak RSS (MB)": max(p["peak RSS (MB)"] for p in (load, predict, diverse))}
    return [load, predict, given, full, diverse, total], picked.positions


def _streamed(
    args: argparse.Namespace, cache: Any, classifier: Any, rows: Any, anchors: Any, scenario: dict[str, Any],
    chunk_rows: int,
) -> tuple[list[Phase], Any]:
    from daemon.scoring import SCORING_DTYPE, coarse_head_for, shortlist
    from strategies import DEFAULT_STRATEGY, PoolView, Prefilter, prefilter, prefilter_scores, select_batch

    counts, n_unseen = scenario["counts"], scenario["n_unseen"]
    proba_fn = functools.partial(classifier.predict_proba, dtype=SCORING_DTYPE)  # as daemon.selection asks
    coarse_fn = coarse_head_for(classifier, len(rows), "auto")  # the daemon's default scoring_prefilter

    def score(proba: Any) -> Any:
        return prefilter_scores(DEFAULT_STRATEGY, proba, counts, n_unseen_classes=n_unseen,
                                has_labeled_embeddings=True)

    def top(plan: Prefilter, coarse: Any = coarse_fn) -> Any:
        return shortlist(cache, rows, plan, predict_proba=proba_fn, score=score,
                         rng=np.random.default_rng(0), chunk_rows=chunk_rows, coarse=coarse)

    read, _ = _measure("read the shards (float16 -> float32)", 1, lambda: _read_all(cache, rows, chunk_rows))
    plan_1000 = Prefilter(n_top=1000, n_sample=0)
    top1000, found = _measure("score + top-1000", args.repeat, lambda: top(plan_1000))
    top1000["pre-filter"] = ("bfloat16, re-scored in float32" if coarse_fn else "none (float32 only)") + (
        f"; bfloat16 head {classifier.bfloat16_speedup():.1f}x float32")
    float32_only, exact = _measure("score + top-1000, float32 only", args.repeat, lambda: top(plan_1000, None))
    float32_only["same rows"] = bool(np.array_equal(found.positions, exact.positions))
    plan = prefilter(DEFAULT_STRATEGY, args.k, len(rows), label_counts=counts, n_unseen_classes=n_unseen,
                     has_labeled_embeddings=True)

    def batch() -> Any:
        rng = np.random.default_rng(0)
        short = shortlist(cache, rows, plan, predict_proba=proba_fn, score=score, rng=rng,
                          chunk_rows=chunk_rows, coarse=coarse_fn)
        view = PoolView(embeddings=cache.get(rows[short.positions]), proba=short.proba, label_counts=counts,
                        n_unseen_classes=n_unseen, labeled_embeddings=anchors)
        return short.positions[select_batch(DEFAULT_STRATEGY, view, args.k, rng=rng).positions], len(short.positions)

    diverse, (picked, shortlisted) = _measure("diverse batch (pass + select on the shortlist)", args.repeat, batch)
    diverse["shortlist rows"] = shortlisted
    return [read, top1000, float32_only, diverse, *_names_pass(args, cache, rows, counts, n_unseen, chunk_rows)], picked


def _names_pass(
    args: argparse.Namespace, cache: Any, rows: Any, counts: Any, n_unseen: int, chunk_rows: int
) -> list[Phase]:
    """The extra pass while unseen classes have names: the rows nearest each name (daemon.named_rows)."""
    from daemon.named_rows import nearest_rows
    from strategies.named import named_share

    if n_unseen == 0:
        return []
    names = np.random.default_rng(2).normal(size=(n_unseen, args.dim)).astype(np.float32)  # stand-ins for names
    names /= np.linalg.norm(names, axis=1, keepdims=True)
    depth = named_share(args.k, n_prototypes=n_unseen, n_seen_classes=len(counts), n_unseen_classes=n_unseen)
    phase, found = _measure(f"rows nearest {n_unseen} unseen class names ({depth} each)", args.repeat,
                            lambda: nearest_rows(cache, rows, names, depth, chunk_rows=chunk_rows))
    phase["rows found"] = len(found)
    return [phase]


def _code_digest() -> str:
    """A short digest of the head's code, so a kept --dir never unpickles a model of older code."""
    import hashlib

    sources = [ROOT / "models" / name for name in ("classifier.py", "_head.py", "_calibration.py")]
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:10]


def _read_all(cache: Any, rows: Any, chunk_rows: int) -> int:
    from daemon.scoring import as_float32

    return sum(len(as_float32(v)) for _, v in cache.iter_stored_chunks(rows, chunk_rows))


def _reset_peak() -> None:
    """Reset VmHWM; where the kernel refuses, peaks are since process start (said in the output)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        print("note: /proc/self/clear_refs refused: per-phase peaks are cumulative", file=sys.stderr)


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- report


def _report(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'pool':>11}  {'variant':<9} {'phase':<46} {'median s':>9} {'min s':>7} {'peak RSS MB':>12}")
    for result in results:
        if "skipped" in result:
            print(f"{result['n']:>11,}  {result['variant']:<9} skipped: {result['skipped']}")
            continue
        for phase in result["phases"]:
            extra = f"  ({phase['shortlist rows']:,} rows shortlisted)" if "shortlist rows" in phase else ""
            extra += f"  (pre-filter: {phase['pre-filter']})" if "pre-filter" in phase else ""
            extra += f"  (same rows as with the pre-filter: {phase['same rows']})" if "same rows" in phase else ""
            print(f"{result['n']:>11,}  {result['variant']:<9} {phase['name']:<46} {phase['s']:>9.3f} "
                  f"{phase['min s']:>7.3f} {phase['peak RSS (MB)']:>12,.0f}{extra}")
        batch = result["batch"]
        print(f"{result['n']:>11,}  {result['variant']:<9} {'process peak RSS (ru_maxrss)':<46} {'':>9} {'':>7} "
              f"{result['process peak RSS (MB)']:>12,}  batch: {batch['classes covered']} classes, "
              f"{batch['picks of unseen classes']} picks of unseen classes")
    print(f"\ntargets at 1M: score + top-1000 <= {TARGETS['score + top-1000 (s)']} s, diverse batch of 1,000 <= "
          f"{TARGETS['diverse batch (s)']} s, peak RSS <= {TARGETS['peak RSS (MB)']:,} MB; load now {_load()}")


if __name__ == "__main__":
    main()
