"""Progress of a run: a live rich display on a terminal (cells done/total, ETA, each model's stage),
plain timestamped lines otherwise (Slurm logs, CI), and the same lines in the run's log file.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.plan import Cell

log = logging.getLogger("bench.progress")


class RunProgress:
    """Cells done out of cells to run, and what each model is doing now."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self.cells_task = None
        self.model_tasks: dict[str, int] = {}

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _say(self, message: str) -> None:
        log.info(message)
        if self.live:
            self.progress.console.log(message)
        else:
            self.console.print(message, soft_wrap=True, highlight=False)

    def plan(self, total: int, skipped: int) -> None:
        to_run = total - skipped
        self._say(f"{total} cells: {skipped} already stored (skipped), {to_run} to run")
        self.cells_task = self.progress.add_task("cells", total=to_run)

    def stage(self, model: str, what: str) -> None:
        if model not in self.model_tasks:
            self.model_tasks[model] = self.progress.add_task(f"  {model}", total=None)
        self.progress.update(self.model_tasks[model], description=f"  {model}: {what}")
        self._say(f"{model}: {what}")

    def cell_done(self, cell: Cell, detail: str) -> None:
        self.progress.advance(self.cells_task)
        self._say(f"done {cell.kind} {cell.model} × {cell.target}: {detail}")

    def cell_skipped(self, cell: Cell) -> None:
        """An adaptive task's chunk or workload's block that a gate decided never to run: it counts as settled
        on the progress bar."""
        self.progress.advance(self.cells_task)
        if cell.chunk is not None:
            self._say(f"skipped eval {cell.model} × {cell.target} chunk {cell.chunk}: its verdicts are decided")
        else:
            self._say(f"skipped perf {cell.model} × {cell.target} block {cell.block}: its ratios are decided")

    def cell_failed(self, cell: Cell, error: str) -> None:
        self.progress.advance(self.cells_task)
        self._say(f"FAILED {cell.kind} {cell.model} × {cell.target}: {_headline(error)}")

    def cell_retried(self, cell: Cell, attempts: int, error: str) -> None:
        self._say(f"retrying {cell.kind} {cell.model} × {cell.target} (attempt {attempts} failed): {_headline(error)}")

    def server_replaced(self, model: str, reason: str) -> None:
        self._say(f"{model}: replacing its worker and server after: {_headline(reason)}")


def _headline(error: str) -> str:
    """An error's first line (the server log tail that follows stays in run.log and the failures table)."""
    return error.splitlines()[0] if error else ""
