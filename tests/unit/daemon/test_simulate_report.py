"""What the simulate summary claims: the budget that ran, evaluated label counts, spreads that are spreads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from daemon.simulate import ReplayConfig, run_simulation
from daemon.simulate_report import budget_text, footnotes, summarise, table_rows, write_outputs
from tests.unit.daemon.test_simulate import CentroidClassifier, blobs, synthetic


def test_a_budget_and_batch_beyond_the_pool_are_recorded_as_run(tmp_path: Path) -> None:
    result = run_simulation(synthetic(n_pool=25), ["random"], [0], ReplayConfig(batch_size=40, budget=1000),
                            make_classifier=CentroidClassifier)
    assert (result.config.batch_size, result.config.budget) == (25, 25)
    assert (result.requested.batch_size, result.requested.budget) == (40, 1000)
    assert budget_text(result) == "batch 25, budget 25 (capped at the pool's 25 items; asked for batch 40, budget 1000)"
    write_outputs(result, summarise(result), tmp_path)
    header = json.loads((tmp_path / "summary.json").read_text())
    assert (header["budget"], header["batch_size"]) == (25, 25)
    assert (header["requested_budget"], header["requested_batch_size"]) == (1000, 40)


def test_a_batch_beyond_the_budget_names_the_budget_not_the_pool() -> None:
    result = run_simulation(synthetic(n_pool=60), ["random"], [0], ReplayConfig(batch_size=200, budget=30),
                            make_classifier=CentroidClassifier)
    assert budget_text(result) == "batch 30, budget 30 (the batch capped at the budget; asked for batch 200)"


def test_a_budget_within_the_pool_is_shown_as_asked() -> None:
    result = run_simulation(synthetic(n_pool=60), ["random"], [0], ReplayConfig(batch_size=10, budget=30),
                            make_classifier=CentroidClassifier)
    assert budget_text(result) == "batch 10, budget 30"


def test_rare_recall_is_keyed_by_label_counts_that_were_evaluated() -> None:
    data = replace(synthetic(), pool=blobs(200, 4, shares=(0.49, 0.49, 0.02)))
    result = run_simulation(data, ["random"], [0], ReplayConfig(batch_size=25, budget=60),
                            make_classifier=CentroidClassifier)
    evaluated = {record.n_labels for record in result.records}
    assert evaluated == {25, 50, 60}
    [summary] = summarise(result)
    assert list(summary.rare_recall) == ["25", "60"]  # 1/4 of 60 (15) precedes the first evaluation
    assert all(value is not None for value in summary.rare_recall.values())
    assert "rare recall @25/60" in table_rows([summary])[0]


def test_strategies_whose_seeds_all_gave_one_run_say_so() -> None:
    result = run_simulation(synthetic(n_pool=80), ["random", "margin"], [0, 1], ReplayConfig(batch_size=10, budget=40),
                            make_classifier=CentroidClassifier)
    random, margin = summarise(result)
    assert not random.is_same_every_seed and margin.is_same_every_seed and margin.aulc_sd == 0.0
    rows = table_rows([random, margin])
    assert rows[1]["AULC"].endswith("*") and not rows[0]["AULC"].endswith("*")
    assert footnotes([random, margin]) == [
        "* margin: every seed gave the same run (deterministic on this pool); ± is not a spread"
    ]
    single = run_simulation(synthetic(n_pool=80), ["margin"], [0], ReplayConfig(batch_size=10, budget=40),
                            make_classifier=CentroidClassifier)
    assert not summarise(single)[0].is_same_every_seed


def test_one_seed_shows_no_spread_and_says_why() -> None:
    result = run_simulation(synthetic(n_pool=80), ["random", "margin"], [0], ReplayConfig(batch_size=10, budget=40),
                            make_classifier=CentroidClassifier)
    summaries = summarise(result)
    for row, summary in zip(table_rows(summaries), summaries, strict=True):
        assert row["AULC"] == f"{summary.aulc:.4f}"  # not "0.8123±0.0000"
    assert footnotes(summaries) == [
        "one seed: AULC has no spread, and one run's figures move with the draw (--seeds 5 for mean±sd)"
    ]
