"""configs/deepseek-r1-distill.yaml validates, plans and estimates offline, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import load_config
from bench.cost import load_price_table
from bench.estimate import DEFAULT_MFU, estimate

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/deepseek-r1-distill.yaml"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository root
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_validates():
    result = invoke("validate", CONFIG)
    assert result.exit_code == 0, result.output
    assert "7 models, 3 tasks, 1 workload, 42 cells" in result.stdout  # 7 x 3 evals + 3 blocks of 7 perf trials


def test_teacher_and_students_are_the_papers():
    config = load_config(CONFIG)
    teacher = config.model("deepseek-r1")
    assert (teacher.source, teacher.role, teacher.serve.tensor_parallel_size) == (
        "deepseek-ai/DeepSeek-R1",
        "teacher",
        8,
    )
    assert (teacher.parameters, teacher.active_parameters) == (671 * 10**9, 37 * 10**9)
    students = {m.source.removeprefix("deepseek-ai/DeepSeek-R1-Distill-") for m in config.models if m.teacher}
    assert students == {"Qwen-1.5B", "Qwen-7B", "Qwen-14B", "Qwen-32B", "Llama-8B", "Llama-70B"}
    assert {m.teacher for m in config.models if m.teacher} == {"deepseek-r1"}


def test_tasks_follow_the_papers_protocol_and_exist_in_their_directory():
    config = load_config(CONFIG)
    sizes = {"r1_aime24": 30, "r1_math500": 500, "r1_gpqa_diamond": 198}  # the benchmarks' sizes
    assert {task.name: task.estimate.documents for task in config.tasks if task.estimate} == sizes
    assert {(task.samples_per_question, task.max_gen_toks) for task in config.tasks} == {(64, 32768)}
    for task in config.tasks:
        task_file = yaml.load((Path(task.include_path) / f"{task.name}.yaml").read_text(), Loader=IgnoreTags)
        assert task_file["task"] == task.name
    protocol = yaml.load((Path("configs/tasks/r1/_r1_protocol.yaml")).read_text(), Loader=IgnoreTags)
    generation = protocol["generation_kwargs"]
    assert (generation["temperature"], generation["top_p"], generation["do_sample"]) == (0.6, 0.95, True)


class IgnoreTags(yaml.SafeLoader):
    """Reads lm-eval task YAMLs without importing their `!function` modules."""


IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def test_plans_every_cell_with_its_gpus():
    result = invoke("plan", CONFIG)
    assert result.exit_code == 0, result.output
    assert "42 cells, 0 done, 42 to run" in result.stdout
    teacher_rows = [line for line in result.stdout.splitlines() if "│ deepseek-r1 " in line]
    assert len(teacher_rows) == 3 + 3 and all(line.split("│")[6].strip() == "8" for line in teacher_rows)


def test_off_a_terminal_the_plan_names_every_model_in_full():
    """A log (Slurm, CI) at rich's default 80 columns: no model name is cut to "r1-distill-l…"."""
    result = CliRunner().invoke(app, ["plan", CONFIG], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for model in load_config(REPO / CONFIG).models:
        assert f"│ {model.name} " in result.stdout


def test_estimate_prints_gpu_hours_and_dollars_per_model_and_the_assumptions():
    result = invoke("plan", CONFIG, "--estimate")
    assert result.exit_code == 0, result.output
    expected = estimate(load_config(CONFIG), load_price_table("configs/prices.yaml"), DEFAULT_MFU)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "GPU-hours" in line)
    assert "$" in header and "GPUs" in header
    teacher = next(line for line in lines if line.startswith("│ deepseek-r1 "))
    cells = [cell.strip() for cell in teacher.split("│")[1:-1]]
    r1 = expected.models[0]
    assert cells[2:4] == ["8", "7.4e+10"]  # 2 x 37e9 active parameters, not 2 x 671e9
    assert cells[7:9] == [f"{r1.gpu_hours:,.1f}", f"{r1.usd(expected.rates):,.0f}"]
    total = next(line for line in lines if line.startswith("│ total "))
    assert f"{expected.total(lambda m: m.gpu_hours):,.1f}" in total
    assert f"{expected.total(lambda m: m.usd(expected.rates)):,.0f}" in total
    assert "assumptions:" in lines
    assert "assumed MFU 20% (--mfu)" in result.stdout
    assert "r1_math500: 500 documents x 64 samples x (512 + 32,768 tokens; output = max_gen_toks" in result.stdout


def test_a_higher_mfu_gives_proportionally_fewer_eval_hours():
    config, prices = load_config(CONFIG), load_price_table("configs/prices.yaml")
    slow, fast = estimate(config, prices, 0.2), estimate(config, prices, 0.4)
    for a, b in zip(slow.models, fast.models, strict=True):
        assert b.eval_wall_s == pytest.approx(a.eval_wall_s / 2)
        assert b.perf_wall_s == a.perf_wall_s  # fixed-length levels: 3 levels x 600 s x 3 repeats
        assert a.perf_wall_s == pytest.approx(3 * 600 * 3)


def test_the_readme_shows_the_estimate_this_config_gives():
    """README.md quotes the estimate's rows; a change of config, prices or model must update the quote."""
    result = invoke("plan", CONFIG, "--estimate")
    rows = [
        line for line in result.stdout.splitlines() if line.startswith(("│ deepseek-r1", "│ r1-distill", "│ total"))
    ]
    readme = (REPO / "README.md").read_text().split("## Reproducing the R1 distillation table")[1]
    assert len(rows) == 8 and all(row in readme for row in rows), rows
