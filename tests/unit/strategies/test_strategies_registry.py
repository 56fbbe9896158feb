"""The registry entry point: names, fallback, validation, and what each arm is for."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import strategies
from strategies import DEFAULT_STRATEGY, REGISTRY, PoolView, Selection, is_cold_start, select_batch

EXPECTED_NAMES = {
    "random",
    "cold_start",
    "least_confidence",
    "margin",
    "entropy",
    "scarcity",
    "scarce_margin",
    "scarce_margin_diverse",
    "margin_diverse",
    "modal_margin",
    "modal_ranked_batch",
}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def unit_rows(gen: np.random.Generator, n: int, d: int = 8) -> npt.NDArray[np.float64]:
    rows: npt.NDArray[np.float64] = gen.normal(size=(n, d))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def warm_view(n: int = 60, n_classes: int = 3, seed: int = 0, **changes: Any) -> PoolView:
    gen = rng(seed)
    logits = 3.0 * gen.normal(size=(n, n_classes))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    view = PoolView(
        embeddings=unit_rows(gen, n).astype(np.float32),
        proba=proba,
        label_counts=np.arange(1, n_classes + 1, dtype=np.intp) * 5,
        n_unseen_classes=1,
        labeled_embeddings=unit_rows(gen, 20).astype(np.float32),
    )
    return dataclasses.replace(view, **changes)


def test_public_api_is_pinned() -> None:
    assert set(strategies.__all__) >= {
        "DEFAULT_STRATEGY",
        "REGISTRY",
        "PoolView",
        "Selection",
        "Strategy",
        "is_cold_start",
        "select_batch",
    }
    assert set(REGISTRY) == EXPECTED_NAMES
    assert DEFAULT_STRATEGY == "scarce_margin_diverse"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'.*margin_diverse"):
        select_batch("nope", warm_view(), 3, rng=rng())


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_strategy_returns_a_valid_selection(name: str) -> None:
    view = warm_view()
    got = select_batch(name, view, 7, rng=rng())
    assert isinstance(got, Selection)
    assert got.positions.dtype == np.intp and got.positions.shape == (7,)
    assert got.scores.dtype == np.float64 and got.scores.shape == (7,)
    assert len(set(got.positions.tolist())) == 7
    assert got.strategy == name


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES - {"random"}))
def test_cold_view_falls_back_to_cold_start(name: str) -> None:
    view = warm_view(proba=None, label_counts=np.zeros(0, dtype=np.intp))
    got = select_batch(name, view, 4, rng=rng())
    assert got.strategy == "cold_start"
    assert len(set(got.positions.tolist())) == 4


def test_random_stays_random_at_cold_start() -> None:
    view = warm_view(proba=None, label_counts=np.zeros(0, dtype=np.intp))
    assert select_batch("random", view, 4, rng=rng()).strategy == "random"


def test_is_cold_start() -> None:
    assert is_cold_start(warm_view(proba=None, label_counts=np.zeros(0, dtype=np.intp)))
    assert is_cold_start(warm_view(label_counts=np.array([5, 0, 0])))
    assert not is_cold_start(warm_view())


@pytest.mark.parametrize(
    ("changes", "k"),
    [
        ({}, 0),
        ({}, 61),
        ({"embeddings": np.full((60, 8), np.nan)}, 3),
        ({"embeddings": np.ones(60)}, 3),
        ({"proba": np.full((59, 3), 1 / 3)}, 3),
        ({"label_counts": np.array([1, 2])}, 3),
        ({"label_counts": np.array([1, -2, 3])}, 3),
        ({"n_unseen_classes": -1}, 3),
        ({"labeled_embeddings": np.ones((4, 7))}, 3),
    ],
    ids=[
        "k=0",
        "k>n",
        "nan",
        "1d-embeddings",
        "proba-rows",
        "counts-length",
        "negative-count",
        "unseen<0",
        "dim",
    ],
)
def test_malformed_views_raise_value_error(changes: dict[str, Any], k: int) -> None:
    with pytest.raises(ValueError):
        select_batch(DEFAULT_STRATEGY, warm_view(**changes), k, rng=rng())


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(ValueError, match="Generator"):
        select_batch("margin", warm_view(), 3, rng=np.random.RandomState(0))  # type: ignore[arg-type]


def test_same_seed_same_batch_for_the_default() -> None:
    first = select_batch(DEFAULT_STRATEGY, warm_view(), 10, rng=rng(5))
    again = select_batch(DEFAULT_STRATEGY, warm_view(), 10, rng=rng(5))
    assert first.positions.tolist() == again.positions.tolist()
    np.testing.assert_array_equal(first.scores, again.scores)


def test_scarce_margin_puts_the_rare_class_boundary_first() -> None:
    # Row 0: torn between the two common classes; row 1: torn between common and rare.
    proba = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.9, 0.1, 0.0], [0.0, 0.1, 0.9]])
    view = warm_view(n=4, proba=proba, label_counts=np.array([40, 40, 2]), n_unseen_classes=0)
    assert select_batch("scarce_margin", view, 1, rng=rng()).positions.tolist() == [1]
    assert select_batch("scarcity", view, 1, rng=rng()).positions.tolist() == [3]
    assert select_batch("margin", view, 2, rng=rng()).positions.tolist() in ([0, 1], [1, 0])


def test_diverse_strategies_skip_near_duplicates() -> None:
    gen = rng(3)
    n_dup, n = 50, 400
    embeddings = unit_rows(gen, n, d=16)
    embeddings[:n_dup] = embeddings[0] + 1e-4 * gen.normal(size=(n_dup, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    proba = np.tile([0.95, 0.05], (n, 1))
    proba[:n_dup] = [0.5, 0.5]  # the duplicates are the most uncertain items
    proba[n_dup:, 0] = 0.55 + 0.4 * gen.random(n - n_dup)
    proba[n_dup:, 1] = 1.0 - proba[n_dup:, 0]
    view = PoolView(embeddings, proba, np.array([10, 10]), 0, None)
    assert np.all(select_batch("margin", view, 50, rng=rng()).positions < n_dup)
    for name in ("margin_diverse", "scarce_margin_diverse"):
        picked = select_batch(name, view, 50, rng=rng()).positions
        assert np.count_nonzero(picked < n_dup) <= 2, name


@pytest.mark.parametrize("name", ["margin_diverse", "scarce_margin_diverse"])
def test_diverse_shortlist_is_shallow_with_many_classes_and_deep_with_two(name: str) -> None:
    """The 300 most uncertain rows are near-duplicates. With 20 classes a batch of 30 is still
    spread over those 300 only (10 rows per pick); with 2 classes the shortlist is 2,400 rows deep
    and distance pulls most picks from further down."""
    k, n = 30, 3000
    for n_classes, is_shallow in ((20, True), (2, False)):
        gen = rng(7)
        proba = gen.dirichlet(np.full(n_classes, 0.3), size=n)
        top = np.argsort(-strategies.scores.margin(proba))[: 10 * k]
        embeddings = unit_rows(gen, n, d=16)
        embeddings[top] = embeddings[top[0]] + 1e-3 * gen.normal(size=(top.size, 16))
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        view = PoolView(
            embeddings=embeddings,
            proba=proba,
            label_counts=np.full(n_classes, 5, dtype=np.intp),  # equal counts: scarce_margin ranks by margin
            n_unseen_classes=0,
            labeled_embeddings=unit_rows(gen, 40, d=16),
        )
        picked = select_batch(name, view, k, rng=rng()).positions
        inside = np.count_nonzero(np.isin(picked, top))
        assert inside == k if is_shallow else inside < k // 2, (name, n_classes, inside)


def novel_cluster_view() -> PoolView:
    """3000 seen items (20 uncertain, the rest confident) near the labeled ones; 30 hidden items
    on the opposite side of the sphere that the proxy confidently calls class 0."""
    gen = rng(4)
    d = 16
    seen = unit_rows(gen, 1, d)[0]
    labeled = seen + 0.05 * gen.normal(size=(30, d))
    pool = np.vstack([seen + 0.05 * gen.normal(size=(3000, d)), -seen + 0.05 * gen.normal(size=(30, d))])
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    labeled /= np.linalg.norm(labeled, axis=1, keepdims=True)
    proba = np.tile([0.97, 0.03], (pool.shape[0], 1))
    proba[:20] = [0.5, 0.5]
    proba[3000:] = [0.99, 0.01]
    return PoolView(pool, proba, np.array([15, 15]), 0, labeled)


def test_default_finds_a_confidently_mispredicted_unseen_cluster() -> None:
    view = novel_cluster_view()
    blind = select_batch(DEFAULT_STRATEGY, view, 10, rng=rng()).positions
    assert not np.any(blind >= 3000)
    found = select_batch(
        DEFAULT_STRATEGY, dataclasses.replace(view, n_unseen_classes=1), 10, rng=rng()
    ).positions
    assert np.any(found >= 3000)


def test_novelty_lifts_the_unseen_cluster_above_the_confident_majority() -> None:
    """scarce_margin is a plain ranking: the 20 uncertain items come first, then, only with unseen
    classes declared, the novel cluster instead of more confident seen items."""
    view = novel_cluster_view()
    blind = select_batch("scarce_margin", view, 30, rng=rng()).positions
    assert np.count_nonzero(blind < 20) == 20 and not np.any(blind >= 3000)
    found = select_batch("scarce_margin", dataclasses.replace(view, n_unseen_classes=1), 30, rng=rng())
    assert np.count_nonzero(found.positions < 20) == 20
    assert np.count_nonzero(found.positions >= 3000) == 10


def test_modal_margin_matches_our_margin() -> None:
    proba = np.array([[0.9, 0.1], [0.52, 0.48], [0.7, 0.3], [0.45, 0.55], [0.99, 0.01], [0.6, 0.4]])
    view = warm_view(n=6, proba=proba, label_counts=np.array([3, 3]), n_unseen_classes=0)
    ours = select_batch("margin", view, 3, rng=rng())
    theirs = select_batch("modal_margin", view, 3, rng=rng())
    assert theirs.positions.tolist() == ours.positions.tolist() == [1, 3, 5]
    np.testing.assert_allclose(theirs.scores, ours.scores)


def test_modal_ranked_batch_picks_the_uncertain_items() -> None:
    gen = rng(6)
    n = 40
    proba = np.tile([0.99, 0.01], (n, 1))
    uncertain = [3, 17, 29]
    proba[uncertain] = [[0.5, 0.5], [0.55, 0.45], [0.6, 0.4]]
    view = warm_view(n=n, proba=proba, label_counts=np.array([3, 3]), n_unseen_classes=0)
    view = dataclasses.replace(view, labeled_embeddings=unit_rows(gen, 200).astype(np.float32))
    got = select_batch("modal_ranked_batch", view, 3, rng=rng())
    assert sorted(got.positions.tolist()) == uncertain
    ours = select_batch("margin", view, 3, rng=rng())
    assert sorted(ours.positions.tolist()) == uncertain


def copies_view(n_groups: int = 10, copies: int = 4, n_other: int = 200, seed: int = 5) -> PoolView:
    """A binary view whose most uncertain rows come in groups of near-copies; the other rows are distinct."""
    gen = rng(seed)
    originals = unit_rows(gen, n_groups, d=16)
    grouped = np.repeat(originals, copies, axis=0) + 1e-3 * gen.normal(size=(n_groups * copies, 16))
    embeddings = np.concatenate([grouped, unit_rows(gen, n_other, d=16)])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    uncertain = np.repeat(0.5 + 0.01 * np.arange(n_groups), copies) + 1e-4 * gen.random(n_groups * copies)
    p_first = np.concatenate([uncertain, 0.7 + 0.25 * gen.random(n_other)])
    proba = np.stack([p_first, 1.0 - p_first], axis=1)
    return PoolView(embeddings, proba, np.array([10, 10]), 0, unit_rows(gen, 5, d=16))


@pytest.mark.parametrize("name", ["margin", "entropy", "least_confidence", "scarce_margin", "margin_diverse",
                                  "scarce_margin_diverse", "random", "cold_start"])
def test_select_distinct_asks_for_one_row_of_each_group_of_near_copies(name: str) -> None:
    view = copies_view()
    plain = select_batch(name, view, 20, rng=rng())
    picked, dropped = strategies.select_distinct(name, view, 20, rng=rng())
    assert len(set(picked.positions.tolist())) == 20 and picked.strategy == plain.strategy
    groups = picked.positions[picked.positions < 40] // 4
    assert len(groups) == len(set(groups.tolist())), "two copies of one text in a batch"
    assert (strategies.repeats(view.embeddings[picked.positions]) < 0).all()
    if name in ("margin", "entropy", "least_confidence", "scarce_margin"):
        # the ranking takes the ten groups whole without the step: half the batch would be copies
        assert np.count_nonzero(strategies.repeats(view.embeddings[plain.positions]) >= 0) >= 10
        assert sorted(set((picked.positions[picked.positions < 40] // 4).tolist())) == list(range(10))
        assert dropped >= 10


def test_select_distinct_keeps_copies_when_too_few_others_are_left() -> None:
    view = copies_view(n_groups=3, copies=4, n_other=2)  # 14 rows, 5 distinct texts
    picked, dropped = strategies.select_distinct("margin", view, 10, rng=rng())
    assert len(set(picked.positions.tolist())) == 10  # a full batch all the same, copies in it
    assert dropped == 0 and (strategies.repeats(view.embeddings[picked.positions]) >= 0).any()
    unchanged, none = strategies.select_distinct("margin", warm_view(), 5, rng=rng())
    assert none == 0
    np.testing.assert_array_equal(unchanged.positions, select_batch("margin", warm_view(), 5, rng=rng()).positions)
    with pytest.raises(ValueError, match="min_cosine"):
        strategies.select_distinct("margin", warm_view(), 5, rng=rng(), min_cosine=0.0)
