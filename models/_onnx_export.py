"""Write the ONNX file an ``OnnxEmbedder`` loads: export, BERT fusions, optional int8 quantisation, key tag.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) on the model loaded
with eager attention. It needs nothing beyond torch, takes about a second, and produces the
attention pattern ORT's BERT optimizer fuses; the torch.export-based exporter (torch's default
since 2.9) needs ``onnxscript``, takes several seconds, and its graph does not fuse to ORT's
``Attention`` op.

Publishing: the file is built in a private ``.export-*`` folder beside its final path and renamed into
place, then its SHA-256 is published beside it (``<file>.sha256``, ``sha256sum`` format). A loader
that finds no digest, or one the file no longer matches, treats the file as damaged and exports
again: a partial overwrite can leave a file that still loads but yields wrong or NaN vectors. Each
work folder holds an ``flock`` on its ``owner.lock`` for the exporter's life (the kernel drops it
when the process dies, SIGKILL included), so a later export or load of a cached file removes the
folders of dead exporters and never those of live ones.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

from models._model_files import quiet_weight_loading
from models.errors import EmbedderUnavailable

__all__ = ["KEY_PROP", "OPSET", "RECIPE", "digest_path", "export", "import_onnx", "is_intact", "sweep_abandoned"]

log = logging.getLogger(__name__)

RECIPE = "v1-eager-bertfuse-int8pc-xffn2"  # bump when the export or quantisation recipe changes
OPSET = 17
KEY_PROP = "labelloop_key"  # model metadata entry holding the export key the file was made for
# The FFN's second dense layer (intermediate -> hidden) stays fp32 in int8: its GELU inputs have outliers
# that per-tensor activation quantisation handles badly (min cosine to fp32 0.987 quantised, 0.995 left out).
_FFN_OUT = re.compile(r"layer\.\d+/output/dense/MatMul$")
_INSTALL_HINT = "install the ONNX extra: pip install 'labelloop[onnx]'"
_WORK_PREFIX = ".export-"
_OWNER_LOCK = "owner.lock"
# A work folder younger than this is never removed: its exporter may be between creating it and locking it.
_LOCK_GRACE_S = 60.0
# A work folder with no owner.lock (made before exporters locked theirs) is abandoned once nothing in it
# has changed for this long; exporting even a large encoder writes a new file every few seconds to minutes.
_UNLOCKED_IDLE_S = 600.0


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


def digest_path(path: Path) -> Path:
    """Where the SHA-256 of the ONNX file at ``path`` is recorded: ``<path>.sha256``."""
    return path.with_name(path.name + ".sha256")


def is_intact(path: Path) -> bool:
    """Whether ``path`` and its recorded digest exist and the file's SHA-256 still matches it.

    Costs one read of the file (about 0.1 s for MiniLM's 90 MB, from the page cache).
    """
    try:
        recorded = digest_path(path).read_text(encoding="ascii").split()
        actual = _sha256(path)
    except (OSError, UnicodeDecodeError):
        return False
    return bool(recorded) and recorded[0] == actual


def export(source: Path, path: Path, *, key: str, precision: str) -> None:
    """Export, fuse, maybe quantise, tag with ``key``; publish at ``path`` (rename), then its digest.

    First removes the work folders that dead exports left in ``path``'s folder (:func:`sweep_abandoned`).

    Raises:
        EmbedderUnavailable: the model cannot be loaded, exported, optimised or quantised.
    """
    _, onnx = import_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(path.parent)
    with _work_folder(path.parent) as work:
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
            (work / "tagged.sha256").write_text(f"{_sha256(work / 'tagged.onnx')}  {path.name}\n", encoding="ascii")
        except (RuntimeError, ValueError, TypeError, KeyError, OSError) as e:
            raise EmbedderUnavailable(f"cannot export the model in {source} to ONNX ({precision}): {e}") from e
        # Exports are byte-identical for one key, so two exporters racing here publish the same pair.
        os.replace(work / "tagged.onnx", path)
        os.replace(work / "tagged.sha256", digest_path(path))


def sweep_abandoned(folder: Path) -> None:
    """Remove the ``.export-*`` work folders in ``folder`` whose exporter has died.

    Abandoned means: its ``owner.lock`` exists and nobody holds it (and nothing in it changed for a
    minute), or it has no ``owner.lock`` and nothing in it changed for ten minutes. Live exports,
    in this process or another, keep their lock and are left alone.
    """
    now_s = time.time()
    for work in folder.glob(f"{_WORK_PREFIX}*"):
        if not work.is_dir():
            continue
        idle_s = now_s - _last_change_s(work)
        if idle_s < _LOCK_GRACE_S:
            continue
        try:
            fd = os.open(work / _OWNER_LOCK, os.O_RDWR)
        except FileNotFoundError:
            if idle_s >= _UNLOCKED_IDLE_S:
                _remove(work)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live exporter (or locks unsupported here): not ours to judge
            os.close(fd)
            continue
        try:
            _remove(work)
        finally:
            os.close(fd)


@contextmanager
def _work_folder(parent: Path) -> Iterator[Path]:
    """A fresh ``.export-*`` folder in ``parent``, locked for as long as it exists, removed on exit."""
    work = Path(tempfile.mkdtemp(dir=parent, prefix=_WORK_PREFIX))
    fd = os.open(work / _OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a file system without locks: export anyway; sweeps then skip this folder
            log.debug("cannot lock %s: %s", work, e)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)  # whatever stays behind, a later sweep removes
        os.close(fd)


def _last_change_s(work: Path) -> float:
    """The latest modification time of ``work`` and its entries (an export rewrites them as it goes)."""
    try:
        return max([work.stat().st_mtime, *(entry.stat().st_mtime for entry in work.iterdir())])
    except OSError:  # removed meanwhile, or unreadable
        return time.time()


def _remove(work: Path) -> None:
    try:
        shutil.rmtree(work)
    except FileNotFoundError:  # another export removed it first
        return
    except OSError as e:
        log.warning("cannot remove the abandoned ONNX export folder %s: %s", work, e)
        return
    log.info("removed the abandoned ONNX export folder %s", work)


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _export_fp32(source: Path, target: Path) -> None:
    quiet_weight_loading()
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
