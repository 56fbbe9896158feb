"""Array aliases used across the models package (mirrors ``strategies/_types.py``, not imported from it)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Float32Array", "FloatArray", "IntArray"]

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.intp]
