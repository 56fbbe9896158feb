"""estimate_quality: stratified CV on labeled data, honest about too few labels and singleton classes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from models._calibration import stratified_folds
from models.classifier import ProxyClassifier
from models.quality import QualityEstimate, estimate_quality


def easy(n_per_class: int, classes: int = 4, seed: int = 0) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.str_]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, 12)) * 4
    features = np.vstack([c + 0.5 * rng.normal(size=(n_per_class, 12)) for c in centers])
    return features, np.repeat([f"c{i}" for i in range(classes)], n_per_class)


def make() -> ProxyClassifier:
    return ProxyClassifier(device="cpu")


def test_easy_data_scores_high() -> None:
    features, labels = easy(15)
    estimate = estimate_quality(features, labels, make_classifier=make, n_folds=5)
    assert isinstance(estimate, QualityEstimate)
    assert estimate.macro_f1 is not None and estimate.macro_f1 > 0.9
    assert estimate.accuracy is not None and estimate.accuracy > 0.9
    assert estimate.n_labels == 60 and estimate.n_folds == 5
    assert set(estimate.per_class_f1) == {"c0", "c1", "c2", "c3"}
    assert estimate.method == "5-fold stratified CV on 60 labels"


def test_too_few_labels_gives_none_and_says_why() -> None:
    features, labels = easy(2, classes=3)
    estimate = estimate_quality(features, labels, make_classifier=make)
    assert estimate.macro_f1 is None and estimate.accuracy is None
    assert estimate.n_folds == 0 and estimate.per_class_f1 == {}
    assert estimate.n_labels == 6
    assert estimate.method.startswith("too few labels")


def test_a_single_labeled_class_gives_none() -> None:
    features, labels = easy(1, classes=30)
    estimate = estimate_quality(features, labels, make_classifier=make)
    assert estimate.macro_f1 is None
    assert "0 labels" in estimate.method


def test_a_class_with_one_label_trains_but_is_not_scored() -> None:
    features, labels = easy(10, classes=3)
    features = np.vstack([features, easy(1, classes=1, seed=9)[0]])
    labels = np.append(labels, "lonely")
    estimate = estimate_quality(features, labels, make_classifier=make, n_folds=3)
    assert estimate.macro_f1 is not None
    assert "lonely" not in estimate.per_class_f1
    assert "1 class with 1 label used for training only" in estimate.method
    assert estimate.n_labels == 31


def test_one_fresh_classifier_per_fold_without_calibration() -> None:
    made: list[ProxyClassifier] = []

    def counting() -> ProxyClassifier:
        made.append(ProxyClassifier(device="cpu"))
        return made[-1]

    features, labels = easy(10)
    estimate_quality(features, labels, make_classifier=counting, n_folds=4)
    assert len(made) == 4
    assert all(not m.calibrate and hasattr(m, "classes_") for m in made)


def test_same_random_state_same_estimate() -> None:
    features, labels = easy(8, seed=3)
    features = features + np.random.default_rng(4).normal(scale=3.0, size=features.shape)
    first = estimate_quality(features, labels, make_classifier=make, random_state=5)
    assert first == estimate_quality(features, labels, make_classifier=make, random_state=5)


def test_bad_arguments() -> None:
    features, labels = easy(5)
    with pytest.raises(ValueError, match="n_folds"):
        estimate_quality(features, labels, make_classifier=make, n_folds=1)
    with pytest.raises(ValueError, match=r"must be \(n, d\)"):
        estimate_quality(features, labels[:-1], make_classifier=make)


def test_stratified_folds_balance_classes_and_skip_singletons() -> None:
    targets = np.array([0] * 10 + [1] * 7 + [2])
    folds = stratified_folds(targets, 3, np.random.default_rng(0))
    assert folds[-1] == -1
    for cls in (0, 1):
        counts = np.bincount(folds[targets == cls], minlength=3)
        assert counts.max() - counts.min() <= 1
    sizes = np.bincount(folds[folds >= 0])
    assert sizes.max() - sizes.min() <= 1
