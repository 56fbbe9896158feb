"""Simulated annotation: curve figures, bookkeeping, no label leaks, reproducibility, file input."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from daemon.errors import PoolFileError
from daemon.simulate import Oracle, Reference, ReplayConfig, RoundRecord, SimulationResult, replay, run_simulation
from daemon.simulate_data import (
    DataSource,
    LabeledSplit,
    SimulationData,
    load_simulation_data,
    stratified_test_mask,
)
from daemon.simulate_metrics import aulc, first_reaching, macro_f1_and_recall, rare_classes, value_at
from daemon.simulate_replay import sets_aside_copies
from daemon.simulate_report import summarise, table_rows, write_outputs
from models.hashing import HashingEmbedder

CLASSES = ("a", "b", "c")


class CentroidClassifier:
    """A tiny deterministic stand-in for ProxyClassifier: softmax over cosine to class means."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, X: Any, y: Any) -> CentroidClassifier:
        labels = np.asarray(y, dtype=object)
        self.classes_ = np.asarray(sorted(set(labels.tolist())), dtype=object)
        self._means = np.stack([X[labels == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        logits = 8.0 * (np.asarray(X, dtype=np.float64) @ self._means.T)
        logits -= logits.max(axis=1, keepdims=True)
        proba: npt.NDArray[np.float64] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return proba


def blobs(n: int, seed: int, shares: tuple[float, ...] = (0.5, 0.3, 0.2)) -> LabeledSplit:
    """Unit vectors around one centre per class, with class shares ``shares``."""
    rng = np.random.default_rng(seed)
    centres = np.eye(len(shares), 8) * 3.0
    labels = rng.choice(len(shares), size=n, p=shares)
    points = centres[labels] + rng.normal(size=(n, 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return LabeledSplit(points.astype(np.float32), np.asarray([CLASSES[i] for i in labels], dtype=object))


def synthetic(n_pool: int = 150) -> SimulationData:
    return SimulationData(
        name="blobs",
        pool=blobs(n_pool, 1),
        test=blobs(90, 2),
        classes=CLASSES,
        encoder="synthetic",
        embed_s=0.0,
        n_unlabeled_dropped=0,
    )


def run_arm(data: SimulationData, strategy: str, seed: int, **config: Any) -> list[RoundRecord]:
    return replay(
        data.pool.embeddings,
        Oracle(data.pool.labels),
        data.test,
        n_classes=len(data.classes),
        strategy=strategy,
        seed=seed,
        config=ReplayConfig(**({"batch_size": 10, "budget": 60} | config)),
        make_classifier=CentroidClassifier,
    )


# --- curve figures ------------------------------------------------------------------------------


def test_labels_to_target_is_the_first_point_at_or_above_it() -> None:
    labels, f1 = [50, 100, 150, 200, 250], [0.40, 0.70, 0.90, 0.85, 0.95]
    assert first_reaching(labels, f1, 0.90) == 150
    assert first_reaching(labels, f1, 0.91) == 250
    assert first_reaching(labels, f1, 0.30) == 50
    assert first_reaching(labels, f1, 0.96) is None


def test_aulc_is_the_trapezoid_mean_over_the_label_range() -> None:
    assert aulc([0, 100, 200], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert aulc([50, 60, 150], [0.4, 0.4, 0.4]) == pytest.approx(0.4)
    assert aulc([10, 30], [0.2, 0.6]) == pytest.approx(0.4)
    assert aulc([100], [0.7]) == pytest.approx(0.7)


def test_curves_must_be_aligned_and_increasing() -> None:
    with pytest.raises(ValueError, match="increasing"):
        aulc([100, 50], [0.1, 0.2])
    with pytest.raises(ValueError, match="one length"):
        first_reaching([1, 2], [0.5], 0.1)


def test_value_at_takes_the_last_point_within_budget() -> None:
    assert value_at([50, 100, 150], [0.1, 0.2, 0.3], 120) == pytest.approx(0.2)
    assert value_at([50, 100, 150], [0.1, 0.2, 0.3], 10) is None


def test_rare_classes_use_the_quartile_with_many_classes_and_the_share_with_few() -> None:
    many = {f"c{i}": 100 - i for i in range(12)}
    assert rare_classes(many) == ("c10", "c11", "c9")
    assert rare_classes({"ham": 980, "spam": 20}) == ("spam",)
    assert rare_classes({"w": 25, "x": 25, "y": 25, "z": 25}) == ()


def test_macro_f1_counts_never_predicted_classes_as_zero() -> None:
    truth = np.asarray(["a", "a", "b", "c"], dtype=object)
    predicted = np.asarray(["a", "a", "b", "b"], dtype=object)
    accuracy, macro_f1, recall = macro_f1_and_recall(truth, predicted, ["a", "b", "c"])
    assert accuracy == pytest.approx(0.75)
    assert macro_f1 == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert recall.tolist() == [1.0, 1.0, 0.0]


# --- the replay loop ----------------------------------------------------------------------------


def test_the_model_is_never_fit_on_an_item_before_it_was_annotated() -> None:
    data = synthetic()
    oracle = Oracle(data.pool.labels)
    row_of = {data.pool.embeddings[p].tobytes(): p for p in range(data.pool.embeddings.shape[0])}
    fitted_sizes: list[int] = []

    class Spy(CentroidClassifier):
        def fit(self, X: Any, y: Any) -> CentroidClassifier:
            positions = np.asarray([row_of[np.asarray(row, dtype=np.float32).tobytes()] for row in X])
            revealed = oracle.is_revealed
            assert revealed[positions].all(), "trained on an item the oracle has not revealed"
            assert positions.shape[0] == revealed.sum(), "trained on fewer or more items than annotated"
            assert list(y) == data.pool.labels[positions].tolist()
            fitted_sizes.append(positions.shape[0])
            return super().fit(X, y)

    for strategy in ("random", "margin", "scarce_margin_diverse"):
        oracle = Oracle(data.pool.labels)
        fitted_sizes.clear()
        records = replay(
            data.pool.embeddings,
            oracle,
            data.test,
            n_classes=3,
            strategy=strategy,
            seed=0,
            config=ReplayConfig(batch_size=10, budget=50),
            make_classifier=lambda seed: Spy(seed),
        )
        assert [r.n_labels for r in records] == [10, 20, 30, 40, 50]
        assert fitted_sizes == [r.n_labels for r in records if r.n_classes_seen >= 2]


def test_the_oracle_refuses_to_answer_twice() -> None:
    oracle = Oracle(np.asarray(["a", "b", "c"], dtype=object))
    assert oracle.annotate(np.asarray([2], dtype=np.intp)) == ["c"]
    with pytest.raises(ValueError, match="twice"):
        oracle.annotate(np.asarray([0, 2], dtype=np.intp))


def test_classes_seen_counts_the_distinct_labels_annotated_so_far() -> None:
    data = synthetic(n_pool=40)
    records = run_arm(data, "random", 3, batch_size=7, budget=40)
    assert [r.n_labels for r in records] == [7, 14, 21, 28, 35, 40]
    seen = [r.n_classes_seen for r in records]
    assert seen == sorted(seen)
    assert seen[-1] == len(set(data.pool.labels.tolist()))


def test_first_batch_of_a_model_strategy_is_the_cold_start() -> None:
    records = run_arm(synthetic(), "margin", 0)
    assert records[0].selected_by == "cold_start"
    assert {r.selected_by for r in records[1:]} == {"margin"}
    assert records[0].kappa is None and all(r.kappa is not None for r in records[2:])


def _without_times(records: list[RoundRecord]) -> list[tuple[Any, ...]]:
    return [(r.n_labels, r.accuracy, r.macro_f1, r.n_classes_seen, r.kappa, r.class_recall) for r in records]


def test_random_arm_is_reproducible_by_seed() -> None:
    data = synthetic()
    first, again, other = run_arm(data, "random", 7), run_arm(data, "random", 7), run_arm(data, "random", 8)
    assert _without_times(first) == _without_times(again)
    assert _without_times(first) != _without_times(other)


def test_budget_beyond_the_pool_stops_when_the_pool_is_labeled() -> None:
    records = run_arm(synthetic(n_pool=25), "random", 0, batch_size=10, budget=1000)
    assert [r.n_labels for r in records] == [10, 20, 25]


def test_run_simulation_summarises_every_strategy_against_random(tmp_path: Path) -> None:
    result = run_simulation(
        synthetic(),
        ["random", "margin"],
        [0, 1],
        ReplayConfig(batch_size=10, budget=60),
        make_classifier=CentroidClassifier,
    )
    assert len(result.records) == 2 * 2 * 6
    summaries = summarise(result)
    assert [s.strategy for s in summaries] == ["random", "margin"]
    random = summaries[0]
    if random.labels_to_f1["95"] is not None:
        assert random.ratio_to_random["95"] == pytest.approx(1.0)
    assert 0.0 <= random.aulc <= 1.0
    rows = table_rows(summaries)
    assert rows[0]["strategy"] == "random"
    written = write_outputs(result, summaries, tmp_path / "out")
    assert all(path.is_file() for path in written)
    header = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert header["reference"]["n_labels"] == 150
    assert (tmp_path / "out" / "rounds.csv").read_text().count("\n") == 1 + 24
    # "classes" is the pool's, as the printed header says, beside the test set's (QA: it held the test set's)
    assert (header["classes"], header["classes_in_test"]) == (len(result.pool_counts), len(result.eval_classes))


def test_run_simulation_refuses_unknown_strategies() -> None:
    with pytest.raises(ValueError, match="unknown"):
        run_simulation(synthetic(), ["nope"], [0], ReplayConfig(), make_classifier=CentroidClassifier)


def test_run_simulation_refuses_a_strategy_named_twice_before_running() -> None:
    ran: list[int] = []

    def counting(seed: int) -> CentroidClassifier:
        ran.append(seed)
        return CentroidClassifier(seed)

    with pytest.raises(ValueError, match=r"strategies must be distinct, got \['random', 'random'\]"):
        run_simulation(synthetic(), ["random", "random"], [0], ReplayConfig(batch_size=10, budget=20),
                       make_classifier=counting)
    assert ran == []  # refused up front, not after the arms ran (summarise failed on the doubled rounds)


# --- loading files ------------------------------------------------------------------------------


def test_stratified_split_holds_out_each_class_but_keeps_singletons() -> None:
    labels = ["a"] * 10 + ["b"] * 5 + ["c"]
    held = stratified_test_mask(labels, 0.2)
    assert held[:10].sum() == 2 and held[10:15].sum() == 1 and not held[15]
    assert (held == stratified_test_mask(labels, 0.2)).all()


def test_precomputed_embeddings_and_the_split_column_are_used(tmp_path: Path) -> None:
    data = synthetic(n_pool=60)
    path = tmp_path / "vectors.csv"
    lines = ["id,embedding,label,split"]
    for side, split in ((data.pool, "train"), (data.test, "test")):
        for row, (vector, label) in enumerate(zip(side.embeddings, side.labels, strict=True)):
            lines.append(f'{split}{row},"{json.dumps([round(float(v), 6) for v in vector])}",{label},{split}')
    path.write_text("\n".join(lines) + "\n")
    loaded = load_simulation_data(DataSource(path), embedder=None, cache_dir=tmp_path / "cache")
    assert loaded.pool.embeddings.shape == (60, 8) and loaded.test.embeddings.shape == (90, 8)
    assert loaded.encoder == "precomputed-d8"
    assert np.allclose(loaded.pool.embeddings, data.pool.embeddings, atol=1e-5)
    result = run_simulation(
        loaded, ["margin"], [0], ReplayConfig(batch_size=10, budget=30), make_classifier=CentroidClassifier
    )
    assert [r.n_labels for r in result.records] == [10, 20, 30]


def test_keep_duplicates_replays_repeated_and_conflicting_rows(tmp_path: Path) -> None:
    path = tmp_path / "noisy.csv"
    rows = [f"{word} message number {i % 10},{word}" for i in range(40) for word in ("spam", "ham")]
    rows += ["spam message number 1,ham", "ham message number 2,spam"]  # the same texts under the other label
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(PoolFileError, match="keep-duplicates"):
        load_simulation_data(DataSource(path), embedder=HashingEmbedder(dim=16), cache_dir=tmp_path / "cache")
    loaded = load_simulation_data(DataSource(path, test_fraction=0.25, keep_duplicates=True),
                                  embedder=HashingEmbedder(dim=16), cache_dir=tmp_path / "cache")
    assert len(loaded.pool.labels) + len(loaded.test.labels) == 82


def test_texts_are_embedded_once_through_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    rows = [{"text": f"{word} message number {i}", "label": word} for i in range(30) for word in ("spam", "ham")]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    embedder = HashingEmbedder(dim=32)
    first = load_simulation_data(DataSource(path, test_fraction=0.25), embedder=embedder, cache_dir=tmp_path / "c")
    assert first.pool.embeddings.shape == (44, 32) and first.test.embeddings.shape == (16, 32)  # 8 per class

    class Refusing(HashingEmbedder):
        def encode(self, texts: Any) -> Any:
            raise AssertionError("every vector should come from the cache")

    again = load_simulation_data(
        DataSource(path, test_fraction=0.25), embedder=Refusing(dim=32), cache_dir=tmp_path / "c",
        use_class_names=False,
    )
    assert np.array_equal(again.pool.embeddings, first.pool.embeddings)
    assert again.class_prototypes is None


def test_class_names_are_embedded_with_the_pool_encoder(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    path.write_text("text,label\n" + "\n".join(f"{w} number {i},{w}_msg" for i in range(20) for w in ("spam", "ham")))
    embedder = HashingEmbedder(dim=32)
    loaded = load_simulation_data(DataSource(path, test_fraction=0.25), embedder=embedder, cache_dir=tmp_path / "c")
    assert loaded.classes == ("ham_msg", "spam_msg")
    assert loaded.class_prototypes is not None
    np.testing.assert_allclose(loaded.class_prototypes, embedder.encode(["ham msg", "spam msg"]), atol=1e-6)


def test_the_view_carries_the_names_of_the_unseen_classes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.simulate_replay as simulate_replay
    import strategies.registry
    from strategies import select_batch

    data = replace(synthetic(), pool=blobs(200, 4, shares=(0.49, 0.49, 0.02)))
    rare = int(np.flatnonzero(data.pool.labels == "c")[0])
    prototypes = {"a": np.eye(8)[7], "b": np.eye(8)[6], "c": data.pool.embeddings[rare].astype(np.float64)}
    seen: list[tuple[int, int]] = []
    original = select_batch

    def spy(strategy: str, view: Any, k: int, *, rng: np.random.Generator) -> Any:
        seen.append((view.n_unseen_classes, 0 if view.unseen_prototypes is None else len(view.unseen_prototypes)))
        return original(strategy, view, k, rng=rng)

    monkeypatch.setattr(simulate_replay, "select_batch", spy)
    monkeypatch.setattr(strategies.registry, "select_batch", spy)  # what select_distinct calls
    records = replay(
        data.pool.embeddings, Oracle(data.pool.labels), data.test, n_classes=3, strategy="scarce_margin_diverse",
        seed=0, config=ReplayConfig(batch_size=5, budget=20), make_classifier=CentroidClassifier,
        class_prototypes=prototypes,
    )
    assert seen[0] == (3, 3)
    assert all(n_unseen == n_names for n_unseen, n_names in seen)
    assert "c" not in dict(records[0].first_seen)  # the representative cold start missed the rare class
    assert dict(records[1].first_seen).get("c") == 6  # then the row that is c's name was asked for first


def test_all_classes_seen_is_counted_in_annotation_order() -> None:
    data = synthetic(n_pool=60)
    answered: list[str] = []

    class RecordingOracle(Oracle):
        def annotate(self, positions: Any) -> list[str]:
            labels = super().annotate(positions)
            answered.extend(labels)
            return labels

    records = replay(
        data.pool.embeddings,
        RecordingOracle(data.pool.labels),
        data.test,
        n_classes=3,
        strategy="random",
        seed=1,
        config=ReplayConfig(batch_size=10, budget=60),
        make_classifier=CentroidClassifier,
    )
    first_seen = dict(pair for r in records for pair in r.first_seen)
    assert first_seen == {name: answered.index(name) + 1 for name in set(answered)}
    summary = summarise(
        run_simulation(
            data, ["random"], [1], ReplayConfig(batch_size=10, budget=60), make_classifier=CentroidClassifier
        )
    )[0]
    assert summary.all_seen_labels == max(first_seen.values())


def test_arms_run_on_one_torch_thread_whatever_jobs_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head's fits depend on the thread count: workers (--jobs 2) ran on one thread and --jobs 1 on
    torch's default, so the same seeds gave curves up to 0.02 macro-F1 apart."""
    import torch

    import daemon.simulate as simulate

    seen: list[int] = []

    def record(arm: tuple[str, int], **_: object) -> list[object]:
        seen.append(torch.get_num_threads())
        return []

    monkeypatch.setattr(simulate, "_run_arm", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_simulation(synthetic(), ["random"], [0, 1], ReplayConfig(batch_size=10, budget=20),
                       make_classifier=CentroidClassifier, jobs=1)
        assert seen == [1, 1] and torch.get_num_threads() == 2  # and the setting comes back
    finally:
        torch.set_num_threads(before)


def test_rows_without_a_label_and_labels_differing_only_in_case_are_called_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both passed silently: rows without a label were dropped, and "desc" and "DESC" became two classes."""
    path = tmp_path / "cased.csv"
    rows = [f"{word} message number {i},{word}" for i in range(30) for word in ("spam", "ham")]
    rows += ["one more message,", "SPAM in capitals,SPAM", "another capital SPAM,SPAM"]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    caplog.set_level(logging.WARNING, logger="daemon.simulate_data")
    loaded = load_simulation_data(DataSource(path, test_fraction=0.25), embedder=HashingEmbedder(dim=16),
                                  cache_dir=tmp_path / "cache")
    assert loaded.n_unlabeled_dropped == 1 and "SPAM" in loaded.classes
    text = " ".join(record.getMessage() for record in caplog.records)
    assert "1 row(s) without a label skipped" in text
    assert re.search(r"differ only in case are separate classes here: 'SPAM' \(first on line 6[34]\), 'spam' "
                     r"\(first on line \d+\)", text)  # where to fix the spelling


def test_repeated_rows_and_split_values_other_than_test_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: 800 rows read and 773 replayed with no word why; rows marked 'dev' went into the pool silently."""
    path = tmp_path / "split.csv"
    rows = [f"message number {i},{('spam', 'ham')[i % 2]},{('train', 'test', 'dev')[i % 3]}" for i in range(60)]
    rows += ["message number 0,spam,train", "message number 2,spam,dev"]  # exact repeats of earlier rows
    path.write_text("text,label,split\n" + "\n".join(rows) + "\n")
    caplog.set_level(logging.INFO, logger="daemon.simulate_data")
    loaded = load_simulation_data(DataSource(path), embedder=HashingEmbedder(dim=16), cache_dir=tmp_path / "cache")
    assert len(loaded.pool.labels) + len(loaded.test.labels) == 60
    text = " ".join(record.getMessage() for record in caplog.records)
    assert "2 row(s) repeat an earlier row's text and label (or id) and are one item with it" in text
    assert "rows marked 'dev' (20) are in the pool" in text


def test_near_copies_of_labeled_items_are_set_aside_until_nothing_else_is_left() -> None:
    base = blobs(40, 5)
    copies = np.repeat(np.arange(20), 2)  # rows 0-19 twice more each: 80 pool rows
    pool = np.concatenate([base.embeddings, base.embeddings[copies]])
    labels = np.concatenate([base.labels, base.labels[copies]])

    class Recording(Oracle):
        def __init__(self) -> None:
            super().__init__(labels)
            self.copies_asked = 0
            self.within_batch = 0  # the most pairs of near-copies in one batch

        def annotate(self, positions: npt.NDArray[np.intp]) -> list[str]:
            batch = pool[positions]
            pairs = np.triu(batch @ batch.T > 0.999, k=1)
            again = pairs.any(axis=0)  # a copy of an earlier item of the same batch, or of one labeled earlier
            earlier = pool[self.is_revealed]
            if earlier.shape[0]:
                again |= (batch @ earlier.T).max(axis=1) > 0.999
            self.within_batch = max(self.within_batch, int(pairs.sum()))
            self.copies_asked += int(again.sum())
            return super().annotate(positions)

    def run(near_copy_cosine: float | None, budget: int, strategy: str = "margin") -> tuple[Recording, list[Any]]:
        oracle = Recording()
        records = replay(pool, oracle, blobs(60, 6), n_classes=3, strategy=strategy, seed=0,
                         config=ReplayConfig(batch_size=10, budget=budget, near_copy_cosine=near_copy_cosine),
                         make_classifier=CentroidClassifier)
        return oracle, records

    kept, records = run(None, 30)
    assert kept.copies_asked > 0  # without the rule, margin asks for copies of what it labeled
    assert sum(r.n_copies_asked for r in records) == kept.copies_asked  # and the records count them
    assert kept.within_batch > 0  # and takes a text and its copy in one batch
    set_aside, records = run(0.97, 30)
    assert set_aside.copies_asked == 0 and sum(r.n_copies_asked for r in records) == 0
    assert set_aside.within_batch == 0
    assert records[-1].n_set_aside > 0
    assert [r.n_set_aside for r in records] == sorted(r.n_set_aside for r in records)
    # the reference arms run as they would alone: random is a uniform sample of the whole pool
    reference, records = run(0.97, 30, "random")
    assert reference.copies_asked > 0 and all(r.n_set_aside == 0 for r in records)
    assert not sets_aside_copies("random") and not sets_aside_copies("modal_margin") and sets_aside_copies("margin")
    # 40 distinct rows: once they are labeled, the copies are all that is left and are asked for
    _, records = run(0.97, 80)
    assert records[-1].n_labels == 80 and records[-1].n_set_aside == 0
    summary = summarise(SimulationResult(
        dataset="copies", strategies=("margin",), seeds=(0,), config=ReplayConfig(10, 80),
        requested=ReplayConfig(10, 80),
        eval_classes=CLASSES, pool_counts=dict.fromkeys(CLASSES, 1), n_pool=80, n_test=60, encoder="synthetic",
        embed_s=0.0, reference=Reference(80, 1.0, 1.0, (1.0, 1.0, 1.0), 0.0), records=tuple(records), wall_s=0.0))[0]
    assert summary.copies_asked == sum(r.n_copies_asked for r in records) > 0  # the last rounds ask for copies
    assert table_rows([summary])[0]["copies asked"] == f"{summary.copies_asked:.0f}"
