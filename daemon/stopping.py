"""A label-free stopping rule: stop when successive models stop changing their minds.

After each retrain, the new model and an earlier one both predict the items that
are still unlabeled; Cohen's kappa between the two prediction vectors measures how
much the labels in between changed the model. When kappa stays at or above a
threshold for ``window`` consecutive retrains, further labels are unlikely to change
the predictions, so the loop may stop (the "stabilizing predictions" rule of
Bloodgood & Vijay-Shanker, 2009, with its defaults 0.99 and 3). The earlier model is
the newest one with at least :func:`reference_gap` fewer labels: at least a batch, and
at least :data:`MIN_GROWTH` of the labels. The daemon retrains every few labels, and
models 10 labels apart agreed at 0.99 from a few hundred labels on: a soak's queue paused
at 744 labels and macro-F1 0.67, where labeling on reached 0.94 (QA).

Pure functions: no I/O, no model, no randomness. The simulator and the daemon both
call them with plain arrays of predicted class names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_GROWTH", "StoppingRule", "first_stop", "prediction_kappa", "reference_gap", "reference_of"]

MIN_GROWTH = 0.1  # a model is compared with one trained on at most 1 / (1 + 10%) of its labels


@dataclass(frozen=True, slots=True)
class StoppingRule:
    """Stop once ``window`` consecutive kappas are all ``>= threshold``.

    Attributes:
        threshold: in ``(0, 1]``; agreement needed between successive models.
        window: >= 1, consecutive retrains that must all agree.
    """

    threshold: float = 0.99
    window: int = 3

    def check(self) -> None:
        """Raise ``ValueError`` when a field is out of range."""
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"window must be an int >= 1, got {self.window}")


def prediction_kappa(previous: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Return Cohen's kappa between two models' predictions on the same items.

    ``kappa = (p_o - p_e) / (1 - p_e)`` where ``p_o`` is the share of items on which
    the two agree and ``p_e`` the agreement expected by chance from each model's
    class frequencies. When ``p_e == 1`` (both predict one and the same class for
    every item) kappa is undefined and this returns 0.0: a model that tells no
    classes apart is no evidence of stability, so it never triggers a stop.

    Args:
        previous: (n,) predicted class names (or ids) of the earlier model.
        current: (n,) predictions of the later model for the same n items, n >= 1.

    Returns:
        kappa in ``[-1, 1]``.

    Raises:
        ValueError: the two arrays differ in length, are not 1-D, or are empty.
    """
    before = np.asarray(previous)
    after = np.asarray(current)
    if before.ndim != 1 or after.shape != before.shape:
        raise ValueError(f"predictions must be two 1-D arrays of one length, got {before.shape}, {after.shape}")
    n = before.shape[0]
    if n == 0:
        raise ValueError("predictions are empty: nothing to compare")
    classes, codes = np.unique(np.concatenate([before, after]), return_inverse=True)
    first, second = codes[:n], codes[n:]
    observed = float(np.mean(first == second))
    share_first = np.bincount(first, minlength=classes.shape[0]) / n
    share_second = np.bincount(second, minlength=classes.shape[0]) / n
    expected = float(share_first @ share_second)
    if expected >= 1.0:
        return 0.0
    return (observed - expected) / (1.0 - expected)


def reference_gap(n_labels: int, batch_size: int) -> int:
    """Labels between a model with ``n_labels`` and the earlier model it is compared with: at least one
    batch, and at least ``MIN_GROWTH`` of ``n_labels``, rounded up; never below 1."""
    return max(1, batch_size, math.ceil(MIN_GROWTH * n_labels))


def reference_of(earlier: Sequence[int], n_labels: int, gap: int) -> int | None:
    """Position in ``earlier`` (earlier models' label counts, oldest first) of the newest at most ``n_labels - gap``.

    None when no earlier model is that far back (the first retrains: no kappa yet).
    """
    found = None
    for position, count in enumerate(earlier):
        if count <= n_labels - gap:
            found = position
    return found


def first_stop(kappas: Sequence[float | None], rule: StoppingRule | None = None) -> int | None:
    """Return the first position at which ``rule`` says stop, or None if it never does.

    Args:
        kappas: one value per retrain, in order; ``kappas[t]`` compares model ``t``
            with its earlier model (:func:`reference_of`). ``None`` (no earlier model to
            compare with, e.g. the first retrains) breaks a run of agreement.
        rule: threshold and window; the defaults when None.

    Returns:
        The smallest ``t`` such that ``kappas[t - window + 1 .. t]`` are all
        ``>= threshold``, or None.

    Raises:
        ValueError: the rule is out of range.
    """
    rule = rule or StoppingRule()
    rule.check()
    run = 0
    for position, kappa in enumerate(kappas):
        run = run + 1 if kappa is not None and kappa >= rule.threshold else 0
        if run >= rule.window:
            return position
    return None
