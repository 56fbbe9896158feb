"""Class names as text the encoder reads, so a class can be looked for before it has a label."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from models._types import Float32Array
from models.embedder import Embedder

__all__ = ["class_name_text", "embed_class_names"]

_SEPARATORS = re.compile(r"[_\-:/.|]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def class_name_text(name: str) -> str:
    """Return ``name`` as words: ``card_arrival`` → ``card arrival``, ``lostCard`` → ``lost Card``.

    Separators (``_ - : / . |``) become spaces and a lower-to-upper case change starts a
    word; anything else is kept. An empty result falls back to ``name`` itself.
    """
    words = _SEPARATORS.sub(" ", _CAMEL.sub(" ", name)).split()
    return " ".join(words) or name


def embed_class_names(embedder: Embedder, names: Sequence[str]) -> Float32Array:
    """Embed each class name as text (:func:`class_name_text`).

    Args:
        embedder: the encoder that embeds the pool, so names and items share one space.
        names: class names, in the order the rows should follow.

    Returns:
        (len(names), embedder.dim) float32, rows L2-normalised; (0, dim) for no names.
    """
    if not names:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return embedder.encode([class_name_text(name) for name in names])  # unit rows: the Embedder contract
