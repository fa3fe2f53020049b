"""`distill-bench slurm`: render the Slurm batch script for a config. The only Slurm-aware code in bench/.

The script is thin by design: allocation and environment, then `slurm/ray-cluster.sh`, which starts Ray
across the allocation and runs `distill-bench run CONFIG --address auto` on the head node.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from bench.config import BenchConfig


@dataclass(frozen=True)
class SlurmOptions:
    """Allocation settings that the config does not decide."""

    nodes: int = 1
    time: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    gpus_per_node: int | None = None  # default: the largest tensor_parallel_size in the config


def render(config: BenchConfig, config_path: Path, options: SlurmOptions, repo: Path) -> str:
    """The sbatch script text."""
    gpus = options.gpus_per_node or max(model.serve.tensor_parallel_size for model in config.models)
    run_dir = Path(config.run.results_dir) / config.run.name
    directives = [
        f"--job-name=distill-bench-{config.run.name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={gpus}",
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
        f"bash slurm/ray-cluster.sh {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"
