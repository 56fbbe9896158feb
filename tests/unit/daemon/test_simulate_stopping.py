"""The label-free stopping rule (daemon/stopping.py) on hand-made sequences."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.stopping import StoppingRule, first_stop, prediction_kappa, reference_gap, reference_of


def test_kappa_is_one_for_identical_predictions() -> None:
    assert prediction_kappa(["a", "b", "a", "c"], ["a", "b", "a", "c"]) == pytest.approx(1.0)


def test_kappa_matches_the_textbook_value() -> None:
    # 2x2 table: agree on 20 "yes" + 15 "no", disagree on 5 + 10; p_o = 0.7,
    # p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4.
    before = ["y"] * 25 + ["n"] * 25
    after = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert prediction_kappa(before, after) == pytest.approx(0.4)


def test_kappa_agrees_with_sklearn() -> None:
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    before = rng.integers(0, 4, size=300)
    after = np.where(rng.random(300) < 0.8, before, rng.integers(0, 4, size=300))
    assert prediction_kappa(before, after) == pytest.approx(cohen_kappa_score(before, after))


def test_two_models_predicting_one_class_are_no_evidence_of_stability() -> None:
    assert prediction_kappa(["a"] * 5, ["a"] * 5) == 0.0
    assert prediction_kappa(["a"] * 5, ["b"] * 5) == 0.0


def test_kappa_refuses_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="one length"):
        prediction_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        prediction_kappa([], [])


def test_first_stop_needs_a_full_window_above_threshold() -> None:
    kappas = [None, 0.5, 0.995, 0.999, 0.97, 0.991, 0.992, 0.999, 1.0]
    assert first_stop(kappas) == 7
    assert first_stop(kappas, StoppingRule(threshold=0.99, window=2)) == 3
    assert first_stop(kappas, StoppingRule(threshold=0.9, window=1)) == 2


def test_none_breaks_a_run_and_a_short_sequence_never_stops() -> None:
    assert first_stop([0.999, None, 0.999, 0.999]) is None
    assert first_stop([1.0, 1.0]) is None
    assert first_stop([]) is None


@pytest.mark.parametrize(
    "rule", [StoppingRule(threshold=0.0), StoppingRule(threshold=1.5), StoppingRule(window=0)]
)
def test_a_rule_out_of_range_is_refused(rule: StoppingRule) -> None:
    with pytest.raises(ValueError):
        first_stop([1.0], rule)


def test_the_reference_is_the_newest_model_a_batch_and_a_tenth_of_the_labels_back() -> None:
    assert reference_gap(30, batch_size=10) == 10  # a batch
    assert reference_gap(744, batch_size=10) == 75  # 10% of the labels, rounded up
    assert reference_gap(0, batch_size=0) == 1
    earlier = [10, 20, 30, 670, 700, 740]
    assert reference_of(earlier, 744, 75) == 2  # 30: the newest at most 744 - 75 = 669 (670 is one too many)
    assert reference_of([], 744, 75) is None and reference_of([700], 744, 75) is None
