"""Trial order and the dispatch decision (`bench.schedule`), driven with fake worker states: no Ray, no clock."""

from __future__ import annotations

import heapq
import statistics
from collections import Counter

from bench.config import TaskConfig
from bench.plan import Cell
from bench.schedule import (
    DEFAULT_TOKENS_PER_DOCUMENT,
    Assignment,
    EvalTiming,
    ModelLoad,
    Replica,
    WorkerState,
    block_permutation,
    estimate,
    eval_work_tokens,
    fits_at_once,
    free_after,
    gpu_seconds,
    initial_replicas,
    lpt_order,
    next_cells,
    perf_order,
    releasable,
    replica_to_add,
    replicas_to_add,
    run_order,
    work_share,
)

MODELS = ("teacher", "kd", "label")


def perf(model: str, block: int, workload: str = "w") -> Cell:
    return Cell("perf", model, workload, f"{workload}-{model}-{block}", block)


def evals(model: str, task: str = "t") -> Cell:
    return Cell("eval", model, task, f"{task}-{model}")


# -- order --------------------------------------------------------------------------------------------


def test_block_permutation_is_seeded_and_a_permutation() -> None:
    first = block_permutation(MODELS, seed=0, workload="w", block=0)
    assert sorted(first) == sorted(MODELS)
    assert block_permutation(MODELS, seed=0, workload="w", block=0) == first  # stable across calls and processes
    orders = {tuple(block_permutation(MODELS, 0, "w", block)) for block in range(40)}
    assert len(orders) == 6  # every order of three models turns up: blocks really are shuffled


def test_block_permutation_depends_on_seed_workload_and_block() -> None:
    def orders(**changed: object) -> list[tuple[str, ...]]:
        args = {"seed": 0, "workload": "w"} | changed
        return [tuple(block_permutation(MODELS, block=b, **args)) for b in range(10)]

    assert orders() != orders(seed=1)
    assert orders() != orders(workload="v")


def test_block_permutation_pinned() -> None:
    """The order of a seed is part of the protocol a re-run repeats; changing it is a deliberate act."""
    assert [block_permutation(MODELS, 0, "short-chat", b) for b in range(3)] == PINNED_ORDERS


PINNED_ORDERS = [["label", "teacher", "kd"], ["kd", "teacher", "label"], ["teacher", "kd", "label"]]


def test_perf_order_runs_block_by_block_each_in_its_permutation() -> None:
    cells = [perf(model, block) for block in (0, 1, 2) for model in MODELS]
    ordered = perf_order(list(reversed(cells)), seed=0, models=MODELS)
    assert [c.block for c in ordered] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for block in (0, 1, 2):
        assert [c.model for c in ordered if c.block == block] == block_permutation(MODELS, 0, "w", block)


def test_perf_order_of_a_resumed_block_keeps_the_permutation() -> None:
    """The permutation starts from the config's models, not from whichever cells are still pending."""
    full = [c.model for c in perf_order([perf(m, 4) for m in MODELS], 0, MODELS)]
    pending = [c.model for c in perf_order([perf(m, 4) for m in MODELS if m != full[1]], 0, MODELS)]
    assert pending == [full[0], full[2]]


def test_run_order_puts_evals_first() -> None:
    cells = [perf("teacher", 0), evals("teacher"), perf("kd", 0), evals("kd")]
    assert [c.kind for c in run_order(cells, 0, MODELS)] == ["eval", "eval", "perf", "perf"]


# -- next_cells ---------------------------------------------------------------------------------------


def servers(**states: WorkerState) -> dict[Replica, WorkerState]:
    """One server per model (`kd="idle"`), or several (`kd_1="busy"` is replica 1 of kd)."""
    replicas = {}
    for name, state in states.items():
        model, _, index = name.partition("_")
        replicas[Replica(model, int(index or 0))] = state
    return replicas


def submitted(queue: list[Cell], states: dict[str, WorkerState], exclusive: bool, in_order: bool = True) -> list[Cell]:
    """The cells `next_cells` submits, each checked to go to an idle server of its model."""
    assignments = next_cells(queue, servers(**states), exclusive, in_order)
    for assignment in assignments:
        assert assignment.replica.model == assignment.cell.model
        assert servers(**states)[assignment.replica] == "idle"
    return [assignment.cell for assignment in assignments]


def test_shared_cpus_run_one_cell_at_a_time_evals_first() -> None:
    queue = run_order([evals("teacher"), evals("kd"), perf("teacher", 0), perf("kd", 0)], 0, MODELS)
    idle: dict[str, WorkerState] = {"teacher": "idle", "kd": "idle"}
    assert submitted(queue, idle, exclusive=True) == [evals("teacher")]
    assert submitted(queue, {"teacher": "busy", "kd": "idle"}, exclusive=True) == []


def test_an_eval_may_run_while_another_server_starts_but_a_trial_may_not() -> None:
    queue = [evals("kd"), perf("teacher", 0)]
    assert submitted(queue, {"teacher": "idle", "kd": "starting"}, exclusive=True) == []  # kd's eval first
    queue = [evals("teacher"), perf("teacher", 0)]
    assert submitted(queue, {"teacher": "idle", "kd": "starting"}, exclusive=True) == [evals("teacher")]
    assert submitted(queue[1:], {"teacher": "idle", "kd": "starting"}, exclusive=True) == []


def test_trial_waits_for_every_eval_and_runs_alone() -> None:
    queue = [perf("teacher", 0), perf("kd", 0)]
    assert submitted(queue, {"teacher": "idle", "kd": "busy"}, exclusive=False) == []
    assert submitted(queue, {"teacher": "idle", "kd": "idle"}, exclusive=False) == [perf("teacher", 0)]
    assert submitted([evals("kd"), *queue], {"teacher": "measuring", "kd": "idle"}, exclusive=False) == []


def test_gpus_run_evals_of_different_models_at_once() -> None:
    queue = [evals("teacher", "a"), evals("teacher", "b"), evals("kd", "a"), perf("teacher", 0)]
    chosen = submitted(queue, {"teacher": "idle", "kd": "idle", "label": "starting"}, exclusive=False)
    assert chosen == [evals("teacher", "a"), evals("kd", "a")]


def test_in_order_the_head_trial_waits_for_its_server() -> None:
    queue = [perf("kd", 0), perf("teacher", 0)]
    assert submitted(queue, {"kd": "starting", "teacher": "idle"}, exclusive=False) == []
    relaxed = submitted(queue, {"kd": "starting", "teacher": "idle"}, exclusive=False, in_order=False)
    assert relaxed == [perf("teacher", 0)]


def test_cells_of_a_model_without_a_worker_are_skipped() -> None:
    queue = [evals("kd"), perf("kd", 0), perf("teacher", 0)]
    assert submitted(queue, {"teacher": "idle"}, exclusive=True) == [perf("teacher", 0)]


def test_free_after() -> None:
    assert free_after([4, 1, 1, 1], [8]) == [1]
    assert free_after([4, 1, 1, 1], [4, 4]) == [0, 1]  # first fit, largest first: the teacher fills a node
    assert free_after([4, 4, 1], [4, 4]) is None


def test_fits_at_once() -> None:
    assert fits_at_once([0, 0, 0], [0])
    assert fits_at_once([4, 2, 1, 1], [4, 4])
    assert not fits_at_once([4, 2, 2, 1], [4, 4])
    assert not fits_at_once([8], [4, 4])  # a model's GPUs are on one node


# -- a whole run, simulated ---------------------------------------------------------------------------


def simulate(cells: list[Cell], start_s: dict[str, float], exclusive: bool, in_order: bool = True):
    """Drive next_cells like `cluster.Dispatch` does, with fake workers whose calls take fixed times.

    Returns (finish order, [(time, cells in flight)] after every submission)."""
    queue = run_order(cells, 0, MODELS)
    workers: dict[Replica, WorkerState] = {Replica(model): "starting" for model in start_s}
    events: list[tuple[float, Replica, Cell | None]] = [(t, Replica(model), None) for model, t in start_s.items()]
    heapq.heapify(events)
    now, finished, snapshots, inflight = 0.0, [], [], {}
    while events:
        now, replica, cell = heapq.heappop(events)
        workers[replica] = "idle"
        if cell is not None:
            finished.append(cell)
            del inflight[replica]
        for chosen in next_cells(queue, workers, exclusive, in_order):
            queue.remove(chosen.cell)
            workers[chosen.replica] = "busy" if chosen.cell.kind == "eval" else "measuring"
            inflight[chosen.replica] = chosen.cell
            duration = 3.0 if chosen.cell.kind == "eval" else 1.0
            heapq.heappush(events, (now + duration, chosen.replica, chosen.cell))
        snapshots.append((now, dict(workers), list(inflight.values())))
    assert not queue, "cells left behind"
    return finished, snapshots


def quickstart_cells() -> list[Cell]:
    return [evals(m, t) for m in MODELS for t in ("a", "b")] + [perf(m, b) for b in range(3) for m in MODELS]


def test_simulated_cpu_run_never_overlaps_and_keeps_the_block_order() -> None:
    finished, snapshots = simulate(quickstart_cells(), {"teacher": 5, "kd": 2, "label": 3}, exclusive=True)
    assert Counter(c.kind for c in finished) == {"eval": 6, "perf": 9}
    assert all(len(inflight) <= 1 for _, _, inflight in snapshots)
    for _, workers, inflight in snapshots:
        if any(c.kind == "perf" for c in inflight):
            assert "starting" not in workers.values()
    assert [c.kind for c in finished] == ["eval"] * 6 + ["perf"] * 9
    assert [c for c in finished if c.kind == "perf"] == perf_order(quickstart_cells(), 0, MODELS)


def test_simulated_gpu_run_overlaps_evals_only() -> None:
    finished, snapshots = simulate(quickstart_cells(), {"teacher": 5, "kd": 2, "label": 3}, exclusive=False)
    assert max(len(inflight) for _, _, inflight in snapshots) > 1  # evals ran side by side
    for _, _, inflight in snapshots:
        if any(c.kind == "perf" for c in inflight):
            assert len(inflight) == 1
    assert [c for c in finished if c.kind == "perf"] == perf_order(quickstart_cells(), 0, MODELS)


def test_models_that_do_not_fit_at_once_run_ahead_of_those_waiting_for_gpus() -> None:
    """With in_order=False, a model that is up runs everything it has, so its GPUs free up for the rest."""
    cells = [evals("teacher"), evals("kd"), perf("kd", 0), perf("teacher", 0)]
    queue = run_order(cells, 0, MODELS)
    workers: dict[str, WorkerState] = {"teacher": "idle", "kd": "starting"}
    assert submitted(queue, workers, exclusive=False, in_order=False) == [evals("teacher")]
    queue.remove(evals("teacher"))
    assert submitted(queue, workers, exclusive=False, in_order=False) == [perf("teacher", 0)]
    assert submitted(queue, workers, exclusive=False, in_order=True) == []


# -- replicas ---------------------------------------------------------------------------------------------


def test_every_idle_replica_takes_its_models_next_eval_in_queue_order() -> None:
    queue = [evals("kd", "long"), evals("teacher", "a"), evals("kd", "mid"), evals("kd", "short"), perf("kd", 0)]
    assignments = next_cells(queue, servers(kd="idle", kd_1="busy", kd_2="idle", teacher="idle"), exclusive=False)
    assert assignments == [
        Assignment(evals("kd", "long"), Replica("kd", 0)),
        Assignment(evals("teacher", "a"), Replica("teacher", 0)),
        Assignment(evals("kd", "mid"), Replica("kd", 2)),
    ]


def test_a_models_trials_run_on_its_primary_only() -> None:
    queue = [perf("kd", 0), perf("teacher", 0)]
    assert next_cells(queue, servers(kd="idle", kd_1="idle", teacher="idle"), exclusive=False) == [
        Assignment(perf("kd", 0), Replica("kd", 0))
    ]
    assert submitted(queue, {"kd": "starting", "kd_1": "idle", "teacher": "idle"}, exclusive=False) == []
    # the primary is the lowest index still there: replica 0 gone, replica 1 measures
    assert next_cells(queue, servers(kd_1="idle", kd_2="idle"), exclusive=False) == [
        Assignment(perf("kd", 0), Replica("kd", 1))
    ]


def test_releasable_servers() -> None:
    workers = servers(teacher="idle", kd="idle", kd_1="idle", kd_2="starting", kd_3="busy", label="idle")
    queue = [perf("kd", 0), perf("teacher", 0), evals("teacher", "a")]
    # label has nothing left; kd's extras (idle or starting) have no eval left; the busy one finishes first
    assert releasable(queue, workers) == [Replica("kd", 1), Replica("kd", 2), Replica("label")]
    assert releasable([evals("kd")], servers(kd="busy", kd_1="idle")) == []  # an extra with evals to take
    assert releasable([], servers(kd="starting")) == [Replica("kd")]  # nothing left for a start to do


def test_initial_replicas() -> None:
    assert initial_replicas(4, eval_cells=10, exclusive=False) == 4
    assert initial_replicas(4, eval_cells=2, exclusive=False) == 2  # a cell runs on one server
    assert initial_replicas(4, eval_cells=0, exclusive=False) == 1  # perf only: the primary
    assert initial_replicas("auto", eval_cells=10, exclusive=False) == 1  # grown later, as GPUs free up
    assert initial_replicas(4, eval_cells=10, exclusive=True) == 1  # shared CPUs: one cell at a time anyway


def load(
    model: str, queued: tuple[float | None, ...], servers: int = 1, idle: int = 0, gpus: int = 1, start_s: float = 10.0
):
    return ModelLoad(model, gpus, servers, idle, queued, start_s)


def test_replica_to_add_picks_the_bottleneck_that_fits() -> None:
    loads = [load("teacher", (500.0, 400.0), gpus=4), load("kd", (100.0, 90.0, 80.0)), load("label", (50.0, 40.0))]
    assert replica_to_add(loads, free_gpus=[4]) == "teacher"  # most queued seconds per server
    assert replica_to_add(loads, free_gpus=[2, 2]) == "kd"  # the teacher's four GPUs are on no one node
    assert replica_to_add(loads, free_gpus=[0.5]) is None


def test_replica_to_add_only_where_cells_wait_and_a_start_pays_off() -> None:
    assert replica_to_add([load("kd", (100.0, 90.0), idle=2)], [8]) is None  # idle servers take both
    assert replica_to_add([load("kd", (8.0, 7.0))], [8]) is None  # 15 s shared by two: less than a 10 s start
    assert replica_to_add([load("kd", (30.0, 7.0))], [8]) == "kd"
    assert replica_to_add([load("kd", (None, None))], [8]) == "kd"  # not measured yet: counts as long


def test_replicas_to_add_fills_free_gpus_until_no_cell_waits() -> None:
    # Each model's one server is busy; kd has 4 cells queued (340 s), label 2 (115 s).
    loads = [load("kd", (100.0, 90.0, 80.0, 70.0)), load("label", (60.0, 55.0))]
    # Most queued seconds per server first: kd 340, kd 170, label 115 (above kd's 113); three GPUs free.
    assert replicas_to_add(loads, free_gpus=[2, 1]) == ["kd", "kd", "label"]
    # With room for all, until every queued cell has a server: kd's 4 and label's 2.
    assert Counter(replicas_to_add(loads, free_gpus=[8])) == {"kd": 4, "label": 2}


# -- longest first ----------------------------------------------------------------------------------------


def test_eval_work_tokens() -> None:
    assert eval_work_tokens(TaskConfig(name="t", limit=100, max_gen_toks=16)) == 1600
    assert eval_work_tokens(TaskConfig(name="t", limit=100)) == 100 * DEFAULT_TOKENS_PER_DOCUMENT
    assert eval_work_tokens(TaskConfig(name="gsm8k")) is None  # documents unknown before it runs


def test_estimates_refine_rates_and_unknown_sizes_from_finished_cells() -> None:
    priors = {"a": 1000.0, "b": 4000.0, "c": None}
    assert estimate(priors, []).cell_seconds(evals("kd", "a")) is None  # no rate before a cell finishes
    timings = [EvalTiming("kd", "a", 10.0), EvalTiming("kd", "b", 30.0), EvalTiming("teacher", "a", 40.0)]
    estimates = estimate(priors, timings + [EvalTiming("teacher", "c", 20.0)])
    assert estimates.rates == {"kd": 5000 / 40, "teacher": 1000 / 40}
    assert estimates.cell_seconds(evals("teacher", "b")) == 160.0
    assert estimates.cell_seconds(evals("label", "b")) == 4000 / statistics.median([125, 25])  # others' median
    assert estimates.work["c"] == 20.0 * 25  # learned on the teacher: its seconds × the teacher's rate
    assert estimates.cell_seconds(evals("kd", "c")) == 500 / 125


def test_a_chunk_cell_is_credited_with_its_share_of_the_task() -> None:
    """A chunk of 25 of a task's 200 documents does an eighth of its work: a model's rate is measured on that
    eighth (not on the whole task per chunk), and a queued chunk is estimated at an eighth of the task."""
    limit, size, prior = 200, 25, 6400.0
    chunk = Cell("eval", "kd", "a", "a-kd-0", chunk=0, documents=tuple(range(size)))
    share = work_share(chunk, limit)
    assert share == size / limit and work_share(evals("kd", "a"), limit) == 1.0
    estimates = estimate({"a": prior}, [EvalTiming("kd", "a", 10.0, share)], {"a": limit})
    assert estimates.rates == {"kd": prior * share / 10.0}
    assert estimates.cell_work(chunk) == prior * share and estimates.cell_seconds(chunk) == 10.0
    assert estimates.cell_seconds(evals("kd", "a")) == 10.0 / share
    assert gpu_seconds(chunk, estimates, 2) == 20.0
    learned = estimate({"a": None, "b": prior}, [EvalTiming("kd", "b", 10.0), EvalTiming("kd", "a", 5.0, share)])
    assert learned.work["a"] == 5.0 * prior / 10.0 / share  # the whole task's size, learned from one chunk


def test_lpt_orders_by_gpu_seconds_unknown_sizes_first() -> None:
    priors = {"short": 100.0, "long": 900.0, "unknown": None}
    cells = [evals(m, t) for m in ("teacher", "kd") for t in priors]
    gpus = {"teacher": 4, "kd": 1}
    before = lpt_order(cells, estimate(priors, []), gpus)
    assert [(c.model, c.target) for c in before] == [
        ("teacher", "unknown"), ("kd", "unknown"), ("teacher", "long"), ("kd", "long"), ("teacher", "short"),
        ("kd", "short"),
    ]  # fmt: skip
    # once the teacher ran `unknown` and it was short, it moves behind `long` for the student
    timed = estimate(priors, [EvalTiming("teacher", "long", 90.0), EvalTiming("teacher", "unknown", 2.0)])
    assert [c.target for c in lpt_order(cells, timed, gpus) if c.model == "kd"] == ["long", "short", "unknown"]
    assert gpu_seconds(evals("teacher", "long"), timed, 4) == 360.0
