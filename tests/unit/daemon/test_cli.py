"""The CLI's parse → query → render paths, on a tmp store (no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from daemon.cli import app
from daemon.pause import PAUSE_KEY
from daemon.settings import load_settings
from daemon.store import LabelRecord, LabelStatus, make_engine, set_value
from tests.unit.daemon.conftest import set_classes

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("LABELLOOP_CONFIG", "LABELLOOP_LABEL_STUDIO__API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["init", "--classes", "ham,spam"])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_init_prints_the_token_command_whole_on_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "--url", "https://labelstudio.example.com", "--classes", "a,b"])
    assert result.exit_code == 0, result.output
    assert "\n  export LABELLOOP_LABEL_STUDIO__API_KEY=…\n" in result.stdout


def test_init_refuses_to_overwrite(workdir: Path) -> None:
    assert (workdir / "labelloop.toml").is_file()
    again = runner.invoke(app, ["init"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_pool_add_then_read_commands(workdir: Path) -> None:
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n{"id": "b", "text": "win"}\n')
    added = runner.invoke(app, ["pool", "add", "pool.jsonl", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["added"] == 2
    again = runner.invoke(app, ["pool", "add", "pool.jsonl", "--json"])
    assert json.loads(again.stdout)["added"] == 0  # nothing twice
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["pool"]["items"] == 2 and status["labels"]["labeled"] == 1
    assert json.loads(runner.invoke(app, ["batches", "--json"]).stdout) == []
    assert runner.invoke(app, ["status"]).exit_code == 0  # the human rendering works too


def test_status_lists_declared_classes_without_labels_before_a_project_exists(workdir: Path) -> None:
    """The workdir declares ham and spam; with one ham label, spam was missing from the table until the
    daemon bound a project's classes."""
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n{"id": "b", "text": "win"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["per_class"] == {"ham": 1, "spam": 0}
    assert re.search(r"spam\s*│\s*0", runner.invoke(app, ["status"]).stdout)


def test_pool_summaries_are_one_line_each_off_a_terminal(workdir: Path) -> None:
    """Piped, rich folded them at 80 columns ("0 seed⏎labels"), so a script's grep missed them."""
    name = "a-pool-file-with-a-rather-long-name-as-exports-get.jsonl"
    (workdir / name).write_text('{"id": "a", "text": "hello", "label": "ham"}\n{"id": "b", "text": "win"}\n')
    added = runner.invoke(app, ["pool", "add", name])
    assert added.exit_code == 0, added.output
    assert f"{name}: 2 rows, 2 added, 0 already in the pool, 1 seed labels\n" in added.stdout
    (workdir / "gone.jsonl").write_text('{"id": "b", "text": "win"}\n{"id": "zz", "text": "never added"}\n')
    removed = runner.invoke(app, ["pool", "remove", "gone.jsonl"])
    assert removed.exit_code == 0, removed.output
    (line,) = [line for line in removed.stdout.splitlines() if "removed (" in line]
    assert line.endswith("0 were already removed, 1 is not in the pool (zz)") and len(line) > 80


def test_pool_add_off_a_terminal_prints_no_blank_line(workdir: Path) -> None:
    """Piped, the progress bar's stop left an empty line before a refused file's error and after a summary."""
    (workdir / "good.csv").write_text("text,label\nhello,ham\nwin,spam\n")
    (workdir / "bad.csv").write_text("text,label\nhello,ham\nwin,zz\n")
    for name, code in (("good.csv", 0), ("bad.csv", 1)):
        result = runner.invoke(app, ["pool", "add", name])
        assert result.exit_code == code, result.output
        assert "" not in result.output.splitlines(), result.output


def test_commands_run_elsewhere_with_config_use_the_store_beside_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the store's relative path used to be taken from the working directory: pool add made a
    # second store there with exit 0, and status refused although --config named the file
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n')
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    added = runner.invoke(app, ["-c", "../labelloop.toml", "pool", "add", "../pool.jsonl", "--json"])
    assert added.exit_code == 0, added.output
    assert list(elsewhere.iterdir()) == []  # no second store
    status = runner.invoke(app, ["--config", str(workdir / "labelloop.toml"), "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["pool"]["items"] == 1
    monkeypatch.chdir(workdir)
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["pool"]["items"] == 1  # the same store


def test_square_brackets_in_messages_and_paths_are_printed_not_read_as_markup(workdir: Path) -> None:
    # rich dropped "[ray]" from "pip install 'labelloop[ray]'" and "[1]" from file names
    (workdir / "items[1].jsonl").write_text('{"id": "a", "text": "hello"}\n')
    added = runner.invoke(app, ["pool", "add", "items[1].jsonl"])
    assert added.exit_code == 0 and "items[1].jsonl: 1 rows" in added.output
    (workdir / "bad[2].csv").write_text("id,text\n1,fine\n2\n")
    refused = runner.invoke(app, ["pool", "add", "bad[2].csv"])
    assert refused.exit_code == 1 and "bad[2].csv" in refused.output
    (workdir / "labelloop.toml").write_text('[loop]\nclasses = ["[urgent]", "[urgent]", "later"]\n')
    message = runner.invoke(app, ["status"]).output
    assert "class names repeated: [urgent]" in message


def test_malformed_pool_file_says_where(workdir: Path) -> None:
    (workdir / "bad.csv").write_text("id,text\n1,fine\n2\n")
    result = runner.invoke(app, ["pool", "add", "bad.csv"])
    assert result.exit_code == 1
    assert "bad.csv" in result.output and "line 3" in result.output
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["pool"]["items"] == 0  # nothing half-imported


def test_pool_add_takes_several_files_each_whole_or_not_at_all(workdir: Path) -> None:
    (workdir / "one.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    (workdir / "two.jsonl").write_text('{"id": "b", "text": "win", "label": "spam"}\n{"id": "c", "text": "lunch"}\n')
    (workdir / "bad.csv").write_text("id,text\nd,fine\ne\n")
    stopped = runner.invoke(app, ["pool", "add", "one.jsonl", "bad.csv", "two.jsonl"])
    assert stopped.exit_code == 1
    said = " ".join(stopped.output.split())
    assert "one.jsonl: 1 rows, 1 added" in said and "line 3" in said
    assert "1 files before it were added: one.jsonl" in said
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["pool"]["items"] == 1  # bad.csv refused whole, two.jsonl not read
    rerun = runner.invoke(app, ["pool", "add", "one.jsonl", "two.jsonl", "--json"])
    assert rerun.exit_code == 0, rerun.output
    assert [(r["path"], r["added"], r["labels_added"]) for r in json.loads(rerun.stdout)] == [
        ("one.jsonl", 0, 0), ("two.jsonl", 2, 1)]  # nothing twice


def test_unknown_batch_and_masked_config(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = runner.invoke(app, ["batches", "show", "nope"])
    assert shown.exit_code == 1 and "no batch" in shown.output
    monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__API_KEY", "tok-very-secret")
    config = runner.invoke(app, ["config", "show", "--json"])
    assert "tok-very-secret" not in config.stdout
    assert json.loads(config.stdout)["label_studio"]["api_key"] == "**********"


def test_run_without_a_token_explains_what_to_do(workdir: Path) -> None:
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2
    assert "LABELLOOP_LABEL_STUDIO__API_KEY" in result.output


def test_status_points_at_disputed_tasks(workdir: Path) -> None:
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    with Session(make_engine(load_settings().store.url)) as session:
        session.add(LabelRecord(item_id="a", status=LabelStatus.DISPUTED, label="ham vs spam", source="label_studio"))
        session.commit()
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["labels"]["disputed"] == 1
    shown = runner.invoke(app, ["status"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "star a ground truth" in shown.output


def test_a_seed_label_that_is_not_a_class_refuses_the_file(workdir: Path) -> None:
    rows = ['{"id": "a", "text": "hello", "label": "ham"}', '{"id": "b", "text": "win", "label": "spma"}',
            '{"id": "c", "text": "lunch?", "label": "ham"}', '{"id": "d", "text": "free", "label": "spma"}']
    (workdir / "typo.jsonl").write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["pool", "add", "typo.jsonl"])
    assert result.exit_code == 1
    flat = " ".join(result.output.split())  # the console wraps long errors
    assert "line 2: unknown label 'spma' (and 1 more rows): not one of loop.classes (ham, spam)" in flat
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["pool"]["items"] == 0  # nothing half-imported


def test_once_a_project_is_bound_its_classes_decide(workdir: Path) -> None:
    engine = make_engine(load_settings(workdir / "labelloop.toml").store.url)
    set_classes(engine, ["ham", "spam", "phishing"])  # the project's config has a class labelloop.toml lacks
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "verify your account", "label": "phishing"}\n'
                                        '{"id": "b", "text": "hi", "label": "scam"}\n')
    refused = runner.invoke(app, ["pool", "add", "pool.jsonl"])
    assert refused.exit_code == 1
    assert "line 2: unknown label 'scam': not one of the project's classes (ham, spam, phishing)" in " ".join(
        refused.output.split())
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "verify your account", "label": "phishing"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0


def test_status_shows_labels_that_name_no_class_of_the_project(workdir: Path) -> None:
    engine = make_engine(load_settings(workdir / "labelloop.toml").store.url)
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n'
                                        '{"id": "b", "text": "win", "label": "spam"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    set_classes(engine, ["ham", "junk"])  # the project was bound later, and calls spam something else
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["per_class"] == {"ham": 1, "junk": 0}
    assert status["labels_outside_classes"] == {"spam": 1}
    shown = " ".join(runner.invoke(app, ["status"]).output.split())
    assert "label 'spam': not a class of the project, not trained on" in shown


def test_inspecting_and_importing_do_not_load_torch() -> None:
    """status, batches, config, export and pool add start in under a second; torch alone takes 1.5-2 s to import."""
    import subprocess
    import sys

    probe = ("import sys, daemon.cli, daemon.pool, daemon.pause, daemon.export, daemon.queries, daemon.render; "
             "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("classes", ["a,a", "a", "a,,b", "a, a"])
def test_init_refuses_a_bad_class_list_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classes: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    result = runner.invoke(app, ["init", "--classes", classes])
    assert result.exit_code == 2 and "nothing written: classes" in result.output
    assert not (tmp_path / "labelloop.toml").exists()


def test_init_trims_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    assert runner.invoke(app, ["init", "--classes", " ham , spam "]).exit_code == 0
    assert load_settings(tmp_path / "labelloop.toml").loop.classes == ["ham", "spam"]


def test_batches_refuses_an_unknown_status_naming_the_known_ones(workdir: Path) -> None:
    result = runner.invoke(app, ["batches", "--status", "bogus"])
    assert result.exit_code == 2
    assert "no batch status 'bogus': use selected | pushed | closed | reopened | parked" in result.output


def test_batches_with_none_to_list_says_so_instead_of_an_empty_table(workdir: Path) -> None:
    assert runner.invoke(app, ["batches"]).output.strip() == "no batches yet"
    result = runner.invoke(app, ["batches", "--status", "reopened"])
    assert result.exit_code == 0 and result.output.strip() == "no reopened batches"
    assert runner.invoke(app, ["batches", "--json"]).output.strip() == "[]"


def test_status_says_why_there_is_no_model(workdir: Path) -> None:
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n{"id": "b", "text": "win"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    assert "cold start: fewer than two classes labeled" in runner.invoke(app, ["status"]).output
    (workdir / "more.jsonl").write_text('{"id": "c", "text": "free money", "label": "spam"}\n')
    assert runner.invoke(app, ["pool", "add", "more.jsonl"]).exit_code == 0
    output = " ".join(runner.invoke(app, ["status"]).output.split())
    assert "no model yet: no cycle has run since the labels came" in output


def test_a_long_error_is_one_line_when_piped(workdir: Path) -> None:
    """rich hard-wrapped messages at 80 columns off a terminal, so a grep for the error missed its end."""
    result = runner.invoke(app, ["pool", "remove", "--source", "a-file-name-long-enough-to-pass-eighty-columns.csv"])
    line = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert line.endswith("nothing removed (sources: none)")


def test_an_interrupted_command_says_so_and_exits_130(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("daemon.pool.add_pool_file", interrupted)
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    result = runner.invoke(app, ["pool", "add", "pool.jsonl"])
    assert result.exit_code == 130 and "interrupted: the write in progress was rolled back" in result.output


def _plain(output: str) -> str:
    """The words of rich output, without panel borders or line breaks."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


def _beat(workdir: Path, **beat: object) -> None:
    from datetime import UTC, datetime

    from daemon.store import set_value

    engine = make_engine(load_settings(workdir / "labelloop.toml").store.url)
    with Session(engine) as session:
        set_value(session, "daemon", json.dumps({"state": "running", "started_at": datetime.now(UTC).isoformat(),
                                                 "last_beat": datetime.now(UTC).isoformat(), **beat}))
        session.commit()
    engine.dispose()


def test_status_and_cycle_say_what_there_is_not_yet_instead_of_python_none(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the daemon's first start status read "project None (0 classes)", and a cycle without a
    new batch printed "batch=None" (QA)."""
    from daemon.cycle import CycleReport

    shown = _plain(runner.invoke(app, ["status"]).output)
    assert "no Label Studio project yet (the daemon finds or creates it when it starts)" in shown
    assert "None" not in shown
    report = CycleReport(cycle_id=5, reason="retrained; 47 items still waiting, no new batch",
                         model_version="da81f8c6aa11", stage_seconds={"sync": 0.5})
    monkeypatch.setattr("daemon.app.one_cycle", lambda cfg: report)
    said = _plain(runner.invoke(app, ["cycle"]).output)
    assert said.startswith("cycle 5: ok, retrained; 47 items still waiting, no new batch; model da81f8c6aa11 "
                           "(sync 0.50s)") and "None" not in said


def test_an_unusable_project_exits_2_like_a_configuration_problem(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README says exit code 2 means a configuration or token problem; a project whose labeling
    config labelloop cannot use exited 1 (QA)."""
    from connectors.errors import ConnectorRejected, ConnectorUnavailable

    def refused(cfg: object) -> None:
        raise ConnectorRejected("project 1: its labeling config has 2 <Choices> tags")

    monkeypatch.setattr("daemon.app.one_cycle", refused)
    result = runner.invoke(app, ["cycle"])
    assert result.exit_code == 2 and "its labeling config has 2 <Choices> tags" in _plain(result.output)

    def down(cfg: object) -> None:
        raise ConnectorUnavailable("cannot reach Label Studio")

    monkeypatch.setattr("daemon.app.one_cycle", down)
    assert runner.invoke(app, ["cycle"]).exit_code == 1  # not a configuration problem: try again later


def test_status_says_a_killed_daemon_is_gone_and_a_failing_one_is_not_healthy(workdir: Path) -> None:
    """A daemon killed with SIGKILL read "running … healthy" until its last beat aged."""
    import os
    import socket
    import subprocess

    ended = subprocess.Popen(["true"])
    ended.wait()
    _beat(workdir, pid=ended.pid, host=socket.gethostname(), backoff_failures=0)
    report = json.loads(runner.invoke(app, ["status", "--json"]).stdout)["daemon"]
    assert (report["state"], report["healthy"]) == ("gone", False)
    assert "gone (its process ended without stopping: killed?)" in _plain(runner.invoke(app, ["status"]).output)
    _beat(workdir, pid=os.getpid(), host=socket.gethostname(), backoff_failures=3)
    report = json.loads(runner.invoke(app, ["status", "--json"]).stdout)["daemon"]
    assert (report["state"], report["healthy"]) == ("running", False)
    assert "NOT healthy: 3 runs in a row failed" in _plain(runner.invoke(app, ["status"]).output)
    _beat(workdir, pid=os.getpid(), host=socket.gethostname(), backoff_failures=0)
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["daemon"]["healthy"] is True
    # one failed run (a 2-second stall of Label Studio) is retried: "NOT healthy: 1 runs in a row" alarmed (QA)
    _beat(workdir, pid=os.getpid(), host=socket.gethostname(), backoff_failures=1)
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["daemon"]["healthy"] is True
    assert "healthy; its last run failed and is retried" in _plain(runner.invoke(app, ["status"]).output)


def test_status_says_a_cleanly_stopped_daemon_stopped_and_a_silent_one_stopped_beating(workdir: Path) -> None:
    """After a clean SIGTERM, status read "stopped, last beat 40s ago, NOT healthy", as if something were wrong."""
    import os
    import socket
    from datetime import UTC, datetime, timedelta

    _beat(workdir, pid=4242, host=socket.gethostname(), state="stopped")
    shown = _plain(runner.invoke(app, ["status"]).output)
    assert "daemon pid 4242: stopped cleanly" in shown and "NOT healthy" not in shown
    old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    _beat(workdir, pid=os.getpid(), host=socket.gethostname(), last_beat=old)
    assert "NOT healthy: no beat for that long" in _plain(runner.invoke(app, ["status"]).output)


@pytest.mark.parametrize("command", [["status"], ["batches"], ["export", "x.csv"], ["predict", "p.csv"],
                                     ["pool", "remove", "--id", "a"], ["resume"]])
def test_reading_commands_refuse_a_store_that_is_not_there_instead_of_creating_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Run in the wrong folder, status created an empty store there and reported an empty pool, exit 0."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and "no store at .labelloop/labelloop.db: run `labelloop init`" in result.output
    assert not (tmp_path / ".labelloop").exists()


def test_pool_add_off_a_terminal_says_each_phase_in_plain_lines(workdir: Path) -> None:
    """Piped (nohup, systemd, CI) a 1M-row import ran 56 s without a word: the spinner shows only on a terminal (QA)."""
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "hallo"}\n')
    result = runner.invoke(app, ["pool", "add", "pool.jsonl"])
    assert result.exit_code == 0, result.output
    phases = [line.split(":")[0] for line in result.output.splitlines() if " rows/s, " in line]
    assert phases == ["reading pool.jsonl", "checking pool.jsonl", "writing pool.jsonl"]
    assert "\x1b" not in result.output  # no control characters in a log file


def test_pool_add_says_when_a_seed_label_differs_from_the_stores(workdir: Path) -> None:
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    (workdir / "relabel.jsonl").write_text('{"id": "a", "text": "hello", "label": "spam"}\n')
    result = runner.invoke(app, ["pool", "add", "relabel.jsonl"])
    assert result.exit_code == 0
    assert "1 seed labels differ from the store's and were not applied" in result.output
    assert "line 1: id 'a' is 'ham' in the store, 'spam' here" in result.output


def test_pool_add_says_when_a_vector_differs_from_the_stores(workdir: Path) -> None:
    (workdir / "pool.jsonl").write_text('{"id": "a", "embedding": [1, 0]}\n{"id": "b", "embedding": [0, 1]}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    (workdir / "moved.jsonl").write_text('{"id": "a", "embedding": [1, 0]}\n{"id": "b", "embedding": [1, 1]}\n')
    result = runner.invoke(app, ["pool", "add", "moved.jsonl"])
    assert result.exit_code == 0
    shown = " ".join(result.output.split())
    assert "1 rows carry another vector than the store's for their id and were not applied" in shown
    assert "give a changed item a new id): line 2: id 'b'" in shown


_TERMINATED_EXPORT = """
import os, signal, sys
import daemon.export as export
from daemon.__main__ import main

DEATH = getattr(signal, sys.argv[1])
def write_then_die(path, header, rows):
    path.write_text("id,text\\n" + "a,half\\n")
    os.kill(os.getpid(), DEATH)  # timeout, systemctl stop, or a closed terminal
export._WRITERS["csv"] = write_then_die
sys.argv = ["labelloop", sys.argv[2], "out.csv"]
main()
"""


@pytest.mark.parametrize(("signame", "command"), [("SIGTERM", "export"), ("SIGHUP", "predict")])
def test_export_or_predict_ended_by_sigterm_or_sighup_leaves_no_partial_file(
    workdir: Path, signame: str, command: str
) -> None:
    """SIGINT removed the hidden .out.csv.<pid>.partial file; SIGTERM and SIGHUP left it for good (QA)."""
    import subprocess
    import sys

    rows = (json.dumps({"id": f"i{n}", "text": f"text {n}", "label": "ham" if n % 2 else "spam",
                        "embedding": [1.0, n % 2, n / 12]}) for n in range(12))  # own vectors: predict can train
    (workdir / "pool.jsonl").write_text("\n".join(rows) + "\n")
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    ended = subprocess.run([sys.executable, "-c", _TERMINATED_EXPORT, signame, command], cwd=workdir,
                           capture_output=True, text=True, timeout=300)
    assert ended.returncode == 130, ended.stderr[-2000:]
    assert "interrupted: the store was not changed and no partial output file is left" in " ".join(ended.stderr.split())
    assert not list(workdir.glob(".out.csv*")) and not (workdir / "out.csv").exists()


def test_pool_add_json_says_what_was_added_and_why_a_file_was_refused(workdir: Path) -> None:
    (workdir / "good.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    (workdir / "bad.csv").write_text("id,text\nb,fine\nc\n")
    result = runner.invoke(app, ["pool", "add", "good.jsonl", "bad.csv", "--json"])
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert [report["path"] for report in answer["added"]] == ["good.jsonl"]
    assert answer["refused"] == "bad.csv" and answer["problems"] == [
        {"line": 3, "reason": "1 field where the header has 2"}]


def test_config_show_never_cuts_a_value_piped_or_at_80_columns(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped or at 80 columns, `config show` cut store.url to "sqlite:////tmp/qa-scale/s1/.labelloop/lab…",
    so `labelloop config show | grep store` gave a wrong path (QA)."""
    from rich.console import Console

    deep = workdir / ("a-long-folder-name-" * 6) / "state"
    monkeypatch.setenv("LABELLOOP_STORE__DATA_DIR", str(deep))
    piped = runner.invoke(app, ["config", "show"])
    assert piped.exit_code == 0, piped.output
    assert f'store.data_dir = "{deep}"' in piped.output.splitlines()
    terminal = Console(width=80, force_terminal=True, record=True, color_system=None)
    monkeypatch.setattr("daemon.cli.out", terminal)
    assert runner.invoke(app, ["config", "show"]).exit_code == 0
    shown = terminal.export_text()
    assert "…" not in shown, shown
    assert str(deep) in "".join(line.split("│")[2].strip() for line in shown.splitlines() if "│" in line)


def test_class_names_ids_and_labels_with_closing_tags_are_printed_not_read_as_markup(workdir: Path) -> None:
    """`[/x]` in a class name, id or label made rich raise MarkupError; `[b]` lost its brackets."""
    (workdir / "labelloop.toml").write_text('[loop]\nclasses = ["[/x]ham", "[b]spam"]\n')
    shown = runner.invoke(app, ["config", "show"])
    assert shown.exit_code == 0, shown.output
    assert '["[/x]ham", "[b]spam"]' in " ".join(shown.output.split())
    (workdir / "pool.jsonl").write_text('{"id": "[/i]a", "text": "hello", "label": "[/x]ham"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    (workdir / "relabel.jsonl").write_text('{"id": "[/i]a", "text": "hello", "label": "[b]spam"}\n')
    relabeled = runner.invoke(app, ["pool", "add", "relabel.jsonl"])
    assert relabeled.exit_code == 0, relabeled.output
    assert "id '[/i]a' is '[/x]ham' in the store, '[b]spam' here" in " ".join(relabeled.output.split())
    removed = runner.invoke(app, ["pool", "remove", "--id", "[/q]gone"])
    assert removed.exit_code == 2, removed.output
    assert "not in the pool: '[/q]gone'" in removed.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "[/x]ham" in status.output


def test_pause_and_resume_by_the_operator(workdir: Path) -> None:
    paused = runner.invoke(app, ["pause", "--reason", "guide [v2] review"])
    assert paused.exit_code == 0 and "paused: no new batches until `labelloop resume`" in paused.output
    assert "the queue was already paused" in runner.invoke(app, ["pause"]).output
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["stopping"]["paused"]["reason"] == "an operator paused the queue: guide [v2] review"
    assert "guide [v2] review" in " ".join(runner.invoke(app, ["status"]).output.split())
    resumed = runner.invoke(app, ["resume"]).output
    assert "resumed" in resumed and "stopping rule" not in resumed
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["stopping"]["paused"] is None


def test_resuming_the_stopping_rules_pause_says_when_it_may_pause_again(workdir: Path) -> None:
    assert runner.invoke(app, ["pause"]).exit_code == 0  # makes the store
    engine = make_engine(f"sqlite:///{workdir / '.labelloop' / 'labelloop.db'}")
    with Session(engine) as session:
        set_value(session, PAUSE_KEY, json.dumps({"reason": "successive models agree", "n_labels": 600}))
        session.commit()
    engine.dispose()
    resumed = " ".join(runner.invoke(app, ["resume"]).output.split())
    assert "resumed: the daemon will queue new batches" in resumed
    assert "pauses it again if the next 3 retrains (one per 10 new labels) still agree" in resumed
    assert "loop.stop_rule_enabled = false" in resumed


@pytest.mark.parametrize(
    ("store_url", "data_dir", "code", "words"),
    [
        ("sqlite:///afile", None, 1, "cannot open the store's database afile: file is not a database"),
        ("sqlite:///folder", None, 1, "cannot open the store's database folder: unable to open database file"),
        ("sqlite:///afile/x.db", "afile", 1, "cannot create the store's folder afile: afile is a file, not a folder"),
        ("postgres://user:CANARY@db/x", None, 2, "store.url is not a database URL labelloop can open"),
        ("not a url CANARY", None, 2, "store.url is not a database URL labelloop can open"),
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line_not_a_traceback(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, store_url: str, data_dir: str | None, code: int, words: str
) -> None:
    """QA: 60-511 lines of traceback for an unwritable store, a file given as the database or its folder,
    or a URL SQLAlchemy cannot load (which, a configuration problem, exits 2)."""
    (workdir / "afile").write_text("not a database\n")
    (workdir / "folder").mkdir()
    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n')
    monkeypatch.setenv("LABELLOOP_STORE__URL", store_url)
    if data_dir is not None:
        monkeypatch.setenv("LABELLOOP_STORE__DATA_DIR", data_dir)
    for command in (["status"], ["pool", "add", "pool.jsonl"])[1 if data_dir else 0:]:  # status: "no store at"
        result = runner.invoke(app, command)
        assert result.exit_code == code, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert words in " ".join(result.output.split()) and "CANARY" not in result.output
        assert "Traceback" not in result.output


def test_a_file_in_the_way_of_an_output_is_one_line(workdir: Path) -> None:
    (workdir / "afile").write_text("in the way\n")
    result = runner.invoke(app, ["export", "afile/labels.csv"])
    assert result.exit_code == 1, result.output
    assert "cannot use afile/" in result.output and "Not a directory" in result.output


def test_a_read_only_store_refuses_a_write_in_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n')

    def refuse(*_: object, **__: object) -> None:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database"))

    monkeypatch.setattr("daemon.pool.add_pool_file", refuse)  # as SQLite says it of a file made read-only
    result = runner.invoke(app, ["pool", "add", "pool.jsonl"])
    assert result.exit_code == 1, result.output
    assert "the store's database refused: attempt to write a readonly database" in " ".join(result.output.split())


def test_status_counts_no_near_copies_as_set_aside_while_the_setting_is_off(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With loop.set_aside_near_copies = false the select stage ignores the records, and status said
    '1 set aside' all the same (QA)."""
    from daemon.near_copies import record_near_copies

    (workdir / "pool.jsonl").write_text('{"id": "a", "text": "hello", "label": "ham"}\n{"id": "b", "text": "hello!"}\n')
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    engine = make_engine(load_settings(workdir / "labelloop.toml").store.url)
    with Session(engine) as session:
        record_near_copies(session, [("b", "a", 0.99)])
        session.commit()
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["pool"]["near_copies"] == 1
    monkeypatch.setenv("LABELLOOP_LOOP__SET_ASIDE_NEAR_COPIES", "false")
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["pool"]["near_copies"] == 0
    monkeypatch.setenv("LABELLOOP_LOOP__SET_ASIDE_NEAR_COPIES", "true")
    monkeypatch.setenv("LABELLOOP_LOOP__NEAR_COPY_COSINE", "0.995")
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["pool"]["near_copies"] == 0
