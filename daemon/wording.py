"""Counts in words for messages and logs: ``1 item``, ``2 items`` ("1 items removed" read as a slip, QA)."""

from __future__ import annotations

__all__ = ["counted", "for_count"]


def counted(n: int, noun: str) -> str:
    """``1 item``, ``2 items``: for nouns that take an s."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def for_count(n: int, one: str, many: str) -> str:
    """``one`` when ``n`` is 1, else ``many``: ``1 is``, ``2 are``; ``1 was``, ``2 were``."""
    return one if n == 1 else many
