"""Group length-sorted texts into batches that waste little compute on padding."""

from __future__ import annotations

from collections.abc import Iterator

from models._types import IntArray

__all__ = ["length_batches"]


def length_batches(sorted_lengths: IntArray, *, token_budget: int, min_rows: int) -> Iterator[slice]:
    """Cut ascending token lengths into consecutive batches.

    A batch holds at most ``token_budget`` tokens once padded (``rows * longest``), so short texts
    go in larger batches. When a batch already has ``min_rows`` rows it closes where the length
    changes, so a long run of equal lengths becomes batches with no padding at all.

    Args:
        sorted_lengths: ``(n,)`` token counts, ascending, each >= 1.
        token_budget: padded tokens allowed per batch, >= 1. A single text longer than the
            budget still gets a batch of its own.
        min_rows: rows a batch needs before it may close at a length change, >= 1.

    Yields:
        Slices into ``sorted_lengths`` that cover ``0..n`` in order, none empty.
    """
    n = len(sorted_lengths)
    start = 0
    while start < n:
        stop = start + 1
        while stop < n:
            length = int(sorted_lengths[stop])
            if (stop + 1 - start) * length > token_budget:
                break
            if length != sorted_lengths[stop - 1] and stop - start >= min_rows:
                break
            stop += 1
        yield slice(start, stop)
        start = stop
