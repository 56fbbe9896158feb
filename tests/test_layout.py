"""The four top-level packages are ours (not, say, python-daemon's `daemon`) and import cleanly."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["daemon", "strategies", "connectors", "models"])
def test_package_resolves_inside_the_repo(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(REPO)
    assert isinstance(module.__all__, list)
