"""Read pool files (CSV, JSONL, Parquet) into validated rows, or refuse them whole.

Parsing is separate from storing (``daemon/pool.py``): a file is read and checked
completely before anything is written, so a bad line 90,000 leaves the store untouched.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import PoolFileError
from models._types import Float32Array

__all__ = [
    "MAX_PROBLEMS", "NO_ROWS", "PoolRow", "iter_pool_rows", "read_pool_file", "read_pool_ids", "repeated_id_problem",
]

MAX_PROBLEMS = 20  # a refused file lists at most this many problems
NO_ROWS = "the file holds no rows"
_PARQUET_ROWS = 4096  # rows turned into Python values at a time: 65,536 rows of 384-d vectors took 800 MB
csv.field_size_limit(1 << 26)


@dataclass(frozen=True, slots=True)
class PoolRow:
    line: int  # 1-based line (CSV/JSONL) or row number (Parquet) in the file
    item_id: str
    text: str
    label: str | None
    embedding: Float32Array | None  # (d,): a tuple of Python floats took 9 KB per 384-d row, this 1.6 KB
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Fields:
    id_field: str
    text_field: str
    label_field: str
    embedding_field: str


def read_pool_file(
    path: Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    label_field: str = "label",
    embedding_field: str = "embedding",
    keep_duplicates: bool = False,
) -> list[PoolRow]:
    """Read and validate every row of a pool file into memory (``pool add`` streams instead:
    :mod:`daemon.pool_staging`).

    Items without an id column get a stable id from their content (``h-`` + sha256 prefix),
    so the same text twice is one item, and the same text with two labels is refused. With
    ``keep_duplicates`` they get ``row-<line>`` instead: every row is its own item (a
    simulation replays a data set as it is, repeated and conflicting rows included).
    A row needs a non-empty text unless it carries an embedding (any modality). A row that
    repeats an earlier one exactly is dropped.

    Raises:
        PoolFileError: the file is missing, of an unknown type, or any row is malformed
            (the error lists file, line and reason for up to 20 problems).
    """
    rows: list[PoolRow] = []
    problems: list[tuple[int | None, str]] = []
    seen: dict[str, PoolRow] = {}
    stream = iter_pool_rows(path, id_field=id_field, text_field=text_field, label_field=label_field,
                            embedding_field=embedding_field, keep_duplicates=keep_duplicates)
    for line, row, problem in stream:
        earlier = seen.get(row.item_id) if row is not None else None
        if row is None:
            problems.append((line, problem))
        elif earlier is None:
            seen[row.item_id] = row
            rows.append(row)
        elif (earlier.text, earlier.label) != (row.text, row.label):
            problems.append((line, repeated_id_problem(row.item_id, earlier.line, earlier.text, earlier.label,
                                                       row.text, row.label)))
        if len(problems) >= MAX_PROBLEMS:
            break
    _refuse_if_bad(path, problems, has_rows=bool(rows))
    return rows


def read_pool_ids(
    path: Path, *, id_field: str = "id", text_field: str = "text", label_field: str = "label",
    embedding_field: str = "embedding",
) -> list[str]:
    """The item ids of a pool file, each once, in file order, without holding its rows.

    A malformed row refuses the file as :func:`read_pool_file` does; an id repeated with other
    content does not (only the ids are used).

    Raises:
        PoolFileError: as :func:`read_pool_file`.
    """
    ids: dict[str, None] = {}
    problems: list[tuple[int | None, str]] = []
    stream = iter_pool_rows(path, id_field=id_field, text_field=text_field, label_field=label_field,
                            embedding_field=embedding_field)
    for line, row, problem in stream:
        if row is not None:
            ids[row.item_id] = None
            continue
        problems.append((line, problem))
        if len(problems) >= MAX_PROBLEMS:
            break
    _refuse_if_bad(path, problems, has_rows=bool(ids))
    return list(ids)


def _refuse_if_bad(path: Path, problems: list[tuple[int | None, str]], *, has_rows: bool) -> None:
    """Raise ``PoolFileError`` for the problems found, or for a file without a valid row."""
    if problems:
        raise PoolFileError(str(path), problems)
    if not has_rows:
        raise PoolFileError(str(path), [(None, NO_ROWS)])


def iter_pool_rows(
    path: Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    label_field: str = "label",
    embedding_field: str = "embedding",
    keep_duplicates: bool = False,
) -> Iterator[tuple[int, PoolRow | None, str]]:
    """Yield ``(line, row, "")`` per valid row and ``(line, None, problem)`` per invalid one, in file order.

    Each row is checked on its own and against the embedding shape of the first valid row
    (every row carries one or none does; one width). Repeated ids are the caller's to check
    (:func:`repeated_id_problem`). Arguments as :func:`read_pool_file`.

    Raises:
        PoolFileError: the file is missing, of an unknown type, or unreadable from some line on.
    """
    fields = _Fields(id_field, text_field, label_field, embedding_field)
    if not path.is_file():
        raise PoolFileError(str(path), [(None, "no such file")])
    shape: tuple[bool, int | None] | None = None  # the first valid row's (has an embedding, width)
    for line, record in _raw_records(path):
        try:
            row = _to_row(line, record, fields, keep_duplicates=keep_duplicates)
        except ValueError as e:
            yield line, None, str(e)
            continue
        row_shape = (row.embedding is not None, None if row.embedding is None else len(row.embedding))
        if shape is None:
            shape = row_shape
        if row_shape == shape:
            yield line, row, ""
        elif row_shape[0] != shape[0]:
            yield line, None, "either every row carries an embedding or none does"
        else:
            yield line, None, f"embedding has {row_shape[1]} values, earlier rows have {shape[1]}"


def repeated_id_problem(
    item_id: str, earlier_line: int, earlier_text: str, earlier_label: str | None, text: str, label: str | None
) -> str:
    """The problem with a row whose id an earlier row has, with other text or label."""
    if item_id.startswith("h-") and earlier_text == text:  # no id column: ids come from the text
        return (f"the same text is on line {earlier_line} with label {earlier_label!r}, here {label!r}; "
                "give every row an id (or, for simulate, pass --keep-duplicates)")
    return f"id {item_id!r} appears again (line {earlier_line}) with other content"


def _raw_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return _csv_records(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return _jsonl_records(path)
    if suffix in {".parquet", ".pq"}:
        return _parquet_records(path)
    raise PoolFileError(str(path), [(None, f"unknown file type {suffix!r}: use .csv, .tsv, .jsonl or .parquet")])


def _csv_records(path: Path, *, delimiter: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            raise PoolFileError(str(path), [(1, f"unreadable header: {e}")]) from None
        width = len(header)
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise PoolFileError(str(path), [(start, f"unreadable CSV: {e}")]) from None
            if not values:
                continue
            if len(values) != width:
                raise PoolFileError(
                    str(path), [(start, f"{len(values)} fields where the header has {width}")]
                )
            yield start, dict(zip(header, values, strict=True))


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise PoolFileError(str(path), [(number, f"invalid JSON: {e.msg}")]) from None
            if not isinstance(record, dict):
                raise PoolFileError(str(path), [(number, "each line must be a JSON object")])
            yield number, record


def _parquet_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering held the file: 300 MB at 200k 384-d rows
    except (pa.ArrowException, OSError) as e:
        raise PoolFileError(str(path), [(None, f"unreadable Parquet: {e}")]) from None
    number = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_ROWS):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _to_row(line: int, record: Mapping[str, Any], fields: _Fields, *, keep_duplicates: bool) -> PoolRow:
    text = _text_value(record.get(fields.text_field))
    embedding = _embedding_value(record.get(fields.embedding_field))
    if not text and embedding is None:
        raise ValueError(f"missing or empty {fields.text_field!r}")
    item_id = _text_value(record.get(fields.id_field))
    if not item_id:
        if fields.id_field in record:
            raise ValueError(f"empty {fields.id_field!r}")
        if keep_duplicates:
            item_id = f"row-{line}"
        else:
            basis = text if embedding is None else json.dumps(embedding)  # the values as read: ids stay stable
            item_id = "h-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:20]
    label = _text_value(record.get(fields.label_field)) or None
    reserved = {fields.id_field, fields.text_field, fields.label_field, fields.embedding_field}
    meta = {key: _jsonable(value) for key, value in record.items() if key not in reserved}
    vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
    return PoolRow(line, item_id, text, label, vector, meta)


def _text_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int):
        return str(value)
    raise ValueError(f"expected text, got {type(value).__name__}")


def _embedding_value(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("embedding is not a JSON list of numbers") from None
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("embedding must be a non-empty list of numbers")
    try:
        vector = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError("embedding must contain only numbers") from None
    if not all(math.isfinite(v) for v in vector):
        raise ValueError("embedding contains NaN or infinity")
    return vector


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
