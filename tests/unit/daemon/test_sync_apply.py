from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from connectors.base import AnnotationState, RemoteTaskState
from daemon.store import Batch, BatchItem, BatchItemState, BatchStatus, LabelEvent, LabelRecord, LabelStatus
from daemon.sync import apply_task_states, close_finished_batches
from tests.unit.daemon.conftest import set_classes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ann(aid: str, choice: str, minutes: int, *, skipped: bool = False) -> AnnotationState:
    return AnnotationState(aid, (choice,) if choice else (), "ann@example.com", T0 + timedelta(minutes=minutes),
                           is_skipped=skipped)


def task(*annotations: AnnotationState, item: str = "i1", remote: str = "7") -> RemoteTaskState:
    return RemoteTaskState(item, remote, T0, tuple(annotations))


def seed_batch(engine: Engine, items: list[tuple[str, str]]) -> str:
    with Session(engine) as session:
        batch = Batch(strategy="margin", model_version="m1", status=BatchStatus.PUSHED, size=len(items))
        session.add(batch)
        for position, (item_id, remote) in enumerate(items):
            session.add(BatchItem(batch_id=batch.id, item_id=item_id, position=position, score=1.0,
                                  remote_task_id=remote))
        session.commit()
        return batch.id


def label_of(engine: Engine, item_id: str) -> tuple[LabelStatus, str | None] | None:
    with Session(engine) as session:
        record = session.get(LabelRecord, item_id)
        return None if record is None else (record.status, record.label)


def test_annotation_edit_delete_and_reapply(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    seed_batch(engine, [("i1", "7")])
    with Session(engine) as session:
        assert apply_task_states(session, [task(ann("a1", "spam", 1))]) == (1, 0)
        session.commit()
    assert label_of(engine, "i1") == (LabelStatus.LABELED, "spam")
    with Session(engine) as session:  # the same state again changes nothing
        assert apply_task_states(session, [task(ann("a1", "spam", 1))]) == (0, 0)
        assert apply_task_states(session, [task(ann("a1", "ham", 2))]) == (1, 0)  # edited
        session.commit()
    assert label_of(engine, "i1") == (LabelStatus.LABELED, "ham")
    with Session(engine) as session:
        apply_task_states(session, [task()])  # annotation deleted
        session.commit()
        item = session.exec(select(BatchItem)).one()
        assert item.state is BatchItemState.PENDING
        history = [(e.status, e.label, e.previous_label) for e in session.exec(select(LabelEvent))]
    assert label_of(engine, "i1") == (LabelStatus.RETRACTED, None)
    assert history == [(LabelStatus.LABELED, "spam", None), (LabelStatus.LABELED, "ham", "spam"),
                       (LabelStatus.RETRACTED, None, "ham")]


def test_latest_answer_wins_and_skip_is_recorded(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    seed_batch(engine, [("i1", "7"), ("i2", "8")])
    with Session(engine) as session:
        apply_task_states(session, [
            task(ann("a2", "ham", 5), ann("a1", "spam", 1)),
            task(ann("a3", "", 2, skipped=True), item="i2", remote="8"),
        ])
        assert close_finished_batches(session) == 1
        session.commit()
        states = {i.item_id: i.state for i in session.exec(select(BatchItem))}
    assert label_of(engine, "i1") == (LabelStatus.LABELED, "ham")
    assert label_of(engine, "i2") == (LabelStatus.SKIPPED, None)
    assert states == {"i1": BatchItemState.LABELED, "i2": BatchItemState.SKIPPED}


def test_unknown_choice_is_recorded_not_dropped(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    seed_batch(engine, [("i1", "7")])
    with Session(engine) as session:
        assert apply_task_states(session, [task(ann("a1", "eggs", 1))]) == (1, 1)
        session.commit()
    assert label_of(engine, "i1") == (LabelStatus.UNKNOWN, "eggs")


def vote(aid: str, choice: str, minutes: int, who: str | None, *, star: bool = False) -> AnnotationState:
    return AnnotationState(aid, (choice,), who, T0 + timedelta(minutes=minutes), is_ground_truth=star)


def verdicts(engine: Engine, *states: RemoteTaskState) -> dict[str, tuple[LabelStatus, str | None] | None]:
    with Session(engine) as session:
        apply_task_states(session, list(states))
        session.commit()
    return {state.item_id: label_of(engine, state.item_id) for state in states}


def test_each_annotator_votes_once_and_a_tie_is_a_dispute(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    seed_batch(engine, [("i1", "7"), ("i2", "8"), ("i3", "9")])
    got = verdicts(
        engine,
        task(vote("a1", "spam", 1, "ann"), vote("a2", "ham", 2, "bob")),
        # ann answered twice: her latest answer is her vote, so bob's ham is not outvoted
        task(vote("a3", "spam", 1, "ann"), vote("a4", "ham", 2, "bob"), vote("a5", "spam", 3, "ann"),
             item="i2", remote="8"),
        task(vote("a6", "spam", 1, None), vote("a7", "ham", 2, None), vote("a8", "spam", 3, None),
             item="i3", remote="9"),  # annotators unknown: each annotation votes
    )
    # a dispute names who gave each answer, and no one annotator (QA: carol's name beside a three-way tie)
    assert got == {"i1": (LabelStatus.DISPUTED, "ham (bob) vs spam (ann)"),
                   "i2": (LabelStatus.DISPUTED, "ham (bob) vs spam (ann)"), "i3": (LabelStatus.LABELED, "spam")}
    with Session(engine) as session:
        states = {i.item_id: i.state for i in session.exec(select(BatchItem))}
        assert session.get(LabelRecord, "i1").annotator is None  # type: ignore[union-attr]
    assert set(states.values()) == {BatchItemState.LABELED}  # answered: nothing left to wait for


def test_a_majority_settles_a_dispute_and_a_ground_truth_overrides_it(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    seed_batch(engine, [("i1", "7")])
    ann_says, bob_says = vote("a1", "spam", 1, "ann"), vote("a2", "ham", 2, "bob")
    assert verdicts(engine, task(ann_says, bob_says))["i1"] == (LabelStatus.DISPUTED, "ham (bob) vs spam (ann)")
    cy_says = vote("a3", "spam", 3, "cy")
    assert verdicts(engine, task(ann_says, bob_says, cy_says))["i1"] == (LabelStatus.LABELED, "spam")
    starred = vote("a2", "ham", 4, "bob", star=True)  # a reviewer marks bob's answer as the ground truth
    assert verdicts(engine, task(ann_says, starred, cy_says))["i1"] == (LabelStatus.LABELED, "ham")
    with Session(engine) as session:
        record = session.get(LabelRecord, "i1")
        assert record is not None and (record.annotator, record.remote_annotation_id) == ("bob", "a2")
        history = [(e.status, e.label) for e in session.exec(select(LabelEvent))]
    assert history == [(LabelStatus.DISPUTED, "ham (bob) vs spam (ann)"), (LabelStatus.LABELED, "spam"),
                       (LabelStatus.LABELED, "ham")]


def test_a_labeled_task_that_wants_more_answers_stays_waiting(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    seed_batch(engine, [("i1", "7")])
    first = vote("a1", "spam", 1, "ann")
    wanting = RemoteTaskState("i1", "7", T0, (first,), is_complete=False)
    assert verdicts(engine, wanting)["i1"] == (LabelStatus.LABELED, "spam")  # trained on already
    with Session(engine) as session:
        assert session.exec(select(BatchItem)).one().state is BatchItemState.PENDING
        assert close_finished_batches(session) == 0
    verdicts(engine, task(first, vote("a2", "spam", 2, "bob")))
    with Session(engine) as session:
        assert session.exec(select(BatchItem)).one().state is BatchItemState.LABELED
        assert close_finished_batches(session) == 1


def test_seed_label_survives_a_stray_skip(engine: Engine) -> None:
    set_classes(engine, ["ham", "spam"])
    with Session(engine) as session:
        session.add(LabelRecord(item_id="i1", status=LabelStatus.LABELED, label="spam", source="seed"))
        session.commit()
        apply_task_states(session, [task(ann("a1", "", 1, skipped=True))])
        apply_task_states(session, [task()])
        session.commit()
    assert label_of(engine, "i1") == (LabelStatus.LABELED, "spam")


def test_health_events_are_pruned(engine: Engine) -> None:
    from daemon.service import prune_health_events
    from daemon.store import HealthEvent

    with Session(engine) as session:
        session.add_all([HealthEvent(kind="job_missed", message=str(i)) for i in range(30)])
        session.commit()
        prune_health_events(session, keep=10)
        session.commit()
        kept = [e.message for e in session.exec(select(HealthEvent))]
    assert kept == [str(i) for i in range(20, 30)]
