"""The ONNX export cache on the real bundled MiniLM: damaged files are exported again, dead exports are swept."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from models import _onnx_export
from models._onnx_export import digest_path, is_intact
from models.errors import EmbedderUnavailable
from models.onnx_embedder import OnnxEmbedder
from tests.unit.models.conftest import row_cosines

SENTENCES = ["My card still has not arrived.", "How do I reset my PIN?", "The cat sat on the mat in the sun.", "", "Hi"]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def exported(fp32: OnnxEmbedder) -> OnnxEmbedder:
    """The module's fp32 embedder with its file exported (before any test counts exports)."""
    fp32.encode(["warm-up"])
    return fp32


def _copy(fp32: OnnxEmbedder, cache: Path) -> OnnxEmbedder:
    """An fp32 embedder on ``cache`` holding a copy of the module's export and its digest."""
    embedder = OnnxEmbedder(cache_dir=cache, precision="fp32")
    embedder.onnx_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fp32.onnx_path, embedder.onnx_path)
    shutil.copyfile(digest_path(fp32.onnx_path), digest_path(embedder.onnx_path))
    return embedder


def _damage(path: Path, *, at: float, size: int, fill: bytes | None = None) -> None:
    """Overwrite ``size`` bytes at fraction ``at`` of the file: ``fill`` repeated, or seeded random bytes."""
    data = bytearray(path.read_bytes())
    offset = int(len(data) * at)
    data[offset : offset + size] = fill * size if fill is not None else np.random.default_rng(7).bytes(size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("at", "size"),
    [(1 / 3, 4096), (0.7, 65536)],  # word-embedding rows no test text uses (it still loads, same vectors); NaN out
    ids=["4KB-at-a-third", "64KB-at-70pc"],
)
def test_a_damaged_file_that_still_loads_is_exported_again(
    exported: OnnxEmbedder, tmp_path: Path, export_calls: list[Path], at: float, size: int
) -> None:
    expected = exported.encode(SENTENCES)
    embedder = _copy(exported, tmp_path)
    _damage(embedder.onnx_path, at=at, size=size)
    assert not is_intact(embedder.onnx_path)
    vectors = embedder.encode(SENTENCES)
    assert export_calls == [embedder.onnx_path]
    assert is_intact(embedder.onnx_path)
    assert embedder.onnx_path.read_bytes() == exported.onnx_path.read_bytes()
    assert row_cosines(vectors, expected).min() >= 0.9999


def test_a_file_without_a_digest_is_exported_again(
    exported: OnnxEmbedder, tmp_path: Path, export_calls: list[Path]
) -> None:
    embedder = _copy(exported, tmp_path)
    digest_path(embedder.onnx_path).unlink()  # intact bytes as an older labelloop left them: no digest to trust
    embedder.encode(["hello"])
    assert export_calls == [embedder.onnx_path]
    assert is_intact(embedder.onnx_path)


def test_non_finite_vectors_are_an_error_not_a_result(
    exported: OnnxEmbedder, tmp_path: Path, export_calls: list[Path]
) -> None:
    embedder = _copy(exported, tmp_path)
    _damage(embedder.onnx_path, at=0.7, size=65536, fill=b"\xff")  # 0xffffffff is a NaN
    digest = hashlib.sha256(embedder.onnx_path.read_bytes()).hexdigest()
    digest_path(embedder.onnx_path).write_text(f"{digest}  {embedder.onnx_path.name}\n", encoding="ascii")
    with pytest.raises(EmbedderUnavailable, match="non-finite vectors for 2 of 2 texts") as caught:
        embedder.encode(SENTENCES[:2])  # damaged before its digest was recorded: only the output shows it
    assert "\n" not in str(caught.value)
    assert export_calls == []


def _backdate(folder: Path, age_s: float) -> None:
    then = time.time() - age_s
    for entry in [folder, *folder.iterdir()]:
        os.utime(entry, (then, then))


def test_an_export_removes_the_work_folders_of_dead_exports_only(tmp_path: Path) -> None:
    script = f"from models.onnx_embedder import OnnxEmbedder; OnnxEmbedder(cache_dir={str(tmp_path)!r}).encode(['x'])"
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".export-*/owner.lock")) and child.poll() is None:
            assert time.monotonic() < deadline, "the child export never started"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (killed,) = tmp_path.glob(".export-*")
    legacy_old, legacy_recent = tmp_path / ".export-legacyold", tmp_path / ".export-legacynew"
    for legacy in (legacy_old, legacy_recent):
        legacy.mkdir()
        (legacy / "raw.onnx").write_bytes(b"partial")
    with _onnx_export._work_folder(tmp_path) as live:  # a live export in this process holds its lock
        _backdate(killed, 120)
        _backdate(live, 120)
        _backdate(legacy_old, 11 * 60)  # no owner.lock (made before exporters locked): idle ten minutes
        _backdate(legacy_recent, 120)
        embedder = OnnxEmbedder(cache_dir=tmp_path)
        embedder.encode(["hello"])
        assert sorted(p.name for p in tmp_path.glob(".export-*")) == sorted([live.name, legacy_recent.name])
    assert is_intact(embedder.onnx_path)
    assert sorted(p.name for p in tmp_path.glob(".export-*")) == [legacy_recent.name]


def test_loading_a_cached_file_removes_the_work_folders_of_dead_exports_only(
    exported: OnnxEmbedder, tmp_path: Path, export_calls: list[Path]
) -> None:
    """A SIGKILLed `labelloop embed` left its folder for good once the file was exported: no later export came (QA)."""
    embedder = _copy(exported, tmp_path)
    folder = embedder.onnx_path.parent
    dead = Path(tempfile.mkdtemp(dir=folder, prefix=".export-"))
    (dead / "owner.lock").write_text("12345\n")  # nobody holds its lock: its exporter died
    with _onnx_export._work_folder(folder) as live:
        _backdate(dead, 120)
        _backdate(live, 120)
        embedder.encode(["hello"])
        assert [p.name for p in folder.glob(".export-*")] == [live.name]
    assert export_calls == []
