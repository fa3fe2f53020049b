"""The rendered Slurm batch script: allocation from the config, one command, nothing else; no option value can
add a line to it; the helpers slurm/ray-cluster.sh calls (GPUs a step sees, the job's token, the bounded wait)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import slurm
from bench.cli import app
from bench.config import load_config
from tests.unit.test_config import valid_config_data, write_workspace

REPO = Path(__file__).resolve().parents[2]
GPU_PRICES_YAML = 'prices: {H100-80GB: {usd_per_hour: 3.0, source: "test fixture", date: "2026-11-01"}}\n'


def gpu_workspace(root: Path, tensor_parallel_size: int = 4) -> None:
    data = valid_config_data()
    data["models"][0]["serve"] = {"tensor_parallel_size": tensor_parallel_size}
    data["hardware"]["device_type"] = "H100-80GB"
    write_workspace(root, data, prices=GPU_PRICES_YAML)


def test_slurm_script_allocates_the_largest_model_and_runs_against_ray(tmp_path: Path, monkeypatch) -> None:
    gpu_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["slurm", "config.yaml", "--nodes", "2", "--partition", "gpu"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --partition=gpu" in lines
    assert any(line.startswith("export DISTILL_GPUS_PER_NODE=4 ") for line in lines)
    assert lines[-1] == "bash slurm/ray-cluster.sh distill-bench run config.yaml --address auto"


@pytest.mark.parametrize("flags", [[], ["--cpu"], ["--gpus-per-node", "0"]])
def test_a_cpu_config_or_flag_requests_no_gpus(tmp_path: Path, monkeypatch, flags: list[str]) -> None:
    if flags:
        gpu_workspace(tmp_path)
    else:
        write_workspace(tmp_path)  # priced as cpu-core
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "config.yaml", *flags])
    assert result.exit_code == 0, result.output
    assert "gpus-per-node" not in result.stdout
    assert "export DISTILL_GPUS_PER_NODE=0 " in result.stdout


def test_slurm_rejects_a_bad_config_before_rendering(tmp_path: Path, monkeypatch) -> None:
    data = valid_config_data()
    data["models"][0]["serve"] = {"tensor_parallel_size": 3}
    write_workspace(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "config.yaml"])
    assert result.exit_code == 2
    assert "models[0].serve.tensor_parallel_size" in result.stderr


# -- option validation: the injection corpus ------------------------------------------------------------

HOSTILE = [
    ("--time", "04:00:00\n#SBATCH --wrap=id"),
    ("--time", "1\ntouch pwned"),
    ("--time", "$(touch pwned)"),
    ("--time", "`touch pwned`"),
    ("--time", "1;touch pwned"),
    ("--time", "garbage"),
    ("--time", ""),
    ("--time", "1-2-3"),
    ("--time", "01:02:03:04"),
    ("--time", " 10"),
    ("--partition", "gpu\n#SBATCH --account=other"),
    ("--partition", "gpu\ntouch pwned"),
    ("--partition", "$(touch pwned)"),
    ("--partition", "`touch pwned`"),
    ("--partition", "gpu;touch pwned"),
    ("--partition", "gpu touch"),
    ("--partition", "gpu\ttab"),
    ("--partition", "gpu\r"),
    ("--partition", "gpu\x00"),
    ("--partition", "'gpu'"),
    ("--partition", '"gpu"'),
    ("--partition", "gpu,"),
    ("--partition", ""),
    ("--partition", "-gpu"),
    ("--partition", "x" * 300),
    ("--account", "acct\n#SBATCH --partition=other"),
    ("--account", "$HOME"),
    ("--account", "a|b"),
    ("--account", "a&b"),
    ("--account", "a>b"),
    ("--account", "é"),
    ("--nodes", "0"),
    ("--nodes", "-1"),
    ("--nodes", str(slurm.MAX_NODES + 1)),
    ("--gpus-per-node", "-1"),
    ("--gpus-per-node", "100000"),
]


@pytest.mark.parametrize(("option", "value"), HOSTILE, ids=[f"{o}={v!r}"[:40] for o, v in HOSTILE])
def test_hostile_option_values_get_exit_2_and_one_line_naming_the_option(
    tmp_path: Path, monkeypatch, option: str, value: str
) -> None:
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "config.yaml", f"{option}={value}"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(option), result.stderr
    assert not list(tmp_path.rglob("pwned"))


def test_cpu_and_a_gpu_count_contradict(tmp_path: Path, monkeypatch) -> None:
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "config.yaml", "--cpu", "--gpus-per-node", "2"])
    assert result.exit_code == 2 and result.stderr.startswith("--cpu:")


@pytest.mark.parametrize(
    "value", ["30", "30:00", "04:00:00", "2-0", "2-12", "1-02:30", "1-02:30:00", "UNLIMITED", "infinite", "0"]
)
def test_every_slurm_time_format_is_accepted(value: str) -> None:
    assert slurm.SlurmOptions(time=value).time == value


@pytest.mark.parametrize("value", ["gpu", "gpu,cpu", "gpu-h100.big_1", "a.b-c_,d-e", "_x"])
def test_slurm_names_are_accepted(value: str) -> None:
    assert slurm.SlurmOptions(partition=value, account=value).partition == value


# -- the rendered script, executed with stub commands ---------------------------------------------------

EXPECTED_STUBS = {"scontrol", "srun", "python", "ray", "distill-bench"}
STUB = """#!/usr/bin/env bash
{{ printf '%s\\0' "$(basename "$0")" "$@"; printf '\\x1e'; }} >> '{log}'
case "$(basename "$0")" in
  scontrol) printf 'node-a\\nnode-b\\n' ;;
  srun) for arg in "$@"; do [[ $arg == hostname ]] && echo 10.0.0.1; done; true ;;
esac
"""


def calls(log: Path) -> list[list[str]]:
    return [record.split("\0")[:-1] for record in log.read_text().split("\x1e") if record]


def test_the_most_hostile_valid_values_render_a_script_that_runs_only_the_expected_commands(
    tmp_path: Path, monkeypatch
) -> None:
    """Values at the edge of what validation lets through, plus a config file and results directory whose names
    are shell code: the script parses, and executed with every external command stubbed, it runs only the
    stubs, with the config path intact, and no marker file appears."""
    workspace = tmp_path / "work $(touch pwned-cd) `touch pwned-tick`"
    workspace.mkdir()
    data = valid_config_data()
    data["run"]["results_dir"] = "results $(touch pwned-results);touch pwned-semi"
    config_name = "c $(touch pwned-config) ';touch pwned-q'.yaml"
    write_workspace(workspace, data).rename(workspace / config_name)
    (workspace / ".venv" / "bin").mkdir(parents=True)
    (workspace / ".venv" / "bin" / "activate").write_text("# fake venv\n")
    (workspace / "slurm").mkdir()
    shutil.copy(REPO / "slurm" / "ray-cluster.sh", workspace / "slurm" / "ray-cluster.sh")
    stubs, log = tmp_path / "stubs", tmp_path / "calls.log"
    stubs.mkdir()
    for name in EXPECTED_STUBS:
        (stubs / name).write_text(STUB.format(log=log))
        (stubs / name).chmod(stat.S_IRWXU)

    options = slurm.SlurmOptions(nodes=2, time="UNLIMITED", partition="a.b-c_,d-e", account="_x.-y", gpus_per_node=2)
    monkeypatch.chdir(workspace)
    config = load_config(Path(config_name))
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render(config, Path(config_name), options, workspace))
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0

    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": "42",
    }
    done = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert not [path for path in tmp_path.rglob("pwned*")], "a marker file appeared"
    made = calls(log)
    assert {call[0] for call in made} <= EXPECTED_STUBS
    assert ["distill-bench", "run", config_name, "--address", "auto"] in made
    ray_starts = [call for call in made if call[0] == "srun" and "ray-start" in call]
    assert len(ray_starts) == 2 and all("--gpus-per-node=2" in call for call in ray_starts)
    assert ["python", "-m", "bench.slurm", "wait", "2"] in [call[:5] for call in made]
    assert done.stdout.strip().splitlines()[-1].startswith("ray-cluster: 'distill-bench run ")
    assert done.stdout.strip().endswith("exited with status 0")
    assert (workspace / data["run"]["results_dir"] / "unit-run").is_dir()  # the literal name, made by mkdir -p


# -- helpers behind `python -m bench.slurm` ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 3),
        ({"CUDA_VISIBLE_DEVICES": "0"}, 1),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 2),
        ({"CUDA_VISIBLE_DEVICES": ""}, 0),
    ],
)
def test_ray_gets_the_gpus_the_step_sees(environ: dict[str, str], expected: int) -> None:
    assert slurm.visible_gpus(environ, requested=3) == expected


def test_ray_start_passes_the_visible_gpu_count(monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("DISTILL_GPUS_PER_NODE", "2")
    monkeypatch.setattr(os, "execvp", lambda file, args: seen.append(args))
    slurm.main(["ray-start", "--head", "--block"])
    assert seen == [["ray", "start", "--head", "--block", "--num-gpus=1"]]


def test_the_job_token_is_fresh_and_private(tmp_path: Path) -> None:
    first, second = tmp_path / "job" / "a", tmp_path / "job" / "b"
    assert slurm.main(["token", str(first)]) == 0
    slurm.write_token(second)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert len(first.read_text()) == 64 and first.read_text() != second.read_text()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_dead_head_fails_the_wait_at_once_naming_the_node() -> None:
    clock = FakeClock()
    reason = slurm.wait_for_cluster(
        2, {"node-a": 1, "node-b": 2}, count=lambda _: 1, alive=lambda pid: pid != 1, clock=clock, sleep=clock.sleep
    )
    assert reason is not None and "node-a" in reason and clock.now == 0


def test_the_wait_ends_at_its_deadline_and_each_probe_is_bounded() -> None:
    clock, probes = FakeClock(), []

    def hanging(timeout_s: float) -> None:
        probes.append(timeout_s)
        clock.now += timeout_s  # a probe against a head that never answers uses its whole timeout
        return None

    reason = slurm.wait_for_cluster(
        2, {"node-a": 1}, deadline_s=60, count=hanging, alive=lambda _: True, clock=clock, sleep=clock.sleep
    )
    assert reason == "Ray cluster did not reach 2 nodes in 60 s (saw 0)"
    assert max(probes) <= 20 and clock.now <= 60 + 20 + 5


def test_the_wait_succeeds_when_every_node_joined() -> None:
    clock, answers = FakeClock(), iter([None, 1, 2])
    reason = slurm.wait_for_cluster(
        2, {}, count=lambda _: next(answers), alive=lambda _: True, clock=clock, sleep=clock.sleep
    )
    assert reason is None and clock.now == 10


def test_an_exited_unreaped_step_counts_as_dead() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while slurm.process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not slurm.process_alive(child.pid)  # a zombie until reaped: exited all the same
    child.wait()
    assert slurm.process_alive(os.getpid())
