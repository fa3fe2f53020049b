"""`distill-bench slurm submit` on a real Slurm (tests/slurm/conftest.py): the toy pair's run as a CPU job,
a job preempted mid-run that resumes with every cell stored exactly once, hostile options that never reach
sbatch, and Ray's GPU count from what a step sees on a node with (fake) GPUs as gres.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from bench import store
from bench.cli import app
from bench.config import load_config
from bench.plan import build_plan
from bench.slurm import JobPaths, SlurmOptions, render
from bench.slurm import submit as submit_script
from bench.slurm_job import stored_cells
from tests.integration.conftest import REPO, TOY_MODELS, TOY_SERVE
from tests.slurm.conftest import FAKE_GPUS, LocalSlurm, processes_with_env

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 300.0  # a job here takes about a minute; a hung one fails the test rather than the suite
LIMIT = 8
TASKS = ["toy_add", "toy_sort", "toy_reverse", "toy_add_mc"]  # one cell each: a requeued job has some left
SUMMARY = re.compile(
    r"summary: (?P<run>\S+): (?P<ran>\d+) cells? run, (?P<stored>\d+) already stored, (?P<failed>\d+) failed; "
    r"(?P<retried>\d+) retried, (?P<replaced>\d+) servers? replaced; results: (?P<results>.+); exit (?P<exit>\d+)"
)


def toy_config(root: Path, name: str, models: list[str], tasks: list[str]) -> Path:
    """A CPU config for the shipped toy pair: `models` from bench/toy/models, each task with LIMIT documents."""
    serve = TOY_SERVE.model_dump(mode="json")
    teacher = "teacher" if "teacher" in models else None
    data = {
        "run": {"name": name, "results_dir": str(root / "results"), "seed": 0},
        "hardware": {"device_type": "cpu-core", "prices": "configs/prices.yaml", "devices_per_model": 1},
        "models": [
            {"name": model, "source": str(TOY_MODELS / model), "serve": serve}
            | ({"teacher": teacher} if teacher and model != teacher else {})
            for model in models
        ],
        "tasks": [
            {"name": task, "include_path": "configs/tasks/toy", "limit": LIMIT, "max_gen_toks": 12} for task in tasks
        ],
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class Job:
    job_id: str
    config: Path
    log: Path
    run_dir: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def cell_keys(self) -> set[str]:
        """Every cell the config plans."""
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(REPO)
            return {cell.key for cell in build_plan(load_config(self.config), set())}


def submit(slurm: LocalSlurm, config: Path) -> Job:
    """`distill-bench slurm submit CONFIG --cpu` from the repository, as a user would; this tree's code runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setenv("SLURM_CONF", str(slurm.conf))
        patch.setenv("PYTHONPATH", str(REPO))  # the job exports this environment (sbatch --export=ALL)
        result = CliRunner().invoke(app, ["slurm", "submit", str(config), "--cpu", "--time", "15", "--grace-s", "60"])
    assert result.exit_code == 0, result.output
    printed = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert printed.keys() == {"job", "log", "results"}
    return Job(printed["job"], config, Path(printed["log"]), Path(printed["results"]))


def quality(run_dir: Path) -> dict[tuple[str, str, str], float]:
    return {
        (r["model"], r["task"], r["metric"]): r["value"] for r in store.read_table(run_dir, "eval_scores").to_pylist()
    }


# -- a clean job ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_job(local_slurm: LocalSlurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Job, dict]]:
    job = submit(local_slurm, toy_config(tmp_path_factory.mktemp("clean"), "slurm-clean", ["student-kd"], TASKS))
    yield job, local_slurm.wait_finished(job.job_id, JOB_TIMEOUT_S)


def test_a_clean_job_completes_and_stores_every_cell(clean_job: tuple[Job, dict]) -> None:
    job, state = clean_job
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), job.log.read_text()[-3000:]
    assert store.done_cell_keys(job.run_dir) == job.cell_keys()
    assert not processes_with_env(f"SLURM_JOB_ID={job.job_id}"), "a process of the job outlived it"


def test_a_clean_job_log_ends_with_the_run_summary_and_no_ray_noise(clean_job: tuple[Job, dict]) -> None:
    job, _ = clean_job
    lines = job.lines()
    summary = SUMMARY.fullmatch(lines[-1])
    assert summary, lines[-5:]
    assert summary["run"] == "slurm-clean" and summary["results"] == str(job.run_dir)
    assert (summary["ran"], summary["stored"], summary["failed"], summary["exit"]) == (str(len(TASKS)), "0", "0", "0")
    assert not [line for line in lines if "raylet" in line or "ERR" in line]
    node_logs = list(job.log.parent.glob(f"ray-*-{job.job_id}.log"))
    assert len(node_logs) == 1 and "Ray runtime started" in node_logs[0].read_text()


# -- preempted mid-run: requeued, resumed, every cell exactly once ----------------------------------------


@pytest.fixture(scope="module")
def requeued_job(local_slurm: LocalSlurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Job, dict]]:
    """A job stopped twice: once it stored a cell, near its time limit (USR1 to the batch shell, as `--signal`
    sends it: the job requeues itself); then, once the resumed run started, from outside, as preemption does
    (`scontrol requeue`: TERM to every process of the job). The third attempt finishes."""
    job = submit(local_slurm, toy_config(tmp_path_factory.mktemp("requeue"), "slurm-requeue", ["student-kd"], TASKS))

    local_slurm.wait_until(job.job_id, lambda _: stored_cells(job.run_dir) > 0, JOB_TIMEOUT_S, "storing a cell")
    first_session = store.read_manifest(job.run_dir)["session_id"]
    local_slurm.command("scancel", "--batch", "--signal=USR1", job.job_id)
    local_slurm.requeued_now(job.job_id)

    local_slurm.wait_until(
        job.job_id, lambda _: store.read_manifest(job.run_dir)["session_id"] != first_session, 120, "resumed"
    )
    local_slurm.command("scontrol", "requeue", job.job_id)
    local_slurm.requeued_now(job.job_id)

    yield job, local_slurm.wait_finished(job.job_id, JOB_TIMEOUT_S)


def test_a_requeued_job_resumes_and_stores_every_cell_exactly_once(
    requeued_job: tuple[Job, dict], clean_job: tuple[Job, dict]
) -> None:
    job, state = requeued_job
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "2")
    assert store.done_cell_keys(job.run_dir) == job.cell_keys()
    for table, key in (
        ("eval_scores", ("cell_key", "task", "metric")),
        ("eval_samples", ("cell_key", "doc_id", "metric")),
    ):
        rows = pq.read_table(job.run_dir / table).to_pylist()  # every file, as a reader would
        counts = Counter(tuple(row[column] for column in key) for row in rows)
        assert counts and max(counts.values()) == 1, f"{table}: a row stored twice"
    samples = Counter(row["cell_key"] for row in store.read_table(job.run_dir, "eval_samples").to_pylist())
    assert len(samples) == len(job.cell_keys())
    assert quality(job.run_dir) == quality(clean_job[0].run_dir)  # the same scores as the uninterrupted run
    assert not processes_with_env(f"SLURM_JOB_ID={job.job_id}")


def test_a_requeued_job_log_tells_each_attempt_and_ends_with_the_final_summary(requeued_job: tuple[Job, dict]) -> None:
    job, _ = requeued_job
    lines = job.lines()
    assert any(
        line.startswith("ray-cluster: time limit near (SIGUSR1)") and "requeued to resume" in line for line in lines
    )
    assert any(line.startswith("ray-cluster: stopped by Slurm (SIGTERM") for line in lines)
    summary = SUMMARY.fullmatch(lines[-1])
    assert summary and summary["exit"] == "0", lines[-5:]
    assert int(summary["stored"]) >= 1 and int(summary["ran"]) + int(summary["stored"]) == len(job.cell_keys())


# -- hostile options through the real sbatch -------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--time", "1\ntouch pwned"),
        ("--partition", "debug\n#SBATCH --wrap=touch pwned"),
        ("--account", "$(touch pwned)"),
    ],
)
def test_hostile_options_never_reach_the_real_sbatch(
    local_slurm: LocalSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, value: str
) -> None:
    config = toy_config(tmp_path, "slurm-hostile", ["student-kd"], ["toy_add"])
    assert "is UP" in local_slurm.command("scontrol", "ping")  # a real sbatch would have been answered
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SLURM_CONF", str(local_slurm.conf))
    result = CliRunner().invoke(app, ["slurm", "submit", str(config), "--cpu", f"{option}={value}"])
    assert result.exit_code == 2 and result.stderr.startswith(option)
    assert local_slurm.queue() == [] and not (tmp_path / "results").exists()
    assert not list(tmp_path.rglob("pwned")) and not (REPO / "pwned").exists()  # the cwd of a command run


# -- GPUs: Ray gets what the step sees -------------------------------------------------------------------

# Stands in for `distill-bench run` in the job (first on PATH): reports what the job and Ray see, as a summary.
GPU_PROBE = """#!/usr/bin/env bash
exec python -c '
import os, ray
ray.init(address="auto", log_to_driver=False)
print("summary: gpus on node", os.environ["SLURM_GPUS_ON_NODE"], "ray", ray.cluster_resources().get("GPU", 0))
'
"""


def test_ray_starts_with_the_gpus_its_step_sees_on_an_exclusive_node(
    local_slurm: LocalSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first failure of issue 10: with --gpus-per-node=1 --exclusive the job holds both GPUs of the node
    while the `ray start` step sees one; Ray must start with the one it sees, and the job must run."""
    config = toy_config(tmp_path, "slurm-gpu", ["student-kd"], ["toy_add"])
    data = yaml.safe_load(config.read_text())
    data["hardware"] = {"device_type": "H100-80GB", "prices": "configs/prices.yaml"}  # a GPU config: 1 per node
    config.write_text(yaml.safe_dump(data))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "distill-bench").write_text(GPU_PROBE)
    (stubs / "distill-bench").chmod(0o755)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SLURM_CONF", str(local_slurm.conf))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PATH", f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    loaded = load_config(config)
    paths = JobPaths(REPO, tmp_path / "job", venv=None)  # no activation: the probe stays first on PATH
    job = submit_script(render(loaded, config, SlurmOptions(time="10"), paths), paths, loaded.run_dir())

    state = local_slurm.wait_finished(job.job_id, JOB_TIMEOUT_S)

    last = job.log.read_text().splitlines()[-1]
    assert (state["JobState"], last) == ("COMPLETED", f"summary: gpus on node {FAKE_GPUS} ray 1.0"), last
    assert not processes_with_env(f"SLURM_JOB_ID={job.job_id}")
