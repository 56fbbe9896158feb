"""``labelloop simulate`` end to end on a tiny CSV via typer's CliRunner (hashing encoder, no network)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from daemon.cli_simulate import register

TOPICS = {
    "sport": ["match", "goal", "team", "score", "league", "coach"],
    "money": ["bank", "loan", "price", "market", "stock", "fund"],
    "food": ["pizza", "salad", "bread", "cheese", "soup", "cake"],
}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a callback keeps "simulate" a subcommand, as in daemon/cli.py
        pass

    register(app)
    return app


def tiny_csv(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"])
        for i in range(60):
            for topic, words in TOPICS.items():
                text = f"{words[i % 6]} {words[(i * 5 + 1) % 6]} and more about {words[(i + 2) % 6]} {i}"
                writer.writerow([text, topic, "test" if i % 5 == 0 else "train"])
    return path


def test_simulate_runs_end_to_end_and_writes_results(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            str(tiny_csv(tmp_path / "tiny.csv")),
            "--out",
            str(out),
            "--strategy",
            "random",
            "--strategy",
            "margin",
            "--batch-size",
            "10",
            "--budget",
            "40",
            "--seeds",
            "2",
            "--encoder",
            "hashing",
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "random" in result.output and "margin" in result.output
    for name in ("rounds.csv", "class_recall.csv", "summary.csv", "summary.json", "curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pool"] == 144 and summary["n_test"] == 36
    assert [s["strategy"] for s in summary["summaries"]] == ["random", "margin"]
    with (out / "rounds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 4
    assert {row["n_labels"] for row in rows} == {"10", "20", "30", "40"}


def test_simulate_reports_a_bad_strategy_in_one_line(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            str(tiny_csv(tmp_path / "tiny.csv")),
            "--out",
            str(tmp_path / "out"),
            "--strategy",
            "no_such_strategy",
            "--encoder",
            "hashing",
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "unknown" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("flag", "has_names"), [([], True), (["--no-class-names"], False)])
def test_class_names_are_embedded_unless_asked_not_to(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], has_names: bool
) -> None:
    import daemon.simulate_data as simulate_data  # the command imports it on use
    from daemon.simulate_data import load_simulation_data as real

    loaded: list[object] = []

    def spy(*args: object, **kwargs: object) -> object:
        data = real(*args, **kwargs)  # type: ignore[arg-type]
        loaded.append(data.class_prototypes)
        return data

    monkeypatch.setattr(simulate_data, "load_simulation_data", spy)
    result = CliRunner().invoke(
        app,
        ["simulate", "--data", str(tiny_csv(tmp_path / "tiny.csv")), "--out", str(tmp_path / "out"),
         "--strategy", "scarce_margin_diverse", "--batch-size", "10", "--budget", "20", "--seeds", "1",
         "--encoder", "hashing", "--jobs", "1", *flag],
    )
    assert result.exit_code == 0, result.output
    assert (loaded[0] is not None) is has_names


def simulate_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["simulate", "--data", str(data), "--out", str(out), "--strategy", "random", "--batch-size", "10",
            "--budget", "20", "--seeds", "1", "--encoder", "hashing", "--jobs", "1", *extra]


def test_an_out_folder_that_is_a_file_is_refused_before_any_work(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.simulate_data as simulate_data

    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(simulate_data, "load_simulation_data", never)
    taken = tmp_path / "outfile"
    taken.write_text("mine\n")
    result = CliRunner().invoke(app, simulate_args(tiny_csv(tmp_path / "tiny.csv"), taken))
    assert result.exit_code == 1
    assert f"error: --out {taken} is a file, not a folder" in " ".join(result.output.split())
    assert "Traceback" not in result.output and taken.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ("cachefile", "--cache-dir {cache} is a file, not a folder"),
        ("cachefile/sub", "--cache-dir {cache} cannot be created: {file} is a file, not a folder"),
    ],
)
def test_a_cache_dir_that_is_or_lies_under_a_file_is_refused(
    app: typer.Typer, tmp_path: Path, cache: str, expected: str
) -> None:
    (tmp_path / "cachefile").write_text("")
    result = CliRunner().invoke(
        app, simulate_args(tiny_csv(tmp_path / "tiny.csv"), tmp_path / "out", "--cache-dir", str(tmp_path / cache))
    )
    assert result.exit_code == 1
    assert expected.format(cache=tmp_path / cache, file=tmp_path / "cachefile") in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--test-fraction", "0.3", "--test-file", "{data}"], "--test-fraction and --test-file exclude each other"),
        (["--test-fraction", "1.5"], "--test-fraction must be in (0, 1), got 1.5"),
        (["--kappa-threshold", "2"], "--kappa-threshold must be in (0, 1], got 2.0"),
        (["--kappa-window", "0"], "--kappa-window must be >= 1, got 0"),
        (["--near-copy-cosine", "0"], "--near-copy-cosine must be in (0, 1], got 0.0"),
    ],
)
def test_bad_option_values_name_the_option(app: typer.Typer, tmp_path: Path, extra: list[str], expected: str) -> None:
    data = tiny_csv(tmp_path / "tiny.csv")
    args = simulate_args(data, tmp_path / "out", *(arg.format(data=data) for arg in extra))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_help_lists_every_strategy_of_the_registry(app: typer.Typer) -> None:
    from daemon.cli_simulate import STRATEGY_NAMES
    from strategies import REGISTRY

    assert tuple(name for name in REGISTRY if name != "cold_start") == STRATEGY_NAMES
    result = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert all(name in result.output for name in STRATEGY_NAMES)


def test_a_refused_file_is_refused_for_simulation_not_for_import(app: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,a\n,b\n")
    result = CliRunner().invoke(app, simulate_args(bad, tmp_path / "out"))
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert f"{bad}: refused, nothing simulated: line 3:" in flat
    assert "nothing imported" not in flat


def test_the_footer_shows_the_budget_that_ran_and_the_header_the_pool_classes(
    app: typer.Typer, tmp_path: Path
) -> None:
    data = tiny_csv(tmp_path / "tiny.csv")
    with data.open("a", newline="") as handle:  # a class only the test split has: dropped, not counted
        csv.writer(handle).writerows([[f"mystery thing {i}", "ghost", "test"] for i in range(3)])
    args = simulate_args(data, tmp_path / "out")
    args[args.index("--budget") + 1], args[args.index("--batch-size") + 1] = "1000", "100"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "144 pool / 36 test items, 3 classes;" in flat
    assert "batch 100, budget 144 (capped at the pool's 144 items; asked for batch 100, budget 1000)" in flat
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["budget"] == 144


def test_strategies_may_be_comma_separated_and_default_names_the_daemons(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--strategy random,default` was refused as "unknown strategy 'random,default'", and so was
    'default' alone, though loop.strategy takes it (QA)."""
    import daemon.cli_simulate as cli_simulate
    from strategies import DEFAULT_STRATEGY

    asked: list[tuple[str, ...]] = []

    def record(request: cli_simulate.SimulateRequest) -> object:
        asked.append(request.strategies)
        raise typer.Exit(0)

    monkeypatch.setattr(cli_simulate, "run_request", record)
    data = tiny_csv(tmp_path / "tiny.csv")
    ran = CliRunner().invoke(app, [*simulate_args(data, tmp_path / "o"), "--strategy", "random, default",
                                   "--strategy", "margin"])
    assert ran.exit_code == 0, ran.output
    assert asked == [("random", DEFAULT_STRATEGY, "margin")]


def test_an_unknown_strategy_or_an_unwritable_out_is_refused_before_the_data_is_read(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The strategy was checked after the file was read and embedded (24 s on 2,300 rows), and an
    unwritable --out failed with a traceback after the whole run."""
    import daemon.simulate_data as simulate_data

    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(simulate_data, "load_simulation_data", never)
    data = tiny_csv(tmp_path / "tiny.csv")
    unknown = CliRunner().invoke(app, [*simulate_args(data, tmp_path / "o1"), "--strategy", "margni"])
    assert unknown.exit_code == 1 and "unknown strategy 'margni'; known: all, " in unknown.output
    proc = CliRunner().invoke(app, simulate_args(data, Path("/proc/labelloop-out")))  # even root cannot write here
    assert proc.exit_code == 1 and "--out /proc/labelloop-out cannot be written" in proc.output
    assert "Traceback" not in proc.output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused = CliRunner().invoke(app, simulate_args(data, locked / "out")) if not _can_write(locked) else None
    finally:
        locked.chmod(0o700)
    assert refused is None or (  # None: a user who may write anywhere (root)
        refused.exit_code == 1 and f"--out {locked / 'out'} cannot be written" in " ".join(refused.output.split()))


def _can_write(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


def test_summary_json_records_the_settings_that_change_results(app: typer.Typer, tmp_path: Path) -> None:
    """--calibrate, --no-class-names, the test set's source and --keep-duplicates left no trace: two runs
    that differ only in them wrote summary.json files that could not be told apart."""
    data = tiny_csv(tmp_path / "tiny.csv")
    with data.open("a", newline="") as handle:
        csv.writer(handle).writerow(["a row nobody labeled", "", "train"])
    plain = CliRunner().invoke(app, simulate_args(data, tmp_path / "plain"))
    assert plain.exit_code == 0, plain.output
    settings = json.loads((tmp_path / "plain" / "summary.json").read_text())["settings"]
    assert settings == {
        "n_unlabeled_dropped": 1,
        "data": str(data.resolve()),
        "test_file": None,
        "test_fraction": None,
        "test_set": "the data's 'split' column when it has test rows, else a stratified 0.2 of the data",
        "fields": {"id": "id", "text": "text", "label": "label", "embedding": "embedding"},
        "keep_duplicates": False,
        "class_names": True,
        "calibrate": False,
        "encoder_option": "hashing",
        "jobs": 1,
        "class_names_embedded": True,
    }
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["near_copy_cosine"] == 0.97
    extra = ("--calibrate", "--no-class-names", "--test-fraction", "0.3", "--keep-duplicates", "--keep-near-copies")
    changed = CliRunner().invoke(app, simulate_args(data, tmp_path / "changed", *extra))
    assert changed.exit_code == 0, changed.output
    assert json.loads((tmp_path / "changed" / "summary.json").read_text())["near_copy_cosine"] is None
    settings = json.loads((tmp_path / "changed" / "summary.json").read_text())["settings"]
    assert settings["calibrate"] is True and settings["keep_duplicates"] is True
    assert settings["class_names"] is False and settings["class_names_embedded"] is False
    assert (settings["test_fraction"], settings["test_set"]) == (0.3, "a stratified 0.3 of the data")


def test_a_cache_dir_another_run_writes_is_refused_with_a_way_out_for_the_cli(
    app: typer.Typer, tmp_path: Path
) -> None:
    """Two runs sharing --cache-dir: the second was told to 'open it with readonly=True', advice for Python."""
    import fcntl
    import os

    from models.cache import model_key
    from models.hashing import HashingEmbedder

    held = tmp_path / "cache" / model_key(HashingEmbedder(dim=256))
    held.mkdir(parents=True)
    fd = os.open(held / "writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file description acts as the other run
        os.pwrite(fd, b"3777\n", 0)
        result = CliRunner().invoke(app, simulate_args(tiny_csv(tmp_path / "tiny.csv"), tmp_path / "out",
                                                       "--cache-dir", str(tmp_path / "cache")))
    finally:
        os.close(fd)
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert ("is being written by another process (pid 3777); try again once it has finished, or give this run its "
            "own --cache-dir (runs that share one take turns)") in flat
    assert "readonly" not in flat and "Traceback" not in flat
