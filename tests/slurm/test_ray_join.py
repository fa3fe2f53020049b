"""The worker-join path of slurm/ray-cluster.sh with two real Ray nodes on this machine.

One slurmd per host means a multi-node allocation cannot run here, so `scontrol` names two nodes and `srun`
runs its command locally: the script starts a real Ray head and a real worker that joins it with the job's
token, waits for both with `python -m bench.slurm_job wait`, runs the command on the cluster, and tears both
down. Only Ray is needed, not Slurm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO
from tests.slurm.conftest import free_port, processes_with_env

pytestmark = pytest.mark.slurm

SCONTROL = """#!/usr/bin/env bash
[[ $1 == show ]] && printf 'node-a\\nnode-b\\n'
true
"""
SRUN = """#!/usr/bin/env bash
# srun on one machine: drop srun's options (and the node -w names), run the command here.
while [[ $# -gt 0 && $1 == -* ]]; do
  [[ $1 == -w ]] && shift
  shift
done
exec "$@"
"""
PROBE = """
import ray
ray.init(address="auto", log_to_driver=False)
alive = [node for node in ray.nodes() if node["Alive"]]
print(f"summary: {len(alive)} nodes joined; cpus {ray.cluster_resources()['CPU']:g}")
"""


def test_a_worker_node_joins_the_head_with_the_job_token_and_both_stop_after(tmp_path: Path) -> None:
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("ray is not installed next to this Python")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    job_dir = tmp_path / "job"
    env = {
        **os.environ,
        "PATH": f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": "join",
        "RAY_PORT": str(free_port()),
        "DISTILL_GPUS_PER_NODE": "0",
        "DISTILL_RUN_DIR": str(tmp_path / "run"),
        "DISTILL_JOB_DIR": str(job_dir),
    }
    token = job_dir / "ray-auth-token-join"
    try:
        done = subprocess.run(
            ["bash", str(REPO / "slurm" / "ray-cluster.sh"), sys.executable, "-c", PROBE],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert lines[-1].startswith("summary: 2 nodes joined;"), lines[-5:]
        for node in ("node-a", "node-b"):
            assert "Ray runtime started" in (job_dir / f"ray-{node}-join.log").read_text()
        assert not token.exists(), "the job's token outlived it"
        assert not processes_with_env(f"RAY_AUTH_TOKEN_PATH={token}"), "a Ray process outlived the job"
    finally:
        for pid in processes_with_env(f"RAY_AUTH_TOKEN_PATH={token}"):
            os.kill(pid, 9)
