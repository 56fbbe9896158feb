"""Fixtures shared by the ONNX embedder tests: one export cache and one embedder per precision per module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import models.onnx_embedder as onnx_embedder
from models.onnx_embedder import OnnxEmbedder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def fp32(cache_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(cache_dir=cache_dir, precision="fp32")


@pytest.fixture(scope="module")
def int8(cache_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(cache_dir=cache_dir, precision="int8")


@pytest.fixture
def export_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record the paths exported, still running the real export."""
    calls: list[Path] = []
    real: Callable[..., None] = onnx_embedder._export

    def counting(source: Path, path: Path, **kwargs: Any) -> None:
        calls.append(path)
        real(source, path, **kwargs)

    monkeypatch.setattr(onnx_embedder, "_export", counting)
    return calls
