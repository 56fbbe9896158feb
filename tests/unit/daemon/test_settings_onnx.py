"""``[model] backend = "onnx"`` and ``dtype = "int8"``: validation, environment, and the embedder built."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.context import default_embedder_factory
from daemon.errors import ConfigError
from daemon.settings import load_settings
from models.embedder import TransformerEmbedder
from models.onnx_embedder import OnnxEmbedder


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)


def test_torch_is_the_default_backend() -> None:
    settings = load_settings()
    assert (settings.model.backend, settings.model.dtype) == ("torch", "fp32")
    assert isinstance(default_embedder_factory(settings)(), TransformerEmbedder)


def test_int8_needs_the_onnx_backend() -> None:
    with pytest.raises(ConfigError, match=r'model: .*dtype "int8" needs backend = "onnx"'):
        load_settings(model={"dtype": "int8"})


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "auto"])
def test_onnx_runs_only_fp32_or_int8(dtype: str) -> None:
    with pytest.raises(ConfigError, match=rf'backend "onnx" runs dtype "fp32" or "int8", not "{dtype}"'):
        load_settings(model={"backend": "onnx", "dtype": dtype})


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.backend"):
        load_settings(model={"backend": "tensorrt"})


def test_env_and_file_select_onnx_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "labelloop.toml"
    config.write_text('[model]\nbackend = "onnx"\n[store]\ndata_dir = "state"\n')
    monkeypatch.setenv("LABELLOOP_MODEL__DTYPE", "int8")
    settings = load_settings(config)
    assert (settings.model.backend, settings.model.dtype) == ("onnx", "int8")
    assert settings.public_dump()["model"]["backend"] == "onnx"


def test_the_factory_builds_an_onnx_embedder_cached_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(
        model={"backend": "onnx", "dtype": "int8", "encode_batch_size": 32, "max_length": 128},
        store={"data_dir": str(tmp_path / "state")},
    )
    embedder = default_embedder_factory(settings)()
    assert isinstance(embedder, OnnxEmbedder)
    assert (embedder.precision, embedder.batch_size, embedder.max_length) == ("int8", 32, 128)
    assert embedder.cache_dir == tmp_path / "state" / "onnx"
    assert not (tmp_path / "state").exists()  # nothing is exported before the first encode
