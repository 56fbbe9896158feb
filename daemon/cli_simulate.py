"""``labelloop simulate``: replay active learning on a labeled file with an oracle annotator.

Parsing (typer) -> :func:`daemon.simulate.run_simulation` -> rendering (rich), in three
separate functions. ``daemon/cli.py`` calls :func:`register` to add the command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from daemon.cli_common import counted, out, print_error
from daemon.errors import DaemonError, PoolFileError
from models.errors import CacheLocked, ModelError

if TYPE_CHECKING:  # torch and transformers load on use: every other command starts 2 s sooner
    from daemon.simulate import ReplayConfig, SimulationResult
    from daemon.simulate_data import DataSource
    from daemon.simulate_report import StrategySummary
    from models.embedder import Embedder

__all__ = ["SimulateRequest", "register", "run_request"]

DEFAULT_STRATEGIES = ("random", "margin", "modal_margin")  # plus the registry's default
# strategies.REGISTRY without cold_start, spelled out so --help needs no numpy (a test pins the two together).
STRATEGY_NAMES = (
    "random", "least_confidence", "margin", "entropy", "scarcity", "scarce_margin", "scarce_margin_diverse",
    "margin_diverse", "modal_margin", "modal_ranked_batch",
)


@dataclass(frozen=True, slots=True)
class SimulateRequest:
    """Everything ``simulate`` was asked to do, parsed and checked."""

    source: DataSource
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    config: ReplayConfig
    out_dir: Path
    cache_dir: Path
    encoder: str
    calibrate: bool
    jobs: int
    name: str | None = None
    use_class_names: bool = True


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""
    app.command("simulate", help=_HELP)(simulate)


_HELP = (
    "Replay active learning on labeled data with an oracle; compare strategies by labels needed.\n\n"
    "Uses the daemon's encoder, proxy head, strategies and batch selection; labels stay hidden until an "
    "item is annotated. modAL arms run modAL's query functions on our probabilities and the head is refit "
    "every round (modAL's ActiveLearner.teach fails with scikit-learn >= 1.8)."
)


def simulate(
    data: Annotated[Path, typer.Option("--data", help="Labeled CSV/TSV/JSONL/Parquet file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for CSV/JSON/PNG results.")],
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            help="Registry name (repeatable or comma-separated), 'default' (the daemon's), or 'all': "
            + ", ".join(STRATEGY_NAMES) + ". Default: random, margin, modal_margin and the daemon's default.",
        ),
    ] = None,
    text_field: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_field: Annotated[str, typer.Option(help="Column holding the gold label.")] = "label",
    id_field: Annotated[str, typer.Option(help="Column holding a unique id (optional).")] = "id",
    embedding_field: Annotated[str, typer.Option(help="Column with precomputed vectors (optional).")] = "embedding",
    test_file: Annotated[Path | None, typer.Option(help="Separate labeled evaluation file.")] = None,
    test_fraction: Annotated[
        float | None,
        typer.Option(help="Hold out this stratified share of --data (default: the file's split column, "
                     "else 0.2); not with --test-file."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items annotated per round.")] = 50,
    budget: Annotated[int, typer.Option(min=1, help="Total labels per run.")] = 2000,
    seeds: Annotated[int, typer.Option(min=1, help="Runs per strategy (seeds 0..N-1).")] = 5,
    encoder: Annotated[
        str,
        typer.Option(help="'default' (bundled all-MiniLM-L6-v2), a model folder, or 'hashing' (tests only)."),
    ] = "default",
    cache_dir: Annotated[Path | None, typer.Option(help="Embedding cache (default: <out>/cache).")] = None,
    calibrate: Annotated[
        bool,
        typer.Option(help="Temperature-calibrate the head each round, as the daemon does (about 4x slower)."),
    ] = False,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes.")] = min(2, os.cpu_count() or 1),
    kappa_threshold: Annotated[float, typer.Option(help="Stopping rule: agreement needed.")] = 0.99,
    kappa_window: Annotated[int, typer.Option(help="Stopping rule: consecutive rounds.")] = 3,
    name: Annotated[str | None, typer.Option(help="Data set name in outputs (default: the file's stem).")] = None,
    keep_duplicates: Annotated[
        bool,
        typer.Option(help="Without an id column, keep every row (repeated texts, one text under two labels) "
                     "instead of merging identical texts and refusing conflicting ones."),
    ] = False,
    class_names: Annotated[
        bool,
        typer.Option(help="Embed the class names so the default strategy can look for unseen classes "
                     "(text files only), as the daemon does with loop.use_class_names."),
    ] = True,
    near_copies: Annotated[
        bool,
        typer.Option("--set-aside-near-copies/--keep-near-copies",
                     help="Set aside unlabeled items nearly identical to labeled ones, as the daemon does with "
                     "loop.set_aside_near_copies (not in the reference arms, random and modAL's)."),
    ] = True,
    near_copy_cosine: Annotated[
        float,
        typer.Option(help="Cosine from which an item counts as a near-copy, in (0, 1] (loop.near_copy_cosine)."),
    ] = 0.97,
) -> None:
    """Replay active learning on labeled data with an oracle; compare strategies by labels needed.

    The same encoder, proxy head, strategies and batch selection as the daemon; labels
    stay hidden until an item is annotated. modAL arms run modAL's query functions on
    our probabilities and the head is refit every round (modAL's ActiveLearner.teach
    fails with scikit-learn >= 1.8).
    """
    from daemon.simulate import ReplayConfig
    from daemon.simulate_data import DataSource
    from daemon.stopping import StoppingRule
    from strategies import DEFAULT_STRATEGY, REGISTRY

    problem = _option_problem(out_dir, cache_dir, test_file, test_fraction, kappa_threshold, kappa_window,
                              near_copy_cosine)
    if problem:
        print_error(problem)
        raise typer.Exit(1)
    given = [name.strip() for option in strategy or () for name in option.split(",") if name.strip()]
    # 'default' as in loop.strategy, and "random,default" as one would write a list (both refused, QA)
    names = tuple(DEFAULT_STRATEGY if name == "default" else name for name in given) or (*DEFAULT_STRATEGIES,
                                                                                           DEFAULT_STRATEGY)
    if "all" in names:
        names = tuple(name for name in REGISTRY if name != "cold_start")
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:  # before the file is read and embedded, which may take hours
        print_error(f"unknown strategy {', '.join(map(repr, unknown))}; known: all, default, {', '.join(REGISTRY)}")
        raise typer.Exit(1)
    request = SimulateRequest(
        source=DataSource(data, test_file, test_fraction, text_field, label_field, id_field, embedding_field,
                          keep_duplicates),
        strategies=tuple(dict.fromkeys(names)),
        seeds=tuple(range(seeds)),
        config=ReplayConfig(batch_size, budget, StoppingRule(kappa_threshold, kappa_window),
                            near_copy_cosine if near_copies else None),
        out_dir=out_dir,
        cache_dir=cache_dir or out_dir / "cache",
        encoder=encoder,
        calibrate=calibrate,
        jobs=jobs,
        name=name,
        use_class_names=class_names,
    )
    try:
        result, summaries, written = run_request(request)
    except PoolFileError as e:
        print_error(PoolFileError(e.path, e.problems, outcome="nothing simulated"))  # not imported
        raise typer.Exit(1) from None
    except CacheLocked as e:  # another process writes the cache
        print_error(f"{e}, or give this run its own --cache-dir (runs that share one take turns)")
        raise typer.Exit(1) from None
    except (DaemonError, ModelError, ValueError) as e:
        print_error(e)
        raise typer.Exit(1) from None
    render(result, summaries, written)


def _option_problem(
    out_dir: Path,
    cache_dir: Path | None,
    test_file: Path | None,
    test_fraction: float | None,
    kappa_threshold: float,
    kappa_window: int,
    near_copy_cosine: float,
) -> str | None:
    """Return what is wrong with the options, in one line naming the option, or None; checked before any work.

    The folders are made last, once every other option is good (a refused run leaves nothing behind).
    """
    folders = (("--out", out_dir), ("--cache-dir", cache_dir or out_dir / "cache"))
    for option, folder in folders:
        problem = _not_a_folder(option, folder)
        if problem:
            return problem
    if test_file is not None and test_fraction is not None:
        return "--test-fraction and --test-file exclude each other: the test file is the whole test set"
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        return f"--test-fraction must be in (0, 1), got {test_fraction}"
    if not 0.0 < kappa_threshold <= 1.0:
        return f"--kappa-threshold must be in (0, 1], got {kappa_threshold}"
    if kappa_window < 1:
        return f"--kappa-window must be >= 1, got {kappa_window}"
    if not 0.0 < near_copy_cosine <= 1.0:
        return f"--near-copy-cosine must be in (0, 1], got {near_copy_cosine}"
    for option, folder in folders:
        problem = _unwritable(option, folder)
        if problem:
            return problem
    return None


def _not_a_folder(option: str, folder: Path) -> str | None:
    """Say why ``folder`` cannot be a folder (it, or a parent, is a file), or None."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return None
        if candidate.exists():
            if candidate == folder:
                return f"{option} {folder} is a file, not a folder"
            return f"{option} {folder} cannot be created: {candidate} is a file, not a folder"
    return None


def _unwritable(option: str, folder: Path) -> str | None:
    """Create ``folder`` and write in it now, or say in one line why that fails (an unwritable ``--out`` used to
    fail with a traceback after the whole run)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".labelloop-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        return f"{option} {folder} cannot be written: {e.strerror or e}"
    return None


def run_request(request: SimulateRequest) -> tuple[SimulationResult, list[StrategySummary], list[Path]]:
    """Load, replay, summarise and write; return the result, its summaries and the files written.

    Raises:
        PoolFileError: the data file is refused.
        ModelError: the encoder cannot be loaded.
        ValueError: an unknown strategy or a bad option.
    """
    from daemon.simulate import proxy_classifier, run_simulation
    from daemon.simulate_data import load_simulation_data
    from daemon.simulate_report import summarise, write_outputs

    # The encoder loads lazily: a file that carries its own vectors never loads it.
    data = load_simulation_data(
        request.source,
        embedder=_embedder(request.encoder),
        cache_dir=request.cache_dir,
        name=request.name,
        use_class_names=request.use_class_names,
    )
    result = run_simulation(
        data,
        request.strategies,
        request.seeds,
        request.config,
        make_classifier=partial(proxy_classifier, calibrate=request.calibrate),
        jobs=request.jobs,
    )
    summaries = summarise(result)
    settings = _settings(request) | {"class_names_embedded": data.class_prototypes is not None}
    return result, summaries, write_outputs(result, summaries, request.out_dir, settings=settings)


def _settings(request: SimulateRequest) -> dict[str, Any]:
    """Return the options that change results and are not in the result, for ``summary.json`` (``jobs`` does
    not change them: arms run on one torch thread each)."""
    from daemon.simulate_data import DEFAULT_TEST_FRACTION, SPLIT_FIELD

    source = request.source
    if source.test_path is not None:
        test_set = "the test file"
    elif source.test_fraction is not None:
        test_set = f"a stratified {source.test_fraction:g} of the data"
    else:
        test_set = (f"the data's {SPLIT_FIELD!r} column when it has test rows, else a stratified "
                    f"{DEFAULT_TEST_FRACTION:g} of the data")
    return {
        "data": str(source.path.resolve()),
        "test_file": None if source.test_path is None else str(source.test_path.resolve()),
        "test_fraction": source.test_fraction,
        "test_set": test_set,
        "fields": {"id": source.id_field, "text": source.text_field, "label": source.label_field,
                   "embedding": source.embedding_field},
        "keep_duplicates": source.keep_duplicates,
        "class_names": request.use_class_names,
        "calibrate": request.calibrate,
        "encoder_option": request.encoder,
        "jobs": request.jobs,
    }


def render(result: SimulationResult, summaries: list[StrategySummary], written: list[Path]) -> None:
    """Print the summary table and where the files went."""
    from daemon.simulate_report import budget_text, footnotes, table_rows

    ref = result.reference
    n_classes = len(result.pool_counts)
    in_test = "" if len(result.eval_classes) == n_classes else f" ({len(result.eval_classes)} in the test set)"
    table = Table(
        title=f"{escape(result.dataset)}: {result.n_pool} pool / {result.n_test} test items, "
        f"{n_classes} classes{in_test}; full-data macro-F1 {ref.macro_f1:.3f}, accuracy {ref.accuracy:.3f}",
    )
    rows = table_rows(summaries)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(value) for value in row.values()))
    wide = out if out.is_terminal else Console(width=max(out.width, 180))  # files and pipes: no squeeze
    wide.print(table)
    for line in footnotes(summaries):
        wide.print(escape(line))
    wide.print(escape(f"{counted(len(result.seeds), 'seed')}, {budget_text(result)}; encoder {result.encoder}; "
                      f"{result.wall_s:.0f}s"))
    wide.print("wrote " + escape(", ".join(str(path) for path in written)))


def _embedder(name: str) -> Embedder:
    if name == "hashing":
        from models.hashing import HashingEmbedder

        return HashingEmbedder(dim=256)
    from models.embedder import TransformerEmbedder

    return TransformerEmbedder(None if name == "default" else name)
