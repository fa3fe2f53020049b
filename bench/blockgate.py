"""The gate between the perf blocks of an adaptive workload (`workloads[].adaptive`): after block b, whether
block b + 1 runs.

A workload's blocks interleave every model (`bench.plan`), so a block runs for all of them or for none. The
first `min_blocks` blocks run; after each later one is stored for every model, the remaining blocks are
skipped once every student/teacher pair's throughput ratio is decided: the ratio `compare` reports
(`sequential_replay.RATIO_COLUMN` per block, at the level `pairing.paired_workloads` picks, the same
per-block pairing), read through Lai's t-mixture confidence sequence of `bench.sequential` against a target
ratio of 1 (the student is faster, or slower). The sequence holds at every block at once, so stopping at the
first decisive block keeps the decision's error rate; a pair with no usable block, a config with no pair,
keeps every block. `compare` then reads the blocks that ran with its usual fixed-n t-interval, which after
an adaptive stop is optimistic (the stop chose a favourable moment); the sequence's own bounds are what
`decided` reads.

`decided` is pure; `BlockGates` holds the per-block rows seen so far and walks each adaptive workload's
blocks in block order, for `cluster.Dispatch` (live) and `run` (resume: rebuilt from the stored rows, it
reaches the same decision, so a resumed run neither re-runs a stored block nor runs a skipped one).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import pairing, store
from bench.config import BenchConfig
from bench.gate import ChunkState
from bench.plan import Cell
from bench.records import PerfSummary
from bench.sequential import RatioDecision, sequential_ratio
from bench.sequential_replay import RATIO_COLUMN

TARGET_RATIO = 1.0  # is the student faster at all: the question a run's throughput answers first
ROW_COLUMNS = ("workload", "block", "level", "mode", RATIO_COLUMN)
Rows = list[dict[str, Any]]  # one model's perf_summary rows of one workload, ROW_COLUMNS only


def decided(rows: Mapping[str, Rows], teachers: Mapping[str, str | None], confidence: float) -> bool:
    """Whether every pair's throughput ratio on a workload is above or below `TARGET_RATIO` after the blocks
    given (`rows`: each model's perf_summary rows; `teachers`: each model's teacher, None for a teacher)."""
    pairs = [(student, teacher) for student, teacher in teachers.items() if teacher is not None]
    if not pairs:
        return False
    for student, teacher in pairs:
        paired = pairing.paired_workloads(rows.get(teacher, []), rows.get(student, []))
        if not paired:
            return False
        student_rate, teacher_rate = paired[0].values(RATIO_COLUMN)  # one workload's rows: one paired workload
        try:
            stop = sequential_ratio(student_rate, teacher_rate, TARGET_RATIO, confidence)
        except ValueError:  # no block with a positive throughput for both
            return False
        if stop.decision == RatioDecision.UNDECIDED:
            return False
    return True


def block_rows(cell: Cell, summaries: Sequence[PerfSummary]) -> Rows:
    """A finished perf cell's summaries as the gate reads them (the block stamped, as `run` stores it)."""
    return [{name: cell.block if name == "block" else getattr(s, name) for name in ROW_COLUMNS} for s in summaries]


class BlockGates:
    """Every adaptive workload's walk through its blocks: how many are open, and whether it stopped."""

    def __init__(self, config: BenchConfig, cells: Sequence[Cell], stored: Mapping[str, Rows]):
        """`cells`: the run's perf cells (planned, stored or not); `stored`: the rows of the stored ones."""
        self.teachers = {model.name: model.teacher for model in config.models}
        self.confidence = config.compare.confidence
        self.rows: dict[str, Rows] = dict(stored)
        self.failed: set[str] = set()
        self.blocks: dict[str, list[int]] = {}  # each adaptive workload's blocks, in run order
        self.cells: dict[tuple[str, int], list[Cell]] = {}  # (workload, block) -> its cells, one per model
        self.opened: dict[str, int] = {}  # how many of a workload's blocks are open
        self.stopped: dict[str, bool] = {}
        for workload in config.workloads:
            ours = [cell for cell in cells if cell.kind == "perf" and cell.target == workload.name]
            if workload.adaptive is None or not ours:
                continue
            for cell in ours:
                self.cells.setdefault((workload.name, cell.block), []).append(cell)
            self.blocks[workload.name] = sorted({cell.block for cell in ours})
            self.opened[workload.name] = min(workload.adaptive.min_blocks, len(self.blocks[workload.name]))
            self.stopped[workload.name] = False
            self._advance(workload.name)

    def governs(self, cell: Cell) -> bool:
        return cell.kind == "perf" and cell.target in self.blocks

    def state(self, cell: Cell) -> ChunkState:
        position = self.blocks[cell.target].index(cell.block)
        if position < self.opened[cell.target]:
            return "open"
        return "skipped" if self.stopped[cell.target] else "held"

    def record(self, cell: Cell, rows: Rows) -> None:
        """A perf cell was stored."""
        self.rows[cell.key] = rows
        self._advance(cell.target)

    def fail(self, cell: Cell) -> None:
        """A perf cell failed for good: its block is finished without its row."""
        self.failed.add(cell.key)
        self._advance(cell.target)

    def _advance(self, workload: str) -> None:
        blocks = self.blocks[workload]
        while not self.stopped[workload] and self.opened[workload] < len(blocks):
            open_cells = [cell for block in blocks[: self.opened[workload]] for cell in self.cells[workload, block]]
            if any(cell.key not in self.rows and cell.key not in self.failed for cell in open_cells):
                return  # the gate waits for the last cell of the open blocks
            rows: dict[str, Rows] = {}
            for cell in open_cells:
                rows.setdefault(cell.model, []).extend(self.rows.get(cell.key, []))
            if decided(rows, self.teachers, self.confidence):
                self.stopped[workload] = True
            else:
                self.opened[workload] += 1


def block_gates_for(
    config: BenchConfig, cells: Sequence[Cell], done_keys: Collection[str], run_dir: Path
) -> BlockGates | None:
    """The block gates of a run (None without adaptive workloads), rebuilt from the perf cells already stored."""
    adaptive = {workload.name for workload in config.workloads if workload.adaptive is not None}
    planned = [cell for cell in cells if cell.kind == "perf" and cell.target in adaptive]
    if not planned:
        return None
    keys = {cell.key for cell in planned} & set(done_keys)
    stored: dict[str, Rows] = {key: [] for key in keys}
    if keys:
        columns = ("cell_key", *ROW_COLUMNS)
        for row in store.read_run_table(run_dir, "perf_summary", cells=keys, columns=columns).to_pylist():
            stored[row.pop("cell_key")].append(row)
    return BlockGates(config, planned, stored)


def blocks_run(config: BenchConfig, run_dir: Path) -> dict[str, tuple[int, int]]:
    """Per adaptive workload: (blocks stored, blocks planned: its `repeats`), from the perf cells the run's
    manifest lists (a block counts once any model's trial of it is stored)."""
    planned = {workload.name: workload.repeats for workload in config.workloads if workload.adaptive is not None}
    keys = store.read_manifest(run_dir).get("cell_keys") or None
    rows = store.read_run_table(run_dir, "perf_summary", columns=("workload", "block"), cells=keys).to_pylist()
    blocks: dict[str, set[int]] = {name: set() for name in planned}
    for row in rows:
        if row["workload"] in planned:
            blocks[row["workload"]].add(row["block"])
    return {name: (len(blocks[name]), repeats) for name, repeats in planned.items()}
