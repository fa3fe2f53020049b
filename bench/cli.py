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

import click
import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from bench.config import BenchConfig, load_config, results_root_problem
from bench.configfile import ConfigError
from bench.cost import SECONDS_PER_HOUR, PriceTable, load_price_table
from bench.estimate import DEFAULT_MFU, Estimate, assumption_lines
from bench.estimate import estimate as estimate_config
from bench.plan import build_plan, gpus_per_model, pending_cells

if TYPE_CHECKING:
    from bench.adaptive import QualitySummary, RunSavings
    from bench.compare import ComparisonRow

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


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn a StoreError (a damaged results file) raised in the block into one line on stderr and exit code 2."""
    from bench.store import StoreError

    try:
        yield
    except StoreError as error:
        err_console.print(Text(str(error), style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None


MAX_ERROR_LINES = 20
MAX_ERROR_LINE_CHARS = 500  # a key or value quoted from a hostile file can be any length


def _clipped(line: str) -> str:
    return line if len(line) <= MAX_ERROR_LINE_CHARS else line[: MAX_ERROR_LINE_CHARS - 1] + "…"


def load_checked(path: Path) -> tuple[BenchConfig, PriceTable]:
    """Load a config and the price table it names; every device type it names must be priced. Raises ConfigError."""
    config = load_config(path)
    prices = load_price_table(config.hardware.prices)
    device_types = {"hardware.device_type": config.hardware.device_type} | {
        f"models[{index}].distillation.device_type": model.distillation.device_type
        for index, model in enumerate(config.models)
        if model.distillation is not None and model.distillation.device_type is not None
    }
    unpriced = [
        f"{path}: {key}: {device_type!r} is not in the price table {config.hardware.prices!r}; "
        f"it lists {sorted(prices.prices)}"
        for key, device_type in device_types.items()
        if prices.price(device_type) is None
    ]
    if unpriced:
        raise ConfigError(unpriced)
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
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate", help="Also estimate GPUs, GPU-hours and $ per model, and print every assumption behind them."
        ),
    ] = False,
    mfu: Annotated[
        float,
        typer.Option(help="Model FLOPs utilisation the estimate assumes, in (0, 1]; best taken from a measured run."),
    ] = DEFAULT_MFU,
) -> None:
    """Show the cells a run would execute, and which are already done in results/<run.name>/.

    A cell is one model on one task (eval) or one trial of one workload (perf, in a block: each block runs
    every model once; `repeats` blocks per workload).
    Its key hashes the settings that shape its results, so a re-run skips the cells already stored.
    With --estimate it also prints, per model, the GPUs, the estimated GPU-hours and $, from the tasks'
    `estimate:` (documents, tokens), 2 x active parameters FLOPs per token, the price table's peak and
    price, and the assumed MFU; every assumption is printed with it.

    Example: distill-bench plan configs/quickstart.yaml --results-dir results
    """
    with config_errors():
        config, prices = load_checked(config_path)
        check_results_option(results_dir)
        if not 0 < mfu <= 1:
            raise ConfigError([f"--mfu: must be in (0, 1], got {mfu:g}"])
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
    print_table(table)
    to_run = len(pending_cells(cells, done))
    console.print(f"{_plural(len(cells), 'cell')}, {len(cells) - to_run} done, {to_run} to run", soft_wrap=True)
    if estimate:
        _print_estimate(estimate_config(config, prices, mfu))


def _hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / SECONDS_PER_HOUR:,.1f}"


def _amount(value: float | None, template: str) -> str:
    return "?" if value is None else template.format(value)


def _print_estimate(result: Estimate) -> None:
    """The per-model estimate table, its totals, and every assumption behind it ("?" where unknown)."""
    table = Table(title="estimate (all cells, before resume; see the assumptions below)")
    table.add_column("model")
    table.add_column("role")
    for column in ("GPUs", "FLOPs/token", "eval tokens", "eval wall h", "perf wall h", "GPU-hours", "$"):
        table.add_column(column, justify="right")
    for model in result.models:
        table.add_row(
            model.model, model.role, str(model.gpus), _amount(model.flops_per_token, "{:.3g}"),
            f"{model.eval_tokens:,}", _hours(model.eval_wall_s), _hours(model.perf_wall_s),
            _amount(model.gpu_hours, "{:,.1f}"), _amount(model.usd(result.rates), "{:,.0f}"),
        )  # fmt: skip
    table.add_row(
        "total", "", str(sum(model.gpus for model in result.models)), "", "", "", "",
        _amount(result.total(lambda model: model.gpu_hours), "{:,.1f}"),
        _amount(result.total(lambda model: model.usd(result.rates)), "{:,.0f}"),
    )  # fmt: skip
    print_table(table)
    console.print("assumptions:", soft_wrap=True, highlight=False)
    for line in assumption_lines(result):
        console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)


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
    from bench.store import skip_report

    skipped: list = []
    with store_errors():
        rows = compare_results(results_dir, skipped=skipped)
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


def print_table(table: Table) -> None:
    """A table on stdout: fitted to a terminal; elsewhere at the width it needs.

    Off a terminal (Slurm logs, CI) rich assumes 80 columns and cuts names to "toy-st…", which could be either
    student: a log gets the table at the width it needs, every name whole.
    """
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=_natural_width(table)).print(table)


RICH_TABLE_ROWS = 300  # above this, the table is plain aligned text: rich lays out each cell, twice


def _print_comparison(results_dir: Path, output: OutputFormat) -> bool:
    """Print the comparison; False when there is no teacher/student pair to compare."""
    from bench.report import render_matched_table, render_table, render_text, to_json, to_markdown

    rows = _comparison_rows(results_dir)
    if not rows:
        return False
    if output is OutputFormat.table:
        pairs = [row for row in rows if not row.compute_matched]
        matched = [row for row in rows if row.compute_matched]  # compare.compute_matched: a table of their own
        if len(pairs) > RICH_TABLE_ROWS:  # a leaderboard-sized results tree: the same columns, in seconds less
            print(render_text(pairs), end="")
        else:
            print_table(render_table(pairs))
        if matched:
            print_table(render_matched_table(matched))
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
    Exits 1 if any cell failed (failures are stored in the `failures` table and retried by the next run),
    130 when stopped with Ctrl-C (the cells finished by then are stored; the same command resumes).
    The last line of the output (and of the run's run.log) sums the run up:
    `summary: NAME: R cells run, S already stored, F failed; K retried, M servers replaced; results: DIR; exit N`.

    Example: distill-bench run configs/quickstart.yaml
    """
    from bench.progress import RunProgress
    from bench.run import EXIT_INTERRUPTED, counted, log_summary
    from bench.run import run as run_cells

    with config_errors():
        config, prices = load_checked(config_path)
        check_results_option(results_dir)
    try:
        with store_errors():  # a damaged file in the run's results (e.g. a chunk an adaptive gate reads)
            outcome = run_cells(config, prices, RunProgress(console), address=address, results_dir=results_dir)
            if outcome.interrupted:
                print(
                    f"interrupted: {counted(outcome.succeeded, 'cell')} stored, {outcome.failed} failed; the same "
                    f"command resumes ({outcome.left} to run)"
                )
            elif _print_comparison(outcome.run_dir, OutputFormat.table):
                _print_adaptive(outcome.run_dir)
                if any(workload.adaptive is not None for workload in config.workloads):
                    _print_adaptive_blocks(config, outcome.run_dir)
    except KeyboardInterrupt:  # before the cells ran, or after: what is stored stays, and a re-run resumes
        err_console.print("interrupted: nothing in flight; the same command resumes")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    log_summary(outcome)
    console.print(outcome.summary_line(), soft_wrap=True, highlight=False, markup=False)
    raise typer.Exit(outcome.exit_code)


@app.command()
def compare(
    results_dir: Annotated[Path, typer.Argument(metavar="RESULTS_DIR", help="A results root or one run directory.")],
    output: Annotated[OutputFormat, typer.Option("--format", help="table, json or markdown.")] = OutputFormat.table,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential",
            help="Then replay adaptive verdicts: documents (blocks) an adaptive run would have used, its verdicts "
            "against the full data's, device-seconds saved; stored as <run>/sequential.parquet. Tables only.",
        ),
    ] = False,
    orders: Annotated[
        int | None, typer.Option(min=1, help="Seeded document orders to replay (default 20, what is stored).")
    ] = None,
    chunk_documents: Annotated[
        int | None, typer.Option(min=1, help="Documents between looks (default 25, what is stored).")
    ] = None,
) -> None:
    """Compare each student with its teacher from stored results only: scores, retention, CI, speed, cost.

    With --sequential, also what adaptive verdicts (bench.sequential) would have saved, replayed on the stored
    per-document results in --orders seeded orders: median [range] over the orders.

    Example: distill-bench compare results/quickstart --format markdown

    Example: distill-bench compare results/quickstart --sequential --orders 20
    """
    _require_results_dir(results_dir)
    if sequential and output is not OutputFormat.table:
        err_console.print("--sequential prints tables: leave --format out (the rows are in sequential.parquet)")
        raise typer.Exit(EXIT_CONFIG_ERROR)
    if not _print_comparison(results_dir, output):
        raise typer.Exit(1)
    if sequential:
        _print_sequential(results_dir, orders, chunk_documents)


def _print_adaptive(run_dir: Path) -> None:
    """At a run's end: what its adaptive tasks saved, and what the replay says the others would have; a line
    each. Stores the rows as sequential.parquet (the leaderboard's "docs to decision")."""
    from bench import adaptive

    rows = adaptive.replay_rows(run_dir, skipped=[])
    for run in adaptive.run_savings([row for row in rows if row.kind == adaptive.ReplayKind.LIVE]):
        print(
            f"adaptive tasks: {_evaluations(run)} evaluated, teachers and students counted; "
            + (
                f"the chunks skipped would have taken about {run.device_s_saved.median:.1f} more eval device-seconds "
                f"at its own rate ({run.device_s_total - run.device_s_saved.median:.1f} spent)"
                if run.device_s_saved is not None and run.device_s_total is not None
                else "eval device-seconds not recorded"
            )
        )
    for run in adaptive.run_savings([row for row in rows if row.kind == adaptive.ReplayKind.QUALITY]):
        print(
            f"adaptive verdicts, replayed over {run.orders} document orders: an adaptive run would have evaluated "
            f"{_evaluations(run)}; distill-bench compare {run_dir} --sequential shows where it stops and whether "
            "it agrees"
        )


def _print_adaptive_blocks(config: BenchConfig, run_dir: Path) -> None:
    """At a run's end: the blocks each adaptive workload ran of its `repeats`, in one line."""
    from bench.blockgate import blocks_run

    counts = ", ".join(f"{name} {run} of {planned}" for name, (run, planned) in blocks_run(config, run_dir).items())
    print(f"adaptive workloads, blocks run: {counts} (the rest skipped once every pair's throughput ratio was decided)")


def _evaluations(run: RunSavings) -> str:
    """ "1925 [1775, 2025] of 2400 documents (80%)": a run's document evaluations used of a full run's."""
    share = run.evaluations_used.median / run.evaluations_full
    return f"{run.evaluations_used.text('.0f')} of {run.evaluations_full} documents ({share:.0%})"


def _print_sequential(results_dir: Path, orders: int | None, chunk_documents: int | None) -> None:
    """The adaptive replay's three tables: quality per pair and task, perf ratios, and savings per run."""
    from bench import adaptive
    from bench.leaderboard import format_load

    orders = orders or adaptive.DEFAULT_ORDERS
    chunk = chunk_documents or adaptive.DEFAULT_CHUNK_DOCUMENTS
    rows = adaptive.replay_rows(results_dir, orders, chunk, skipped=[])  # compare has reported skipped files
    console.print(f"\nAdaptive verdicts replayed: {orders} document orders, a look every {chunk} documents")
    quality = Table("run", "student / teacher", "task", "metric", "documents used / full", "sequential verdict",
                    "full-data verdict", "agree", "student device-s saved")  # fmt: skip
    for item in adaptive.summarize_quality(rows):
        verdicts = ", ".join(f"{verdict} {count}" for verdict, count in item.verdicts.most_common())
        saved = item.student_device_s_saved
        quality.add_row(
            item.run_id, f"{item.student} / {item.teacher}", item.task, f"{item.metric} ({item.filter})",
            f"{item.documents_used.text('.0f')} / {item.documents_full}", verdicts,
            "not run (adaptive run)" if item.live else str(item.full_verdict),
            _agreement(item),
            (saved.text(".1f") + (" (estimated)" if item.live else "")) if saved is not None else "not recorded",
        )  # fmt: skip
    print_table(quality)
    perf = [row for row in rows if row.kind == adaptive.ReplayKind.PERF]
    if perf:
        ratios = Table("run", "student / teacher", "load", "blocks used / full", "sequential", "full-data",
                       "agree", "throughput x (sequence)")  # fmt: skip
        for row in perf:
            interval = f"{row.ratio:.2f} [{_bound(row.ci_low)}, {_bound(row.ci_high)}]"
            ratios.add_row(
                row.run_id, f"{row.student} / {row.teacher}", format_load(row.workload, row.level),
                f"{row.blocks_used} / {row.blocks_full}", str(row.sequential_decision),
                str(row.full_decision), "yes" if row.agrees else "no", interval,
            )  # fmt: skip
        print_table(ratios)
    savings = Table("run", "document evaluations used", "eval device-s saved / total")
    for run in adaptive.run_savings(rows):
        device = (
            f"{run.device_s_saved.text('.1f')} / {run.device_s_total:.1f}"
            if run.device_s_saved is not None and run.device_s_total is not None
            else "not recorded (eval_wall_s: schema 5)"
        )
        savings.add_row(run.run_id, _evaluations(run), device)
    print_table(savings)


def _agreement(item: QualitySummary) -> str:
    """ "18/20, 1 opposite": orders whose sequential verdict is the full-data one; "-" for a live task."""
    if item.live:
        return "-"
    return f"{item.agree}/{item.orders}" + (f", {item.opposite} opposite" if item.opposite else "")


def _bound(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@app.command()
def leaderboard(
    results_dir: Annotated[Path, typer.Argument(metavar="RESULTS_DIR", help="A results root or one run directory.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where the files go.")] = Path("leaderboard"),
) -> None:
    """Rank every student in stored results: leaderboard.parquet, .md, a Pareto plot and a static HTML page.

    Students non-inferior to their teacher on every task come first, fastest first. Every ratio and the
    quality kept carry their intervals; the page has a per-task drill-down under each student, and control
    pairs (compare.controls) are listed apart. Runs replayed (at a run's end, or by `compare --sequential`)
    show the share of documents an adaptive run needed ("docs to decision").

    Example: distill-bench leaderboard results/ --out site/
    """
    from bench.adaptive import docs_to_decision, stored_rows
    from bench.leaderboard import build_leaderboard, write_leaderboard

    _require_results_dir(results_dir)
    rows = _comparison_rows(results_dir)
    if not rows:
        raise typer.Exit(1)
    adaptive = docs_to_decision(stored_rows(results_dir))  # runs replayed by `run` or `compare --sequential`
    for path in write_leaderboard(build_leaderboard(rows, adaptive), out, source=str(results_dir)):
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

    with store_errors():
        tables = compact_run(run_dir)
    for table in tables:
        for kept in table.kept:
            err_console.print(Text(f"warning: {kept}", style="yellow"), soft_wrap=True)
        line = f"{table.table}: {_plural(table.merged, 'cell file')} merged, {_plural(table.cells, 'cell')} compacted"
        console.print(line, soft_wrap=True, highlight=False)


class _RenderByDefault(TyperGroup):
    """`distill-bench slurm CONFIG ...` is `distill-bench slurm render CONFIG ...`, as it was before `submit`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["render", *args]
        return super().parse_args(ctx, args)


slurm_app = typer.Typer(
    cls=_RenderByDefault,
    help="Slurm: a batch script that starts Ray across the allocation and runs a config on it; `render` prints it "
    "(the default: `distill-bench slurm CONFIG`), `submit` submits it with sbatch.\n\n"
    "Example: distill-bench slurm submit configs/r1-distill.yaml --nodes 2 --partition gpu",
    no_args_is_help=True,
)
app.add_typer(slurm_app, name="slurm")

SLURM_RENDER_HELP = """Print the batch script (`distill-bench slurm CONFIG` does the same).

Example: distill-bench slurm configs/r1-distill.yaml --nodes 2 --partition gpu > job.sbatch && sbatch job.sbatch
"""
SLURM_SUBMIT_HELP = """Write the batch script into the job dir, submit it with sbatch; print the job id, log, results.

A preempted, requeued or timed-out job resumes after the cells it stored; its log ends with the run's summary line.

Example: distill-bench slurm submit configs/r1-distill.yaml --nodes 2 --partition gpu
"""


def slurm_job(
    ctx: typer.Context,
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
    grace_s: Annotated[
        int, typer.Option(help="Seconds before the time limit at which the run stops and the job requeues itself.")
    ] = 300,
    job_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="The job's script, log, Ray logs and token; default: <run dir>/slurm."),
    ] = None,
) -> None:
    """`slurm render` and `slurm submit` (the command's name says which): one set of options, one script."""
    from bench.slurm import JobPaths, SlurmOptionError, SlurmOptions, SubmitError, render, submit

    with config_errors():
        config, _ = load_checked(config_path)
    try:
        paths = JobPaths.here(config, job_dir)
        options = SlurmOptions(nodes, time, partition, account, gpus_per_node, cpu, grace_s)
        script = render(config, config_path, options, paths)
    except SlurmOptionError as error:
        err_console.print(Text(str(error), style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None
    if ctx.info_name == "render":
        print(script, end="")
        return
    try:
        job = submit(script, paths, config.run_dir())
    except (SubmitError, OSError) as error:
        err_console.print(Text(str(error), style="red"), soft_wrap=True)
        raise typer.Exit(1) from None
    for line in (f"job: {job.job_id}", f"log: {job.log}", f"results: {job.run_dir}"):
        console.print(line, soft_wrap=True, highlight=False, markup=False)


slurm_app.command("render", help=SLURM_RENDER_HELP)(slurm_job)
slurm_app.command("submit", help=SLURM_SUBMIT_HELP)(slurm_job)


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
