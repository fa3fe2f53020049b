"""The helpers slurm/ray-cluster.sh runs inside a job (`python -m bench.slurm_job`): the GPUs a step sees, the
job's token, the bounded cluster wait, the run's supervisor (output, summary line, signals), stored cells."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import slurm_job


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
    assert slurm_job.visible_gpus(environ, requested=3) == expected


def test_ray_start_passes_the_visible_gpu_count() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "0", "DISTILL_GPUS_PER_NODE": "2"}
    command = slurm_job.ray_start_command(["--head", "--block"], environ)
    assert command == ["ray", "start", "--head", "--block", "--num-gpus=1"]


# A stand-in for `ray`: `start` blocks, as `ray start --block` does, ignoring SIGTERM as it does under srun.
FAKE_RAY = """#!/usr/bin/env bash
echo "$*" >> "$RAY_CALLS"
if [[ $1 == start ]]; then
  [[ -n ${RAY_START_EXIT:-} ]] && exit "$RAY_START_EXIT"
  trap '' TERM
  touch "$RAY_STARTED"
  exec sleep 60
fi
"""


def fake_ray(tmp_path: Path) -> dict[str, str]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "ray").write_text(FAKE_RAY)
    (stubs / "ray").chmod(stat.S_IRWXU)
    return {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "RAY_CALLS": str(tmp_path / "calls"),
        "RAY_STARTED": str(tmp_path / "started"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


def test_an_ended_step_stops_its_ray_node_at_once(tmp_path: Path) -> None:
    """SIGTERM to the step (Slurm ending it, or ray-cluster.sh's teardown) stops this node's Ray and ends the
    step within seconds, though `ray start --block` itself ignores SIGTERM."""
    env = fake_ray(tmp_path)
    step = subprocess.Popen([sys.executable, "-m", "bench.slurm_job", "ray-start", "--head", "--block"], env=env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    step.send_signal(signal.SIGTERM)
    assert step.wait(timeout=20) == 128 + signal.SIGKILL  # the blocked `ray start`, killed after `ray stop`
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["start --head --block --num-gpus=0", "stop --force --grace-period 2"]


def test_a_ray_node_that_exits_by_itself_is_stopped_too_and_its_status_kept(tmp_path: Path) -> None:
    env = {**fake_ray(tmp_path), "RAY_START_EXIT": "3"}  # its head died, say: Ray's daemons may linger
    step = [sys.executable, "-m", "bench.slurm_job", "ray-start", "--address=10.0.0.1:6379", "--block"]
    assert subprocess.run(step, env=env, timeout=20, check=False).returncode == 3
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "stop --force --grace-period 2"


def test_the_job_token_is_fresh_and_private(tmp_path: Path) -> None:
    first, second = tmp_path / "job" / "a", tmp_path / "job" / "b"
    assert slurm_job.main(["token", str(first)]) == 0
    slurm_job.write_token(second)
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
    reason = slurm_job.wait_for_cluster(
        2, {"node-a": 1, "node-b": 2}, count=lambda _: 1, alive=lambda pid: pid != 1, clock=clock, sleep=clock.sleep
    )
    assert reason is not None and "node-a" in reason and clock.now == 0


def test_the_wait_ends_at_its_deadline_and_each_probe_is_bounded() -> None:
    clock, probes = FakeClock(), []

    def hanging(timeout_s: float) -> None:
        probes.append(timeout_s)
        clock.now += timeout_s  # a probe against a head that never answers uses its whole timeout
        return None

    reason = slurm_job.wait_for_cluster(
        2, {"node-a": 1}, deadline_s=60, count=hanging, alive=lambda _: True, clock=clock, sleep=clock.sleep
    )
    assert reason == "Ray cluster did not reach 2 nodes in 60 s (saw 0)"
    assert max(probes) <= 20 and clock.now <= 60 + 20 + 5


def test_the_wait_succeeds_when_every_node_joined() -> None:
    clock, answers = FakeClock(), iter([None, 1, 2])
    reason = slurm_job.wait_for_cluster(
        2, {}, count=lambda _: next(answers), alive=lambda _: True, clock=clock, sleep=clock.sleep
    )
    assert reason is None and clock.now == 10


def test_an_exited_unreaped_step_counts_as_dead() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while slurm_job.process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not slurm_job.process_alive(child.pid)  # a zombie until reaped: exited all the same
    child.wait()
    assert slurm_job.process_alive(os.getpid())


def test_supervise_passes_output_through_and_keeps_the_last_summary_line(tmp_path: Path) -> None:
    out, summary = io.BytesIO(), tmp_path / "summary"
    script = 'echo one; echo "summary: first"; echo "summary: last"; echo two; exit 4'
    assert slurm_job.supervise(["bash", "-c", script], summary, out) == 4
    assert out.getvalue() == b"one\nsummary: first\nsummary: last\ntwo\n"
    assert summary.read_text() == "summary: last\n"


def test_supervise_replaces_an_earlier_summary_and_reports_a_signal_as_a_shell_does(tmp_path: Path) -> None:
    summary = tmp_path / "summary"
    summary.write_text("summary: from the attempt before a requeue\n")
    assert slurm_job.supervise(["bash", "-c", "kill -KILL $$"], summary, io.BytesIO()) == 128 + 9
    assert not summary.exists()


def test_supervise_returns_when_the_command_exits_though_a_child_keeps_its_output_open(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(slurm_job, "DRAIN_S", 0.2)
    pid_file = tmp_path / "pid"
    script = f'sleep 60 & echo $! > {pid_file}; echo "summary: done"; exit 0'
    started = time.monotonic()
    try:
        assert slurm_job.supervise(["bash", "-c", script], tmp_path / "summary", io.BytesIO()) == 0
        assert time.monotonic() - started < 30
        assert (tmp_path / "summary").read_text() == "summary: done\n"
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_supervise_of_a_command_that_cannot_run(tmp_path: Path) -> None:
    out = io.BytesIO()
    assert slurm_job.supervise([str(tmp_path / "missing")], tmp_path / "summary", out) == 127
    assert out.getvalue().decode().startswith(f"ray-cluster: cannot run {tmp_path / 'missing'}: ")


def test_stored_cells_counts_committed_cells_only(tmp_path: Path) -> None:
    for table, name in (("eval_scores", "a"), ("perf_summary", "b"), ("eval_samples", "c"), ("eval_scores", ".d")):
        (tmp_path / table).mkdir(exist_ok=True)
        (tmp_path / table / f"{name}.parquet").touch()
    assert slurm_job.stored_cells(tmp_path) == 2
    assert slurm_job.stored_cells(tmp_path / "absent") == 0


def test_supervise_gives_the_signal_handlers_back(tmp_path: Path) -> None:
    before = {signum: signal.getsignal(signum) for signum in slurm_job.STOP_SIGNALS}
    slurm_job.supervise(["true"], tmp_path / "summary", io.BytesIO())
    assert {signum: signal.getsignal(signum) for signum in slurm_job.STOP_SIGNALS} == before
