"""HeadWeights: a fitted head as numpy arrays gives the classifier's own probabilities."""

from __future__ import annotations

import pickle

import numpy as np
import numpy.typing as npt
import pytest

from models.classifier import ProxyClassifier
from models.errors import ModelNotFitted
from models.head_weights import HeadWeights, export_head


def _data(seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.str_]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 12)) * 2
    features = np.vstack([c + rng.normal(size=(25, 12)) for c in centers]).astype(np.float32)
    labels = np.repeat(["a", "b", "c", "d"], 25)
    return features, labels


@pytest.mark.parametrize("hidden_dim", [0, 8])
def test_exported_head_matches_predict_proba_exactly(hidden_dim: int) -> None:
    features, labels = _data()
    model = ProxyClassifier(hidden_dim=hidden_dim, device="cpu", epochs=30).fit(features, labels)
    weights = pickle.loads(pickle.dumps(export_head(model)))  # what a worker receives
    pool = np.random.default_rng(1).normal(size=(300, 12)).astype(np.float32)
    np.testing.assert_array_equal(weights.predict_proba(pool, chunk_rows=64), model.predict_proba(pool))
    assert weights.classes == ("a", "b", "c", "d")
    assert len(weights.layers) == (1 if hidden_dim == 0 else 2)
    assert all(w.dtype == np.float32 for layer in weights.layers for w in layer)


def test_export_refuses_an_unfitted_classifier() -> None:
    with pytest.raises(ModelNotFitted):
        export_head(ProxyClassifier())


def test_predict_proba_checks_its_input() -> None:
    features, labels = _data()
    weights: HeadWeights = export_head(ProxyClassifier(device="cpu", epochs=5).fit(features, labels))
    with pytest.raises(ValueError, match="shape"):
        weights.predict_proba(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        weights.predict_proba(np.full((2, 12), np.nan))
    with pytest.raises(ValueError, match="chunk_rows"):
        weights.predict_proba(features, chunk_rows=0)
