"""Invariants every scorer, selector and registry entry must satisfy (STYLE.md, Testing)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from strategies import REGISTRY, PoolView, is_cold_start, prefilter, prefilter_scores, scores, select_batch
from strategies.select import k_center_greedy, top_k

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=20, deadline=None)

# Every scorer as (proba, counts) -> scores, and whether it measures uncertainty.
SCORERS: dict[str, tuple[Callable[[FloatArray, IntArray], FloatArray], bool]] = {
    "least_confidence": (lambda p, c: scores.least_confidence(p), True),
    "margin": (lambda p, c: scores.margin(p), True),
    "entropy": (lambda p, c: scores.entropy(p), True),
    "normalized_entropy": (lambda p, c: scores.normalized_entropy(p), True),
    "scarce_margin": (scores.scarce_margin, True),
    "scarce_explore": (lambda p, c: scores.scarce_explore(p, c, n_unseen_classes=2), True),
    "class_scarcity": (scores.class_scarcity, False),
}


def _prefilter_scorer(name: str, unseen: int, labeled: bool) -> Callable[[FloatArray, IntArray], FloatArray]:
    def score(proba: FloatArray, counts: IntArray) -> FloatArray:
        return prefilter_scores(name, proba, counts, n_unseen_classes=unseen, has_labeled_embeddings=labeled)

    return score


# The pre-filter score of every strategy that has one (strategies.streaming), with and without
# labeled embeddings and unseen classes: a caller streams the pool through these.
for _name in sorted(set(REGISTRY) - {"random", "cold_start"}):
    for _unseen, _labeled in ((0, True), (2, False)):
        SCORERS[f"prefilter:{_name}:{_unseen}:{_labeled}"] = (
            _prefilter_scorer(_name, _unseen, _labeled),
            _name != "scarcity",
        )
UNCERTAINTY = [name for name, (_, is_uncertainty) in SCORERS.items() if is_uncertainty]


def softmax(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba: FloatArray = shifted / shifted.sum(axis=1, keepdims=True)
    return proba


@st.composite
def proba_and_counts(draw: st.DrawFn, max_n: int = 25) -> tuple[FloatArray, IntArray]:
    n = draw(st.integers(1, max_n))
    n_classes = draw(st.integers(2, 6))
    logits = draw(hnp.arrays(np.float64, (n, n_classes), elements=st.floats(-8, 8)))
    counts = draw(hnp.arrays(np.intp, (n_classes,), elements=st.integers(0, 50)))
    return softmax(logits), counts


@st.composite
def views(draw: st.DrawFn) -> tuple[PoolView, int]:
    proba, counts = draw(proba_and_counts(max_n=30))
    n = proba.shape[0]
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    gen = np.random.default_rng(seed)
    embeddings = gen.normal(size=(n, d)).astype(draw(st.sampled_from([np.float32, np.float64])))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12
    n_labeled = draw(st.integers(0, 10))
    labeled = gen.normal(size=(n_labeled, d)) if n_labeled else None
    cold = draw(st.booleans()) and draw(st.booleans())
    n_unseen = draw(st.integers(0, 3))
    n_prototypes = draw(st.integers(0, n_unseen))
    prototypes = gen.normal(size=(n_prototypes, d)) if n_prototypes else None
    if prototypes is not None:
        prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True) + 1e-12
    view = PoolView(
        embeddings=embeddings,
        proba=None if cold else proba,
        label_counts=np.zeros(0, dtype=np.intp) if cold else counts,
        n_unseen_classes=n_unseen,
        labeled_embeddings=labeled,
        unseen_prototypes=prototypes,
    )
    return view, draw(st.integers(1, n))


@pytest.mark.parametrize("name", sorted(SCORERS))
@FAST
@given(data=proba_and_counts(), seed=st.integers(0, 2**32 - 1))
def test_scorer_shape_finiteness_and_row_equivariance(
    name: str, data: tuple[FloatArray, IntArray], seed: int
) -> None:
    proba, counts = data
    score = SCORERS[name][0]
    got = score(proba, counts)
    assert got.shape == (proba.shape[0],) and got.dtype == np.float64
    assert np.isfinite(got).all()
    perm = np.random.default_rng(seed).permutation(proba.shape[0])
    np.testing.assert_allclose(score(proba[perm], counts), got[perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCORERS))
@FAST
@given(data=proba_and_counts(), seed=st.integers(0, 2**32 - 1))
def test_scorer_is_invariant_to_class_order(name: str, data: tuple[FloatArray, IntArray], seed: int) -> None:
    proba, counts = data
    score = SCORERS[name][0]
    perm = np.random.default_rng(seed).permutation(proba.shape[1])
    np.testing.assert_allclose(
        score(proba[:, perm], counts[perm]), score(proba, counts), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("name", UNCERTAINTY)
@FAST
@given(
    n_classes=st.integers(2, 8),
    hot=st.integers(0, 7),
    counts=hnp.arrays(np.intp, (8,), elements=st.integers(0, 50)),
)
def test_uniform_row_beats_one_hot_row(name: str, n_classes: int, hot: int, counts: IntArray) -> None:
    proba = np.vstack([np.full(n_classes, 1.0 / n_classes), np.eye(n_classes)[hot % n_classes]])
    got = SCORERS[name][0](proba, counts[:n_classes])
    assert got[0] > got[1]


@FAST
@given(
    values=hnp.arrays(
        np.float64, st.integers(1, 40), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(-5, 5)
    ),
    k_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_k_returns_k_distinct_positions_that_dominate_the_rest(
    values: FloatArray, k_fraction: float, seed: int
) -> None:
    n = values.shape[0]
    k = max(1, round(k_fraction * n))
    got = top_k(values, k, rng=np.random.default_rng(seed))
    assert got.shape == (k,) and len(set(got.tolist())) == k
    rest = np.setdiff1d(np.arange(n), got)
    if rest.size:
        assert values[got].min() >= values[rest].max()
    assert np.all(np.diff(values[got]) <= 0)
    assert got.tolist() == top_k(values, k, rng=np.random.default_rng(seed)).tolist()
    with pytest.raises(ValueError):
        top_k(values, n + 1, rng=np.random.default_rng(seed))


@FAST
@given(
    points=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 30), st.integers(1, 4)), elements=st.floats(-3, 3)
    ),
    k_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_k_center_greedy_returns_k_distinct_positions_reproducibly(
    points: FloatArray, k_fraction: float, seed: int
) -> None:
    k = max(1, round(k_fraction * points.shape[0]))
    got = k_center_greedy(points, k, rng=np.random.default_rng(seed))
    assert got.shape == (k,) and len(set(got.tolist())) == k
    assert got.tolist() == k_center_greedy(points, k, rng=np.random.default_rng(seed)).tolist()


def check_strategy(name: str, view: PoolView, k: int, seed: int) -> None:
    n = view.embeddings.shape[0]
    got = select_batch(name, view, k, rng=np.random.default_rng(seed))
    assert got.positions.shape == (k,) and got.positions.dtype == np.intp
    assert len(set(got.positions.tolist())) == k
    assert got.positions.min() >= 0 and got.positions.max() < n
    assert got.scores.shape == (k,) and got.scores.dtype == np.float64 and np.isfinite(got.scores).all()
    again = select_batch(name, view, k, rng=np.random.default_rng(seed))
    assert again.positions.tolist() == got.positions.tolist() and again.strategy == got.strategy
    with pytest.raises(ValueError):
        select_batch(name, view, n + 1, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"modal_ranked_batch"}))
@SLOW
@given(case=views(), seed=st.integers(0, 2**32 - 1))
def test_every_strategy_returns_k_distinct_positions_reproducibly(
    name: str, case: tuple[PoolView, int], seed: int
) -> None:
    check_strategy(name, *case, seed)


@settings(max_examples=8, deadline=None)  # each pick runs sklearn's threaded distance kernel
@given(case=views(), seed=st.integers(0, 2**32 - 1))
def test_modal_ranked_batch_returns_k_distinct_positions_reproducibly(
    case: tuple[PoolView, int], seed: int
) -> None:
    check_strategy("modal_ranked_batch", *case, seed)


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"modal_ranked_batch"}))
@SLOW
@given(case=views(), seed=st.integers(0, 2**32 - 1))
def test_every_strategy_runs_on_the_rows_its_prefilter_keeps(
    name: str, case: tuple[PoolView, int], seed: int
) -> None:
    """What a caller streaming the pool does: keep top rows + a uniform sample, select on those alone."""
    view, k = case
    n = view.embeddings.shape[0]
    rng = np.random.default_rng(seed)
    cold = is_cold_start(view)
    has_labeled = view.labeled_embeddings is not None and view.labeled_embeddings.shape[0] > 0
    prototypes = view.unseen_prototypes
    plan = prefilter(name, k, n, label_counts=None if view.proba is None else view.label_counts,
                     n_unseen_classes=view.n_unseen_classes, has_labeled_embeddings=has_labeled,
                     n_prototypes=0 if prototypes is None else prototypes.shape[0])
    assert 0 <= plan.n_top <= n and 0 <= plan.n_sample <= n and 0 <= plan.n_named <= n
    rows = rng.choice(n, size=plan.n_sample, replace=False)
    if plan.n_named:
        assert prototypes is not None
        similarity = view.embeddings @ prototypes.T
        rows = np.union1d(rows, np.argsort(-similarity, axis=0, kind="stable")[: plan.n_named].ravel())
    if plan.n_top:
        assert view.proba is not None and not cold
        values = prefilter_scores(name, view.proba, view.label_counts, n_unseen_classes=view.n_unseen_classes,
                                  has_labeled_embeddings=has_labeled)
        rows = np.union1d(rows, top_k(values, plan.n_top, rng=rng))
    assert len(np.unique(rows)) >= k
    sub = PoolView(
        embeddings=view.embeddings[rows], proba=None if view.proba is None else view.proba[rows],
        label_counts=view.label_counts, n_unseen_classes=view.n_unseen_classes,
        labeled_embeddings=view.labeled_embeddings, unseen_prototypes=prototypes,
    )
    check_strategy(name, sub, k, seed)
