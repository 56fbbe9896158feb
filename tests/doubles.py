"""Test doubles shared by several test modules (fakes of our own interfaces, never of a real part)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from models._types import Float32Array
from models.hashing import HashingEmbedder


class CountingEmbedder:
    """A HashingEmbedder that records every text it encodes and can fail on the n-th call."""

    def __init__(self, *, dim: int = 8, fail_on_call: int | None = None) -> None:
        self.inner = HashingEmbedder(dim=dim)
        self.encoded: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def revision(self) -> str:
        return self.inner.revision

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: Sequence[str]) -> Float32Array:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("killed midway")
        self.encoded.extend(texts)
        return self.inner.encode(texts)


class ArraySource:
    """An in-memory stand-in for the embedding cache's reads; records the rows per array handed out."""

    def __init__(self, vectors: npt.NDArray[np.float32]) -> None:
        self.vectors = vectors
        self.handed_out: list[int] = []

    def get(self, rows: npt.ArrayLike) -> npt.NDArray[np.float32]:
        out = self.vectors[np.asarray(rows, dtype=np.intp)]
        self.handed_out.append(len(out))
        return out

    def iter_stored_chunks(
        self, rows: npt.ArrayLike, chunk_rows: int = 65536
    ) -> Iterator[tuple[slice, npt.NDArray[np.float32]]]:
        positions = np.asarray(rows, dtype=np.intp)
        for start in range(0, len(positions), chunk_rows):
            span = slice(start, min(start + chunk_rows, len(positions)))
            yield span, self.get(positions[span])
