"""Counts in words for messages and logs: ``1 item``, ``2 items`` ("1 items removed" read as a slip, QA)."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str) -> str:
    """``1 item``, ``2 items``: for nouns that take an s."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
