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
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.config import BenchConfig, ConfigError, load_config
from bench.plan import build_plan, gpus_per_model, pending_cells

if TYPE_CHECKING:
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
        for line in error.lines:
            # Text, not markup: the lines hold `[0]`-style paths; soft_wrap keeps each one on one line.
            err_console.print(Text(line, style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@app.command()
def validate(config_path: ConfigArg) -> None:
    """Check a config and its price table without running anything; writes nothing.

    Each problem is printed as `file: dotted.key.path: message` and the exit code is 2.

    Example: distill-bench validate configs/toy.yaml
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

    A cell is one model on one task (eval) or one workload (perf).
    Its key hashes the settings that shape its results, so a re-run skips the cells already stored.

    Example: distill-bench plan configs/toy.yaml --results-dir results
    """
    with config_errors():
        config, _ = load_checked(config_path)
    run_dir = (results_dir or Path(config.run.results_dir)) / config.run.name
    cells = build_plan(config)
    done = _done_keys(run_dir)
    gpus = gpus_per_model(config)

    table = Table(title=f"plan for run {config.run.name!r} ({run_dir})")
    for column in ("kind", "model", "target"):
        table.add_column(column)
    table.add_column("key", no_wrap=True, min_width=16)
    table.add_column("GPUs", justify="right")
    table.add_column("done")
    for cell in cells:
        is_done = cell.key in done
        table.add_row(
            cell.kind, cell.model, cell.target, cell.key, str(gpus[cell.model]),
            Text("yes", style="green") if is_done else Text("no"),
        )  # fmt: skip
    console.print(table)
    to_run = len(pending_cells(cells, done))
    console.print(f"{_plural(len(cells), 'cell')}, {len(cells) - to_run} done, {to_run} to run", soft_wrap=True)


if __name__ == "__main__":
    app()
