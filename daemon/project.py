"""Bind the store to one annotation project and its class list."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from connectors.base import ProjectInfo
from daemon.context import LoopContext
from daemon.errors import ConfigError
from daemon.queries import labels_per_class
from daemon.store import LabelEvent, LabelRecord, LabelStatus, get_value, set_value
from daemon.wording import counted, for_count

__all__ = ["check_binding", "ensure_project", "refresh_classes"]

log = logging.getLogger(__name__)


def ensure_project(ctx: LoopContext) -> ProjectInfo:
    """Find or create the project and store its id and classes (the tool's list wins).

    With no ``project_id`` configured, the project this store worked with is used while it
    exists, even renamed: finding it by title again forked the labeling into a new project.

    The classes to create a project with come from ``loop.classes``, else from the seed labels.

    Raises:
        ConnectorError: the tool is unreachable or refused.
    """
    check_binding(ctx)
    with Session(ctx.engine) as session:
        wanted = list(ctx.settings.loop.classes) or _seed_classes(session)
        known = get_value(session, "project_id")  # a renamed project is still ours after a restart
    info = ctx.connector.ensure_project(classes=wanted or None, known_project_id=known)
    _bind(ctx, info, at_start=True)
    configured = ctx.settings.loop.classes
    if configured and set(configured) != set(info.classes):
        log.warning("loop.classes (%s) differs from the classes of project %s (%s), which decide: edit the classes "
                    "in the project's labeling config", ", ".join(configured), info.project_id, ", ".join(info.classes))
    if not ctx.connector.serves_in_push_order():
        log.warning("project %s does not hand out tasks in the order they were pushed, so annotators do not get "
                    "the most informative ones first and re-ranking withdraws nothing; set its sampling to "
                    "sequential", info.project_id)
    return info


def check_binding(ctx: LoopContext) -> None:
    """Refuse a configured ``project_id`` other than the one this store is bound to, unless allowed.

    Moving a store to another project marks the items waiting in the old one withdrawn, and a
    one-off ``LABELLOOP_LABEL_STUDIO__PROJECT_ID=2 labelloop sync`` did so silently (QA). Asks
    Label Studio nothing.

    Raises:
        ConfigError: the store is bound to another project and ``allow_project_change`` is off.
    """
    ls = ctx.settings.label_studio
    if ls.project_id is None or ls.allow_project_change:
        return
    with Session(ctx.engine) as session:
        bound = get_value(session, "project_id")
    if bound is not None and bound != str(ls.project_id):
        raise ConfigError(
            f"this store is bound to Label Studio project {bound}, and label_studio.project_id is {ls.project_id}; "
            f"nothing was changed. To move the store to project {ls.project_id} (the labels pulled so far stay; "
            f"items waiting in project {bound} count as withdrawn), run once with "
            "LABELLOOP_LABEL_STUDIO__ALLOW_PROJECT_CHANGE=true; otherwise correct project_id, or point store.url "
            "at another store"
        )


def refresh_classes(ctx: LoopContext) -> bool:
    """Read the project's classes again; return whether they changed.

    A sync calls this on each full reconcile, and when an answer names a choice that is not a
    known class: someone may have added it to the labeling config while the daemon runs. Answers stored as unknown
    choices that are now classes become labels (see :func:`_bind`).

    Raises:
        ConnectorError: the tool is unreachable or refused.
    """
    return _bind(ctx, ctx.connector.ensure_project(classes=None), at_start=False)


def _bind(ctx: LoopContext, info: ProjectInfo, *, at_start: bool) -> bool:
    """Store the project's id and classes; turn unknown choices that are now classes into labels.

    Labels of classes the project lacks are reported at start and when the classes change, not at
    every refresh.
    """
    classes = list(info.classes)
    with Session(ctx.engine) as session:
        before = get_value(session, "classes")
        changed = before is not None and json.loads(before) != classes
        if changed:
            log.warning("the project's classes changed: now %s", ", ".join(classes))
        previous = get_value(session, "project_id")
        if previous is not None and previous != info.project_id:
            log.warning("this store worked with project %s and is now bound to project %s: the labels pulled so far "
                        "stay; items still waiting in project %s count as withdrawn at the next full sync and can "
                        "be chosen again, and answers given there from now on are not read", previous,
                        info.project_id, previous)
        set_value(session, "project_id", info.project_id)
        set_value(session, "project_title", info.title)
        set_value(session, "classes", json.dumps(classes))
        adopted = _adopt_unknown_choices(session, classes)
        session.commit()
        outside = labels_per_class(session)[1]  # labels naming none of the classes just stored
    if adopted:
        n_adopted = sum(adopted.values())
        log.info("%s that named no class when pulled %s labels now (%s)", counted(n_adopted, "answer"),
                 for_count(n_adopted, "is", "are"),
                 ", ".join(f"{label!r}: {n}" for label, n in sorted(adopted.items())))
    if outside and (at_start or changed):
        log.warning("%s labels name no class of project %s and are not trained on (%s); add the classes to its "
                    "labeling config, or relabel the items", sum(outside.values()), info.project_id,
                    ", ".join(f"{label!r}: {n}" for label, n in sorted(outside.items())))
    return changed


def _adopt_unknown_choices(session: Session, classes: Sequence[str]) -> Counter[str]:
    """Unknown choices that are now classes become labels, each change in the label history."""
    adopted: Counter[str] = Counter()
    stmt = select(LabelRecord).where(LabelRecord.status == LabelStatus.UNKNOWN,
                                     col(LabelRecord.label).in_(list(classes)))
    for record in session.exec(stmt):
        record.status, record.recorded_at = LabelStatus.LABELED, datetime.now(UTC)
        session.add(record)
        session.add(LabelEvent(
            item_id=record.item_id, status=LabelStatus.LABELED, label=record.label, previous_label=record.label,
            source=record.source, annotator=record.annotator, remote_task_id=record.remote_task_id,
            remote_annotation_id=record.remote_annotation_id, remote_updated_at=record.remote_updated_at,
        ))
        adopted[str(record.label)] += 1
    return adopted


def _seed_classes(session: Session) -> list[str]:
    stmt = select(LabelRecord.label).where(LabelRecord.status == LabelStatus.LABELED).distinct()
    return sorted(label for label in session.exec(stmt.order_by(col(LabelRecord.label))) if label)
