"""Pre-filter plans: which rows of a pool each strategy reads (strategies.streaming)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import Prefilter, prefilter, prefilter_scores, scores
from strategies.arms import EXPLORE_SAMPLE, candidate_pool_size, explore_sample_size

COUNTS = np.array([30, 4, 1], dtype=np.intp)
N = 1_000_000


def plan(name: str, k: int = 100, n: int = N, **kwargs: object) -> Prefilter:
    options: dict[str, object] = {"label_counts": COUNTS, "n_unseen_classes": 0, "has_labeled_embeddings": True}
    options.update(kwargs)
    return prefilter(name, k, n, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("random", Prefilter(0, 100)),
        ("cold_start", Prefilter(0, 20_000)),
        ("margin", Prefilter(100, 0)),
        ("least_confidence", Prefilter(100, 0)),
        ("entropy", Prefilter(100, 0)),
        ("scarcity", Prefilter(100, 0)),
        ("modal_margin", Prefilter(100, 0)),
        ("modal_ranked_batch", Prefilter(2_000, 0)),
        ("margin_diverse", Prefilter(5_334, 0)),  # 3 classes: 160 / 3 rows per pick
        ("scarce_margin", Prefilter(100, 0)),
        ("scarce_margin_diverse", Prefilter(5_334, 0)),
    ],
)
def test_plan_of_each_strategy_on_a_large_pool(name: str, expected: Prefilter) -> None:
    assert plan(name) == expected


def test_unseen_classes_add_the_exploration_sample_only_with_labeled_rows() -> None:
    # 3 seen + 13 unseen classes: 10 rows per pick
    assert plan("scarce_margin_diverse", 1000, n_unseen_classes=13) == Prefilter(10_000, EXPLORE_SAMPLE)
    assert plan("scarce_margin", 1000, n_unseen_classes=13) == Prefilter(10_000, EXPLORE_SAMPLE)
    assert plan("scarce_margin_diverse", 1000, n_unseen_classes=13, has_labeled_embeddings=False) == Prefilter(
        10_000, 0
    )


def test_small_pools_are_read_whole() -> None:
    size = candidate_pool_size(100, 6_000, n_classes=3)
    assert explore_sample_size(6_000, size) == 6_000  # at most EXPLORE_SAMPLE rows outside the top
    assert plan("scarce_margin_diverse", 100, 6_000, n_unseen_classes=1) == Prefilter(4_000, 6_000)
    assert explore_sample_size(100_000, size) == EXPLORE_SAMPLE
    assert plan("cold_start", 5, 300) == Prefilter(0, 300)


def test_cold_start_while_the_model_cannot_score() -> None:
    assert plan("scarce_margin_diverse", label_counts=None) == Prefilter(0, 20_000)
    assert plan("margin", label_counts=np.array([5, 0], dtype=np.intp)) == Prefilter(0, 20_000)
    assert plan("random", label_counts=None) == Prefilter(0, 100)


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        plan("nope")
    with pytest.raises(ValueError, match="k must be in"):
        plan("margin", 0)
    proba = np.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match="reads no score"):
        prefilter_scores("random", proba, COUNTS)


def test_scores_match_the_strategy_formulas() -> None:
    gen = np.random.default_rng(0)
    logits = gen.normal(size=(50, 3))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(prefilter_scores("margin_diverse", proba, COUNTS), scores.margin(proba))
    base = scores.scarce_margin(proba, COUNTS)
    np.testing.assert_array_equal(
        prefilter_scores("scarce_margin_diverse", proba, COUNTS, n_unseen_classes=2, has_labeled_embeddings=True),
        base,
    )
    lam = 2 / (3 + 2)
    np.testing.assert_allclose(
        prefilter_scores("scarce_margin_diverse", proba, COUNTS, n_unseen_classes=2),
        (1 - lam) * base + lam * scores.normalized_entropy(proba),
    )
    np.testing.assert_array_equal(scores.scarce_explore(proba, COUNTS, n_unseen_classes=0), base)
    with pytest.raises(ValueError):
        scores.scarce_explore(proba, COUNTS, n_unseen_classes=-1)


def test_candidate_pool_depth_falls_with_the_number_of_classes() -> None:
    assert candidate_pool_size(25, 100_000, n_classes=2) == 2_000  # 80 rows per pick for a binary task
    assert candidate_pool_size(25, 100_000, n_classes=4) == 1_000
    assert candidate_pool_size(50, 100_000, n_classes=20) == 400  # 160 / 20 = 8 rows per pick
    assert candidate_pool_size(100, 100_000, n_classes=77) == 300  # never below 3 rows per pick
    assert candidate_pool_size(40, 100_000, n_classes=77) == 150  # ... nor below the floor
    assert candidate_pool_size(50, 100_000, n_classes=1) == candidate_pool_size(50, 100_000, n_classes=2)
    assert candidate_pool_size(5, 100_000, n_classes=77) == 150  # the floor for small batches
    assert candidate_pool_size(5_000, 100_000, n_classes=2) == 20_000  # the cap
    assert candidate_pool_size(100, 300, n_classes=77) == 300  # never more rows than the pool
    assert plan("margin_diverse", 50, label_counts=np.ones(77, dtype=np.intp)) == Prefilter(150, 0)
    assert plan("margin_diverse", 50, label_counts=np.ones(7, dtype=np.intp), n_unseen_classes=70) == Prefilter(
        150, 0
    )
