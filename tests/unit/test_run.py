"""The run's own account: retries and replacements counted and shown as they happen, and the summary line
that ends `distill-bench run`'s output and run.log (its format is shared with the Slurm job log)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bench.cli import app
from bench.config import load_config, parse_config
from bench.cost import load_price_table
from bench.plan import build_plan
from bench.progress import RunProgress
from bench.run import RunOutcome, _Recorder, log_summary
from bench.store import write_cell
from tests.unit.test_config import write_workspace

REPO = Path(__file__).resolve().parents[2]


def outcome(**counts: int) -> RunOutcome:
    fields = {"total": 8, "skipped": 0, "succeeded": 8, "failed": 0} | counts
    return RunOutcome("quickstart", Path("results/quickstart"), **fields)


def test_summary_line_of_a_clean_run() -> None:
    assert outcome().summary_line() == (
        "summary: quickstart: 8 cells run, 0 already stored, 0 failed; 0 retried, 0 servers replaced; "
        "results: results/quickstart; exit 0"
    )


def test_summary_line_says_one_cell_and_one_server_in_the_singular() -> None:
    line = outcome(succeeded=1, skipped=6, failed=1, retried=1, replaced=1).summary_line()
    assert line == (
        "summary: quickstart: 1 cell run, 6 already stored, 1 failed; 1 retried, 1 server replaced; "
        "results: results/quickstart; exit 1"
    )


def test_an_interrupted_run_exits_130_and_counts_the_cells_a_rerun_runs() -> None:
    # 8 cells: 2 stored before, 3 stored now, 1 failed (tried again), 1 chunk a gate stopped (never run).
    interrupted = dataclasses.replace(outcome(skipped=2, succeeded=3, failed=1), interrupted=True, stopped=1)
    assert (interrupted.exit_code, interrupted.left) == (130, 2)
    assert interrupted.summary_line().endswith("; exit 130")


@pytest.mark.parametrize(("failed", "code"), [(0, 0), (1, 1), (3, 1)])
def test_exit_code_is_one_when_any_cell_failed(failed: int, code: int) -> None:
    assert outcome(failed=failed).exit_code == code


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[_Recorder, Console]:
    data = {
        "run": {"name": "r", "results_dir": str(tmp_path)},
        "models": [{"name": "teacher", "source": "org/t"}, {"name": "kd", "source": "org/kd", "teacher": "teacher"}],
        "tasks": [{"name": "task"}],
        "workloads": [{"name": "w", "repeats": 2}],
    }
    config = parse_config(data, source="recorder", base=REPO)
    console = Console(record=True, width=200)
    progress = RunProgress(console)
    prices = load_price_table(REPO / "configs" / "prices.yaml")
    return _Recorder(config, prices, tmp_path / "r", {}, progress, session_id="s"), console


def test_retries_count_cells_and_replacements_count_servers_and_both_show(recorder) -> None:
    recorder, console = recorder
    evaluation, trial = (cell for cell in build_plan(recorder.config) if cell.model == "kd" and cell.block != 1)
    died = "ServerError: vLLM server for kd exited (137) during eval task\n--- server log tail ---"
    recorder.progress.plan(total=6, skipped=0)
    recorder.cell_retried(evaluation, 1, died)
    recorder.server_replaced("kd", died)
    recorder.cell_retried(evaluation, 2, "TimeoutError: again")  # the same cell again: still one cell retried
    recorder.cell_retried(trial, 1, "RuntimeError: boom")

    counted = recorder.outcome(recorder.run_dir, total=6, skipped=0)

    assert (counted.retried, counted.replaced) == (2, 1)
    shown = console.export_text()
    assert "retrying eval kd × task (attempt 1 failed): ServerError: vLLM server for kd exited (137)" in shown
    assert "kd: replacing its worker and server after: ServerError: vLLM server for kd exited (137)" in shown
    assert "server log tail" not in shown  # the terminal gets an error's first line; run.log and failures get it whole


def test_log_summary_appends_the_line_to_run_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "quickstart"
    run_dir.mkdir()
    (run_dir / "run.log").write_text("earlier line\n")
    done = RunOutcome("quickstart", run_dir, total=2, skipped=2, succeeded=0, failed=0)

    log_summary(done)

    lines = (run_dir / "run.log").read_text().splitlines()
    assert lines[0] == "earlier line" and lines[-1].endswith(done.summary_line()) and len(lines) == 2


def test_cli_run_ends_its_output_with_the_summary_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    cells = build_plan(load_config("config.yaml"))
    for cell in cells:  # every cell already stored: the run starts no Ray and no server
        table = "eval_scores" if cell.kind == "eval" else "perf_summary"
        write_cell(tmp_path / "out" / "unit-run", table, cell.key, cell.model, [])

    result = CliRunner().invoke(app, ["run", "config.yaml", "--results-dir", "out"])

    assert result.exit_code == 0, result.output
    expected = (
        f"summary: unit-run: 0 cells run, {len(cells)} already stored, 0 failed; 0 retried, 0 servers replaced; "
        "results: out/unit-run; exit 0"
    )
    assert result.stdout.splitlines()[-1] == expected
    assert (tmp_path / "out" / "unit-run" / "run.log").read_text().splitlines()[-1].endswith(expected)
