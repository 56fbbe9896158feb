"""Read pool files (CSV, JSONL, Parquet) into validated rows, or refuse them whole.

Parsing is separate from storing (``daemon/pool.py``): a file is read and checked
completely before anything is written, so a bad line 90,000 leaves the store untouched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import MAX_PROBLEMS, PoolFileError, position_word
from models._types import Float32Array

__all__ = [
    "EXPORT_STATUS_COLUMNS",
    "MAX_PROBLEMS", "NO_ROWS", "PoolRow", "iter_pool_ids", "iter_pool_rows", "read_pool_file", "read_pool_ids",
    "repeated_id_problem",
]

NO_ROWS = "the file holds no rows"
_PARQUET_ROWS = 4096  # rows turned into Python values at a time: 65,536 rows of 384-d vectors took 800 MB
_DEFAULT_FIELDS = ("id", "text", "label", "embedding")
# the columns `labelloop export` adds after the label: the store's view of the label, not the item's
EXPORT_STATUS_COLUMNS = ("label_status", "label_source", "annotator", "labeled_at", "remote_task_id", "answer")
_FLOAT16_MAX = 65504.0  # vectors are kept as float16 (models/cache.py)
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as read with surrogateescape
_NOT_UTF8 = "not UTF-8 text: save the file as UTF-8"
_KEEP_BOTH = "give every row an id, or read with keep_duplicates"  # read_pool_file's own way out
_CONTENT_ID = re.compile("h-[0-9a-f]{20}")  # the shape of _content_id's ids
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

    def named(self) -> list[str]:
        """The fields given a name other than the default: the file must have them."""
        names = (self.id_field, self.text_field, self.label_field, self.embedding_field)
        return [name for name, default in zip(names, _DEFAULT_FIELDS, strict=True) if name != default]


def read_pool_file(
    path: Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    label_field: str = "label",
    embedding_field: str = "embedding",
    keep_duplicates: bool = False,
    way_out: str = _KEEP_BOTH,
    on_row: Callable[[PoolRow], None] | None = None,
) -> list[PoolRow]:
    """Read and validate every row of a pool file into memory (``pool add`` streams instead:
    :mod:`daemon.pool_staging`).

    Items without an id column get a stable id from their content (``h-`` + sha256 prefix),
    so the same text twice is one item, and the same text with two labels is refused. With
    ``keep_duplicates`` they get ``row-<line>`` instead: every row is its own item (a
    simulation replays a data set as it is, repeated and conflicting rows included).
    A row needs a non-empty text unless it carries an embedding (any modality). A row that
    repeats an earlier one exactly is dropped; ``on_row`` still sees it (every valid row, in
    file order), and ``way_out`` ends the message about one text under two labels.

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
                                                       row.text, row.label, way_out=way_out,
                                                       unit=position_word(path))))
        if row is not None and on_row is not None:
            on_row(row)
        if len(problems) >= MAX_PROBLEMS:
            break
    _refuse_if_bad(path, problems, has_rows=bool(rows))
    return rows


def read_pool_ids(
    path: Path, *, id_field: str = "id", text_field: str = "text", label_field: str = "label",
    embedding_field: str = "embedding",
) -> list[str]:
    """The item ids of a pool file, each once, in file order (:func:`iter_pool_ids`, held in memory)."""
    return list(dict.fromkeys(iter_pool_ids(path, id_field=id_field, text_field=text_field, label_field=label_field,
                                            embedding_field=embedding_field)))


def iter_pool_ids(
    path: Path, *, id_field: str = "id", text_field: str = "text", label_field: str = "label",
    embedding_field: str = "embedding",
) -> Iterator[str]:
    """The item ids of a pool file in file order, repeats included, streamed.

    A malformed row refuses the file as :func:`read_pool_file` does, once the file is read (or
    at ``MAX_PROBLEMS``); an id repeated with other content does not (only the ids are used).

    Raises:
        PoolFileError: as :func:`read_pool_file`.
    """
    problems: list[tuple[int | None, str]] = []
    has_rows = False
    stream = iter_pool_rows(path, id_field=id_field, text_field=text_field, label_field=label_field,
                            embedding_field=embedding_field)
    for line, row, problem in stream:
        if row is not None:
            has_rows = True
            yield row.item_id
            continue
        problems.append((line, problem))
        if len(problems) >= MAX_PROBLEMS:
            break
    _refuse_if_bad(path, problems, has_rows=has_rows)


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
    if path.is_dir():
        raise PoolFileError(str(path), [(None, "a folder, not a file: name the files (shards/*.parquet)")])
    if not path.is_file():
        raise PoolFileError(str(path), [(None, "no such file")])
    _check_columns(path, fields)
    shape: tuple[bool, int | None] | None = None  # the first valid row's (has an embedding, width)
    label_named, label_seen = fields.label_field in fields.named(), False
    for line, record in _raw_records(path):
        label_seen = label_seen or (label_named and fields.label_field in record)
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
    if label_named and not label_seen and shape is not None:
        raise PoolFileError(str(path), [(None, f"no row has the field {fields.label_field!r}")])


def repeated_id_problem(
    item_id: str, earlier_line: int, earlier_text: str, earlier_label: str | None, text: str, label: str | None,
    *, way_out: str = "give every row an id", unit: str = "line",
) -> str:
    """The problem with a row whose id an earlier row has, with other text or label; ``way_out`` says what to do
    about one text (or vector) under two labels (simulate can also replay both); ``unit`` names the earlier
    row's position (:func:`daemon.errors.position_word`).

    Without an id column the id is made from the text, or from the vector when the row has one
    (:func:`_content_id`): the message then names the repeated text or embedding, never that id.
    """
    if item_id == _content_id(text):  # no id column, no vectors: the id is the text's
        return (f"the same text is on {unit} {earlier_line} {_labeled(earlier_label)}, here {_labeled(label)}; "
                f"{way_out}")
    if _CONTENT_ID.fullmatch(item_id):  # no id column: the id is the vector's
        other = f"{_labeled(earlier_label)}, here {_labeled(label)}" if earlier_label != label else "with other text"
        return f"the same embedding is on {unit} {earlier_line} {other}; {way_out}"
    return f"id {item_id!r} appears again ({unit} {earlier_line}) with other content"


def _content_id(basis: str) -> str:
    """The id of a row without one: ``h-`` and a sha256 prefix of its text, or of its vector as JSON."""
    return "h-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:20]


def _labeled(label: str | None) -> str:
    return "without a label" if label is None else f"with label {label!r}"


def _file_type(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    for kind, suffixes in (("csv", {".csv", ".tsv"}), ("jsonl", {".jsonl", ".ndjson", ".json"}),
                           ("parquet", {".parquet", ".pq"})):
        if suffix in suffixes:
            return kind
    raise PoolFileError(str(path), [(None, f"unknown file type {suffix!r}: use .csv, .tsv, .jsonl or .parquet")])


def _raw_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    kind = _file_type(path)
    if kind == "csv":
        return _csv_records(path)
    if kind == "jsonl":
        return _jsonl_records(path)
    return _parquet_records(path)


def _check_columns(path: Path, fields: _Fields) -> None:
    """Refuse a file that lacks a column it was told to read (or any text or vector column).

    A column named other than by default must exist: a mistyped ``--id-field`` would otherwise
    give every row an id from its text (the same item twice in the pool), a mistyped
    ``--label-field`` would drop every seed label. A JSONL file's columns are its first record's.
    """
    columns = _columns(path)
    if columns is None:
        return  # empty, or unreadable: the rows say why
    named = fields.named()
    if _file_type(path) == "jsonl":  # the first record may be unlabeled: iter_pool_rows checks the label at the end
        named = [name for name in named if name != fields.label_field]
    missing = [name for name in named if name not in columns]
    if fields.text_field not in columns and fields.embedding_field not in columns and fields.text_field not in missing:
        missing.insert(0, fields.text_field)
    if missing:
        names = " or ".join(repr(name) for name in missing)
        raise PoolFileError(str(path), [(None, f"no column {names}; the file has: {', '.join(columns)}")])


def _columns(path: Path) -> list[str] | None:
    """The file's column names, or ``None`` when it has none to show (empty, or its first record is bad)."""
    kind = _file_type(path)
    if kind == "csv":
        with _open_text(path) as handle:
            return _csv_header(path, csv.reader(handle, delimiter=_delimiter(path)))
    if kind == "jsonl":
        for _, record in _jsonl_records(path):
            return list(record)
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path, pre_buffer=False).schema_arrow.names)
    except (pa.ArrowException, OSError):
        return None  # the rows' reader says why


def _open_text(path: Path) -> Any:
    """Text with undecodable bytes kept as surrogates, so a bad byte is reported at its own line."""
    return path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _csv_header(path: Path, reader: Any) -> list[str] | None:
    try:
        header: list[str] = next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        raise PoolFileError(str(path), [(1, f"unreadable header: {e}")]) from None
    if _UNDECODABLE.search("".join(header)):
        raise PoolFileError(str(path), [(1, _NOT_UTF8)])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise PoolFileError(str(path), [(1, f"column {', '.join(map(repr, repeated))} appears twice in the header")])
    return header


def _csv_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with _open_text(path) as handle:
        read: list[str] = []  # the physical lines of the row being read
        reader = csv.reader(_kept(handle, read), delimiter=_delimiter(path))
        header = _csv_header(path, reader)
        if header is None:
            return
        width = len(header)
        while True:
            start = reader.line_num + 1
            read.clear()
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise PoolFileError(str(path), [(start, f"unreadable CSV: {e}")]) from None
            if not values:
                continue
            problem = _quote_problem(values, width, read, reader)
            if problem is None and len(values) != width:
                problem = _field_count(len(values), width)
            if problem is not None:
                raise PoolFileError(str(path), [(start, problem)])
            if _UNDECODABLE.search("".join(values)):
                raise PoolFileError(str(path), [(start, _NOT_UTF8)])
            yield start, dict(zip(header, values, strict=True))


def _kept(handle: Iterable[str], read: list[str]) -> Iterator[str]:
    """A text file's lines, each also appended to ``read`` (the caller clears it per CSV row)."""
    for line in handle:
        read.append(line)
        yield line


def _quote_problem(values: list[str], width: int, read: list[str], reader: Any) -> str | None:
    """The problem with a CSV row that a quote runs on to later lines or to the end of the file, or ``None``.

    Python's reader never says a quote is unclosed: it reads on to the next quote, or to the end of
    the file, as one field, and the row showed as "4 fields where the header has 3" (or, with the
    quote in the last column, as the right count, the rest of the file one label). A well-formed row
    has its quotes in pairs (``""`` inside a quoted field), so an odd count is a quote left open on
    the row's first line, if the row runs on (only a quoted field holds a line break) or ends with
    the file inside quotes. A multi-line field with paired quotes and the header's count of fields
    is left alone, as is an odd quote inside a one-line field (``5" screen``).
    """
    if len(read) == 1 and '"' not in read[0]:  # the common row: nothing to check
        return None
    is_odd = sum(line.count('"') for line in read) % 2 == 1
    end, delimiter = reader.line_num, reader.dialect.delimiter
    if is_odd and _ends_inside_quotes("".join(read), delimiter):
        return "a quoted field opens here and is not closed before the end of the file; check the quotes"
    if not any("\n" in value or "\r" in value for value in values):
        return None
    if is_odd:
        return (f"a quoted field opens here and is closed only on line {end}, swallowing the lines between; "
                "check the quotes")
    if len(values) != width:
        return f"{_field_count(len(values), width)}, and the row runs on inside quotes to line {end}; check the quotes"
    return None


def _ends_inside_quotes(row: str, delimiter: str) -> bool:
    """Whether a row ends inside a quoted field: the lenient reader ends one there only at the end of
    the file, having taken in the rest of the file as that field (strict reading refuses it)."""
    try:
        for _ in csv.reader(io.StringIO(row, newline=""), delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


def _field_count(count: int, width: int) -> str:
    return f"{count} field{'' if count == 1 else 's'} where the header has {width}"


def _jsonl_records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM, as Windows tools write
            except UnicodeDecodeError:
                raise PoolFileError(str(path), [(number, _NOT_UTF8)]) from None
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
    text = _text_value(record.get(fields.text_field), fields.text_field)
    embedding = _embedding_value(record.get(fields.embedding_field))
    if not text and embedding is None:
        raise ValueError(f"missing or empty {fields.text_field!r}")
    item_id = _text_value(record.get(fields.id_field), fields.id_field)
    if not item_id:
        if fields.id_field in record or fields.id_field != _DEFAULT_FIELDS[0]:  # a named id column is required
            raise ValueError(f"missing or empty {fields.id_field!r}")
        if keep_duplicates:
            item_id = f"row-{line}"
        else:
            item_id = _content_id(text if embedding is None else json.dumps(embedding))  # as read: ids stay stable
    label = _text_value(record.get(fields.label_field), fields.label_field) or None
    reserved = {fields.id_field, fields.text_field, fields.label_field, fields.embedding_field}
    if all(column in record for column in EXPORT_STATUS_COLUMNS):  # an export read back: not the item's metadata
        reserved.update(EXPORT_STATUS_COLUMNS)
    meta = {key: _jsonable(value) for key, value in record.items() if key not in reserved}
    vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
    return PoolRow(line, item_id, text, label, vector, meta)


def _text_value(value: Any, name: str) -> str:
    """A text, id or label as text; an integral float (a Parquet integer column with gaps) without ``.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    raise ValueError(f"{name!r} must be text or a number, got {type(value).__name__}")


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
    if not any(vector):  # QA: accepted, then trained on and given confident predictions
        raise ValueError("embedding is all zeros: a vector with no direction cannot be scaled to length 1")
    if max(map(abs, vector)) > _FLOAT16_MAX:
        raise ValueError(f"embedding values must lie within ±{_FLOAT16_MAX:,.0f} (vectors are kept as float16)")
    return vector


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
