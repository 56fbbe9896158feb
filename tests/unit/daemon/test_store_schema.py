"""The store's schema version: stamped when made; a newer or incomplete store refused untouched; steps run in order."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection
from sqlmodel import Session, select

from daemon import store
from daemon.cli import app
from daemon.errors import StoreUnavailable
from daemon.store import SCHEMA_VERSION, KeyValue, make_engine, set_value
from tests.unit.daemon.test_cli import runner, workdir

__all__ = ["workdir"]  # a fixture, used by name


def _sql(path: Path, *statements: str) -> list[tuple[object, ...]]:
    """Run statements on the file with plain sqlite3 (autocommit); return the last one's rows."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        rows: list[tuple[object, ...]] = []
        for statement in statements:
            rows = db.execute(statement).fetchall()
        return rows
    finally:
        db.close()


def _version(path: Path) -> int:
    return int(str(_sql(path, "PRAGMA user_version")[0][0]))


def _tables(path: Path) -> set[str]:
    return {str(row[0]) for row in _sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _with_label_kept(path: Path) -> None:
    engine = make_engine(_url(path))
    with Session(engine) as session:
        set_value(session, "kept", "yes")
        session.commit()
    engine.dispose()


def test_a_new_store_is_stamped_with_this_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    make_engine(_url(path)).dispose()
    assert SCHEMA_VERSION >= 1 and _version(path) == SCHEMA_VERSION


def test_a_store_from_a_newer_labelloop_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _with_label_kept(path)
    _sql(path, "DROP TABLE healthevent", f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match=rf"written by a newer labelloop \(store schema {SCHEMA_VERSION + 1}; "
                                                  rf"this one reads up to {SCHEMA_VERSION}\).*nothing was changed"):
        make_engine(_url(path))
    assert "healthevent" not in _tables(path) and _version(path) == SCHEMA_VERSION + 1


def test_a_negative_version_is_no_labelloop_store_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _with_label_kept(path)
    _sql(path, "PRAGMA user_version = -1")
    with pytest.raises(StoreUnavailable, match=r"a layout version labelloop never writes \(-1\)"):
        make_engine(_url(path))
    assert _version(path) == -1


def test_an_unstamped_store_with_every_column_is_stamped_and_gets_missing_indexes(tmp_path: Path) -> None:
    """A store made before the stamp existed: its data stays, an index added since is built, the stamp is set."""
    path = tmp_path / "s.db"
    _with_label_kept(path)
    _sql(path, "DROP INDEX ix_batchitem_remote", "PRAGMA user_version = 0")
    engine = make_engine(_url(path))
    with Session(engine) as session:
        assert session.exec(select(KeyValue.value).where(KeyValue.key == "kept")).one() == "yes"
    assert _version(path) == SCHEMA_VERSION
    assert _sql(path, "SELECT name FROM sqlite_master WHERE name = 'ix_batchitem_remote'") == [("ix_batchitem_remote",)]


def test_an_unstamped_store_missing_a_column_is_refused_by_name_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _with_label_kept(path)
    _sql(path, "ALTER TABLE batchitem DROP COLUMN predicted_score", "DROP TABLE healthevent", "PRAGMA user_version = 0")
    with pytest.raises(StoreUnavailable, match=r"lacks batchitem\.predicted_score: export its labels .*nothing was "
                                                 r"changed"):
        make_engine(_url(path))
    assert "healthevent" not in _tables(path) and _version(path) == 0  # the refused upgrade was rolled back


def test_a_store_at_an_older_version_runs_each_step_in_order_then_is_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    _with_label_kept(path)
    ran: list[int] = []

    def step(n: int) -> Callable[[Connection], None]:
        def migrate(conn: Connection) -> None:
            ran.append(n)
            conn.exec_driver_sql(f"CREATE TABLE step_{n} (x INTEGER)")
        return migrate

    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    monkeypatch.setattr(store, "_MIGRATIONS", {SCHEMA_VERSION: step(SCHEMA_VERSION), SCHEMA_VERSION + 1: step(
        SCHEMA_VERSION + 1)})
    make_engine(_url(path)).dispose()
    assert ran == [SCHEMA_VERSION, SCHEMA_VERSION + 1] and _version(path) == SCHEMA_VERSION + 2
    make_engine(_url(path)).dispose()
    assert len(ran) == 2  # a stamped store runs no step again


def test_a_failing_step_leaves_the_store_at_its_old_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.db"
    _with_label_kept(path)

    def first(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER TABLE keyvalue ADD COLUMN note TEXT DEFAULT ''")

    def second(conn: Connection) -> None:
        raise RuntimeError("killed here")

    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    monkeypatch.setattr(store, "_MIGRATIONS", {SCHEMA_VERSION: first, SCHEMA_VERSION + 1: second})
    with pytest.raises(RuntimeError, match="killed here"):
        make_engine(_url(path))
    assert _version(path) == SCHEMA_VERSION
    assert "note" not in {row[1] for row in _sql(path, "PRAGMA table_info(keyvalue)")}


def test_the_cli_says_a_newer_store_cannot_be_read(workdir: Path) -> None:
    path = workdir / ".labelloop" / "labelloop.db"
    _sql(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1, result.output
    assert "written by a newer labelloop" in result.output and "Traceback" not in result.output


def test_init_force_on_a_store_it_refuses_leaves_the_config_file_as_it_was(workdir: Path) -> None:
    """QA: `init --force` rewrote labelloop.toml, then said the store was refused and "nothing was changed"."""
    config = workdir / "labelloop.toml"
    before = config.read_bytes()
    _sql(workdir / ".labelloop" / "labelloop.db", f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    result = runner.invoke(app, ["init", "--force", "--classes", "x,y"])
    assert result.exit_code == 1 and "written by a newer labelloop" in result.output
    assert config.read_bytes() == before


def test_a_store_in_a_folder_nobody_may_write_is_read_as_a_snapshot(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: on a read-only mount `status` and `export` failed with "unable to open database file" (SQLite makes a
    -shm file beside a WAL store). Checked by hand on a real read-only bind mount; here the folder check says no."""
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n{"id": "b", "text": "win"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    path = workdir / ".labelloop" / "labelloop.db"
    _sql(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    before = path.read_bytes()
    monkeypatch.setattr(store, "_folder_writable", lambda folder: False)
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["pool"]["items"] == 2
    assert runner.invoke(app, ["export", str(workdir.parent / "out.csv")]).exit_code == 0
    refused = runner.invoke(app, ["pool", "add", "pool.jsonl"])  # a write is refused, and says why
    assert refused.exit_code == 1 and "readonly database" in refused.output
    assert path.read_bytes() == before and not path.with_name(path.name + "-shm").exists()


def test_an_emptied_store_file_is_refused_not_made_a_new_store(workdir: Path) -> None:
    """A truncated copy left a 0-byte file: every command made it a fresh store and reported an empty pool."""
    path = workdir / ".labelloop" / "labelloop.db"
    assert path.stat().st_size > 0  # init wrote the tables
    path.write_bytes(b"")
    for command in (["status"], ["export", "out.csv"], ["pool", "add", "missing.csv"], ["init", "--force"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        assert "is an empty file (0 bytes), not a labelloop store" in result.output
    assert path.stat().st_size == 0  # left as found
    path.unlink()
    make_engine(f"sqlite:///{path}").dispose()  # a store that is not there yet is still made
    assert _version(path) == SCHEMA_VERSION
