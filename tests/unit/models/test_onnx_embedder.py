"""OnnxEmbedder on the real bundled MiniLM: vectors against the torch embedder, the export cache, errors."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models._types import Float32Array
from models.cache import model_key
from models.embedder import Embedder, TransformerEmbedder
from models.errors import EmbedderUnavailable
from models.onnx_embedder import OnnxEmbedder
from tests.unit.models.conftest import row_cosines

LONG = (
    "I moved to a new flat last month and updated my address in the app, but the replacement card "
    "was still sent to the old address, and now the courier says it was delivered and signed for by "
    "someone I do not know. I froze the card straight away, but I can see two pending payments at a "
    "petrol station I have never been to. Can you cancel those payments, send a new card to the right "
    "address, and tell me whether I need to report this to the police as well? I also want to know "
    "why the address change did not reach the card team, because this is the second time it happened "
    "this year and I would rather not spend another week without a working card."
)
REAL = [
    "My card still has not arrived.",
    "How do I reset my PIN?",
    "I would like to know why the exchange rate on my last transfer was so bad, it cost me a lot of money.",
    "Where is my new card?",
    "The cat sat on the mat in the sun.",
    "Can I top up with Apple Pay?",
    LONG,
    LONG + " " + LONG,  # truncated at max_length
]
SENTENCES = [*REAL, "", "Hi"]


@pytest.fixture(scope="module")
def reference() -> Float32Array:
    return TransformerEmbedder(device="cpu").encode(SENTENCES)


def test_the_long_sentences_exceed_128_tokens(fp32: OnnxEmbedder) -> None:
    fp32.encode(["warm-up"])
    assert fp32._loaded is not None
    lengths = [len(ids) for ids in fp32._loaded.tokenizer([LONG, LONG + " " + LONG])["input_ids"]]
    assert lengths[0] > 128 and lengths[1] > fp32.max_length


def test_fp32_matches_the_torch_embedder(fp32: OnnxEmbedder, reference: Float32Array) -> None:
    vectors = fp32.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert row_cosines(vectors, reference).min() >= 0.9999


def test_fp32_order_is_the_callers(fp32: OnnxEmbedder) -> None:
    vectors = fp32.encode(SENTENCES)
    np.testing.assert_allclose(fp32.encode(SENTENCES[::-1])[::-1], vectors, atol=1e-5)
    np.testing.assert_allclose(np.vstack([fp32.encode([text]) for text in SENTENCES]), vectors, atol=1e-5)


def test_int8_stays_close_to_fp32(int8: OnnxEmbedder, reference: Float32Array) -> None:
    cosines = row_cosines(int8.encode(REAL), reference[: len(REAL)])
    assert cosines.min() >= 0.99
    assert cosines.mean() >= 0.995
    degenerate = row_cosines(int8.encode(["", "Hi"]), reference[len(REAL) :])  # 2-3 tokens: they run in fp32
    assert degenerate.min() >= 0.99


def test_fp32_shares_the_torch_cache_and_int8_does_not(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    torch_embedder = TransformerEmbedder()
    assert (fp32.model_id, fp32.revision, fp32.dim) == (torch_embedder.model_id, torch_embedder.revision, 384)
    assert model_key(fp32) == model_key(torch_embedder)
    assert model_key(int8) != model_key(torch_embedder)
    assert int8.dim == 384
    embedders: list[Embedder] = [fp32, int8]
    assert all(callable(e.encode) for e in embedders)


def test_the_exported_file_is_reused(fp32: OnnxEmbedder, cache_dir: Path, export_calls: list[Path]) -> None:
    fp32.encode(["warm-up"])
    mtime = os.stat(fp32.onnx_path).st_mtime_ns
    again = OnnxEmbedder(cache_dir=cache_dir, precision="fp32")
    again.encode(["hello"])
    assert export_calls == []
    assert os.stat(fp32.onnx_path).st_mtime_ns == mtime
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_a_corrupt_file_is_replaced(
    fp32: OnnxEmbedder, reference: Float32Array, tmp_path: Path, export_calls: list[Path]
) -> None:
    embedder = OnnxEmbedder(cache_dir=tmp_path, precision="fp32")
    embedder.onnx_path.parent.mkdir(parents=True, exist_ok=True)
    embedder.onnx_path.write_bytes(b"not an onnx model")
    vectors = embedder.encode(SENTENCES)
    assert export_calls == [embedder.onnx_path]
    assert row_cosines(vectors, reference).min() >= 0.9999


def test_a_file_made_for_something_else_is_replaced(
    int8: OnnxEmbedder, reference: Float32Array, tmp_path: Path, export_calls: list[Path]
) -> None:
    int8.encode(["warm-up"])
    embedder = OnnxEmbedder(cache_dir=tmp_path, precision="fp32")
    embedder.onnx_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(int8.onnx_path, embedder.onnx_path)  # a valid model, but int8: its key differs
    vectors = embedder.encode(SENTENCES)
    assert export_calls == [embedder.onnx_path]
    assert row_cosines(vectors, reference).min() >= 0.9999


def test_the_file_name_follows_precision_and_versions(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    assert fp32.onnx_path != int8.onnx_path
    assert fp32.onnx_path.parent == int8.onnx_path.parent
    assert fp32.onnx_path.suffix == ".onnx"


def test_missing_onnxruntime_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(EmbedderUnavailable, match=r"pip install 'labelloop\[onnx\]'"):
        OnnxEmbedder(cache_dir=tmp_path).encode(["hello"])


def test_a_failed_export_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(EmbedderUnavailable, match="cannot export"):
        OnnxEmbedder(cache_dir=tmp_path).encode(["hello"])
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize(
    "bad", [{"precision": "bf16"}, {"batch_size": 0}, {"max_length": 1}, {"threads": 0}, {"fp32_max_tokens": -1}]
)
def test_bad_parameters_are_refused_at_use(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OnnxEmbedder(cache_dir=tmp_path, **bad).encode(["hello"])


def test_empty_input_gives_an_empty_matrix(fp32: OnnxEmbedder) -> None:
    assert fp32.encode([]).shape == (0, 384)


def test_pickles_without_its_session(fp32: OnnxEmbedder) -> None:
    vectors = fp32.encode(REAL[:2])
    clone = pickle.loads(pickle.dumps(fp32))
    assert clone._loaded is None
    np.testing.assert_allclose(clone.encode(REAL[:2]), vectors, atol=1e-6)


def test_the_fusion_passes_do_not_log_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO)
    OnnxEmbedder(cache_dir=tmp_path).encode(["a fresh export"])
    fusion = [r for r in caplog.records if r.levelno < logging.WARNING and not r.name.startswith(("models", "daemon"))]
    assert not fusion, sorted({r.name for r in fusion})
