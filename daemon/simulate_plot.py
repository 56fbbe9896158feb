"""Learning-curve plots for a simulation (matplotlib's object API: no pyplot, no global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.simulate import SimulationResult

__all__ = ["plot_curves"]


def plot_curves(result: SimulationResult, path: Path) -> Path:
    """Draw macro-F1 and classes seen against labels, one line per strategy; save a PNG.

    Lines are the mean over seeds; the band spans the lowest to the highest seed.
    Dashed lines mark the full-data model's macro-F1 and 95 % of it.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(figure)
    f1_axes, seen_axes = figure.subplots(1, 2)
    for name in result.strategies:
        records = [r for r in result.records if r.strategy == name]
        seeds = sorted({r.seed for r in records})
        rounds = min(sum(1 for r in records if r.seed == seed) for seed in seeds)
        labels = np.asarray([r.n_labels for r in records if r.seed == seeds[0]][:rounds])
        for axes, value in ((f1_axes, "macro_f1"), (seen_axes, "n_classes_seen")):
            grid = np.asarray(
                [[getattr(r, value) for r in records if r.seed == seed][:rounds] for seed in seeds],
                dtype=float,
            )
            (line,) = axes.plot(labels, grid.mean(axis=0), label=name, linewidth=1.6)
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
    f1_axes.legend(fontsize=8, loc="lower right")
    f1_axes.grid(alpha=0.3)
    seen_axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
