"""Add pool files to the store: all rows or none, and never the same item twice."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from daemon.errors import PoolFileError, position_word
from daemon.pool_files import MAX_PROBLEMS
from daemon.pool_staging import StagedFile, byo_hash, byo_model_key, stage_pool_file
from daemon.settings import PoolSettings
from daemon.store import LabelRecord, get_value, set_value, table_of
from daemon.wording import counted
from models.cache import EmbeddingCache

__all__ = ["ImportReport", "add_pool_file", "byo_hash", "byo_model_key", "known_classes"]

log = logging.getLogger(__name__)
_CLASSES_SHOWN = 12  # an unknown label's message lists at most this many classes


@dataclass(frozen=True, slots=True)
class ImportReport:
    path: str
    rows: int
    added: int
    already_present: int
    labels_added: int
    embedding_dim: int | None
    restored: int = 0  # of those already present: removed items brought back
    labels_differing: int = 0  # seed labels of items the store labels otherwise: not applied
    labels_differing_first: tuple[str, ...] = ()  # the first few, as "line N: id 'x' is 'a' in the store, 'b' here"
    repeated_rows: int = 0  # rows repeating an earlier row of the file exactly, kept once (not in ``rows``)
    vectors_differing: int = 0  # rows whose id the pool holds with another vector: the store's is kept
    vectors_differing_first: tuple[str, ...] = ()  # the first few, as "line N: id 'x'"


def known_classes(session: Session) -> list[str]:
    """Return the project's classes once they are known (from Label Studio or settings)."""
    raw = get_value(session, "classes")
    return list(json.loads(raw)) if raw else []


def add_pool_file(
    engine: Engine,
    path: Path,
    *,
    pool: PoolSettings,
    data_dir: Path,
    classes: Sequence[str] = (),
    progress: Callable[[str, int], None] | None = None,
) -> ImportReport:
    """Validate ``path`` completely, then add its new items and seed labels in one transaction.

    Items whose id is already in the pool are not added again; an existing id with a
    different text is an error. Seed labels must be classes: the project's once the daemon has
    bound one (its labeling config wins), else ``classes`` (``loop.classes``) when given; with
    neither, the seed labels will name the classes of the project the daemon creates.

    Items of the file that were removed (``labelloop pool remove``) come back.

    The file is streamed into a temporary table (:mod:`daemon.pool_staging`), so memory does
    not grow with it, and every read and check comes before the first write: the write
    transaction, which makes a running daemon's writes wait, holds only the inserts.

    ``progress(phase, rows)`` hears of each step: ``"reading"`` every few thousand rows, then
    ``"checking"`` and ``"writing"`` with the rows read.

    Raises:
        PoolFileError: the file or any row is malformed, or conflicts with the pool.
    """
    report_rows = progress or (lambda _phase, _rows: None)
    with Session(engine) as session:
        project_classes, source_so_far = known_classes(session), get_value(session, "embedding_source")
    reading = partial(report_rows, "reading")
    with engine.connect() as conn, stage_pool_file(conn, path, pool=pool, scratch_dir=data_dir,
                                                   on_rows=reading) as staged:
        report_rows("checking", staged.items)
        _check_against_store(staged, project_classes, classes, conn)
        differing, first_differing = staged.labels_differing()
        embedding_source = _embedding_source(path, staged.dim, source_so_far)
        vectors_differing: tuple[int, list[str]] = (0, [])
        if staged.dim is not None:  # before the rows: a crash leaves no dangling row
            vectors_differing = _cache_vectors(staged, embedding_source, data_dir)
        conn.commit()  # end the read transaction: the write below starts from a fresh snapshot
        now = datetime.now(UTC)
        report_rows("writing", staged.items)
        with Session(bind=conn) as session:
            _fast_bulk_writes(session)
            added = staged.insert_items(source=path.name, is_embedded=staged.dim is not None, now=now)
            # under the write lock now: an import that committed since the checks may have given the
            # pool its kind of vectors (two imports into a new store raced to write the key)
            _embedding_source(path, staged.dim, get_value(session, "embedding_source"))
            set_value(session, "embedding_source", embedding_source)
            labels = staged.insert_seed_labels(now=now)
            restored = staged.restore_removed()
            if added or restored:
                from daemon.pause import lift_pause

                lift_pause(session, _arrivals(added, restored), operator=False)
            session.commit()
        report = ImportReport(str(path), staged.items, added, staged.items - added, labels, staged.dim, restored,
                              differing, tuple(f"{position_word(path)} {line}: id {item_id!r} is {there!r} in the "
                                               f"store, {here!r} here"
                                               for line, item_id, here, there in first_differing), staged.repeats,
                              vectors_differing[0], tuple(vectors_differing[1]))
    log.info("pool file imported: %s rows, %s new, %s labels", report.rows, report.added, report.labels_added)
    return report


def _arrivals(added: int, restored: int) -> str:
    """Why a pause was lifted: ``3 new pool items``, ``1 removed pool item brought back`` or both (it said
    "1 new pool items" for an item a re-imported file brought back, QA)."""
    parts = [counted(added, "new pool item")] if added else []
    if restored:
        parts.append(f"{counted(restored, 'removed pool item')} brought back")
    return " and ".join(parts)


def _check_against_store(
    staged: StagedFile, project: Sequence[str], configured: Sequence[str], conn: Connection
) -> None:
    problems = staged.conflicts_with_store()
    advice = ("An id keeps the text it came with, removed or not (its labels and tasks belong to that text): "
              "give edited texts new ids" if problems else "")
    classes, origin = (project, "the project's classes") if project else (configured, "loop.classes")
    if classes:
        problems.extend(_unknown_labels(staged.label_lines(), classes, origin))
    else:
        problems.extend(_case_variants(staged.label_lines(), _store_labels(conn), position_word(staged.path)))
    if problems:
        raise PoolFileError(str(staged.path), sorted(problems, key=lambda problem: problem[0] or 0)[:MAX_PROBLEMS],
                            advice=advice)


def _unknown_labels(
    label_lines: dict[str, tuple[int, int]], classes: Sequence[str], origin: str
) -> list[tuple[int | None, str]]:
    """One problem per seed label that is not a class, at the first line it is on."""
    shown = ", ".join(classes[:_CLASSES_SHOWN])
    if len(classes) > _CLASSES_SHOWN:
        shown += f", … ({len(classes)} in all)"
    problems: list[tuple[int | None, str]] = []
    for label, (first_line, count) in label_lines.items():
        if label in classes:
            continue
        also = f" (and {count - 1} more rows)" if count > 1 else ""
        problems.append((first_line, f"unknown label {label!r}{also}: not one of {origin} ({shown})"))
    return problems


def _case_variants(
    label_lines: dict[str, tuple[int, int]], stored: Sequence[str], unit: str
) -> list[tuple[int | None, str]]:
    """With no classes declared, labels that differ only in case are one class spelled several ways
    (``spam``, ``Spam``): the project would get a class for each. One problem per such group, at the
    first line that brings in a second spelling (it was the first spelling's, where nothing is
    wrong: QA), naming each spelling's first line, or the pool for a spelling only the store has."""
    spellings: dict[str, set[str]] = {}
    for label in [*label_lines, *stored]:
        spellings.setdefault(label.casefold(), set()).add(label)
    problems: list[tuple[int | None, str]] = []
    for group in spellings.values():
        if len(group) > 1 and not group <= set(stored):  # a store that has them all already is not this file's doing
            in_store = sorted(name for name in group if name not in label_lines)  # the store's come first
            in_file = sorted((label_lines[name][0], name) for name in group if name in label_lines)
            named = [f"{name!r} (in the pool)" for name in in_store] + [f"{name!r} ({unit} {line})"
                                                                        for line, name in in_file]
            line = in_file[0 if in_store else 1][0]  # the second spelling's, the store's coming first
            problems.append((line, f"labels {', '.join(named[:-1])} and {named[-1]} differ only in case: use one "
                                   "spelling (or declare the classes in loop.classes)"))
    return problems


def _store_labels(conn: Connection) -> list[str]:
    """The distinct labels the store holds (seed or from Label Studio)."""
    records = table_of(LabelRecord)
    return [label for (label,) in conn.execute(select(records.c.label).distinct()) if label]


def _embedding_source(path: Path, dim: int | None, source: str | None) -> str:
    """``"model"`` when the rows carry no vectors, else their cache key; it must match the pool's so far."""
    if dim is None:
        if source not in (None, "model"):
            raise PoolFileError(str(path), [(None, "the pool holds precomputed embeddings: this file has none")])
        return "model"
    if source not in (None, byo_model_key(dim)):
        raise PoolFileError(str(path), [(None, f"embeddings of width {dim} do not fit a pool of {source}")])
    return byo_model_key(dim)


def _cache_vectors(staged: StagedFile, model_key: str, data_dir: Path) -> tuple[int, list[str]]:
    """Write the new items' own vectors, L2-normalised, to the embedding cache; return the rows whose
    id the pool holds with another vector (not applied): how many, and the first few as ``line N: id 'x'``."""
    with EmbeddingCache(data_dir / "embeddings", model_key=model_key, dim=staged.dim or 0) as cache:
        for item_ids, vectors in staged.new_vectors():
            cache.put([byo_hash(item_id) for item_id in item_ids], _unit(vectors))
        differing, first, unit = 0, list[str](), position_word(staged.path)
        for lines, item_ids, vectors in staged.present_vectors():  # a new vector was dropped silently (QA)
            rows = cache.lookup([byo_hash(item_id) for item_id in item_ids])
            known = rows >= 0
            as_stored = _unit(vectors[known]).astype(np.float16).astype(np.float32)
            differs = np.flatnonzero(np.abs(cache.get(rows[known]) - as_stored).max(axis=1) > _VECTOR_TOLERANCE)
            differing += len(differs)
            at = np.flatnonzero(known)[differs[: _FIRST_SHOWN - len(first)]]
            first += [f"{unit} {lines[i]}: id {item_ids[i]!r}" for i in at]
    return differing, first


_VECTOR_TOLERANCE = 2e-3  # float16 keeps a unit vector's components within 5e-4
_FIRST_SHOWN = 3


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to length 1: the store keeps directions, which is all the head and the strategies use."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = vectors / np.maximum(norms, 1e-12)
    return unit


def _fast_bulk_writes(session: Session) -> None:
    """Give this connection a 128 MB page cache: index pages of a million-row insert then stay in memory."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(sql_text("PRAGMA cache_size=-131072"))
