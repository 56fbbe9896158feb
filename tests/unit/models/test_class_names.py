"""Class names as text for the encoder (models.class_names)."""

from __future__ import annotations

import numpy as np
import pytest

from models.class_names import class_name_text, embed_class_names
from models.hashing import HashingEmbedder


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("card_arrival", "card arrival"),
        ("Sci/Tech", "Sci Tech"),
        ("HUM:ind", "HUM ind"),
        ("lostCard", "lost Card"),
        ("top-up  failed", "top up failed"),
        ("ABBR", "ABBR"),
        ("__", "__"),  # nothing but separators: the name itself
    ],
)
def test_class_name_text(name: str, text: str) -> None:
    assert class_name_text(name) == text


def test_embed_class_names_gives_unit_rows_in_order() -> None:
    embedder = HashingEmbedder(dim=32)
    vectors = embed_class_names(embedder, ["card_arrival", "refund"])
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors, embedder.encode(["card arrival", "refund"]), atol=1e-6)
    assert embed_class_names(embedder, []).shape == (0, 32)
