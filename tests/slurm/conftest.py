"""A real Slurm on this machine for the `slurm` tier: slurmctld and slurmd (Debian's slurm-wlm 22.05) started
on localhost from a config written into a temp dir, one node with two fake GPUs declared as gres.

The daemons run in the foreground (-D) as children of the test session, so teardown owns them; jobs left
over by a failed test are cancelled first, which lets each job's own teardown stop its Ray and vLLM. The
tier skips, saying why, without root (slurmd runs the jobs as root here) or without the Slurm commands.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SLURM_COMMANDS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")
READY_TIMEOUT_S = 60.0  # the pair is up in about a second here; slurmd retries its registration for longer
STOP_TIMEOUT_S = 30.0
FAKE_GPUS = 2  # gres on the node: character devices that behave like /dev/null (FACTS.md: Slurm on one machine)
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def missing_slurm() -> str | None:
    """Why the tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "the slurm tier needs root: slurmd runs the test jobs as root (auth/none)"
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        return f"{', '.join(missing)} not found: install Debian's slurm-wlm (.ci/run does)"
    return None


def processes_with_env(entry: str) -> list[int]:
    """PIDs of running processes whose environment holds `entry` ("NAME=value"): what a job started, found by
    a variable every process it started inherits, however it was detached from its parent."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue  # exited meanwhile
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_slurm_conf(root: Path, node: str, cpus: int, memory_mb: int) -> Path:
    """slurm.conf and gres.conf for one localhost node; every path in `root`, fresh ports."""
    gpus = [root / f"fakegpu{index}" for index in range(FAKE_GPUS)]
    for device in gpus:
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
    for directory in ("state", "spool", "log"):
        (root / directory).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=local
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
GresTypes=gpu
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File={root}/fakegpu[0-{FAKE_GPUS - 1}]\n")
    return conf


@dataclass
class LocalSlurm:
    """The running pair and the commands to talk to it."""

    conf: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF

    def command(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, Reason, ...)."""
        text = self.command("scontrol", "show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_until(
        self, job_id: str, done: Callable[[dict[str, str]], bool], timeout_s: float, what: str
    ) -> dict[str, str]:
        """Poll the job until `done(state)`; fails at its deadline, or at once when the job ended otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.job(job_id)
            if done(state):
                return state
            if state["JobState"] in TERMINAL_STATES or time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: not {what} ({state['JobState']}, {timeout_s:.0f} s bound)")
            time.sleep(0.5)

    def wait_finished(self, job_id: str, timeout_s: float) -> dict[str, str]:
        return self.wait_until(job_id, lambda s: s["JobState"] in TERMINAL_STATES, timeout_s, "finished")

    def requeued_now(self, job_id: str) -> None:
        """After a requeue Slurm holds a batch job back (BeginTime; cred_expire, 120 s by default, 10 s here):
        release it now."""
        self.wait_until(job_id, lambda s: s["JobState"] == "PENDING", 60, "pending again")
        self.command("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def queue(self) -> list[str]:
        return self.command("squeue", "-h", "-o", "%i").split()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    node = socket.gethostname().split(".")[0]  # slurmctld insists on `hostname -s`
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = write_slurm_conf(root, node, os.cpu_count() or 1, memory_mb)
    slurm = LocalSlurm(conf, {**os.environ, "SLURM_CONF": str(conf)})
    daemons = [
        subprocess.Popen([name, "-D", "-f", str(conf), *extra], env=slurm.env, stdout=log, stderr=subprocess.STDOUT)
        for name, extra, log in (
            ("slurmctld", [], open(root / "log" / "slurmctld.out", "wb")),  # noqa: SIM115 - the daemon owns it
            ("slurmd", ["-N", node], open(root / "log" / "slurmd.out", "wb")),  # noqa: SIM115
        )
    ]
    try:
        _wait_idle(slurm, daemons, root)
        yield slurm
    finally:
        _cancel_all(slurm)
        for daemon in reversed(daemons):
            _stop(daemon)


def _wait_idle(slurm: LocalSlurm, daemons: list[subprocess.Popen[bytes]], root: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(daemon.poll() is not None for daemon in daemons):
            break
        try:
            states = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=slurm.env, capture_output=True, text=True, timeout=5, check=False
            ).stdout.split()
        except subprocess.TimeoutExpired:
            states = []
        if states == ["idle"]:
            return
        time.sleep(0.5)
    logs = "\n".join((root / "log" / name).read_text()[-2000:] for name in ("slurmctld.out", "slurmd.out"))
    raise AssertionError(f"the local Slurm did not come up in {READY_TIMEOUT_S:.0f} s:\n{logs}")


def _cancel_all(slurm: LocalSlurm) -> None:
    """Cancel what a failed test left queued or running, and wait (bounded) for the jobs' own teardown."""
    jobs = slurm.queue()
    if not jobs:
        return
    slurm.command("scancel", *jobs, check=False)
    deadline = time.monotonic() + 90  # KillWait (30 s) plus each job's teardown
    while slurm.queue() and time.monotonic() < deadline:
        time.sleep(1)
