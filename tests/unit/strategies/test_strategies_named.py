"""Class names guide the batch to unseen classes (strategies.named, strategies.arms.names_first)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from strategies import PoolView, prefilter, select_batch
from strategies.arms import ANCHOR_CAP
from strategies.named import named_share, nearest_to_names

FloatArray = npt.NDArray[np.float64]
D = 8


def unit(rows: FloatArray) -> FloatArray:
    out: FloatArray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def pool(n: int = 400, seed: int = 0) -> FloatArray:
    return unit(np.random.default_rng(seed).normal(size=(n, D)))


@pytest.mark.parametrize(
    ("k", "n_prototypes", "n_seen", "n_unseen", "expected"),
    [
        (50, 77, 0, 77, 50),  # cold start with more unseen classes than picks: the whole batch
        (25, 4, 0, 4, 4),  # one row per name, no more
        (50, 30, 47, 30, 20),  # ceil(50 * 30 / 77)
        (50, 1, 76, 1, 1),
        (50, 0, 70, 7, 0),  # no names
        (50, 5, 10, 0, 0),  # nothing unseen
    ],
)
def test_named_share(k: int, n_prototypes: int, n_seen: int, n_unseen: int, expected: int) -> None:
    got = named_share(k, n_prototypes=n_prototypes, n_seen_classes=n_seen, n_unseen_classes=n_unseen)
    assert got == expected


def test_each_name_gets_its_nearest_row() -> None:
    rows = pool()
    targets = [17, 230, 5]
    prototypes = unit(rows[targets] + 0.01)
    positions, similarity = nearest_to_names(rows, prototypes, 3, rng=np.random.default_rng(0))
    assert sorted(positions.tolist()) == sorted(targets)
    assert (similarity > 0.99).all()


def test_two_names_sharing_a_nearest_row_get_distinct_rows_clearest_match_first() -> None:
    rows = pool()
    closer = unit(rows[[40]] + 0.001)
    farther = unit(rows[[40]] + 0.2)
    positions, similarity = nearest_to_names(rows, np.vstack([farther, closer]), 2, rng=np.random.default_rng(0))
    assert positions[0] == 40  # the clearer match takes the shared row
    assert positions[1] != 40
    second_best = np.argsort(-(rows @ farther[0]))[1]
    assert positions[1] == second_best
    assert similarity[0] > similarity[1]


def test_fewer_picks_than_names_serve_the_best_matched_names() -> None:
    rows = pool()
    good = unit(rows[[3, 9]] + 0.001)
    vague = unit(np.random.default_rng(9).normal(size=(4, D)))
    positions, _ = nearest_to_names(rows, np.vstack([vague, good]), 2, rng=np.random.default_rng(1))
    assert sorted(positions.tolist()) == [3, 9]


def test_nearest_to_names_rejects_bad_input() -> None:
    rows = pool(20)
    with pytest.raises(ValueError, match="n_picks"):
        nearest_to_names(rows, rows[:2], 3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="width"):
        nearest_to_names(rows, np.ones((1, D + 1)), 1, rng=np.random.default_rng(0))
    assert nearest_to_names(rows, rows[:2], 0, rng=np.random.default_rng(0))[0].shape == (0,)


def default_view(*, n_unseen: int, prototypes: FloatArray | None, cold: bool = False) -> PoolView:
    rows = pool(600, seed=2)
    gen = np.random.default_rng(4)
    return PoolView(
        embeddings=rows,
        proba=None if cold else gen.dirichlet(np.ones(3), size=600),
        label_counts=np.zeros(0, dtype=np.intp) if cold else np.array([12, 5, 2], dtype=np.intp),
        n_unseen_classes=n_unseen,
        labeled_embeddings=None if cold else pool(15, seed=5),
        unseen_prototypes=prototypes,
    )


def test_default_strategy_puts_the_named_rows_first_then_picks_the_rest_elsewhere() -> None:
    rows = pool(600, seed=2)
    targets = [11, 222, 333]
    view = default_view(n_unseen=3, prototypes=unit(rows[targets] + 0.001))
    got = select_batch("scarce_margin_diverse", view, 20, rng=np.random.default_rng(0))
    # share: ceil(20 * 3 / 6) = 10, capped at the 3 names
    assert sorted(got.positions[:3].tolist()) == sorted(targets)
    assert len(set(got.positions.tolist())) == 20
    without = select_batch(
        "scarce_margin_diverse", default_view(n_unseen=3, prototypes=None), 20, rng=np.random.default_rng(0)
    )
    assert not set(targets) <= set(without.positions.tolist())


def test_the_rest_of_the_batch_keeps_away_from_named_rows_past_the_anchor_cap() -> None:
    """With more labeled rows than the anchor cap, the named picks still count as labeled."""
    rng = np.random.default_rng(3)
    rows = unit(rng.normal(size=(600, D)) + 3.0 * np.eye(D)[0])  # the pool leans towards +e0 ...
    rows[[100, 101]] = unit(-np.eye(D)[[0, 0]] + np.array([[0.0] * D, [0.0] * (D - 1) + [1e-3]]))  # ... but for two
    labeled = unit(rng.normal(size=(ANCHOR_CAP + 500, D)) * 0.1 + np.eye(D)[0])  # all labels near +e0
    proba = np.tile([0.9, 0.1], (600, 1))
    proba[101] = 0.5  # the twin is the most uncertain row, and the farthest from every label
    view = PoolView(embeddings=rows, proba=proba, label_counts=np.array([1300, 1200], dtype=np.intp),
                    n_unseen_classes=1, labeled_embeddings=labeled, unseen_prototypes=rows[[100]].copy())
    for seed in range(20):
        got = select_batch("scarce_margin_diverse", view, 10, rng=np.random.default_rng(seed))
        assert got.positions[0] == 100  # the row nearest the name
        assert 101 not in got.positions.tolist(), f"seed {seed}: its twin was picked as if nobody asked for it"


def test_cold_start_stays_representative_and_other_strategies_ignore_names() -> None:
    rows = pool(600, seed=2)
    named = unit(rows[[7, 70, 500, 501]] + 0.001)
    for name in ("scarce_margin_diverse", "margin"):
        cold = select_batch(name, default_view(n_unseen=6, prototypes=named, cold=True), 10,
                            rng=np.random.default_rng(0))
        plain = select_batch(name, default_view(n_unseen=6, prototypes=None, cold=True), 10,
                             rng=np.random.default_rng(0))
        assert cold.strategy == "cold_start" and cold.positions.tolist() == plain.positions.tolist()
    warm = select_batch("margin", default_view(n_unseen=4, prototypes=named), 10, rng=np.random.default_rng(0))
    assert warm.positions.tolist() == select_batch(
        "margin", default_view(n_unseen=4, prototypes=None), 10, rng=np.random.default_rng(0)
    ).positions.tolist()


def test_a_batch_smaller_than_the_share_is_all_named() -> None:
    rows = pool(600, seed=2)
    view = PoolView(embeddings=rows, proba=np.full((600, 2), 0.5), label_counts=np.array([4, 3], dtype=np.intp),
                    n_unseen_classes=30, labeled_embeddings=pool(7, seed=5),
                    unseen_prototypes=unit(rows[[1, 2, 3]] + 0.001))
    got = select_batch("scarce_margin_diverse", view, 2, rng=np.random.default_rng(0))
    assert set(got.positions.tolist()) <= {1, 2, 3}  # share min(3 names, ceil(2 * 30 / 32)): the whole batch


def test_prototypes_must_fit_the_view() -> None:
    rows = pool(600, seed=2)
    with pytest.raises(ValueError, match="unseen classes"):
        select_batch("scarce_margin_diverse", default_view(n_unseen=1, prototypes=rows[:2]), 5,
                     rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="columns"):
        select_batch("scarce_margin_diverse", default_view(n_unseen=2, prototypes=np.ones((1, D + 2))), 5,
                     rng=np.random.default_rng(0))


def test_prefilter_asks_for_named_rows_only_for_the_default_strategy() -> None:
    counts = np.array([12, 5, 2], dtype=np.intp)
    options = {"label_counts": counts, "n_unseen_classes": 3, "has_labeled_embeddings": True}
    assert prefilter("scarce_margin_diverse", 20, 10_000, n_prototypes=3, **options).n_named == 3  # type: ignore[arg-type]
    assert prefilter("scarce_margin_diverse", 20, 10_000, n_prototypes=0, **options).n_named == 0  # type: ignore[arg-type]
    assert prefilter("margin", 20, 10_000, n_prototypes=3, **options).n_named == 0  # type: ignore[arg-type]
    cold = prefilter("scarce_margin_diverse", 20, 10_000, label_counts=None, n_unseen_classes=30, n_prototypes=30)
    assert cold.n_named == 0 and cold.n_sample == 10_000  # the cold start does not read names
    many = prefilter("scarce_margin_diverse", 20, 10_000, label_counts=counts, n_unseen_classes=30, n_prototypes=30)
    assert many.n_named == 19  # ceil(20 * 30 / 33)
