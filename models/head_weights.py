"""A fitted ``ProxyClassifier`` head as plain numpy arrays, to ship to other processes or machines.

A scale-out worker needs only the head's arithmetic, not the estimator, its device or its training
code: a few ``(out, in)`` matrices, the input centring and the temperature. Shipping numpy arrays
(tens of KB for a linear head on 384-d vectors) keeps workers independent of the device the head
was trained on and of pickled torch modules.

``HeadWeights.predict_proba`` repeats ``ProxyClassifier.predict_proba`` operation for operation
(the same folded float32 layers and float32 softmax), so on the same device both give the same
probabilities; a test pins that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
import torch

from models._head import TORCH_DTYPES, fold_affine, forward_proba
from models._types import Float32Array, FloatArray
from models.classifier import ProxyClassifier, head_layers
from models.device import select_device
from models.errors import ModelNotFitted

__all__ = ["HeadWeights", "export_head"]


@dataclass(frozen=True, slots=True)
class HeadWeights:
    """The arithmetic of a fitted head.

    Attributes:
        layers: ``((W, b), ...)``, ``W`` ``(out, in)`` and ``b`` ``(out,)`` float32; a GELU sits
            between consecutive layers (one layer: multinomial logistic regression).
        center: ``(d,)`` float32, subtracted from every input row.
        scale: > 0, the inputs' global scale after centring.
        temperature: > 0, logits are divided by it before the softmax.
        classes: ``(C,)`` class names, the columns of ``predict_proba``.
    """

    layers: tuple[tuple[Float32Array, Float32Array], ...]
    center: Float32Array
    scale: float
    temperature: float
    classes: tuple[str, ...]

    @property
    def n_features(self) -> int:
        """``d``, the input width."""
        return int(self.center.shape[0])

    @overload
    def predict_proba(
        self, X: npt.ArrayLike, *, device: str | None = ..., chunk_rows: int = ..., dtype: Literal["float64"] = ...
    ) -> FloatArray: ...

    @overload
    def predict_proba(
        self, X: npt.ArrayLike, *, device: str | None = ..., chunk_rows: int = ..., dtype: Literal["float32"]
    ) -> Float32Array: ...

    def predict_proba(
        self,
        X: npt.ArrayLike,
        *,
        device: str | None = "cpu",
        chunk_rows: int = 65536,
        dtype: Literal["float64", "float32"] = "float64",
    ) -> npt.NDArray[np.floating[Any]]:
        """Return class probabilities ``(n, C)`` in ``classes`` order; rows sum to 1.

        Args:
            X: ``(n, d)`` embeddings (any float dtype; computed in float32 like the classifier).
            device: ``"cpu"``, ``"cuda[:N]"``, or ``None``/``"auto"`` for CUDA when available.
            chunk_rows: rows pushed through the head at once, >= 1.
            dtype: ``"float64"`` or ``"float32"``, as ``ProxyClassifier.predict_proba``.

        Raises:
            ValueError: ``X`` is not ``(n, d)`` or has NaN/inf, ``chunk_rows`` < 1 or another ``dtype``.
        """
        features = np.ascontiguousarray(X, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {features.shape}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        target = select_device(device)
        layers = [(torch.from_numpy(w).to(target), torch.from_numpy(b).to(target)) for w, b in self.layers]
        folded = fold_affine(layers, torch.from_numpy(self.center).to(target), self.scale, self.temperature)
        proba = np.empty((len(features), len(self.classes)), dtype=dtype)
        with torch.inference_mode():
            for start in range(0, len(features), chunk_rows):
                chunk = torch.from_numpy(features[start : start + chunk_rows]).to(target)
                proba[start : start + len(chunk)] = forward_proba(chunk, folded, TORCH_DTYPES[dtype]).cpu().numpy()
        return proba


def export_head(classifier: ProxyClassifier) -> HeadWeights:
    """Copy a fitted classifier's head into numpy arrays (on the CPU).

    Raises:
        ModelNotFitted: ``classifier`` has not been fitted.
    """
    if not hasattr(classifier, "_head"):
        raise ModelNotFitted("ProxyClassifier is not fitted yet: call fit(X, y) first")
    layers = tuple((_numpy(weight), _numpy(bias)) for weight, bias in head_layers(classifier._head))
    return HeadWeights(
        layers=layers,
        center=_numpy(classifier._center),
        scale=float(classifier._scale),
        temperature=float(classifier.temperature_),
        classes=tuple(str(c) for c in classifier.classes_),
    )


def _numpy(tensor: torch.Tensor) -> Float32Array:
    array: Float32Array = tensor.detach().to("cpu", torch.float32).numpy().copy()
    return array
