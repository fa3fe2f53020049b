"""Ray: start or attach a cluster, place model servers (replicas), dispatch cells, retry, time out.

Every model gets at least one `ModelWorker` actor (`bench/worker.py`) whose vLLM server stays up while the
model has work: restarting a CPU server per perf trial would cost 30-60 s, and interleaved trials need every
model at hand. With `serve.replicas` a model gets several servers, each in its own placement group, and its
eval cells are spread over them (each cell whole on one server); its perf trials run on its primary.
Placement: with GPUs, a server takes `tensor_parallel_size` GPUs on one node (a one-bundle placement group,
STRICT_PACK); without GPUs, a worker reserves no CPU, so every model's server lives on the node's cores side
by side, and the dispatch lets only one of them work at a time (and keeps one server per model).

`Dispatch` is the driver's loop, a small state machine over the servers (starting, idle, busy, measuring):
it keeps its calls in flight and reacts to whichever finishes first (a wait with a timeout, never a polling
loop over results). What to submit next, which servers to stop and when to add one are decided by the pure
functions of `schedule`; the Ray calls and the clock sit behind `RayWorkers`, so unit tests drive the same
loop against a fake cluster. Failures: a failed cell is retried (bounded), a dead or stuck server is
replaced once, a model whose server will not serve (or no longer fits any node) has its cells reported
failed, and every cell ends stored or in `failures`.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import schedule
from bench.blockgate import BlockGates, block_rows
from bench.config import BenchConfig, ModelConfig, TaskConfig, WorkloadConfig
from bench.cost import Billing
from bench.gate import ChunkGates, Gates, chunk_values
from bench.plan import Cell
from bench.records import EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary
from bench.schedule import EvalTiming, Replica, WorkerState
from bench.supervise import cluster_watch_command
from bench.worker import ModelWorker

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Attach to the cluster at `address`, or start an embedded local one (tests may declare logical GPUs)."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        # A local cluster we own: Ray 2.60's default token auth only gets in the way here.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray starts workers at niceness 15 and the vLLM servers inherit it: any other process on the node
        # would then starve the server and skew its measurements.
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        # "local": always a fresh cluster of our own. A bare ray.init() would attach to whatever cluster
        # /tmp/ray/ray_current_cluster or RAY_ADDRESS names, even one that has since died.
        address=address or "local",
        num_cpus=num_cpus if address is None else None,
        num_gpus=num_gpus if address is None else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    if address is None:  # a cluster we started: none of it may outlive this process (bench/supervise.py)
        subprocess.run(cluster_watch_command(os.getpid()), stdin=subprocess.DEVNULL, start_new_session=True, check=True)


def shutdown() -> None:
    import ray

    ray.shutdown()


@dataclass(frozen=True)
class Placement:
    """Ray resources for one model server's worker."""

    num_cpus: float
    num_gpus: int
    bundle: dict[str, float] | None  # the placement-group bundle, when GPUs are used


def placement_for(model: ModelConfig, cluster_gpus: float) -> Placement:
    """GPUs on one node for tensor parallelism; no reserved CPU where there are no GPUs (the servers share
    the node's cores and the dispatch runs one cell at a time there)."""
    if cluster_gpus <= 0:
        return Placement(num_cpus=0, num_gpus=0, bundle=None)
    gpus = model.serve.tensor_parallel_size
    return Placement(num_cpus=1, num_gpus=gpus, bundle={"GPU": gpus, "CPU": 1})


@dataclass
class ModelRun:
    """Driver-side state of one server of a model (one replica) and its worker."""

    model: ModelConfig
    placement: Placement
    replica: Replica
    actor: Any = None
    group: Any = None  # its placement group, when it uses GPUs
    record: ModelRecord | None = None
    state: WorkerState = "starting"
    node: str | None = None  # the node its GPUs are on, once it is up
    restarts_left: int = 1  # a fresh worker and server, once, after a start failure, a dead server or a timeout


@dataclass(frozen=True)
class Events:
    """What `dispatch` reports to the caller, which stores results and drives the progress display."""

    on_started: Callable[[ModelRecord], None]
    on_eval: Callable[[Cell, list[EvalScore], list[EvalSample]], None]
    on_perf: Callable[[Cell, list[PerfRequest], list[PerfSummary], list[PerfProbe]], None]
    on_failed: Callable[[Cell, int, str], None]
    on_retry: Callable[[Cell, int, str], None]  # (cell, attempts failed so far, error): it goes back in the queue
    on_replaced: Callable[[str, str], None]  # (model or model#replica, why): it gets a fresh worker and server
    on_stage: Callable[[str, str], None]  # (model, or model#replica, what it is doing now)
    billing_for: Callable[[ModelRecord], Billing]
    on_skipped: Callable[[Cell], None] = lambda cell: None  # a chunk or block cell a gate decided never to run


@dataclass(frozen=True)
class Call:
    """A call in flight: a server start (`cell` None) or a cell, with when it was sent and its deadline."""

    run: ModelRun
    cell: Cell | None
    sent_s: float
    deadline_s: float


class Workers(Protocol):
    """What `Dispatch` needs of the cluster: `RayWorkers` here, a fake cluster in the unit tests."""

    def launch(self, run: ModelRun) -> None: ...  # create the worker (and its placement group)
    def call(self, run: ModelRun, method: str, *args: object) -> object: ...  # a handle to wait on
    def wait(self, handles: list[object], timeout_s: float) -> object | None: ...  # the first done, or None
    def result(self, handle: object) -> Any: ...  # raises what the call raised
    def alive(self, run: ModelRun) -> bool: ...  # whether its server still runs
    def release(self, run: ModelRun) -> None: ...  # stop the server, free the worker and its GPUs
    def node_gpus(self) -> dict[str, float]: ...  # GPUs of each alive node
    def node_of(self, run: ModelRun) -> str | None: ...  # where a started server's GPUs are
    def now(self) -> float: ...  # monotonic seconds


_WAIT_S = 60.0  # a wait never blocks longer than this, deadline or not


class RayWorkers:
    """The Ray edge of the dispatch: one `worker_class` actor (and placement group) per server."""

    def __init__(self, config: BenchConfig, run_dir: Path, worker_class: type = ModelWorker):
        self.config, self.run_dir, self.worker_class = config, run_dir, worker_class

    def launch(self, run: ModelRun) -> None:
        """Create the server's worker (and its placement group); `Dispatch._start` then starts the server."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        placement = run.placement
        options: dict = {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus, "max_concurrency": 1}
        if placement.bundle:
            run.group = placement_group([placement.bundle], strategy="STRICT_PACK", name=f"distill-bench-{run.replica}")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=run.group)
        else:
            options["scheduling_strategy"] = "SPREAD"  # CPU workers reserve nothing: spread them over the nodes
        worker = ray.remote(self.worker_class).options(**options)
        seed, device_type = self.config.run.seed, self.config.hardware.device_type
        run.actor = worker.remote(run.model, seed, str(self.run_dir), os.getcwd(), device_type, run.replica.index)

    def call(self, run: ModelRun, method: str, *args: object) -> object:
        return getattr(run.actor, method).remote(*args)

    def wait(self, handles: list[object], timeout_s: float) -> object | None:
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout_s)
        return ready[0] if ready else None

    def result(self, handle: object) -> Any:
        import ray

        return ray.get(handle, timeout=_WAIT_S)

    def alive(self, run: ModelRun) -> bool:
        import ray

        try:
            return bool(ray.get(run.actor.alive.remote(), timeout=_WAIT_S))
        except Exception:  # noqa: BLE001 - a worker that cannot answer counts as dead
            return False

    def release(self, run: ModelRun) -> None:
        """Stop the server if the worker still answers, then free the worker and its GPUs."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if run.actor is not None:
            if run.state != "starting":  # a start still in flight may wait for GPUs: nothing to stop yet
                try:
                    ray.get(run.actor.stop.remote(), timeout=_WAIT_S)
                except Exception as error:  # noqa: BLE001 - a dead or stuck worker is killed below either way
                    log.warning("%s: stopping the server failed: %s", run.replica, _describe(error))
            ray.kill(run.actor)  # its server's supervisor then stops the whole server tree (bench/supervise.py)
            run.actor = None
        if run.group is not None:
            remove_placement_group(run.group)
            run.group = None

    def node_gpus(self) -> dict[str, float]:
        import ray

        return {node["NodeID"]: node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]}

    def node_of(self, run: ModelRun) -> str | None:
        from ray.util import placement_group_table

        return placement_group_table(run.group)["bundles_to_node_id"].get(0) if run.group is not None else None

    def now(self) -> float:
        return time.monotonic()


def _describe(error: Exception) -> str:
    """The error raised inside the worker (not Ray's wrapper around it), trimmed for storage."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    return text if len(text) <= 4000 else text[:1000] + "\n...\n" + text[-3000:]


def _target(config: BenchConfig, cell: Cell) -> TaskConfig | WorkloadConfig:
    targets = config.tasks if cell.kind == "eval" else config.workloads
    return next(t for t in targets if t.name == cell.target)


def dispatch(
    config: BenchConfig, cells: list[Cell], run_dir: Path, events: Events, worker_class: type = ModelWorker,
    gates: ChunkGates | None = None, block_gates: BlockGates | None = None,
) -> None:  # fmt: skip
    """Run every cell on a server of its model. Each cell ends stored, reported failed or skipped by a gate.

    `worker_class` is the Ray actor that owns a server: `ModelWorker`; the scheduling simulation
    (tests/integration/test_scheduling.py) passes a subclass that serves a fake engine instead of vLLM.
    """
    workers = RayWorkers(config, run_dir, worker_class)
    dispatcher = Dispatch.plan(config, cells, events, workers, gates, block_gates)
    try:
        dispatcher.run()
    finally:
        dispatcher.close()


@dataclass
class Dispatch:
    """The driver's loop: start the servers, then submit what `schedule.next_cells` says, until done."""

    config: BenchConfig
    events: Events
    workers: Workers
    models: dict[str, ModelConfig]  # the models with cells to run
    placements: dict[str, Placement]
    queue: list[Cell]  # cells not yet submitted (a retried cell goes back to the front), in run order
    exclusive: bool  # the servers share CPUs: one cell at a time, one server per model
    in_order: bool  # every model's first server fits at once (perf trials then keep their block order)
    node_gpus: list[float]  # GPUs of each node at the start
    runs: dict[Replica, ModelRun] = field(default_factory=dict)  # the live servers
    inflight: dict[object, Call] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    timings: list[EvalTiming] = field(default_factory=list)
    start_s: dict[str, float] = field(default_factory=dict)  # each model's fastest server start
    announced: set[str] = field(default_factory=set)  # models whose first server came up (`on_started`)
    replicas_made: dict[str, int] = field(default_factory=dict)  # servers created per model: the next index
    gates: ChunkGates | None = None  # the adaptive tasks' chunk gates (`bench.gate`); None: no adaptive task
    block_gates: BlockGates | None = None  # the adaptive workloads' block gates (`bench.blockgate`)
    held: list[Cell] = field(default_factory=list)  # chunk or block cells waiting for an earlier gate
    skipped: list[Cell] = field(default_factory=list)  # chunk or block cells a gate decided never to run

    @classmethod
    def plan(
        cls, config: BenchConfig, cells: list[Cell], events: Events, workers: Workers,
        gates: ChunkGates | None = None, block_gates: BlockGates | None = None,
    ) -> Dispatch:  # fmt: skip
        node_gpus = list(workers.node_gpus().values())
        gpus = sum(node_gpus)
        models = {m.name: m for m in config.models if any(cell.model == m.name for cell in cells)}
        placements = {name: placement_for(model, gpus) for name, model in models.items()}
        in_order = schedule.fits_at_once([p.num_gpus for p in placements.values()], node_gpus)
        if not in_order:
            log.warning("the models do not all fit on the GPUs at once: perf trials run as models come up")
        queue = schedule.run_order(cells, config.run.seed, [m.name for m in config.models])
        dispatcher = cls(
            config, events, workers, models, placements, queue, gpus <= 0, in_order, node_gpus,
            gates=gates, block_gates=block_gates,
        )  # fmt: skip
        dispatcher.held = [cell for cell in queue if dispatcher._gated(cell)]
        dispatcher.queue = [cell for cell in queue if not dispatcher._gated(cell)]
        dispatcher._open_gates()
        return dispatcher

    def run(self) -> None:
        self._reorder()
        largest = max(self.node_gpus, default=0)
        placeable = []
        # Biggest first (estimated GPU-seconds), so where not every model fits, small ones fill the gaps; every
        # model's first server before any extra one, so extras never take the GPUs a first server needs. A
        # model whose cells all wait behind a gate (a resumed adaptive task) starts once one is queued
        # (`_submit`), if ever: the gate may skip them all.
        for model in sorted(self.models.values(), key=self._size, reverse=True):
            needs = self.placements[model.name].num_gpus
            if needs > largest:
                self._give_up(model.name, f"needs {needs} GPUs on one node; the largest node has {largest:g}")
            elif self._queued(model.name):
                placeable.append(model)
                self._start(self._new_run(model))
        for model in placeable:
            evals = sum(cell.kind == "eval" and cell.model == model.name for cell in self.queue)
            for _ in range(schedule.initial_replicas(model.serve.replicas, evals, self.exclusive) - 1):
                self._start(self._new_run(model))
        self._fill()
        self._submit()
        while self.inflight:
            self._handle_next()
            self._submit()
        for cell in self.queue + self.held:  # unreachable by construction; never drop a cell silently
            self.events.on_failed(cell, self.attempts.get(cell.key, 0), "not scheduled: its worker was gone")

    def close(self) -> None:
        for run in list(self.runs.values()):
            self._release(run)

    def _size(self, model: ModelConfig) -> tuple[float, int]:
        estimates = self._estimates()
        gpus = self.placements[model.name].num_gpus or 1
        cells = [cell for cell in self.queue if cell.model == model.name]
        evals = sum(schedule.gpu_seconds(cell, estimates, gpus) for cell in cells if cell.kind == "eval")
        return evals, gpus * len(cells)

    def _new_run(self, model: ModelConfig) -> ModelRun:
        index = self.replicas_made.get(model.name, 0)
        self.replicas_made[model.name] = index + 1
        return ModelRun(model, self.placements[model.name], Replica(model.name, index))

    def _workers(self) -> dict[Replica, WorkerState]:
        return {replica: run.state for replica, run in self.runs.items()}

    def _queued(self, model: str) -> list[Cell]:
        return [cell for cell in self.queue if cell.model == model]

    def _waiting(self, model: str) -> list[Cell]:
        """A model's cells still to run: queued, or held behind a chunk gate."""
        return [cell for cell in self.queue + self.held if cell.model == model]

    def _gate_of(self, cell: Cell) -> Gates | None:
        """The gate that decides when this cell runs (an adaptive task's chunk, an adaptive workload's
        block), or None."""
        return next((g for g in (self.gates, self.block_gates) if g is not None and g.governs(cell)), None)

    def _gated(self, cell: Cell) -> bool:
        return self._gate_of(cell) is not None

    def _open_gates(self) -> None:
        """Move the held cells whose gate opened to the queue; drop those a gate skipped (their documents or
        blocks never run) and report failed those whose model failed an earlier chunk."""
        for cell in list(self.held):
            gate = self._gate_of(cell)
            assert gate is not None
            state = gate.state(cell)
            if state == "held":
                continue
            self.held.remove(cell)
            if state == "open":
                self.queue.append(cell)
            elif state == "skipped":
                self.skipped.append(cell)
                self.events.on_skipped(cell)
            else:
                self.events.on_failed(cell, 0, f"an earlier chunk of {cell.target} failed")
        self._reorder()

    # -- deciding --------------------------------------------------------------------------------------------

    def _submit(self) -> None:
        self._drop_unplaceable()
        serving = {run.model.name for run in self.runs.values()}
        for name in dict.fromkeys(cell.model for cell in self.queue if cell.model not in serving):
            self._start(self._new_run(self.models[name]))  # its server stopped while its chunk was held
        # Release first: a server shutting down burns CPU, so it must be gone before the next trial starts.
        # A held chunk keeps its model's server (the gate may open it as soon as the chunk in flight is
        # stored), unless a server is starting where not every model's fits at once: that start may wait for
        # the GPUs it keeps, with the chunk the gate waits for, so it stops and starts again once its chunk
        # is queued.
        starting = any(run.state == "starting" for run in self.runs.values())
        waiting = self.queue if starting and not self.in_order else self.queue + self.held
        for replica in schedule.releasable(waiting, self._workers()):
            self._release(self.runs[replica])
            self.events.on_stage(str(replica), "done")
        for assignment in schedule.next_cells(self.queue, self._workers(), self.exclusive, self.in_order):
            self.queue.remove(assignment.cell)
            self._call(self.runs[assignment.replica], assignment.cell)
        self._grow()

    def _grow(self) -> None:
        """Start more servers for `replicas: auto` models while GPUs are free (`schedule.replicas_to_add`).

        Not while any server is starting: a start waiting for GPUs (a replacement, a model that did not fit)
        has them first, and the GPU accounting below only counts servers that are up."""
        auto = [name for name, model in self.models.items() if model.serve.replicas == "auto"]
        if self.exclusive or not auto or any(run.state == "starting" for run in self.runs.values()):
            return
        estimates = self._estimates()
        loads = []
        for name in auto:
            servers = [run for run in self.runs.values() if run.model.name == name]
            if not servers or name not in self.start_s:
                continue
            queued = tuple(estimates.cell_seconds(c) for c in self._queued(name) if c.kind == "eval")
            idle = sum(run.state == "idle" for run in servers)
            gpus = self.placements[name].num_gpus
            loads.append(schedule.ModelLoad(name, gpus, len(servers), idle, queued, self.start_s[name]))
        for name in schedule.replicas_to_add(loads, self._free_gpus()):
            self._start(self._new_run(self.models[name]))

    def _fill(self) -> None:
        """`replicas: auto` at launch: GPUs that no server needs go to extra servers at once, by the config's
        sizes of the queued evals per server (no rate is measured yet, and an idle GPU costs nothing)."""
        auto = [run for run in self.runs.values() if run.model.serve.replicas == "auto"]
        free = schedule.free_after([run.placement.num_gpus for run in self.runs.values()], self.node_gpus)
        if self.exclusive or not self.in_order or not auto or free is None:
            return
        estimates = self._estimates()
        loads = [
            schedule.ModelLoad(
                run.model.name, run.placement.num_gpus, servers=1, idle=1, start_s=0.0,
                queued_s=tuple(estimates.cell_work(c) for c in self._queued(run.model.name) if c.kind == "eval"),
            )
            for run in auto
        ]  # fmt: skip
        for name in schedule.replicas_to_add(loads, free):
            self._start(self._new_run(self.models[name]))

    def _free_gpus(self) -> list[float]:
        free = self.workers.node_gpus()
        for run in self.runs.values():
            if run.node in free:
                free[run.node] -= run.placement.num_gpus
        return list(free.values())

    def _estimates(self) -> schedule.Estimates:
        priors = {task.name: schedule.eval_work_tokens(task) for task in self.config.tasks}
        limits = {task.name: task.limit for task in self.config.tasks if task.limit is not None}
        return schedule.estimate(priors, self.timings, limits)

    def _reorder(self) -> None:
        """Evals longest first by the latest estimates (LPT); perf trials keep their block order."""
        gpus = {name: placement.num_gpus or 1 for name, placement in self.placements.items()}
        evals = schedule.lpt_order([c for c in self.queue if c.kind == "eval"], self._estimates(), gpus)
        self.queue = evals + [cell for cell in self.queue if cell.kind == "perf"]

    # -- acting ----------------------------------------------------------------------------------------------

    def _start(self, run: ModelRun) -> None:
        self.workers.launch(run)
        self.runs[run.replica] = run
        run.state = "starting"
        # A start has no deadline of its own: it may queue until another model frees the resources; the
        # server's startup_timeout_s bounds the start itself.
        self.inflight[self.workers.call(run, "start")] = Call(run, None, self.workers.now(), math.inf)
        self.events.on_stage(str(run.replica), "waiting for resources / starting server")

    def _call(self, run: ModelRun, cell: Cell) -> None:
        target = _target(self.config, cell)
        block = f" (block {cell.block})" if cell.block is not None else ""
        self.events.on_stage(str(run.replica), f"{cell.kind} {cell.target}{block}")
        log.info("%s %s on %s (node %s)", cell.kind, cell.target + block, run.replica, run.node)
        if cell.kind == "eval":
            documents = (cell.documents,) if cell.chunk is not None else ()  # a chunk evaluates its documents only
            handle, run.state = self.workers.call(run, "evaluate", target, *documents), "busy"
        else:
            handle = self.workers.call(run, "measure", target, self.events.billing_for(run.record))
            run.state = "measuring"
        now = self.workers.now()
        self.inflight[handle] = Call(run, cell, now, now + self.config.run.cell_timeout_s)

    def _release(self, run: ModelRun) -> None:
        """Stop a server (or cancel its start) and forget it."""
        for handle, call in list(self.inflight.items()):
            if call.run is run:
                del self.inflight[handle]
        self.workers.release(run)
        self.runs.pop(run.replica, None)
        run.node = None

    # -- reacting --------------------------------------------------------------------------------------------

    def _handle_next(self) -> None:
        """Wait for the first call to finish (or a deadline to pass) and act on it."""
        next_deadline = min(call.deadline_s for call in self.inflight.values())
        timeout = min(_WAIT_S, max(0.0, next_deadline - self.workers.now()))
        handle = self.workers.wait(list(self.inflight), timeout)
        if handle is None:
            self._expire()
            return
        call = self.inflight.pop(handle)
        run, cell = call.run, call.cell
        try:
            result = self.workers.result(handle)
        except Exception as error:  # noqa: BLE001 - any failure of a cell or a server is handled the same way
            self._after_failure(run, cell, _describe(error))
            return
        run.state = "idle"
        if cell is None:
            self._started(run, result, call)
        elif cell.kind == "eval":
            share = schedule.work_share(cell, _target(self.config, cell).limit)
            self.timings.append(EvalTiming(cell.model, cell.target, self.workers.now() - call.sent_s, share))
            self.events.on_eval(cell, *result)
            if cell.chunk is not None and self.gates is not None:
                self.gates.record(cell, chunk_values(*result))
                self._open_gates()
            self._reorder()
        else:
            self.events.on_perf(cell, *result)
            if self.block_gates is not None and self.block_gates.governs(cell):
                self.block_gates.record(cell, block_rows(cell, result[1]))
                self._open_gates()

    def _started(self, run: ModelRun, record: ModelRecord, call: Call) -> None:
        run.record, run.node = record, self.workers.node_of(run)
        name = run.model.name
        self.start_s[name] = min(self.start_s.get(name, math.inf), self.workers.now() - call.sent_s)
        log.info("%s: server up (node %s)", run.replica, run.node)
        if name in self.announced:  # the models table has its row: every server of a model serves it alike
            self.events.on_stage(str(run.replica), "server up")
        else:
            self.announced.add(name)
            self.events.on_started(record)

    def _expire(self) -> None:
        """Cells past their deadline: the cell may hang forever, so its worker is replaced (a failure)."""
        now = self.workers.now()
        for handle, call in list(self.inflight.items()):
            if call.deadline_s <= now and handle in self.inflight:  # not dropped with a server released meanwhile
                del self.inflight[handle]
                message = f"timed out after {self.config.run.cell_timeout_s:.0f} s"
                self._after_failure(call.run, call.cell, message, server_alive=False)

    def _drop_unplaceable(self) -> None:
        """Servers still waiting for GPUs that no alive node has any more (a node was lost): stop waiting."""
        starting = [run for run in self.runs.values() if run.state == "starting"]
        largest = max(self.workers.node_gpus().values(), default=0) if starting else 0
        for run in starting:
            if run.placement.num_gpus > largest:
                message = f"needs {run.placement.num_gpus} GPUs on one node; the largest alive node has {largest:g}"
                self._retire(run, message)

    def _after_failure(self, run: ModelRun, cell: Cell | None, message: str, server_alive: bool | None = None) -> None:
        """Retry the cell (bounded); replace a dead server's worker once; give up on a model that won't serve."""
        if cell is not None:
            attempts = self.attempts[cell.key] = self.attempts.get(cell.key, 0) + 1
            log.warning("%s %s %s failed (attempt %d): %s", run.replica, cell.kind, cell.target, attempts, message)
            if attempts > self.config.run.cell_retries:
                self.events.on_failed(cell, attempts, message)
                self._gate_failed(cell)
            else:
                self.queue.insert(0, cell)
                self.events.on_retry(cell, attempts, message)
            if server_alive is None:
                server_alive = self.workers.alive(run)
            if server_alive:
                run.state = "idle"
                return
        else:
            message = f"server did not start: {message}"
        if run.restarts_left > 0 and self._waiting(run.model.name):
            run.restarts_left -= 1
            log.warning("%s: replacing its worker and server after: %s", run.replica, message)
            self.events.on_replaced(str(run.replica), message)
            self._release(run)
            self._start(run)
        else:
            self._retire(run, message)

    def _retire(self, run: ModelRun, message: str) -> None:
        """Stop one server for good; if it was its model's last, the model's remaining cells fail."""
        self._release(run)
        if any(other.model.name == run.model.name for other in self.runs.values()):
            self.events.on_stage(str(run.replica), f"stopped: {message.splitlines()[0]}")
        else:
            self._give_up(run.model.name, message)

    def _give_up(self, model: str, message: str) -> None:
        """Report every remaining cell of a model as failed; its chunks leave their gates, which then open
        for the other models without it."""
        for pending in self._waiting(model):
            self.events.on_failed(pending, self.attempts.get(pending.key, 0), message)
            (self.queue if pending in self.queue else self.held).remove(pending)
            self._fail_in_gate(pending)
        self._open_gates()
        self.events.on_stage(model, "failed")

    def _gate_failed(self, cell: Cell) -> None:
        """A gated cell failed for good: its gate decides without it."""
        if self._fail_in_gate(cell):
            self._open_gates()

    def _fail_in_gate(self, cell: Cell) -> bool:
        """Tell the cell's gate (if a gate governs it) that it failed for good; True when one did."""
        gate = self._gate_of(cell)
        if gate is not None:
            gate.fail(cell)
        return gate is not None
