"""An in-memory map from 32-byte digests to row numbers, in flat numpy arrays.

A Python dict of ``bytes`` costs ~150 bytes per row; this costs 48 (the digest, plus a sorted
8-byte prefix and its row), so a million cached texts take ~48 MB and lookups stay vectorised.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models._types import IntArray

__all__ = ["DIGEST_BYTES", "DigestIndex", "digests_from_hex"]

DIGEST_BYTES = 32
_PREFIX = np.dtype(">u8")  # big-endian, so numeric order is byte order

U8Array = npt.NDArray[np.uint8]


def digests_from_hex(hashes: list[str] | tuple[str, ...]) -> U8Array:
    """Parse sha256 hex strings into a ``(n, 32)`` uint8 array.

    Raises:
        ValueError: a string is not 64 hex digits.
    """
    try:
        raw = b"".join(bytes.fromhex(h) for h in hashes)
    except (ValueError, TypeError) as e:
        raise ValueError(f"hashes must be sha256 hex strings: {e}") from e
    if len(raw) != DIGEST_BYTES * len(hashes):
        raise ValueError("hashes must be sha256 hex strings of 64 digits")
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(hashes), DIGEST_BYTES)


class DigestIndex:
    """Digests of rows ``0..n-1``; ``row_of`` finds them, ``extend`` appends new ones."""

    def __init__(self) -> None:
        self._digests: U8Array = np.empty((0, DIGEST_BYTES), dtype=np.uint8)
        self._size = 0
        self._sorted_prefix: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._sorted_rows: IntArray = np.empty(0, dtype=np.intp)

    def __len__(self) -> int:
        return self._size

    def extend(self, digests: U8Array) -> None:
        """Append ``digests`` ``(m, 32)`` as rows ``n..n+m-1`` (the caller ensures they are new)."""
        m = len(digests)
        if m == 0:
            return
        if self._size + m > len(self._digests):  # amortised growth: reallocate by doubling
            grown = np.empty((max(2 * len(self._digests), self._size + m, 1024), DIGEST_BYTES), np.uint8)
            grown[: self._size] = self._digests[: self._size]
            self._digests = grown
        self._digests[self._size : self._size + m] = digests
        prefix = _prefixes(digests)
        order = np.argsort(prefix, kind="stable")
        at = np.searchsorted(self._sorted_prefix, prefix[order], side="right")
        self._sorted_prefix = np.insert(self._sorted_prefix, at, prefix[order])
        self._sorted_rows = np.insert(self._sorted_rows, at, self._size + order.astype(np.intp))
        self._size += m

    def row_of(self, digests: U8Array) -> IntArray:
        """Row of each digest ``(m, 32)``, or -1 when absent; ``(m,)``."""
        rows: IntArray = np.full(len(digests), -1, dtype=np.intp)
        if self._size == 0 or len(digests) == 0:
            return rows
        prefix = _prefixes(digests)
        at = np.searchsorted(self._sorted_prefix, prefix, side="left")
        inside = at < self._size
        candidate = np.where(inside, at, 0)
        same_prefix = inside & (self._sorted_prefix[candidate] == prefix)
        candidate_rows = self._sorted_rows[candidate]
        exact = same_prefix & (self._digests[candidate_rows] == digests).all(axis=1)
        rows[exact] = candidate_rows[exact]
        for query in np.flatnonzero(same_prefix & ~exact):  # 8-byte prefix collision: ~never
            rows[query] = self._scan(int(at[query]), prefix[query], digests[query])
        return rows

    def _scan(self, start: int, prefix: np.uint64, digest: U8Array) -> int:
        position = start
        while position < self._size and self._sorted_prefix[position] == prefix:
            row = int(self._sorted_rows[position])
            if np.array_equal(self._digests[row], digest):
                return row
            position += 1
        return -1


def _prefixes(digests: U8Array) -> npt.NDArray[np.uint64]:
    prefix: npt.NDArray[np.uint64] = np.ascontiguousarray(digests[:, :8]).view(_PREFIX).ravel().astype(np.uint64)
    return prefix
