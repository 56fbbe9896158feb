"""Pick the torch device: CUDA when it is there, CPU otherwise, unless the caller says which."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from models.errors import ModelError

__all__ = ["select_device", "torch_threads"]


def select_device(preference: str | None = None) -> torch.device:
    """Return the device to compute on.

    Args:
        preference: ``None`` or ``"auto"`` picks ``cuda`` when ``torch.cuda.is_available()``
            and ``cpu`` otherwise; ``"cpu"`` forces the CPU; ``"cuda"`` or ``"cuda:N"`` demands
            a GPU; any other torch device string (e.g. ``"mps"``) is passed through.

    Raises:
        ModelError: a CUDA device was asked for but CUDA is not available, or the string is
            not a torch device.
    """
    if preference is None or preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as e:
        raise ModelError(f"unknown device {preference!r}: use 'auto', 'cpu' or 'cuda[:N]'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {preference!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return device


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads (at least one), then restore the setting."""
    before = torch.get_num_threads()
    wanted = max(1, n)
    if wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
