"""The rendered Slurm batch script: allocation from the config, one command, nothing else."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bench.cli import app
from tests.unit.test_config import valid_config_data, write_workspace


def test_slurm_script_allocates_the_largest_model_and_runs_against_ray(tmp_path: Path, monkeypatch) -> None:
    data = valid_config_data()
    data["models"][0]["serve"] = {"tensor_parallel_size": 4}
    write_workspace(tmp_path, data)
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["slurm", "config.yaml", "--nodes", "2", "--partition", "gpu"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --partition=gpu" in lines
    assert lines[-1] == "bash slurm/ray-cluster.sh distill-bench run config.yaml --address auto"


def test_slurm_rejects_a_bad_config_before_rendering(tmp_path: Path, monkeypatch) -> None:
    data = valid_config_data()
    data["models"][0]["serve"] = {"tensor_parallel_size": 3}
    write_workspace(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "config.yaml"])
    assert result.exit_code == 2
    assert "models[0].serve.tensor_parallel_size" in result.stderr
