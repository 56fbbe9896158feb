"""Summaries, files and plots for a simulation: tidy CSV/JSON, learning curves, a table.

Definitions (per data set and strategy, over the seeds):

* **mean curve**: macro-F1 (or accuracy) averaged over seeds at each label count;
  every seed of a strategy is evaluated at the same label counts.
* **labels to X %**: the first label count at which the mean curve reaches X % of
  the full-data model's macro-F1 (no interpolation), even when the curve falls below
  it again later; None = "not reached (>budget)".
  The ratio to random divides by random's count; when random never reached the
  target, the ratio is only bounded above by ``labels / final label count``.
* **AULC**: trapezoid area under the macro-F1 curve over labels, divided by the
  label range (first to last evaluation): the curve's mean macro-F1, in [0, 1].
* **rare-class recall @ n**: mean test recall over the rare classes
  (:func:`daemon.simulate_metrics.rare_classes`) at the last evaluation with at most a
  quarter, half and all of the labels of the run; ``n`` is the label count of that
  evaluation (a checkpoint below the first evaluation is left out).
* **all classes seen**: the number of labels (in annotation order, exact to the label)
  by which every class present in the pool had at least one; mean over the seeds.
* **same every seed**: every seed of the strategy gave the same curves (a deterministic
  strategy on a pool the cold start takes whole, <= 1,000 items); its ± is then no spread.
* **stop**: label count at which the kappa rule (:mod:`daemon.stopping`) said stop,
  vs **enough**: the first label count reaching 95 % of full-data macro-F1 (per seed).
* **copies asked**: items asked for whose vector was within the near-copy cosine (0.97,
  or ``--near-copy-cosine``) of an item labeled in an earlier round or of an earlier item of
  the same batch; mean over the seeds.
  Such a label tells the model little it did not know, and costs an annotator a read.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.simulate import RoundRecord, SimulationResult
from daemon.simulate_metrics import aulc, first_reaching, rare_classes, value_at
from daemon.stopping import first_stop

__all__ = [
    "StrategySummary",
    "budget_checkpoints",
    "budget_text",
    "footnotes",
    "format_text_table",
    "labels_text",
    "summarise",
    "table_rows",
    "write_outputs",
]

FloatArray = npt.NDArray[np.float64]
TARGETS = (0.95, 0.98)


@dataclass(frozen=True, slots=True)
class StrategySummary:
    """One strategy on one data set, over all seeds (see the module docstring for definitions)."""

    dataset: str
    strategy: str
    n_seeds: int
    final_labels: int
    final_macro_f1: float
    final_accuracy: float
    aulc: float
    aulc_sd: float
    labels_to_f1: dict[str, int | None]  # "95" / "98" -> labels (mean curve)
    ratio_to_random: dict[str, float | None]
    ratio_is_bound: dict[str, bool]  # True: random never reached it; the ratio is an upper bound
    labels_to_accuracy_95: int | None
    all_seen_labels: float | None  # mean over seeds that saw every class
    all_seen_seeds: int
    rare_recall: dict[str, float | None]  # budget -> mean recall over rare classes
    stop_labels: float | None  # mean over seeds where the rule fired
    stop_seeds: int
    enough_labels: float | None  # mean over seeds reaching 95 % of full-data macro-F1
    enough_seeds: int
    select_s: float  # mean selection time per round
    fit_s: float
    copies_asked: float  # mean over seeds: items asked for that nearly copied an already labeled one
    is_same_every_seed: bool = False  # more than one seed, and all gave the same curves: aulc_sd is no spread


def budget_checkpoints(result: SimulationResult) -> tuple[int, ...]:
    """Return the label budgets near which rare-class recall is reported: 1/4, 1/2 and all of the run.

    Each is reported at the last evaluation within it, under that evaluation's label count.
    """
    final = max(record.n_labels for record in result.records)
    return tuple(sorted({max(1, final // 4), max(1, final // 2), final}))


def summarise(result: SimulationResult) -> list[StrategySummary]:
    """Return one summary per strategy, in ``result.strategies`` order."""
    curves = {name: _Curves.of(result, name) for name in result.strategies}
    random = curves.get("random")
    return [_summary(result, name, curves[name], random) for name in result.strategies]


@dataclass(frozen=True, slots=True)
class _Curves:
    n_labels: FloatArray  # (r,)
    macro_f1: FloatArray  # (s, r)
    accuracy: FloatArray  # (s, r)
    recall: FloatArray  # (s, r, C)
    seen: FloatArray  # (s, r)
    kappas: list[list[float | None]]  # per seed, per round
    first_seen: list[dict[str, int]]  # per seed: class -> 1-based label number of its first label
    select_s: float
    fit_s: float
    copies_asked: float

    @classmethod
    def of(cls, result: SimulationResult, strategy: str) -> _Curves:
        per_seed = [[r for r in result.records if r.strategy == strategy and r.seed == seed] for seed in result.seeds]
        rounds = min(len(records) for records in per_seed)
        per_seed = [records[:rounds] for records in per_seed]
        everything = [record for records in per_seed for record in records]

        def grid(value: str) -> FloatArray:
            return np.asarray([[getattr(r, value) for r in records] for records in per_seed], dtype=np.float64)

        return cls(
            n_labels=np.asarray([r.n_labels for r in per_seed[0]], dtype=np.float64),
            macro_f1=grid("macro_f1"),
            accuracy=grid("accuracy"),
            recall=grid("class_recall"),
            seen=grid("n_classes_seen"),
            kappas=[[r.kappa for r in records] for records in per_seed],
            first_seen=[dict(pair for r in records for pair in r.first_seen) for records in per_seed],
            select_s=float(np.mean([r.select_s for r in everything])),
            fit_s=float(np.mean([r.fit_s for r in everything])),
            copies_asked=sum(r.n_copies_asked for r in everything) / len(per_seed),
        )


def _summary(result: SimulationResult, strategy: str, curves: _Curves, random: _Curves | None) -> StrategySummary:
    ref = result.reference
    mean_f1 = curves.macro_f1.mean(axis=0)
    labels_to = {_key(t): first_reaching(curves.n_labels, mean_f1, t * ref.macro_f1) for t in TARGETS}
    ratios: dict[str, float | None] = {}
    bounds: dict[str, bool] = {}
    for target in TARGETS:
        ours = labels_to[_key(target)]
        theirs = (
            None if random is None else first_reaching(random.n_labels, random.macro_f1.mean(0), target * ref.macro_f1)
        )
        bounds[_key(target)] = ours is not None and theirs is None and random is not None
        if ours is None or random is None:
            ratios[_key(target)] = None
        else:
            ratios[_key(target)] = ours / (theirs if theirs is not None else float(random.n_labels[-1]))
    per_seed_aulc = [aulc(curves.n_labels, row) for row in curves.macro_f1]
    pool_classes = [name for name, count in result.pool_counts.items() if count > 0]
    all_seen = [
        max(seen[name] for name in pool_classes) if all(name in seen for name in pool_classes) else None
        for seen in curves.first_seen
    ]
    enough = [first_reaching(curves.n_labels, row, 0.95 * ref.macro_f1) for row in curves.macro_f1]
    stops = [first_stop(kappas, result.config.stopping) for kappas in curves.kappas]
    stop_labels = [int(curves.n_labels[i]) for i in stops if i is not None]
    return StrategySummary(
        dataset=result.dataset,
        strategy=strategy,
        n_seeds=len(result.seeds),
        final_labels=int(curves.n_labels[-1]),
        final_macro_f1=float(mean_f1[-1]),
        final_accuracy=float(curves.accuracy.mean(axis=0)[-1]),
        aulc=float(np.mean(per_seed_aulc)),
        aulc_sd=float(np.std(per_seed_aulc)),
        labels_to_f1=labels_to,
        ratio_to_random=ratios,
        ratio_is_bound=bounds,
        labels_to_accuracy_95=first_reaching(curves.n_labels, curves.accuracy.mean(0), 0.95 * ref.accuracy),
        all_seen_labels=_mean_reached(all_seen),
        all_seen_seeds=sum(v is not None for v in all_seen),
        rare_recall=_rare_recall(result, curves),
        stop_labels=_mean_reached(stop_labels),
        stop_seeds=len(stop_labels),
        enough_labels=_mean_reached(enough),
        enough_seeds=sum(v is not None for v in enough),
        select_s=curves.select_s,
        fit_s=curves.fit_s,
        copies_asked=curves.copies_asked,
        is_same_every_seed=len(result.seeds) > 1 and all(
            bool((grid == grid[0]).all()) for grid in (curves.macro_f1, curves.accuracy, curves.recall)
        ),
    )


def _rare_recall(result: SimulationResult, curves: _Curves) -> dict[str, float | None]:
    """Mean rare-class recall keyed by the label count of the evaluation used for each checkpoint."""
    points = sorted({
        int(curves.n_labels[within[-1]])
        for budget in budget_checkpoints(result)
        if (within := np.flatnonzero(curves.n_labels <= budget)).size
    })
    rare = [c for c in rare_classes(result.pool_counts) if c in result.eval_classes]
    columns = [result.eval_classes.index(c) for c in rare]
    if not columns:
        return {str(n): None for n in points}
    mean_rare = curves.recall[:, :, columns].mean(axis=(0, 2))
    return {str(n): value_at(curves.n_labels, mean_rare, n) for n in points}


def _mean_reached(values: Sequence[int | None]) -> float | None:
    reached = [v for v in values if v is not None]
    return float(np.mean(reached)) if reached else None


def _key(target: float) -> str:
    return str(round(target * 100))


def write_outputs(
    result: SimulationResult,
    summaries: Sequence[StrategySummary],
    out_dir: Path,
    *,
    settings: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``rounds.csv``, ``class_recall.csv``, ``summary.csv``, ``summary.json`` and ``curves.png``.

    ``summary.json`` records, under ``"settings"``, the rows dropped without a label and then
    ``settings``: whatever else changed the results and is not in the result (the data path,
    the test set's source, calibration, ...), so two runs' files can be told apart.

    Returns:
        The paths written, all inside ``out_dir`` (created if missing).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = out_dir / "rounds.csv"
    _write_csv(rounds, [_round_row(result, r) for r in result.records])
    recall = out_dir / "class_recall.csv"
    _write_csv(recall, [row for r in result.records for row in _recall_rows(result, r)])
    summary_csv = out_dir / "summary.csv"
    _write_csv(summary_csv, [_flat(asdict(s)) for s in summaries])
    summary_json = out_dir / "summary.json"
    summary_json.write_text(
        json.dumps(
            _result_header(result)
            | {
                "settings": {"n_unlabeled_dropped": result.n_unlabeled_dropped} | dict(settings or {}),
                "summaries": [asdict(s) for s in summaries],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    from daemon.simulate_plot import plot_curves

    plot = plot_curves(result, out_dir / "curves.png")
    return [rounds, recall, summary_csv, summary_json, plot]


def _result_header(result: SimulationResult) -> dict[str, Any]:
    return {
        "dataset": result.dataset,
        "encoder": result.encoder,
        "n_pool": result.n_pool,
        "n_test": result.n_test,
        "classes": len(result.pool_counts),  # the pool's, as the printed header says (QA: it held the test set's)
        "classes_in_test": len(result.eval_classes),  # those the scores average over
        "pool_counts": result.pool_counts,
        "rare_classes": list(rare_classes(result.pool_counts)),
        "seeds": list(result.seeds),
        "batch_size": result.config.batch_size,
        "budget": result.config.budget,
        "requested_batch_size": result.requested.batch_size,
        "requested_budget": result.requested.budget,
        "stopping": asdict(result.config.stopping),
        "near_copy_cosine": result.config.near_copy_cosine,  # None: near-copies of labeled items were kept
        "reference": asdict(result.reference),
        "embed_s": round(result.embed_s, 3),
        "wall_s": round(result.wall_s, 3),
        "notes": "modAL arms run modAL query functions on precomputed probabilities; the head is refit "
        "every round (ActiveLearner.teach fails with scikit-learn >= 1.8).",
    }


def _round_row(result: SimulationResult, record: RoundRecord) -> dict[str, Any]:
    row = asdict(record)
    del row["class_recall"]
    row["first_seen"] = json.dumps(dict(record.first_seen))
    return {"dataset": result.dataset} | row


def _recall_rows(result: SimulationResult, record: RoundRecord) -> list[dict[str, Any]]:
    return [
        {
            "dataset": result.dataset,
            "strategy": record.strategy,
            "seed": record.seed,
            "round": record.round,
            "n_labels": record.n_labels,
            "class": name,
            "pool_count": result.pool_counts.get(name, 0),
            "recall": value,
        }
        for name, value in zip(result.eval_classes, record.class_recall, strict=True)
    ]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        if not rows:
            return
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def labels_text(labels: float | None, final_labels: int) -> str:
    """Render a label count, or ``not reached (>N)`` when the curve never got there."""
    return f"not reached (>{final_labels})" if labels is None else f"{labels:.0f}"


def table_rows(summaries: Sequence[StrategySummary]) -> list[dict[str, str]]:
    """Return the summary table as display strings, one row per strategy (columns in order)."""
    rows = []
    for s in summaries:
        to_target = {}
        for key in ("95", "98"):
            ratio = s.ratio_to_random[key]
            shown = "" if ratio is None else f" ({'<' if s.ratio_is_bound[key] else ''}{ratio:.2f}x rnd)"
            to_target[key] = labels_text(s.labels_to_f1[key], s.final_labels) + shown
        rare = "/".join("-" if v is None else f"{v:.2f}" for v in s.rare_recall.values())
        seen = labels_text(s.all_seen_labels, s.final_labels)
        if s.all_seen_labels is not None and s.all_seen_seeds < s.n_seeds:
            seen += f" ({s.all_seen_seeds}/{s.n_seeds} seeds)"
        rows.append(
            {
                "strategy": s.strategy,
                "AULC": _aulc_text(s),
                "labels→95% F1": to_target["95"],
                "labels→98% F1": to_target["98"],
                "final F1": f"{s.final_macro_f1:.3f}",
                f"rare recall @{'/'.join(s.rare_recall)}": rare,
                "all classes seen": seen,
                "stop / enough": f"{_mean_text(s.stop_labels, s.stop_seeds, s.n_seeds)} / "
                f"{_mean_text(s.enough_labels, s.enough_seeds, s.n_seeds)}",
                "copies asked": f"{s.copies_asked:.0f}",
                "select s": f"{s.select_s:.3f}",
                "fit s": f"{s.fit_s:.2f}",
            }
        )
    return rows


def _aulc_text(s: StrategySummary) -> str:
    """``mean±sd`` over the seeds; one seed's AULC alone, as it has no spread to show."""
    if s.n_seeds == 1:
        return f"{s.aulc:.4f}"
    return f"{s.aulc:.4f}±{s.aulc_sd:.4f}" + ("*" if s.is_same_every_seed else "")


def footnotes(summaries: Sequence[StrategySummary]) -> list[str]:
    """Return the lines to print under the table (empty when there is nothing to say)."""
    lines = []
    if any(s.n_seeds == 1 for s in summaries):
        lines.append("one seed: AULC has no spread, and one run's figures move with the draw (--seeds 5 for mean±sd)")
    same = [s.strategy for s in summaries if s.is_same_every_seed]
    if same:
        lines.append(f"* {', '.join(same)}: every seed gave the same run (deterministic on this pool); "
                     "± is not a spread")
    return lines


def budget_text(result: SimulationResult) -> str:
    """Return ``batch B, budget N``, saying what capped them when they differ from what was asked for.

    The budget is capped at the pool size, and the batch at the (capped) budget: a batch of 200
    with a budget of 60 is the budget's cap, not the pool's.
    """
    ran, asked = result.config, result.requested
    text = f"batch {ran.batch_size}, budget {ran.budget}"
    if ran.budget != asked.budget:
        text += (f" (capped at the pool's {result.n_pool} items; asked for batch {asked.batch_size}, "
                 f"budget {asked.budget})")
    elif ran.batch_size != asked.batch_size:
        text += f" (the batch capped at the budget; asked for batch {asked.batch_size})"
    return text


def _mean_text(value: float | None, reached: int, total: int) -> str:
    if value is None:
        return "never"
    return f"{value:.0f}" + ("" if reached == total else f" ({reached}/{total})")


def format_text_table(rows: Sequence[dict[str, str]]) -> str:
    """Lay ``rows`` out as a fixed-width text table (header, rule, one line per row)."""
    if not rows:
        return ""
    columns = list(rows[0])
    widths = [max(len(column), *(len(row[column]) for row in rows)) for column in columns]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(row[c].ljust(w) for c, w in zip(columns, widths, strict=True)) for row in rows]
    return "\n".join(lines)
