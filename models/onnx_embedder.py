"""Texts to unit-length vectors with ONNX Runtime: the same encoder as ``TransformerEmbedder``, exported once.

The Hugging Face model is wrapped with the mean pooling and L2 normalisation of
:class:`models.embedder.TransformerEmbedder`, exported to ONNX with dynamic batch and sequence axes,
passed through ONNX Runtime's BERT fusions (attention, embedding and skip layer norms, bias GELU)
and, for ``precision="int8"``, dynamically quantised. The file is written once per model revision,
precision and tool versions under ``cache_dir`` and reused; every later start only loads it.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) on the model loaded
with eager attention. It needs nothing beyond torch, takes about a second, and produces the
attention pattern ORT's BERT optimizer fuses; the torch.export-based exporter (torch's default
since 2.9) needs ``onnxscript``, takes several seconds, and its graph does not fuse to ORT's
``Attention`` op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from models._batching import CPU_TOKEN_BUDGET, check_texts, encode_in_length_order
from models._lazy import LazyLoad
from models._types import Float32Array
from models.embedder import TransformerEmbedder
from models.errors import EmbedderUnavailable

__all__ = ["PRECISIONS", "OnnxEmbedder", "default_onnx_cache_dir"]

PRECISIONS = ("fp32", "int8")
_RECIPE = "v1-eager-bertfuse-int8pc-xffn2"  # bump when the export or quantisation recipe changes
_OPSET = 17
_KEY_PROP = "labelloop_key"
# The FFN's second dense layer (3072 -> hidden) stays fp32 in int8: its GELU inputs have outliers that
# per-tensor activation quantisation handles badly (min cosine to fp32 0.987 quantised, 0.995 left out).
_FFN_OUT = re.compile(r"layer\.\d+/output/dense/MatMul$")
_INSTALL_HINT = "install the ONNX extra: pip install 'labelloop[onnx]'"


def default_onnx_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/labelloop/onnx`` (``~/.cache/labelloop/onnx`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "labelloop" / "onnx"


@dataclass(frozen=True, slots=True)
class _Loaded:
    tokenizer: Any
    session: Any  # onnxruntime.InferenceSession
    pad_id: int


class OnnxEmbedder(LazyLoad["_Loaded"]):
    """Mean-pooled, L2-normalised sentence vectors from an ONNX export of a Hugging Face encoder.

    Identity: ``model_id`` is the torch embedder's. In ``"fp32"`` the ``revision`` is the torch
    embedder's too, so both share one embedding cache: the export computes the same function with
    the same weights (min cosine to torch fp32 >= 0.9999 in the tests, 0.999999 on the benchmark
    texts), exactly as bf16 does today. ``"int8"`` vectors are different vectors (min cosine about
    0.995), so its revision is ``<torch revision>+onnx-int8-<recipe>`` and it gets its own cache.

    Args:
        model_path: local model folder or hub id; ``None`` means the bundled all-MiniLM-L6-v2.
        cache_dir: where exported files live; ``None`` means :func:`default_onnx_cache_dir`.
        precision: ``"fp32"`` or ``"int8"`` (dynamic quantisation: int8 weights per channel, uint8
            activations, on every dense layer but the FFN output).
        batch_size: rows a batch needs before it may close at a length change (as the torch path).
        max_length: tokens kept per text (longer texts are truncated).
        threads: ONNX Runtime intra-op threads; ``None`` means ``torch.get_num_threads()``.
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
    ) -> None:
        self.model_path = model_path
        self.cache_dir = cache_dir
        self.precision = precision
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
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
        return base if self.precision == "fp32" else f"{base}+onnx-{self.precision}-{_RECIPE}"

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
        return self._cache_root() / f"{_slug(self.model_id)}-{self.precision}-{self._export_key()[:16]}.onnx"

    def encode(self, texts: Sequence[str]) -> Float32Array:
        """Embed ``texts`` in the caller's order, exporting the model first if no valid file is cached.

        Args:
            texts: ``n`` strings; empty strings are allowed.

        Returns:
            ``(n, dim)`` float32, each row of L2 norm 1.

        Raises:
            EmbedderUnavailable: onnxruntime is not installed, or the model cannot be loaded or exported.
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

    def _cache_root(self) -> Path:
        return default_onnx_cache_dir() if self.cache_dir is None else Path(self.cache_dir)

    def _export_key(self) -> str:
        """Hash of everything the exported file depends on; stored in the file and checked on load."""
        ort, onnx = _import_onnx()
        parts = {
            "model_id": self.model_id, "revision": self._files.revision, "precision": self.precision,
            "recipe": _RECIPE, "opset": _OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _load_unlocked(self) -> _Loaded:
        ort, _ = _import_onnx()
        source = self._files._resolve()
        key, path = self._export_key(), self.onnx_path
        session = _open_session(ort, path, key, self._threads())
        if session is None:  # missing, unreadable, or made for something else: export afresh
            _export(source, path, key=key, precision=self.precision)
            session = _open_session(ort, path, key, self._threads())
            if session is None:
                raise EmbedderUnavailable(f"the ONNX file just exported to {path} does not load")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError, KeyError) as e:
            raise EmbedderUnavailable(f"cannot load the tokenizer from {source}: {e}") from e
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return _Loaded(tokenizer=tokenizer, session=session, pad_id=int(pad_id))

    def _threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()


def _open_session(ort: Any, path: Path, key: str, threads: int) -> Any | None:
    """Return a session on ``path`` if it exists, loads and carries ``key``; else ``None``."""
    if not path.is_file():
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _load_errors(ort):
        return None
    if session.get_modelmeta().custom_metadata_map.get(_KEY_PROP) != key:
        return None
    return session


def _load_errors(ort: Any) -> tuple[type[Exception], ...]:
    """What ``InferenceSession`` raises for an unreadable file: ORT's own classes derive from ``Exception``."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel")
    found = tuple(cls for name in names if isinstance(cls := getattr(state, name, None), type))
    return (*found, RuntimeError, ValueError, OSError)


def _run(loaded: _Loaded, token_ids: list[list[int]]) -> Float32Array:
    """Pad one batch, run the graph (pooling and normalisation included): ``(b, dim)``."""
    width = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), width), loaded.pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, row_ids in enumerate(token_ids):
        ids[row, : len(row_ids)] = row_ids
        mask[row, : len(row_ids)] = 1
    (vectors,) = loaded.session.run(None, {"input_ids": ids, "attention_mask": mask})
    result: Float32Array = np.asarray(vectors, dtype=np.float32)
    return result


def _import_onnx() -> tuple[Any, Any]:
    """Import onnxruntime and onnx, or say how to install them.

    Raises:
        EmbedderUnavailable: either package is missing.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise EmbedderUnavailable(f"the ONNX backend needs onnxruntime and onnx ({e}): {_INSTALL_HINT}") from e
    return onnxruntime, onnx


def _slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-._")[-40:].lstrip("-._") or "model"



class _Pooled(torch.nn.Module):
    """The encoder plus mean pooling over real tokens and L2 normalisation, as ``TransformerEmbedder``."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed, dim=1)


def _export(source: Path, path: Path, *, key: str, precision: str) -> None:
    """Export, fuse, maybe quantise, tag with ``key``; publish at ``path`` atomically (tmp + rename).

    Raises:
        EmbedderUnavailable: the model cannot be loaded, exported, optimised or quantised.
    """
    _, onnx = _import_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as work_dir:
        work = Path(work_dir)
        try:
            _export_fp32(source, work / "raw.onnx")
            _fuse(source, work / "raw.onnx", work / "fused.onnx")
            final = work / "fused.onnx"
            if precision == "int8":
                _quantize(work / "fused.onnx", work / "int8.onnx")
                final = work / "int8.onnx"
            model = onnx.load(str(final))
            onnx.helper.set_model_props(model, {_KEY_PROP: key})
            onnx.save(model, str(work / "tagged.onnx"))
        except (RuntimeError, ValueError, TypeError, KeyError, OSError) as e:
            raise EmbedderUnavailable(f"cannot export the model in {source} to ONNX ({precision}): {e}") from e
        os.replace(work / "tagged.onnx", path)


def _export_fp32(source: Path, target: Path) -> None:
    encoder = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter's own deprecation notice and tracer warnings about constant shapes
        # that are constant for an encoder (padding of an already full-length mask, is_causal)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Pooled(encoder), (ids, torch.ones_like(ids)), str(target),
            input_names=["input_ids", "attention_mask"], output_names=["vectors"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "vectors": {0: "batch"}},
            opset_version=_OPSET, dynamo=False,
        )


def _fuse(source: Path, raw: Path, target: Path) -> None:
    """ORT's offline BERT fusions; the session adds its own graph optimisations at load."""
    from onnxruntime.transformers import optimizer

    _quiet_fusion_loggers()
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    heads, hidden = int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
    fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    fused.save_model_to_file(str(target))


def _quiet_fusion_loggers() -> None:
    """Keep ORT's fusion passes (top-level modules ``onnx_model``, ``fusion_*``, each logging at INFO
    under its own name) out of the daemon's log, which otherwise gets a dozen lines per export."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        origin = str(getattr(sys.modules.get(name), "__file__", "") or "")
        if isinstance(logger, logging.Logger) and f"onnxruntime{os.sep}transformers" in origin:
            logger.setLevel(logging.WARNING)


def _quantize(fused: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fused), load_external_data=False).graph
    excluded = [node.name for node in graph.node if node.op_type == "MatMul" and _FFN_OUT.search(node.name)]
    quantize_dynamic(
        str(fused), str(target), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=excluded,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # types of fused-op outputs
    )
