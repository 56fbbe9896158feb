"""Label-efficiency benchmark: simulated annotation on the shared data sets and long-tail variants.

    make bench-labels                                  # every registry strategy, 5 seeds (~16 min, 2 cores)
    .venv/bin/python bench/label_efficiency.py --core  # random, margin, modal_margin, scarce_margin + default
    .venv/bin/python bench/label_efficiency.py --datasets trec6,sms_spam_lt --seeds 3
    .venv/bin/python bench/label_efficiency.py --strategies margin,entropy   # random is always added
    .venv/bin/python bench/label_efficiency.py --datasets sms_spam_lt --batch-size 10   # finer rounds

Runs ``daemon.simulate`` (the daemon's encoder, proxy head, strategies and batch
selection, with an oracle annotator) on every data set of ``bench/datasets.py``, prints
one summary table per data set, checks the product's label-efficiency targets, ranks
the strategies across data sets, and writes CSV/JSON/PNG files to ``bench/out/``.
The proxy head is not temperature-calibrated here (``--calibrate`` to match the
daemon exactly): scaling leaves every argmax, hence accuracy and F1, unchanged, and
costs four fits per round instead of one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repo's packages importable whatever the install

from daemon.simulate import ReplayConfig, proxy_classifier, run_simulation  # noqa: E402
from daemon.simulate_data import DataSource, load_simulation_data  # noqa: E402
from daemon.simulate_report import (  # noqa: E402
    StrategySummary,
    footnotes,
    format_text_table,
    summarise,
    table_rows,
    write_outputs,
)
from models.embedder import TransformerEmbedder  # noqa: E402
from strategies import DEFAULT_STRATEGY, REGISTRY  # noqa: E402


def _load_bench_datasets() -> Any:
    """Import bench/datasets.py under a private name (``datasets`` is also Hugging Face's package)."""
    spec = importlib.util.spec_from_file_location("labelloop_bench_datasets", ROOT / "bench" / "datasets.py")
    if spec is None or spec.loader is None:
        raise ImportError("bench/datasets.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CORE_STRATEGIES = ("random", "margin", "modal_margin", "scarce_margin")
LONG_TAIL = ("banking77_lt", "sms_spam_lt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy (default 5)")
    parser.add_argument("--strategies", default="", help="comma-separated registry names (default: all)")
    parser.add_argument("--core", action="store_true", help="random, margin, modal_margin, scarce_margin, default")
    parser.add_argument("--datasets", default="", help="comma-separated subset of the data sets")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output folder")
    parser.add_argument("--calibrate", action="store_true", help="temperature-calibrate the head as the daemon")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="labels per round for every data set (default: each set's own, 25 or 50)",
    )
    parser.add_argument(
        "--keep-near-copies",
        dest="near_copies",
        action="store_false",
        help="do not set aside near-copies of labeled texts (loop.set_aside_near_copies = false) in any arm",
    )
    parser.add_argument(
        "--no-class-names",
        dest="class_names",
        action="store_false",
        help="do not embed the class names (the default strategy then finds unseen classes without them)",
    )
    return parser.parse_args(argv)


def strategy_names(args: argparse.Namespace) -> tuple[str, ...]:
    if args.strategies:
        names: tuple[str, ...] = tuple(name.strip() for name in args.strategies.split(",") if name.strip())
    elif args.core:
        names = (*CORE_STRATEGIES, DEFAULT_STRATEGY)
    else:
        names = tuple(name for name in REGISTRY if name != "cold_start")
    if "random" not in names:
        names = ("random", *names)
    return tuple(dict.fromkeys(names))


def targets(summaries: dict[str, list[StrategySummary]], references: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the product's targets for the daemon's default strategy; one row per check."""
    checks: list[dict[str, Any]] = []
    for dataset, rows in summaries.items():
        by_name = {s.strategy: s for s in rows}
        default, random, margin = by_name.get(DEFAULT_STRATEGY), by_name.get("random"), by_name.get("margin")
        if default is None:
            continue
        if random is not None:
            checks.append(
                _check(
                    dataset,
                    "AULC >= random's",
                    default.aulc >= random.aulc,
                    f"{default.aulc:.4f} vs {random.aulc:.4f}",
                )
            )
        if margin is not None:
            checks.append(
                _check(
                    dataset,
                    "AULC >= margin's - 0.005",
                    default.aulc >= margin.aulc - 0.005,
                    f"{default.aulc:.4f} vs {margin.aulc:.4f}",
                )
            )
        if dataset in LONG_TAIL:
            checks += _long_tail_checks(
                dataset, default, by_name.get("modal_margin"), margin, references[dataset]["classes"]
            )
        keeping = by_name.get(KEEP_COPIES)
        if keeping is not None:
            checks.append(
                _check(
                    dataset,
                    "fewer copies asked than keeping them, AULC within 0.005",
                    default.copies_asked < keeping.copies_asked and default.aulc >= keeping.aulc - 0.005,
                    f"{default.copies_asked:.0f} vs {keeping.copies_asked:.0f} copies; "
                    f"AULC {default.aulc:.4f} vs {keeping.aulc:.4f}",
                )
            )
        if dataset == "ag_news":
            labels = default.labels_to_accuracy_95
            checks.append(
                _check(
                    dataset,
                    "95% of full-data accuracy within 500 labels",
                    labels is not None and labels <= 500,
                    f"{labels} labels",
                )
            )
    return checks


def _long_tail_checks(
    dataset: str,
    default: StrategySummary,
    modal: StrategySummary | None,
    margin: StrategySummary | None,
    n_classes: int,
) -> list[dict[str, Any]]:
    checks = []
    ours = default.labels_to_f1["95"]
    if modal is not None:
        theirs = modal.labels_to_f1["95"]
        if ours is None:
            passed, detail = False, f"not reached (>{default.final_labels}) vs {theirs}"
        elif theirs is None:
            passed, detail = True, f"{ours} vs not reached (>{modal.final_labels})"
        else:
            passed, detail = ours <= 0.75 * theirs, f"{ours} vs {theirs} ({ours / theirs:.2f}x)"
        checks.append(_check(dataset, "labels to 95% F1 <= 0.75x modal_margin's", passed, detail))
        checks.append(
            _check(
                dataset,
                "AULC > modal_margin's",
                default.aulc > modal.aulc,
                f"{default.aulc:.4f} vs {modal.aulc:.4f}",
            )
        )
    if margin is not None:
        checks.append(
            _check(
                dataset,
                "AULC > margin's",
                default.aulc > margin.aulc,
                f"{default.aulc:.4f} vs {margin.aulc:.4f}",
            )
        )
    seen = default.all_seen_labels
    passed = seen is not None and default.all_seen_seeds == default.n_seeds and seen <= 3 * n_classes
    detail = (
        "never (some seeds)"
        if seen is None
        else f"{seen:.0f} labels ({default.all_seen_seeds}/{default.n_seeds} seeds)"
    )
    checks.append(_check(dataset, f"every class seen within 3x{n_classes} labels", passed, detail))
    return checks


def _check(dataset: str, name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"dataset": dataset, "target": name, "passed": bool(passed), "detail": detail}


def ranking(summaries: dict[str, list[StrategySummary]]) -> list[dict[str, Any]]:
    """Rank strategies by AULC on each data set; average the rank and the AULC gain over random."""
    # strategies run on every data set (a variant run on one set only, as KEEP_COPIES, is left out)
    everywhere = set.intersection(*({s.strategy for s in rows} for rows in summaries.values()))
    names = [s.strategy for s in next(iter(summaries.values())) if s.strategy in everywhere]
    table = []
    for name in names:
        ranks, gains, wins = [], [], 0
        for rows in summaries.values():
            ordered = sorted((s for s in rows if s.strategy in everywhere), key=lambda s: -s.aulc)
            rank = [s.strategy for s in ordered].index(name) + 1
            ranks.append(rank)
            wins += rank == 1
            by_name = {s.strategy: s for s in rows}
            gains.append(by_name[name].aulc - by_name["random"].aulc)
        table.append(
            {
                "strategy": name,
                "mean AULC rank": sum(ranks) / len(ranks),
                "mean AULC - random": sum(gains) / len(gains),
                "wins": wins,
                "worst AULC - random": min(gains),
            }
        )
    return sorted(table, key=lambda row: row["mean AULC rank"])


NO_NAMES = DEFAULT_STRATEGY + "_no_names"  # the default strategy without the class names, for comparison
KEEP_COPIES = DEFAULT_STRATEGY + "_keep_copies"  # the default strategy asking for near-copies of labeled texts


def with_variant(result: Any, variant: Any, name: str) -> Any:
    """Add ``variant``'s default-strategy arms to ``result`` as the strategy ``name``."""
    records = tuple(replace(record, strategy=name) for record in variant.records)
    return replace(result, strategies=(*result.strategies, name), records=result.records + records)


def run_dataset(
    entry: Any, names: tuple[str, ...], args: argparse.Namespace
) -> tuple[list[StrategySummary], dict[str, Any]]:
    data = load_simulation_data(
        DataSource(entry.path),
        embedder=TransformerEmbedder(),
        cache_dir=args.out / "cache",
        name=entry.name,
        use_class_names=args.class_names,
    )
    config = ReplayConfig(batch_size=entry.batch_size, budget=entry.budget)
    if not args.near_copies:
        config = replace(config, near_copy_cosine=None)
    run = partial(
        run_simulation,
        seeds=tuple(range(args.seeds)),
        make_classifier=partial(proxy_classifier, calibrate=args.calibrate),
        jobs=args.jobs,
    )
    result = run(data, names, config=config)
    if data.class_prototypes is not None and DEFAULT_STRATEGY in names:
        unnamed = run(replace(data, class_prototypes=None), (DEFAULT_STRATEGY,), config=config)
        result = with_variant(result, unnamed, NO_NAMES)
    if entry.copies and args.near_copies and DEFAULT_STRATEGY in names:
        keeping = run(data, (DEFAULT_STRATEGY,), config=replace(config, near_copy_cosine=None))
        result = with_variant(result, keeping, KEEP_COPIES)
    summaries = summarise(result)
    write_outputs(result, summaries, args.out / entry.name)
    ref = result.reference
    print(
        f"\n## {entry.name}: {entry.description}; pool {result.n_pool}, test {result.n_test}, "
        f"{len(result.eval_classes)} classes; batch {entry.batch_size}, budget {entry.budget}, "
        f"{args.seeds} seeds; full-data macro-F1 {ref.macro_f1:.3f}, accuracy {ref.accuracy:.3f}; "
        f"embed {data.embed_s:.0f}s, replay {result.wall_s:.0f}s",
        flush=True,
    )
    print(format_text_table(table_rows(summaries)), flush=True)
    for note in footnotes(summaries):
        print(note, flush=True)
    return summaries, {
        "classes": len(result.eval_classes),
        "n_pool": result.n_pool,
        "n_test": result.n_test,
        "full_macro_f1": ref.macro_f1,
        "full_accuracy": ref.accuracy,
        "wall_s": result.wall_s,
        "embed_s": data.embed_s,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    names = strategy_names(args)
    entries = _load_bench_datasets().bench_datasets(args.out)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise SystemExit("--batch-size must be at least 1")
        entries = [replace(entry, batch_size=args.batch_size) for entry in entries]
    if args.datasets:
        wanted = {name.strip() for name in args.datasets.split(",")}
        entries = [entry for entry in entries if entry.name in wanted]
    print(f"strategies: {', '.join(names)} (default: {DEFAULT_STRATEGY}); seeds: {args.seeds}; jobs: {args.jobs}")
    summaries: dict[str, list[StrategySummary]] = {}
    references: dict[str, dict[str, Any]] = {}
    for entry in entries:
        summaries[entry.name], references[entry.name] = run_dataset(entry, names, args)
    checks = targets(summaries, references)
    print("\n## targets (default strategy: " + DEFAULT_STRATEGY + ")")
    print(
        format_text_table(
            [{k: ("PASS" if v is True else "MISS" if v is False else str(v)) for k, v in c.items()} for c in checks]
        )
    )
    ranks = ranking(summaries)
    print("\n## strategies across data sets (AULC rank 1 = best)")
    print(
        format_text_table(
            [{k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in row.items()} for row in ranks]
        )
    )
    wall_s = time.perf_counter() - started
    print(f"\nwall-clock: {wall_s / 60:.1f} min; files in {args.out}")
    _write_all(args, summaries, references, checks, ranks, wall_s)
    return 0


def _write_all(
    args: argparse.Namespace,
    summaries: dict[str, list[StrategySummary]],
    references: dict[str, dict[str, Any]],
    checks: list[dict[str, Any]],
    ranks: list[dict[str, Any]],
    wall_s: float,
) -> None:
    from dataclasses import asdict

    payload = {
        "seeds": args.seeds,
        "default_strategy": DEFAULT_STRATEGY,
        "calibrate": args.calibrate,
        "wall_s": wall_s,
        "datasets": references,
        "targets": checks,
        "ranking": ranks,
        "summaries": {name: [asdict(s) for s in rows] for name, rows in summaries.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_efficiency.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
