"""Shared by the ONNX embedder tests: one export cache and one embedder per precision per module, and row cosines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.onnx_embedder as onnx_embedder
from models._types import Float32Array
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


def row_cosines(a: Float32Array, b: Float32Array) -> Float32Array:
    """Cosine of each row of ``a`` with the same row of ``b`` (the embedders' rows are unit length)."""
    cosines: Float32Array = np.einsum("ij,ij->i", a, b)
    return cosines
