"""The `distill-bench` command: validate and plan on a valid workspace, and no heavy imports on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.config import load_config
from bench.plan import build_plan
from tests.unit.test_config import listing, setting, valid_config_data, write_workspace

REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "200"}  # rich wraps tables to the terminal width; keep each row on one line


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid config.yaml with its price table and model/task directories; the working directory."""
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def row_of(output: str, key: str) -> str:
    return next(line for line in output.splitlines() if key in line)


def test_validate_ok_prints_summary_and_writes_nothing(workspace: Path) -> None:
    before = listing(workspace)
    result = invoke("validate", "config.yaml")
    assert result.exit_code == 0, result.output
    assert "2 models, 1 task, 1 workload, 8 cells" in result.stdout  # 2 evals + 3 blocks of 2 perf trials
    assert result.stderr == ""
    assert listing(workspace) == before


def test_plan_lists_cells_with_nothing_done(workspace: Path) -> None:
    result = invoke("plan", "config.yaml")
    assert result.exit_code == 0, result.output
    for cell in build_plan(load_config("config.yaml")):
        row = row_of(result.stdout, cell.key)
        assert cell.kind in row and cell.model in row and cell.target in row
        assert row.rstrip(" │").endswith("no")
    assert "8 cells, 0 done, 8 to run" in result.stdout
    assert not (workspace / "results").exists()


def test_plan_marks_cells_done_in_the_run_dir(workspace: Path) -> None:
    from bench.store import write_cell

    cells = build_plan(load_config("config.yaml"))
    done = [cells[0], cells[2], cells[3]]  # one eval and the whole of perf block 0
    assert {cell.block for cell in done} == {None, 0}
    for cell in done:
        table = "eval_scores" if cell.kind == "eval" else "perf_summary"
        write_cell(workspace / "out" / "unit-run", table, cell.key, cell.model, [])

    result = invoke("plan", "config.yaml", "--results-dir", "out")

    assert result.exit_code == 0, result.output
    for cell in cells:
        assert row_of(result.stdout, cell.key).rstrip(" │").endswith("yes" if cell in done else "no")
    assert "8 cells, 3 done, 5 to run" in result.stdout


def test_plan_replaces_a_partly_done_block(workspace: Path) -> None:
    from bench.store import write_cell

    cells = build_plan(load_config("config.yaml"))
    teacher_block_0 = next(c for c in cells if c.kind == "perf" and c.block == 0)
    write_cell(workspace / "out" / "unit-run", "perf_summary", teacher_block_0.key, teacher_block_0.model, [])

    result = invoke("plan", "config.yaml", "--results-dir", "out")

    assert result.exit_code == 0, result.output
    assert teacher_block_0.key not in result.stdout
    perf_rows = [line for line in result.stdout.splitlines() if "│ perf" in line]
    assert sorted({line.split("│")[4].strip() for line in perf_rows}) == ["1", "2", "3"]
    assert "8 cells, 0 done, 8 to run" in result.stdout


def test_plan_shows_gpus_per_model(workspace: Path) -> None:
    (workspace / "config.yaml").write_text(
        json.dumps(setting("models.0.serve", {"tensor_parallel_size": 2})(valid_config_data()))
    )
    result = invoke("plan", "config.yaml")
    cells = build_plan(load_config("config.yaml"))
    assert [row_of(result.stdout, c.key).split("│")[6].strip() for c in cells] == ["2", "1"] + ["2", "1"] * 3


def test_plan_rejects_a_bad_config_like_validate(workspace: Path) -> None:
    (workspace / "config.yaml").write_text(json.dumps(setting("models.1.teacher", "nobody")(valid_config_data())))
    result = invoke("plan", "config.yaml")
    assert result.exit_code == 2
    assert "config.yaml: models[1].teacher: " in result.stderr


@pytest.mark.parametrize("command", ["validate", "plan", "run", "compare", "leaderboard", "compact", "slurm"])
def test_help_has_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert f"Example: distill-bench {command} " in result.stdout


HEAVY = ("vllm", "ray", "lm_eval", "torch", "transformers")
COMMANDS = [
    ["--help"],
    ["validate", "--help"],
    ["plan", "--help"],
    ["validate", "config.yaml"],
    ["plan", "config.yaml"],
    ["plan", "config.yaml", "--estimate"],
]

NO_HEAVY_IMPORTS = f"""
import sys
from typer.testing import CliRunner
from bench.cli import app

for args in {COMMANDS!r}:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})
assert not heavy, heavy
"""


def test_validate_plan_and_help_import_nothing_heavy(workspace: Path) -> None:
    # A fresh interpreter: this test process may already have imported anything.
    result = subprocess.run(
        [sys.executable, "-c", NO_HEAVY_IMPORTS],
        cwd=workspace,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_comparison_off_a_terminal_prints_every_name_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Slurm .out file is not a terminal: rich would cut both students to "distilled-student-…".
    from bench import cli
    from tests.unit.test_compare import comparison_row

    names = ("distilled-student-with-a-long-name-kd", "distilled-student-with-a-long-name-label")
    rows = [comparison_row(student=name, teacher="a-teacher-with-a-long-name-too", summary=name) for name in names]
    monkeypatch.setattr(cli, "_comparison_rows", lambda results_dir: rows)
    result = CliRunner().invoke(app, ["compare", "."])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert all(result.output.count(name) == 2 for name in names)  # once in the table, once in its summary line
    monkeypatch.setattr(cli, "RICH_TABLE_ROWS", 1)  # a leaderboard-sized tree: plain text, the same names whole
    plain = CliRunner().invoke(app, ["compare", "."])
    assert plain.exit_code == 0 and plain.output.splitlines()[1].startswith("student ")
    assert all(plain.output.count(name) == 2 for name in names)
