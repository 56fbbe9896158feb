"""Learning-curve plots for a simulation (matplotlib's object API: no pyplot, no global state)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daemon.simulate import SimulationResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["curves_figure", "plot_curves"]

_LEGEND_COLUMNS = 6  # entries per legend row under the plots


def plot_curves(result: SimulationResult, path: Path) -> Path:
    """Draw :func:`curves_figure` and save it as a PNG.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = curves_figure(result)
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def curves_figure(result: SimulationResult) -> Figure:
    """Draw macro-F1 and classes seen against labels, one line per strategy.

    Lines are the mean over seeds; the band spans the lowest to the highest seed. Dashed
    lines mark the full-data model's macro-F1 and 95 % of it. Points carry markers when a
    run has one evaluation (budget <= batch: a line needs two), the legend sits under the
    plots (with ten strategies it covered the curves' right end), and classes are counted
    in whole ticks.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(13, 5.5), layout="constrained")
    f1_axes, seen_axes = figure.subplots(1, 2)
    for name in result.strategies:
        records = [r for r in result.records if r.strategy == name]
        seeds = sorted({r.seed for r in records})
        rounds = min(sum(1 for r in records if r.seed == seed) for seed in seeds)
        labels = np.asarray([r.n_labels for r in records if r.seed == seeds[0]][:rounds])
        marker = "o" if rounds == 1 else None
        for axes, value in ((f1_axes, "macro_f1"), (seen_axes, "n_classes_seen")):
            grid = np.asarray(
                [[getattr(r, value) for r in records if r.seed == seed][:rounds] for seed in seeds],
                dtype=float,
            )
            (line,) = axes.plot(labels, grid.mean(axis=0), label=name, linewidth=1.6, marker=marker)
            axes.fill_between(labels, grid.min(axis=0), grid.max(axis=0), color=line.get_color(), alpha=0.15)
    reference = result.reference.macro_f1
    f1_axes.axhline(reference, color="black", linestyle="--", linewidth=1, label="full data")
    f1_axes.axhline(0.95 * reference, color="grey", linestyle=":", linewidth=1, label="95% of full data")
    seen_axes.axhline(sum(1 for c in result.pool_counts.values() if c > 0), color="black", linestyle="--", linewidth=1)
    f1_axes.set(
        xlabel="labels",
        ylabel="test macro-F1",
        title=f"{result.dataset}: macro-F1 (mean, min-max over seeds)",
    )
    seen_axes.set(xlabel="labels", ylabel="classes with >= 1 label", title=f"{result.dataset}: classes seen")
    seen_axes.set_ylim(bottom=0)  # a flat line at 2 classes spanned 1.9-2.1: no two whole ticks to show
    seen_axes.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    handles, names = f1_axes.get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=min(len(names), _LEGEND_COLUMNS), fontsize=8)
    f1_axes.grid(alpha=0.3)
    seen_axes.grid(alpha=0.3)
    return figure
