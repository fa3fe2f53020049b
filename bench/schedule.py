"""What runs next: the order of the work, where it runs, and when a model gets another server.

Pure functions, no Ray and no clock: `cluster.Dispatch` feeds them the state of its workers (one per
replica of a model) and the timings it has seen, and carries out what they return; the unit tests drive
them with fake states.

The measurement protocol they implement:
- Every model's server stays up for the whole run (restarting a CPU server per trial costs 30-60 s).
- Evals come first; they measure quality, not time, so on GPUs the evals of models on different GPUs run
  at once, and a model with several servers (replicas) runs one eval cell on each. A cell always runs
  whole on one server, so its results are those of a one-server run. Where models share a node's CPUs
  (`exclusive`), one cell runs at a time, evals included.
- Longest first: a model's queued evals are ordered by estimated GPU-seconds (documents × tokens per
  document / the model's measured rate), so the long tasks start first and short ones fill the gaps at
  the end (LPT); the estimates are refined as cells finish (`Estimates`).
- A perf trial runs alone: nothing else is in flight while it measures, and, on shared CPUs, no server is
  starting either (a starting server burns the cores the measured one needs). A model's trials all run on
  its primary server (its lowest replica index), so every trial of a model measures the same server.
- Perf trials run block by block; within a block the models run in a seeded random permutation, so a
  slow drift of the machine (thermal, a neighbour, a cache filling) hits every model alike instead of
  whichever happens to run last. The permutation is seeded by (run.seed, workload, block), so a re-run
  measures in the same order.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Literal

from bench.config import TaskConfig
from bench.hashing import json_sha256
from bench.plan import Cell

# starting: its server is (re)starting; idle: up and free; busy: running an eval; measuring: a perf trial.
WorkerState = Literal["starting", "idle", "busy", "measuring"]


@dataclasses.dataclass(frozen=True, order=True)
class Replica:
    """One server of a model; replica 0 is the model's first (its primary while it lives)."""

    model: str
    index: int = 0

    def __str__(self) -> str:
        return self.model if self.index == 0 else f"{self.model}#{self.index}"


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A cell to submit now, and the server that runs it."""

    cell: Cell
    replica: Replica


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
    queue: Sequence[Cell], workers: Mapping[Replica, WorkerState], exclusive: bool, in_order: bool = True
) -> list[Assignment]:
    """The cells to submit now and the server each goes to, from `queue` (cells not yet submitted, in run
    order) and the state of each worker (a model absent from `workers` has none: it gave up or is gone).

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


def primary(model: str, workers: Mapping[Replica, WorkerState]) -> Replica | None:
    """The server that runs a model's perf trials: its lowest replica index still in `workers`."""
    return min((replica for replica in workers if replica.model == model), default=None)


def _next_evals(queue: Sequence[Cell], workers: Mapping[Replica, WorkerState], exclusive: bool) -> list[Assignment]:
    """Each idle server takes its model's first queued eval (only the first overall when `exclusive`)."""
    free = sorted(replica for replica, state in workers.items() if state == "idle")
    chosen = []
    for cell in queue:
        replica = next((r for r in free if r.model == cell.model), None) if cell.kind == "eval" else None
        if replica is None:
            continue
        chosen.append(Assignment(cell, replica))
        free.remove(replica)
        if exclusive:
            break
    return chosen


def _next_perf(
    queue: Sequence[Cell], workers: Mapping[Replica, WorkerState], exclusive: bool, in_order: bool
) -> Assignment | None:
    """The perf trial to run alone now, if the node is quiet enough to measure and evals are out of the way."""
    starting = any(state == "starting" for state in workers.values())
    if exclusive and starting:
        return None
    models = {replica.model for replica in workers}
    waiting_evals = [cell for cell in queue if cell.kind == "eval" and cell.model in models]
    if in_order and waiting_evals:
        return None
    for cell in queue:
        if cell.kind != "perf" or cell.model not in models:
            continue
        server = primary(cell.model, workers)
        if workers[server] == "idle":
            return Assignment(cell, server)
        if in_order:
            return None  # the head trial waits for its server; the order is the protocol
    return None


def releasable(queue: Sequence[Cell], workers: Mapping[Replica, WorkerState]) -> list[Replica]:
    """Servers to stop now (or whose start to cancel): those whose model has nothing queued, and the extra
    replicas of a model whose evals are all taken (its perf trials run on the primary only)."""
    stop = []
    for replica, state in sorted(workers.items()):
        if state not in ("idle", "starting"):
            continue
        queued = [cell for cell in queue if cell.model == replica.model]
        extra = replica != primary(replica.model, workers)
        if not queued or (extra and not any(cell.kind == "eval" for cell in queued)):
            stop.append(replica)
    return stop


def fits_at_once(gpus_needed: Sequence[int], node_gpus: Sequence[float]) -> bool:
    """Whether every model's server can be up at the same time (`free_after` finds room for all)."""
    return free_after(gpus_needed, node_gpus) is not None


def free_after(gpus_needed: Sequence[int], node_gpus: Sequence[float]) -> list[float] | None:
    """Each node's GPUs left once every server is placed, first-fit decreasing, each server's GPUs on one
    node; None when they do not all fit. Servers without GPUs (0) always fit."""
    free = sorted(node_gpus, reverse=True)
    for need in sorted(gpus_needed, reverse=True):
        if need <= 0:
            continue
        for index, available in enumerate(free):
            if available >= need:
                free[index] -= need
                break
        else:
            return None
    return free


# -- how many servers ------------------------------------------------------------------------------------


def initial_replicas(replicas: int | Literal["auto"], eval_cells: int, exclusive: bool) -> int:
    """Servers a model starts with: its fixed `replicas`, but no more than it has eval cells (a cell runs on
    one server, and perf trials on the primary only); one for `auto` (more are added as GPUs free up) and
    wherever the models share CPUs (one cell runs at a time there, so a second server only costs memory)."""
    if exclusive or replicas == "auto":
        return 1
    return max(1, min(replicas, eval_cells))


@dataclasses.dataclass(frozen=True)
class ModelLoad:
    """What `replica_to_add` weighs for one model whose replicas are `auto`."""

    model: str
    gpus: int  # per server, all on one node
    servers: int  # its servers now, all up
    idle: int  # of those, idle now
    queued_s: tuple[float | None, ...]  # estimated seconds of each queued eval on one server; None: unknown
    start_s: float  # its fastest measured server start


def replica_to_add(loads: Sequence[ModelLoad], free_gpus: Sequence[float]) -> str | None:
    """The model that gets one more server now, if any.

    Candidates: models whose queued evals wait for a server (more queued than idle servers), whose GPUs fit
    in one node's free GPUs, and whose queue outlasts a server start even when shared by one more server
    (a replica must earn its start). Of those, the one with the most queued seconds per server, the
    bottleneck (longest first). An unknown duration (no cell has finished yet) counts as long: an idle GPU
    is wasted anyway, and a start costs nothing else.
    """
    best, most = None, -1.0
    for load in loads:
        if load.servers < 1 or len(load.queued_s) <= load.idle:
            continue
        if not any(free >= load.gpus for free in free_gpus):
            continue
        queued = sum(math.inf if seconds is None else seconds for seconds in load.queued_s)
        if queued / (load.servers + 1) <= load.start_s:
            continue
        if queued / load.servers > most:
            best, most = load.model, queued / load.servers
    return best


def replicas_to_add(loads: Sequence[ModelLoad], free_gpus: Sequence[float]) -> list[str]:
    """Every server to add now: `replica_to_add` again and again, each new server counted as one more idle
    server of its model on the GPUs it takes (first fit), until none is worth adding."""
    loads, free, added = list(loads), sorted(free_gpus, reverse=True), []
    while (model := replica_to_add(loads, free)) is not None:
        index = next(i for i, load in enumerate(loads) if load.model == model)
        load = loads[index]
        loads[index] = dataclasses.replace(load, servers=load.servers + 1, idle=load.idle + 1)
        node = next(i for i, gpus in enumerate(free) if gpus >= load.gpus)
        free[node] -= load.gpus
        added.append(model)
    return added


# -- longest first (LPT) ---------------------------------------------------------------------------------

DEFAULT_TOKENS_PER_DOCUMENT = 256  # lm-eval's default max_gen_toks: what a task that sets none may generate


def eval_work_tokens(task: TaskConfig) -> float | None:
    """A task's size as the config tells it: documents (`limit`) × tokens per document (`max_gen_toks`, else
    lm-eval's default budget). None when the number of documents is not known before the task runs."""
    if task.limit is None:
        return None
    return float(task.limit * (task.max_gen_toks or DEFAULT_TOKENS_PER_DOCUMENT))


def work_share(cell: Cell, limit: int | None) -> float:
    """The part of its task's work an eval cell does: a chunk (`tasks[].adaptive`) its documents of the
    task's `limit`, any other cell all of it."""
    return len(cell.documents) / limit if cell.chunk is not None and limit else 1.0


@dataclasses.dataclass(frozen=True)
class EvalTiming:
    """A finished eval cell: `seconds` from submission to result, on one server of `model`."""

    model: str
    task: str
    seconds: float
    share: float = 1.0  # the part of the task's work it did (`work_share`)


@dataclasses.dataclass(frozen=True)
class Estimates:
    """Seconds of an eval cell on one server: work(task) × its share / rate(model), from `estimate`."""

    work: Mapping[str, float]  # task -> tokens; a task missing here has no known size yet
    rates: Mapping[str, float]  # model -> tokens per second, measured on its finished cells
    limits: Mapping[str, int] = dataclasses.field(default_factory=dict)  # task -> `limit`, for chunks' shares

    def rate(self, model: str) -> float | None:
        """The model's measured rate; before its first cell finishes, the median of the others'."""
        if model in self.rates:
            return self.rates[model]
        return statistics.median(self.rates.values()) if self.rates else None

    def cell_work(self, cell: Cell) -> float | None:
        """Tokens of one eval cell: its task's work, a chunk's share of it."""
        work = self.work.get(cell.target)
        return None if work is None else work * work_share(cell, self.limits.get(cell.target))

    def cell_seconds(self, cell: Cell) -> float | None:
        work, rate = self.cell_work(cell), self.rate(cell.model)
        return None if work is None or rate is None else work / rate


def estimate(
    priors: Mapping[str, float | None], timings: Sequence[EvalTiming], limits: Mapping[str, int] | None = None
) -> Estimates:
    """Refine the config's sizes (`priors`: task -> `eval_work_tokens`) with the cells finished so far.

    A model's rate is the work of its finished cells of known size (a chunk's share of its task's) over their
    seconds. A task of unknown size learns it from its finished cells: seconds × the rate of the model that
    ran it, over the cell's share (mean over models).
    """
    tokens: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for timing in timings:
        prior = priors.get(timing.task)
        if prior is not None and timing.seconds > 0:
            tokens[timing.model] = tokens.get(timing.model, 0.0) + prior * timing.share
            seconds[timing.model] = seconds.get(timing.model, 0.0) + timing.seconds
    known = Estimates(
        work={task: prior for task, prior in priors.items() if prior is not None},
        rates={model: tokens[model] / seconds[model] for model in tokens},
    )
    learned: dict[str, list[float]] = {}
    for timing in timings:
        rate = known.rate(timing.model)
        if timing.task not in known.work and rate is not None:
            learned.setdefault(timing.task, []).append(timing.seconds * rate / timing.share)
    work = dict(known.work) | {task: statistics.fmean(sizes) for task, sizes in learned.items()}
    return Estimates(work=work, rates=known.rates, limits=dict(limits or {}))


def gpu_seconds(cell: Cell, estimates: Estimates, gpus: int) -> float:
    """Estimated GPU-seconds of an eval cell, for ordering: infinite when its task's size is unknown (it may be
    the longest); before any cell has finished, work × GPUs (every model at one assumed rate of 1 token/s,
    which orders cells exactly as their sizes do)."""
    work = estimates.cell_work(cell)
    if work is None:
        return math.inf
    return work / (estimates.rate(cell.model) or 1.0) * gpus


def lpt_order(evals: Sequence[Cell], estimates: Estimates, gpus: Mapping[str, int]) -> list[Cell]:
    """Eval cells longest first by estimated GPU-seconds; equal estimates keep their order."""
    return sorted(evals, key=lambda cell: -gpu_seconds(cell, estimates, gpus[cell.model]))
