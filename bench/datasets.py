"""The label-efficiency benchmark's data sets: the shared CSVs and long-tail variants derived from them.

Every shared data set (``/work/shared/data/<name>/data.csv``, columns ``text,label,split``)
is used as is. The long-tail variants keep the source's test rows untouched and
subsample only its train rows, deterministically (fixed seeds), so anyone can
rebuild them byte for byte:

* ``banking77_lt``: class sizes fall off geometrically, ``n_i = n_max · 100^(-i/76)``
  for rank ``i = 0..76`` (a nominal 100:1 imbalance), with ``n_max`` chosen so the
  pool holds about 2,200 items; sizes are rounded, and at least 1. Which class gets
  which rank is a seeded permutation; when a class has fewer train items than its
  rank asks for, it swaps ranks with the next class down the permutation that has
  enough (sizes never get capped, so the curve stays exactly geometric). Items of a
  class are a seeded draw. The balanced test set (40 per class) is kept.
* ``sms_spam_lt``: every ham train item plus a seeded draw of spam items so spam
  is 2 % of the pool (about 78 of 3,900); the test set keeps its 13 % spam.
* ``trec50``: TREC's own fine-grained labels (``label_fine``, 50 question types, a natural
  long tail from 962 train items down to 4), with the source's train/test split; only 42
  of the 50 types occur among the 500 test questions, most of them 1-10 times. The few
  questions that appear twice under two fine labels are left out.
* ``ag_news_copies``: every AG News train text four times, as pools of scraped or forwarded
  text are: as is, lowercased, with one word (not the first) dropped, and with a source tag
  appended (" (Reuters)", " - AP", " | read more" or " via newswire"); the word and the tag
  are seeded draws. The test set is AG News's own. It measures what near-copies of labeled
  texts cost a strategy (``loop.near_copy_cosine``).

Rows are read with ``daemon.pool_files.read_pool_file``, as the simulator reads them,
so duplicate texts are merged the same way in both.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from daemon.pool_files import PoolRow, read_pool_file

__all__ = [
    "DATA_ROOT",
    "BenchDataset",
    "ag_news_copies",
    "banking77_long_tail",
    "bench_datasets",
    "geometric_sizes",
    "sms_spam_long_tail",
    "trec_fine",
]

DATA_ROOT = Path("/work/shared/data")
LT_SEED = 20240601


@dataclass(frozen=True, slots=True)
class BenchDataset:
    """One benchmark entry: a CSV and how to replay it."""

    name: str
    path: Path
    batch_size: int
    budget: int
    description: str
    copies: bool = False  # a set made of near-copies: the default strategy also runs keeping them


def geometric_sizes(n_classes: int, *, imbalance: float, total: int) -> list[int]:
    """Return ``n_classes`` class sizes falling off geometrically from the largest to ``largest / imbalance``.

    ``n_i = n_max · imbalance^(-i / (C - 1))``, rounded, at least 1, with ``n_max``
    set so the unrounded sizes sum to ``total``. Largest first.
    """
    exponents = np.arange(n_classes) / max(n_classes - 1, 1)
    shape = imbalance ** (-exponents)
    n_max = total / shape.sum()
    return [max(1, round(float(v))) for v in n_max * shape]


def _rows_by_split(path: Path) -> tuple[list[PoolRow], list[PoolRow]]:
    rows = read_pool_file(path)
    train = [row for row in rows if row.meta.get("split") != "test"]
    test = [row for row in rows if row.meta.get("split") == "test"]
    return train, test


def _write(path: Path, pool: list[PoolRow], test: list[PoolRow]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"])
        writer.writerows([row.text, row.label, "train"] for row in pool)
        writer.writerows([row.text, row.label, "test"] for row in test)
    return path


def _assign_ranks(available: dict[str, int], targets: list[int], rng: np.random.Generator) -> list[str]:
    """Order classes by a seeded permutation, then swap down any class too small for its rank."""
    order = [str(name) for name in rng.permutation(sorted(available))]
    for rank, target in enumerate(targets):
        if available[order[rank]] >= target:
            continue
        for lower in range(rank + 1, len(order)):
            if available[order[lower]] >= target:
                order[rank], order[lower] = order[lower], order[rank]
                break
        else:
            raise ValueError(f"no class has {target} items for rank {rank}")
    return order


def banking77_long_tail(out_path: Path, *, imbalance: float = 100.0, total: int = 2200) -> Path:
    """Write the geometric long-tail Banking77 variant (see the module docstring) to ``out_path``."""
    train, test = _rows_by_split(DATA_ROOT / "banking77" / "data.csv")
    by_class: dict[str, list[PoolRow]] = defaultdict(list)
    for row in train:
        by_class[str(row.label)].append(row)
    targets = geometric_sizes(len(by_class), imbalance=imbalance, total=total)
    rng = np.random.default_rng(LT_SEED)
    order = _assign_ranks({name: len(rows) for name, rows in by_class.items()}, targets, rng)
    pool: list[PoolRow] = []
    for name, size in zip(order, targets, strict=True):
        members = by_class[name]
        pool.extend(members[i] for i in sorted(rng.choice(len(members), size=size, replace=False)))
    return _write(out_path, pool, test)


def sms_spam_long_tail(out_path: Path, *, spam_share: float = 0.02) -> Path:
    """Write the SMS spam variant with spam cut to ``spam_share`` of the pool to ``out_path``."""
    train, test = _rows_by_split(DATA_ROOT / "sms_spam" / "data.csv")
    ham = [row for row in train if row.label == "ham"]
    spam = [row for row in train if row.label == "spam"]
    n_spam = round(len(ham) * spam_share / (1.0 - spam_share))
    rng = np.random.default_rng(LT_SEED)
    kept = {spam[i].item_id for i in rng.choice(len(spam), size=n_spam, replace=False)}
    pool = [row for row in train if row.label == "ham" or row.item_id in kept]
    return _write(out_path, pool, test)


def trec_fine(out_path: Path) -> Path:
    """Write TREC with its 50 fine-grained labels as the label column to ``out_path``."""
    rows = read_pool_file(DATA_ROOT / "trec6" / "data.csv", label_field="label_fine", keep_duplicates=True)
    labels_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        labels_of[row.text].add(str(row.label))
    rows = [row for row in rows if len(labels_of[row.text]) == 1]  # a few texts carry two fine labels: dropped
    train = [row for row in rows if row.meta.get("split") != "test"]
    return _write(out_path, train, [row for row in rows if row.meta.get("split") == "test"])


COPY_TAGS = (" (Reuters)", " - AP", " | read more", " via newswire")


def ag_news_copies(out_path: Path) -> Path:
    """Write AG News with three near-copies of every train text (see the module docstring) to ``out_path``."""
    train, test = _rows_by_split(DATA_ROOT / "ag_news" / "data.csv")
    rng = np.random.default_rng(LT_SEED)
    pool: list[PoolRow] = []
    for row in train:
        words = row.text.split()
        dropped = int(rng.integers(1, len(words))) if len(words) > 1 else None
        copies = [row.text.lower(), row.text + COPY_TAGS[int(rng.integers(len(COPY_TAGS)))]]
        if dropped is not None:
            copies.insert(1, " ".join(words[:dropped] + words[dropped + 1 :]))
        pool.extend([row, *(replace(row, text=text) for text in copies if text != row.text)])
    return _write(out_path, pool, test)


def bench_datasets(work_dir: Path) -> list[BenchDataset]:
    """Return every benchmark data set, deriving the long-tail CSVs into ``work_dir`` first.

    Budgets stay well below the pool: about 10-15 % of the larger pools, half of the
    small long-tail Banking77 pool.
    """
    derived = work_dir / "data"
    return [
        BenchDataset("ag_news", DATA_ROOT / "ag_news" / "data.csv", 25, 600, "4 balanced news topics"),
        BenchDataset("sms_spam", DATA_ROOT / "sms_spam" / "data.csv", 25, 500, "binary, 13% spam"),
        BenchDataset("trec6", DATA_ROOT / "trec6" / "data.csv", 25, 600, "6 question types, ABBR 1.6%"),
        BenchDataset(
            "banking77", DATA_ROOT / "banking77" / "data.csv", 50, 1500, "77 intents, mild imbalance"
        ),
        BenchDataset(
            "banking77_lt",
            banking77_long_tail(derived / "banking77_lt.csv"),
            50,
            1100,
            "77 intents, geometric 100:1, pool ~2,200",
        ),
        BenchDataset(
            "sms_spam_lt", sms_spam_long_tail(derived / "sms_spam_lt.csv"), 25, 500, "binary, spam cut to 2%"
        ),
        BenchDataset(
            "trec50", trec_fine(derived / "trec50.csv"), 25, 600, "50 fine question types, natural long tail"
        ),
        BenchDataset(
            "ag_news_copies",
            ag_news_copies(derived / "ag_news_copies.csv"),
            25,
            2500,
            "AG News, each train text 4x (as is, lowercased, a word dropped, a tag added)",
            copies=True,
        ),
    ]
