"""Trial order and the dispatch decision (`bench.schedule`), driven with fake worker states: no Ray, no clock."""

from __future__ import annotations

import heapq
from collections import Counter

from bench.plan import Cell
from bench.schedule import WorkerState, block_permutation, fits_at_once, next_cells, perf_order, run_order

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


def test_shared_cpus_run_one_cell_at_a_time_evals_first() -> None:
    queue = run_order([evals("teacher"), evals("kd"), perf("teacher", 0), perf("kd", 0)], 0, MODELS)
    idle: dict[str, WorkerState] = {"teacher": "idle", "kd": "idle"}
    assert next_cells(queue, idle, exclusive=True) == [evals("teacher")]
    assert next_cells(queue, {"teacher": "busy", "kd": "idle"}, exclusive=True) == []


def test_an_eval_may_run_while_another_server_starts_but_a_trial_may_not() -> None:
    queue = [evals("kd"), perf("teacher", 0)]
    assert next_cells(queue, {"teacher": "idle", "kd": "starting"}, exclusive=True) == []  # kd's eval first
    queue = [evals("teacher"), perf("teacher", 0)]
    assert next_cells(queue, {"teacher": "idle", "kd": "starting"}, exclusive=True) == [evals("teacher")]
    assert next_cells(queue[1:], {"teacher": "idle", "kd": "starting"}, exclusive=True) == []


def test_trial_waits_for_every_eval_and_runs_alone() -> None:
    queue = [perf("teacher", 0), perf("kd", 0)]
    assert next_cells(queue, {"teacher": "idle", "kd": "busy"}, exclusive=False) == []
    assert next_cells(queue, {"teacher": "idle", "kd": "idle"}, exclusive=False) == [perf("teacher", 0)]
    assert next_cells([evals("kd"), *queue], {"teacher": "measuring", "kd": "idle"}, exclusive=False) == []


def test_gpus_run_evals_of_different_models_at_once() -> None:
    queue = [evals("teacher", "a"), evals("teacher", "b"), evals("kd", "a"), perf("teacher", 0)]
    chosen = next_cells(queue, {"teacher": "idle", "kd": "idle", "label": "starting"}, exclusive=False)
    assert chosen == [evals("teacher", "a"), evals("kd", "a")]


def test_in_order_the_head_trial_waits_for_its_server() -> None:
    queue = [perf("kd", 0), perf("teacher", 0)]
    assert next_cells(queue, {"kd": "starting", "teacher": "idle"}, exclusive=False) == []
    relaxed = next_cells(queue, {"kd": "starting", "teacher": "idle"}, exclusive=False, in_order=False)
    assert relaxed == [perf("teacher", 0)]


def test_cells_of_a_model_without_a_worker_are_skipped() -> None:
    queue = [evals("kd"), perf("kd", 0), perf("teacher", 0)]
    assert next_cells(queue, {"teacher": "idle"}, exclusive=True) == [perf("teacher", 0)]


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
    workers: dict[str, WorkerState] = {model: "starting" for model in start_s}
    events = [(t, model, None) for model, t in start_s.items()]
    heapq.heapify(events)
    now, finished, snapshots, inflight = 0.0, [], [], {}
    while events:
        now, model, cell = heapq.heappop(events)
        workers[model] = "idle"
        if cell is not None:
            finished.append(cell)
            del inflight[model]
        for chosen in next_cells(queue, workers, exclusive, in_order):
            queue.remove(chosen)
            workers[chosen.model] = "busy" if chosen.kind == "eval" else "measuring"
            inflight[chosen.model] = chosen
            heapq.heappush(events, (now + (3.0 if chosen.kind == "eval" else 1.0), chosen.model, chosen))
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
    assert next_cells(queue, workers, exclusive=False, in_order=False) == [evals("teacher")]
    queue.remove(evals("teacher"))
    assert next_cells(queue, workers, exclusive=False, in_order=False) == [perf("teacher", 0)]
    assert next_cells(queue, workers, exclusive=False, in_order=True) == []
