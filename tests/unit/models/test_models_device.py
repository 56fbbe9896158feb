"""select_device's guard logic, checked without a GPU by faking torch.cuda.is_available."""

from __future__ import annotations

import pytest
import torch

from models.device import select_device
from models.embedder import resolve_dtype
from models.errors import ModelError


@pytest.fixture
def cuda_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def cuda_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("preference", [None, "auto"])
def test_default_is_cuda_when_available(cuda_available: None, preference: str | None) -> None:
    assert select_device(preference) == torch.device("cuda")


@pytest.mark.parametrize("preference", [None, "auto"])
def test_default_is_cpu_without_cuda(cuda_missing: None, preference: str | None) -> None:
    assert select_device(preference) == torch.device("cpu")


def test_cpu_overrides_an_available_gpu(cuda_available: None) -> None:
    assert select_device("cpu") == torch.device("cpu")


def test_explicit_gpu_index_is_kept(cuda_available: None) -> None:
    assert select_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("preference", ["cuda", "cuda:0"])
def test_asking_for_missing_cuda_is_an_error(cuda_missing: None, preference: str) -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        select_device(preference)


def test_unknown_device_string_is_an_error() -> None:
    with pytest.raises(ModelError, match="unknown device"):
        select_device("quantum")


def test_auto_dtype_uses_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
