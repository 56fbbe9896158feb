from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.errors import PoolFileError
from daemon.pool import add_pool_file
from daemon.pool_files import read_pool_file, read_pool_ids
from daemon.settings import PoolSettings
from daemon.store import make_engine


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def add_to_a_new_store(path: Path, **fields: str) -> object:
    """``pool add``'s streaming reader (``daemon.pool_staging``), which must refuse what ``read_pool_file`` does."""
    engine = make_engine(f"sqlite:///{path.parent / 'store' / 'labelloop.db'}")
    try:
        return add_pool_file(engine, path, pool=PoolSettings(**fields), data_dir=path.parent / "store")
    finally:
        engine.dispose()


@pytest.fixture(params=[read_pool_file, add_to_a_new_store], ids=["read_pool_file", "pool_add"])
def read(request: pytest.FixtureRequest) -> Callable[..., object]:
    """Both readers of pool files: every refusal below holds for each."""
    reader: Callable[..., object] = request.param
    return reader


def test_csv_with_ids_labels_and_meta(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", 'id,text,label,channel\na1,"hello, world",spam,email\na2,second,,chat\n')
    rows = read_pool_file(path)
    assert [(r.item_id, r.text, r.label) for r in rows] == [("a1", "hello, world", "spam"), ("a2", "second", None)]
    assert rows[0].meta == {"channel": "email"}
    assert rows[1].line == 3


def test_rows_without_id_get_a_stable_content_id(tmp_path: Path) -> None:
    a = read_pool_file(write(tmp_path / "a.jsonl", '{"text": "same"}\n{"text": "other"}\n'))
    b = read_pool_file(write(tmp_path / "b.csv", "text\nsame\n"))
    assert a[0].item_id == b[0].item_id
    assert a[0].item_id != a[1].item_id
    assert a[0].item_id.startswith("h-")


def test_custom_field_names(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"uid": 7, "body": "x y", "gold": "a"}\n')
    rows = read_pool_file(path, id_field="uid", text_field="body", label_field="gold")
    assert (rows[0].item_id, rows[0].text, rows[0].label) == ("7", "x y", "a")


def test_malformed_jsonl_names_the_line(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"id": "1", "text": "ok"}\n\n{"id": "2", "text": oops}\n')
    with pytest.raises(PoolFileError) as info:
        read(path)
    assert "line 3" in str(info.value)
    assert "p.jsonl" in str(info.value)


def test_csv_with_a_short_row_names_the_line(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,text,label\n1,fine,a\n2,missing\n")
    with pytest.raises(PoolFileError, match="line 3: 2 fields where the header has 3"):
        read(path)


def test_csv_line_numbers_count_multiline_fields(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", 'id,text\n1,"two\nlines"\n2,\n')
    with pytest.raises(PoolFileError, match="line 4: missing or empty 'text'"):
        read(path)


def rows_with(line: int, bad: str, *, rows: int = 30, last_newline: bool = True) -> str:
    """``id,text,label`` and ``rows`` good rows (row i on line i + 1), line ``line`` replaced by ``bad``."""
    lines = ["id,text,label", *(f"x{i},text {i},ham" for i in range(1, rows + 1))]
    lines[line - 1] = bad
    return "\n".join(lines) + ("\n" if last_newline else "")


@pytest.mark.parametrize(("text", "reason"), [
    (rows_with(22, 'x21,"this quote never closes,ham'), "line 22: a quoted field opens here and is not closed "
                                                          "before the end of the file; check the quotes"),
    (rows_with(7, 'x6,"never closes,ham', rows=6), "line 7: a quoted field opens here and is not closed"),
    (rows_with(7, 'x6,"never closes,ham', rows=6, last_newline=False), "line 7: a quoted field opens here"),
    (rows_with(7, '"x6,never closes,ham', rows=6), "line 7: a quoted field opens here and is not closed"),
    (rows_with(22, 'x21,text,"ham'), "line 22: a quoted field opens here and is not closed"),  # the count fits
    (rows_with(22, 'x21,"never closes,ham').replace("x27,text 27,ham", 'x27,"a, b",ham'),
     "line 22: a quoted field opens here and is closed only on line 28, swallowing the lines between"),
    (rows_with(22, 'x21,"never closes,ham').replace("x25,text 25,ham", 'x25,"a\nb",ham'),
     "line 22: 2 fields where the header has 3, and the row runs on inside quotes to line 26; check the quotes"),
])
def test_csv_with_an_unclosed_quote_says_so_at_its_line(
    read: Callable[[Path], object], tmp_path: Path, text: str, reason: str
) -> None:
    """Python's reader takes the rest of the file (or up to the next quote) as one field: it was reported as
    "4 fields where the header has 3", or as "1 fields" with the quote in the first column (QA)."""
    with pytest.raises(PoolFileError, match=reason):
        read(write(tmp_path / "p.csv", text))


def test_csv_multiline_fields_and_a_quote_inside_a_field_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", 'id,text,label\nx1,"a ""quoted"" word\non two lines",ham\n'
                                     'x2,"5"" screen",ham\nx3,7" tv,spam\nx4,"last\nrow",ham')
    rows = read_pool_file(path)
    assert [(r.line, r.item_id, r.text, r.label) for r in rows] == [
        (2, "x1", 'a "quoted" word\non two lines', "ham"), (4, "x2", '5" screen', "ham"),
        (5, "x3", '7" tv', "spam"), (6, "x4", "last\nrow", "ham")]


def test_csv_with_one_field_too_few_says_field_once(read: Callable[[Path], object], tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="line 3: 1 field where the header has 2"):
        read(write(tmp_path / "p.csv", "id,text\nb,fine\nc\n"))


def test_conflicting_duplicate_id_is_refused(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,text\n1,alpha\n1,beta\n")
    with pytest.raises(PoolFileError, match="line 3: id '1' appears again"):
        read(path)


def test_identical_duplicate_rows_collapse(tmp_path: Path) -> None:
    rows = read_pool_file(write(tmp_path / "p.csv", "id,text\n1,alpha\n1,alpha\n"))
    assert len(rows) == 1


def test_one_text_under_two_labels_without_ids_names_both_lines_and_the_way_out(
    read: Callable[[Path], object], tmp_path: Path
) -> None:
    path = write(tmp_path / "p.csv", "text,label\nhello,spam\nbye,ham\nhello,ham\n")
    with pytest.raises(PoolFileError, match=r"line 4: the same text is on line 2 with label 'spam', "
                       r"here with label 'ham'; give every row an id"):
        read(path)
    path = write(tmp_path / "q.csv", "text,label\nhello,\nhello,ham\n")
    with pytest.raises(PoolFileError, match=r"line 3: the same text is on line 2 without a label, here with label"):
        read(path)


def test_one_vector_twice_without_ids_names_the_embedding_not_its_hash_id(
    read: Callable[[Path], object], tmp_path: Path
) -> None:
    vector = '"[0.5, 0.25]"'
    path = write(tmp_path / "p.csv", f"text,label,embedding\nhello,spam,{vector}\nbye,ham,\"[1, 0]\"\n"
                 f"other,ham,{vector}\n")
    with pytest.raises(PoolFileError, match=r"line 4: the same embedding is on line 2 with label 'spam', "
                       r"here with label 'ham'; give every row an id") as refused:
        read(path)
    assert "h-" not in str(refused.value)
    path = write(tmp_path / "q.csv", f"text,label,embedding\nhello,spam,{vector}\nother,spam,{vector}\n")
    with pytest.raises(PoolFileError, match=r"line 3: the same embedding is on line 2 with other text; give every"):
        read(path)
    path = write(tmp_path / "r.csv", f"label,embedding\nspam,{vector}\nham,{vector}\n")  # vectors only
    with pytest.raises(PoolFileError, match=r"line 3: the same embedding is on line 2 with label 'spam', here"):
        read(path)


def test_keep_duplicates_makes_every_row_an_item(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "text,label\nhello,spam\nhello,spam\nhello,ham\n")
    rows = read_pool_file(path, keep_duplicates=True)
    assert [(r.item_id, r.text, r.label) for r in rows] == [
        ("row-2", "hello", "spam"), ("row-3", "hello", "spam"), ("row-4", "hello", "ham")]
    with_ids = write(tmp_path / "ids.csv", "id,text\n1,alpha\n1,beta\n")
    with pytest.raises(PoolFileError, match="id '1' appears again"):  # real ids still must be unique
        read_pool_file(with_ids, keep_duplicates=True)


def test_embeddings_in_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "e.jsonl", json.dumps({"id": "i1", "embedding": [1, 0, 0]}) + "\n")
    assert read_pool_file(jsonl)[0].embedding.tolist() == [1.0, 0.0, 0.0]  # type: ignore[union-attr]
    csv_file = write(tmp_path / "e.csv", 'id,text,embedding\nx,pic,"[0.5, 0.5]"\n')
    assert read_pool_file(csv_file)[0].embedding.tolist() == [0.5, 0.5]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ('{"id": "a", "embedding": [1, 2]}\n{"id": "b", "embedding": [1, 2, 3]}\n', "3 values, earlier rows have 2"),
        ('{"id": "a", "embedding": [1, "x"]}\n', "only numbers"),
        ('{"id": "a", "embedding": [1, NaN]}\n', "NaN"),
        ('{"id": "a", "embedding": [1, 0]}\n{"id": "b", "embedding": [0, -0.0]}\n', "line 2: embedding is all zeros"),
        ('{"id": "a", "text": "t", "embedding": [1]}\n{"id": "b", "text": "u"}\n', "every row"),
    ],
)
def test_bad_embeddings_are_refused(read: Callable[[Path], object], tmp_path: Path, lines: str, reason: str) -> None:
    with pytest.raises(PoolFileError, match=reason):
        read(write(tmp_path / "e.jsonl", lines))


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.table({"id": ["a", "b"], "text": ["one", "two"], "label": ["x", None], "score": [1.5, 2.0]})
    pq.write_table(table, path)
    rows = read_pool_file(path)
    assert [(r.item_id, r.label, r.meta["score"]) for r in rows] == [("a", "x", 1.5), ("b", None, 2.0)]


def test_parquet_bad_row_names_the_row(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", ""]}), path)
    with pytest.raises(PoolFileError, match="row 2: missing or empty 'text'"):  # rows, not lines: Parquet has none
        read(path)


def test_parquet_repeats_name_the_earlier_row_not_a_line(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": ["a", "a"], "text": ["one", "two"]}), path)
    with pytest.raises(PoolFileError, match=r"row 2: id 'a' appears again \(row 1\) with other content"):
        read(path)
    pq.write_table(pa.table({"text": ["one", "one"], "label": ["x", "y"]}), path)
    with pytest.raises(PoolFileError, match="row 2: the same text is on row 1 with label 'x', here with label 'y'"):
        read(path)


def test_unknown_extension_and_missing_file(read: Callable[[Path], object], tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="unknown file type"):
        read(write(tmp_path / "p.xlsx", "x"))
    with pytest.raises(PoolFileError, match="no such file"):
        read(tmp_path / "absent.csv")


def test_empty_file_is_refused(read: Callable[[Path], object], tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="no rows"):
        read(write(tmp_path / "p.csv", "id,text\n"))


def test_ids_alone_come_once_in_file_order_and_a_malformed_row_still_refuses(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,text\nb,one\na,two\nb,one again\nc,three\n")
    assert read_pool_ids(path) == ["b", "a", "c"]  # removal names items: their content may differ
    no_ids = write(tmp_path / "n.csv", "text\nhello\nhello\n")
    assert read_pool_ids(no_ids) == [row.item_id for row in read_pool_file(no_ids)]
    with pytest.raises(PoolFileError, match="line 3: missing or empty 'text'"):
        read_pool_ids(write(tmp_path / "bad.csv", "id,text\na,one\nb,\n"))


@pytest.mark.parametrize(
    ("name", "content", "fields", "reason"),
    [
        ("p.csv", "id,text,label\n1,x,a\n", {"id_field": "ident"}, "no column 'ident'; the file has: id, text, label"),
        ("p.csv", "id,text,label\n1,x,a\n", {"label_field": "lable"}, "no column 'lable'"),
        ("p.csv", "id,question\n1,x\n", {}, "no column 'text'; the file has: id, question"),
        ("p.jsonl", '{"id": "1", "text": "x", "label": "a"}\n', {"id_field": "uid"}, "no column 'uid'"),
        ("p.jsonl", '{"text": "x"}\n{"text": "y", "label": "a"}\n', {"label_field": "gold"},
         "no row has the field 'gold'"),
        ("p.jsonl", '{"uid": "1", "text": "x"}\n{"text": "y"}\n', {"id_field": "uid"},
         "line 2: missing or empty 'uid'"),
    ],
)
def test_a_named_column_the_file_lacks_is_refused(
    read: Callable[..., object], tmp_path: Path, name: str, content: str, fields: dict[str, str], reason: str
) -> None:
    """A mistyped --id-field used to hash every id (the same item twice); a mistyped --label-field
    dropped every label."""
    with pytest.raises(PoolFileError, match=reason):
        read(write(tmp_path / name, content), **fields)


def test_a_named_column_of_parquet_is_looked_up_in_its_schema(read: Callable[..., object], tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["one"]}), path)
    with pytest.raises(PoolFileError, match="no column 'lbl'; the file has: id, text"):
        read(path, label_field="lbl")


def test_a_column_named_twice_in_a_csv_header_is_refused(read: Callable[..., object], tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="line 1: column 'text' appears twice"):
        read(write(tmp_path / "p.csv", "id,text,label,text\n1,x1,a,x2\n"))


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("p.csv", b"id,text\n1,a\n2,b\n3,caf\xe9\n", 4),
        ("p.csv", b'id,text\n1,"two\nlines"\n2,ok\n3,x\xff\n', 5),
        ("p.tsv", b"id\ttext\n1\tok\n2\tna\xefve\n", 3),
        ("p.csv", b"id,t\xe9xt\n1,a\n", 1),
        ("p.jsonl", b'{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n', 2),
    ],
)
def test_bytes_that_are_not_utf8_are_refused_at_their_own_line(
    read: Callable[..., object], tmp_path: Path, name: str, content: bytes, line: int
) -> None:
    """A CSV's bad byte was reported at the decoder's chunk (line 2837 for line 3000); JSONL gave a traceback."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PoolFileError, match=f"line {line}: not UTF-8"):
        read(path)


def test_a_byte_order_mark_is_read_past_in_jsonl_as_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "1", "text": "x"}\n')
    assert [row.item_id for row in read_pool_file(path)] == ["1"]


@pytest.mark.parametrize("value", ["1e300", "70000"])
def test_embedding_values_beyond_float16_are_refused_with_their_line(
    read: Callable[..., object], tmp_path: Path, value: str
) -> None:
    """They used to pass the reader and fail in the cache with a traceback."""
    rows = f'{{"id": "a", "embedding": [1, 2]}}\n{{"id": "b", "embedding": [1, {value}]}}\n'
    path = write(tmp_path / "e.jsonl", rows)
    with pytest.raises(PoolFileError, match="line 2: embedding values must lie within"):
        read(path)


def test_numbers_as_ids_and_labels_read_as_text_and_other_types_name_their_field(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"id": 2.0, "text": "x", "label": 3}\n{"id": 2.5, "text": "y"}\n')
    rows = read_pool_file(path)
    assert [(row.item_id, row.label) for row in rows] == [("2", "3"), ("2.5", None)]
    with pytest.raises(PoolFileError, match="'label' must be text or a number, got list"):
        read_pool_file(write(tmp_path / "q.jsonl", '{"id": "1", "text": "x", "label": ["a"]}\n'))


def test_a_folder_is_refused_as_a_folder(read: Callable[..., object], tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    with pytest.raises(PoolFileError, match="a folder, not a file"):
        read(tmp_path / "shards")


def test_a_file_with_more_bad_rows_than_are_read_says_at_least(
    read: Callable[[Path], object], tmp_path: Path
) -> None:
    path = write(tmp_path / "p.csv", "id,text\n" + "".join(f"{i},\n" for i in range(325)))  # 325 empty texts
    with pytest.raises(PoolFileError) as refused:
        read(path)
    assert str(refused.value).endswith("(and at least 15 more; reading stops at 20 problems)")


def test_a_file_read_to_its_end_counts_its_problems_exactly(read: Callable[[Path], object], tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,text\n" + "".join(f"{i},\n" for i in range(8)) + "9,fine\n")
    with pytest.raises(PoolFileError) as refused:
        read(path)
    assert str(refused.value).endswith("line 6: missing or empty 'text' (and 3 more)")
