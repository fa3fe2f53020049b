"""`distill-bench slurm`: render (and submit) the Slurm batch script for a config. The only Slurm-aware code
in bench/.

The script is thin by design: allocation and environment, then `slurm/ray-cluster.sh`, which starts Ray
across the allocation and runs `distill-bench run CONFIG --address auto` on the head node. What that shell
script needs decided inside the job lives in `bench.slurm_job`.

Preemption and time limits: the job is requeueable, and Slurm signals the batch shell (USR1) `grace_s` before
the time limit. Either way the run is stopped with SIGTERM: it abandons the cells in flight (a cell's rows are
written atomically when it finishes, so none is half-stored) and the cells already stored stay. A requeued
job runs the same command again, which skips every stored cell: each cell's rows end up stored exactly once.

Every option value ends up in a `#SBATCH` line, and a newline there starts a new script line that bash runs:
options are validated against Slurm's own formats (never quoted and hoped for), so no whitespace, control
character, quote or `$` can reach the script.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.config import MAX_TENSOR_PARALLEL, BenchConfig

MAX_NODES = 100_000  # above any real cluster; bounds what reaches the script
MAX_OPTION_CHARS = 256
MAX_SIGNAL_LEAD_S = 65_535  # the most seconds sbatch --signal accepts
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
    cpu: bool = False  # a CPU partition: no GPUs requested
    grace_s: int = 300  # stop the run this long before the time limit, and requeue the job to resume

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
        if self.cpu and self.gpus_per_node:
            raise SlurmOptionError(f"--cpu: asks for no GPUs, but --gpus-per-node is {self.gpus_per_node}")
        if not 1 <= self.grace_s <= MAX_SIGNAL_LEAD_S:
            raise SlurmOptionError(f"--grace-s: {self.grace_s} is not between 1 and {MAX_SIGNAL_LEAD_S}")
        limit_s = time_limit_s(self.time)
        if limit_s is not None and self.grace_s >= limit_s:
            # Slurm would signal the job as it starts: it would stop at once, and find nothing to requeue for.
            raise SlurmOptionError(f"--grace-s: {self.grace_s} s is not less than --time {self.time} ({limit_s} s)")


def time_limit_s(text: str) -> int | None:
    """Seconds in a validated Slurm --time value; None for no limit (UNLIMITED, INFINITE, or 0, as sbatch reads it)."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (*parts, 0, 0)[:3]
    elif len(parts) == 3:  # H:M:S
        hours, minutes, seconds = parts
    else:  # M, M:S
        hours, minutes, seconds = 0, parts[0], (parts[1] if len(parts) == 2 else 0)
    limit = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return limit or None


def _shown(value: str) -> str:
    """The value as one printable line (repr shows a newline as \\n), clipped."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def gpus_per_node(config: BenchConfig, options: SlurmOptions) -> int:
    """GPUs to request on each node: none for --cpu, else the option, else none for a config priced as CPU
    cores (a CPU partition), else the largest tensor_parallel_size (every server runs on one node)."""
    if options.cpu:
        return 0
    if options.gpus_per_node is not None:
        return options.gpus_per_node
    if config.hardware.device_type == CPU_DEVICE_TYPE:
        return 0
    return max(model.serve.tensor_parallel_size for model in config.models)


CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "ray-cluster.sh"  # of this checkout


@dataclass(frozen=True)
class JobPaths:
    """Where a job runs and what it uses. Relative paths are relative to `workdir`, where the job starts."""

    workdir: Path  # the job cds here first: the config's relative paths (results, tasks, prices) start here
    job_dir: Path  # the job's own files: script, log, each node's Ray output, the Ray token, the summary line
    venv: Path | None  # activated before anything runs (the environment distill-bench was started from)
    cluster_script: Path = CLUSTER_SCRIPT

    def __post_init__(self) -> None:
        if "\\" in str(self.job_dir):  # it turns off sbatch's %j in the log's name: every job would share one
            raise SlurmOptionError(f"--job-dir: {_shown(str(self.job_dir))} contains a backslash")

    @classmethod
    def here(cls, config: BenchConfig, job_dir: Path | None = None) -> JobPaths:
        """For a job submitted from the current directory and Python environment; the job's files default
        to <run dir>/slurm."""
        venv = Path(sys.prefix) if sys.prefix != sys.base_prefix else None  # a bare interpreter: PATH as exported
        return cls(Path.cwd(), job_dir or config.run_dir() / "slurm", venv)


def render(config: BenchConfig, config_path: Path, options: SlurmOptions, paths: JobPaths) -> str:
    """The sbatch script text. Its `--output` is relative to the submit directory; `submit` puts it in the
    job dir."""
    if not _JOB_NAME.fullmatch(config.run.name):  # the config's own pattern; never trust it twice removed
        raise SlurmOptionError(f"run.name: {_shown(config.run.name)} cannot name a Slurm job")
    gpus = gpus_per_node(config, options)
    directives = [
        f"--job-name=distill-bench-{config.run.name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        *([f"--gpus-per-node={gpus}"] if gpus else []),
        "--exclusive",
        f"--time={options.time}",
        f"--output=slurm-{config.run.name}-%j.out",
        # Preempted or requeued: the job comes back and resumes after the stored cells. Near the time limit
        # the batch shell (B:) gets USR1, stops the run and requeues the job itself if it stored anything.
        "--requeue",
        "--open-mode=append",  # a requeued job continues its log rather than erasing the earlier attempts
        f"--signal=B:USR1@{options.grace_s}",
    ]
    directives += [f"--partition={options.partition}"] if options.partition else []
    directives += [f"--account={options.account}"] if options.account else []
    command = ["distill-bench", "run", str(config_path), "--address", "auto"]
    lines = [
        "#!/usr/bin/env bash",
        *(f"#SBATCH {directive}" for directive in directives),
        "set -euo pipefail",
        f"cd {shlex.quote(str(paths.workdir))}",
        f"mkdir -p {shlex.quote(str(config.run_dir()))} {shlex.quote(str(paths.job_dir))}",
        *([f"source {shlex.quote(str(paths.venv / 'bin' / 'activate'))}"] if paths.venv else []),
        # What ray-cluster.sh asks every srun step for, where the run stores cells (it counts them before it
        # requeues the job), and where it keeps the job's own files.
        f"export DISTILL_GPUS_PER_NODE={gpus} DISTILL_RUN_DIR={shlex.quote(str(config.run_dir()))} "
        f"DISTILL_JOB_DIR={shlex.quote(str(paths.job_dir))}",
        # exec: the signals Slurm sends the batch shell must reach the script that handles them.
        f"exec bash {shlex.quote(str(paths.cluster_script))} {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


class SubmitError(RuntimeError):
    """sbatch could not be run or refused the job; the message is one line."""


@dataclass(frozen=True)
class Submission:
    job_id: str
    script: Path
    log: Path  # the job's stdout and stderr, every attempt of a requeued job appended
    run_dir: Path


SBATCH_TIMEOUT_S = 120.0  # sbatch retries an unreachable controller for a while on its own; then it is down


def submit(script_text: str, paths: JobPaths, run_dir: Path, sbatch: str = "sbatch") -> Submission:
    """Write the script into the job dir and submit it with its log beside it; the job id from `--parsable`."""
    paths.job_dir.mkdir(parents=True, exist_ok=True)
    script = paths.job_dir / "job.sbatch"
    script.write_text(script_text)
    output = str(paths.job_dir).replace("%", "%%") + "/slurm-%j.out"  # %% is a literal % in the name
    try:
        done = subprocess.run(
            [sbatch, "--parsable", f"--output={output}", str(script)],
            capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise SubmitError(f"{sbatch}: not found; on a machine without Slurm, `distill-bench slurm CONFIG` prints "
                          "the script") from None  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SubmitError(f"{sbatch}: no answer in {SBATCH_TIMEOUT_S:.0f} s (is slurmctld up?)") from None
    problem = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    job_id = done.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"
    if done.returncode != 0 or not job_id.isdigit():
        reason = problem[-1] if problem else f"printed {_shown(done.stdout.strip())}"
        raise SubmitError(f"{sbatch} failed (exit {done.returncode}): {reason}")
    return Submission(job_id, script, paths.job_dir / f"slurm-{job_id}.out", run_dir)
