"""Ray: start or attach a cluster, place one model worker per model, dispatch cells, retry, time out.

Every model gets one `ModelWorker` actor (`bench/worker.py`) whose vLLM server stays up for the whole run:
restarting a CPU server per perf trial would cost 30-60 s, and interleaved trials need every model at
hand. Placement: with GPUs, a model takes `tensor_parallel_size` GPUs on one node (a one-bundle placement
group, STRICT_PACK); without GPUs, a worker reserves no CPU, so every model's server lives on the node's
cores side by side, and the dispatch lets only one of them work at a time.

Driver-side, `dispatch` keeps its calls in flight in a dict and reacts to whichever finishes first
(`ray.wait` with a timeout, never a polling loop over results). What to submit next is decided by the
pure `schedule.next_cells` from the state of each worker; this module only carries the decisions out and
handles failures: a failed cell is retried (bounded), a dead or stuck worker is replaced once, a model
whose server will not serve has its cells reported failed, and every cell ends stored or in `failures`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import schedule
from bench.config import BenchConfig, ModelConfig, TaskConfig, WorkloadConfig
from bench.cost import Billing
from bench.plan import Cell
from bench.records import EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary
from bench.schedule import WorkerState
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
        address=address,
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
    """Ray resources for one model worker."""

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
    """Driver-side state of one model's worker."""

    model: ModelConfig
    run_dir: Path
    placement: Placement
    actor: object = None
    group: object = None  # its placement group, when it uses GPUs
    record: ModelRecord | None = None
    state: WorkerState = "starting"
    restarts_left: int = 1  # a fresh worker and server, once, after a start failure, a dead server or a timeout


@dataclass(frozen=True)
class Events:
    """What `dispatch` reports to the caller, which stores results and drives the progress display."""

    on_started: Callable[[ModelRecord], None]
    on_eval: Callable[[Cell, list[EvalScore], list[EvalSample]], None]
    on_perf: Callable[[Cell, list[PerfRequest], list[PerfSummary], list[PerfProbe]], None]
    on_failed: Callable[[Cell, int, str], None]
    on_retry: Callable[[Cell, int, str], None]  # (cell, attempts failed so far, error): it goes back in the queue
    on_replaced: Callable[[str, str], None]  # (model, why): it gets a fresh worker and server
    on_stage: Callable[[str, str], None]  # (model, what it is doing now)
    billing_for: Callable[[ModelRecord], Billing]


Inflight = dict[object, tuple[ModelRun, Cell | None, float]]  # call -> (model, cell or None for a start, deadline)
_WAIT_S = 60.0  # ray.wait never blocks longer than this, deadline or not


def _launch(run: ModelRun, config: BenchConfig) -> None:
    """Create the model's worker (and its placement group); its server is started by `Dispatch._start`."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    placement = run.placement
    options: dict = {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus, "max_concurrency": 1}
    if placement.bundle:
        run.group = placement_group([placement.bundle], strategy="STRICT_PACK", name=f"distill-bench-{run.model.name}")
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=run.group)
    else:
        options["scheduling_strategy"] = "SPREAD"  # CPU workers reserve nothing: spread them over the nodes
    worker = ray.remote(ModelWorker).options(**options)
    run.actor = worker.remote(run.model, config.run.seed, str(run.run_dir), os.getcwd(), config.hardware.device_type)


def _release(run: ModelRun) -> None:
    """Stop the server if the worker still answers, then free the worker and its GPUs."""
    import ray
    from ray.util.placement_group import remove_placement_group

    if run.actor is not None:
        try:
            ray.get(run.actor.stop.remote(), timeout=_WAIT_S)
        except Exception as error:  # noqa: BLE001 - a dead or stuck worker is killed below either way
            log.warning("%s: stopping the server failed: %s", run.model.name, _describe(error))
        ray.kill(run.actor)  # its server's supervisor then stops the whole server tree (bench/supervise.py)
        run.actor = None
    if run.group is not None:
        remove_placement_group(run.group)
        run.group = None


def _unplaceable(run: ModelRun, node_gpus: float) -> str | None:
    if run.placement.num_gpus and run.placement.num_gpus > node_gpus:
        return f"needs {run.placement.num_gpus} GPUs on one node; the largest node has {node_gpus:g}"
    return None


def _describe(error: Exception) -> str:
    """The error raised inside the worker (not Ray's wrapper around it), trimmed for storage."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    return text if len(text) <= 4000 else text[:1000] + "\n...\n" + text[-3000:]


def _target(config: BenchConfig, cell: Cell) -> TaskConfig | WorkloadConfig:
    targets = config.tasks if cell.kind == "eval" else config.workloads
    return next(t for t in targets if t.name == cell.target)


def dispatch(config: BenchConfig, cells: list[Cell], run_dir: Path, events: Events) -> None:
    """Run every cell on its model's worker. Each cell ends stored or reported failed, never dropped."""
    import ray

    alive = [node for node in ray.nodes() if node["Alive"]]
    node_gpus = [node["Resources"].get("GPU", 0) for node in alive]
    gpus = sum(node_gpus)
    models = [m for m in config.models if any(cell.model == m.name for cell in cells)]
    runs = {m.name: ModelRun(m, run_dir, placement_for(m, gpus)) for m in models}
    needs = [run.placement.num_gpus for run in runs.values()]
    in_order = schedule.fits_at_once(needs, node_gpus)
    if not in_order:
        log.warning("the models do not all fit on the GPUs at once: perf trials run as models come up, not in blocks")
    queue = schedule.run_order(cells, config.run.seed, [m.name for m in config.models])
    dispatcher = Dispatch(config, events, runs, queue, exclusive=gpus <= 0, in_order=in_order)
    try:
        dispatcher.run(max(node_gpus, default=0))
    finally:
        for run in runs.values():
            _release(run)


@dataclass
class Dispatch:
    """The driver's loop: start every server, then submit what `schedule.next_cells` says, until done."""

    config: BenchConfig
    events: Events
    runs: dict[str, ModelRun]
    queue: list[Cell]  # cells not yet submitted (a retried cell goes back to the front), in run order
    exclusive: bool
    in_order: bool
    inflight: Inflight = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    def run(self, node_gpus: float) -> None:
        # Biggest first (GPUs held x cells), so where not every model fits, small ones fill the gaps.
        for run in sorted(self.runs.values(), key=self._size, reverse=True):
            problem = _unplaceable(run, node_gpus)
            if problem:
                self._give_up(run, problem)
            else:
                self._start(run)
        self._submit()
        while self.inflight:
            self._handle_next()
            self._submit()
        for cell in self.queue:  # unreachable by construction; never drop a cell silently
            self.events.on_failed(cell, self.attempts.get(cell.key, 0), "not scheduled: its worker was gone")

    def _size(self, run: ModelRun) -> int:
        return run.model.serve.tensor_parallel_size * sum(cell.model == run.model.name for cell in self.queue)

    def _workers(self) -> dict[str, WorkerState]:
        return {name: run.state for name, run in self.runs.items() if run.actor is not None}

    def _submit(self) -> None:
        # Release first: a server shutting down burns CPU, so it must be gone before the next trial starts.
        for run in self.runs.values():
            if run.actor is not None and run.state == "idle" and not self._queued(run):
                _release(run)  # nothing left for it: free its memory (and GPUs, for a model still waiting)
                self.events.on_stage(run.model.name, "done")
        for cell in schedule.next_cells(self.queue, self._workers(), self.exclusive, self.in_order):
            self.queue.remove(cell)
            self._call(self.runs[cell.model], cell)

    def _queued(self, run: ModelRun) -> list[Cell]:
        return [cell for cell in self.queue if cell.model == run.model.name]

    def _start(self, run: ModelRun) -> None:
        _launch(run, self.config)
        run.state = "starting"
        # A start has no deadline of its own: it may queue until another model frees the resources; the
        # server's startup_timeout_s bounds the start itself.
        self.inflight[run.actor.start.remote()] = (run, None, float("inf"))
        self.events.on_stage(run.model.name, "waiting for resources / starting server")

    def _call(self, run: ModelRun, cell: Cell) -> None:
        target = _target(self.config, cell)
        block = f" (block {cell.block})" if cell.block is not None else ""
        self.events.on_stage(run.model.name, f"{cell.kind} {cell.target}{block}")
        if cell.kind == "eval":
            ref, run.state = run.actor.evaluate.remote(target), "busy"
        else:
            ref, run.state = run.actor.measure.remote(target, self.events.billing_for(run.record)), "measuring"
        self.inflight[ref] = (run, cell, time.monotonic() + self.config.run.cell_timeout_s)

    def _handle_next(self) -> None:
        """Wait for the first call to finish (or a deadline to pass) and act on it."""
        import ray

        next_deadline = min(deadline for _, _, deadline in self.inflight.values())
        timeout = min(_WAIT_S, max(0.0, next_deadline - time.monotonic()))
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        if not ready:
            self._expire()
            return
        run, cell, _ = self.inflight.pop(ready[0])
        try:
            result = ray.get(ready[0], timeout=_WAIT_S)
        except Exception as error:  # noqa: BLE001 - any failure of a cell or a server is handled the same way
            self._after_failure(run, cell, _describe(error))
            return
        run.state = "idle"
        if cell is None:
            run.record = result
            self.events.on_started(result)
        else:
            (self.events.on_eval if cell.kind == "eval" else self.events.on_perf)(cell, *result)

    def _expire(self) -> None:
        """Cells past their deadline: the cell may hang forever, so its worker is replaced (a failure)."""
        now = time.monotonic()
        for ref, (run, cell, deadline) in list(self.inflight.items()):
            if deadline <= now:
                del self.inflight[ref]
                message = f"timed out after {self.config.run.cell_timeout_s:.0f} s"
                self._after_failure(run, cell, message, server_alive=False)

    def _after_failure(self, run: ModelRun, cell: Cell | None, message: str, server_alive: bool | None = None) -> None:
        """Retry the cell (bounded); replace a dead server's worker once; give up on a model that won't serve."""
        if cell is not None:
            attempts = self.attempts[cell.key] = self.attempts.get(cell.key, 0) + 1
            log.warning("%s %s %s failed (attempt %d): %s", run.model.name, cell.kind, cell.target, attempts, message)
            if attempts > self.config.run.cell_retries:
                self.events.on_failed(cell, attempts, message)
            else:
                self.queue.insert(0, cell)
                self.events.on_retry(cell, attempts, message)
            if server_alive is None:
                server_alive = _server_alive(run)
            if server_alive:
                run.state = "idle"
                return
        else:
            message = f"server did not start: {message}"
        if run.restarts_left > 0 and self._queued(run):
            run.restarts_left -= 1
            log.warning("%s: replacing its worker and server after: %s", run.model.name, message)
            self.events.on_replaced(run.model.name, message)
            _release(run)
            self._start(run)
        else:
            self._give_up(run, message)

    def _give_up(self, run: ModelRun, message: str) -> None:
        """Report every remaining cell of a model as failed and free its worker."""
        for pending in self._queued(run):
            self.events.on_failed(pending, self.attempts.get(pending.key, 0), message)
            self.queue.remove(pending)
        _release(run)
        self.events.on_stage(run.model.name, "failed")


def _server_alive(run: ModelRun) -> bool:
    import ray

    try:
        return bool(ray.get(run.actor.alive.remote(), timeout=_WAIT_S))
    except Exception:  # noqa: BLE001 - a worker that cannot answer counts as dead
        return False
