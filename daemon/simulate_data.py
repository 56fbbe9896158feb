"""Load a labeled file for simulated annotation: rows, a pool/test split, and vectors.

Rows are read with :func:`daemon.pool_files.read_pool_file` (CSV, JSONL, Parquet,
validated as for the daemon's pool). Vectors come from an ``embedding`` column when
the file has one, else from the encoder through the on-disk embedding cache, so a
data set is encoded once however many strategies and seeds replay it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.errors import PoolFileError
from daemon.pool_files import PoolRow, read_pool_file
from models.class_names import embed_class_names
from models.embedder import Embedder

__all__ = ["DataSource", "LabeledSplit", "SimulationData", "load_simulation_data", "stratified_test_mask"]

log = logging.getLogger(__name__)
Float32Array = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.object_]
SPLIT_FIELD = "split"
DEFAULT_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the held-out set is the same for every seed and strategy
PRECOMPUTED = "precomputed-d"  # the encoder key of vectors read from the file


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where the labeled data lives and how to read it.

    Attributes:
        path: CSV/TSV/JSONL/Parquet file with one labeled item per row.
        test_path: a separate evaluation file in the same layout, or None.
        test_fraction: in ``(0, 1)``: hold out this stratified share of ``path``; None
            means use a ``split`` column (``test`` rows are held out) when there is
            one, else ``DEFAULT_TEST_FRACTION``.
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
        classes: every class of pool or test, sorted: the project's declared label set.
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
        PoolFileError: a file is unreadable, has fewer than two classes or an empty side.
        ValueError: ``test_fraction`` outside ``(0, 1)`` or no embedder for a text file.
    """
    pool_rows, dropped = _labeled_rows(source, source.path)
    if source.test_path is not None:
        test_rows, dropped_test = _labeled_rows(source, source.test_path)
        dropped += dropped_test
    else:
        is_test = _test_mask(pool_rows, source.test_fraction)
        test_rows = [row for row, held in zip(pool_rows, is_test, strict=True) if held]
        pool_rows = [row for row, held in zip(pool_rows, is_test, strict=True) if not held]
    _check_sides(source.path, pool_rows, test_rows)
    started = time.perf_counter()
    vectors, encoder = _vectors(pool_rows + test_rows, embedder, cache_dir)
    embed_s = time.perf_counter() - started
    n_pool = len(pool_rows)
    classes = tuple(sorted({str(row.label) for row in pool_rows + test_rows}))
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


def _labeled_rows(source: DataSource, path: Path) -> tuple[list[PoolRow], int]:
    rows = read_pool_file(
        path,
        id_field=source.id_field,
        text_field=source.text_field,
        label_field=source.label_field,
        embedding_field=source.embedding_field,
        keep_duplicates=source.keep_duplicates,
    )
    labeled = [row for row in rows if row.label is not None]
    return labeled, len(rows) - len(labeled)


def _test_mask(rows: list[PoolRow], fraction: float | None) -> npt.NDArray[np.bool_]:
    if fraction is None:
        splits = [str(row.meta.get(SPLIT_FIELD, "")).strip().lower() for row in rows]
        if "test" in splits and any(value != "test" for value in splits):
            log.info("using the file's %r column to hold out a test set", SPLIT_FIELD)
            return np.asarray([value == "test" for value in splits], dtype=bool)
        fraction = DEFAULT_TEST_FRACTION
    return stratified_test_mask([str(row.label) for row in rows], fraction)


def _check_sides(path: Path, pool_rows: list[PoolRow], test_rows: list[PoolRow]) -> None:
    if not pool_rows or not test_rows:
        raise PoolFileError(str(path), [(None, "the pool and the test set each need labeled rows")])
    if len({row.label for row in pool_rows}) < 2:
        raise PoolFileError(str(path), [(None, "the pool needs labels of at least two classes")])


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
