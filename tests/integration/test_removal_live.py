"""``labelloop pool remove`` against a real Label Studio: waiting tasks of removed items go, answered ones stay."""

from __future__ import annotations

from label_studio_sdk import LabelStudio
from sqlmodel import Session

from daemon.context import LoopContext
from daemon.cycle import run_cycle
from daemon.removal import remove_items
from daemon.store import BatchItemState, LabelStatus
from daemon.sync import sync
from daemon.training import labeled_set
from tests.integration import ls_helpers
from tests.integration.test_daemon_live import items_of, labels, loop_ctx, states

__all__ = ["loop_ctx"]  # a fixture, used by name


def test_the_next_sync_deletes_the_waiting_tasks_of_removed_items(
    loop_ctx: tuple[LoopContext, int, dict[str, str]], ls_client: LabelStudio
) -> None:
    ctx, project_id, gold = loop_ctx
    first = run_cycle(ctx)
    batch = sorted(items_of(ctx, first.batch_id or ""), key=lambda i: i.position)
    answered, waiting = batch[0], batch[1:4]
    ls_helpers.annotate(ls_client, int(answered.remote_task_id or 0), gold[answered.item_id])
    removed = [answered.item_id, *(i.item_id for i in waiting)]
    assert remove_items(ctx.engine, removed).waiting == 4
    sync(ctx)
    assert ls_helpers.task_count(ls_client, project_id) == len(batch) - 3
    after = states(ctx, first.batch_id)
    assert [after[i.item_id] for i in waiting] == [BatchItemState.WITHDRAWN] * 3
    assert after[answered.item_id] is BatchItemState.LABELED
    assert ls_helpers.task_ids_for(ls_client, project_id, answered.item_id) == [int(answered.remote_task_id or 0)]
    assert labels(ctx)[answered.item_id] == (LabelStatus.LABELED, gold[answered.item_id])  # pulled and kept
    with Session(ctx.engine) as session:
        assert answered.item_id not in labeled_set(session).item_ids  # but not trained on
    following = run_cycle(ctx)
    assert not {i.item_id for i in items_of(ctx, following.batch_id or "")} & set(removed)
