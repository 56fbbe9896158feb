"""LabelStudioConnector against a real Label Studio: what the contract suite cannot say.

Also the record of what we rely on in Label Studio 1.23's behaviour (updated_at bumps,
import id order), so an upgrade that changes it fails here first.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio

from connectors import label_studio as label_studio_module
from connectors._label_config import choices_config
from connectors._ls_auth import RefreshOnExpiry
from connectors.base import OutgoingTask, PredictionUpdate
from connectors.errors import ConnectorAuthError, ConnectorRejected, ConnectorUnavailable
from connectors.label_studio import FAST_IMPORT_FLAG, LabelStudioConnector
from tests.integration import ls_helpers

ProjectFactory = Callable[..., int]
ConnectorFactory = Callable[..., LabelStudioConnector]
_emails = itertools.count(1)


def _tasks(count: int, *, prefix: str = "item", predicted: str | None = "pos") -> list[OutgoingTask]:
    return [
        OutgoingTask(
            item_id=f"{prefix}-{n}",
            batch_id="batch-7",
            text=f"text {n}",
            model_version="mv-1",
            predicted_label=predicted,
            predicted_score=0.61,
            meta={"channel": "chat", "al_item_id": "must-not-win", "text": "must-not-win"},
        )
        for n in range(count)
    ]


def test_pushed_task_carries_our_keys_meta_and_a_pre_annotation(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    project_id = ls_project(("pos", "neg"))
    connector = ls_connector(project_id)
    mapping = connector.push(_tasks(1) + _tasks(1, prefix="unknown-label", predicted="not-a-class"))
    task = ls_client.tasks.get(id=mapping["item-0"])
    assert task.data == {
        "text": "text 0",
        "channel": "chat",
        "al_item_id": "item-0",
        "al_batch_id": "batch-7",
        "al_model_version": "mv-1",
    }
    (prediction,) = task.predictions or []
    assert prediction.model_version == "mv-1"
    assert prediction.score == pytest.approx(0.61)
    assert prediction.result == ls_helpers.choices_result("pos")
    assert not ls_client.tasks.get(id=mapping["unknown-label-0"]).predictions  # left out, not rejected


def test_refreshed_predictions_belong_to_the_project_and_the_task_can_still_be_annotated(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    project_id = ls_project(("pos", "neg"))
    connector = ls_connector(project_id)
    mapping = connector.push(_tasks(3))
    updates = [PredictionUpdate(mapping[f"item-{n}"], "mv-2", "neg", 0.9) for n in range(3)]
    done = connector.refresh_predictions([*updates, PredictionUpdate(mapping["item-0"], "mv-2", "nope", 0.5)])
    assert (done.refreshed, done.deleted_task_ids) == (3, ())
    task = ls_client.tasks.get(id=mapping["item-1"])
    assert {p.model_version for p in task.predictions or []} == {"mv-1", "mv-2"}
    assert ls_client.projects.get(id=project_id).model_version == "mv-2"
    annotation = ls_helpers.annotate(ls_client, int(mapping["item-1"]), "neg")  # an annotator submits as usual
    assert annotation > 0


def test_a_slow_prediction_import_is_warned_about_once_naming_label_studios_flag(
    ls_project: ProjectFactory, ls_connector: ConnectorFactory, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """Stock Label Studio 1.23 recounts every task of the project on each prediction import (16 s for 200
    predictions at 20,000 tasks, `make bench-refresh`); the threshold is lowered so this small project counts."""
    project_id = ls_project(("pos", "neg"))
    connector = ls_connector(project_id)
    mapping = connector.push(_tasks(3))
    monkeypatch.setattr(label_studio_module, "SLOW_IMPORT_S", -1.0)
    with caplog.at_level(logging.WARNING, logger="connectors.label_studio"):
        for version in ("mv-2", "mv-3"):
            connector.refresh_predictions([PredictionUpdate(mapping[f"item-{n}"], version, "neg", 0.9)
                                           for n in range(3)])
    warned = [r.getMessage() for r in caplog.records if FAST_IMPORT_FLAG in r.getMessage()]
    assert len(warned) == 1 and f"to import 3 predictions into project {project_id}" in warned[0]


def test_import_ids_come_back_in_payload_order_across_chunks_and_pages(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    project_id = ls_project()
    connector = ls_connector(project_id)
    connector.import_chunk_size, connector.page_size, connector.lookup_chunk_size = 5, 3, 4
    tasks = _tasks(23)
    mapping = connector.push(tasks)
    for item_id, task_id in mapping.items():
        assert ls_client.tasks.get(id=task_id).data["al_item_id"] == item_id
    assert connector.push(tasks) == mapping
    assert len(connector.pull(since=None).tasks) == 23
    assert len(connector.list_tasks()) == 23
    assert ls_helpers.task_count(ls_client, project_id) == 23


def test_every_annotation_change_bumps_the_task_but_a_draft_does_not(
    label_studio: Any, ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    """What pull's watermark relies on, checked on the server itself."""
    connector = ls_connector(ls_project())
    task_id = int(connector.push(_tasks(1))["item-0"])

    def stamp() -> datetime:
        (summary,) = connector.list_tasks()
        return summary.updated_at

    seen = [stamp()]

    def bumped() -> bool:
        seen.append(stamp())
        return seen[-1] > seen[-2]

    annotation_id = ls_helpers.annotate(ls_client, task_id, "pos")
    assert bumped(), "creating an annotation"
    ls_helpers.update_annotation(ls_client, annotation_id, "neg")
    assert bumped(), "editing an annotation"
    ls_helpers.delete_annotation(ls_client, annotation_id)
    assert bumped(), "deleting an annotation"
    skip_id = ls_helpers.skip(ls_client, task_id)
    assert bumped(), "skipping"
    ls_helpers.delete_annotation(ls_client, skip_id)
    assert bumped(), "deleting a skip"
    ls_helpers.add_draft(label_studio, task_id, "pos")
    assert not bumped(), "a draft does not touch updated_at (and is not a label)"
    ls_helpers.annotate(ls_client, task_id, "pos")
    assert bumped()
    ls_client.actions.create(
        id="delete_tasks_annotations",
        project=connector._resolved().project_id,
        selected_items={"all": False, "included": [task_id]},
    )
    assert bumped(), "the Data Manager's bulk 'Delete annotations'"


def test_tasks_labelloop_did_not_create_are_ignored(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    project_id = ls_project()
    foreign = ls_helpers.import_foreign_task(ls_client, project_id, "someone else's task")
    connector = ls_connector(project_id)
    connector.push(_tasks(2))
    assert {task.item_id for task in connector.pull(since=None).tasks} == {"item-0", "item-1"}
    assert connector.count_waiting() == 2
    assert str(foreign) not in {summary.remote_task_id for summary in connector.list_tasks()}


def test_the_annotator_is_the_users_email(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    email = f"annotator{next(_emails)}-{int(time.time())}@example.com"
    user = ls_client.users.create(email=email, username=email.split("@")[0], first_name="Ann")
    connector = ls_connector(ls_project())
    task_id = int(connector.push(_tasks(1))["item-0"])
    ls_helpers.annotate(ls_client, task_id, "neg", completed_by=int(user.id or 0))
    (annotation,) = connector.pull(since=None).tasks[0].annotations
    assert annotation.annotator == email


def test_push_and_pull_of_100_tasks_stay_quick(ls_project: ProjectFactory, ls_connector: ConnectorFactory) -> None:
    connector = ls_connector(ls_project())
    started = time.monotonic()
    connector.push(_tasks(100))
    pushed_s = time.monotonic() - started
    started = time.monotonic()
    assert len(connector.pull(since=None).tasks) == 100
    pulled_s = time.monotonic() - started
    assert pushed_s < 15 and pulled_s < 15, (pushed_s, pulled_s)  # ~0.3 s and ~0.15 s here


def test_ensure_project_by_title_creates_once_then_finds_it(
    ls_client: LabelStudio, ls_connector: ConnectorFactory
) -> None:
    title = f"by title {int(time.time() * 1000) % 10**9}"
    classes = ["spam", 'say "hi" & <bye>', "ham"]
    first = ls_connector(None, project_title=title).ensure_project(classes=classes)
    try:
        again = ls_connector(None, project_title=title).ensure_project(classes=["other"])
        assert again == first
        assert first.classes == tuple(classes)
        assert ls_client.projects.get(id=int(first.project_id)).sampling == "Sequential sampling"
    finally:
        ls_client.projects.delete(id=int(first.project_id))


def test_a_project_found_by_title_stays_bound_when_renamed_and_its_classes_are_read_again(
    ls_client: LabelStudio, ls_connector: ConnectorFactory
) -> None:
    title = f"renamed later {int(time.time() * 1000) % 10**9}"
    connector = ls_connector(None, project_title=title)
    first = connector.ensure_project(classes=["spam", "ham"])
    try:
        ls_client.projects.update(id=int(first.project_id), title=f"{title} (old)",
                                  label_config=choices_config(["spam", "ham", "phishing"]))
        again = connector.ensure_project(classes=None)  # what the daemon's class refresh calls
        assert (again.project_id, again.classes) == (first.project_id, ("spam", "ham", "phishing"))
    finally:
        ls_client.projects.delete(id=int(first.project_id))


def test_after_a_restart_a_renamed_project_is_still_used_and_a_deleted_one_is_found_again_by_title(
    ls_client: LabelStudio, ls_connector: ConnectorFactory
) -> None:
    """A restarted daemon looked its project up by title again: renamed in Label Studio, it made a
    second project and forked the labeling (answers in the first were no longer read)."""
    title = f"restart {int(time.time() * 1000) % 10**9}"
    first = ls_connector(None, project_title=title).ensure_project(classes=["spam", "ham"])
    made = [int(first.project_id)]
    try:
        ls_client.projects.update(id=int(first.project_id), title=f"{title} (renamed)")
        restarted = ls_connector(None, project_title=title)  # a new process: nothing bound yet
        again = restarted.ensure_project(classes=["spam", "ham"], known_project_id=first.project_id)
        assert again.project_id == first.project_id
        ls_client.projects.delete(id=int(first.project_id))
        made.clear()
        later = ls_connector(None, project_title=title).ensure_project(classes=["spam", "ham"],
                                                                        known_project_id=first.project_id)
        made.append(int(later.project_id))
        assert later.project_id != first.project_id and later.title == title  # made anew, by title
    finally:
        for project_id in made:
            ls_client.projects.delete(id=project_id)


def test_ensure_project_without_a_title_match_or_classes_is_rejected(ls_connector: ConnectorFactory) -> None:
    with pytest.raises(ConnectorRejected, match="no project titled"):
        ls_connector(None, project_title=f"absent {time.time()}").ensure_project(classes=None)


def test_a_project_without_choices_is_rejected(ls_project: ProjectFactory, ls_connector: ConnectorFactory) -> None:
    config = '<View><Text name="text" value="$text"/><TextArea name="note" toName="text"/></View>'
    connector = ls_connector(ls_project(label_config=config))
    with pytest.raises(ConnectorRejected, match="no <Choices>"):
        connector.ensure_project(classes=["a"])


def test_a_project_reading_another_text_field_is_rejected_with_the_fix(
    ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    config = '<View><Text name="t" value="$body"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>'
    connector = ls_connector(ls_project(label_config=config))
    with pytest.raises(ConnectorRejected, match="TEXT_KEY=body"):
        connector.ensure_project(classes=None)
    assert ls_connector(ls_project(label_config=config), text_key="body").ensure_project(classes=None).classes == ("a",)


def test_a_field_the_config_shows_and_the_items_lack_is_named_before_label_studio_refuses_the_import(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``$subject`` header beside the text made every push fail as "HTTP 400; check non_field_errors"
    (Label Studio said "'subject' key is expected in task data"); a Header's field is not required."""
    config = ('<View><Header value="$title"/><Text name="subject" value="$subject"/><Text name="text" value="$text"/>'
              '<Choices name="c" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>')
    project_id = ls_project(label_config=config)
    connector = ls_connector(project_id)
    with caplog.at_level(logging.WARNING, logger="connectors"):
        assert connector.ensure_project(classes=None).classes == ("pos", "neg")
    assert f"project {project_id}'s labeling config shows task fields 'subject' besides the text" in caplog.text
    with pytest.raises(ConnectorRejected, match=r"shows task fields .*'subject' \(lacked by 2 of 2\).*add those "
                                                r"columns to the pool file"):
        connector.push(_tasks(2))
    assert ls_helpers.task_count(ls_client, project_id) == 0
    with_subject = [replace(task, meta={**task.meta, "subject": "re: order"}) for task in _tasks(2)]
    mapping = connector.push(with_subject)  # no $title: Label Studio does not ask a Header's field
    assert ls_client.tasks.get(id=mapping["item-0"]).data["subject"] == "re: order"


def test_a_project_with_several_choices_tags_binds_the_named_one_and_refuses_to_guess(
    ls_project: ProjectFactory, ls_connector: ConnectorFactory, ls_client: LabelStudio
) -> None:
    # the first <Choices> was bound silently: a quality question before the topic became the classes
    config = ('<View><Text name="text" value="$text"/>'
              '<Choices name="quality" toName="text"><Choice value="clear"/><Choice value="ambiguous"/></Choices>'
              '<Choices name="label" toName="text" choice="single"><Choice value="HUM"/><Choice value="LOC"/>'
              '</Choices></View>')
    project_id = ls_project(label_config=config)
    with pytest.raises(ConnectorRejected, match=r"2 <Choices> tags \('quality', 'label'\)"):
        ls_connector(project_id).ensure_project(classes=None)
    named = ls_connector(project_id, choices_name="label")
    assert named.ensure_project(classes=None).classes == ("HUM", "LOC")
    mapping = named.push([OutgoingTask(item_id="q1", batch_id="b", text="who?", predicted_label="HUM",
                                       predicted_score=0.9, model_version="mv-1")])
    ls_helpers.annotate(ls_client, int(mapping["q1"]), "clear", from_name="quality")  # the other question
    ls_helpers.annotate(ls_client, int(mapping["q1"]), "LOC", from_name="label")
    [state] = named.pull(since=None).tasks
    assert [a.choices for a in state.annotations] == [(), ("LOC",)]  # only the named tag's answer


def test_an_answer_written_through_the_api_with_a_choice_s_value_reads_as_its_alias(
    ls_project: ProjectFactory, ls_connector: ConnectorFactory, ls_client: LabelStudio
) -> None:
    """Label Studio stores whatever choice string a client sends: the UI sends the alias, a script may
    send the value, which read as an unknown choice ("add 'Human' to the config")."""
    config = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
              '<Choice value="Human" alias="HUM"/><Choice value="Location" alias="LOC"/></Choices></View>')
    project_id = ls_project(label_config=config)
    connector = ls_connector(project_id)
    assert connector.ensure_project(classes=None).classes == ("HUM", "LOC")
    mapping = connector.push([OutgoingTask(item_id=f"q{n}", batch_id="b", text="who?") for n in range(2)])
    ls_helpers.annotate(ls_client, int(mapping["q0"]), "Human")  # the value, as a script might write it
    ls_helpers.annotate(ls_client, int(mapping["q1"]), "LOC")  # the alias, as the UI writes it
    states = {state.item_id: state for state in connector.pull(since=None).tasks}
    assert [states[f"q{n}"].annotations[0].choices for n in range(2)] == [("HUM",), ("LOC",)]


def test_an_unknown_project_id_is_rejected(ls_connector: ConnectorFactory) -> None:
    with pytest.raises(ConnectorRejected, match="404"):
        ls_connector(987654).ensure_project(classes=None)


@pytest.mark.parametrize(
    "token", ["0" * 40, "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6OTk5OTk5OTk5OX0.bad"]
)
def test_wrong_tokens_of_both_shapes_are_auth_errors(ls_connector: ConnectorFactory, token: str) -> None:
    connector = ls_connector(None, token=token)
    with pytest.raises(ConnectorAuthError, match="Personal Access Token") as caught:
        connector.check()
    assert token not in str(caught.value)


def _stale_access_token() -> str:
    """A well-formed access JWT the SDK believes valid for years, which the server refuses (its signature is wrong)."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'token_type': 'access', 'exp': 9999999999})}.c2lnbmF0dXJl"


def test_refresh_on_expiry_retries_with_a_fresh_token_from_the_real_server(label_studio: Any) -> None:
    stale = {"Authorization": f"Bearer {_stale_access_token()}"}
    with httpx.Client(base_url=label_studio.url, auth=RefreshOnExpiry(label_studio.url, label_studio.pat)) as http:
        assert http.get("/api/projects/", headers=stale).status_code == 200
    revoked = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6OTk5OTk5OTk5OX0.bad"
    with httpx.Client(base_url=label_studio.url, auth=RefreshOnExpiry(label_studio.url, revoked)) as http:
        refused = http.get("/api/projects/", headers=stale)
    assert refused.status_code == 401 and refused.request.url.path == "/api/projects/"


def test_an_access_token_refused_in_flight_does_not_fail_the_call(
    ls_project: ProjectFactory, ls_connector: ConnectorFactory
) -> None:
    """The SDK renews its access token only once its own clock says it expired; one that expires on its way is
    refused with a 401. The connector sends the call again with a fresh one."""
    connector = ls_connector(ls_project())
    connector.ensure_project(classes=None)  # the SDK now holds an access token
    tokens = connector._client._client_wrapper._tokens_client  # label-studio-sdk 2.x keeps it here
    assert tokens._access_token, "the SDK no longer caches its access token where this test expects"
    tokens._access_token = _stale_access_token()  # as if it expired in flight
    assert connector.push(_tasks(2, prefix="inflight"))  # a push refused here would park its batch
    assert connector.check()



def test_withdraw_says_how_many_tasks_it_kept_and_why(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """'withdraw: 0 of 10 tasks gone from project 1' read unclearly in a soak's log (QA)."""
    caplog.set_level(logging.INFO, logger="connectors.label_studio")
    project_id = ls_project(("pos", "neg"))
    connector = ls_connector(project_id)
    mapping = connector.push(_tasks(2))
    ls_helpers.annotate(ls_client, int(mapping["item-0"]), "pos")
    assert connector.withdraw([mapping["item-0"], mapping["item-1"]]) == [mapping["item-1"]]
    assert (f"withdraw: 1 of 2 tasks withdrawn from project {project_id}; 1 kept, as someone answered, skipped or "
            "drafted them meanwhile") in caplog.text


def test_a_push_retried_while_the_timed_out_import_still_commits_creates_no_second_task(
    ls_client: LabelStudio, ls_project: ProjectFactory, ls_connector: ConnectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load (QA: 2 cores, four daemons) an import outlived the client's timeout; the next cycle's lookup ran
    before Label Studio committed it, imported again, and 9 batches got two or three tasks per item."""
    import threading

    project_id = ls_project(("pos", "neg"))
    connector = ls_connector(project_id)
    real_import = connector._client.projects.import_tasks
    committed = threading.Event()

    def late(**kwargs: Any) -> Any:
        def commit() -> None:
            time.sleep(1.5)  # Label Studio still working when the retry looks
            real_import(**kwargs)
            committed.set()

        threading.Thread(target=commit, daemon=True).start()
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(connector._client.projects, "import_tasks", late)
    tasks = _tasks(5, prefix="slow")
    with pytest.raises(ConnectorUnavailable, match="did not answer in time"):
        connector.push(tasks)
    monkeypatch.setattr(connector._client.projects, "import_tasks", real_import)
    with pytest.raises(ConnectorUnavailable, match="may still be committing"):
        connector.push(tasks)  # the next cycle, before the commit: it waits instead of importing again
    assert committed.wait(timeout=30)
    mapping = connector.push(tasks)
    assert ls_helpers.task_count(ls_client, project_id) == 5
    for task in tasks:
        assert ls_helpers.task_ids_for(ls_client, project_id, task.item_id) == [int(mapping[task.item_id])]
