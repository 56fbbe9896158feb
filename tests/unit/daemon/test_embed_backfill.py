"""The embed backfill: dtype/threads settings wiring, resuming after a kill, progress, ``labelloop embed``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlmodel import Session, col, func, select
from typer.testing import CliRunner

import daemon.app
from connectors.fake import FakeConnector
from daemon.app import apply_torch_threads
from daemon.cli import app
from daemon.context import LoopContext, default_embedder_factory
from daemon.pool import add_pool_file
from daemon.progress import ProgressLog, eta_text
from daemon.settings import Settings, load_settings
from daemon.store import PoolItem, make_engine
from daemon.training import embed_pool
from models.embedder import Embedder, TransformerEmbedder
from tests.doubles import CountingEmbedder

runner = CliRunner()


def settings_for(tmp_path: Path, **model: object) -> Settings:
    return load_settings(
        None,
        store={"url": f"sqlite:///{tmp_path}/state/db.sqlite", "data_dir": str(tmp_path / "state")},
        model=model,
    )


def write_pool(path: Path, n: int) -> None:
    path.write_text("".join(f'{{"id": "it-{i}", "text": "item number {i} text"}}\n' for i in range(n)))


def context(settings: Settings, embedder: Embedder) -> LoopContext:
    return LoopContext(settings=settings, engine=make_engine(settings.store.url), connector=FakeConnector(),
                       embedder_factory=lambda: embedder)


def unembedded(ctx: LoopContext) -> int:
    with Session(ctx.engine) as session:
        return session.exec(select(func.count()).where(col(PoolItem.is_embedded).is_(False))).one()


def test_dtype_setting_reaches_the_embedder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_for(tmp_path).model.dtype == "fp32"
    monkeypatch.setenv("LABELLOOP_MODEL__DTYPE", "auto")
    embedder = default_embedder_factory(settings_for(tmp_path))()
    assert isinstance(embedder, TransformerEmbedder) and embedder.dtype == "auto"
    with pytest.raises(Exception, match="dtype"):
        settings_for(tmp_path, dtype="int8", backend="torch")


def test_torch_threads_is_applied_only_when_set(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        apply_torch_threads(settings_for(tmp_path))
        assert torch.get_num_threads() == before
        apply_torch_threads(settings_for(tmp_path, torch_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_backfill_killed_after_a_chunk_resumes_with_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("daemon.training._FIRST_CHUNK", 8)
    monkeypatch.setattr("daemon.training._MAX_CHUNK", 8)
    settings = settings_for(tmp_path)
    write_pool(tmp_path / "pool.jsonl", 20)
    first = context(settings, CountingEmbedder(dim=16, fail_on_call=2))
    add_pool_file(first.engine, tmp_path / "pool.jsonl", pool=settings.pool, data_dir=settings.store.data_dir)
    with pytest.raises(RuntimeError, match="killed midway"):
        embed_pool(first)
    assert unembedded(first) == 12  # the first chunk is cached and marked
    for cache in first._caches.values():
        cache.close()  # the "killed" process lets go of the cache's writer lock

    rerun_embedder = CountingEmbedder(dim=16)
    rerun = context(settings, rerun_embedder)
    seen: list[tuple[int, int]] = []
    assert embed_pool(rerun, progress=lambda done, total: seen.append((done, total))) == 12
    assert len(rerun_embedder.encoded) == 12  # only the rest was encoded
    assert unembedded(rerun) == 0
    assert seen == [(0, 12), (8, 12), (12, 12)]  # increasing counts, the right total


def test_chunks_start_small_and_grow_to_a_few_seconds_of_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One 2,048-item chunk took 40 s on a CPU: the bar showed no rate and an interruption lost it all."""
    monkeypatch.setattr("daemon.training._FIRST_CHUNK", 4)
    monkeypatch.setattr("daemon.training._MAX_CHUNK", 16)
    monkeypatch.setattr("daemon.training._CHUNK_S", 2.0)
    ticks = iter(range(1000))
    monkeypatch.setattr("daemon.training._clock", lambda: float(next(ticks)))  # every chunk takes 1 s
    settings = settings_for(tmp_path)
    write_pool(tmp_path / "pool.jsonl", 40)
    ctx = context(settings, CountingEmbedder(dim=16))
    add_pool_file(ctx.engine, tmp_path / "pool.jsonl", pool=settings.pool, data_dir=settings.store.data_dir)
    seen: list[tuple[int, int]] = []
    assert embed_pool(ctx, progress=lambda done, total: seen.append((done, total))) == 40
    assert [done for done, _ in seen] == [0, 4, 12, 28, 40]  # chunks of 4, 8, 16 (the cap), then the rest


def test_progress_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    report = ProgressLog(logging.getLogger("test.progress"), "items", interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for done, at in [(100, 4.0), (200, 10.0), (300, 15.0), (400, 20.0)]:
            now[0] = at
            report(done, 1000)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["200/1000 items (20/s, ETA 40s)", "400/1000 items (20/s, ETA 30s)"]
    assert eta_text(3725) == "1h02m" and eta_text(185) == "3m05s"


def test_embed_command_on_a_tiny_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_LABEL_STUDIO__API_KEY", raising=False)  # needs no token
    embedder = CountingEmbedder(dim=16)

    def factory(settings: Settings) -> Callable[[], Embedder]:
        return lambda: embedder

    monkeypatch.setattr(daemon.app, "default_embedder_factory", factory)
    assert runner.invoke(app, ["init", "--classes", "a,b"]).exit_code == 0
    write_pool(tmp_path / "pool.jsonl", 5)
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0

    result = runner.invoke(app, ["embed"])
    assert result.exit_code == 0, result.output
    assert "embedded 5 pool items" in result.output and len(embedder.encoded) == 5
    again = runner.invoke(app, ["embed"])
    assert again.exit_code == 0 and "already has a vector" in again.output
    assert len(embedder.encoded) == 5

    from daemon.service import InstanceLock
    from daemon.settings import load_settings

    settings = load_settings(tmp_path / "labelloop.toml")
    lock = InstanceLock.for_store(settings.store.url, settings.store.data_dir)
    lock.acquire()  # as a running daemon holds it
    try:
        refused = runner.invoke(app, ["embed"])
    finally:
        lock.release()
    assert refused.exit_code == 3 and "stop the daemon" in refused.output
    assert "embedding" not in refused.output  # no progress bar drawn before the refusal
