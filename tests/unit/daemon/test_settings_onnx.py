"""``[model] backend = "onnx"`` and ``dtype = "int8"``: validation, environment, and the embedder built."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.context import default_embedder_factory, encoder_backend
from daemon.errors import ConfigError
from daemon.settings import load_settings
from models.embedder import TransformerEmbedder
from models.errors import EmbedderUnavailable
from models.onnx_embedder import OnnxEmbedder


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)


def test_auto_is_the_default_and_picks_onnx_fp32_on_this_cpu(tmp_path: Path) -> None:
    settings = load_settings(store={"data_dir": str(tmp_path / "state")})
    assert (settings.model.backend, settings.model.dtype) == ("auto", "fp32")
    assert encoder_backend(settings.model) == "onnx"  # no GPU here, onnxruntime installed by make venv
    embedder = default_embedder_factory(settings)()
    assert isinstance(embedder, OnnxEmbedder) and embedder.precision == "fp32"
    assert embedder.revision == TransformerEmbedder().revision  # the same vectors: one embedding cache
    assert embedder.onnx_path.is_file()  # exported and loaded when built, so a failure falls back at once


@pytest.mark.parametrize(
    ("model", "expected"),
    [({"dtype": "bf16"}, "torch"), ({"dtype": "auto"}, "torch"), ({"dtype": "int8"}, "onnx"),
     ({"backend": "torch"}, "torch"), ({"backend": "onnx"}, "onnx")],
)
def test_auto_resolution_by_dtype(model: dict[str, str], expected: str) -> None:
    assert encoder_backend(load_settings(model=model).model) == expected


def test_auto_uses_torch_on_a_gpu_and_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    settings = load_settings()
    monkeypatch.setattr("daemon.context.select_device", lambda preference: torch.device("cuda"))
    assert encoder_backend(settings.model) == "torch"
    monkeypatch.setattr("daemon.context.select_device", lambda preference: torch.device("cpu"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    assert encoder_backend(settings.model) == "torch"


def test_auto_falls_back_to_torch_when_the_export_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: OnnxEmbedder, texts: object) -> None:
        raise EmbedderUnavailable("cannot export this encoder to ONNX: unsupported operator")

    monkeypatch.setattr(OnnxEmbedder, "encode", broken)
    settings = load_settings(store={"data_dir": str(tmp_path / "state")})
    assert isinstance(default_embedder_factory(settings)(), TransformerEmbedder)
    assert "ONNX Runtime path unavailable" in caplog.text and "unsupported operator" in caplog.text
    explicit = load_settings(model={"backend": "onnx"}, store={"data_dir": str(tmp_path / "state")})
    assert isinstance(default_embedder_factory(explicit)(), OnnxEmbedder)  # asked for: no silent fallback


@pytest.mark.parametrize("model", [{"backend": "onnx", "device": "cuda"}, {"dtype": "int8", "device": "cuda:0"}])
def test_onnx_on_a_gpu_is_refused(model: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="CPU"):
        load_settings(model=model)


def test_int8_needs_the_onnx_backend() -> None:
    with pytest.raises(ConfigError, match=r'model: .*dtype "int8" needs backend = "onnx"'):
        load_settings(model={"dtype": "int8", "backend": "torch"})


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
