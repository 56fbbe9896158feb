"""Bind the store to one annotation project and its class list."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from sqlmodel import Session, col, func, select

from connectors.base import ProjectInfo
from daemon.context import LoopContext
from daemon.store import LabelRecord, LabelStatus, get_value, set_value

__all__ = ["ensure_project"]

log = logging.getLogger(__name__)


def ensure_project(ctx: LoopContext) -> ProjectInfo:
    """Find or create the project and store its id and classes (the tool's list wins).

    The classes to create a project with come from ``loop.classes``, else from the seed labels.

    Raises:
        ConnectorError: the tool is unreachable or refused.
    """
    with Session(ctx.engine) as session:
        wanted = list(ctx.settings.loop.classes) or _seed_classes(session)
    info = ctx.connector.ensure_project(classes=wanted or None)
    with Session(ctx.engine) as session:
        before = get_value(session, "classes")
        if before is not None and json.loads(before) != list(info.classes):
            log.warning("the project's classes changed: now %s", ", ".join(info.classes))
        set_value(session, "project_id", info.project_id)
        set_value(session, "project_title", info.title)
        set_value(session, "classes", json.dumps(list(info.classes)))
        session.commit()
        outside = _labels_outside(session, info.classes)
    if outside:
        log.warning("%s labels name no class of project %s and are not trained on (%s); add the classes to its "
                    "labeling config, or relabel the items", sum(outside.values()), info.project_id,
                    ", ".join(f"{label!r}: {n}" for label, n in sorted(outside.items())))
    if not ctx.connector.serves_in_push_order():
        log.warning("project %s does not hand out tasks in the order they were pushed, so annotators do not get "
                    "the most informative ones first and re-ranking withdraws nothing; set its sampling to "
                    "sequential", info.project_id)
    return info


def _labels_outside(session: Session, classes: Sequence[str]) -> dict[str, int]:
    stmt = (select(LabelRecord.label, func.count()).where(LabelRecord.status == LabelStatus.LABELED)
            .where(col(LabelRecord.label).not_in(list(classes))).group_by(col(LabelRecord.label)))
    return {str(label): int(n) for label, n in session.exec(stmt)}


def _seed_classes(session: Session) -> list[str]:
    stmt = select(LabelRecord.label).where(LabelRecord.status == LabelStatus.LABELED).distinct()
    return sorted(label for label in session.exec(stmt.order_by(col(LabelRecord.label))) if label)
