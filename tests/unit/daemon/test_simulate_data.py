"""Loading a simulation's data: what a test set may hold, and clear refusals (hashing encoder, tiny files)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from daemon.errors import PoolFileError
from daemon.simulate_data import DataSource, SimulationData, load_simulation_data
from models.hashing import HashingEmbedder

WORDS = {"sport": ("match", "goal", "team"), "money": ("bank", "loan", "price"), "food": ("pizza", "soup", "cake")}


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def texts(n: int, start: int = 0) -> list[dict[str, object]]:
    """``n`` rows per class, distinct texts numbered from ``start``."""
    return [{"text": f"{words[i % 3]} and {words[(i + 1) % 3]} number {i}", "label": label}
            for i in range(start, start + n) for label, words in WORDS.items()]


def load(tmp_path: Path, source: DataSource) -> SimulationData:
    return load_simulation_data(source, embedder=HashingEmbedder(dim=16), cache_dir=tmp_path / "cache",
                                use_class_names=False)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_test_rows_of_a_class_the_pool_lacks_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = write_csv(tmp_path / "train.csv", texts(20))
    unseen: list[dict[str, object]] = [{"text": f"mystery {i}", "label": "ghost"} for i in range(4)]
    test = write_csv(tmp_path / "test.csv", texts(5, start=100) + unseen)
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path, DataSource(train, test_path=test))
    assert data.classes == ("food", "money", "sport")
    assert "ghost" not in set(data.test.labels.tolist()) and len(data.test.labels) == 15
    assert data.pool_counts() == {"food": 20, "money": 20, "sport": 20}
    assert warnings_of(caplog) == [f"{test}: dropped 4 test row(s) whose label is never in the pool: 'ghost' (4)"]


def test_a_split_column_that_puts_a_whole_class_in_test_drops_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [row | {"split": "train" if i % 4 else "test"} for i, row in enumerate(texts(12))]
    rows += [{"text": f"mystery {i}", "label": "ghost", "split": "test"} for i in range(3)]
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path, DataSource(write_csv(tmp_path / "data.csv", rows)))
    assert data.classes == ("food", "money", "sport")
    assert any("'ghost' (3)" in message for message in warnings_of(caplog))


@pytest.mark.parametrize("has_ids", [False, True])
def test_test_file_rows_also_in_the_pool_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, has_ids: bool
) -> None:
    pool_rows, test_rows = texts(20), texts(5, start=100) + texts(20)[:7]
    if has_ids:
        pool_rows = [{"id": f"item{i}"} | row for i, row in enumerate(pool_rows)]
        test_rows = [{"id": f"item{1000 + i}"} | row for i, row in enumerate(test_rows[:15])]
        test_rows += [{"id": f"item{i}"} | row for i, row in enumerate(pool_rows[:7])]
    train = write_csv(tmp_path / "train.csv", pool_rows)
    test = write_csv(tmp_path / "test.csv", test_rows)
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path, DataSource(train, test_path=test))
    assert len(data.pool.labels) == 60 and len(data.test.labels) == 15
    assert [m.split(" (")[0] for m in warnings_of(caplog)] == [f"{test}: dropped 7 test item(s) also in the pool"]


@pytest.mark.parametrize("test_first", [False, True])
def test_a_split_column_item_on_both_sides_stays_in_the_pool_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, test_first: bool
) -> None:
    rows = [row | {"split": "train"} for row in texts(20)] + [row | {"split": "test"} for row in texts(5, start=100)]
    leaked = [row | {"split": "test"} for row in texts(20)[:4]]
    path = write_csv(tmp_path / "data.csv", leaked + rows if test_first else rows + leaked)
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path, DataSource(path))
    assert len(data.pool.labels) == 60 and len(data.test.labels) == 15
    assert [m.split(" (")[0] for m in warnings_of(caplog)] == [f"{path}: dropped 4 test item(s) also in the pool"]


def test_keep_duplicates_compares_texts_not_line_numbers_across_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = write_csv(tmp_path / "train.csv", texts(20))
    test = write_csv(tmp_path / "test.csv", texts(5, start=100) + texts(20)[:2])  # same lines, other texts
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path, DataSource(train, test_path=test, keep_duplicates=True))
    assert len(data.test.labels) == 15
    assert [m.split(" (")[0] for m in warnings_of(caplog)] == [f"{test}: dropped 2 test item(s) also in the pool"]


def test_a_split_column_without_test_rows_says_a_random_share_is_held_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path / "data.csv", [row | {"split": "train"} for row in texts(20)])
    with caplog.at_level(logging.INFO):
        data = load(tmp_path, DataSource(path))
    assert len(data.test.labels) == 12
    assert warnings_of(caplog) == [
        f"{path}: the 'split' column has no 'test' rows; holding out a stratified 20% instead"
    ]


def test_a_test_file_without_labels_is_named_and_told_what_is_missing(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", texts(20))
    test = write_csv(tmp_path / "test.csv", [{"text": row["text"]} for row in texts(5, start=100)])
    with pytest.raises(PoolFileError) as refused:
        load(tmp_path, DataSource(train, test_path=test))
    assert refused.value.path == str(test)
    assert refused.value.problems == [(None, "no row has a label in column 'label', and the test set needs "
                                             "labeled rows")]


def vector_rows(n: int, dim: int) -> list[dict[str, object]]:
    return [{"id": f"v{i}", "embedding": json.dumps([float((i + j) % 3) + 0.5 for j in range(dim)]),
             "label": "ab"[i % 2]} for i in range(n)]


@pytest.mark.parametrize(
    ("pool", "test", "why"),
    [
        ("vectors", "texts", "no 'embedding' vectors, but the data file {train} has 4-d 'embedding' vectors"),
        ("texts", "vectors", "4-d 'embedding' vectors, but the data file {train} has no 'embedding' vectors"),
        ("vectors", "wider", "6-d 'embedding' vectors, but the data file {train} has 4-d 'embedding' vectors"),
    ],
)
def test_data_and_test_files_that_disagree_on_vectors_are_refused_naming_both(
    tmp_path: Path, pool: str, test: str, why: str
) -> None:
    kinds = {"vectors": vector_rows(20, 4), "wider": vector_rows(20, 6), "texts": texts(10)}
    train = write_csv(tmp_path / "train.csv", kinds[pool])
    test_path = write_csv(tmp_path / "test.csv", [row | {"id": f"t{i}"} for i, row in enumerate(kinds[test])])
    with pytest.raises(PoolFileError) as refused:
        load(tmp_path, DataSource(train, test_path=test_path))
    assert refused.value.path == str(test_path)
    [(_line, problem)] = refused.value.problems
    assert problem.startswith(why.format(train=train)) and "give both files vectors of one width, or neither" in problem


def test_one_vector_twice_without_ids_names_the_embedding_and_the_way_out(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", **{key: row[key] for key in ("embedding", "label")}}
            for i, row in enumerate(vector_rows(20, 4))]  # no id column; vectors repeat every third row
    with pytest.raises(PoolFileError) as refused:
        load(tmp_path, DataSource(write_csv(tmp_path / "train.csv", rows), test_fraction=0.25))
    line, problem = refused.value.problems[0]
    assert (line, problem) == (5, "the same embedding is on line 2 with label 'a', here with label 'b'; "
                               "give every row an id, or pass --keep-duplicates to replay both")


def test_a_test_fraction_with_a_test_file_is_refused(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", texts(20))
    with pytest.raises(ValueError, match="exclude each other"):
        load(tmp_path, DataSource(train, test_path=train, test_fraction=0.3))
