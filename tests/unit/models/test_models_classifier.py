"""ProxyClassifier: learning, probabilities, class weighting, calibration, determinism, sklearn API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from sklearn.base import clone

from models.classifier import ProxyClassifier
from models.errors import ModelNotFitted

Features = npt.NDArray[np.float64]
Labels = npt.NDArray[np.str_]


def blobs(
    n_per_class: int, *, classes: int = 3, dim: int = 16, spread: float = 0.3, seed: int = 0
) -> tuple[Features, Labels]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 3
    features = np.vstack([c + spread * rng.normal(size=(n_per_class, dim)) for c in centers])
    labels = np.repeat([f"class-{i}" for i in range(classes)], n_per_class)
    return features, labels


def nll(proba: Features, labels: Labels, classes: Labels) -> float:
    picked = proba[np.arange(len(labels)), np.searchsorted(classes, labels)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def ece(proba: Features, labels: Labels, classes: Labels, bins: int = 10) -> float:
    confidence = proba.max(axis=1)
    correct = classes[proba.argmax(axis=1)] == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in np.unique(which)
        )
    )


def test_learns_separable_blobs_with_string_labels() -> None:
    features, labels = blobs(40)
    model = ProxyClassifier(device="cpu").fit(features, labels)
    assert list(model.classes_) == ["class-0", "class-1", "class-2"]
    assert model.n_features_in_ == 16
    test_features, test_labels = blobs(30, seed=0)
    assert (model.predict(test_features) == test_labels).mean() >= 0.99


def test_probabilities_are_rows_that_sum_to_one() -> None:
    features, labels = blobs(20, spread=2.0)
    proba = ProxyClassifier(device="cpu").fit(features, labels).predict_proba(features)
    assert proba.shape == (60, 3) and proba.dtype == np.float64
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_fit_returns_self_and_accepts_lists() -> None:
    model = ProxyClassifier(device="cpu")
    assert model.fit([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.1]], ["b", "a", "b", "a"]) is model
    assert list(model.predict([[0.0, 1.0]])) == ["b"]


def test_class_weighting_raises_minority_recall() -> None:
    rng = np.random.default_rng(1)

    def sample(n_major: int, n_minor: int) -> tuple[Features, Labels]:
        major = rng.normal(size=(n_major, 8))
        minor = rng.normal(size=(n_minor, 8)) + np.r_[1.2, np.zeros(7)]
        return np.vstack([major, minor]), np.array(["major"] * n_major + ["minor"] * n_minor)

    features, labels = sample(950, 50)
    test_features, test_labels = sample(500, 500)
    recall = {}
    for weighting in ("balanced", None):
        model = ProxyClassifier(class_weight=weighting, calibrate=False, device="cpu").fit(features, labels)
        recall[weighting] = (model.predict(test_features)[test_labels == "minor"] == "minor").mean()
    assert recall["balanced"] > recall[None] + 0.3


def test_calibration_fixes_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    centers = np.zeros((3, 60))
    centers[[0, 1, 2], [0, 1, 2]] = 1.5

    def sample(n: int) -> tuple[Features, Labels]:
        positions = rng.integers(0, 3, size=n)
        return centers[positions] + rng.normal(size=(n, 60)), np.array(["a", "b", "c"])[positions]

    features, labels = sample(300)  # 57 pure-noise dimensions: the raw head is far too sure of itself
    test_features, test_labels = sample(3000)
    raw = ProxyClassifier(calibrate=False, device="cpu").fit(features, labels)
    calibrated = ProxyClassifier(calibrate=True, device="cpu").fit(features, labels)
    assert raw.temperature_ == 1.0 and raw.calibration_ == "not requested"
    assert calibrated.temperature_ > 2.0
    assert "out-of-fold" in calibrated.calibration_
    classes = calibrated.classes_
    raw_proba, cal_proba = raw.predict_proba(test_features), calibrated.predict_proba(test_features)
    assert nll(cal_proba, test_labels, classes) < nll(raw_proba, test_labels, classes) - 0.2
    assert ece(cal_proba, test_labels, classes) < ece(raw_proba, test_labels, classes) - 0.05
    np.testing.assert_array_equal(raw_proba.argmax(axis=1), cal_proba.argmax(axis=1))


def test_calibration_is_skipped_with_few_labels() -> None:
    features, labels = blobs(5)
    model = ProxyClassifier(device="cpu").fit(features, labels)
    assert model.temperature_ == 1.0
    assert model.calibration_.startswith("skipped")


@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_same_random_state_same_model(hidden_dim: int) -> None:
    features, labels = blobs(20, spread=1.5)
    first = ProxyClassifier(hidden_dim=hidden_dim, random_state=7, device="cpu").fit(features, labels)
    second = ProxyClassifier(hidden_dim=hidden_dim, random_state=7, device="cpu").fit(features, labels)
    np.testing.assert_array_equal(first.predict_proba(features), second.predict_proba(features))


def test_hidden_layer_learns_what_a_linear_head_cannot() -> None:
    rng = np.random.default_rng(3)
    points = rng.uniform(-1, 1, size=(400, 2))
    labels = np.where((points[:, 0] > 0) == (points[:, 1] > 0), "same", "diff")  # XOR
    linear = ProxyClassifier(calibrate=False, device="cpu").fit(points, labels)
    hidden = ProxyClassifier(hidden_dim=32, calibrate=False, device="cpu").fit(points, labels)
    assert (linear.predict(points) == labels).mean() < 0.75
    assert (hidden.predict(points) == labels).mean() > 0.9


def test_not_fitted_is_a_model_error() -> None:
    with pytest.raises(ModelNotFitted):
        ProxyClassifier().predict_proba(np.zeros((1, 4)))
    with pytest.raises(ModelNotFitted):
        ProxyClassifier().predict(np.zeros((1, 4)))


def test_chunked_prediction_matches_one_pass() -> None:
    features, labels = blobs(30, spread=2.0)
    model = ProxyClassifier(device="cpu").fit(features, labels)
    np.testing.assert_allclose(
        model.predict_proba(features, chunk_rows=7), model.predict_proba(features, chunk_rows=100_000), atol=1e-12
    )


def test_sklearn_params_and_clone() -> None:
    model = ProxyClassifier(hidden_dim=8, epochs=50, class_weight=None, random_state=3)
    params = model.get_params()
    assert params["hidden_dim"] == 8 and params["class_weight"] is None and params["random_state"] == 3
    copy = clone(model)
    assert copy.get_params() == params and copy is not model
    assert model.set_params(epochs=20) is model and model.epochs == 20


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((4, 2)), ["a"] * 4, "at least 2 classes"),
        (np.zeros(4), ["a", "b", "a", "b"], "2-D"),
        (np.zeros((4, 2)), ["a", "b"], "shape"),
        (np.full((2, 2), np.nan), ["a", "b"], "NaN"),
    ],
)
def test_fit_validates_its_input(features: Features, labels: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProxyClassifier().fit(features, labels)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"hidden_dim": -1}, {"lr": 0.0}, {"class_weight": "auto"}])
def test_bad_parameters_are_refused_in_fit(bad: dict[str, object]) -> None:
    model = ProxyClassifier(**bad)  # type: ignore[arg-type]  # the constructor only stores
    with pytest.raises(ValueError):
        model.fit(np.eye(2), ["a", "b"])


def test_predict_refuses_another_width() -> None:
    features, labels = blobs(5)
    with pytest.raises(ValueError, match="features"):
        ProxyClassifier(device="cpu").fit(features, labels).predict_proba(np.zeros((1, 3)))


@pytest.mark.parametrize("head_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("chunk_rows", [7, 100_000])
def test_float16_rows_give_the_probabilities_of_their_float32_values(head_dtype: str, chunk_rows: int) -> None:
    """The embedding store's float16 rows are widened inside the head: exactly as if widened first."""
    features, labels = blobs(30, spread=2.0)
    model = ProxyClassifier(device="cpu", hidden_dim=8).fit(features, labels)
    stored = features.astype(np.float16)
    got = model.predict_proba(stored, chunk_rows=chunk_rows, dtype="float32", head_dtype=head_dtype)  # type: ignore[call-overload]
    widened = model.predict_proba(stored.astype(np.float32), chunk_rows=chunk_rows, dtype="float32",
                                  head_dtype=head_dtype)  # type: ignore[call-overload]
    np.testing.assert_array_equal(got, widened)


def test_float16_rows_widened_block_by_block_on_the_way_to_bfloat16_are_widened_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features, labels = blobs(30, spread=2.0)
    model = ProxyClassifier(device="cpu").fit(features, labels)
    stored = features.astype(np.float16)
    expected = model.predict_proba(stored.astype(np.float32), dtype="float32", head_dtype="bfloat16")
    monkeypatch.setattr("models._head._WIDEN_BLOCK_BYTES", 7 * 4 * features.shape[1])  # 7 rows at a time
    assert len(stored) % 7 and len(stored) > 7 * 3  # several blocks and a short last one
    np.testing.assert_array_equal(model.predict_proba(stored, dtype="float32", head_dtype="bfloat16"), expected)
    np.testing.assert_array_equal(model.proba_from_logits(model.coarse_logits(stored)),
                                  model.proba_from_logits(model.coarse_logits(stored.astype(np.float32))))


def test_float16_rows_too_big_for_the_staging_buffers_are_widened_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = blobs(30, spread=2.0)
    model = ProxyClassifier(device="cpu").fit(features, labels)
    stored = features.astype(np.float16)
    staged = model.predict_proba(stored, dtype="float32")
    monkeypatch.setattr("models._head._STAGING_MAX_BYTES", 64)  # every chunk now takes the fresh-tensor path
    np.testing.assert_array_equal(model.predict_proba(stored, dtype="float32"), staged)


def test_a_result_is_not_overwritten_by_later_calls_on_this_or_another_thread() -> None:
    """The float16 staging buffers are reused per thread; what predict_proba returns must never be one."""
    features, labels = blobs(40, spread=2.0)
    model = ProxyClassifier(device="cpu").fit(features, labels)
    halves = features[:60].astype(np.float16), features[60:].astype(np.float16)
    expected = [model.predict_proba(half, dtype="float32").copy() for half in halves]
    first = model.predict_proba(halves[0], dtype="float32")
    model.predict_proba(halves[1], dtype="float32")
    np.testing.assert_array_equal(first, expected[0])

    def repeat(which: int) -> bool:
        return all(np.array_equal(model.predict_proba(halves[which], dtype="float32"), expected[which])
                   for _ in range(200))

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert all(pool.map(repeat, [0, 1, 0, 1]))


@pytest.mark.parametrize(("limit", "threads_inside"), [(10_000, 1), (100, 2)])
def test_a_small_head_is_fitted_on_one_cpu_thread_and_the_setting_comes_back(
    monkeypatch: pytest.MonkeyPatch, limit: int, threads_inside: int
) -> None:
    """Beside a busy Label Studio, two threads made a 1,500-label fit take up to 20 times as long."""
    import models.classifier as classifier
    from models._head import train_head as real

    seen: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr("models.classifier.train_head", spy)
    monkeypatch.setattr(classifier, "_ONE_THREAD_MAX_VALUES", limit)
    features, labels = blobs(40)  # 120 × 16 = 1,920 values
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ProxyClassifier(device="cpu").fit(features, labels)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {threads_inside}  # calibration folds and the final fit alike
