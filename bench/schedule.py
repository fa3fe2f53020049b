"""What runs next: the order of perf trials and the rule that decides which cells to submit now.

Pure functions, no Ray and no clock: `cluster.dispatch` feeds them the state of its workers and submits
what they return, and the unit tests drive them with fake states.

The measurement protocol they implement:
- Every model's server stays up for the whole run (restarting a CPU server per trial costs 30-60 s).
- Evals come first; they measure quality, not time, so on GPUs the evals of models on different GPUs run
  at once. Where models share a node's CPUs (`exclusive`), one cell runs at a time, evals included.
- A perf trial runs alone: nothing else is in flight while it measures, and, on shared CPUs, no server is
  starting either (a starting server burns the cores the measured one needs).
- Perf trials run block by block; within a block the models run in a seeded random permutation, so a
  slow drift of the machine (thermal, a neighbour, a cache filling) hits every model alike instead of
  whichever happens to run last. The permutation is seeded by (run.seed, workload, block), so a re-run
  measures in the same order.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Literal

from bench.hashing import json_sha256
from bench.plan import Cell

# starting: its server is (re)starting; idle: up and free; busy: running an eval; measuring: a perf trial.
WorkerState = Literal["starting", "idle", "busy", "measuring"]


def block_permutation(models: Sequence[str], seed: int, workload: str, block: int) -> list[str]:
    """The order in which the models of one block are measured: a permutation seeded by (seed, workload, block)."""
    order = list(models)
    random.Random(int(json_sha256([seed, workload, block])[:16], 16)).shuffle(order)
    return order


def perf_order(cells: Sequence[Cell], seed: int, models: Sequence[str]) -> list[Cell]:
    """Perf cells in run order: by block index, then workload (first-seen order), then the block's permutation.

    `models` is the config's model order, which the permutation starts from (so it does not depend on
    which cells of a block are still pending).
    """
    workloads = list(dict.fromkeys(cell.target for cell in cells))
    rank: dict[tuple[str, int, str], int] = {}
    for workload in workloads:
        for block in {cell.block for cell in cells if cell.target == workload}:
            for position, model in enumerate(block_permutation(models, seed, workload, block)):
                rank[workload, block, model] = position

    def key(cell: Cell) -> tuple[int, int, int]:
        return (cell.block, workloads.index(cell.target), rank[cell.target, cell.block, cell.model])

    return sorted((cell for cell in cells if cell.kind == "perf"), key=key)


def run_order(cells: Sequence[Cell], seed: int, models: Sequence[str]) -> list[Cell]:
    """Every cell in the order it should run: eval cells as planned, then the perf cells in `perf_order`."""
    return [cell for cell in cells if cell.kind == "eval"] + perf_order(cells, seed, models)


def next_cells(
    queue: Sequence[Cell], workers: Mapping[str, WorkerState], exclusive: bool, in_order: bool = True
) -> list[Cell]:
    """The cells to submit now, from `queue` (cells not yet submitted, in run order) and the state of each
    model's worker (a model absent from `workers` has none: it gave up or is gone).

    `exclusive`: the models share CPUs (no GPUs), so at most one cell is in flight at a time.
    `in_order`: every model's server can be up at once, so a perf trial waits for its model's server
    (and evals wait for theirs) instead of letting a model whose server is up run ahead; with
    `in_order=False` (models that do not fit at once) the first runnable cell goes, so the models that
    are up finish and free their GPUs for the others.
    """
    if any(state == "measuring" for state in workers.values()):
        return []
    busy = any(state == "busy" for state in workers.values())
    if exclusive and busy:
        return []
    evals = _next_evals(queue, workers, exclusive)
    if evals:
        return evals
    if busy:
        return []
    perf = _next_perf(queue, workers, exclusive, in_order)
    return [perf] if perf else []


def _next_evals(queue: Sequence[Cell], workers: Mapping[str, WorkerState], exclusive: bool) -> list[Cell]:
    """The first queued eval of each idle model (only the first overall when `exclusive`)."""
    chosen: dict[str, Cell] = {}
    for cell in queue:
        if cell.kind == "eval" and workers.get(cell.model) == "idle" and cell.model not in chosen:
            chosen[cell.model] = cell
            if exclusive:
                break
    return list(chosen.values())


def _next_perf(
    queue: Sequence[Cell], workers: Mapping[str, WorkerState], exclusive: bool, in_order: bool
) -> Cell | None:
    """The perf trial to run alone now, if the node is quiet enough to measure and evals are out of the way."""
    starting = any(state == "starting" for state in workers.values())
    if exclusive and starting:
        return None
    waiting_evals = [cell for cell in queue if cell.kind == "eval" and cell.model in workers]
    if in_order and waiting_evals:
        return None
    for cell in queue:
        if cell.kind != "perf" or cell.model not in workers:
            continue
        if workers[cell.model] == "idle":
            return cell
        if in_order:
            return None  # the head trial waits for its server; the order is the protocol
    return None


def fits_at_once(gpus_needed: Sequence[int], node_gpus: Sequence[float]) -> bool:
    """Whether every model's server can be up at the same time: first-fit decreasing of each model's GPUs
    (all on one node) into the nodes' GPUs. Models without GPUs (0) always fit."""
    free = sorted(node_gpus, reverse=True)
    for need in sorted(gpus_needed, reverse=True):
        if need <= 0:
            continue
        for index, available in enumerate(free):
            if available >= need:
                free[index] -= need
                break
        else:
            return False
    return True
