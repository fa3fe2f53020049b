"""A live adaptive run end to end: `distill-bench run` with embedded Ray and the toy pair behind real vLLM CPU
servers, two adaptive tasks (`tasks[].adaptive`) cut into chunk cells behind gates (bench/gate.py) and an
adaptive workload (`workloads[].adaptive`) whose blocks stop behind theirs (bench/blockgate.py). One run is
read by every test: which chunks it stored and with which documents, that the gate's rule stopped it where
the stored rows say it must, that `compare` reports the confidence sequence over the paired documents, what
it stored in sequential.parquet and printed; then the same command again runs nothing, and after the
student's last chunk is deleted it runs that one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import adaptive, blockgate, chunks, gate, store
from bench.adaptive import ReplayKind
from bench.compare import ComparisonRow, IntervalMethod, Verdict, compare_results
from bench.config import BenchConfig, load_config
from bench.plan import Cell, build_plan
from bench.report import to_json
from bench.sequential import sequential_quality

from .conftest import REPO, TOY_MODELS, TOY_SERVE

pytestmark = pytest.mark.slow
TASKS = ("toy_reverse", "toy_sort")
WORKLOAD, REPEATS, MIN_BLOCKS = "short-load", 4, 2
TEACHER, STUDENT = "toy-teacher", "toy-student-kd"
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Invocation:
    """One `distill-bench run` of the config: its exit code and stdout."""

    exit_code: int
    stdout: str

    @property
    def last_line(self) -> str:
        return self.stdout.rstrip("\n").splitlines()[-1]


@dataclass(frozen=True)
class AdaptiveRun:
    path: Path
    config: BenchConfig
    run_dir: Path
    first: Invocation
    cells: dict[str, Cell]  # every planned chunk cell, by key
    stored: frozenset[str]  # the chunk cells the first run stored
    perf: frozenset[str]  # the perf cells (trials) it stored

    @property
    def every_cell(self) -> frozenset[str]:
        return self.stored | self.perf


def adaptive_config(root: Path) -> dict:
    serve = TOY_SERVE.model_dump(mode="json")
    toy_tasks = str(REPO / "configs" / "tasks" / "toy")
    return {
        "run": {"name": "adaptive-toy", "results_dir": str(root / "results"), "seed": 0, "cell_retries": 1},
        "hardware": {
            "device_type": "cpu-core",
            "prices": str(REPO / "configs" / "prices.yaml"),
            "devices_per_model": 1,
        },
        "models": [
            {"name": TEACHER, "source": str(TOY_MODELS / "teacher"), "serve": serve},
            {"name": STUDENT, "source": str(TOY_MODELS / "student-kd"), "teacher": TEACHER, "serve": serve},
        ],
        "tasks": [
            {
                "name": t,
                "include_path": toy_tasks,
                "limit": 200,
                "max_gen_toks": 16,
                "adaptive": {"chunk_documents": 25},
            }
            for t in TASKS
        ],
        "workloads": [
            {
                "name": WORKLOAD,
                "mode": "concurrency",
                "levels": [4],
                "num_requests": 16,
                "warmup_requests": 2,
                "prompt_tokens": {"kind": "fixed", "mean": 8},
                "output_tokens": {"kind": "fixed", "mean": 16},
                "repeats": REPEATS,
                "adaptive": {"min_blocks": MIN_BLOCKS},
            }
        ],
        "compare": {"retention_margin": 0.05, "confidence": 0.95},
    }


def distill_bench_run(path: Path) -> Invocation:
    """The real CLI in a process of its own, as a user runs it from the repository root."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", str(path)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return Invocation(done.returncode, done.stdout)


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory: pytest.TempPathFactory) -> AdaptiveRun:
    root = tmp_path_factory.mktemp("adaptive")
    path = root / "adaptive.yaml"
    path.write_text(yaml.safe_dump(adaptive_config(root)))
    first = distill_bench_run(path)
    config = load_config(path)
    run_dir = config.run_dir()
    cells = {cell.key: cell for cell in build_plan(config) if cell.chunk is not None}
    done = frozenset(store.done_cell_keys(run_dir))
    return AdaptiveRun(path, config, run_dir, first, cells, done & cells.keys(), done - cells.keys())


def stored_chunks(run: AdaptiveRun, model: str, task: str) -> list[int]:
    return sorted(c.chunk for key, c in run.cells.items() if key in run.stored and (c.model, c.target) == (model, task))


def task_config(run: AdaptiveRun, name: str):
    return next(task for task in run.config.tasks if task.name == name)


def adaptive_rows(run_dir: Path) -> list[ComparisonRow]:
    return [row for row in compare_results(run_dir) if row.task in TASKS]


def test_the_run_succeeds_and_ends_with_its_summary_line(adaptive_run: AdaptiveRun) -> None:
    first = adaptive_run.first
    assert first.exit_code == 0, first.stdout
    cells = len(adaptive_run.every_cell)
    assert first.last_line.startswith(f"summary: adaptive-toy: {cells} cells run, 0 already stored")
    assert first.last_line.endswith("exit 0")


def test_eval_cells_are_chunks_each_a_prefix_and_some_task_stops_early(adaptive_run: AdaptiveRun) -> None:
    assert adaptive_run.stored and all(cell.kind == "eval" for cell in adaptive_run.cells.values())
    stopped_early = []
    for task in TASKS:
        total = chunks.chunk_count(task_config(adaptive_run, task))
        for model in (TEACHER, STUDENT):
            found = stored_chunks(adaptive_run, model, task)
            assert found == list(range(len(found))) and 0 < len(found) <= total, (model, task, found)
            stopped_early.append(len(found) < total)
    assert any(stopped_early)


def test_each_chunk_evaluated_exactly_its_documents(adaptive_run: AdaptiveRun) -> None:
    samples = store.read_run_table(adaptive_run.run_dir, "eval_samples", columns=("cell_key", "doc_id")).to_pylist()
    scores = store.read_run_table(adaptive_run.run_dir, "eval_scores", columns=("cell_key", "n")).to_pylist()
    for key in adaptive_run.stored:
        cell = adaptive_run.cells[key]
        expected = chunks.chunk_documents(
            task_config(adaptive_run, cell.target), adaptive_run.config.run.seed, cell.chunk
        )
        assert cell.documents == expected
        assert {row["doc_id"] for row in samples if row["cell_key"] == key} == set(expected)
        assert {row["n"] for row in scores if row["cell_key"] == key} == {len(expected)}


def test_the_teacher_evaluates_every_chunk_its_student_does(adaptive_run: AdaptiveRun) -> None:
    for task in TASKS:
        assert set(stored_chunks(adaptive_run, STUDENT, task)) <= set(stored_chunks(adaptive_run, TEACHER, task))


def test_the_gate_stopped_at_the_first_decisive_chunk_and_skips_the_rest(adaptive_run: AdaptiveRun) -> None:
    """Rebuilt from the stored rows (as a resume does), the gate decides the student at its last stored
    chunk and not before, and leaves every chunk not stored skipped."""
    planned = list(adaptive_run.cells.values())
    gates = gate.gates_for(adaptive_run.config, planned, adaptive_run.stored, adaptive_run.run_dir)
    assert gates is not None
    compare = adaptive_run.config.compare
    for name in TASKS:
        task = task_config(adaptive_run, name)
        last = len(stored_chunks(adaptive_run, STUDENT, name)) - 1
        positions = chunks.evaluation_positions(task, adaptive_run.config.run.seed)

        def decided_after(chunk: int, task=task, name=name, positions=positions) -> bool:
            seen = [
                [gates.values[c.key] for c in planned if (c.model, c.target) == (m, name) and c.chunk <= chunk]
                for m in (TEACHER, STUDENT)
            ]
            return gate.decided(*seen, positions, task, compare.retention_margin, compare.confidence)

        if last + 1 < chunks.chunk_count(task):
            assert decided_after(last)
        assert last == 0 or not decided_after(last - 1)
        for cell in planned:
            if cell.target == name and cell.key not in adaptive_run.stored:
                assert gates.state(cell) == "skipped", cell


def test_compare_reads_the_adaptive_tasks_with_the_confidence_sequence(adaptive_run: AdaptiveRun) -> None:
    """Each adaptive row: the confidence sequence over the documents both models answered, and the verdict
    the gate's rule (`sequential_quality`) gives at the stop, decisive where the run stopped early."""
    run_dir, config = adaptive_run.run_dir, adaptive_run.config
    rows = adaptive_rows(run_dir)
    assert {row.task for row in rows} == set(TASKS)
    samples = store.read_run_table(run_dir, "eval_samples").to_pylist()
    for row in rows:
        task = task_config(adaptive_run, row.task)
        values = {}
        for model in (TEACHER, STUDENT):
            keys = {key for key in adaptive_run.stored if adaptive_run.cells[key].model == model}
            values[model] = {
                s["doc_id"]: s["value"]
                for s in samples
                if s["cell_key"] in keys and (s["task"], s["metric"], s["filter"]) == (row.task, row.metric, row.filter)
            }
        positions = chunks.evaluation_positions(task, config.run.seed)
        both = sorted(values[TEACHER].keys() & values[STUDENT].keys(), key=positions.__getitem__)
        assert row.interval_method == IntervalMethod.CONFIDENCE_SEQUENCE
        assert row.n_paired == len(both) == len(values[STUDENT])
        stop = sequential_quality(
            np.array([values[TEACHER][doc] for doc in both]),
            np.array([values[STUDENT][doc] for doc in both]),
            task.adaptive.chunk_documents,
            config.compare.retention_margin,
            config.compare.confidence,
            bool(row.higher_is_better),
            task.limit,
        )
        assert (stop.verdict, stop.documents_used) == (row.verdict, row.n_paired)
        assert (stop.diff_ci_low, stop.diff_ci_high) == pytest.approx((row.diff_ci_low, row.diff_ci_high))
        if row.n_paired < task.limit:
            assert row.verdict != Verdict.INCONCLUSIVE


def test_the_run_stores_its_live_rows_and_ends_with_documents_and_device_seconds_saved(
    adaptive_run: AdaptiveRun,
) -> None:
    """sequential.parquet holds each adaptive task as it ran (the leaderboard's "docs to decision" reads it),
    and the run's output says what that evaluated and saved."""
    run_dir = adaptive_run.run_dir
    compared = {(row.task, row.metric, row.filter): row for row in adaptive_rows(run_dir)}
    rows = adaptive.stored_rows(run_dir.parent)  # stored by the run: the leaderboard computes nothing
    live = {(row.task, row.metric, row.filter): row for row in rows if row.kind == ReplayKind.LIVE}
    assert live.keys() == compared.keys()
    assert {row.kind for row in rows} == {ReplayKind.LIVE, ReplayKind.PERF}  # no task was left to replay
    for key, row in live.items():
        limit = task_config(adaptive_run, key[0]).limit
        assert (row.documents_used, row.documents_full) == (compared[key].n_paired, limit)
        assert row.sequential_verdict == compared[key].verdict
        assert row.teacher_eval_device_s > 0 and row.student_eval_device_s > 0
    used = {task: max(row.documents_used for key, row in live.items() if key[0] == task) for task in TASKS}
    share = adaptive.docs_to_decision(rows)[("adaptive-toy", TEACHER, STUDENT)]
    assert share == sum(used.values()) / sum(task_config(adaptive_run, task).limit for task in TASKS) < 1

    (savings,) = adaptive.run_savings(rows)
    assert 0 < savings.device_s_saved.median < savings.device_s_total
    (line,) = [line for line in adaptive_run.first.stdout.splitlines() if line.startswith("adaptive tasks: ")]
    assert line.startswith(f"adaptive tasks: {2 * sum(used.values())} of {savings.evaluations_full} documents")
    assert f"about {savings.device_s_saved.median:.1f} more eval device-seconds" in line


def test_the_adaptive_workload_runs_the_same_blocks_for_every_model_and_says_how_many(
    adaptive_run: AdaptiveRun,
) -> None:
    """Every model ran blocks 0 .. B-1, at least `min_blocks`; the blocks not run are the ones the block gate,
    rebuilt from the stored trials, skips; compare pairs B blocks and the run's output says B of REPEATS."""
    config, run_dir = adaptive_run.config, adaptive_run.run_dir
    rows = store.read_run_table(run_dir, "perf_summary", columns=("model", "block")).to_pylist()
    blocks = {model: sorted({row["block"] for row in rows if row["model"] == model}) for model in (TEACHER, STUDENT)}
    ran = len(blocks[STUDENT])
    assert blocks[TEACHER] == blocks[STUDENT] == list(range(ran)) and MIN_BLOCKS <= ran <= REPEATS
    planned = [cell for cell in build_plan(config) if cell.kind == "perf"]
    gates = blockgate.block_gates_for(config, planned, adaptive_run.perf, run_dir)
    assert gates is not None
    assert all(gates.state(cell) == "skipped" for cell in planned if cell.key not in adaptive_run.perf)
    assert {row.n_blocks for row in compare_results(run_dir) if row.workload == WORKLOAD} == {ran}
    assert f"adaptive workloads, blocks run: {WORKLOAD} {ran} of {REPEATS} " in adaptive_run.first.stdout


def test_a_second_run_runs_nothing_and_compares_identically(adaptive_run: AdaptiveRun) -> None:
    before = to_json(compare_results(adaptive_run.run_dir))
    again = distill_bench_run(adaptive_run.path)
    assert again.exit_code == 0, again.stdout
    cells = len(adaptive_run.every_cell)
    assert again.last_line.startswith(f"summary: adaptive-toy: 0 cells run, {cells} already stored")
    assert store.done_cell_keys(adaptive_run.run_dir) == adaptive_run.every_cell
    assert to_json(compare_results(adaptive_run.run_dir)) == before


def test_a_resume_reruns_exactly_the_students_deleted_last_chunk(adaptive_run: AdaptiveRun) -> None:
    """Runs last: it deletes a stored chunk, and the run puts it back."""
    run_dir = adaptive_run.run_dir
    last = max(
        (adaptive_run.cells[key] for key in adaptive_run.stored if adaptive_run.cells[key].model == STUDENT),
        key=lambda cell: (cell.target, cell.chunk),
    )
    verdicts = {(row.task, row.metric): (row.verdict, row.n_paired) for row in adaptive_rows(run_dir)}
    store.remove_files([store.cell_path(run_dir, table, last.key) for table in ("eval_scores", "eval_samples")])
    resumed = distill_bench_run(adaptive_run.path)
    assert resumed.exit_code == 0, resumed.stdout
    stored = len(adaptive_run.every_cell) - 1
    assert resumed.last_line.startswith(f"summary: adaptive-toy: 1 cell run, {stored} already stored")
    assert store.done_cell_keys(run_dir) == adaptive_run.every_cell
    assert {(row.task, row.metric): (row.verdict, row.n_paired) for row in adaptive_rows(run_dir)} == verdicts
