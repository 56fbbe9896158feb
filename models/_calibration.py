"""Stratified fold assignment and temperature scaling, shared by the classifier and the quality estimate."""

from __future__ import annotations

import numpy as np

from models._types import FloatArray, IntArray

__all__ = ["fit_temperature", "nll", "stratified_folds"]

_LOG_BETA_RANGE = (-5.0, 3.0)  # inverse temperature in [e^-5, e^3]: T in [0.05, 148]
_GOLDEN = (5**0.5 - 1) / 2


def stratified_folds(targets: IntArray, n_folds: int, rng: np.random.Generator) -> IntArray:
    """Assign each sample a fold in ``[0, n_folds)``, class by class, so folds are stratified.

    Samples of classes with fewer than 2 members get -1: they can be trained on but never
    tested (a fold without them in training could not predict their class).

    Args:
        targets: ``(n,)`` class positions.
        n_folds: >= 2.
        rng: the only source of randomness.

    Returns:
        ``(n,)`` fold ids, -1 for samples of singleton classes. Fold sizes differ by at most one
        among the samples that have a fold.
    """
    folds: IntArray = np.full(len(targets), -1, dtype=np.intp)
    next_fold = int(rng.integers(n_folds))
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        if len(members) < 2:
            continue
        folds[rng.permutation(members)] = (next_fold + np.arange(len(members))) % n_folds
        next_fold = (next_fold + len(members)) % n_folds
    return folds


def nll(logits: FloatArray, targets: IntArray) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``; ``logits`` is ``(n, C)``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(targets)), targets]))


def fit_temperature(logits: FloatArray, targets: IntArray) -> float:
    """Return the temperature ``T`` minimising the NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, so a golden-section search on ``log(1 / T)`` finds the
    optimum without a gradient, deterministically, to ~1e-6 relative precision.

    Args:
        logits: ``(n, C)`` held-out (out-of-fold) logits.
        targets: ``(n,)`` their true class positions.

    Returns:
        ``T`` in ``[0.05, 148]``; > 1 softens over-confident probabilities.
    """
    low, high = _LOG_BETA_RANGE
    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    loss_low, loss_high = nll(logits * np.exp(inner_low), targets), nll(logits * np.exp(inner_high), targets)
    for _ in range(40):
        if loss_low <= loss_high:
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - _GOLDEN * (high - low)
            loss_low = nll(logits * np.exp(inner_low), targets)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + _GOLDEN * (high - low)
            loss_high = nll(logits * np.exp(inner_high), targets)
    return float(np.exp(-(low + high) / 2))
