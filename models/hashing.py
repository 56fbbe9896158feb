"""A deterministic embedder with no weights, for unit tests and as a stand-in in other packages' tests."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence

import numpy as np

from models._types import Float32Array

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Signed feature hashing of words and character trigrams, L2-normalised.

    Texts that share words get close vectors, so similarity-based code can be tested; the same
    ``(dim, seed)`` always gives the same vectors, on any machine.

    Args:
        dim: vector length, >= 2.
        seed: changes every hash, hence every vector.
    """

    def __init__(self, dim: int = 64, *, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed

    @property
    def model_id(self) -> str:
        """``hashing/dim<dim>``."""
        return f"hashing/dim{self.dim}"

    @property
    def revision(self) -> str:
        """The algorithm version and the seed: ``v1-seed<seed>``."""
        return f"v1-seed{self.seed}"

    def encode(self, texts: Sequence[str]) -> Float32Array:
        """Embed ``texts`` in order; returns ``(len(texts), dim)`` float32 with unit rows.

        Raises:
            ValueError: ``dim`` < 2.
        """
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2, got {self.dim}")
        key = self.seed.to_bytes(16, "little", signed=True)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in _features(text):
                digest = hashlib.blake2b(feature.encode(), digest_size=8, key=key).digest()
                column = int.from_bytes(digest[:4], "little") % self.dim
                out[row, column] += 1.0 if digest[4] & 1 else -1.0
            if not out[row].any():  # empty text, or features that cancelled out
                out[row, 0] = 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def _features(text: str) -> Iterator[str]:
    yield "\0bias"
    for word in _WORD.findall(text.lower()):
        yield "w:" + word
        padded = f"<{word}>"
        for start in range(len(padded) - 2):
            yield "c:" + padded[start : start + 3]
