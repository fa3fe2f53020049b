"""The rendered batch script and slurm/ray-cluster.sh, executed without Slurm or Ray.

Every external command is a stub on PATH that logs its arguments; `srun ... --block` blocks like a Ray node
and prints shutdown noise; `python -m bench.slurm_job` runs the real module except `wait` (it needs a Ray
cluster); `distill-bench` is a fake run whose behaviour each test picks. tests/slurm runs the same script on
a real Slurm.
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import slurm
from bench.config import load_config
from bench.slurm_job import RAY_STOP
from tests.slurm.conftest import processes_with_env
from tests.unit.test_config import valid_config_data, write_workspace

REPO = Path(__file__).resolve().parents[2]
STUBBED = {"scontrol", "srun", "python", "ray", "distill-bench"}
STUB = r"""#!/usr/bin/env bash
{ printf '%s\0' "$(basename "$0")" "$@"; printf '\x1e'; } >> "$STUB_LOG"
case "$(basename "$0")" in
  scontrol) [[ $1 == show ]] && printf 'node-a\nnode-b\n'; true ;;
  srun)
    for arg in "$@"; do
      [[ $arg == hostname ]] && echo 10.0.0.1
      if [[ $arg == --block ]]; then
        echo "raylet ERR shutdown noise"
        [[ -n ${STEP_IGNORES_TERM:-} ]] && trap '' TERM  # stuck: only SIGKILL ends it
        exec sleep 60
      fi
    done
    true ;;
  python) [[ $1 == -m && $2 == bench.slurm_job && $3 != wait ]] && exec "$REAL_PYTHON" "$@"; true ;;
  distill-bench) exec "$REAL_PYTHON" "$FAKE_RUN" "$@" ;;
esac
"""
SUMMARY = (
    "summary: unit-run: 2 cells run, 0 already stored, 0 failed; 0 retried, 0 servers replaced; results: r; exit 0"
)
# The fake `distill-bench run`: FAKE_RUN_MODE picks what it does.
FAKE_RUN = f"""
import os, pathlib, signal, sys, time
mode = os.environ["FAKE_RUN_MODE"]
print("fake run: working", flush=True)
if mode == "summary":
    print({SUMMARY!r})
    sys.exit(0)
if mode == "fail":
    sys.exit(3)
def stop(signum, frame):
    print("fake run: stopping on", signal.Signals(signum).name, flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
if mode == "stores-a-cell":
    cells = pathlib.Path(os.environ["DISTILL_RUN_DIR"]) / "eval_scores"
    cells.mkdir(parents=True, exist_ok=True)
    (cells / "cell-1.parquet").touch()
pathlib.Path(os.environ["FAKE_RUN_STARTED"]).touch()
time.sleep(60)
"""


def calls(log: Path) -> list[list[str]]:
    return [record.split("\0")[:-1] for record in log.read_text().split("\x1e") if record] if log.exists() else []


class Job:
    """A workspace with a config, the stubs, and the rendered script; `start` runs it as Slurm's batch shell."""

    def __init__(self, root: Path, workspace: Path, config_name: str = "config.yaml", venv: Path | None = None):
        self.root, self.workspace = root, workspace
        self.stubs, self.log = root / "stubs", root / "calls.log"
        self.stubs.mkdir()
        for name in STUBBED:
            (self.stubs / name).write_text(STUB)
            (self.stubs / name).chmod(stat.S_IRWXU)
        (root / "fake_run.py").write_text(FAKE_RUN)
        self.started = root / "run-started"
        self.config = load_config(config_name)
        self.run_dir = workspace / self.config.run_dir()
        self.job_dir = workspace / "job $(touch pwned-job)"
        options = slurm.SlurmOptions(
            nodes=2, time="UNLIMITED", partition="a.b-c_,d-e", account="_x.-y", gpus_per_node=2
        )
        self.script = root / "job.sbatch"
        paths = slurm.JobPaths(workspace, self.job_dir, venv)
        self.script.write_text(slurm.render(self.config, Path(config_name), options, paths))

    def start(self, mode: str, **extra_env: str) -> subprocess.Popen[str]:
        env = {
            "PATH": f"{self.stubs}:/usr/bin:/bin",
            "HOME": str(self.root),
            "SLURM_JOB_NODELIST": "node-[a-b]",
            "SLURM_JOB_ID": "42",
            "STUB_LOG": str(self.log),
            "REAL_PYTHON": sys.executable,
            "PYTHONPATH": str(REPO),
            "FAKE_RUN": str(self.root / "fake_run.py"),
            "FAKE_RUN_MODE": mode,
            "FAKE_RUN_STARTED": str(self.started),
            **extra_env,
        }
        return subprocess.Popen(
            ["bash", str(self.script)],
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, mode: str, **extra_env: str) -> tuple[int, list[str]]:
        process = self.start(mode, **extra_env)
        stdout, stderr = process.communicate(timeout=60)
        assert not processes_with_env(f"STUB_LOG={self.log}"), "a stub outlived the job"
        return process.returncode, stdout.strip().splitlines()

    def stopped_by(self, signum: int, mode: str) -> tuple[int, list[str]]:
        """Start the job, wait until the fake run is under way, send the batch shell `signum`."""
        process = self.start(mode)
        deadline = time.monotonic() + 30
        while not self.started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.started.exists(), process.communicate()
        process.send_signal(signum)
        stdout, _ = process.communicate(timeout=60)
        assert not processes_with_env(f"STUB_LOG={self.log}"), "a stub outlived the job"
        return process.returncode, stdout.strip().splitlines()

    def calls(self, name: str) -> list[list[str]]:
        return [call for call in calls(self.log) if call[0] == name]


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Job:
    workspace = tmp_path / "work"
    workspace.mkdir()
    write_workspace(workspace)
    monkeypatch.chdir(workspace)  # a config's relative paths start in the directory it is submitted from
    return Job(tmp_path, workspace)


def test_the_most_hostile_valid_values_render_a_script_that_runs_only_the_expected_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values at the edge of what validation lets through, plus a workspace, config file, results directory,
    venv and job dir whose names are shell code: the script parses, and executed it runs only the stubs (and
    the real `python -m bench.slurm_job`), with the config path intact, and no marker file appears."""
    workspace = tmp_path / "work $(touch pwned-cd) `touch pwned-tick`"
    workspace.mkdir()
    data = valid_config_data()
    data["run"]["results_dir"] = "results $(touch pwned-results);touch pwned-semi"
    config_name = "c $(touch pwned-config) ';touch pwned-q'.yaml"
    write_workspace(workspace, data).rename(workspace / config_name)
    venv = workspace / "venv $(touch pwned-venv)"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# a venv's activate script\n")
    monkeypatch.chdir(workspace)
    job = Job(tmp_path, workspace, config_name, venv)
    assert subprocess.run(["bash", "-n", str(job.script)], check=False).returncode == 0

    status, lines = job.run("summary")

    assert status == 0
    assert not [path for path in tmp_path.rglob("pwned*")], "a marker file appeared"
    assert {call[0] for call in calls(job.log)} <= STUBBED
    run = ["distill-bench", "run", config_name, "--address", "auto"]
    assert [call[-len(run) :] for call in job.calls("python") if "supervise" in call] == [["python", *run][1:]]
    ray_starts = [call for call in job.calls("srun") if "ray-start" in call]
    assert len(ray_starts) == 2 and all("--gpus-per-node=2" in call for call in ray_starts)
    assert ["python", "-m", "bench.slurm_job", "wait", "2"] in [call[:5] for call in job.calls("python")]
    assert lines[-1] == SUMMARY
    assert (workspace / data["run"]["results_dir"] / "unit-run").is_dir()  # the literal name, made by mkdir -p


def test_the_log_ends_with_the_run_summary_after_teardown_and_ray_output_goes_to_node_files(job: Job) -> None:
    status, lines = job.run("summary")

    assert status == 0
    assert lines[-1] == SUMMARY and lines.count(SUMMARY) == 2  # as the run printed it, then repeated last
    assert "fake run: working" in lines
    assert not [line for line in lines if "raylet ERR" in line]
    for node in ("node-a", "node-b"):
        assert "raylet ERR shutdown noise" in (job.job_dir / f"ray-{node}-42.log").read_text()
    assert job.calls("ray") == []  # each step, ended on SIGTERM, stopped its own node's Ray
    assert not list(job.job_dir.glob("ray-auth-token-*"))


def test_a_step_that_does_not_end_on_sigterm_is_killed_and_ray_stopped_here(job: Job) -> None:
    status, lines = job.run("summary", STEP_IGNORES_TERM="1")
    assert (status, lines[-1]) == (0, SUMMARY)
    assert job.calls("ray") == [list(RAY_STOP)]


def test_without_a_summary_the_last_line_says_how_the_command_exited(job: Job) -> None:
    status, lines = job.run("fail")
    assert status == 3
    assert lines[-1] == "ray-cluster: 'distill-bench run config.yaml --address auto' exited with status 3"


def test_sigterm_to_the_batch_shell_stops_the_run_and_still_tears_down(job: Job) -> None:
    """What Slurm sends when it preempts, requeues or cancels the job: the run gets TERM, the steps are ended,
    nothing is requeued by the script (Slurm decides), and the last line says so."""
    status, lines = job.stopped_by(signal.SIGTERM, "stores-a-cell")

    assert status == 143
    assert "fake run: stopping on SIGTERM" in lines
    assert lines[-1].startswith("ray-cluster: stopped by Slurm (SIGTERM")
    assert ["scontrol", "requeue", "42"] not in job.calls("scontrol")


def test_usr1_before_the_time_limit_stops_the_run_and_requeues_the_job_after_progress(job: Job) -> None:
    status, lines = job.stopped_by(signal.SIGUSR1, "stores-a-cell")

    assert status == 143
    assert "fake run: stopping on SIGTERM" in lines
    assert ["scontrol", "requeue", "42"] in job.calls("scontrol")
    assert lines[-1].startswith("ray-cluster: time limit near (SIGUSR1)")
    assert lines[-1].endswith("cells stored in this attempt: 1; job 42 requeued to resume")


def test_usr1_without_progress_does_not_requeue(job: Job) -> None:
    """A cell longer than the time limit would requeue forever: without a new stored cell the job ends."""
    status, lines = job.stopped_by(signal.SIGUSR1, "stores-nothing")
    assert status == 143
    assert ["scontrol", "requeue", "42"] not in job.calls("scontrol")
    assert lines[-1].endswith(
        "no cell was stored in this attempt, so the job is not requeued (give it a longer --time)"
    )
