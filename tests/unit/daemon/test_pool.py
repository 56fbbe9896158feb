"""``add_pool_file`` against the store: all rows or none, nothing twice, and a label never overwritten by a seed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from daemon.errors import PoolFileError
from daemon.pool import add_pool_file, byo_hash, byo_model_key
from daemon.settings import PoolSettings
from daemon.store import KeyValue, LabelEvent, LabelRecord, LabelStatus, PoolItem, get_value
from models.cache import EmbeddingCache


def write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def add(engine: Engine, path: Path, tmp_path: Path) -> tuple[int, int]:
    report = add_pool_file(engine, path, pool=PoolSettings(), data_dir=tmp_path / "state")
    return report.added, report.labels_added


def snapshot(engine: Engine) -> tuple[object, ...]:
    with Session(engine) as session:
        counts = [session.exec(select(func.count()).select_from(model)).one()
                  for model in (PoolItem, LabelRecord, LabelEvent, KeyValue)]
        return (*counts, get_value(session, "embedding_source"))


def test_a_conflict_anywhere_in_the_file_leaves_the_store_as_it_was(engine: Engine, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "first.jsonl", [{"id": "a", "text": "hello", "label": "ham"}, {"id": "b", "text": "win"}])
    assert add(engine, tmp_path / "first.jsonl", tmp_path) == (2, 1)
    before = snapshot(engine)
    rows = [{"id": f"n{i}", "text": f"new {i}", "label": "spam"} for i in range(50)]
    write_jsonl(tmp_path / "second.jsonl", [*rows, {"id": "b", "text": "win big"}])
    with pytest.raises(PoolFileError, match=r"line 51: id 'b' is already in the pool with another text\. An id "
                                            r"keeps the text it came with, removed or not .*give edited texts new ids"):
        add(engine, tmp_path / "second.jsonl", tmp_path)  # what to do was not said (QA)
    assert snapshot(engine) == before


def test_new_items_carry_their_file_and_one_import_time(engine: Engine, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "hello", "lang": "en"}, {"id": "b", "text": "hallo"}])
    add(engine, tmp_path / "pool.jsonl", tmp_path)
    with Session(engine) as session:
        items = list(session.exec(select(PoolItem).order_by(col(PoolItem.seq))))
    assert [(i.item_id, i.source, json.loads(i.meta_json)) for i in items] == [
        ("a", "pool.jsonl", {"lang": "en"}), ("b", "pool.jsonl", {})]
    assert items[0].created_at == items[1].created_at and not items[0].is_embedded


def test_a_seed_label_never_replaces_a_label_from_label_studio(engine: Engine, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "hello"}])
    add(engine, tmp_path / "pool.jsonl", tmp_path)
    with Session(engine) as session:
        session.add(LabelRecord(item_id="a", status=LabelStatus.LABELED, label="spam", source="label_studio"))
        session.commit()
    write_jsonl(tmp_path / "seeded.jsonl", [{"id": "a", "text": "hello", "label": "ham"},
                                            {"id": "c", "text": "lunch?", "label": "ham"}])
    assert add(engine, tmp_path / "seeded.jsonl", tmp_path) == (1, 1)
    assert add(engine, tmp_path / "seeded.jsonl", tmp_path) == (0, 0)  # nothing twice
    with Session(engine) as session:
        assert {r.item_id: (r.label, r.source) for r in session.exec(select(LabelRecord))} == {
            "a": ("spam", "label_studio"), "c": ("ham", "seed")}
        assert [e.item_id for e in session.exec(select(LabelEvent))] == ["c"]
    report = add_pool_file(engine, tmp_path / "seeded.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state")
    assert report.labels_differing == 1  # said, not silently dropped
    assert report.labels_differing_first == ("line 1: id 'a' is 'spam' in the store, 'ham' here",)


def test_labels_that_differ_only_in_case_are_refused_when_no_classes_are_declared(
    engine: Engine, tmp_path: Path
) -> None:
    """With no classes declared the project would get a class per spelling: spam, Spam and SPAM."""
    write_jsonl(tmp_path / "mixed.jsonl", [{"id": "a", "text": "x", "label": "spam"},
                                           {"id": "b", "text": "y", "label": "ham"},
                                           {"id": "c", "text": "z", "label": "Spam"}])
    with pytest.raises(PoolFileError, match=r"line 3: labels 'spam' \(line 1\) and 'Spam' \(line 3\) differ only in "
                       r"case"):  # at the conflicting spelling's line, not the first's (QA)
        add(engine, tmp_path / "mixed.jsonl", tmp_path)
    write_jsonl(tmp_path / "three.jsonl", [{"id": "a", "text": "x", "label": "ham"},
                                           {"id": "b", "text": "y", "label": "SPAM"},
                                           {"id": "c", "text": "z", "label": "Spam"},
                                           {"id": "d", "text": "w", "label": "spam"}])
    with pytest.raises(PoolFileError, match=r"line 3: labels 'SPAM' \(line 2\), 'Spam' \(line 3\) and 'spam' "
                       r"\(line 4\) differ only in case"):
        add(engine, tmp_path / "three.jsonl", tmp_path)
    write_jsonl(tmp_path / "first.jsonl", [{"id": "a", "text": "x", "label": "spam"}])
    assert add(engine, tmp_path / "first.jsonl", tmp_path) == (1, 1)
    write_jsonl(tmp_path / "later.jsonl", [{"id": "d", "text": "w", "label": "ham"},
                                           {"id": "e", "text": "v", "label": "SPAM"}])
    with pytest.raises(PoolFileError, match=r"line 2: labels 'spam' \(in the pool\) and 'SPAM' \(line 2\) differ "
                       r"only in case"):
        add(engine, tmp_path / "later.jsonl", tmp_path)  # against the store's labels too
    write_jsonl(tmp_path / "again.jsonl", [{"id": "f", "text": "u", "label": "spam"},
                                           {"id": "g", "text": "t", "label": "Spam"}])
    with pytest.raises(PoolFileError, match=r"line 2: labels 'spam' \(line 1\) and 'Spam' \(line 2\) differ"):
        add(engine, tmp_path / "again.jsonl", tmp_path)  # the store's spelling, here on line 1 as well


def test_a_parquet_files_case_variants_and_changed_labels_are_named_by_row(engine: Engine, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "label": ["spam", "Spam"]}), path)
    with pytest.raises(PoolFileError, match=r"row 2: labels 'spam' \(row 1\) and 'Spam' \(row 2\) differ only"):
        add(engine, path, tmp_path)
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "label": ["spam"]}), path)
    assert add(engine, path, tmp_path) == (1, 1)
    pq.write_table(pa.table({"id": ["b", "a"], "text": ["y", "x"], "label": ["ham", "ham"]}), path)
    report = add_pool_file(engine, path, pool=PoolSettings(), data_dir=tmp_path)
    assert report.labels_differing_first == ("row 2: id 'a' is 'spam' in the store, 'ham' here",)


def test_own_vectors_are_cached_unit_length_and_a_pool_keeps_one_width(engine: Engine, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "vectors.jsonl", [{"id": "x", "embedding": [3.0, 4.0, 0.0]},
                                             {"id": "y", "embedding": [0.0, 0.0, 2.0]}])
    assert add(engine, tmp_path / "vectors.jsonl", tmp_path) == (2, 0)
    with EmbeddingCache(tmp_path / "state" / "embeddings", model_key=byo_model_key(3), dim=3) as cache:
        rows = cache.lookup([byo_hash("x"), byo_hash("y")])
        np.testing.assert_allclose(cache.get(rows), [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], atol=1e-3)
    before = snapshot(engine)
    write_jsonl(tmp_path / "wider.jsonl", [{"id": "z", "embedding": [1.0, 0.0, 0.0, 0.0]}])
    with pytest.raises(PoolFileError, match="embeddings of width 4 do not fit a pool of byo-d3"):
        add(engine, tmp_path / "wider.jsonl", tmp_path)
    write_jsonl(tmp_path / "texts.jsonl", [{"id": "t", "text": "plain"}])
    with pytest.raises(PoolFileError, match="the pool holds precomputed embeddings"):
        add(engine, tmp_path / "texts.jsonl", tmp_path)
    assert snapshot(engine) == before


def test_an_id_added_again_with_another_vector_keeps_the_stores_and_says_so(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-adding 1,000 ids with new vectors said "1000 already in the pool" and nothing else (QA)."""
    monkeypatch.setattr("daemon.pool_staging._VECTOR_ROWS", 2)  # compared a few at a time
    rows = [{"id": f"v{n}", "embedding": [1.0, float(n), 0.5]} for n in range(5)]
    write_jsonl(tmp_path / "first.jsonl", rows)
    add_pool_file(engine, tmp_path / "first.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state")
    again = [{**row, "embedding": [2.0, 2.0 * n, 1.0]} for n, row in enumerate(rows)]  # longer, same direction
    again[1]["embedding"], again[4]["embedding"] = [0.0, 1.0, 0.0], [1.0, 0.0, 9.0]
    write_jsonl(tmp_path / "again.jsonl", [*again, {"id": "new", "embedding": [0.0, 0.0, 1.0]}])
    report = add_pool_file(engine, tmp_path / "again.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state")
    assert (report.added, report.vectors_differing) == (1, 2)
    assert report.vectors_differing_first == ("line 2: id 'v1'", "line 5: id 'v4'")
    with EmbeddingCache(tmp_path / "state" / "embeddings", model_key=byo_model_key(3), dim=3) as cache:
        kept = cache.get(cache.lookup([byo_hash("v1")]))[0]
    np.testing.assert_allclose(kept, np.asarray([1.0, 1.0, 0.5]) / 1.5, atol=1e-3)  # the store's, not [0, 1, 0]


@pytest.mark.parametrize("via", ["driver", "sqlalchemy"])
def test_repeats_collapse_and_each_new_item_gets_its_own_vector_across_chunks(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    monkeypatch.setattr("daemon.pool_staging._STAGE_ROWS", 2)  # rows staged, and vectors read back,
    monkeypatch.setattr("daemon.pool_staging._VECTOR_ROWS", 3)  # a few at a time
    if via == "sqlalchemy":  # a driver whose parameter style the fast path does not write
        monkeypatch.setattr("daemon.pool_staging._driver_insert", lambda conn: None)
    write_jsonl(tmp_path / "first.jsonl", [{"id": "b", "embedding": [0.0, 1.0]}])
    add(engine, tmp_path / "first.jsonl", tmp_path)
    angles = {f"i{k}": k / 10 for k in range(8)}
    rows = [{"id": item_id, "embedding": [np.cos(a), np.sin(a)], "label": "x"} for item_id, a in angles.items()]
    repeated = [rows[0], {"id": "b", "embedding": [0.0, 1.0], "label": "x"}, *rows[1:4], rows[2], *rows[4:]]
    write_jsonl(tmp_path / "second.jsonl", repeated)
    report = add_pool_file(engine, tmp_path / "second.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state")
    assert (report.rows, report.added, report.already_present, report.labels_added) == (9, 8, 1, 9)
    assert report.repeated_rows == 1  # said, not hidden in the count
    with Session(engine) as session:
        assert list(session.exec(select(PoolItem.item_id).order_by(col(PoolItem.seq)))) == ["b", *angles]
    with EmbeddingCache(tmp_path / "state" / "embeddings", model_key=byo_model_key(2), dim=2) as cache:
        got = cache.get(cache.lookup([byo_hash(item_id) for item_id in angles]))
    want = [[np.cos(a), np.sin(a)] for a in angles.values()]
    np.testing.assert_allclose(got, want, atol=2e-3)  # float16 in the cache


def test_the_file_is_streamed_not_held_in_memory(engine: Engine, tmp_path: Path) -> None:
    """Python's peak memory for a file 4× larger stays about the same (it grew 4× when the file was read whole)."""
    import tracemalloc

    peaks = []
    for n, name in ((5_000, "small"), (20_000, "large")):
        rows = [{"id": f"{name}{i}", "text": f"item {i} of the {name} file " * 4, "label": "a", "n": i}
                for i in range(n)]
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
        tracemalloc.start()
        add(engine, tmp_path / f"{name}.jsonl", tmp_path)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_progress_hears_rows_read_then_checking_then_writing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daemon.pool_staging._STAGE_ROWS", 2)
    rows = [{"id": f"i{k}", "text": f"text {k}"} for k in range(5)]
    write_jsonl(tmp_path / "pool.jsonl", [*rows, rows[0]])  # six rows read, five items
    heard: list[tuple[str, int]] = []
    add_pool_file(engine, tmp_path / "pool.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state",
                  progress=lambda phase, rows: heard.append((phase, rows)))
    assert heard == [("reading", 2), ("reading", 4), ("reading", 6), ("checking", 5), ("writing", 5)]


_KILLED_IMPORT = """
import os, signal, sys
from pathlib import Path
import daemon.pool_staging as staging
from daemon.pool import add_pool_file
from daemon.settings import PoolSettings
from daemon.store import make_engine

staging._VECTOR_ROWS = 2
calls = {"n": 0}
def die_at(name, original, on_call):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no rollback from Python: as a power cut
        return original(*args, **kwargs)
    return wrapper
where = sys.argv[3]
if where == "writing":  # inside the write transaction: the items are inserted, the labels not yet
    staging.StagedFile.insert_seed_labels = die_at(where, staging.StagedFile.insert_seed_labels, 1)
else:  # between two chunks of vectors written to the embedding cache, before any row
    staging._read_rows = die_at(where, staging._read_rows, 2)
add_pool_file(make_engine(sys.argv[1]), Path(sys.argv[2]), pool=PoolSettings(), data_dir=Path(sys.argv[4]))
"""


@pytest.mark.parametrize("where", ["writing", "caching vectors"])
def test_an_import_killed_at_the_worst_moment_leaves_nothing_and_reruns_whole(
    engine: Engine, tmp_path: Path, where: str
) -> None:
    import subprocess
    import sys

    rows = [{"id": f"i{k}", "text": f"text {k}", "label": "a" if k % 2 else None,
             "embedding": [1.0, float(k), 0.5]} for k in range(7)]
    write_jsonl(tmp_path / "pool.jsonl", rows)
    before = snapshot(engine)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_IMPORT, str(engine.url), str(tmp_path / "pool.jsonl"), where,
         str(tmp_path / "state")], capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert snapshot(engine) == before  # not one item, label or setting of the killed import
    report = add_pool_file(engine, tmp_path / "pool.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state")
    assert (report.added, report.labels_added) == (7, 3)
    with EmbeddingCache(tmp_path / "state" / "embeddings", model_key=byo_model_key(3), dim=3) as cache:
        got = cache.get(cache.lookup([byo_hash(f"i{k}") for k in range(7)]))
    want = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=2e-3)


@pytest.mark.parametrize("other_has_vectors", [False, True])
def test_an_import_that_commits_while_another_checks_cannot_break_it(
    engine: Engine, tmp_path: Path, other_has_vectors: bool
) -> None:
    """Two imports into a new store both checked the pool's kind of vectors on the empty store: the second to
    write mixed texts into a pool of own vectors, or crashed on the key's UNIQUE constraint when the two
    writes interleaved. The second now decides under the write lock."""
    write_jsonl(tmp_path / "texts.jsonl", [{"id": "t1", "text": "hello"}])
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "o1", "text": "win", "embedding": [1.0, 0.0]}]
                        if other_has_vectors else [{"id": "o1", "text": "win"}])

    def the_other_import_lands(phase: str, _rows: int) -> None:
        if phase == "writing":  # this import's checks are done; its write has not begun
            add(engine, other, tmp_path)

    def ours() -> object:
        return add_pool_file(engine, tmp_path / "texts.jsonl", pool=PoolSettings(), data_dir=tmp_path / "state",
                             progress=the_other_import_lands)

    if other_has_vectors:
        with pytest.raises(PoolFileError, match="the pool holds precomputed embeddings: this file has none"):
            ours()
    else:
        ours()
    with Session(engine) as session:
        ids = set(session.exec(select(PoolItem.item_id)))
    assert ids == ({"o1"} if other_has_vectors else {"o1", "t1"})
