"""One arm of a simulated annotation run: select, annotate, refit, evaluate, repeat.

The pool's gold labels live only in the :class:`Oracle`; :func:`replay` sees a label
only after the oracle has revealed it for an item the strategy picked. The strategy
view is built as ``daemon/selection.py`` builds it for the daemon.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from daemon.simulate_data import LabeledSplit
from daemon.simulate_metrics import macro_f1_and_recall
from daemon.stopping import StoppingRule, prediction_kappa, reference_gap, reference_of
from strategies import DEFAULT_NEAR_COPY_COSINE, PoolView, near_copies, repeats, select_batch, select_distinct

__all__ = [
    "Classifier",
    "ClassifierFactory",
    "Oracle",
    "ReplayConfig",
    "RoundRecord",
    "replay",
    "sets_aside_copies",
]

FloatArray = npt.NDArray[np.floating[Any]]
LabelArray = npt.NDArray[np.object_]


class Classifier(Protocol):
    """The slice of ``ProxyClassifier`` the simulator uses (sklearn conventions)."""

    classes_: npt.NDArray[Any]

    def fit(self, X: FloatArray, y: LabelArray) -> Classifier: ...

    def predict_proba(self, X: FloatArray) -> FloatArray: ...


ClassifierFactory = Callable[[int], Classifier]
"""``seed -> unfitted classifier``; picklable (module-level or a ``partial``) when ``jobs > 1``."""


class Oracle:
    """The simulated annotator: holds the pool's gold labels and reveals only what is asked for.

    Args:
        labels: (n,) gold class names of the pool, by pool position.
    """

    def __init__(self, labels: LabelArray) -> None:
        self._labels = labels
        self._is_revealed = np.zeros(labels.shape[0], dtype=bool)

    @property
    def is_revealed(self) -> npt.NDArray[np.bool_]:
        """(n,) True for positions annotated so far (a copy)."""
        return self._is_revealed.copy()

    def annotate(self, positions: npt.NDArray[np.intp]) -> list[str]:
        """Reveal and return the labels of ``positions`` (distinct, not yet annotated).

        Raises:
            ValueError: a position is repeated or was annotated before.
        """
        if np.unique(positions).shape[0] != positions.shape[0] or self._is_revealed[positions].any():
            raise ValueError("the oracle was asked twice for the same item")
        self._is_revealed[positions] = True
        return [str(label) for label in self._labels[positions]]


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How one arm runs.

    Attributes:
        batch_size: >= 1, items annotated per round.
        budget: >= 1, total labels (capped at the pool size).
        stopping: the label-free stopping rule whose kappas are recorded.
        near_copy_cosine: unlabeled items at least this close to a labeled one are set aside,
            as the daemon's ``loop.near_copy_cosine`` does (they come back once fewer than a
            batch of other items is left); None keeps them. Not in the reference arms
            (:func:`sets_aside_copies`).
    """

    batch_size: int = 50
    budget: int = 2000
    stopping: StoppingRule = field(default_factory=StoppingRule)
    near_copy_cosine: float | None = DEFAULT_NEAR_COPY_COSINE


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """What one round of one arm measured, after its batch was annotated and the head refitted.

    ``kappa`` compares this round's and the previous round's predictions on the items
    still unlabeled (None while there is no previous fitted model). ``class_recall`` is
    aligned with ``SimulationResult.eval_classes``. ``first_seen`` lists the classes whose
    first label came in this round, each with that label's 1-based position in the
    annotation order (the batch's presentation order), so "labels until every class was
    seen" is exact to the label, not only to the batch.
    """

    strategy: str
    seed: int
    round: int
    n_labels: int
    accuracy: float
    macro_f1: float
    n_classes_seen: int
    selected_by: str
    select_s: float
    fit_s: float
    kappa: float | None
    class_recall: tuple[float, ...]
    first_seen: tuple[tuple[str, int], ...] = ()
    n_set_aside: int = 0  # unlabeled items set aside as near-copies of labeled ones, after this round
    # items of this round's batch that nearly copy an item labeled in an earlier round or an earlier item of the batch
    n_copies_asked: int = 0


def replay(
    pool: FloatArray,
    oracle: Oracle,
    test: LabeledSplit,
    *,
    n_classes: int,
    strategy: str,
    seed: int,
    config: ReplayConfig,
    make_classifier: ClassifierFactory,
    eval_classes: Sequence[str] | None = None,
    class_prototypes: Mapping[str, FloatArray] | None = None,
) -> list[RoundRecord]:
    """Run one arm: select, annotate, refit, evaluate, until the budget or the pool runs out.

    Args:
        pool: (n, d) vectors of the pool, rows L2-normalised; their labels are in ``oracle`` only.
        oracle: reveals labels of picked positions; nothing else here sees pool labels.
        test: held-out vectors and labels for evaluation.
        n_classes: the declared number of classes (``n_unseen_classes`` = this minus those seen).
        strategy: a registry name.
        seed: with ``strategy``, seeds the arm's only RNG.
        config: batch size, budget, stopping rule.
        make_classifier: ``seed -> unfitted classifier``; a fresh one is fitted each round.
        eval_classes: classes to average over; the test set's classes when None.
        class_prototypes: declared class name -> (d,) unit vector of the name, in the pool's
            space; the view carries those of the classes not seen yet. None: no names.

    Returns:
        One record per round, in order.
    """
    classes = tuple(eval_classes) if eval_classes is not None else tuple(sorted(set(test.labels.tolist())))
    rng = np.random.default_rng([seed, zlib.crc32(strategy.encode())])
    budget = min(config.budget, pool.shape[0])
    set_aside_at = config.near_copy_cosine if sets_aside_copies(strategy) else None
    state = _ArmState(pool.shape[0], class_prototypes)
    records: list[RoundRecord] = []
    while len(state.labels) < budget:
        k = min(config.batch_size, budget - len(state.labels))
        candidates = state.candidates(k)
        view = state.view(pool, candidates, n_classes)
        began = time.perf_counter()
        if set_aside_at is None:
            selection = select_batch(strategy, view, k, rng=rng)
        else:  # as the daemon's select stage: no two near-copies in one batch
            selection, _ = select_distinct(strategy, view, k, rng=rng, min_cosine=set_aside_at)
        select_s = time.perf_counter() - began
        picked = candidates[selection.positions]
        copies_asked = state.copies_among(pool, picked, config.near_copy_cosine or DEFAULT_NEAR_COPY_COSINE)
        first_seen = state.add(picked, oracle.annotate(picked))
        if set_aside_at is not None:
            state.set_aside_copies_of(pool, picked, set_aside_at)
        fit_s = state.refit(pool, make_classifier(seed), config.batch_size)
        accuracy, macro_f1, recall = macro_f1_and_recall(test.labels, state.predict(test.embeddings), classes)
        records.append(
            RoundRecord(
                strategy=strategy,
                seed=seed,
                round=len(records),
                n_labels=len(state.labels),
                accuracy=accuracy,
                macro_f1=macro_f1,
                n_classes_seen=len(state.counts),
                selected_by=selection.strategy,
                select_s=select_s,
                fit_s=fit_s,
                kappa=state.kappa,
                class_recall=tuple(recall.tolist()),
                first_seen=first_seen,
                n_set_aside=int(np.count_nonzero(state.is_set_aside & ~state.is_labeled)),
                n_copies_asked=copies_asked,
            )
        )
        if state.is_labeled.all():
            break
    return records


def sets_aside_copies(strategy: str) -> bool:
    """Whether an arm of ``strategy`` sets near-copies aside when the config says so.

    ``random`` and modAL's own arms are the references every other arm is measured against:
    they run as they would alone, a uniform sample of the pool and modAL as shipped. The others
    run as the daemon runs them.
    """
    return strategy != "random" and not strategy.startswith("modal_")


class _ArmState:
    """The learner's side of one arm: what it has labeled and the head fitted on it."""

    def __init__(self, n: int, prototypes: Mapping[str, FloatArray] | None = None) -> None:
        self.prototypes = prototypes
        self.is_labeled = np.zeros(n, dtype=bool)
        self.is_set_aside = np.zeros(n, dtype=bool)  # near-copies of labeled rows
        self.positions: list[int] = []
        self.labels: list[str] = []
        self.counts: Counter[str] = Counter()
        self.model: Classifier | None = None
        self.proba: FloatArray | None = None  # on the unlabeled rows, in pool order
        # earlier models' classes for the rows unlabeled then, with their label counts: the daemon's
        # stopping rule compares a model with the newest one at least a gap of labels back
        self.snapshots: list[tuple[int, LabelArray]] = []
        self.kappa: float | None = None

    def add(self, positions: npt.NDArray[np.intp], labels: list[str]) -> tuple[tuple[str, int], ...]:
        """Record annotated items; return the classes seen for the first time, with their label number."""
        first_seen = []
        for offset, label in enumerate(labels):
            if label not in self.counts:
                first_seen.append((label, len(self.labels) + offset + 1))
            self.counts[label] += 1
        self.is_labeled[positions] = True
        self.positions.extend(int(p) for p in positions)
        self.labels.extend(labels)
        return tuple(first_seen)

    def candidates(self, k: int) -> npt.NDArray[np.intp]:
        """The unlabeled rows not set aside, in pool order; every unlabeled row once fewer than ``k`` are left."""
        unlabeled = ~self.is_labeled
        kept = np.flatnonzero(unlabeled & ~self.is_set_aside)
        return kept if kept.size >= k else np.flatnonzero(unlabeled)

    def set_aside_copies_of(self, pool: FloatArray, positions: npt.NDArray[np.intp], min_cosine: float) -> None:
        """Set aside the unlabeled rows at least ``min_cosine`` close to one of ``positions`` (just labeled)."""
        rows = np.flatnonzero(~self.is_labeled & ~self.is_set_aside)
        self.is_set_aside[rows[near_copies(pool[rows], pool[positions], min_cosine=min_cosine) >= 0]] = True

    def copies_among(self, pool: FloatArray, positions: npt.NDArray[np.intp], min_cosine: float) -> int:
        """How many of ``positions`` (a batch, not labeled yet) nearly copy a labeled row or an earlier row of the
        batch: labels that teach the model little."""
        batch = pool[positions]
        again = repeats(batch, min_cosine=min_cosine) >= 0
        if self.positions:
            again |= near_copies(batch, pool[self.positions], min_cosine=min_cosine) >= 0
        return int(np.count_nonzero(again))

    def view(self, pool: FloatArray, candidates: npt.NDArray[np.intp], n_classes: int) -> PoolView:
        """Build the strategy's view of ``candidates`` (from :meth:`candidates`) as the daemon's select stage does."""
        classes = () if self.model is None else tuple(str(c) for c in self.model.classes_)
        proba = self.proba  # on every unlabeled row: cut to the candidates
        if proba is not None and candidates.size < proba.shape[0]:
            proba = proba[~self.is_set_aside[~self.is_labeled]]
        return PoolView(
            embeddings=pool[candidates],
            proba=proba,
            label_counts=np.asarray([self.counts[c] for c in classes], dtype=np.intp),
            n_unseen_classes=max(0, n_classes - len(self.counts)),
            labeled_embeddings=pool[self.positions] if self.positions else None,
            unseen_prototypes=self._unseen_prototypes(pool.dtype),
        )

    def _unseen_prototypes(self, dtype: np.dtype[Any]) -> FloatArray | None:
        """(u, d) name vectors of the declared classes without a label yet, by name; None without names."""
        if self.prototypes is None:
            return None
        unseen = sorted(name for name in self.prototypes if name not in self.counts)
        if not unseen:
            return None
        stacked: FloatArray = np.stack([self.prototypes[name] for name in unseen]).astype(dtype)
        return stacked

    def refit(self, pool: FloatArray, classifier: Classifier, batch_size: int) -> float:
        """Fit ``classifier`` on the revealed labels; score the rest; return the fit time in s."""
        began = time.perf_counter()
        self.model = None
        if len(self.counts) >= 2:  # the daemon's cold start: one class cannot train a head
            self.model = classifier.fit(pool[self.positions], np.asarray(self.labels, dtype=object))
        fit_s = time.perf_counter() - began
        remaining = np.flatnonzero(~self.is_labeled)
        self.proba, self.kappa = None, None
        if self.model is not None and remaining.size:
            self.proba = self.model.predict_proba(pool[remaining])
            current = np.asarray(self.model.classes_, dtype=object)[np.argmax(self.proba, axis=1)]
            n_labels = len(self.labels)
            reference = reference_of([count for count, _ in self.snapshots], n_labels,
                                     reference_gap(n_labels, batch_size))
            if reference is not None:
                self.kappa = prediction_kappa(self.snapshots[reference][1][remaining], current)
                self.snapshots = self.snapshots[reference:]  # labels only grow: older ones are done with
            predicted = np.empty(len(self.is_labeled), dtype=object)
            predicted[remaining] = current
            self.snapshots.append((n_labels, predicted))
        return fit_s

    def predict(self, embeddings: FloatArray) -> LabelArray:
        if self.model is None:  # a single class seen: predicting it is all one can do
            return np.full(embeddings.shape[0], self.counts.most_common(1)[0][0], dtype=object)
        proba = self.model.predict_proba(embeddings)
        predicted: LabelArray = np.asarray(self.model.classes_, dtype=object)[np.argmax(proba, axis=1)]
        return predicted
