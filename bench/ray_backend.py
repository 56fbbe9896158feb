"""The Ray scale-out backend against the in-process path: same data, same machine, same run.

    make bench-ray                                        # 200k rows scored, 1,500 texts embedded
    .venv/bin/python bench/ray_backend.py --score-rows 1000000 --embed-texts 0
    .venv/bin/python bench/ray_backend.py --address auto  # an existing cluster instead of a local instance

Scoring: a synthetic pool of clustered 384-d unit vectors (float16, in a real embedding cache),
a ProxyClassifier trained on 500 of them, and the default strategy's stage (a): the top
``candidate_pool_size`` rows by the pre-filter score plus the exploration sample. Timed with
``daemon.scoring.shortlist`` (in process) and ``daemon.scaleout_ray.shortlist_ray`` with vectors
read from the shared cache path and shipped through the object store; the shortlists must match.

Embedding: real texts (the demo pool, made distinct) through the bundled all-MiniLM-L6-v2, with
``models.cache.embed_missing`` and ``daemon.scaleout_ray.embed_missing_ray`` into fresh caches.

Every Ray job starts its actors afresh, so each timing includes actor start-up (a Python process
importing torch: ~3 s here) and, for embedding, one model load per actor; ``ray.init`` is timed
apart, since the daemon pays it once per process. Results go to stdout and bench/out/ray_backend.json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repo's packages importable whatever the install

from daemon.scaleout_ray import embed_missing_ray, shortlist_ray  # noqa: E402
from daemon.scoring import shortlist  # noqa: E402
from daemon.settings import ScaleoutSettings  # noqa: E402
from models.cache import EmbeddingCache, content_hash, embed_missing, model_key  # noqa: E402
from models.classifier import ProxyClassifier  # noqa: E402
from models.embedder import TransformerEmbedder  # noqa: E402
from models.head_weights import export_head  # noqa: E402
from strategies import DEFAULT_STRATEGY, prefilter, prefilter_scores  # noqa: E402

DIM = 384
CLASSES = 10
BATCH = 50  # k: the daemon's default batch size
FIXED_COST_ROWS = 4_000  # a Ray job this small is almost all fixed cost


def main() -> None:
    args = _parse()
    import ray

    started = time.perf_counter()
    if args.address is None:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=args.address, log_to_driver=False)
    report: dict[str, Any] = {"ray_init_s": round(time.perf_counter() - started, 2),
                              "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
                              "ray_version": ray.__version__, "cores_here": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory(prefix="labelloop-bench-ray-") as folder:
            if args.score_rows:
                report["scoring"] = bench_scoring(Path(folder), args)
            if args.embed_texts:
                report["embedding"] = bench_embedding(Path(folder), args)
    finally:
        ray.shutdown()
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_backend.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def bench_scoring(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    n = args.score_rows
    cache, rows, labels = _synthetic_pool(folder / "scoring", n, seed=args.seed)
    labeled = rows[:500]
    classifier = ProxyClassifier(device="cpu", epochs=100).fit(cache.get(labeled), labels[:500])
    counts = np.bincount(np.searchsorted(classifier.classes_, labels[:500]), minlength=CLASSES).astype(np.intp)
    pool = rows[500:]
    plan = prefilter(DEFAULT_STRATEGY, BATCH, len(pool), label_counts=counts, n_unseen_classes=1,
                     has_labeled_embeddings=True)
    score = functools.partial(prefilter_scores, DEFAULT_STRATEGY, label_counts=counts, n_unseen_classes=1,
                              has_labeled_embeddings=True)
    head = export_head(classifier)
    results: dict[str, Any] = {"rows": len(pool), "dim": DIM, "classes": CLASSES,
                               "plan": {"n_top": plan.n_top, "n_sample": plan.n_sample}}
    expected = shortlist(cache, pool, plan, predict_proba=classifier.predict_proba, score=score,
                         rng=np.random.default_rng(0))

    def in_process() -> object:
        return shortlist(cache, pool, plan, predict_proba=classifier.predict_proba, score=score,
                         rng=np.random.default_rng(0))

    results["in_process"] = _timed(in_process, len(pool), args.repeats)
    for mode in ("shared_path", "object_store"):
        settings = ScaleoutSettings(backend="ray", ray_address=args.address, vectors=mode)

        def on_ray(settings: ScaleoutSettings = settings) -> object:
            got = shortlist_ray(cache, pool, plan, head=head, score=score, rng=np.random.default_rng(0),
                                settings=settings)
            if not np.array_equal(got.positions, expected.positions):
                raise AssertionError(f"ray ({settings.vectors}) shortlisted other rows than the in-process path")
            return got

        results[f"ray_{mode}"] = _timed(on_ray, len(pool), args.repeats)
        results[f"ray_{mode}"].update(_split_overhead(cache, pool[:FIXED_COST_ROWS], head, score, counts, settings,
                                                      total_s=results[f"ray_{mode}"]["median_s"], rows=len(pool),
                                                      repeats=args.repeats))
    cache.close()
    return results


def _split_overhead(
    cache: EmbeddingCache, small: Any, head: Any, score: Any, counts: Any, settings: ScaleoutSettings, *,
    total_s: float, rows: int, repeats: int,
) -> dict[str, Any]:
    """Time the same job on ``FIXED_COST_ROWS`` rows: ~all fixed cost (actor start-up, torch import)."""
    plan = prefilter(DEFAULT_STRATEGY, BATCH, len(small), label_counts=counts, n_unseen_classes=1,
                     has_labeled_embeddings=True)
    fixed = _timed(lambda: shortlist_ray(cache, small, plan, head=head, score=score, rng=np.random.default_rng(0),
                                         settings=settings), len(small), repeats)["median_s"]
    marginal = rows / (total_s - fixed) if total_s > fixed else float("inf")
    return {"fixed_s": fixed, "marginal_items_per_s": round(marginal)}


def bench_embedding(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    texts = _texts(args.embed_texts)
    factory = functools.partial(TransformerEmbedder, None)
    results: dict[str, Any] = {"texts": len(texts), "encoder": "all-MiniLM-L6-v2 (bundled), fp32"}
    runs = iter(range(10**6))

    def fresh_cache() -> EmbeddingCache:
        embedder = factory()
        return EmbeddingCache(folder / f"embed-{next(runs)}", model_key=model_key(embedder), dim=embedder.dim)

    def in_process() -> object:
        with fresh_cache() as cache:
            return embed_missing(factory(), cache, texts)  # a new embedder: the model load is timed too

    def on_ray() -> object:
        with fresh_cache() as cache:
            return embed_missing_ray(factory, cache, texts, settings=ScaleoutSettings(backend="ray",
                                                                                     ray_address=args.address))

    results["in_process"] = _timed(in_process, len(texts), args.repeats)
    results["ray"] = _timed(on_ray, len(texts), args.repeats)
    return results


def _timed(run: Callable[[], object], items: int, repeats: int) -> dict[str, Any]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"seconds": [round(s, 2) for s in seconds], "median_s": round(median, 2),
            "items_per_s": round(items / median)}


def _synthetic_pool(folder: Path, n: int, *, seed: int) -> tuple[EmbeddingCache, Any, Any]:
    """``n`` clustered unit vectors in a real cache; a long-tailed class per row."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 0.7 ** np.arange(CLASSES)
    classes = rng.choice(CLASSES, size=n, p=weights / weights.sum())
    cache = EmbeddingCache(folder, model_key="bench-synthetic", dim=DIM)
    for start in range(0, n, 65536):
        part = classes[start : start + 65536]
        vectors = centres[part] + 1.2 * rng.normal(size=(len(part), DIM)) / np.sqrt(DIM)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cache.put([content_hash(f"synthetic {i}") for i in range(start, start + len(part))], vectors)
    return cache, np.arange(n, dtype=np.intp), np.asarray([f"class-{c}" for c in classes])


def _texts(n: int) -> list[str]:
    with (ROOT / "daemon" / "demo_data" / "pool.csv").open(newline="", encoding="utf-8") as handle:
        base = [row["text"] for row in csv.DictReader(handle)]
    return [f"{base[i % len(base)]} (ref {i})" for i in range(n)]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--score-rows", type=int, default=200_000, help="pool rows to score (0: skip)")
    parser.add_argument("--embed-texts", type=int, default=1_500, help="texts to embed (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (the median is reported)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--address", default=None, help="join this cluster instead of starting a local instance")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    main()
