"""Learning-curve figures for simulated annotation: pure functions over arrays.

A *curve* is two aligned arrays: ``n_labels`` (r,), strictly increasing label
counts at which a model was trained and evaluated, and ``values`` (r,), the score
measured there (macro-F1, accuracy or a recall), each in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "RARE_QUARTILE_MIN_CLASSES",
    "RARE_SHARE",
    "aulc",
    "first_reaching",
    "macro_f1_and_recall",
    "rare_classes",
    "value_at",
]

FloatArray = npt.NDArray[np.float64]
RARE_SHARE = 0.05  # with few classes, a class under this share of the pool is rare
RARE_QUARTILE_MIN_CLASSES = 8  # from this many classes on, the least frequent quarter is rare


def _check_curve(n_labels: Sequence[float] | FloatArray, values: Sequence[float] | FloatArray) -> None:
    labels = np.asarray(n_labels, dtype=np.float64)
    scores = np.asarray(values, dtype=np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape or labels.shape[0] == 0:
        raise ValueError(f"a curve needs two non-empty 1-D arrays of one length, got {labels.shape}, {scores.shape}")
    if labels.shape[0] > 1 and not (np.diff(labels) > 0).all():
        raise ValueError("n_labels must be strictly increasing")


def first_reaching(
    n_labels: Sequence[float] | FloatArray, values: Sequence[float] | FloatArray, target: float
) -> int | None:
    """Return the label count of the first point whose value is ``>= target``, or None.

    The first crossing: a curve that reaches the target and later falls below it again
    still counts as reaching it there (``labels to 95 %`` in the simulate summary).
    No interpolation: a simulation only knows the model at the label counts it
    actually trained at, so the answer is always one of ``n_labels``.

    Raises:
        ValueError: a malformed curve.
    """
    _check_curve(n_labels, values)
    hits = np.flatnonzero(np.asarray(values, dtype=np.float64) >= target)
    return int(np.asarray(n_labels)[hits[0]]) if hits.size else None


def aulc(n_labels: Sequence[float] | FloatArray, values: Sequence[float] | FloatArray) -> float:
    """Return the normalised area under a learning curve, in ``[0, 1]``.

    Trapezoid rule over the label axis, divided by the label range
    ``n_labels[-1] - n_labels[0]``: the curve's average value between the first
    and the last evaluation. A single-point curve returns its only value. Compare
    AULCs only between curves evaluated at the same label counts.

    Raises:
        ValueError: a malformed curve.
    """
    _check_curve(n_labels, values)
    labels = np.asarray(n_labels, dtype=np.float64)
    scores = np.asarray(values, dtype=np.float64)
    if labels.shape[0] == 1:
        return float(scores[0])
    area = float(np.sum((scores[1:] + scores[:-1]) * np.diff(labels)) / 2.0)
    return area / float(labels[-1] - labels[0])


def value_at(
    n_labels: Sequence[float] | FloatArray, values: Sequence[float] | FloatArray, budget: float
) -> float | None:
    """Return the value at the last point with at most ``budget`` labels, or None if there is none.

    Raises:
        ValueError: a malformed curve.
    """
    _check_curve(n_labels, values)
    within = np.flatnonzero(np.asarray(n_labels, dtype=np.float64) <= budget)
    return float(np.asarray(values, dtype=np.float64)[within[-1]]) if within.size else None


def rare_classes(pool_counts: Mapping[str, int]) -> tuple[str, ...]:
    """Return the classes that count as rare in the pool, sorted by name.

    With ``RARE_QUARTILE_MIN_CLASSES`` or more classes: the ``ceil(C / 4)`` least
    frequent classes (ties broken by name), so a 77-class set has 20 rare classes
    whatever its balance. With fewer classes a quartile is one or two classes and
    says nothing, so a class is rare when its share of the pool is below
    ``RARE_SHARE`` (5 %); a balanced 4-class set then has no rare class.

    Args:
        pool_counts: class name -> number of pool items with that label (>= 0).
    """
    if not pool_counts:
        return ()
    total = sum(pool_counts.values())
    if len(pool_counts) >= RARE_QUARTILE_MIN_CLASSES:
        ranked = sorted(pool_counts, key=lambda name: (pool_counts[name], name))
        return tuple(sorted(ranked[: -(-len(ranked) // 4)]))
    return tuple(sorted(name for name, count in pool_counts.items() if count < RARE_SHARE * total))


def macro_f1_and_recall(
    truth: npt.NDArray[np.object_], predicted: npt.NDArray[np.object_], classes: Sequence[str]
) -> tuple[float, float, FloatArray]:
    """Return accuracy, macro-F1 and per-class recall of ``predicted`` against ``truth``.

    Macro-F1 averages over ``classes`` (every class of the evaluation set,
    including classes the model never predicts: their F1 is 0). A class with no
    true item has recall 0 here; pass only classes present in ``truth``.

    Args:
        truth: (n,) gold class names, n >= 1.
        predicted: (n,) predicted class names.
        classes: the C class names to average over.

    Returns:
        ``(accuracy, macro_f1, recall)`` with recall (C,) in ``classes`` order.
    """
    hits = truth == predicted
    accuracy = float(np.mean(hits))
    f1 = np.zeros(len(classes))
    recall = np.zeros(len(classes))
    for column, name in enumerate(classes):
        is_true = truth == name
        is_pred = predicted == name
        true_positive = float(np.count_nonzero(is_true & is_pred))
        denominator = float(np.count_nonzero(is_true) + np.count_nonzero(is_pred))
        f1[column] = 2.0 * true_positive / denominator if denominator else 0.0
        n_true = np.count_nonzero(is_true)
        recall[column] = true_positive / n_true if n_true else 0.0
    return accuracy, float(f1.mean()) if len(classes) else 0.0, recall
