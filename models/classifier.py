"""The proxy classifier retrained every cycle on the embeddings of the labels so far."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from models._calibration import fit_temperature, stratified_folds
from models._head import (
    HEAD_DTYPES,
    TORCH_DTYPES,
    HeadSpec,
    Layers,
    bfloat16_speedup,
    cast_layers,
    fold_affine,
    forward_logit_columns,
    forward_proba,
    train_head,
)
from models._types import Float32Array, FloatArray
from models.device import select_device, torch_threads
from models.errors import ModelNotFitted, NonFiniteInput

__all__ = ["ProxyClassifier"]

_CALIBRATION_FOLDS = 3
_MIN_CALIBRATION_LABELS = 30  # fewer held-out labels than this: leave the temperature at 1
_ENOUGH_HELD_OUT = 1000  # stop fitting calibration folds once this many held-out logits exist
# A head on at most this many input values (about 5,000 labels of 384 dims) is fitted on one CPU
# thread. L-BFGS on a small head is a long chain of small ops, and with two threads each waits at
# a barrier: beside a busy Label Studio on a 2-core host, fits of 1,500 / 5,000 labels took
# 0.2-3.9 / 0.2-3.4 s on two threads against 0.2-0.3 / 0.2 s on one. On the same host at rest two
# threads are 1.0x / 1.25x as fast there, but 1.5x at 20,000 labels and more, so larger heads keep
# torch's setting.
_ONE_THREAD_MAX_VALUES = 2_000_000


class ProxyClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn ships no types
    """A small torch head on fixed embeddings, with optional temperature-scaled probabilities.

    scikit-learn conventions: the constructor only stores its arguments, ``fit`` validates and
    returns ``self``, fitted state ends in ``_``, and ``get_params``/``set_params``/``clone`` work
    (so modAL's ``ActiveLearner`` can wrap it).

    Inputs are centred on the training mean and divided by one global scale (the geometry of the
    embedding space is kept). Training is full-batch L-BFGS on class-weighted cross-entropy.

    Args:
        hidden_dim: 0 for a linear head (multinomial logistic regression), else the width of one
            GELU hidden layer.
        epochs: L-BFGS iteration cap (each iteration is one or a few full-batch passes).
        lr: L-BFGS initial step; with the strong-Wolfe line search 1.0 needs no tuning.
        weight_decay: L2 penalty on the weight matrices, >= 0.
        class_weight: ``"balanced"`` weighs class c by ``n / (C * n_c)``; ``None`` weighs all 1.
        calibrate: fit a temperature on 3-fold out-of-fold logits when there are at least 30
            held-out labels in classes with 2+ labels (folds stop once 1000 held-out logits
            exist); otherwise the temperature stays 1.
        device: ``None``/``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
        random_state: seeds the hidden-layer initialisation and the calibration folds.

    Attributes:
        classes_: ``(C,)`` sorted class names.
        n_features_in_: ``d``, the embedding size seen in ``fit``.
        temperature_: the fitted temperature (1.0 when not calibrated).
        calibration_: how the temperature was chosen, for logs and reports.
    """

    def __init__(
        self,
        *,
        hidden_dim: int = 0,
        epochs: int = 200,
        lr: float = 1.0,
        weight_decay: float = 1e-3,
        class_weight: str | None = "balanced",
        calibrate: bool = True,
        device: str | None = None,
        random_state: int = 0,
    ) -> None:
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.class_weight = class_weight
        self.calibrate = calibrate
        self.device = device
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: Sequence[str] | npt.ArrayLike) -> ProxyClassifier:
        """Train on embeddings ``X`` ``(n, d)`` with class names ``y`` ``(n,)``; return ``self``.

        Raises:
            ValueError: bad shapes, non-finite values, fewer than 2 classes, or a bad parameter.
            ModelError: the requested device is not available.
        """
        self._check_params()
        features, labels = _check_fit_input(X, y)
        classes, targets = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"need labels of at least 2 classes to train, got {len(classes)}")
        device = select_device(self.device)
        one_thread = device.type == "cpu" and features.size <= _ONE_THREAD_MAX_VALUES
        with torch_threads(1) if one_thread else nullcontext():
            return self._fit(features, classes, targets, device)

    def _fit(self, features: Float32Array, classes: npt.NDArray[Any], targets: npt.NDArray[np.intp],
             device: torch.device) -> ProxyClassifier:
        center = features.mean(axis=0)
        scale = float(np.sqrt(((features - center) ** 2).mean())) or 1.0
        inputs = torch.from_numpy((features - center) / scale).to(device)
        target_tensor = torch.from_numpy(targets.astype(np.int64)).to(device)
        self.temperature_, self.calibration_ = 1.0, "not requested"
        if self.calibrate:
            self.temperature_, self.calibration_ = self._calibrated_temperature(inputs, targets, len(classes))
        self._head = train_head(
            inputs,
            target_tensor,
            n_classes=len(classes),
            class_weights=self._class_weights(targets, len(classes), device),
            spec=self._spec(),
        )
        self.classes_ = classes
        self.n_features_in_ = features.shape[1]
        self._center = torch.from_numpy(center).to(device)
        self._scale = scale
        self._device = device
        self._folded = fold_affine(head_layers(self._head), self._center, scale, self.temperature_)
        self._folded_bf16: Layers | None = None  # cast on first use by predict_proba(head_dtype="bfloat16")
        return self

    @overload
    def predict_proba(
        self,
        X: npt.ArrayLike,
        *,
        chunk_rows: int = ...,
        dtype: Literal["float64"] = ...,
        head_dtype: Literal["float32", "bfloat16"] = ...,
    ) -> FloatArray: ...

    @overload
    def predict_proba(
        self,
        X: npt.ArrayLike,
        *,
        chunk_rows: int = ...,
        dtype: Literal["float32"],
        head_dtype: Literal["float32", "bfloat16"] = ...,
    ) -> Float32Array: ...

    def predict_proba(
        self,
        X: npt.ArrayLike,
        *,
        chunk_rows: int = 65536,
        dtype: Literal["float64", "float32"] = "float64",
        head_dtype: Literal["float32", "bfloat16"] = "float32",
    ) -> npt.NDArray[np.floating[Any]]:
        """Return class probabilities ``(n, C)`` in ``classes_`` order; rows sum to 1.

        The head reads the raw float32 rows through weights that absorb the centring, scaling
        and temperature (:func:`models._head.fold_affine`), and the softmax is float32.

        Args:
            X: ``(n, d)`` embeddings; a float16 array (the embedding store's own rows) is widened
                chunk by chunk instead of converted as a whole.
            chunk_rows: rows pushed through the head at once; bounds the working memory.
            dtype: ``"float64"`` (scikit-learn's convention) or ``"float32"``, which skips
                a copy of the result where a million rows are scored.
            head_dtype: ``"float32"``, or ``"bfloat16"`` for a coarse pass: the rows and weights
                are rounded to bfloat16 (8 significant bits), which moves the probabilities by
                ~1e-2 and runs several times faster where the hardware has bfloat16 products
                (:meth:`bfloat16_speedup`). Only a pre-filter that re-scores its survivors in
                float32 should ask for it.

        Raises:
            ModelNotFitted: ``fit`` has not been called.
            ValueError: ``X`` has the wrong width or non-finite values, ``chunk_rows`` < 1 or
                another ``dtype`` or ``head_dtype``.
        """
        features = self._check_predict_input(X)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        layers = self._layers(head_dtype)
        if len(features) <= chunk_rows:  # one chunk (a scoring pass's): hand over the head's array, no copy
            with torch.inference_mode():
                rows = forward_proba(torch.from_numpy(features).to(self._device), layers, TORCH_DTYPES[dtype])
                single: npt.NDArray[np.floating[Any]] = rows.cpu().numpy()
                return single
        proba = np.empty((len(features), len(self.classes_)), dtype=dtype)
        with torch.inference_mode():
            for start in range(0, len(features), chunk_rows):
                chunk = torch.from_numpy(features[start : start + chunk_rows]).to(self._device)
                rows = forward_proba(chunk, layers, TORCH_DTYPES[dtype])
                proba[start : start + len(chunk)] = rows.cpu().numpy()
        return proba

    def coarse_logits(self, X: npt.ArrayLike, *, chunk_rows: int = 65536) -> Float32Array:
        """Return the bfloat16 head's logits ``(n, C)`` float32, column-major, for a coarse pre-filter.

        :meth:`proba_from_logits` turns them into what ``predict_proba(X, dtype="float32",
        head_dtype="bfloat16")`` returns, up to float32 rounding. The split lets a scoring pass
        run the product and the softmax on different threads, and the column-major layout (the
        transpose of a C-contiguous ``(C, n)`` array) makes the softmax and the scores over each
        row's classes whole-vector operations across rows.

        Raises:
            ModelNotFitted: ``fit`` has not been called.
            ValueError: ``X`` has the wrong width, or ``chunk_rows`` < 1.
        """
        features = self._check_predict_input(X)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        layers = self._layers("bfloat16")
        with torch.inference_mode():
            if len(features) <= chunk_rows:  # one chunk (a scoring pass's): hand over the head's array, no copy
                single: Float32Array = forward_logit_columns(torch.from_numpy(features).to(self._device),
                                                             layers).cpu().numpy().T
                return single
            columns = np.empty((len(self.classes_), len(features)), dtype=np.float32)
            for start in range(0, len(features), chunk_rows):
                chunk = torch.from_numpy(features[start : start + chunk_rows]).to(self._device)
                columns[:, start : start + len(chunk)] = forward_logit_columns(chunk, layers).cpu().numpy()
        logits: Float32Array = columns.T
        return logits

    @staticmethod
    def proba_from_logits(logits: Float32Array, *, in_place: bool = False) -> Float32Array:
        """Return the softmax of each row of ``logits`` ``(n, C)``, in the same memory layout.

        With ``in_place`` the softmax overwrites ``logits`` and returns it: a scoring pass's
        logits are its own and are read once. A fresh ``(8192, C)`` array per chunk costs page
        faults: on 77 classes the softmax took 0.26 s per 1M rows into new arrays, 0.11 s in place.

        Raises:
            ValueError: a row holds NaN or inf (the message :meth:`predict_proba` gives).
        """
        largest = logits.max(axis=1, keepdims=True)
        proba: Float32Array = np.subtract(logits, largest, out=logits) if in_place else logits - largest
        np.exp(proba, out=proba)
        sums = proba.sum(axis=1, keepdims=True)  # >= 1: each row's largest entry is now exp(0)
        if not np.isfinite(sums).all():
            raise NonFiniteInput("X contains NaN or inf (or values so large that the logits overflow)")
        proba *= 1.0 / sums
        return proba

    def bfloat16_speedup(self) -> float:
        """How many times faster a bfloat16 head runs than float32 on this model's device (measured once).

        Raises:
            ModelNotFitted: ``fit`` has not been called.
        """
        if not hasattr(self, "_head"):
            raise ModelNotFitted("ProxyClassifier is not fitted yet: call fit(X, y) first")
        return bfloat16_speedup(str(self._device))

    def _layers(self, head_dtype: str) -> Layers:
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(f"head_dtype must be 'float32' or 'bfloat16', got {head_dtype!r}")
        if head_dtype == "float32":
            return self._folded
        cast: Layers | None = getattr(self, "_folded_bf16", None)  # None after fit (and in older pickles)
        if cast is None:
            cast = self._folded_bf16 = cast_layers(self._folded, HEAD_DTYPES[head_dtype])
        return cast

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Return the most probable class name per row, ``(n,)``.

        Raises:
            ModelNotFitted: ``fit`` has not been called.
            ValueError: as :meth:`predict_proba`.
        """
        positions = self.predict_proba(X).argmax(axis=1)
        labels: npt.NDArray[Any] = self.classes_[positions]
        return labels

    def _calibrated_temperature(
        self, inputs: torch.Tensor, targets: npt.NDArray[np.intp], n_classes: int
    ) -> tuple[float, str]:
        """Fit ``T`` on out-of-fold logits of the held-out-able labels, or say why not.

        Folds are fitted one by one until 1000 held-out logits are in hand (all 3 folds below
        ~1500 labels): one temperature needs no more, and with 10k labels this saves two fits.
        """
        folds = stratified_folds(targets, _CALIBRATION_FOLDS, np.random.default_rng(self.random_state))
        n_held_out = int((folds >= 0).sum())
        if n_held_out < _MIN_CALIBRATION_LABELS:
            return 1.0, f"skipped: {n_held_out} labels in classes with 2+ labels, need {_MIN_CALIBRATION_LABELS}"
        logits, truth = [], []
        for fold in range(_CALIBRATION_FOLDS):
            logits.append(self._fold_logits(inputs, targets, folds == fold, n_classes))
            truth.append(targets[folds == fold])
            if sum(len(t) for t in truth) >= _ENOUGH_HELD_OUT:
                break
        held_out = np.concatenate(truth)
        temperature = fit_temperature(np.concatenate(logits), held_out)
        return temperature, (
            f"temperature {temperature:.3g} from {len(held_out)} out-of-fold logits "
            f"({len(truth)} of {_CALIBRATION_FOLDS} folds)"
        )

    def _fold_logits(
        self, inputs: torch.Tensor, targets: npt.NDArray[np.intp], test: npt.NDArray[np.bool_], n_classes: int
    ) -> FloatArray:
        """Train on ``~test`` and return the ``(test.sum(), C)`` logits of ``test``."""
        train_targets = targets[~test]
        head = train_head(
            inputs[torch.from_numpy(~test).to(inputs.device)],
            torch.from_numpy(train_targets.astype(np.int64)).to(inputs.device),
            n_classes=n_classes,
            class_weights=self._class_weights(train_targets, n_classes, inputs.device),
            spec=self._spec(),
        )
        with torch.inference_mode():
            logits: FloatArray = head(inputs[torch.from_numpy(test).to(inputs.device)]).double().cpu().numpy()
        return logits

    def _class_weights(
        self, targets: npt.NDArray[np.intp], n_classes: int, device: torch.device
    ) -> torch.Tensor | None:
        if self.class_weight is None:
            return None
        counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
        present = counts > 0
        weights = np.zeros(n_classes, dtype=np.float32)  # a class absent from this fold weighs 0
        weights[present] = len(targets) / (present.sum() * counts[present])
        return torch.from_numpy(weights).to(device)

    def _spec(self) -> HeadSpec:
        return HeadSpec(
            hidden_dim=self.hidden_dim,
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            random_state=self.random_state,
        )

    def _check_params(self) -> None:
        if self.hidden_dim < 0 or self.epochs < 1:
            raise ValueError(f"hidden_dim must be >= 0 and epochs >= 1, got {self.hidden_dim}, {self.epochs}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")

    def _check_predict_input(self, X: npt.ArrayLike) -> npt.NDArray[np.float32] | npt.NDArray[np.float16]:
        if not hasattr(self, "_head"):
            raise ModelNotFitted("ProxyClassifier is not fitted yet: call fit(X, y) first")
        if isinstance(X, np.ndarray) and X.dtype == np.float16:  # as stored: torch widens it, per chunk
            features: npt.NDArray[np.float32] | npt.NDArray[np.float16] = np.ascontiguousarray(X)
        else:
            features = np.ascontiguousarray(X, dtype=np.float32)  # finiteness: checked on the logits
        if features.ndim != 2:
            raise ValueError(f"X must be 2-D (n, d), got shape {features.shape}")
        if features.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {features.shape[1]} features, the model was fitted on {self.n_features_in_}")
        return features


def _as_features(X: npt.ArrayLike) -> npt.NDArray[np.float32]:
    features = np.ascontiguousarray(X, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("X contains NaN or inf")
    return features


def _check_fit_input(
    X: npt.ArrayLike, y: Sequence[str] | npt.ArrayLike
) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    features = _as_features(X)
    labels = np.asarray(y)
    if labels.dtype == object:
        labels = labels.astype(str)
    if labels.shape != (features.shape[0],):
        raise ValueError(f"y must have shape ({features.shape[0]},), got {labels.shape}")
    return features, labels


def head_layers(head: torch.nn.Module) -> Layers:
    """The ``(W, b)`` of every linear layer of a head from :func:`models._head.train_head`, in order."""
    return [(m.weight.detach(), m.bias.detach()) for m in head.modules() if isinstance(m, torch.nn.Linear)]
