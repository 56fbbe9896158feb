"""The stopping rule in production: pause the queue once more labels stop changing the model.

After each retrain the new model predicts a fixed random sample of unlabeled items; Cohen's
kappa against the previous model's predictions on the same items goes into a history. When
the rule (``daemon.stopping``) fires *and* the random control slice agrees with the model's
own quality estimate, the daemon stops pushing new batches. ``labelloop resume`` or new pool
items lift the pause. An operator can pause too (``labelloop pause``); only ``labelloop resume``
lifts that one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlmodel import Session, col, select

from daemon.queries import recent_control_accuracy
from daemon.stopping import StoppingRule, first_stop, prediction_kappa, reference_gap, reference_of
from daemon.store import (
    HealthEvent,
    LabelRecord,
    ModelRun,
    PoolItem,
    RemovedItem,
    get_value,
    ids_present,
    not_removed,
    set_value,
)

if TYPE_CHECKING:  # `pool add` lifts a pause: it need not load torch for that
    from daemon.context import LoopContext, TrainedModel
    from daemon.settings import LoopSettings

__all__ = [
    "PAUSE_KEY",
    "PauseWatch",
    "StabilityPoint",
    "history",
    "is_paused",
    "lift_pause",
    "pause_by_operator",
    "update_stability",
]

log = logging.getLogger(__name__)
PAUSE_KEY = "paused"
_SAMPLE_KEY = "stability_sample"
_PREDICTIONS_KEY = "stability_predictions"  # earlier models' predictions: [{"n_labels", "predictions"}, ...]
_HISTORY_KEY = "stability_history"
MIN_CONTROL_LABELS = 10
CONTROL_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class StabilityPoint:
    model_version: str
    n_labels: int
    kappa: float | None


def is_paused(session: Session) -> dict[str, Any] | None:
    raw = get_value(session, PAUSE_KEY)
    return json.loads(raw) if raw else None


class PauseWatch:
    """Log the queue's pause as the daemon sees it: at its first check, and when another process changes it.

    ``labelloop pause``, ``resume`` and ``pool add`` change it from another process, which logs to
    its own terminal; the daemon's log went from "queue paused" to pushing again with no word, and
    after a restart while paused it said nothing while it skipped every batch.
    """

    def __init__(self, loop: LoopSettings) -> None:
        self._loop = loop
        self._checked = False
        self._last: dict[str, Any] | None = None

    def check(self, session: Session) -> None:
        paused = is_paused(session)
        if not self._checked:
            self._checked = True
            if self._loop.stop_rule_enabled and self._loop.control_fraction == 0:
                log.warning("the stopping rule never pauses the queue: it needs the control slice to confirm, and "
                            "loop.control_fraction is 0")
            if paused is not None:
                log.warning("queue paused: %s; run `labelloop resume` to keep labeling", paused["reason"])
        elif paused is None and self._last is not None:
            log.info("queue resumed: new batches are queued again")
        elif paused is not None and self._last is None and paused.get("by") == "operator":
            log.warning("queue paused: %s; run `labelloop resume` to keep labeling", paused["reason"])
        self._last = paused


def pause_by_operator(session: Session, reason: str) -> bool:
    """Stop queueing new batches until ``labelloop resume``; return False when already paused by an operator.

    A pause of the stopping rule becomes the operator's (new pool items no longer lift it).
    """
    paused = is_paused(session)
    if paused is not None and paused.get("by") == "operator":
        return False
    text = f"an operator paused the queue: {reason}" if reason else "an operator paused the queue"
    set_value(session, PAUSE_KEY, json.dumps({"reason": text, "by": "operator"}))
    session.add(HealthEvent(kind="paused", message=text))
    log.warning("queue paused: %s; run `labelloop resume` to keep labeling", text)
    return True


def lift_pause(session: Session, why: str, *, operator: bool = True) -> bool:
    """Resume pushing; return whether a pause was lifted.

    The stability record starts afresh (history, sample and the last predictions): new pool items
    join the sample, and the next retrain is compared with nothing rather than with the same model's
    own predictions (which counted a kappa of 1.0 toward the window, so the queue paused again one
    retrain early). With ``operator=False`` (new pool items) an operator's pause stays, and the
    record starts afresh anyway (the pool changed). An operator's resume of a queue that is not
    paused changes nothing.
    """
    paused = is_paused(session)
    was = paused is not None and (operator or paused.get("by") != "operator")
    if operator and not was:
        return False
    if was:
        set_value(session, PAUSE_KEY, "")
    for key in (_HISTORY_KEY, _SAMPLE_KEY, _PREDICTIONS_KEY):
        set_value(session, key, "")
    if was:
        session.add(HealthEvent(kind="resumed", message=why))
        log.info("queue resumed: %s", why)
    return was


def history(session: Session) -> list[StabilityPoint]:
    raw = get_value(session, _HISTORY_KEY)
    return [StabilityPoint(**point) for point in json.loads(raw)] if raw else []


def update_stability(ctx: LoopContext, model: TrainedModel) -> StabilityPoint | None:
    """Record kappa between this model and the previous one; pause when the rule says stop."""
    loop = ctx.settings.loop
    with Session(ctx.engine) as session:
        points = history(session)
        if points and points[-1].model_version == model.version:
            return None
        sample = _sample(session, ctx)
        if not sample:
            return None
        predicted = _predict(ctx, model, sample)
        gap = reference_gap(model.n_labels, loop.batch_size)
        snapshots = _snapshots(session)
        reference = reference_of([s["n_labels"] for s in snapshots], model.n_labels, gap)
        kappa = None if reference is None else _kappa(snapshots[reference]["predictions"], predicted)
        point = StabilityPoint(model.version, model.n_labels, kappa)
        points.append(point)
        set_value(session, _HISTORY_KEY, json.dumps([asdict(p) for p in points[-50:]]))
        kept = snapshots[reference or 0 :]  # older ones are never a reference again: labels only grow
        if not kept or model.n_labels >= kept[-1]["n_labels"] + max(1, gap // 4):  # a few per gap, not one a retrain
            kept.append({"n_labels": model.n_labels, "predictions": predicted})
        set_value(session, _PREDICTIONS_KEY, json.dumps(kept))
        rule = StoppingRule(threshold=loop.stop_kappa, window=loop.stop_window)
        if loop.stop_rule_enabled and is_paused(session) is None:
            _maybe_pause(session, points, rule, gap)
        session.commit()
    return point


def _maybe_pause(session: Session, points: list[StabilityPoint], rule: StoppingRule, gap: int) -> None:
    tail = [p.kappa for p in points[-rule.window :]]
    if len(tail) < rule.window or first_stop(tail, rule) != rule.window - 1:
        return
    control = recent_control_accuracy(session)  # the latest models', not every model's since the start
    # the newest model with an estimate: the one just trained is cross-validated after the push
    latest = session.exec(select(ModelRun).where(col(ModelRun.accuracy).is_not(None))
                          .order_by(col(ModelRun.created_at).desc())).first()
    agree = (f"models agree with those of {gap}+ fewer labels (kappa ≥ {rule.threshold} over {rule.window} "
             "retrains)")
    if control["n"] < MIN_CONTROL_LABELS or latest is None or latest.accuracy is None:
        log.info("%s, but the queue keeps going: %s labeled control items, %s needed to confirm (loop.control_fraction "
                 "draws them)", agree, control["n"], MIN_CONTROL_LABELS)
        return
    if control["accuracy"] < latest.accuracy - CONTROL_TOLERANCE:
        log.info("%s, but the queue keeps going: the control slice's accuracy %.3f is below the model's own "
                 "estimate %.3f", agree, control["accuracy"], latest.accuracy)
        return  # the model looks better on selected data than on random data: keep labeling
    reason = (f"{agree} and the control slice confirms (accuracy {control['accuracy']:.3f} on the last "
              f"{control['n']} random items)")
    set_value(session, PAUSE_KEY, json.dumps({"reason": reason, "n_labels": points[-1].n_labels,
                                              "model_version": points[-1].model_version}))
    session.add(HealthEvent(kind="paused", message=reason))
    log.warning("queue paused: %s; run `labelloop resume` to keep labeling", reason)


def _sample(session: Session, ctx: LoopContext) -> list[str]:
    """The unlabeled items both models predict: drawn once, and drawn again when labels or removals
    took half of it (with all of it labeled, the rule went silent for good) or when the pause is lifted."""
    raw = get_value(session, _SAMPLE_KEY)
    chosen: list[str] = json.loads(raw) if raw else []
    remaining = _still_unlabeled(session, chosen)
    if not chosen or 2 * len(remaining) < len(chosen):
        chosen = _draw_sample(session, ctx)
        set_value(session, _SAMPLE_KEY, json.dumps(chosen))
        remaining = _still_unlabeled(session, chosen)
    return remaining


def _still_unlabeled(session: Session, chosen: list[str]) -> list[str]:
    left_out = ids_present(session, LabelRecord.item_id, chosen) | ids_present(session, RemovedItem.item_id, chosen)
    return [item_id for item_id in chosen if item_id not in left_out]


def _draw_sample(session: Session, ctx: LoopContext) -> list[str]:
    """A uniform sample of the embedded, unlabeled pool items in the loop, in pool order."""
    # seqs, not ids: a million ints, then the ids of the chosen ones only
    seqs = np.fromiter(
        session.exec(select(PoolItem.seq).where(col(PoolItem.is_embedded), not_removed(PoolItem.item_id),
                                                col(PoolItem.item_id).not_in(select(LabelRecord.item_id)))
                     .order_by(col(PoolItem.seq))),
        dtype=np.int64,
    )
    rng = np.random.default_rng([ctx.settings.loop.seed, 7, len(seqs)])
    size = min(ctx.settings.loop.stability_sample, len(seqs))
    picked = [int(seqs[p]) for p in sorted(rng.choice(len(seqs), size=size, replace=False))] if size else []
    ids: dict[int | None, str] = {}
    for start in range(0, len(picked), 500):
        chunk = picked[start : start + 500]
        ids.update(session.exec(select(PoolItem.seq, PoolItem.item_id).where(col(PoolItem.seq).in_(chunk))).all())
    return [ids[seq] for seq in picked]


def _predict(ctx: LoopContext, model: TrainedModel, item_ids: list[str]) -> dict[str, str]:
    with Session(ctx.engine) as session:
        rows = dict(session.exec(
            select(PoolItem.item_id, PoolItem.content_hash).where(col(PoolItem.item_id).in_(item_ids))
        ).all())
    ordered = [item_id for item_id in item_ids if item_id in rows]
    from daemon.training import vectors_for

    proba = model.classifier.predict_proba(vectors_for(ctx, [rows[i] for i in ordered]))
    return {item_id: model.classes[int(p)] for item_id, p in zip(ordered, proba.argmax(axis=1), strict=True)}


def _snapshots(session: Session) -> list[dict[str, Any]]:
    """Earlier models' predictions on the sample, oldest first (a store from before kept one dict: none)."""
    raw = get_value(session, _PREDICTIONS_KEY)
    stored = json.loads(raw) if raw else []
    return stored if isinstance(stored, list) else []


def _kappa(previous: dict[str, str], predicted: dict[str, str]) -> float | None:
    common = [item_id for item_id in predicted if item_id in previous]
    if not common:
        return None
    return prediction_kappa([previous[i] for i in common], [predicted[i] for i in common])
