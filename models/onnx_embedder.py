"""Texts to unit-length vectors with ONNX Runtime: the same encoder as ``TransformerEmbedder``, exported once.

The Hugging Face model is wrapped with the mean pooling and L2 normalisation of
:class:`models.embedder.TransformerEmbedder`, exported to ONNX with dynamic batch and sequence axes,
passed through ONNX Runtime's BERT fusions (attention, embedding and skip layer norms, bias GELU)
and, for ``precision="int8"``, dynamically quantised (:mod:`models._onnx_export`). The file is
written once per model revision, precision and tool versions under ``cache_dir`` and reused; every
later start only loads it, after checking the file against the SHA-256 recorded when it was
exported (a mismatch, or no digest, exports it again). A session that still returns a non-finite
vector raises :class:`EmbedderUnavailable` rather than passing it on.

Short texts in int8: dynamic quantisation scales each activation tensor (the whole batch) by its
extreme values, and a text of a few tokens has no long mean to average the rounding out, so its
vector strays furthest from fp32 (min cosine 0.967-0.986 at 2-9 tokens, dips below 0.99 up to 30).
They are also the cheapest texts to encode. So in int8, texts of at most ``fp32_max_tokens`` tokens
run through the fp32 export instead, which is opened (and exported, with the fp32 embedder's file
name and key) the first time such a text comes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from models import _onnx_export
from models._batching import CPU_TOKEN_BUDGET, check_texts, encode_in_length_order
from models._lazy import LazyLoad
from models._onnx_export import KEY_PROP, OPSET, RECIPE, import_onnx
from models._types import Float32Array
from models.embedder import TransformerEmbedder
from models.errors import EmbedderUnavailable

__all__ = ["FP32_MAX_TOKENS", "PRECISIONS", "OnnxEmbedder", "default_onnx_cache_dir"]

PRECISIONS = ("fp32", "int8")
# In int8, texts of at most this many tokens ([CLS] and [SEP] included) run in fp32. Measured with every
# text in int8 on the four shared data sets plus 3,000 1-3-word strings (35,736 texts, encoded as one
# call): min cosine to torch fp32 0.967-0.986 at 2-9 tokens, 0.986-0.990 at 10-15, dips to 0.988-0.990
# up to 30, then >= 0.9925 at 33-64 tokens and >= 0.9946 above. The price: texts this short lose int8's
# speed-up (about 20-30% on one or two threads on Banking77); longer texts keep it.
FP32_MAX_TOKENS = 32
log = logging.getLogger(__name__)
_export = _onnx_export.export  # a module attribute, so tests can count exports


def default_onnx_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/labelloop/onnx`` (``~/.cache/labelloop/onnx`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "labelloop" / "onnx"


class _SessionOnFirstUse(LazyLoad[Any]):
    """An ONNX Runtime session opened by ``open_session()`` when first asked for, once across threads."""

    def __init__(self, open_session: Callable[[], Any]) -> None:
        self.open_session = open_session
        self._init_lazy()

    def get(self) -> Any:
        return self._load()

    def _load_unlocked(self) -> Any:
        return self.open_session()


@dataclass(frozen=True, slots=True)
class _Loaded:
    tokenizer: Any
    session: Any  # onnxruntime.InferenceSession for the embedder's precision
    pad_id: int
    short_session: _SessionOnFirstUse | None = None  # int8 only: fp32, for rows of <= short_max_tokens
    short_max_tokens: int = 0


class OnnxEmbedder(LazyLoad["_Loaded"]):
    """Mean-pooled, L2-normalised sentence vectors from an ONNX export of a Hugging Face encoder.

    Identity: ``model_id`` is the torch embedder's. In ``"fp32"`` the ``revision`` is the torch
    embedder's too, so both share one embedding cache: the export computes the same function with
    the same weights (min cosine to torch fp32 >= 0.9999 in the tests, 0.999999 on the benchmark
    texts), exactly as bf16 does today. ``"int8"`` vectors are different vectors (min cosine to torch
    fp32 0.9925 on the shared data sets, mean 0.998 on long texts), so its revision is
    ``<torch revision>+onnx-int8-<recipe>`` plus ``-fp32le<n>`` when texts of up to ``n`` tokens run
    in fp32, and it gets its own cache.

    Args:
        model_path: local model folder or hub id; ``None`` means the bundled all-MiniLM-L6-v2.
        cache_dir: where exported files live; ``None`` means :func:`default_onnx_cache_dir`.
        precision: ``"fp32"`` or ``"int8"`` (dynamic quantisation: int8 weights per channel, uint8
            activations, on every dense layer but the FFN output).
        batch_size: rows a batch needs before it may close at a length change (as the torch path).
        max_length: tokens kept per text (longer texts are truncated).
        threads: ONNX Runtime intra-op threads; ``None`` means ``torch.get_num_threads()``.
        fp32_max_tokens: in ``"int8"``, texts of at most this many tokens ([CLS] and [SEP]
            included, >= 0) run through the fp32 export instead; 0 runs every text in int8.
            Ignored in ``"fp32"``.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        cache_dir: Path | str | None = None,
        precision: str = "fp32",
        batch_size: int = 64,
        max_length: int = 256,
        threads: int | None = None,
        fp32_max_tokens: int = FP32_MAX_TOKENS,
    ) -> None:
        self.model_path = model_path
        self.cache_dir = cache_dir
        self.precision = precision
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self.fp32_max_tokens = fp32_max_tokens
        self._files = TransformerEmbedder(model_path)  # model_id, revision and dim, read from files
        self._init_lazy()

    @property
    def model_id(self) -> str:
        """The torch embedder's: the path or hub id given, or the bundled model's hub id."""
        return self._files.model_id

    @property
    def revision(self) -> str:
        """The torch embedder's revision in fp32; a distinct one in int8 (see the class docstring).

        Raises:
            EmbedderUnavailable: the model folder cannot be found.
        """
        base = self._files.revision
        if self.precision == "fp32":
            return base
        routed = f"-fp32le{self.fp32_max_tokens}" if self.fp32_max_tokens > 0 else ""
        return f"{base}+onnx-{self.precision}-{RECIPE}{routed}"

    @property
    def dim(self) -> int:
        """``hidden_size`` from the model's ``config.json``.

        Raises:
            EmbedderUnavailable: the model folder or its config cannot be read.
        """
        return self._files.dim

    @property
    def onnx_path(self) -> Path:
        """The exported file for this model, precision and tool versions (it may not exist yet).

        Raises:
            EmbedderUnavailable: onnxruntime or onnx is missing, or the model folder is.
        """
        return self._onnx_path(self.precision)

    def encode(self, texts: Sequence[str]) -> Float32Array:
        """Embed ``texts`` in the caller's order, exporting the model first if no valid file is cached.

        Args:
            texts: ``n`` strings; empty strings are allowed.

        Returns:
            ``(n, dim)`` float32, each row of L2 norm 1.

        Raises:
            EmbedderUnavailable: onnxruntime is not installed, the model cannot be loaded or exported,
                or the session returned a non-finite vector.
            ValueError: a text is not a ``str``, or a constructor argument is out of range.
        """
        self._check_params()
        check_texts(texts)
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        loaded = self._load()
        return encode_in_length_order(
            texts, loaded.tokenizer, partial(_run, loaded), dim=self.dim, max_length=self.max_length,
            token_budget=min(self.batch_size * self.max_length, CPU_TOKEN_BUDGET), min_rows=self.batch_size,
        )

    def _check_params(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if self.fp32_max_tokens < 0:
            raise ValueError(f"fp32_max_tokens must be >= 0, got {self.fp32_max_tokens}")

    def _cache_root(self) -> Path:
        return default_onnx_cache_dir() if self.cache_dir is None else Path(self.cache_dir)

    def _onnx_path(self, precision: str) -> Path:
        return self._cache_root() / f"{_slug(self.model_id)}-{precision}-{self._export_key(precision)[:16]}.onnx"

    def _export_key(self, precision: str) -> str:
        """Hash of everything the exported file depends on; stored in the file and checked on load."""
        ort, onnx = import_onnx()
        parts = {
            "model_id": self.model_id, "revision": self._files.revision, "precision": precision,
            "recipe": RECIPE, "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _load_unlocked(self) -> _Loaded:
        session = self._session(self.precision)
        source = self._files._resolve()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError, KeyError) as e:
            raise EmbedderUnavailable(f"cannot load the tokenizer from {source}: {e}") from e
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        short_session = None
        if self.precision == "int8" and self.fp32_max_tokens > 0:
            short_session = _SessionOnFirstUse(partial(self._session, "fp32"))
        return _Loaded(tokenizer=tokenizer, session=session, pad_id=int(pad_id),
                       short_session=short_session, short_max_tokens=self.fp32_max_tokens)

    def _session(self, precision: str) -> Any:
        """Open the cached file for ``precision``, exporting it first if it is missing or stale.

        Raises:
            EmbedderUnavailable: onnxruntime is missing, or the model cannot be exported or loaded.
        """
        ort, _ = import_onnx()
        source = self._files._resolve()
        key, path = self._export_key(precision), self._onnx_path(precision)
        # a killed export's work folder: a valid cached file means no export comes to sweep it
        _onnx_export.sweep_abandoned(path.parent)
        session = _open_session(ort, path, key, self._threads())
        if session is None:  # missing, unreadable, or made for something else: export afresh
            _export(source, path, key=key, precision=precision)
            session = _open_session(ort, path, key, self._threads())
            if session is None:
                raise EmbedderUnavailable(f"the ONNX file just exported to {path} does not load")
        return session

    def _threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()


def _open_session(ort: Any, path: Path, key: str, threads: int) -> Any | None:
    """Return a session on ``path`` if it exists, matches its recorded digest, loads and has ``key``; else ``None``."""
    if not path.is_file():
        return None
    if not _onnx_export.is_intact(path):
        log.warning("ONNX file %s does not match the SHA-256 recorded at export (damaged, or exported by an "
                    "older labelloop); exporting it again", path)
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _load_errors(ort):
        return None
    if session.get_modelmeta().custom_metadata_map.get(KEY_PROP) != key:
        return None
    return session


def _load_errors(ort: Any) -> tuple[type[Exception], ...]:
    """What ``InferenceSession`` raises for an unreadable file: ORT's own classes derive from ``Exception``."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel")
    found = tuple(cls for name in names if isinstance(cls := getattr(state, name, None), type))
    return (*found, RuntimeError, ValueError, OSError)


def _run(loaded: _Loaded, token_ids: list[list[int]]) -> Float32Array:
    """Run one batch, its rows of at most ``short_max_tokens`` tokens on the fp32 session if any: ``(b, dim)``."""
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.intp, count=len(token_ids))
    is_short = lengths <= loaded.short_max_tokens
    if loaded.short_session is None or not is_short.any():
        return _run_session(loaded.session, token_ids, pad_id=loaded.pad_id)
    if is_short.all():
        return _run_session(loaded.short_session.get(), token_ids, pad_id=loaded.pad_id)
    short_rows, long_rows = np.flatnonzero(is_short), np.flatnonzero(~is_short)
    short = _run_session(loaded.short_session.get(), [token_ids[p] for p in short_rows], pad_id=loaded.pad_id)
    long = _run_session(loaded.session, [token_ids[p] for p in long_rows], pad_id=loaded.pad_id)
    out: Float32Array = np.empty((len(token_ids), short.shape[1]), dtype=np.float32)
    out[short_rows], out[long_rows] = short, long
    return out


def _run_session(session: Any, token_ids: list[list[int]], *, pad_id: int) -> Float32Array:
    """Pad one batch, run the graph (pooling and normalisation included): ``(b, dim)``."""
    width = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, row_ids in enumerate(token_ids):
        ids[row, : len(row_ids)] = row_ids
        mask[row, : len(row_ids)] = 1
    (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    result: Float32Array = np.asarray(vectors, dtype=np.float32)
    n_bad = int((~np.isfinite(result).all(axis=1)).sum())
    if n_bad:
        raise EmbedderUnavailable(
            f"ONNX Runtime returned non-finite vectors for {n_bad} of {len(token_ids)} texts: the exported model "
            f"is broken (delete its .onnx file under the ONNX cache folder to export it again)"
        )
    return result


def _slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-._")[-40:].lstrip("-._") or "model"
