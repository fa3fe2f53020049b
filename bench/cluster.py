"""Ray: start or attach a cluster, place one model worker per model, dispatch cells, retry, time out.

Each model gets one `ModelWorker` actor that owns its vLLM server for the whole run; that model's cells run
against it one after another, then it stops. Placement: with GPUs, a model takes `tensor_parallel_size` GPUs
on one node (a one-bundle placement group, STRICT_PACK); without GPUs, a worker takes every CPU of a node,
so models are measured one at a time and never compete for cores (which would skew the comparison).
Driver-side, `dispatch` keeps one call in flight per model and reacts to whichever finishes first
(`ray.wait` with a timeout, never a polling loop over results).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import BenchConfig, ModelConfig, TaskConfig, WorkloadConfig
from bench.cost import Billing
from bench.plan import Cell
from bench.records import EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary

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


def shutdown() -> None:
    import ray

    ray.shutdown()


@dataclass(frozen=True)
class Placement:
    """Ray resources for one model worker."""

    num_cpus: float
    num_gpus: int
    bundle: dict[str, float] | None  # the placement-group bundle, when GPUs are used


def placement_for(model: ModelConfig, node_cpus: float, cluster_gpus: float) -> Placement:
    """GPUs on one node for tensor parallelism; or a whole node's CPUs where there are no GPUs."""
    if cluster_gpus <= 0:
        return Placement(num_cpus=node_cpus, num_gpus=0, bundle=None)
    gpus = model.serve.tensor_parallel_size
    return Placement(num_cpus=1, num_gpus=gpus, bundle={"GPU": gpus, "CPU": 1})


def _node_cpus() -> float:
    import ray

    return max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=1)


class ModelWorker:
    """The Ray actor for one model: owns its vLLM server and runs that model's cells against it."""

    def __init__(self, model: ModelConfig, seed: int, run_dir: str, workdir: str, device_type: str):
        # Task files and relative model paths are relative to where `distill-bench run` was started.
        os.chdir(workdir)
        self.model = model
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.device_type = device_type
        self.server = None

    def start(self) -> ModelRecord:
        """Start (or restart) the server and wait until it is healthy; returns its provenance."""
        from bench.serve import VllmServer

        if self.server is not None:
            self.server.stop()
        self.server = VllmServer(self.model, self.seed, self.run_dir / "logs" / f"{self.model.name}.server.log")
        self.server.start()
        return self.server.provenance(self.device_type)

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def assigned_gpus(self) -> list[int]:
        """The GPU ids Ray gave this worker (empty on CPU); NVML samples these."""
        import ray

        return [int(gpu) for gpu in ray.get_gpu_ids()]

    def evaluate(self, task: TaskConfig) -> tuple[list[EvalScore], list[EvalSample]]:
        from bench.evaluate import Endpoint, evaluate_task

        endpoint = Endpoint(base_url=self.server.base_url, served_model=self.model.name, tokenizer=self.model.source)
        return evaluate_task(endpoint, task, self.seed)

    def measure(
        self, workload: WorkloadConfig, billing: Billing
    ) -> tuple[list[PerfRequest], list[PerfSummary], list[PerfProbe]]:
        from bench.loadgen import measure_workload

        result = measure_workload(
            self.server.base_url,
            self.model.name,
            workload,
            prompt_space(self.model),
            self.seed,
            billing,
            gpu_indices=self.assigned_gpus(),
        )
        return result.requests, result.summaries, result.probes

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def prompt_space(model: ModelConfig):
    """Token ids for synthetic prompts: the tokenizer's vocabulary minus its special tokens."""
    from transformers import AutoTokenizer

    from bench.loadgen import PromptSpace

    tokenizer = AutoTokenizer.from_pretrained(model.source, revision=model.revision)
    return PromptSpace(vocab_size=len(tokenizer), special_ids=frozenset(tokenizer.all_special_ids))


@dataclass
class ModelRun:
    """Driver-side state of one model's worker."""

    model: ModelConfig
    cells: list[Cell]
    run_dir: Path
    placement: Placement
    actor: object = None
    group: object = None  # its placement group, when it uses GPUs
    record: ModelRecord | None = None
    restarts_left: int = 1  # a fresh worker and server, once, after a start failure, a dead server or a timeout
    attempts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Events:
    """What `dispatch` reports to the caller, which stores results and drives the progress display."""

    on_started: Callable[[ModelRecord], None]
    on_eval: Callable[[Cell, list[EvalScore], list[EvalSample]], None]
    on_perf: Callable[[Cell, list[PerfRequest], list[PerfSummary], list[PerfProbe]], None]
    on_failed: Callable[[Cell, int, str], None]
    on_stage: Callable[[str, str], None]  # (model, what it is doing now)
    billing_for: Callable[[ModelRecord], Billing]


Inflight = dict[object, tuple[ModelRun, Cell | None, float]]  # call -> (model, cell or None for a start, deadline)
_WAIT_S = 60.0  # ray.wait never blocks longer than this, deadline or not


def _launch(run: ModelRun, config: BenchConfig) -> None:
    """Create the model's worker (and its placement group) and ask it to start its server."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    placement = run.placement
    options: dict = {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus, "max_concurrency": 1}
    if placement.bundle:
        run.group = placement_group([placement.bundle], strategy="STRICT_PACK", name=f"distill-bench-{run.model.name}")
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=run.group)
    worker = ray.remote(ModelWorker).options(**options)
    run.actor = worker.remote(run.model, config.run.seed, str(run.run_dir), os.getcwd(), config.hardware.device_type)


def _release(run: ModelRun) -> None:
    """Stop the server if the worker still answers, then free the worker and its GPUs for the next model."""
    import ray
    from ray.util.placement_group import remove_placement_group

    if run.actor is not None:
        try:
            ray.get(run.actor.stop.remote(), timeout=_WAIT_S)
        except Exception as error:  # noqa: BLE001 - a dead or stuck worker is killed below either way
            log.warning("%s: stopping the server failed: %s", run.model.name, _describe(error))
        ray.kill(run.actor)  # its vLLM server gets SIGTERM with it (PR_SET_PDEATHSIG)
        run.actor = None
    if run.group is not None:
        remove_placement_group(run.group)
        run.group = None


def _size(run: ModelRun) -> int:
    # Biggest first: GPUs held x cells to run, so small students fill the gaps the teacher leaves.
    return run.model.serve.tensor_parallel_size * len(run.cells)


def _unplaceable(run: ModelRun, node_gpus: float) -> str | None:
    if run.placement.num_gpus and run.placement.num_gpus > node_gpus:
        return f"needs {run.placement.num_gpus} GPUs on one node; the largest node has {node_gpus:g}"
    return None


def dispatch(config: BenchConfig, cells: list[Cell], run_dir: Path, events: Events) -> None:
    """Run every cell on its model's worker. Each cell ends stored or reported failed, never dropped."""
    import ray

    gpus, node_cpus = ray.cluster_resources().get("GPU", 0), _node_cpus()
    node_gpus = max((node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
    runs = [
        ModelRun(m, [c for c in cells if c.model == m.name], run_dir, placement_for(m, node_cpus, gpus))
        for m in config.models
    ]
    runs = sorted((r for r in runs if r.cells), key=_size, reverse=True)
    inflight: Inflight = {}
    try:
        for run in runs:
            problem = _unplaceable(run, node_gpus)
            if problem:
                _give_up(run, problem, events)
                continue
            _start(run, config, inflight, events)
        while inflight:
            _handle_next(inflight, config, events)
    finally:
        for run in runs:
            _release(run)


def _start(run: ModelRun, config: BenchConfig, inflight: Inflight, events: Events) -> None:
    _launch(run, config)
    # A start has no deadline of its own: it may queue until another model frees the resources; the
    # server's startup_timeout_s bounds the start itself.
    inflight[run.actor.start.remote()] = (run, None, float("inf"))
    events.on_stage(run.model.name, "waiting for resources / starting server")


def _handle_next(inflight: Inflight, config: BenchConfig, events: Events) -> None:
    """Wait for the first call to finish (or a deadline to pass) and act on it."""
    import ray

    next_deadline = min(deadline for _, _, deadline in inflight.values())
    timeout = min(_WAIT_S, max(0.0, next_deadline - time.monotonic()))
    ready, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout)
    if not ready:
        _expire(inflight, config, events)
        return
    run, cell, _ = inflight.pop(ready[0])
    try:
        result = ray.get(ready[0], timeout=_WAIT_S)
    except Exception as error:  # noqa: BLE001 - any failure of a cell or a server is handled the same way
        _after_failure(run, cell, _describe(error), inflight, config, events)
        return
    if cell is None:
        run.record = result
        events.on_started(result)
    else:
        run.cells.pop(0)
        (events.on_eval if cell.kind == "eval" else events.on_perf)(cell, *result)
    _submit_next(run, inflight, config, events)


def _describe(error: Exception) -> str:
    """The error raised inside the worker (not Ray's wrapper around it), trimmed for storage."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    return text if len(text) <= 4000 else text[:1000] + "\n...\n" + text[-3000:]


def _expire(inflight: Inflight, config: BenchConfig, events: Events) -> None:
    """Cells past their deadline: the cell may hang forever, so its worker is replaced (a failure)."""
    now = time.monotonic()
    for ref, (run, cell, deadline) in list(inflight.items()):
        if deadline <= now:
            del inflight[ref]
            message = f"timed out after {config.run.cell_timeout_s:.0f} s"
            _after_failure(run, cell, message, inflight, config, events, server_alive=False)


def _submit_next(run: ModelRun, inflight: Inflight, config: BenchConfig, events: Events) -> None:
    if not run.cells:
        _release(run)
        events.on_stage(run.model.name, "done")
        return
    cell = run.cells[0]
    target = _target(config, cell)
    events.on_stage(run.model.name, f"{cell.kind} {cell.target}")
    if cell.kind == "eval":
        ref = run.actor.evaluate.remote(target)
    else:
        ref = run.actor.measure.remote(target, events.billing_for(run.record))
    inflight[ref] = (run, cell, time.monotonic() + config.run.cell_timeout_s)


def _target(config: BenchConfig, cell: Cell) -> TaskConfig | WorkloadConfig:
    targets = config.tasks if cell.kind == "eval" else config.workloads
    return next(t for t in targets if t.name == cell.target)


def _server_alive(run: ModelRun) -> bool:
    import ray

    try:
        return bool(ray.get(run.actor.alive.remote(), timeout=_WAIT_S))
    except Exception:  # noqa: BLE001 - a worker that cannot answer counts as dead
        return False


def _after_failure(
    run: ModelRun, cell: Cell | None, message: str, inflight: Inflight, config: BenchConfig, events: Events,
    server_alive: bool | None = None,
) -> None:  # fmt: skip
    """Retry the cell (bounded); replace a dead server's worker once; give up on a model that won't serve."""
    if cell is not None:
        attempts = run.attempts[cell.key] = run.attempts.get(cell.key, 0) + 1
        log.warning("%s %s %s failed (attempt %d): %s", run.model.name, cell.kind, cell.target, attempts, message)
        if attempts > config.run.cell_retries:
            events.on_failed(cell, attempts, message)
            run.cells.pop(0)
        if server_alive is None:
            server_alive = _server_alive(run)
        if server_alive:
            _submit_next(run, inflight, config, events)
            return
    else:
        message = f"server did not start: {message}"
    if run.restarts_left > 0 and run.cells:
        run.restarts_left -= 1
        log.warning("%s: replacing its worker and server after: %s", run.model.name, message)
        _release(run)
        _start(run, config, inflight, events)
    else:
        _give_up(run, message, events)


def _give_up(run: ModelRun, message: str, events: Events) -> None:
    """Report every remaining cell of a model as failed and free its worker."""
    for pending in run.cells:
        events.on_failed(pending, run.attempts.get(pending.key, 0), message)
    run.cells.clear()
    _release(run)
    events.on_stage(run.model.name, "failed")
