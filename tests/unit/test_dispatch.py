"""`cluster.Dispatch`, the driver's state machine, against a fake cluster with a virtual clock: retries, a
server replaced once (dead, or past its deadline), a model given up (will not start, does not fit), longest
work first over replicas, servers added while GPUs are free, a node lost mid-run, and every cell ending
stored or failed exactly once. No Ray, no vLLM, no waiting: each call takes its scripted virtual time."""

from __future__ import annotations

import itertools
import math
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bench import cluster, schedule
from bench.blockgate import BlockGates
from bench.config import parse_config
from bench.gate import ChunkGates, chunk_values
from bench.plan import build_plan
from bench.records import EvalSample, EvalScore, PerfSummary
from tests.unit.test_store import make_record

REPO = Path(__file__).resolve().parents[2]


class WorkerDied(RuntimeError):
    """What a call on a worker of a lost node raises (Ray raises RayActorError)."""


class Deadlock(AssertionError):
    """The fake's answer to a wait that would never end: every call waits for GPUs no call will free."""


@dataclass
class FakeCall:
    run: cluster.ModelRun
    method: str
    target: str | None
    duration_s: float
    finish_s: float | None  # None: a start still waiting for its GPUs
    error: Exception | None = None


@dataclass
class FakeCluster:
    """Nodes with GPUs, placement first fit in launch order (a start waits for GPUs like a pending placement
    group), calls that take `durations_s(model, method, target)` virtual seconds, and scripted trouble:
    `failures[(model, method)]` calls raise first, `dead_after_failure` models report a dead server,
    `lost_at_s` removes a node (its servers die) at that time."""

    nodes: dict[str, float]
    durations_s: object = None  # (model, method, target) -> seconds; default 1 s each
    failures: dict = field(default_factory=dict)
    dead_after_failure: set = field(default_factory=set)
    lost_at_s: tuple[float, str] | None = None
    clock: float = 0.0
    calls: dict = field(default_factory=dict)
    waiting: list = field(default_factory=list)  # runs whose GPUs are not yet free, in launch order
    used: dict = field(default_factory=dict)  # node -> GPUs held
    placed: dict = field(default_factory=dict)  # replica -> node
    log: list = field(default_factory=list)  # (start time, replica, method, target)
    handles = itertools.count()

    def launch(self, run: cluster.ModelRun) -> None:
        run.actor = object()
        self.waiting.append(run)
        self._place()

    def _place(self) -> None:
        for run in list(self.waiting):
            node = next(
                (n for n, gpus in self.nodes.items() if gpus - self.used.get(n, 0) >= run.placement.num_gpus), None
            )
            if node is None:
                continue
            self.waiting.remove(run)
            self.used[node] = self.used.get(node, 0) + run.placement.num_gpus
            self.placed[run.replica] = node
            for call in self.calls.values():
                if call.run is run and call.finish_s is None:
                    call.finish_s = self.clock + call.duration_s
                    self.log.append((self.clock, run.replica, call.method, call.target))

    def call(self, run: cluster.ModelRun, method: str, *args: object) -> int:
        target = getattr(args[0], "name", None) if args else None
        duration = self.durations_s(run.model.name, method, target) if self.durations_s else 1.0
        handle = next(self.handles)
        placed = run.replica in self.placed
        self.calls[handle] = FakeCall(run, method, target, duration, self.clock + duration if placed else None)
        if placed:
            self.log.append((self.clock, run.replica, method, target))
        if placed and self.placed[run.replica] not in self.nodes:
            self.calls[handle].finish_s = self.clock
            self.calls[handle].error = WorkerDied(f"{run.replica}: its node was lost")
        elif self.failures.get((run.model.name, method), 0) > 0:
            self.failures[run.model.name, method] -= 1
            self.calls[handle].error = RuntimeError(f"{run.model.name} {method} failed")
        return handle

    def wait(self, handles: list, timeout_s: float) -> int | None:
        if self.lost_at_s and self.lost_at_s[0] <= self.clock + timeout_s:
            due = [self.calls[h].finish_s for h in handles if self.calls[h].finish_s is not None]
            if not due or min(due) > self.lost_at_s[0]:
                self._lose_node()
        running = [h for h in handles if self.calls[h].finish_s is not None]
        if not running and self.lost_at_s is None:  # only starts waiting for GPUs that nothing will free
            waiting = [str(self.calls[h].run.replica) for h in handles]
            raise Deadlock(f"at {self.clock:g} s every call waits for GPUs: {waiting}")
        first = min(running, key=lambda h: (self.calls[h].finish_s, h), default=None)
        if first is None or self.calls[first].finish_s > self.clock + timeout_s:
            self.clock += timeout_s
            return None
        self.clock = max(self.clock, self.calls[first].finish_s)
        return first

    def _lose_node(self) -> None:
        when, node = self.lost_at_s
        self.clock, self.lost_at_s = max(self.clock, when), None
        del self.nodes[node]
        for call in self.calls.values():
            if self.placed.get(call.run.replica) == node and call.finish_s is not None and call.finish_s > self.clock:
                call.finish_s, call.error = self.clock, WorkerDied(f"{call.run.replica}: its node was lost")

    def result(self, handle: int) -> object:
        call = self.calls.pop(handle)
        if call.error is not None:
            raise call.error
        if call.method == "start":
            return types.SimpleNamespace(name=call.run.model.name)
        return ([], []) if call.method == "evaluate" else ([], [], [])

    def alive(self, run: cluster.ModelRun) -> bool:
        return run.model.name not in self.dead_after_failure and self.placed.get(run.replica) in self.nodes

    def release(self, run: cluster.ModelRun) -> None:
        if run in self.waiting:
            self.waiting.remove(run)
        node = self.placed.pop(run.replica, None)
        if node is not None:
            self.used[node] -= run.placement.num_gpus
        for handle in [h for h, call in self.calls.items() if call.run is run]:
            del self.calls[handle]
        run.actor = None
        self._place()

    def node_gpus(self) -> dict[str, float]:
        return dict(self.nodes)

    def node_of(self, run: cluster.ModelRun) -> str | None:
        return self.placed.get(run.replica)

    def now(self) -> float:
        return self.clock


@dataclass
class Outcome:
    stored: list
    failed: list
    starts: Counter  # replica -> server starts
    log: list
    makespan_s: float
    reported: list  # ("retry", model, kind, attempts) and ("replaced", replica, why), as the terminal shows them


def run_dispatch(config, fake: FakeCluster) -> Outcome:
    stored, failed, reported = [], [], []
    events = cluster.Events(
        on_started=lambda record: None,
        on_eval=lambda cell, *_: stored.append(cell),
        on_perf=lambda cell, *_: stored.append(cell),
        on_failed=lambda cell, attempts, message: failed.append((cell, attempts, message)),
        on_retry=lambda cell, attempts, message: reported.append(("retry", cell.model, cell.kind, attempts)),
        on_replaced=lambda replica, why: reported.append(("replaced", replica, why)),
        on_stage=lambda model, what: None,
        billing_for=lambda record: None,
    )
    cells = build_plan(config)
    dispatcher = cluster.Dispatch.plan(config, cells, events, fake)
    dispatcher.run()
    dispatcher.close()
    done = [c.key for c in stored] + [f[0].key for f in failed]
    assert sorted(done) == sorted(c.key for c in cells)  # every cell once: none dropped, none twice
    assert not fake.calls and not fake.placed  # nothing left running
    starts = Counter(replica for _, replica, method, _ in fake.log if method == "start")
    return Outcome(stored, failed, starts, fake.log, fake.clock, reported)


def make_config(models: list[dict], tasks: list[dict], workloads: list[dict] | None = None, **run: object):
    data = {
        "run": {"name": "d", "cell_retries": 1, **run},
        "models": models,
        "tasks": tasks,
        "workloads": workloads if workloads is not None else [{"name": "w", "repeats": 2}],
    }
    return parse_config(data, source="dispatch", base=REPO)


TEACHER_KD = [{"name": "teacher", "source": "org/t"}, {"name": "kd", "source": "org/kd", "teacher": "teacher"}]
CPU = {"node": 0}  # no GPUs: the servers share the node's cores


@pytest.fixture
def config():
    return make_config(TEACHER_KD, [{"name": "task"}])


# -- the run on shared CPUs, and what fails ------------------------------------------------------------


def test_everything_runs_evals_first_then_trials_in_block_order(config) -> None:
    outcome = run_dispatch(config, FakeCluster(CPU))
    assert outcome.failed == []
    assert [c.kind for c in outcome.stored] == ["eval", "eval", "perf", "perf", "perf", "perf"]
    expected = schedule.perf_order(build_plan(config), config.run.seed, ["teacher", "kd"])
    assert [c for c in outcome.stored if c.kind == "perf"] == expected
    assert outcome.starts == {schedule.Replica("teacher"): 1, schedule.Replica("kd"): 1}


def test_a_failed_cell_is_retried_once_then_stored_as_failed(config) -> None:
    outcome = run_dispatch(config, FakeCluster(CPU, failures={("kd", "evaluate"): 5}))
    assert [(cell.model, cell.kind, attempts) for cell, attempts, _ in outcome.failed] == [("kd", "eval", 2)]
    assert len(outcome.stored) == 5
    assert outcome.reported == [("retry", "kd", "eval", 1)]  # the server answered: retried in place, not replaced


def test_a_transient_failure_is_retried_and_stored(config) -> None:
    outcome = run_dispatch(config, FakeCluster(CPU, failures={("teacher", "measure"): 1}))
    assert outcome.failed == [] and len(outcome.stored) == 6
    assert outcome.reported == [("retry", "teacher", "perf", 1)]
    assert sum(1 for _, replica, method, _ in outcome.log if (replica.model, method) == ("teacher", "measure")) == 3


def test_a_dead_server_gets_its_worker_replaced_once(config) -> None:
    fake = FakeCluster(CPU, failures={("kd", "evaluate"): 1}, dead_after_failure={"kd"})
    outcome = run_dispatch(config, fake)
    assert outcome.failed == [] and len(outcome.stored) == 6
    assert outcome.starts[schedule.Replica("kd")] == 2
    assert [entry[:2] for entry in outcome.reported] == [("retry", "kd"), ("replaced", "kd")]


def test_a_server_that_never_starts_fails_all_its_cells(config) -> None:
    outcome = run_dispatch(config, FakeCluster(CPU, failures={("kd", "start"): 9}))
    assert {cell.model for cell, _, _ in outcome.failed} == {"kd"} and len(outcome.failed) == 3
    assert all("server did not start" in message for _, _, message in outcome.failed)
    assert {cell.model for cell in outcome.stored} == {"teacher"}
    assert outcome.starts[schedule.Replica("kd")] == 2  # replaced once, then given up
    assert [entry[:2] for entry in outcome.reported] == [("replaced", "kd")]  # once only


def test_a_cell_past_its_deadline_gets_its_worker_replaced_once_and_is_retried() -> None:
    config = make_config(TEACHER_KD, [{"name": "task"}], cell_timeout_s=30)
    hung = {"left": 1}

    def durations(model: str, method: str, target: str | None) -> float:
        if (model, method) == ("kd", "evaluate") and hung["left"]:
            hung["left"] -= 1
            return math.inf  # never returns: only the deadline ends it
        return 1.0

    outcome = run_dispatch(config, FakeCluster(CPU, durations_s=durations))
    assert outcome.failed == [] and len(outcome.stored) == 6
    assert outcome.starts[schedule.Replica("kd")] == 2
    assert outcome.makespan_s >= 30  # the retry came after the deadline, not before


def test_a_model_that_fits_no_node_fails_its_cells_and_the_others_run() -> None:
    models = [{"name": "huge", "source": "org/h", "serve": {"tensor_parallel_size": 8}}, TEACHER_KD[1]]
    models[1] = {**models[1], "teacher": "huge"}
    outcome = run_dispatch(make_config(models, [{"name": "task"}]), FakeCluster({"a": 4, "b": 4}))
    assert {cell.model for cell, _, _ in outcome.failed} == {"huge"} and len(outcome.failed) == 3
    assert all("needs 8 GPUs on one node; the largest node has 4" in message for _, _, message in outcome.failed)
    assert {cell.model for cell in outcome.stored} == {"kd"} and len(outcome.stored) == 3
    assert schedule.Replica("huge") not in outcome.starts


# -- longest first, replicas -----------------------------------------------------------------------------

SIZES = {"t1": 10, "t2": 40, "t3": 20, "t4": 30, "t5": 50}  # documents; each cell takes its documents in seconds


def sized_tasks() -> list[dict]:
    return [{"name": name, "limit": documents, "max_gen_toks": 1} for name, documents in SIZES.items()]


def by_documents(model: str, method: str, target: str | None) -> float:
    return float(SIZES[target]) if method == "evaluate" else 1.0


def eval_starts(outcome: Outcome) -> list[tuple[float, str, str]]:
    return [(t, str(replica), target) for t, replica, method, target in outcome.log if method == "evaluate"]


def test_a_models_evals_run_longest_first() -> None:
    config = make_config(TEACHER_KD[:1], sized_tasks(), workloads=[])
    outcome = run_dispatch(config, FakeCluster({"a": 1}, durations_s=by_documents))
    assert [target for _, _, target in eval_starts(outcome)] == ["t5", "t2", "t4", "t3", "t1"]


def test_replicas_share_a_models_evals_longest_first_and_perf_stays_on_the_primary() -> None:
    models = [{"name": "teacher", "source": "org/t", "serve": {"replicas": 2}}]
    config = make_config(models, sized_tasks(), workloads=[{"name": "w", "repeats": 3}])
    outcome = run_dispatch(config, FakeCluster({"a": 4}, durations_s=by_documents))
    assert outcome.failed == [] and len(outcome.stored) == 8
    assert outcome.starts == {schedule.Replica("teacher", 0): 1, schedule.Replica("teacher", 1): 1}
    # LPT on two servers (after a 1 s start): 50 | 40, then 30 after the 40, 20 after the 50, and 10 on
    # whichever is free first at 71: 81 s for 150 s of work on two servers.
    assert sorted(eval_starts(outcome)) == [
        (1, "teacher", "t5"), (1, "teacher#1", "t2"), (41, "teacher#1", "t4"), (51, "teacher", "t3"),
        (71, "teacher#1", "t1"),
    ]  # fmt: skip
    perf = [replica for _, replica, method, _ in outcome.log if method == "measure"]
    assert perf == [schedule.Replica("teacher", 0)] * 3
    assert outcome.makespan_s == 1 + 80 + 3  # start, evals, three 1 s trials on the primary


def test_fixed_replicas_never_outnumber_the_eval_cells() -> None:
    models = [{"name": "teacher", "source": "org/t", "serve": {"replicas": 8}}]
    outcome = run_dispatch(make_config(models, sized_tasks()[:2]), FakeCluster({"a": 8}, durations_s=by_documents))
    assert len(outcome.starts) == 2


def test_without_gpus_replicas_are_ignored() -> None:
    models = [{"name": "teacher", "source": "org/t", "serve": {"replicas": 3}}]
    outcome = run_dispatch(make_config(models, sized_tasks()), FakeCluster(CPU, durations_s=by_documents))
    assert outcome.starts == {schedule.Replica("teacher"): 1}


# -- a mixed plan on eight GPUs: makespan against the lower bound -----------------------------------------


# The plan of the scheduling simulation (tests/integration/test_scheduling.py): four task sizes, a TP-4
# teacher, three TP-1 students of which s1 is slow; each cell takes documents × 16 tokens / the model's rate.
MIXED_TASKS = {"sim_a": 96, "sim_b": 80, "sim_c": 64, "sim_d": 16}  # documents
TOKENS_PER_S = {"teacher": 100.0, "s1": 60.0, "s2": 120.0, "s3": 120.0}


def mixed_config(student_replicas: int | str = "auto", teacher_replicas: int | str = "auto"):
    models = [
        {"name": "teacher", "source": "org/t", "serve": {"tensor_parallel_size": 4, "replicas": teacher_replicas}}
    ]
    models += [
        {"name": name, "source": f"org/{name}", "teacher": "teacher", "serve": {"replicas": student_replicas}}
        for name in ("s1", "s2", "s3")
    ]
    tasks = [{"name": name, "limit": documents, "max_gen_toks": 16} for name, documents in MIXED_TASKS.items()]
    return make_config(models, tasks, workloads=[])


def mixed_durations(model: str, method: str, target: str | None) -> float:
    if method == "start":
        return 2.0
    return MIXED_TASKS[target] * 16 / TOKENS_PER_S[model]


def lower_bound_s(gpus: int) -> float:
    """The work no schedule avoids, each model's first server start and every eval cell, as in the scheduling
    simulation: max(Σ GPU-seconds / GPUs, longest chain of a start and a cell)."""
    size = {model: 4 if model == "teacher" else 1 for model in TOKENS_PER_S}
    start, cells = (
        mixed_durations("", "start", None),
        [(m, mixed_durations(m, "evaluate", t)) for m in TOKENS_PER_S for t in MIXED_TASKS],
    )
    work = sum(size[m] * seconds for m, seconds in cells) + sum(size[m] * start for m in size)
    return max(work / gpus, start + max(seconds for _, seconds in cells))


def test_mixed_plan_with_auto_replicas_is_within_15_percent_of_the_lower_bound() -> None:
    outcome = run_dispatch(mixed_config(), FakeCluster({"a": 8}, durations_s=mixed_durations))
    ratio = outcome.makespan_s / lower_bound_s(8)
    one_each = run_dispatch(mixed_config(1, 1), FakeCluster({"a": 8}, durations_s=mixed_durations))
    without = one_each.makespan_s / lower_bound_s(8)
    print(f"virtual makespan / lower bound: {ratio:.3f} with auto replicas, {without:.3f} with one server each")
    assert ratio <= 1.15
    assert one_each.makespan_s > outcome.makespan_s
    assert sum(replica.model != "teacher" for replica in outcome.starts) > 3  # students got extra servers


@pytest.mark.parametrize("nodes", [{"a": 8}, {"a": 4, "b": 4}])
def test_auto_replicas_take_the_gpus_no_first_server_needs_at_once(nodes: dict[str, float]) -> None:
    outcome = run_dispatch(mixed_config(), FakeCluster(nodes, durations_s=mixed_durations))
    at_launch = sorted(str(replica) for t, replica, method, _ in outcome.log if method == "start" and t == 0)
    # Four first servers take 7 of 8 GPUs; the 8th goes to the student with the most queued work per server
    # by the config's sizes (all equal here: the first in config order).
    assert at_launch == ["s1", "s1#1", "s2", "s3", "teacher"]


def test_a_lost_node_moves_its_cells_to_the_survivors_exactly_once() -> None:
    fake = FakeCluster({"a": 4, "b": 4}, durations_s=mixed_durations, lost_at_s=(20.0, "b"))
    outcome = run_dispatch(mixed_config(), fake)
    assert outcome.failed == [] and len(outcome.stored) == len(MIXED_TASKS) * len(TOKENS_PER_S)
    assert [t for t, _, method, _ in outcome.log if method == "start" and t >= 20]  # replacements on node a


def test_a_lost_node_that_leaves_a_model_no_room_fails_its_cells_instead_of_waiting_forever() -> None:
    fake = FakeCluster({"a": 2, "b": 4}, durations_s=mixed_durations, lost_at_s=(5.0, "b"))
    outcome = run_dispatch(mixed_config(), fake)
    assert {cell.model for cell, _, _ in outcome.failed} == {"teacher"}
    assert all("the largest alive node has 2" in message for _, _, message in outcome.failed)
    assert {cell.model for cell in outcome.stored} == {"s1", "s2", "s3"}


# -- adaptive tasks: chunk cells behind their gates ------------------------------------------------------


def collecting_events(stored: list, failed: list) -> cluster.Events:
    """Events that collect the stored cells and the failed ones with their message, and ignore the rest."""
    return cluster.Events(
        on_started=lambda record: None,
        on_eval=lambda cell, *_: stored.append(cell),
        on_perf=lambda cell, *_: stored.append(cell),
        on_failed=lambda cell, attempts, message: failed.append((cell, message)),
        on_retry=lambda cell, attempts, message: None,
        on_replaced=lambda replica, why: None,
        on_stage=lambda model, what: None,
        billing_for=lambda record: None,
    )


@dataclass
class ChunkedFakeCluster(FakeCluster):
    """The fake cluster, answering every eval chunk with one 0/1 value per document it was sent:
    `value[model]` for every document (a fake of lm-eval's per-document scores)."""

    value: dict = field(default_factory=dict)
    sent: dict = field(default_factory=dict)  # handle -> documents sent with the evaluate call

    def call(self, run: cluster.ModelRun, method: str, *args: object) -> int:
        handle = super().call(run, method, *args)
        self.sent[handle] = args[1] if method == "evaluate" and len(args) > 1 else ()
        return handle

    def result(self, handle: int) -> object:
        call, documents = self.calls[handle], self.sent.pop(handle)
        found = super().result(handle)
        if call.method != "evaluate":
            return found
        return fake_answers(documents, self.value[call.run.model.name])


def fake_answers(documents, value: float) -> tuple[list[EvalScore], list[EvalSample]]:
    """A chunk's rows as lm-eval would give them, every document scored `value`."""
    score = EvalScore("adaptive", "exact_match", "none", 0.0, None, True, len(documents), 0, "fake", "h")
    return [score], [EvalSample("adaptive", doc, "exact_match", "none", value, "", "") for doc in documents]


@dataclass
class ChunkOutcome:
    stored: list
    failed: list  # (cell, message)
    skipped: list


def run_chunked(config, fake: ChunkedFakeCluster) -> ChunkOutcome:
    """Dispatch a plan with adaptive tasks behind their gates; every cell ends stored, failed or skipped
    exactly once, and nothing is left running."""
    stored, failed = [], []
    events = collecting_events(stored, failed)
    cells = build_plan(config)
    dispatcher = cluster.Dispatch.plan(config, cells, events, fake, ChunkGates(config, cells, stored={}))
    dispatcher.run()
    dispatcher.close()
    ended = [c.key for c in stored + dispatcher.skipped] + [cell.key for cell, _ in failed]
    assert sorted(ended) == sorted(c.key for c in cells)
    assert not fake.calls and not fake.placed
    return ChunkOutcome(stored, failed, dispatcher.skipped)


def chunks_run(outcome: ChunkOutcome, model: str) -> list[int]:
    return sorted(c.chunk for c in outcome.stored if c.model == model)


ADAPTIVE = {"name": "adaptive", "limit": 200, "adaptive": {"chunk_documents": 25}}


def test_a_decided_pair_skips_its_remaining_chunks_and_the_servers_stop_only_after_the_last_gate() -> None:
    """teacher and kd agree on every document (non-inferior after some chunks), bad fails every one
    (inferior after its first): bad evaluates one chunk, teacher and kd the same few, none all eight; every
    cell ends stored, failed or skipped exactly once; the teacher's server lives until kd is decided."""
    models = [*TEACHER_KD, {"name": "bad", "source": "org/bad", "teacher": "teacher"}]
    config = make_config(models, [ADAPTIVE], workloads=[])
    fake = ChunkedFakeCluster(nodes={"gpu-node": 4}, value={"teacher": 1.0, "kd": 1.0, "bad": 0.0})
    outcome = run_chunked(config, fake)
    assert not outcome.failed
    assert chunks_run(outcome, "bad") == [0]
    assert chunks_run(outcome, "teacher") == chunks_run(outcome, "kd") == list(range(len(chunks_run(outcome, "kd"))))
    assert 1 < len(chunks_run(outcome, "kd")) < 8
    # Each model's server started once: none was stopped while a gate on its task was pending.
    assert Counter(replica.model for _, replica, method, _ in fake.log if method == "start") == Counter(
        {"teacher": 1, "kd": 1, "bad": 1}
    )


def test_models_that_cannot_all_be_up_at_once_take_turns_chunk_by_chunk_instead_of_waiting_forever() -> None:
    """A TP-4 teacher and a TP-2 student on one 4-GPU node: a server whose next chunk waits for the other
    model's chunk stops, so the other can start; both walk the same chunks until kd is decided."""
    models = [
        {"name": "teacher", "source": "org/t", "serve": {"tensor_parallel_size": 4}},
        {"name": "kd", "source": "org/kd", "teacher": "teacher", "serve": {"tensor_parallel_size": 2}},
    ]
    config = make_config(models, [ADAPTIVE], workloads=[])
    fake = ChunkedFakeCluster(nodes={"gpu-node": 4}, value={"teacher": 1.0, "kd": 1.0})
    outcome = run_chunked(config, fake)
    assert not outcome.failed
    walked = chunks_run(outcome, "kd")
    assert chunks_run(outcome, "teacher") == walked == list(range(len(walked)))
    assert 1 < len(walked) < 8


def test_a_student_whose_server_never_starts_leaves_the_gates_to_its_teacher_and_the_other_student() -> None:
    """s2's server never starts, so its model is given up: its chunks fail, and the gates go on without it
    (teacher and kd walk their chunks until kd is decided) instead of holding theirs forever."""
    models = [*TEACHER_KD, {"name": "s2", "source": "org/s2", "teacher": "teacher"}]
    config = make_config(models, [ADAPTIVE], workloads=[])
    fake = ChunkedFakeCluster(
        nodes={"gpu-node": 4}, value={"teacher": 1.0, "kd": 1.0, "s2": 1.0}, failures={("s2", "start"): math.inf}
    )
    outcome = run_chunked(config, fake)
    assert {cell.model for cell, _ in outcome.failed} == {"s2"}
    assert all("server did not start" in message for _, message in outcome.failed)
    walked = chunks_run(outcome, "kd")
    assert chunks_run(outcome, "teacher") == walked == list(range(len(walked)))
    assert 1 < len(walked) < 8


def test_a_held_chunk_stops_its_server_only_while_another_server_waits_to_start() -> None:
    """TP-2 teacher and kd and a TP-1 bad on 4 GPUs: bad's start waits, so the teacher's server stops when
    its chunk 1 is held (its GPUs let bad run its chunk) and starts again once the gate opens; after bad
    (inferior at once) leaves, teacher and kd fit side by side and keep their servers to the end."""
    models = [
        {"name": "teacher", "source": "org/t", "serve": {"tensor_parallel_size": 2}},
        {"name": "kd", "source": "org/kd", "teacher": "teacher", "serve": {"tensor_parallel_size": 2}},
        {"name": "bad", "source": "org/bad", "teacher": "teacher", "serve": {"tensor_parallel_size": 1}},
    ]
    config = make_config(models, [ADAPTIVE], workloads=[])
    fake = ChunkedFakeCluster(nodes={"gpu-node": 4}, value={"teacher": 1.0, "kd": 1.0, "bad": 0.0})
    outcome = run_chunked(config, fake)
    assert not outcome.failed and chunks_run(outcome, "bad") == [0]
    walked = chunks_run(outcome, "kd")
    assert chunks_run(outcome, "teacher") == walked == list(range(len(walked))) and len(walked) > 2
    starts = Counter(replica.model for _, replica, method, _ in fake.log if method == "start")
    assert starts == Counter({"teacher": 2, "kd": 2, "bad": 1})


def test_a_resume_starts_no_server_for_a_model_whose_chunks_only_wait_on_a_gate() -> None:
    """The student's last chunk was lost, the teacher's stored: the resume runs that one chunk, which decides
    the pair, so the teacher's next chunk (held behind the gate) is skipped and its server never starts."""
    config = make_config(TEACHER_KD, [ADAPTIVE], workloads=[])
    values = {"teacher": 1.0, "kd": 1.0}
    walked = len(chunks_run(run_chunked(config, ChunkedFakeCluster(nodes={"gpu-node": 4}, value=values)), "kd"))
    cells = build_plan(config)
    lost = next(cell for cell in cells if (cell.model, cell.chunk) == ("kd", walked - 1))
    stored = {
        cell.key: chunk_values(*fake_answers(cell.documents, values[cell.model]))
        for cell in cells
        if cell.chunk < walked and cell != lost
    }
    ran, failed = [], []
    fake = ChunkedFakeCluster(nodes={"gpu-node": 4}, value=values)
    pending = [cell for cell in cells if cell.key not in stored]
    gates = ChunkGates(config, cells, stored)
    dispatcher = cluster.Dispatch.plan(config, pending, collecting_events(ran, failed), fake, gates)
    dispatcher.run()
    dispatcher.close()
    assert ran == [lost] and not failed and len(dispatcher.skipped) == len(pending) - 1
    assert Counter(replica.model for _, replica, method, _ in fake.log if method == "start") == Counter({"kd": 1})


# -- adaptive workloads: perf blocks behind their gate -----------------------------------------------------


@dataclass
class MeasuringFakeCluster(FakeCluster):
    """The fake cluster, answering a model's n-th perf trial with one summary at `tps[model][n]` output
    tokens/s (a fake of the load generator's measurement)."""

    tps: dict = field(default_factory=dict)
    trials: Counter = field(default_factory=Counter)

    def result(self, handle: int) -> object:
        call = self.calls[handle]
        found = super().result(handle)
        if call.method != "measure":
            return found
        model = call.run.model.name
        rate = self.tps[model][self.trials[model]]
        self.trials[model] += 1
        return [], [make_record(PerfSummary, workload=call.target, level=1.0, output_tokens_per_s=rate)], []


def test_a_decided_workload_skips_its_remaining_blocks_for_every_model() -> None:
    """kd is twice as fast as the teacher in every block: the ratio is decided after a few of the eight
    blocks, and both models skip the rest; every cell ends stored or skipped exactly once."""
    workload = {"name": "w", "repeats": 8, "adaptive": {"min_blocks": 2}}
    config = make_config(TEACHER_KD, [], workloads=[workload])
    rates = np.exp(np.random.default_rng(0).normal(0, 0.05, (2, 8)))
    fake = MeasuringFakeCluster(nodes=CPU, tps={"teacher": 100 * rates[0], "kd": 200 * rates[1]})
    stored, failed = [], []
    events = collecting_events(stored, failed)
    cells = build_plan(config)
    dispatcher = cluster.Dispatch.plan(config, cells, events, fake, block_gates=BlockGates(config, cells, {}))
    dispatcher.run()
    dispatcher.close()
    assert sorted([c.key for c in stored + dispatcher.skipped] + [c.key for c, _ in failed]) == sorted(
        c.key for c in cells
    )
    assert not failed and not fake.calls and not fake.placed
    blocks_run = {name: sorted(c.block for c in stored if c.model == name) for name in ("teacher", "kd")}
    assert blocks_run["teacher"] == blocks_run["kd"] == list(range(len(blocks_run["kd"])))
    assert 2 < len(blocks_run["kd"]) < 8
    assert {c.block for c in dispatcher.skipped} == set(range(len(blocks_run["kd"]), 8))
