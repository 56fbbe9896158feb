"""The arithmetic of the coarse pre-filter of :func:`daemon.scoring.shortlist`: how deep, and when it is sure."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "COARSE_MIN_ROWS",
    "COARSE_MIN_SPEEDUP",
    "INTERCHANGEABLE",
    "coarse_top_size",
    "left_out_bound",
    "rules_out_the_rest",
]

COARSE_MIN_ROWS = 65_536  # below this a float32 pass takes < 50 ms: a coarse one would save nothing
COARSE_MIN_SPEEDUP = 2.0  # "auto" uses a bfloat16 pre-filter only where it runs this much faster
COARSE_DEPTH = 2  # the coarse pass keeps COARSE_DEPTH * n_top + COARSE_EXTRA rows for re-scoring; 8x + 8192
COARSE_EXTRA = 2_048  # cost 0.1-0.2 s more per 1M rows (a deeper running top merges more rows per chunk)
COARSE_SAFETY = 2.0  # a row left out is assumed off by at most this times the largest error seen
_TINY = 1e-6  # float32 resolves scores in [0, 1] to ~1e-7: below this, ratios are rounding noise
# Rows scoring below this are ones the model is 99.999% sure of: when the cut falls among them, which
# of them fill the last places is not worth a second pass (their float32 order is near its resolution)
INTERCHANGEABLE = 1e-5

FloatArray = npt.NDArray[np.float64]


def coarse_top_size(n_top: int, n: int) -> int:
    """Rows a coarse pass keeps for re-scoring in float32 to find the top ``n_top`` of ``n``."""
    return min(n, COARSE_DEPTH * n_top + COARSE_EXTRA)


def rules_out_the_rest(exact: FloatArray, coarse: FloatArray, cut: float) -> bool:
    """Whether no row outside the re-scored ones can score ``cut`` or more in float32, or above ``INTERCHANGEABLE``.

    A coarse head moves every logit by a small amount, so every probability, and with it a
    margin, a scarcity or an entropy, by a bounded *factor*: scores move by a ratio, not by an
    absolute amount (a confident row's score of 1e-4 moves by ~1e-6, an uncertain row's 0.9 by
    ~1e-2). The largest log-ratio seen on the re-scored rows, times :data:`COARSE_SAFETY`, bounds
    how far any row's score may have moved; a row left out scored at most ``min(coarse)``.
    Scores below float32's resolution (``_TINY``) are not compared by ratio. When every row left
    out scores at most :data:`INTERCHANGEABLE`, so does the cut (or it would be above the bound),
    and the rows kept differ from float32's only among such near-certain rows.
    """
    bound = left_out_bound(exact, coarse)
    return cut > bound or bound <= INTERCHANGEABLE


def left_out_bound(exact: FloatArray, coarse: FloatArray) -> float:
    """The most a row outside the re-scored ones may score in float32 (inf when it cannot be bounded).

    With no ratio measurable (every re-scored row scores <= ``_TINY`` in one head or the other,
    as when a confident head gives most rows a score of exactly 0), a row left out scored at most
    ``min(coarse)``; if that is <= ``_TINY`` too, the coarse head was 99.9999% sure of it, and its
    float32 score could reach :data:`INTERCHANGEABLE` only through a logit error of ~2.3, ten
    times the largest seen (bench/score.py's pool: score ratios up to e^0.25). Such rows are
    bounded by :data:`INTERCHANGEABLE`; otherwise by nothing.
    """
    measurable = np.minimum(exact, coarse) > _TINY
    if not measurable.any():
        return INTERCHANGEABLE if float(coarse.min()) <= _TINY else float("inf")
    worst = float(np.max(np.abs(np.log(coarse[measurable]) - np.log(exact[measurable]))))
    return float(coarse.min()) * float(np.exp(COARSE_SAFETY * worst)) + _TINY
