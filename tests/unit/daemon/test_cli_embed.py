"""How ``labelloop embed`` shows progress: a bar on a terminal, plain lines elsewhere, nothing when idle."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import daemon.app
from daemon.cli import app
from daemon.cli_embed import progress_view
from daemon.settings import Settings
from models.embedder import Embedder
from tests.doubles import CountingEmbedder

runner = CliRunner()


def console(*, is_terminal: bool) -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(file=sink, force_terminal=is_terminal, width=100, color_system=None), sink


def test_off_a_terminal_a_plain_line_every_interval() -> None:
    piped, sink = console(is_terminal=False)
    now = [0.0]
    with progress_view(piped, interval_s=10.0, clock=lambda: now[0]) as show:
        for done, at in [(0, 0.0), (100, 5.0), (200, 10.0), (300, 15.0), (400, 20.0)]:
            now[0] = at
            show(done, 1000)
    text = sink.getvalue()
    assert text == ("200/1000 pool items embedded (20/s, ETA 40s)\n"
                    "400/1000 pool items embedded (20/s, ETA 30s)\n")
    assert not any(char < " " and char != "\n" for char in text)  # no \r, no escape sequences


@pytest.mark.parametrize("is_terminal", [True, False])
def test_nothing_is_shown_when_there_is_nothing_to_embed(is_terminal: bool) -> None:
    where, sink = console(is_terminal=is_terminal)
    now = [0.0]
    with progress_view(where, interval_s=10.0, clock=lambda: now[0]) as show:
        show(0, 0)
        now[0] = 60.0
        show(0, 0)
    assert sink.getvalue().strip() == ""


def test_on_a_terminal_a_bar() -> None:
    terminal, sink = console(is_terminal=True)
    with progress_view(terminal) as show:
        show(0, 10)
        show(10, 10)
    assert "embedding" in sink.getvalue() and "10/10" in sink.getvalue()


def test_the_command_piped_prints_no_bar_and_nothing_when_all_is_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_LABEL_STUDIO__API_KEY", raising=False)
    embedder = CountingEmbedder(dim=16)

    def factory(settings: Settings) -> Callable[[], Embedder]:
        return lambda: embedder

    monkeypatch.setattr(daemon.app, "default_embedder_factory", factory)
    assert runner.invoke(app, ["init", "--classes", "a,b"]).exit_code == 0
    (tmp_path / "pool.jsonl").write_text("".join(f'{{"id": "it-{i}", "text": "item {i}"}}\n' for i in range(5)))
    assert runner.invoke(app, ["pool", "add", "pool.jsonl"]).exit_code == 0
    first = runner.invoke(app, ["embed"])  # CliRunner's stderr is no terminal
    assert first.exit_code == 0, first.output
    assert "embedded 5 pool items" in first.output
    assert "━" not in first.output and "\r" not in first.output and "\x1b" not in first.output
    again = runner.invoke(app, ["embed"])
    assert again.exit_code == 0
    assert again.output.strip() == "every pool item already has a vector"  # no 0/0 bar before it
