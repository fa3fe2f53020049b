"""The rendered Slurm batch script: allocation from the config, one command, nothing else; no option value can
add a line to it; the helpers slurm/ray-cluster.sh calls (GPUs a step sees, the job's token, the bounded wait)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import slurm
from bench.cli import app
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
    assert "#SBATCH --requeue" in lines and "#SBATCH --signal=B:USR1@300" in lines
    assert lines[-1] == f"exec bash {slurm.CLUSTER_SCRIPT} distill-bench run config.yaml --address auto"


def test_render_is_the_default_slurm_command(tmp_path: Path, monkeypatch) -> None:
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    plain = CliRunner().invoke(app, ["slurm", "config.yaml", "--time", "30"])
    named = CliRunner().invoke(app, ["slurm", "render", "config.yaml", "--time", "30"])
    assert plain.exit_code == named.exit_code == 0
    assert plain.stdout == named.stdout and "#SBATCH --time=30" in plain.stdout


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


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("04:00:00", 14400),
        ("2-0", 172800),
        ("1-02:30", 95400),
        ("1-02:30:15", 95415),
        ("UNLIMITED", None),
        ("infinite", None),
        ("0", None),  # sbatch reads a zero limit as none
    ],
)
def test_time_limits_in_seconds(value: str, seconds: int | None) -> None:
    assert slurm.time_limit_s(value) == seconds


@pytest.mark.parametrize(
    ("time", "grace_s", "ok"),
    [("5", 299, True), ("5", 300, False), ("UNLIMITED", 65535, True), ("1-0", 0, False), ("1-0", 65536, False)],
)
def test_the_stop_signal_must_come_before_the_time_limit(time: str, grace_s: int, ok: bool) -> None:
    """Slurm would send USR1 as the job starts: it would stop before doing anything."""
    if ok:
        assert slurm.SlurmOptions(time=time, grace_s=grace_s).grace_s == grace_s
    else:
        with pytest.raises(slurm.SlurmOptionError, match="^--grace-s: "):
            slurm.SlurmOptions(time=time, grace_s=grace_s)


# -- `distill-bench slurm submit`, with a stub sbatch ----------------------------------------------------

SBATCH_STUB = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$SBATCH_ARGS"
if [[ -n ${SBATCH_FAILS:-} ]]; then
  echo "sbatch: error: Batch job submission failed: $SBATCH_FAILS" >&2
  exit 1
fi
echo "4242;local"
"""


@pytest.fixture
def sbatch_args(tmp_path: Path, monkeypatch) -> Path:
    """A stub sbatch first on PATH; the path where it writes the arguments it got (absent: never called)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "sbatch").write_text(SBATCH_STUB)
    (stubs / "sbatch").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_ARGS", str(tmp_path / "sbatch-args"))
    workspace = tmp_path / "work"
    workspace.mkdir()
    write_workspace(workspace)
    monkeypatch.chdir(workspace)
    return tmp_path / "sbatch-args"


def test_submit_writes_the_script_to_the_job_dir_and_prints_job_log_and_results(sbatch_args: Path) -> None:
    result = CliRunner().invoke(app, ["slurm", "submit", "config.yaml", "--time", "30"])

    assert result.exit_code == 0, result.output
    job_dir = Path("results/unit-run/slurm")
    assert result.stdout.splitlines() == [
        "job: 4242",
        f"log: {job_dir / 'slurm-4242.out'}",
        "results: results/unit-run",
    ]
    assert sbatch_args.read_text().splitlines() == [
        "--parsable",
        f"--output={job_dir}/slurm-%j.out",
        str(job_dir / "job.sbatch"),
    ]
    rendered = CliRunner().invoke(app, ["slurm", "config.yaml", "--time", "30"]).stdout
    assert (job_dir / "job.sbatch").read_text() == rendered


def test_submit_to_a_job_dir_with_a_percent_keeps_it_literal(sbatch_args: Path) -> None:
    result = CliRunner().invoke(app, ["slurm", "submit", "config.yaml", "--job-dir", "jobs/100%"])
    assert result.exit_code == 0, result.output
    assert "--output=jobs/100%%/slurm-%j.out" in sbatch_args.read_text().splitlines()
    assert "log: jobs/100%/slurm-4242.out" in result.stdout.splitlines()


def test_a_job_dir_with_a_backslash_is_refused_before_sbatch(sbatch_args: Path) -> None:
    """sbatch turns off the %j in a log name that has a backslash: every job would share one log."""
    result = CliRunner().invoke(app, ["slurm", "submit", "config.yaml", "--job-dir", "jobs\\x"])
    assert result.exit_code == 2 and result.stderr.startswith("--job-dir: ")
    assert not sbatch_args.exists()


def test_sbatch_refusing_the_job_is_one_line_and_exit_1(sbatch_args: Path, monkeypatch) -> None:
    monkeypatch.setenv("SBATCH_FAILS", "Invalid partition name specified")
    result = CliRunner().invoke(app, ["slurm", "submit", "config.yaml", "--partition", "nope"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "sbatch failed (exit 1): sbatch: error: Batch job submission failed: Invalid partition name specified"
    ]


def test_submit_without_sbatch_says_so(sbatch_args: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(sbatch_args.parent / "empty"))
    result = CliRunner().invoke(app, ["slurm", "submit", "config.yaml"])
    assert result.exit_code == 1
    assert result.stderr.startswith("sbatch: not found") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("option", "value"), HOSTILE, ids=[f"{o}={v!r}"[:40] for o, v in HOSTILE])
def test_hostile_option_values_never_reach_sbatch(sbatch_args: Path, option: str, value: str) -> None:
    result = CliRunner().invoke(app, ["slurm", "submit", "config.yaml", f"{option}={value}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(option) and len(result.stderr.strip().splitlines()) == 1
    assert not sbatch_args.exists(), "sbatch ran"
    assert not Path("results").exists()  # nothing written either
