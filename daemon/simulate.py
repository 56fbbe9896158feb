"""Simulated annotation: replay active learning on a labeled data set, with an oracle as annotator.

Each (strategy, seed) arm runs the daemon's own loop without Label Studio: the pool's
vectors are what the daemon would embed, :func:`strategies.select_batch` picks each
batch from a :class:`strategies.PoolView` built as ``daemon/selection.py`` builds it,
the :class:`Oracle` reveals the gold labels of exactly the picked items, and a fresh
proxy head (``models.classifier.ProxyClassifier`` with the daemon's default settings)
is fitted on the revealed labels only. After every batch the model is evaluated on a
held-out test set. Labels stay hidden until annotated; nothing else reads them.

The first batch of every strategy but ``random`` is the cold-start selection (the
registry falls back to it while fewer than two classes have labels). The ``modal_*``
arms call modAL's query functions on our precomputed probabilities: modAL's
``ActiveLearner.teach`` fails with scikit-learn >= 1.8 (``force_all_finite``), so the
simulator refits our head every round instead of teaching a modAL learner.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from daemon.simulate_data import SimulationData
from daemon.simulate_metrics import macro_f1_and_recall
from daemon.simulate_replay import (
    Classifier,
    ClassifierFactory,
    Oracle,
    ReplayConfig,
    RoundRecord,
    replay,
)

__all__ = [
    "Classifier",
    "ClassifierFactory",
    "Oracle",
    "Reference",
    "ReplayConfig",
    "RoundRecord",
    "SimulationResult",
    "proxy_classifier",
    "replay",
    "run_simulation",
]

log = logging.getLogger(__name__)


def proxy_classifier(seed: int, **overrides: Any) -> Classifier:
    """Return the daemon's proxy head with its default settings (``daemon.settings.ModelSettings``)."""
    from daemon.settings import ModelSettings
    from models.classifier import ProxyClassifier

    model = ModelSettings()
    options: dict[str, Any] = {"hidden_dim": model.hidden_dim, "epochs": model.epochs, "random_state": seed}
    options.update(overrides)
    classifier: Classifier = ProxyClassifier(**options)
    return classifier


@dataclass(frozen=True, slots=True)
class Reference:
    """The full-data model: trained once on every pool label, evaluated on the test set."""

    n_labels: int
    accuracy: float
    macro_f1: float
    class_recall: tuple[float, ...]
    fit_s: float


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Every round of every arm on one data set, plus what is needed to summarise them.

    ``config`` is what the arms ran with: the budget capped at the pool size and the batch
    at the budget; ``requested`` is the config as asked for. ``n_unlabeled_dropped`` counts
    the data's rows without a label (not replayed).
    """

    dataset: str
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    config: ReplayConfig
    requested: ReplayConfig
    eval_classes: tuple[str, ...]
    pool_counts: dict[str, int]
    n_pool: int
    n_test: int
    encoder: str
    embed_s: float
    reference: Reference
    records: tuple[RoundRecord, ...]
    wall_s: float
    n_unlabeled_dropped: int = 0


def run_simulation(
    data: SimulationData,
    strategies: Sequence[str],
    seeds: Sequence[int],
    config: ReplayConfig,
    *,
    make_classifier: ClassifierFactory = proxy_classifier,
    jobs: int = 1,
) -> SimulationResult:
    """Replay every (strategy, seed) arm on ``data`` and train the full-data reference once.

    Args:
        data: pool and test vectors with gold labels.
        strategies: registry names, e.g. ``("random", "margin")``.
        seeds: one arm per seed and strategy; each arm's RNG is seeded by both.
        config: batch size, budget and stopping rule; the budget is capped at the pool size
            and the batch at the budget (``SimulationResult.config`` holds what ran).
        make_classifier: ``seed -> unfitted classifier``.
        jobs: worker processes (>= 1); arms are independent, so they run in parallel.

    Raises:
        ValueError: an unknown or repeated strategy, an empty strategy or seed list, a repeated seed,
            or a bad config.
    """
    _check_config(strategies, seeds, config, jobs)
    requested = config
    budget = min(config.budget, data.pool.labels.shape[0])
    config = replace(config, budget=budget, batch_size=min(config.batch_size, budget))
    if config != requested:
        log.info("%s: batch %d, budget %d (asked for %d, %d; the pool has %d items)", data.name, config.batch_size,
                 config.budget, requested.batch_size, requested.budget, data.pool.labels.shape[0])
    started = time.perf_counter()
    eval_classes = tuple(sorted({str(label) for label in data.test.labels}))
    reference = _reference(data, eval_classes, make_classifier(seeds[0]))
    arms = [(name, seed) for name in strategies for seed in seeds]
    run_arm = partial(_run_arm, data=data, eval_classes=eval_classes, config=config, make_classifier=make_classifier)
    if jobs == 1:
        from models.device import torch_threads  # torch loads only when arms run

        # one thread, as in the workers: the head's fits depend on the thread count, and the same
        # seeds gave curves up to 0.02 macro-F1 apart with --jobs 1 and 2
        with torch_threads(1):
            per_arm = [run_arm(arm) for arm in arms]
    else:
        context = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_one_thread) as pool:
            per_arm = list(pool.map(run_arm, arms))
    return SimulationResult(
        dataset=data.name,
        strategies=tuple(strategies),
        seeds=tuple(seeds),
        config=config,
        requested=requested,
        eval_classes=eval_classes,
        pool_counts=data.pool_counts(),
        n_pool=data.pool.labels.shape[0],
        n_test=data.test.labels.shape[0],
        encoder=data.encoder,
        embed_s=data.embed_s,
        reference=reference,
        records=tuple(record for records in per_arm for record in records),
        wall_s=time.perf_counter() - started,
        n_unlabeled_dropped=data.n_unlabeled_dropped,
    )


def _run_arm(
    arm: tuple[str, int],
    *,
    data: SimulationData,
    eval_classes: tuple[str, ...],
    config: ReplayConfig,
    make_classifier: ClassifierFactory,
) -> list[RoundRecord]:
    strategy, seed = arm
    began = time.perf_counter()
    records = replay(
        data.pool.embeddings,
        Oracle(data.pool.labels),
        data.test,
        n_classes=len(data.classes),
        strategy=strategy,
        seed=seed,
        config=config,
        make_classifier=make_classifier,
        eval_classes=eval_classes,
        class_prototypes=None if data.class_prototypes is None else dict(
            zip(data.classes, data.class_prototypes, strict=True)
        ),
    )
    log.info(
        "%s: %s seed %s done in %.1fs (%s rounds)",
        data.name,
        strategy,
        seed,
        time.perf_counter() - began,
        len(records),
    )
    return records


def _one_thread() -> None:
    """Give each worker process one torch thread: ``jobs`` workers then share the cores without
    oversubscription (two threads per worker on a busy 2-core machine made L-BFGS 20x slower)."""
    import torch

    torch.set_num_threads(1)


def _reference(data: SimulationData, eval_classes: tuple[str, ...], classifier: Classifier) -> Reference:
    began = time.perf_counter()
    model = classifier.fit(data.pool.embeddings, data.pool.labels)
    fit_s = time.perf_counter() - began
    predicted = np.asarray(model.classes_, dtype=object)[np.argmax(model.predict_proba(data.test.embeddings), 1)]
    accuracy, macro_f1, recall = macro_f1_and_recall(data.test.labels, predicted, eval_classes)
    return Reference(data.pool.labels.shape[0], accuracy, macro_f1, tuple(recall.tolist()), fit_s)


def _check_config(strategies: Sequence[str], seeds: Sequence[int], config: ReplayConfig, jobs: int) -> None:
    from strategies import REGISTRY

    unknown = [name for name in strategies if name not in REGISTRY]
    if unknown or not strategies:
        raise ValueError(f"unknown or no strategies {unknown}; known: {', '.join(sorted(REGISTRY))}")
    if len(set(strategies)) != len(strategies):  # their rounds would merge into one curve that summarise refuses
        raise ValueError(f"strategies must be distinct, got {list(strategies)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    if config.batch_size < 1 or config.budget < 1 or jobs < 1:
        raise ValueError(f"batch size, budget and jobs must be >= 1, got {config.batch_size}, {config.budget}, {jobs}")
    config.stopping.check()
