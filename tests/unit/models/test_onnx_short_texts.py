"""OnnxEmbedder in int8 on texts of a few tokens: they run through the fp32 export, so they stay close to fp32.

Without that routing, int8's min cosine to torch fp32 on these texts is about 0.97-0.985 (3-14
tokens, batched together as ``encode`` batches them); with it, they are the fp32 vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models._onnx_export import RECIPE
from models.embedder import TransformerEmbedder
from models.onnx_embedder import FP32_MAX_TOKENS, OnnxEmbedder
from tests.unit.models.conftest import row_cosines

# The empty string, 1-3-word strings, and the short texts of the shared data sets (SMS Spam, Banking77,
# TREC) on which unrouted int8 strayed furthest from fp32 when encoded together.
SHORT = [
    "", " ", "Hi", "ok", "?", "thanks", "Thanks!", "hello world", "refund", "card PIN", "anythin",
    "welcome ;).", "Ok thanx...", "Yup ok thanx...", "First answer my question.", "I'm done. C ü there.",
    "blah prob... Ummmmmaah", "Oh k...i'm watching here:)", "Yes i thought so. Thanks.", "Where is my new card?",
    "How do I reset my PIN?", "What is the capital of Peru ?",
]
LONG = (
    "I moved to a new flat last month and updated my address in the app, but the replacement card "
    "was still sent to the old address, and now the courier says it was delivered and signed for by "
    "someone I do not know. Can you cancel those payments and send a new card to the right address?"
)


def _token_counts(embedder: OnnxEmbedder, texts: list[str]) -> list[int]:
    embedder.encode(["warm-up"])
    assert embedder._loaded is not None
    return [len(ids) for ids in embedder._loaded.tokenizer(texts)["input_ids"]]


def test_the_short_texts_are_short(int8: OnnxEmbedder) -> None:
    counts = _token_counts(int8, [*SHORT, LONG])
    assert max(counts[:-1]) <= FP32_MAX_TOKENS < counts[-1]


def test_int8_keeps_short_texts_close_to_fp32(int8: OnnxEmbedder) -> None:
    reference = TransformerEmbedder(device="cpu").encode(SHORT)
    together = row_cosines(int8.encode(SHORT), reference)
    alone = row_cosines(np.vstack([int8.encode([text]) for text in SHORT]), reference)
    assert together.min() >= 0.99 and alone.min() >= 0.99


def test_short_texts_in_int8_are_the_fp32_vectors(int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    np.testing.assert_allclose(int8.encode(SHORT), fp32.encode(SHORT), atol=1e-5)


def test_a_batch_of_short_and_long_texts_splits_by_length(int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    texts = ["Hi", LONG, "Where is my new card?"]  # three rows: one batch for encode_in_length_order
    vectors = int8.encode(texts)
    np.testing.assert_allclose(vectors[[0, 2]], fp32.encode([texts[0], texts[2]]), atol=1e-5)
    np.testing.assert_allclose(vectors[1], int8.encode([LONG])[0], atol=1e-5)  # int8: not fp32's vector
    assert row_cosines(vectors[1:2], fp32.encode([LONG]))[0] < 0.99999


def test_the_threshold_counts_special_tokens(cache_dir: Path, fp32: OnnxEmbedder) -> None:
    five, six = "hello there my friend", "hello there my dear friend"  # 4 and 5 words, +[CLS] +[SEP]
    embedder = OnnxEmbedder(cache_dir=cache_dir, precision="int8", fp32_max_tokens=6)
    assert _token_counts(embedder, [five, six]) == [6, 7]
    vectors, reference = embedder.encode([five, six]), fp32.encode([five, six])
    np.testing.assert_allclose(vectors[0], reference[0], atol=1e-5)
    assert row_cosines(vectors[1:], reference[1:])[0] < 0.99999


def test_the_fp32_file_is_exported_only_when_a_short_text_comes(tmp_path: Path, export_calls: list[Path]) -> None:
    embedder = OnnxEmbedder(cache_dir=tmp_path, precision="int8")
    fp32_path = OnnxEmbedder(cache_dir=tmp_path, precision="fp32").onnx_path
    embedder.encode([LONG])
    assert export_calls == [embedder.onnx_path]
    embedder.encode(["Hi"])
    assert export_calls == [embedder.onnx_path, fp32_path]  # the fp32 embedder's file: shared with it
    embedder.encode(["Hi", "ok"])
    assert len(export_calls) == 2


def test_zero_runs_every_text_in_int8(cache_dir: Path, int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    unrouted = OnnxEmbedder(cache_dir=cache_dir, precision="int8", fp32_max_tokens=0)
    assert row_cosines(unrouted.encode(["Hi"]), fp32.encode(["Hi"]))[0] < 0.99999
    unrouted.encode(["warm-up"])
    assert unrouted._loaded is not None and unrouted._loaded.short_session is None


def test_the_int8_revision_names_the_threshold(cache_dir: Path, int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    def revision(fp32_max_tokens: int) -> str:
        return OnnxEmbedder(cache_dir=cache_dir, precision="int8", fp32_max_tokens=fp32_max_tokens).revision

    assert int8.revision.endswith(f"-fp32le{FP32_MAX_TOKENS}")
    assert len({revision(0), revision(8), int8.revision, fp32.revision}) == 4
    assert revision(0) == f"{fp32.revision}+onnx-int8-{RECIPE}"  # the vectors cached before
    assert OnnxEmbedder(cache_dir=cache_dir, precision="fp32", fp32_max_tokens=0).revision == fp32.revision

