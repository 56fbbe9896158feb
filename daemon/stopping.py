"""A label-free stopping rule: stop when successive models stop changing their minds.

After each retrain, the new model and the previous one both predict the items that
are still unlabeled; Cohen's kappa between the two prediction vectors measures how
much the last batch of labels changed the model. When kappa stays at or above a
threshold for ``window`` consecutive retrains, further labels are unlikely to change
the predictions, so the loop may stop (the "stabilizing predictions" rule of
Bloodgood & Vijay-Shanker, 2009, with its defaults 0.99 and 3).

Pure functions: no I/O, no model, no randomness. The simulator and the daemon both
call them with plain arrays of predicted class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["StoppingRule", "first_stop", "prediction_kappa"]


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


def first_stop(kappas: Sequence[float | None], rule: StoppingRule | None = None) -> int | None:
    """Return the first position at which ``rule`` says stop, or None if it never does.

    Args:
        kappas: one value per retrain, in order; ``kappas[t]`` compares model ``t``
            with model ``t - 1``. ``None`` (no previous model to compare with, e.g.
            the first retrain) breaks a run of agreement.
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
