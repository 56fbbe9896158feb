"""Group length-sorted texts into batches that waste little compute on padding, and run them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from models._types import Float32Array, IntArray

__all__ = ["CPU_TOKEN_BUDGET", "TOKENIZE_CHUNK", "check_texts", "encode_in_length_order", "length_batches"]


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


TOKENIZE_CHUNK = 8192  # texts tokenized at once: bounds the memory of token-id lists
CPU_TOKEN_BUDGET = 2048  # measured: long texts +20% vs 16384 tokens, short texts unchanged


def check_texts(texts: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every text is a ``str`` (empty strings are fine)."""
    if not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must all be str")


def encode_in_length_order(
    texts: Sequence[str],
    tokenizer: Any,
    run: Callable[[list[list[int]]], Float32Array],
    *,
    dim: int,
    max_length: int,
    token_budget: int,
    min_rows: int,
) -> Float32Array:
    """Tokenize ``texts`` in chunks, run them through ``run`` in length-sorted batches, return caller order.

    Args:
        texts: ``n`` strings (see :func:`check_texts`).
        tokenizer: a Hugging Face tokenizer (truncates to ``max_length`` tokens).
        run: one batch's token ids → its ``(b, dim)`` vectors.
        dim: the vectors' width.
        max_length: tokens kept per text.
        token_budget, min_rows: as :func:`length_batches`.

    Returns:
        ``(n, dim)`` float32, row ``i`` for ``texts[i]``.
    """
    out = np.empty((len(texts), dim), dtype=np.float32)
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = list(texts[start : start + TOKENIZE_CHUNK])
        token_ids: list[list[int]] = tokenizer(
            chunk, truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
        )["input_ids"]
        lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.intp, count=len(token_ids))
        order = np.argsort(lengths, kind="stable")
        for batch in length_batches(lengths[order], token_budget=token_budget, min_rows=min_rows):
            positions = order[batch]
            out[start + positions] = run([token_ids[p] for p in positions])
    return out
