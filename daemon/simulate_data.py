"""Load a labeled file for simulated annotation: rows, a pool/test split, and vectors.

Rows are read with :func:`daemon.pool_files.read_pool_file` (CSV, JSONL, Parquet,
validated as for the daemon's pool). Vectors come from an ``embedding`` column when
the file has one, else from the encoder through the on-disk embedding cache, so a
data set is encoded once however many strategies and seeds replay it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.errors import PoolFileError, position_word
from daemon.pool_files import PoolRow, read_pool_file
from models.class_names import embed_class_names
from models.embedder import Embedder

__all__ = ["DataSource", "LabeledSplit", "SimulationData", "load_simulation_data", "stratified_test_mask"]

log = logging.getLogger(__name__)
_KEEP_BOTH = "give every row an id, or pass --keep-duplicates to replay both"
Float32Array = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.object_]
SPLIT_FIELD = "split"
DEFAULT_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the held-out set is the same for every seed and strategy
PRECOMPUTED = "precomputed-d"  # the encoder key of vectors read from the file


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where the labeled data lives and how to read it.

    A test set given by ``test_path`` or the ``split`` column loses, with a warning, its
    rows whose item is also in the pool (same id; without an id column the id comes from
    the text, which under ``keep_duplicates`` is compared across the two sides) and the
    rows whose label no pool row has (the learner could never ask for that class, and it
    would count as 0 in every score). A random holdout needs neither (under
    ``keep_duplicates`` each of its rows is its own item).

    Attributes:
        path: CSV/TSV/JSONL/Parquet file with one labeled item per row.
        test_path: a separate evaluation file in the same layout, or None.
        test_fraction: in ``(0, 1)``: hold out this stratified share of ``path``; None
            means use a ``split`` column (``test`` rows are held out) when it has
            ``test`` rows, else ``DEFAULT_TEST_FRACTION``. Not with ``test_path``.
        text_field, label_field, id_field, embedding_field: column names.
        keep_duplicates: without an id column, keep every row as its own item (repeated
            texts, and one text under two labels, stay as they are in the file) instead of
            merging identical texts and refusing conflicting ones.
    """

    path: Path
    test_path: Path | None = None
    test_fraction: float | None = None
    text_field: str = "text"
    label_field: str = "label"
    id_field: str = "id"
    embedding_field: str = "embedding"
    keep_duplicates: bool = False


@dataclass(frozen=True, slots=True)
class LabeledSplit:
    """Vectors and gold labels of one side of the split.

    Attributes:
        embeddings: (n, d) float32, rows L2-normalised.
        labels: (n,) class names (str objects).
    """

    embeddings: Float32Array
    labels: LabelArray


@dataclass(frozen=True, slots=True)
class SimulationData:
    """A data set ready for replay.

    Attributes:
        name: short name used in outputs.
        pool: items the learner may ask the oracle about.
        test: held-out items, used only to evaluate.
        classes: every class of the pool, sorted: the project's declared label set (test
            rows of other classes are dropped on load).
        encoder: the cache key of the encoder, or ``precomputed-d<dim>``.
        embed_s: seconds spent encoding (0 when every vector came from the cache).
        n_unlabeled_dropped: rows without a label, which cannot be replayed.
        class_prototypes: (len(classes), d) float32 vectors of the class names, by the same
            encoder as the pool (:func:`models.class_names.embed_class_names`), aligned with
            ``classes``; None for precomputed vectors or when names are not to be used.
    """

    name: str
    pool: LabeledSplit
    test: LabeledSplit
    classes: tuple[str, ...]
    encoder: str
    embed_s: float
    n_unlabeled_dropped: int
    class_prototypes: Float32Array | None = None

    def pool_counts(self) -> dict[str, int]:
        """Return items per class in the pool, for every declared class (0 when absent)."""
        counts = Counter(str(label) for label in self.pool.labels)
        return {name: counts.get(name, 0) for name in self.classes}


def load_simulation_data(
    source: DataSource,
    *,
    embedder: Embedder | None,
    cache_dir: Path,
    name: str | None = None,
    use_class_names: bool = True,
) -> SimulationData:
    """Read, split and embed a labeled data set.

    Args:
        source: the file(s) and column names.
        embedder: encodes texts when the file has no vectors; may be None only then.
        cache_dir: folder of the embedding cache (created if missing).
        name: short name for outputs; the file's stem when None.
        use_class_names: embed the class names too (text files only), as the daemon does
            with ``loop.use_class_names``, so the default strategy can look for unseen classes.

    Raises:
        PoolFileError: a file is unreadable, has fewer than two classes or an empty side, or
            the data and test files disagree on vectors.
        ValueError: ``test_fraction`` outside ``(0, 1)`` or with ``test_path``, or no embedder
            for a text file.
    """
    if source.test_path is not None and source.test_fraction is not None:
        raise ValueError("a test file and a test fraction exclude each other: the test file is the whole test set")
    pool_rows, dropped, in_both = _labeled_rows(source, source.path)
    _check_labeled(source, source.path, pool_rows)
    n_merged: int | None = 0  # test items merged into pool items on reading; None: a random holdout
    if source.test_path is None:
        pool_rows, test_rows, n_merged = _hold_out(source, pool_rows, in_both)
    else:
        test_rows, dropped_test, _ = _labeled_rows(source, source.test_path)
        dropped += dropped_test
        _check_labeled(source, source.test_path, test_rows)
        _check_vectors(source, source.test_path, pool_rows[0], test_rows[0])
    if n_merged is not None:
        test_rows = _without_overlap(source, pool_rows, test_rows, n_merged)
    test_rows = _without_unseen_labels(source, pool_rows, test_rows)
    _check_sides(source, pool_rows, test_rows)
    started = time.perf_counter()
    vectors, encoder = _vectors(pool_rows + test_rows, embedder, cache_dir)
    embed_s = time.perf_counter() - started
    n_pool = len(pool_rows)
    classes = tuple(sorted({str(row.label) for row in pool_rows}))  # every test label is one of them
    if dropped:
        log.warning("%s: %d row(s) without a label skipped (empty or missing): they cannot be replayed", source.path,
                    dropped)
    _warn_case_variants(source.path, pool_rows)
    prototypes = None
    if use_class_names and embedder is not None and not encoder.startswith(PRECOMPUTED):
        prototypes = embed_class_names(embedder, classes)
    return SimulationData(
        name=name or source.path.stem,
        pool=LabeledSplit(vectors[:n_pool], _labels(pool_rows)),
        test=LabeledSplit(vectors[n_pool:], _labels(test_rows)),
        classes=classes,
        encoder=encoder,
        embed_s=embed_s,
        n_unlabeled_dropped=dropped,
        class_prototypes=prototypes,
    )


def _warn_case_variants(path: Path, rows: Sequence[PoolRow]) -> None:
    """Labels that differ only in case are replayed as separate classes (`pool add` refuses them): say so,
    with the first line of each spelling (QA: the warning named the spellings, not where to fix them)."""
    first_line: dict[str, int] = {}
    for row in rows:
        first_line.setdefault(str(row.label), row.line)
    spellings: dict[str, list[str]] = {}
    for name in sorted(first_line):
        spellings.setdefault(name.casefold(), []).append(name)
    variants = [names for names in spellings.values() if len(names) > 1]
    if variants:
        log.warning("%s: labels that differ only in case are separate classes here: %s; fix the spelling if they "
                    "are one", path, "; ".join(", ".join(f"{name!r} (first on {position_word(path)} {first_line[name]})"
                                                          for name in names) for names in variants[:5]))


def stratified_test_mask(labels: Sequence[str], fraction: float, *, seed: int = SPLIT_SEED) -> npt.NDArray[np.bool_]:
    """Mark a stratified ``fraction`` of the items as held out, by a seeded draw per class.

    Each class sends ``round(fraction * count)`` items to the test side, but keeps
    at least one in the pool; so a singleton class stays in the pool.

    Args:
        labels: (n,) class names.
        fraction: in ``(0, 1)``.
        seed: the draw's seed.

    Returns:
        (n,) True for held-out items.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    names = np.asarray(labels, dtype=object)
    held = np.zeros(names.shape[0], dtype=bool)
    for name in sorted(set(labels)):
        members = np.flatnonzero(names == name)
        n_test = min(round(fraction * members.shape[0]), members.shape[0] - 1)
        if n_test > 0:
            held[rng.choice(members, size=n_test, replace=False)] = True
    return held


def _labeled_rows(source: DataSource, path: Path) -> tuple[list[PoolRow], int, set[str]]:
    """Read ``path`` as ``read_pool_file`` does; return its labeled rows, the number of unlabeled ones,
    and the ids of labeled items that rows put on both sides of the ``split`` column (merged into one item).

    Raises:
        PoolFileError: a malformed row, a repeated id with other content, or no rows.
    """
    sides: dict[str, set[bool]] = {}  # each item's sides of the split column, over all its rows
    seen = [0]  # valid rows read, repeats included

    def on_row(row: PoolRow) -> None:
        seen[0] += 1
        sides.setdefault(row.item_id, set()).add(_is_test_row(row))

    rows = read_pool_file(path, id_field=source.id_field, text_field=source.text_field,
                          label_field=source.label_field, embedding_field=source.embedding_field,
                          keep_duplicates=source.keep_duplicates, way_out=_KEEP_BOTH, on_row=on_row)
    labeled = [row for row in rows if row.label is not None]
    in_both = {row.item_id for row in labeled if len(sides[row.item_id]) == 2}
    repeats = seen[0] - len(rows)
    if repeats:  # QA: 800 rows read, 773 items replayed, and nothing said why
        log.info("%s: %d row(s) repeat an earlier row's text and label (or id) and are one item with it, as "
                 "`pool add` reads them; --keep-duplicates replays every row", path, repeats)
    return labeled, len(rows) - len(labeled), in_both


def _is_test_row(row: PoolRow) -> bool:
    return str(row.meta.get(SPLIT_FIELD, "")).strip().lower() == "test"


def _hold_out(
    source: DataSource, rows: list[PoolRow], in_both: set[str]
) -> tuple[list[PoolRow], list[PoolRow], int | None]:
    """Split one file's rows into pool and test: by ``test_fraction``, else the ``split`` column, else 20 %.

    Returns:
        ``(pool, test, n_merged)``: ``n_merged`` counts the items that rows put on both sides
        of the ``split`` column (kept in the pool only); None for a random holdout.
    """
    fraction = source.test_fraction
    if fraction is None:
        is_test = [_is_test_row(row) and row.item_id not in in_both for row in rows]
        if any(is_test) and not all(is_test):
            others = Counter(str(row.meta.get(SPLIT_FIELD, "")).strip() for row in rows if not _is_test_row(row))
            named = ", ".join(f"{value!r} ({n})" for value, n in sorted(others.items()) if value.lower() != "train")
            log.info("%s: using the %r column to hold out a test set (its 'test' rows)%s", source.path, SPLIT_FIELD,
                     f"; rows marked {named} are in the pool" if named else "")  # QA: 'dev' went in silently
            return ([row for row, held in zip(rows, is_test, strict=True) if not held],
                    [row for row, held in zip(rows, is_test, strict=True) if held], len(in_both))
        if any(SPLIT_FIELD in row.meta for row in rows):
            log.warning("%s: the %r column has %s; holding out a stratified %.0f%% instead", source.path,
                        SPLIT_FIELD, "only 'test' rows" if any(is_test) else "no 'test' rows",
                        100 * DEFAULT_TEST_FRACTION)
        fraction = DEFAULT_TEST_FRACTION
    held = stratified_test_mask([str(row.label) for row in rows], fraction)
    return ([row for row, is_held in zip(rows, held, strict=True) if not is_held],
            [row for row, is_held in zip(rows, held, strict=True) if is_held], None)


def _without_overlap(source: DataSource, pool_rows: list[PoolRow], test_rows: list[PoolRow],
                     n_merged: int) -> list[PoolRow]:
    """Drop test rows whose item is also in the pool (``n_merged`` were merged into pool items already)."""
    in_pool = {_item_key(source, row) for row in pool_rows}
    kept = [row for row in test_rows if _item_key(source, row) not in in_pool]
    n_overlap = n_merged + len(test_rows) - len(kept)
    if n_overlap:
        log.warning("%s: dropped %d test item(s) also in the pool (same id, or same text without an id column); "
                    "they stay in the pool only", source.test_path or source.path, n_overlap)
    return kept


def _without_unseen_labels(source: DataSource, pool_rows: list[PoolRow], test_rows: list[PoolRow]) -> list[PoolRow]:
    """Drop test rows whose label no pool row has: the learner could never ask for that class."""
    in_pool = {row.label for row in pool_rows}
    unseen = Counter(str(row.label) for row in test_rows if row.label not in in_pool)
    if unseen:
        named = ", ".join(f"{label!r} ({count})" for label, count in sorted(unseen.items())[:10])
        more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        log.warning("%s: dropped %d test row(s) whose label is never in the pool: %s%s",
                    source.test_path or source.path, sum(unseen.values()), named, more)
    return [row for row in test_rows if row.label in in_pool]


def _item_key(source: DataSource, row: PoolRow) -> str:
    """The item's id; under ``keep_duplicates`` an id from the row's line names no item across files: the text does."""
    if source.keep_duplicates and row.item_id == f"row-{row.line}":
        content = row.text.encode("utf-8") if row.embedding is None else row.embedding.tobytes()
        return "h-" + hashlib.sha256(content).hexdigest()
    return row.item_id


def _check_labeled(source: DataSource, path: Path, rows: list[PoolRow]) -> None:
    if not rows:
        side = "test set" if path == source.test_path else "pool"
        raise PoolFileError(str(path), [(None, f"no row has a label in column {source.label_field!r}, and the "
                                               f"{side} needs labeled rows")])


def _check_sides(source: DataSource, pool_rows: list[PoolRow], test_rows: list[PoolRow]) -> None:
    if not test_rows:
        raise PoolFileError(str(source.test_path or source.path), [(None, "no test rows are left (test rows also "
                                                                          "in the pool, or with a label the pool "
                                                                          "lacks, are dropped)")])
    if len({row.label for row in pool_rows}) < 2:
        raise PoolFileError(str(source.path), [(None, "the pool needs labels of at least two classes")])


def _check_vectors(source: DataSource, test_path: Path, pool_row: PoolRow, test_row: PoolRow) -> None:
    """Refuse a test file whose vectors (or lack of them) differ from the data file's: one space or none."""
    if _width(pool_row) != _width(test_row):
        raise PoolFileError(str(test_path), [(None, f"{_vectors_text(source, test_row)}, but the data file "
                                                    f"{source.path} has {_vectors_text(source, pool_row)}: give "
                                                    "both files vectors of one width, or neither")])


def _width(row: PoolRow) -> int | None:
    return None if row.embedding is None else row.embedding.shape[0]


def _vectors_text(source: DataSource, row: PoolRow) -> str:
    width = _width(row)
    return f"{'no' if width is None else f'{width}-d'} {source.embedding_field!r} vectors"


def _labels(rows: list[PoolRow]) -> LabelArray:
    return np.asarray([str(row.label) for row in rows], dtype=object)


def _vectors(rows: list[PoolRow], embedder: Embedder | None, cache_dir: Path) -> tuple[Float32Array, str]:
    """Return (n, d) L2-normalised vectors for ``rows`` and the encoder's key."""
    if rows[0].embedding is not None:
        raw = np.asarray([row.embedding for row in rows], dtype=np.float32)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        unit: Float32Array = (raw / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return unit, f"{PRECOMPUTED}{raw.shape[1]}"
    if embedder is None:
        raise ValueError("the file carries no embedding column, so an encoder is needed")
    return _cached_encode([row.text for row in rows], embedder, cache_dir)


def _cached_encode(texts: list[str], embedder: Embedder, cache_dir: Path) -> tuple[Float32Array, str]:
    """Encode the texts the cache lacks, then read every vector back from the cache (float16-rounded)."""
    from models.cache import EmbeddingCache, embed_missing, model_key

    key = model_key(embedder)
    with EmbeddingCache(cache_dir, model_key=key, dim=embedder.dim) as cache:
        rows = embed_missing(embedder, cache, texts)
        vectors: Float32Array = cache.get(rows)
    return vectors, key
