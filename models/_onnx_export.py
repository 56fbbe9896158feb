"""Write the ONNX file an ``OnnxEmbedder`` loads: export, BERT fusions, optional int8 quantisation, key tag.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) on the model loaded
with eager attention. It needs nothing beyond torch, takes about a second, and produces the
attention pattern ORT's BERT optimizer fuses; the torch.export-based exporter (torch's default
since 2.9) needs ``onnxscript``, takes several seconds, and its graph does not fuse to ORT's
``Attention`` op.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

from models.errors import EmbedderUnavailable

__all__ = ["KEY_PROP", "OPSET", "RECIPE", "export", "import_onnx"]

RECIPE = "v1-eager-bertfuse-int8pc-xffn2"  # bump when the export or quantisation recipe changes
OPSET = 17
KEY_PROP = "labelloop_key"  # model metadata entry holding the export key the file was made for
# The FFN's second dense layer (intermediate -> hidden) stays fp32 in int8: its GELU inputs have outliers
# that per-tensor activation quantisation handles badly (min cosine to fp32 0.987 quantised, 0.995 left out).
_FFN_OUT = re.compile(r"layer\.\d+/output/dense/MatMul$")
_INSTALL_HINT = "install the ONNX extra: pip install 'labelloop[onnx]'"


def import_onnx() -> tuple[Any, Any]:
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


def export(source: Path, path: Path, *, key: str, precision: str) -> None:
    """Export, fuse, maybe quantise, tag with ``key``; publish at ``path`` atomically (tmp + rename).

    Raises:
        EmbedderUnavailable: the model cannot be loaded, exported, optimised or quantised.
    """
    _, onnx = import_onnx()
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
            onnx.helper.set_model_props(model, {KEY_PROP: key})
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
            opset_version=OPSET, dynamo=False,
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
