"""curves.png: what QA could not read in it (an empty plot, a legend over the curves, fractional class ticks)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from daemon.simulate import ReplayConfig, run_simulation
from daemon.simulate_data import SimulationData
from daemon.simulate_plot import curves_figure
from tests.unit.daemon.test_simulate import CentroidClassifier, blobs, synthetic


def two_classes() -> SimulationData:
    return replace(synthetic(), pool=blobs(150, 1, shares=(0.6, 0.4)), test=blobs(90, 2, shares=(0.6, 0.4)),
                   classes=("a", "b"))


def test_a_run_with_one_evaluation_draws_its_point() -> None:
    result = run_simulation(synthetic(), ["random", "margin"], [0, 1], ReplayConfig(batch_size=50, budget=40),
                            make_classifier=CentroidClassifier)
    f1_axes, seen_axes = curves_figure(result).axes
    for axes in (f1_axes, seen_axes):
        curves = [line for line in axes.get_lines() if line.get_label() in ("random", "margin")]
        assert len(curves) == 2
        assert all(np.asarray(line.get_xdata()).shape == (1,) for line in curves)
        assert all(line.get_marker() not in ("None", "", None) for line in curves)


def test_the_legend_lies_outside_the_plots_and_classes_are_whole_ticks() -> None:
    result = run_simulation(two_classes(), ["random", "margin", "entropy", "least_confidence"], [0],
                            ReplayConfig(batch_size=10, budget=40), make_classifier=CentroidClassifier)
    figure = curves_figure(result)
    FigureCanvasAgg(figure).draw()  # type: ignore[no-untyped-call]
    f1_axes, seen_axes = figure.axes
    assert f1_axes.get_legend() is None and seen_axes.get_legend() is None
    [legend] = figure.legends
    box = legend.get_window_extent()
    assert [text.get_text() for text in legend.get_texts()][:4] == ["random", "margin", "entropy", "least_confidence"]
    assert all(not box.overlaps(axes.get_window_extent()) for axes in (f1_axes, seen_axes))
    low, high = seen_axes.get_ylim()
    ticks = [tick for tick in seen_axes.get_yticks() if low <= tick <= high]
    assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    assert np.isin([1.0, 2.0], ticks).all()
