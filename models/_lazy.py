"""Load something heavy (weights, a runtime session) once, on first use, safely across threads."""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

__all__ = ["LazyLoad"]

T = TypeVar("T")


class LazyLoad(Generic[T]):
    """Base of the embedders: ``_load()`` returns ``_load_unlocked()``'s result, computed once.

    Pickling keeps the settings and drops what was loaded (and the lock), so a copy sent to
    another process loads again there. Subclasses call ``_init_lazy()`` in their constructor.
    """

    _loaded: T | None
    _load_lock: threading.Lock

    def _init_lazy(self) -> None:
        self._loaded = None
        self._load_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings and file-derived ids, not what was loaded or the lock."""
        state = self.__dict__.copy()
        state["_loaded"] = None
        del state["_load_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load_lock = threading.Lock()

    def _load(self) -> T:
        with self._load_lock:  # two threads' first encode must not load (or export) twice
            if self._loaded is None:
                self._loaded = self._load_unlocked()
            return self._loaded

    def _load_unlocked(self) -> T:
        raise NotImplementedError
