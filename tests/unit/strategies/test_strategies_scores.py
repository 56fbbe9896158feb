"""Hand-computed answers for the probability-based scorers."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from strategies import scores

TWO = np.array([[0.5, 0.5], [1.0, 0.0], [0.8, 0.2]])


def test_margin_by_hand() -> None:
    np.testing.assert_allclose(scores.margin(TWO), [1.0, 0.0, 0.4])
    np.testing.assert_allclose(scores.margin(np.array([[0.6, 0.3, 0.1]])), [0.7])


@pytest.mark.parametrize(("n", "n_classes", "dtype"), [(3000, 2, np.float32), (4096, 77, np.float32),
                                                      (9000, 40, np.float64), (1500, 3, np.float64),
                                                      (100, 9, np.float64), (2000, 300, np.float64)])
@pytest.mark.parametrize("order", ["C", "F"])  # F: a scoring pass's column-major chunks, scanned in place
def test_margin_on_large_pools_equals_the_partition_answer_exactly(
    n: int, n_classes: int, dtype: Any, order: str
) -> None:
    """The blocked column scan (1,024+ rows, <= 100 classes) gives partition's values bit for bit, ties included."""
    proba = np.random.default_rng(n).dirichlet(np.full(n_classes, 0.3), size=n).astype(dtype)
    proba[:7] = 0.0
    proba[:7, [0, n_classes - 1]] = 0.5  # a tied top: margin 1
    proba = np.asfortranarray(proba) if order == "F" else proba
    top2 = np.partition(proba, -2, axis=1)[:, -2:].astype(np.float64)
    expected = 1.0 - (top2[:, 1] - top2[:, 0])
    got = scores.margin(proba)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[:7], 1.0)


def test_least_confidence_by_hand() -> None:
    np.testing.assert_allclose(scores.least_confidence(TWO), [0.5, 0.0, 0.2])


def test_entropy_by_hand() -> None:
    proba = np.array([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(scores.entropy(proba), [np.log(4), 0.0, np.log(2)], atol=1e-9)
    np.testing.assert_allclose(scores.normalized_entropy(proba), [1.0, 0.0, 0.5], atol=1e-9)


def test_rarity_rescales_rarest_to_one() -> None:
    np.testing.assert_allclose(scores.rarity(np.array([9, 1])), [0.2, 1.0])
    np.testing.assert_allclose(scores.rarity(np.array([3, 3, 3])), [1.0, 1.0, 1.0])


def test_class_scarcity_ranks_the_rare_class_first() -> None:
    proba = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    got = scores.class_scarcity(proba, np.array([9, 1]))
    np.testing.assert_allclose(got, [0.2, 1.0, 0.6])
    assert int(np.argmax(got)) == 1


def test_scarce_margin_prefers_the_rare_boundary() -> None:
    # Equally uncertain: row 0 sits between two common classes, row 1 between a common and the rare one.
    proba = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    counts = np.array([50, 50, 1])
    got = scores.scarce_margin(proba, counts, scarcity_power=1.0)
    r_common = 2.0 / 51.0
    np.testing.assert_allclose(got, [r_common, 0.5 * (r_common + 1.0), 0.0])
    np.testing.assert_allclose(scores.scarce_margin(proba, counts, scarcity_power=0.0), scores.margin(proba))


def test_scarce_margin_equals_margin_when_classes_are_balanced() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    np.testing.assert_allclose(scores.scarce_margin(proba, np.array([5, 5, 5])), scores.margin(proba))


def test_float32_input_gives_float64_output() -> None:
    proba = TWO.astype(np.float32)
    for fn in (scores.least_confidence, scores.margin, scores.entropy):
        assert fn(proba).dtype == np.float64
    assert scores.class_scarcity(proba, np.array([1, 2])).dtype == np.float64


@pytest.mark.parametrize(
    "proba",
    [
        np.array([0.5, 0.5]),
        np.array([[1.0], [1.0]]),
        np.array([[np.nan, 1.0]]),
        np.array([[0.7, 0.7]]),
        np.array([[1.5, -0.5]]),
        np.array([[1, 0]]),
    ],
    ids=["1d", "one-class", "nan", "not-a-distribution", "out-of-range", "int-dtype"],
)
def test_malformed_proba_raises_value_error(proba: npt.NDArray[np.float64]) -> None:
    with pytest.raises(ValueError):
        scores.margin(proba)


@pytest.mark.parametrize(
    ("counts", "smoothing"),
    [
        (np.array([1, 2, 3]), 1.0),
        (np.array([-1, 2]), 1.0),
        (np.array([1.0, 2.0]), 1.0),
        (np.array([1, 2]), 0.0),
    ],
    ids=["wrong-length", "negative", "float", "zero-smoothing"],
)
def test_bad_counts_raise_value_error(counts: npt.NDArray[Any], smoothing: float) -> None:
    with pytest.raises(ValueError):
        scores.class_scarcity(TWO, counts, smoothing=smoothing)


def test_negative_scarcity_power_raises() -> None:
    with pytest.raises(ValueError):
        scores.scarce_margin(TWO, np.array([1, 1]), scarcity_power=-1.0)
