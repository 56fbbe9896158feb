"""Write the store's labels to a file: what the labeling produced, ready to train on or to ``pool add``.

One row per item, in pool order. By default only the labels the daemon trains on (status
``labeled``, a class of the project); with ``everything`` every item that has a label record:
skipped, unknown choices, disputes, retracted labels, labels of classes the project lacks, and
labels of items removed from the pool (status ``removed``),
each with its status and the raw answer, so a reviewer can settle them.

Columns: the pool's own id, text and label fields (so the file is a pool file again, its labels
seed labels), then ``label_status``, ``label_source`` (``seed`` or ``label_studio``),
``annotator``, ``labeled_at`` (UTC, ISO 8601), ``remote_task_id``, ``answer`` (the raw choice of
an unknown choice, ``a vs b`` for a dispute), then every metadata column the items were imported
with (one whose name is taken gets ``meta_`` prefixes until it is free). The label field is empty
unless the row is a label the daemon trains on. A pool's own vectors go back in its embedding column.

The file is written next to its destination and renamed into place, so a killed export never
leaves a partial file under the name; the read is one transaction, so a running daemon's
writes never half-appear.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select as sa_select  # sqlmodel's select is typed for at most four columns
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from daemon.errors import ExportError
from daemon.pool import known_classes
from daemon.pool_files import EXPORT_STATUS_COLUMNS
from daemon.pool_staging import byo_dim, byo_hash
from daemon.settings import PoolSettings
from daemon.store import LabelRecord, LabelStatus, PoolItem, RemovedItem, as_utc, get_value
from models.cache import EmbeddingCache

__all__ = ["FORMATS", "ExportReport", "column_kinds", "export_labels", "file_kind", "metadata_kinds",
           "with_metadata", "write_atomically"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_OUTSIDE = "not_a_class"  # label_status of a label whose class the project lacks
_REMOVED = "removed"  # label_status of an item taken out of the loop (labelloop pool remove)
_PAGE = 5_000  # rows fetched and written at a time
_PARQUET_ROWS = 65_536  # rows per Parquet row group
_VECTOR_AT = 3  # an own-vector column goes after id, text and label


@dataclass(frozen=True, slots=True)
class ExportReport:
    path: str
    rows: int
    statuses: dict[str, int]


def export_labels(
    engine: Engine, path: Path, *, pool: PoolSettings, everything: bool = False, overwrite: bool = False,
    data_dir: Path | None = None,
) -> ExportReport:
    """Write the labels to ``path`` (.csv, .tsv, .jsonl or .parquet, by its suffix).

    A pool that brought its own vectors gets them back in its embedding column (read from the
    cache under ``data_dir``; without it, no vectors), so the file adds to another store as it came.

    Raises:
        ExportError: the suffix is not one of those, ``path`` exists and ``overwrite`` is
            False, or the file cannot be written.
    """
    kind = file_kind(path, overwrite=overwrite)
    with Session(engine) as session, session.begin():
        classes = set(known_classes(session))
        meta = metadata_kinds(session, _of_exported_items(sa_select(col(PoolItem.meta_json)), everything))
        header = with_metadata([pool.id_field, pool.text_field, pool.label_field, *EXPORT_STATUS_COLUMNS], list(meta))
        kinds = column_kinds(header, meta)
        counts: Counter[str] = Counter()
        rows = _counted(_rows(session, classes, everything, list(meta)), counts)
        cache = _own_vectors(session, data_dir)
        if cache is None:
            write_atomically(path, kind, header, rows, kinds)
        else:
            with cache:
                header.insert(_VECTOR_AT, pool.embedding_field)
                write_atomically(path, kind, header, _with_vectors(rows, cache),
                                 {**kinds, pool.embedding_field: "vector"})
    return ExportReport(str(path), sum(counts.values()), dict(sorted(counts.items())))


def file_kind(path: Path, *, overwrite: bool) -> str:
    """Return the format ``path``'s suffix names, checking that it may be written.

    Raises:
        ExportError: an unknown suffix, or ``path`` exists and ``overwrite`` is False.
    """
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ExportError(f"{path}: unknown file type {path.suffix!r}: use {', '.join(FORMATS)}")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass --force to replace it")
    return kind


def write_atomically(
    path: Path, kind: str, header: list[str], rows: Iterator[list[Any]], kinds: Mapping[str, str] | None = None
) -> None:
    """Write ``rows`` under a temporary name next to ``path``, then rename it into place.

    ``kinds`` gives columns a type in Parquet (``bool``, ``int``, ``float`` or ``vector``; the rest
    are text); CSV and TSV are text anyway, and JSONL keeps each value's own type.

    Raises:
        ExportError: the file cannot be written (nothing is left under either name).
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if kind == "parquet":
            _write_parquet(partial, header, rows, kinds or {})
        else:
            _WRITERS[kind](partial, header, rows)
        os.replace(partial, path)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        partial.unlink(missing_ok=True)


def _exported(everything: bool) -> Any:
    columns = [col(c) for c in (  # columns, not entities: an ORM object per row would cost most of the time
        PoolItem.item_id, PoolItem.text, PoolItem.meta_json, LabelRecord.status, LabelRecord.label, LabelRecord.source,
        LabelRecord.annotator, LabelRecord.remote_updated_at, LabelRecord.recorded_at, LabelRecord.remote_task_id,
        RemovedItem.item_id,
    )]
    return _of_exported_items(sa_select(*columns), everything).order_by(col(PoolItem.seq))


def metadata_kinds(session: Session, meta_json: Any) -> dict[str, str]:
    """The metadata keys of the items a query of their ``PoolItem.meta_json`` selects, in first-seen order,
    each with the kind of its values for a typed Parquet column (``bool``, ``int``, ``float`` or ``string``)."""
    kinds: dict[str, str] = {}
    for raw in session.execute(meta_json.distinct()).scalars():
        for key, value in json.loads(raw or "{}").items():
            kinds[key] = _wider(kinds.get(key), _kind_of(value))
    return {key: kind or "string" for key, kind in kinds.items()}


def _kind_of(value: Any) -> str | None:
    """``None`` for a null (it fits any column); else ``bool``, ``int``, ``float`` or ``string``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "string"
    return "float" if isinstance(value, float) else "string"


def _wider(seen: str | None, kind: str | None) -> str:
    """The kind of a column holding both: ints and floats are floats; any other mix is text."""
    if seen is None or kind is None or seen == kind:
        return seen or kind or ""
    return "float" if {seen, kind} == {"int", "float"} else "string"


def with_metadata(own: list[str], meta_keys: Sequence[str]) -> list[str]:
    """``own`` columns, then one per metadata key, every name distinct.

    A key named like one of ``own`` gets ``meta_`` prefixes until its name is free: prefixed once,
    ``answer`` collided with an item's own ``meta_answer`` key, so the CSV header named two columns
    alike and the JSONL dropped one of the two values (QA).
    """
    taken = set(own) | {key for key in meta_keys if key not in own}
    names = []
    for key in meta_keys:
        name = key
        if key in own:
            name = f"meta_{key}"
            while name in taken:
                name = f"meta_{name}"
            taken.add(name)
        names.append(name)
    return own + names


def column_kinds(header: Sequence[str], meta: Mapping[str, str]) -> dict[str, str]:
    """The kinds of the metadata columns at the end of ``header`` (as :func:`with_metadata` named them)."""
    names = header[len(header) - len(meta):] if meta else []
    return dict(zip(names, meta.values(), strict=True))


def _of_exported_items(stmt: Any, everything: bool) -> Any:
    """``stmt`` over the items that have a label record (only status ``labeled``, and not removed, unless
    ``everything``)."""
    joined = (stmt.select_from(LabelRecord).join(PoolItem, col(PoolItem.item_id) == col(LabelRecord.item_id))
              .outerjoin(RemovedItem, col(RemovedItem.item_id) == col(LabelRecord.item_id)))
    if everything:
        return joined
    return joined.where(col(LabelRecord.status) == LabelStatus.LABELED, col(RemovedItem.item_id).is_(None))


def _rows(
    session: Session, classes: set[str], everything: bool, meta_keys: Sequence[str]
) -> Iterator[tuple[str, list[Any]]]:
    """``(label_status, values in header order)`` per exported item."""
    result = session.execute(_exported(everything)).yield_per(_PAGE)
    for item_id, text, meta_json, raw_status, label, source, annotator, updated_at, recorded_at, task_id, removed in (
        result
    ):
        status = str(raw_status)
        if raw_status is LabelStatus.LABELED and classes and label not in classes:
            status = _OUTSIDE
        if removed is not None:
            status = _REMOVED
        if status == _OUTSIDE and not everything:
            continue
        is_label = status == str(LabelStatus.LABELED)
        meta = json.loads(meta_json or "{}")
        yield status, [
            item_id, text, label if is_label else None,
            status, source, annotator, _iso(updated_at or recorded_at), task_id,
            None if is_label else label,
            *(meta.get(key) for key in meta_keys),
        ]


def _own_vectors(session: Session, data_dir: Path | None) -> EmbeddingCache | None:
    """The cache of the pool's own vectors (read only), or ``None`` when the encoder makes them."""
    source = get_value(session, "embedding_source")
    dim = byo_dim(source)
    if data_dir is None or source is None or dim is None:
        return None
    return EmbeddingCache(data_dir / "embeddings", model_key=source, dim=dim, readonly=True)


def _with_vectors(rows: Iterator[list[Any]], cache: EmbeddingCache) -> Iterator[list[Any]]:
    """Each row with its item's own vector (a list of floats) after the label, ``_PAGE`` rows at a time."""
    while page := list(itertools.islice(rows, _PAGE)):
        found = cache.lookup([byo_hash(values[0]) for values in page])
        hits = found >= 0
        # float64 before rounding: a float32's own digits would print as 0.012340000085532665
        vectors = iter(np.round(cache.get(found[hits]).astype(np.float64), 5).tolist() if hits.any() else [])
        for values, hit in zip(page, hits, strict=True):
            values.insert(_VECTOR_AT, next(vectors) if hit else None)
            yield values


def _counted(rows: Iterator[tuple[str, list[Any]]], counts: Counter[str]) -> Iterator[list[Any]]:
    for status, values in rows:
        counts[status] += 1
        yield values


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat()


def _flat(value: Any) -> str:
    """A cell of a delimited file: empty for None, JSON for anything that is not a string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if type(value) is float and math.isfinite(value):  # json.dumps's own text for it, at a fifth of the cost
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _write_delimited(path: Path, header: list[str], rows: Iterator[list[Any]], *, delimiter: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        for values in rows:
            writer.writerow([_flat(value) for value in values])


def _write_csv(path: Path, header: list[str], rows: Iterator[list[Any]]) -> None:
    _write_delimited(path, header, rows, delimiter=",")


def _write_tsv(path: Path, header: list[str], rows: Iterator[list[Any]]) -> None:
    _write_delimited(path, header, rows, delimiter="\t")


def _write_jsonl(path: Path, header: list[str], rows: Iterator[list[Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for values in rows:  # NaN and infinity are not JSON (JSON.parse refuses them): null instead
            finite = [None if type(value) is float and not math.isfinite(value) else value for value in values]
            handle.write(json.dumps(dict(zip(header, finite, strict=True)), ensure_ascii=False) + "\n")


def _write_parquet(path: Path, header: list[str], rows: Iterator[list[Any]], kinds: Mapping[str, str]) -> None:
    """Columns typed by ``kinds`` (numbers, booleans, vectors), the rest text (a value that is not a
    string as JSON), written a row group at a time.

    Every column was text: ``predict``'s ``confidence`` sorted as strings, and vectors came back as
    JSON (QA).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "vector": pa.list_(pa.float32())}
    schema = pa.schema([(name, types.get(kinds.get(name, "string"), pa.string())) for name in header])
    cells = [(lambda value: value) if kinds.get(name, "string") in types else _text_cell for name in header]
    with pq.ParquetWriter(path, schema) as writer:
        group: list[list[Any]] = []
        for values in rows:
            group.append([cell(value) for cell, value in zip(cells, values, strict=True)])
            if len(group) == _PARQUET_ROWS:
                writer.write_table(_table(pa, schema, group))
                group = []
        writer.write_table(_table(pa, schema, group))


def _text_cell(value: Any) -> str | None:
    return None if value is None else _flat(value)


def _table(pa: Any, schema: Any, group: list[list[Any]]) -> Any:
    columns = list(zip(*group, strict=True)) if group else [() for _ in schema.names]
    return pa.table([pa.array(column, type=field.type) for column, field in zip(columns, schema, strict=True)],
                    schema=schema)


_WRITERS = {"csv": _write_csv, "tsv": _write_tsv, "jsonl": _write_jsonl}
