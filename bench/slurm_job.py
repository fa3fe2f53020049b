"""What runs inside a Slurm job, for slurm/ray-cluster.sh: `python -m bench.slurm_job SUBCOMMAND`.

The shell script only sequences; what it needs decided lives here, where tests drive it without Slurm or Ray:
the GPUs a step sees, the job's Ray token, whether the cluster came up (bounded), the run's summary line and
the signals that stop it, how many cells are stored. Imports stay light (no bench.config, no pydantic): each
subcommand is one short-lived process of the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # how a job step or a job is told to end


def visible_gpus(environ: dict[str, str], requested: int) -> int:
    """GPUs this srun step can use: the devices in its CUDA_VISIBLE_DEVICES (what Slurm bound to the step,
    which with --exclusive may be fewer than SLURM_GPUS_ON_NODE says, and Ray refuses to start with more),
    else what was requested (0 on a CPU partition)."""
    devices = environ.get("CUDA_VISIBLE_DEVICES")
    if devices is None:
        return requested
    return len([device for device in devices.split(",") if device.strip()])


def ray_start_command(args: Sequence[str], environ: dict[str, str]) -> list[str]:
    """`ray start ARGS --num-gpus=<GPUs this step sees>`."""
    gpus = visible_gpus(environ, int(environ.get("DISTILL_GPUS_PER_NODE", "0")))
    return ["ray", "start", *args, f"--num-gpus={gpus}"]


RAY_STOP = ("ray", "stop", "--force", "--grace-period", "2")  # ray stop waits 16 s for zombies by default
RAY_STOP_TIMEOUT_S = 30.0


def ray_node(command: Sequence[str]) -> int:
    """One srun step's Ray node: run `ray start ... --block` until it exits or the step is ended (TERM, INT,
    HUP); either way stop this node's Ray before returning. `ray start --block` alone ignores the step's
    SIGTERM until Slurm's SIGKILL (KillWait later), and Ray's daemons, in sessions of their own, can outlive
    the step; so a preempted job would take KillWait to end, and leave Ray running on its nodes."""
    node = subprocess.Popen(list(command))
    stopping = threading.Event()
    before = {signum: signal.signal(signum, lambda *_: stopping.set()) for signum in STOP_SIGNALS}
    try:
        while node.poll() is None and not stopping.wait(0.5):
            pass
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(RAY_STOP, stdout=subprocess.DEVNULL, timeout=RAY_STOP_TIMEOUT_S, check=False)
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if node.poll() is None:
            node.kill()
    status = node.wait()
    return 128 - status if status < 0 else status


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


SUMMARY_PREFIX = b"summary: "  # `distill-bench run`'s last stdout line (CONTRACT: run summary line)
DRAIN_S = 5.0  # after the command exits, how long its output may still arrive (a child holding the pipe)


def supervise(command: Sequence[str], summary_path: Path, out: BinaryIO) -> int:
    """Run `command` with its stdout passed through to `out` line by line, the signals that stop a job passed
    on to it, and its last summary line written to `summary_path`, so that ray-cluster.sh can repeat it as
    the log's last line after Ray's shutdown noise. Returns the exit status as a shell reports it."""
    summary_path.unlink(missing_ok=True)  # a requeued job's earlier attempt must not speak for this one
    try:
        child = subprocess.Popen(list(command), stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as error:
        out.write(f"ray-cluster: cannot run {shlex.join(command)}: {error}\n".encode())
        return 127
    before = {signum: signal.signal(signum, lambda got, _frame: _send(child, got)) for signum in STOP_SIGNALS}
    last: list[bytes] = []

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            out.write(line)
            out.flush()
            if line.startswith(SUMMARY_PREFIX):
                last[:] = [line]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = child.wait()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    reader.join(DRAIN_S)
    if last:
        summary_path.write_text(last[0].decode(errors="replace").rstrip("\r\n") + "\n")
    return 128 - status if status < 0 else status


def _send(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)


def stored_cells(run_dir: Path) -> int:
    """Cells whose rows are stored; the job requeues itself near its time limit only if this grew (a cell
    longer than the time limit would otherwise requeue forever)."""
    from bench.store import done_cell_keys  # pyarrow: only here, not in `distill-bench slurm`

    return len(done_cell_keys(run_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.slurm_job ray-start ARGS | token PATH | wait NODES NODE=PID... | supervise FILE -- CMD... |
    stored RUN_DIR`, from slurm/ray-cluster.sh."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ray-start"]:  # ARGS go to `ray start` untouched
        return ray_node(ray_start_command(argv[1:], dict(os.environ)))
    parser = argparse.ArgumentParser(prog="python -m bench.slurm_job")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="write a fresh Ray auth token to PATH (mode 0600)")
    token.add_argument("path", type=Path)
    wait = sub.add_parser("wait", help="wait for NODES Ray nodes while every NODE=PID step is alive")
    wait.add_argument("nodes", type=int)
    wait.add_argument("steps", nargs="*", metavar="NODE=PID")
    wait.add_argument("--deadline-s", type=float, default=300.0)
    run = sub.add_parser("supervise", help="run CMD, pass TERM/INT/HUP on, write its last summary line to FILE")
    run.add_argument("summary", type=Path, metavar="FILE")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    stored = sub.add_parser("stored", help="print how many cells RUN_DIR has stored")
    stored.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "token":
        write_token(args.path)
        return 0
    if args.command == "supervise":
        return supervise(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd, args.summary, sys.stdout.buffer)
    if args.command == "stored":
        print(stored_cells(args.run_dir))
        return 0
    steps = {node: int(pid) for node, _, pid in (step.rpartition("=") for step in args.steps)}
    reason = wait_for_cluster(args.nodes, steps, deadline_s=args.deadline_s)
    if reason is not None:
        print(reason, flush=True)  # ray-cluster.sh puts it on the job log's last line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
