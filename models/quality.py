"""How good is the proxy classifier? Stratified cross-validation on the labels we have."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models._calibration import stratified_folds
from models.classifier import ProxyClassifier

__all__ = ["QualityEstimate", "estimate_quality"]

_MIN_TEST_LABELS = 10


@dataclass(frozen=True, slots=True)
class QualityEstimate:
    """Cross-validated quality of the proxy classifier.

    Attributes:
        macro_f1: mean F1 over the classes with 2+ labels, in ``[0, 1]``; ``None`` with too few labels.
        accuracy: share of held-out labels predicted right, in ``[0, 1]``; ``None`` likewise.
        n_labels: all labels given, including classes with one label.
        n_folds: folds actually run (0 when no estimate was made).
        per_class_f1: F1 per class with 2+ labels; empty with too few labels.
        method: e.g. ``"5-fold stratified CV on 120 labels"``, or why there is no estimate.
    """

    macro_f1: float | None
    accuracy: float | None
    n_labels: int
    n_folds: int
    per_class_f1: dict[str, float]
    method: str


def estimate_quality(
    X: npt.ArrayLike,
    y: Sequence[str] | npt.ArrayLike,
    *,
    make_classifier: Callable[[], ProxyClassifier],
    n_folds: int = 5,
    random_state: int = 0,
) -> QualityEstimate:
    """Estimate macro-F1 and accuracy by stratified k-fold CV on labeled data only.

    Classes with a single label are always in the training folds (they count in ``fit``) but
    never tested, and ``method`` says how many there were. Temperature scaling never changes the
    arg-max, so calibration is switched off in the CV fits to save time.

    Args:
        X: ``(n, d)`` embeddings of the labeled items.
        y: ``(n,)`` their class names.
        make_classifier: builds a fresh, unfitted classifier for each fold.
        n_folds: folds, >= 2.
        random_state: seeds the fold assignment.

    Returns:
        The estimate; ``None`` scores, ``n_folds == 0`` and a reason in ``method`` when fewer than
        2 classes have 2+ labels or fewer than 10 labels can be held out.

    Raises:
        ValueError: ``n_folds`` < 2 or ``X``/``y`` shapes disagree.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    features = np.asarray(X, dtype=np.float32)
    labels = np.asarray(y)
    labels = labels.astype(str) if labels.dtype == object else labels
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"X must be (n, d) and y (n,), got {features.shape} and {labels.shape}")
    classes, targets = np.unique(labels, return_inverse=True)
    folds = stratified_folds(targets, n_folds, np.random.default_rng(random_state))
    tested = folds >= 0
    testable_classes = np.unique(targets[tested])
    n_single = len(classes) - len(testable_classes)
    if len(testable_classes) < 2 or tested.sum() < max(_MIN_TEST_LABELS, n_folds):
        return QualityEstimate(
            macro_f1=None,
            accuracy=None,
            n_labels=len(labels),
            n_folds=0,
            per_class_f1={},
            method=(
                f"too few labels: {int(tested.sum())} labels in {len(testable_classes)} classes "
                f"with 2+ labels; need 2+ such classes and {max(_MIN_TEST_LABELS, n_folds)}+ labels in them"
            ),
        )
    predicted = labels.copy()
    for fold in range(n_folds):
        test = folds == fold
        classifier = make_classifier()
        classifier.set_params(calibrate=False)
        classifier.fit(features[~test], labels[~test])
        predicted[test] = classifier.predict(features[test])
    per_class = _f1_per_class(labels[tested], predicted[tested], classes[testable_classes])
    method = f"{n_folds}-fold stratified CV on {int(tested.sum())} labels"
    if n_single:
        method += f"; {n_single} {'class' if n_single == 1 else 'classes'} with 1 label used for training only"
    return QualityEstimate(
        macro_f1=float(np.mean(list(per_class.values()))),
        accuracy=float(np.mean(labels[tested] == predicted[tested])),
        n_labels=len(labels),
        n_folds=n_folds,
        per_class_f1=per_class,
        method=method,
    )


def _f1_per_class(
    truth: npt.NDArray[np.generic], predicted: npt.NDArray[np.generic], classes: npt.NDArray[np.generic]
) -> dict[str, float]:
    """F1 of each class in ``classes``; 0 when the class is never predicted nor right."""
    scores: dict[str, float] = {}
    for cls in classes:
        true_positive = int(np.sum((truth == cls) & (predicted == cls)))
        denominator = int(np.sum(truth == cls)) + int(np.sum(predicted == cls))
        scores[str(cls)] = 2 * true_positive / denominator if denominator else 0.0
    return scores
