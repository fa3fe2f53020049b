"""The `distill-bench` command.

Each command is one function below, decorated with `@app.command()`; a command group (e.g. `toy build`)
is a `typer.Typer()` added with `app.add_typer(...)`. Commands load their config through `load_checked`
inside `config_errors()`, so every bad config ends the same way: one `file: dotted.key: message` line per
problem on stderr, exit code 2.

Heavy packages (vllm, ray, lm_eval, torch, transformers) are imported only inside the commands that run
models, so `--help`, `validate` and `plan` stay instant; tests/unit/test_cli.py checks this.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from bench.config import BenchConfig, ConfigError, load_config, results_root_problem
from bench.plan import build_plan, gpus_per_model, pending_cells

if TYPE_CHECKING:
    from bench.compare import ComparisonRow
    from bench.cost import PriceTable

EXIT_CONFIG_ERROR = 2  # same code click uses for bad usage: the run never started

app = typer.Typer(
    name="distill-bench",
    help="Does the distilled student give the teacher's quality for far less compute? Measured in one run.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="Benchmark config YAML.", show_default=False)]


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn a ConfigError raised in the block into its lines on stderr and exit code 2."""
    try:
        yield
    except ConfigError as error:
        for line in error.lines[:MAX_ERROR_LINES]:
            # Text, not markup: the lines hold `[0]`-style paths; soft_wrap keeps each one on one line.
            err_console.print(Text(_clipped(line), style="red"), soft_wrap=True)
        if len(error.lines) > MAX_ERROR_LINES:  # a file that is not a config at all: its first problems tell
            err_console.print(Text(f"... and {len(error.lines) - MAX_ERROR_LINES} more", style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None


MAX_ERROR_LINES = 20
MAX_ERROR_LINE_CHARS = 500  # a key or value quoted from a hostile file can be any length


def _clipped(line: str) -> str:
    return line if len(line) <= MAX_ERROR_LINE_CHARS else line[: MAX_ERROR_LINE_CHARS - 1] + "…"


def load_checked(path: Path) -> tuple[BenchConfig, PriceTable]:
    """Load a config and the price table it names; the device type must be priced. Raises ConfigError."""
    from bench.cost import load_price_table  # lazy: contract of the cost stage, not needed for --help

    config = load_config(path)
    prices = load_price_table(config.hardware.prices)
    if prices.price(config.hardware.device_type) is None:
        raise ConfigError(
            [
                f"{path}: hardware.device_type: {config.hardware.device_type!r} is not in the price table "
                f"{config.hardware.prices!r}; it lists {sorted(prices.prices)}"
            ]
        )
    return config, prices


def check_results_option(results_dir: Path | None) -> None:
    """`--results-dir` must be a directory or not exist yet (a file there would fail the run midway)."""
    problem = results_root_problem(results_dir) if results_dir is not None else None
    if problem is not None:
        raise ConfigError([f"--results-dir: {problem}"])


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@app.command()
def validate(config_path: ConfigArg) -> None:
    """Check a config and its price table without running anything; writes nothing.

    Each problem is printed as `file: dotted.key.path: message` and the exit code is 2.

    Example: distill-bench validate configs/quickstart.yaml
    """
    with config_errors():
        config, _ = load_checked(config_path)
    summary = ", ".join(
        [
            _plural(len(config.models), "model"),
            _plural(len(config.tasks), "task"),
            _plural(len(config.workloads), "workload"),
            _plural(len(build_plan(config)), "cell"),
        ]
    )
    console.print(Text(f"{config_path}: OK: {summary}", style="green"), soft_wrap=True)


def _done_keys(run_dir: Path) -> set[str]:
    """Cell keys already finished in a run directory; none when the run has not started."""
    if not run_dir.is_dir():
        return set()
    from bench.store import done_cell_keys  # lazy: the store stage pulls in pyarrow

    return done_cell_keys(run_dir)


@app.command()
def plan(
    config_path: ConfigArg,
    results_dir: Annotated[
        Path | None,
        typer.Option("--results-dir", metavar="DIR", help="Results root; default: the config's run.results_dir."),
    ] = None,
) -> None:
    """Show the cells a run would execute, and which are already done in results/<run.name>/.

    A cell is one model on one task (eval) or one trial of one workload (perf, in a block: each block runs
    every model once; `repeats` blocks per workload).
    Its key hashes the settings that shape its results, so a re-run skips the cells already stored.

    Example: distill-bench plan configs/quickstart.yaml --results-dir results
    """
    with config_errors():
        config, _ = load_checked(config_path)
        check_results_option(results_dir)
    run_dir = config.run_dir(results_dir)
    done = _done_keys(run_dir)
    cells = build_plan(config, done)
    gpus = gpus_per_model(config)

    table = Table(title=f"plan for run {config.run.name!r} ({run_dir})")
    for column in ("kind", "model", "target"):
        table.add_column(column)
    table.add_column("block", justify="right")
    table.add_column("key", no_wrap=True, min_width=16)
    table.add_column("GPUs", justify="right")
    table.add_column("done")
    for cell in cells:
        is_done = cell.key in done
        table.add_row(
            cell.kind, cell.model, cell.target, "" if cell.block is None else str(cell.block), cell.key,
            str(gpus[cell.model]),
            Text("yes", style="green") if is_done else Text("no"),
        )  # fmt: skip
    console.print(table)
    to_run = len(pending_cells(cells, done))
    console.print(f"{_plural(len(cells), 'cell')}, {len(cells) - to_run} done, {to_run} to run", soft_wrap=True)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    markdown = "markdown"


def _comparison_rows(results_dir: Path) -> list[ComparisonRow]:
    """The comparison of stored results; says so on stderr when there is no teacher/student pair.

    A damaged results tree ends here as in `config_errors`: a damaged manifest is one line naming it and
    exit code 2; a damaged or foreign cell file is left out with one warning line on stderr (see
    `bench.store`), and the comparison of the rest is printed.
    """
    from bench.compare import compare_results
    from bench.store import StoreError, skip_report

    skipped: list = []
    try:
        rows = compare_results(results_dir, skipped=skipped)
    except StoreError as error:
        err_console.print(Text(str(error), style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None
    for line in skip_report(skipped):
        err_console.print(Text(f"warning: {line}", style="yellow"), soft_wrap=True)
    if not rows:
        err_console.print(Text(f"{results_dir}: no teacher/student pair with stored results"), soft_wrap=True)
    return rows


def _require_results_dir(results_dir: Path) -> None:
    if not results_dir.is_dir():
        err_console.print(f"{results_dir}: no such results directory")
        raise typer.Exit(EXIT_CONFIG_ERROR)


def _natural_width(table: Table) -> int:
    """The width at which a rich table needs to cut nothing."""
    measuring = Console(width=100_000)
    return Measurement.get(measuring, measuring.options, table).maximum


RICH_TABLE_ROWS = 300  # above this, the table is plain aligned text: rich lays out each cell, twice


def _print_comparison(results_dir: Path, output: OutputFormat) -> bool:
    """Print the comparison; False when there is no teacher/student pair to compare."""
    from bench.report import render_table, render_text, to_json, to_markdown

    rows = _comparison_rows(results_dir)
    if not rows:
        return False
    if output is OutputFormat.table:
        if len(rows) > RICH_TABLE_ROWS:  # a leaderboard-sized results tree: the same columns, in seconds less
            print(render_text(rows), end="")
        elif console.is_terminal:
            console.print(render_table(rows))
        else:
            # Off a terminal (Slurm logs, CI) rich assumes 80 columns and cuts names to "toy-st…", which could
            # be either student: a log gets the table at the width it needs, every name whole.
            table = render_table(rows)
            Console(width=_natural_width(table)).print(table)
        console.file.flush()
        print("\n".join(row.summary for row in rows))  # text as it is: no markup, no wrapping
    else:
        # Plain print: machine-readable output must not be wrapped or styled by rich.
        print(to_json(rows) if output is OutputFormat.json else to_markdown(rows))
    return True


@app.command()
def run(
    config_path: ConfigArg,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. 'auto' or host:6379); default: embedded local Ray.")
    ] = None,
    results_dir: Annotated[
        Path | None,
        typer.Option("--results-dir", metavar="DIR", help="Results root; default: the config's run.results_dir."),
    ] = None,
) -> None:
    """Run every cell of a config that is not stored yet, then print the teacher/student comparison.

    Cells already in results/<run.name>/ are skipped, so an interrupted run resumes where it stopped.
    Exits 1 if any cell failed (failures are stored in the `failures` table and retried by the next run).

    Example: distill-bench run configs/quickstart.yaml
    """
    from bench.progress import RunProgress
    from bench.run import run as run_cells

    with config_errors():
        config, prices = load_checked(config_path)
        check_results_option(results_dir)
    outcome = run_cells(config, prices, RunProgress(console), address=address, results_dir=results_dir)
    console.print(
        f"{outcome.run_dir}: {outcome.succeeded} cells run, {outcome.skipped} already stored, {outcome.failed} failed",
        soft_wrap=True,
    )
    _print_comparison(outcome.run_dir, OutputFormat.table)
    if outcome.failed:
        raise typer.Exit(1)


@app.command()
def compare(
    results_dir: Annotated[Path, typer.Argument(metavar="RESULTS_DIR", help="A results root or one run directory.")],
    output: Annotated[OutputFormat, typer.Option("--format", help="table, json or markdown.")] = OutputFormat.table,
) -> None:
    """Compare each student with its teacher from stored results only: scores, retention, CI, speed, cost.

    Example: distill-bench compare results/quickstart --format markdown
    """
    _require_results_dir(results_dir)
    if not _print_comparison(results_dir, output):
        raise typer.Exit(1)


@app.command()
def leaderboard(
    results_dir: Annotated[Path, typer.Argument(metavar="RESULTS_DIR", help="A results root or one run directory.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where the files go.")] = Path("leaderboard"),
) -> None:
    """Rank every student in stored results: leaderboard.parquet, .md, a Pareto plot and a static HTML page.

    Students non-inferior to their teacher on every task come first, fastest first. Every ratio and the
    quality kept carry their intervals; the page has a per-task drill-down under each student, and control
    pairs (compare.controls) are listed apart.

    Example: distill-bench leaderboard results/ --out site/
    """
    from bench.leaderboard import build_leaderboard, write_leaderboard

    _require_results_dir(results_dir)
    rows = _comparison_rows(results_dir)
    if not rows:
        raise typer.Exit(1)
    for path in write_leaderboard(build_leaderboard(rows), out, source=str(results_dir)):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)


@app.command()
def compact(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="One run's directory (results/<run>).")],
) -> None:
    """Merge a finished run's cell files into one file per table (<table>/compacted.parquet).

    compare, leaderboard, resumed runs and DuckDB globs read both layouts. Crash-safe: the merged file is
    written before any cell file is removed; running it again finishes an interrupted compaction. Files that
    fail the store's checks are left as they are, with a warning.

    Example: distill-bench compact results/quickstart
    """
    from bench.compact import compact_run
    from bench.store import StoreError

    try:
        tables = compact_run(run_dir)
    except StoreError as error:
        err_console.print(Text(str(error), style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None
    for table in tables:
        for kept in table.kept:
            err_console.print(Text(f"warning: {kept}", style="yellow"), soft_wrap=True)
        line = f"{table.table}: {_plural(table.merged, 'cell file')} merged, {_plural(table.cells, 'cell')} compacted"
        console.print(line, soft_wrap=True, highlight=False)


@app.command()
def slurm(
    config_path: ConfigArg,
    nodes: Annotated[int, typer.Option(help="Nodes to allocate.")] = 1,
    time: Annotated[
        str, typer.Option(help="Wall-time limit in a Slurm format: MINUTES, HH:MM:SS, D-HH:MM:SS, UNLIMITED, ...")
    ] = "04:00:00",
    partition: Annotated[str | None, typer.Option(help="Slurm partition (or a comma-separated list).")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account.")] = None,
    gpus_per_node: Annotated[
        int | None,
        typer.Option(help="Default: 0 for a config priced as cpu-core, else the largest tensor_parallel_size."),
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="A CPU partition: request no GPUs (--gpus-per-node 0).")] = False,
) -> None:
    """Print a Slurm batch script that starts Ray across the allocation and runs this config on it.

    Example: distill-bench slurm configs/r1-distill.yaml --nodes 2 --partition gpu > job.sbatch && sbatch job.sbatch
    """
    from bench.slurm import SlurmOptionError, SlurmOptions, render

    with config_errors():
        config, _ = load_checked(config_path)
    try:
        if cpu and gpus_per_node:
            raise SlurmOptionError(f"--cpu: asks for no GPUs, but --gpus-per-node is {gpus_per_node}")
        options = SlurmOptions(nodes, time, partition, account, 0 if cpu else gpus_per_node)
        script = render(config, config_path, options, Path.cwd())
    except SlurmOptionError as error:
        err_console.print(Text(str(error), style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None
    print(script, end="")


toy_app = typer.Typer(help="The toy teacher/student pair and task suite (quickstart and tests).", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


def _log_line(line: str) -> None:
    """Print a progress line at once, also when stdout is a file (a background build's log)."""
    console.print(line, soft_wrap=True, highlight=False)
    console.file.flush()


@toy_app.command("build")
def toy_build(
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="Model directory root.")] = None,
    tasks_dir: Annotated[Path, typer.Option("--tasks-dir", metavar="DIR")] = Path("configs/tasks/toy"),
    preset: Annotated[str, typer.Option(help="Size preset: 'full' (shipped) or 'tiny' (tests).")] = "full",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build the toy suite, teacher, distilled student and label-trained baseline (seeded, cached).

    The full preset takes about 40-60 minutes on 2 CPU cores; its weights ship in the repo, so the quickstart
    never trains. A second call with the same settings returns at once.

    Example: distill-bench toy build --preset tiny --out /tmp/toy --tasks-dir /tmp/toy/tasks
    """
    from bench.toy.build import DEFAULT_MODELS_DIR, DEFAULT_TASKS_DIR, PRESETS, build

    if preset not in PRESETS:
        err_console.print(f"--preset: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        raise typer.Exit(EXIT_CONFIG_ERROR)
    if preset != "full" and (out is None or tasks_dir == DEFAULT_TASKS_DIR):
        # The defaults are the shipped pair and its task files; a test-size build must not replace them.
        err_console.print(f"--preset {preset}: give --out and --tasks-dir (the defaults hold the shipped pair)")
        raise typer.Exit(EXIT_CONFIG_ERROR)
    report = build(out or DEFAULT_MODELS_DIR, tasks_dir, preset, seed, log=_log_line)
    console.print(f"toy build done in {report['build_s']} s: {out or DEFAULT_MODELS_DIR}/report.json")


if __name__ == "__main__":
    app()
