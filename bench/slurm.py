"""`distill-bench slurm`: render the Slurm batch script for a config. The only Slurm-aware code in bench/.

The script is thin by design: allocation and environment, then `slurm/ray-cluster.sh`, which starts Ray
across the allocation and runs `distill-bench run CONFIG --address auto` on the head node. What that shell
script needs decided (GPUs a step sees, the job's Ray token, whether the cluster came up) lives here, behind
`python -m bench.slurm SUBCOMMAND`, so that tests can drive it without Slurm or Ray.

Every option value ends up in a `#SBATCH` line, and a newline there starts a new script line that bash runs:
options are validated against Slurm's own formats (never quoted and hoped for), so no whitespace, control
character, quote or `$` can reach the script.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.config import MAX_TENSOR_PARALLEL, BenchConfig

MAX_NODES = 100_000  # above any real cluster; bounds what reaches the script
MAX_OPTION_CHARS = 256
CPU_DEVICE_TYPE = "cpu-core"  # the price-table key of a CPU run: such a config asks for no GPUs

# Slurm's --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds (sbatch(1)); UNLIMITED/INFINITE for no limit.
_TIME = re.compile(r"(?:\d{1,7}(?::\d{1,2}){0,2}|\d{1,5}-\d{1,2}(?::\d{1,2}){0,2}|UNLIMITED|INFINITE)", re.IGNORECASE)
_TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"
# Partition and account names: Slurm identifiers, comma-separated lists allowed (sbatch takes a list).
_NAME = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_NAME_LIST = re.compile(rf"{_NAME}(?:,{_NAME})*")
_JOB_NAME = re.compile(r"[A-Za-z0-9._-]+")  # run.name's own pattern in bench.config, checked again here


class SlurmOptionError(ValueError):
    """An option value that must not reach the batch script; the message names the option."""


@dataclass(frozen=True)
class SlurmOptions:
    """Allocation settings that the config does not decide. Constructing one validates it."""

    nodes: int = 1
    time: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    gpus_per_node: int | None = None  # default: 0 for a cpu-core config, else the largest tensor_parallel_size

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise SlurmOptionError(f"--nodes: {self.nodes} is not between 1 and {MAX_NODES}")
        if not _TIME.fullmatch(self.time):
            raise SlurmOptionError(f"--time: {_shown(self.time)} is not a Slurm time ({_TIME_FORMATS})")
        for option, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not (len(value) <= MAX_OPTION_CHARS and _NAME_LIST.fullmatch(value)):
                raise SlurmOptionError(
                    f"--{option.lstrip('-')}: {_shown(value)} is not a Slurm name "
                    "(letters, digits, '_', '-', '.', comma-separated)"
                )
        if self.gpus_per_node is not None and not 0 <= self.gpus_per_node <= MAX_TENSOR_PARALLEL:
            raise SlurmOptionError(f"--gpus-per-node: {self.gpus_per_node} is not between 0 and {MAX_TENSOR_PARALLEL}")


def _shown(value: str) -> str:
    """The value as one printable line (repr shows a newline as \\n), clipped."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def gpus_per_node(config: BenchConfig, options: SlurmOptions) -> int:
    """GPUs to request on each node: the option, else none for a config priced as CPU cores (a CPU partition),
    else the largest tensor_parallel_size (every server runs on one node)."""
    if options.gpus_per_node is not None:
        return options.gpus_per_node
    if config.hardware.device_type == CPU_DEVICE_TYPE:
        return 0
    return max(model.serve.tensor_parallel_size for model in config.models)


def render(config: BenchConfig, config_path: Path, options: SlurmOptions, repo: Path) -> str:
    """The sbatch script text."""
    if not _JOB_NAME.fullmatch(config.run.name):  # the config's own pattern; never trust it twice removed
        raise SlurmOptionError(f"run.name: {_shown(config.run.name)} cannot name a Slurm job")
    gpus = gpus_per_node(config, options)
    run_dir = Path(config.run.results_dir) / config.run.name
    directives = [
        f"--job-name=distill-bench-{config.run.name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        *([f"--gpus-per-node={gpus}"] if gpus else []),
        "--exclusive",
        f"--time={options.time}",
        f"--output=slurm-{config.run.name}-%j.out",  # in the submit directory: it must exist before the job
    ]
    directives += [f"--partition={options.partition}"] if options.partition else []
    directives += [f"--account={options.account}"] if options.account else []
    command = ["distill-bench", "run", str(config_path), "--address", "auto"]
    lines = [
        "#!/usr/bin/env bash",
        *(f"#SBATCH {directive}" for directive in directives),
        "set -euo pipefail",
        f"cd {shlex.quote(str(repo))}",
        f"mkdir -p {shlex.quote(str(run_dir))}",
        "source .venv/bin/activate",
        # What ray-cluster.sh asks every srun step for, and where it keeps the job's Ray token.
        f"export DISTILL_GPUS_PER_NODE={gpus} DISTILL_JOB_DIR={shlex.quote(str(run_dir))}",
        f"bash slurm/ray-cluster.sh {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


# -- helpers for slurm/ray-cluster.sh (`python -m bench.slurm ...`) ---------------------------------------


def visible_gpus(environ: dict[str, str], requested: int) -> int:
    """GPUs this srun step can use: the devices in its CUDA_VISIBLE_DEVICES (what Slurm bound to the step,
    which with --exclusive may be fewer than SLURM_GPUS_ON_NODE says, and Ray refuses to start with more),
    else what was requested (0 on a CPU partition)."""
    devices = environ.get("CUDA_VISIBLE_DEVICES")
    if devices is None:
        return requested
    return len([device for device in devices.split(",") if device.strip()])


def write_token(path: Path) -> None:
    """A fresh Ray auth token for this job, readable only by its user (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))


def process_alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: existence is all we know


_COUNT_NODES = (
    "import ray; ray.init(address='auto', log_to_driver=False, configure_logging=False); "
    "print(len([n for n in ray.nodes() if n['Alive']]))"
)


def count_ray_nodes(timeout_s: float) -> int | None:
    """Alive nodes of the cluster at RAY_ADDRESS, or None when it did not answer in time. A subprocess, because
    `ray.init` against a dead head blocks without a bound of its own."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _COUNT_NODES], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.split()
    return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else None


def wait_for_cluster(
    want_nodes: int,
    steps: dict[str, int],
    deadline_s: float = 300.0,
    probe_timeout_s: float = 20.0,
    poll_s: float = 5.0,
    count: Callable[[float], int | None] = count_ray_nodes,
    alive: Callable[[int], bool] = process_alive,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Wait until `want_nodes` Ray nodes are alive. None on success, else the reason: a `ray start` step (node
    name -> srun PID) exited, or the deadline passed. Every probe is bounded, so a dead head fails the job
    within a probe's timeout rather than hanging the allocation."""
    end = clock() + deadline_s
    while True:
        dead = [node for node, pid in steps.items() if not alive(pid)]
        if dead:
            return f"ray start exited on {', '.join(dead)} (its error is above)"
        seen = count(min(probe_timeout_s, max(end - clock(), 1.0)))
        if seen is not None and seen >= want_nodes:
            return None
        if clock() >= end:
            return f"Ray cluster did not reach {want_nodes} nodes in {deadline_s:.0f} s (saw {seen or 0})"
        sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.slurm ray-start ARGS | token PATH | wait NODES NODE=PID...`, from slurm/ray-cluster.sh."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ray-start"]:  # `ray start ARGS --num-gpus=<GPUs this step sees>`; ARGS go to Ray untouched
        gpus = visible_gpus(dict(os.environ), int(os.environ.get("DISTILL_GPUS_PER_NODE", "0")))
        os.execvp("ray", ["ray", "start", *argv[1:], f"--num-gpus={gpus}"])
        return 127  # not reached: exec replaces this process
    parser = argparse.ArgumentParser(prog="python -m bench.slurm")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="write a fresh Ray auth token to PATH (mode 0600)")
    token.add_argument("path", type=Path)
    wait = sub.add_parser("wait", help="wait for NODES Ray nodes while every NODE=PID step is alive")
    wait.add_argument("nodes", type=int)
    wait.add_argument("steps", nargs="*", metavar="NODE=PID")
    wait.add_argument("--deadline-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.command == "token":
        write_token(args.path)
        return 0
    steps = {node: int(pid) for node, _, pid in (step.rpartition("=") for step in args.steps)}
    reason = wait_for_cluster(args.nodes, steps, deadline_s=args.deadline_s)
    if reason is not None:
        print(reason, flush=True)  # ray-cluster.sh puts it on the job log's last line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
