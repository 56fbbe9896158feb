"""Array aliases shared by every strategy."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["AnyFloatArray", "FloatArray", "IntArray"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
#: Embeddings and probabilities arrive as float32 or float64; we never upcast a whole pool.
AnyFloatArray = npt.NDArray[np.floating[Any]]
