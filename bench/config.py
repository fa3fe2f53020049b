"""The benchmark config: frozen pydantic models, YAML loading, and errors that name the key path.

A config is validated once, here; every later stage receives these typed sections. Loading never
imports vLLM, Ray or lm-eval, so `validate` and `plan` stay instant.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ServeConfig(Section):
    """How vLLM serves one model."""

    tensor_parallel_size: PositiveInt = Field(1, description="GPUs per model server, on one node.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights/activation dtype passed to vLLM (`--dtype`)."
    )
    max_model_len: PositiveInt | None = Field(None, description="Context length (`--max-model-len`).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory fraction.")
    cpu_kv_cache_gib: PositiveInt = Field(
        1, description="KV cache size in whole GiB for the CPU build of vLLM (VLLM_CPU_KVCACHE_SPACE)."
    )
    extra_args: tuple[str, ...] = Field((), description="Extra vLLM server arguments, e.g. ['--enforce-eager'].")
    startup_timeout_s: PositiveFloat = Field(600, description="How long to wait for the server to be healthy.")

    @field_validator("tensor_parallel_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value


class ModelConfig(Section):
    """A model under test. A student names its teacher; a model without one is a teacher."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Unique name, e.g. 'r1-distill-7b'.")
    source: str = Field(min_length=1, description="Hugging Face model id or a local model directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    teacher: str | None = Field(None, description="Name of this student's teacher model.")
    parameters: PositiveInt | None = Field(None, description="Parameter count; read from the weights if omitted.")
    serve: ServeConfig = ServeConfig()

    @property
    def role(self) -> Literal["teacher", "student"]:
        return "student" if self.teacher else "teacher"


class TaskConfig(Section):
    """An lm-eval task, by registered name or from a local task YAML directory."""

    name: str = Field(min_length=1, description="lm-eval task or group name, e.g. 'gsm8k' or 'toy'.")
    include_path: str | None = Field(None, description="Directory of local lm-eval task YAMLs.")
    num_fewshot: int = Field(0, ge=0)
    limit: PositiveInt | None = Field(None, description="Evaluate only the first N documents per task.")
    max_gen_toks: PositiveInt | None = Field(
        None, description="Generation budget for generate_until tasks; default: the task's own."
    )


class LengthDistribution(Section):
    """A token-length distribution for synthetic prompts or outputs."""

    kind: Literal["fixed", "uniform", "normal"] = "fixed"
    mean: PositiveInt = Field(description="Mean (or fixed) length in tokens.")
    spread: int = Field(0, ge=0, description="Half-width (uniform) or standard deviation (normal), in tokens.")
    min: PositiveInt = 1
    max: PositiveInt | None = None

    @model_validator(mode="after")
    def _bounds(self) -> LengthDistribution:
        if self.max is not None and self.max < self.min:
            raise ValueError("max must be >= min")
        return self


class SLOConfig(Section):
    """Latency objectives a request must meet to count towards goodput."""

    ttft_s: PositiveFloat | None = None
    tpot_s: PositiveFloat | None = None
    e2e_s: PositiveFloat | None = None


class SweepConfig(Section):
    """How a `sweep` workload searches for capacity: the highest Poisson rate meeting the SLO target.

    Each probe is one Poisson level of the workload (its num_requests, min/max_duration_s, warm-up); the
    search doubles from start_rate_rps until a probe misses, then bisects (see `bench.sweep`).
    """

    target_attainment: float = Field(
        0.9, gt=0, le=1, description="Share of a probe's requests that must meet every SLO for the rate to pass."
    )
    start_rate_rps: PositiveFloat = Field(1.0, description="First probe's request rate (req/s).")
    max_rate_rps: PositiveFloat | None = Field(
        None, description="Never probe above this rate; a pass there ends the search with capacity = this rate."
    )
    max_probes: PositiveInt = Field(8, description="Probe budget: the search stops after this many probes.")
    tolerance: float = Field(
        0.1, gt=0, description="Stop once (lowest failing - best passing) / best passing is at most this."
    )

    @model_validator(mode="after")
    def _start_below_max(self) -> SweepConfig:
        if self.max_rate_rps is not None and self.start_rate_rps > self.max_rate_rps:
            raise ValueError(f"start_rate_rps: {self.start_rate_rps:g} is above max_rate_rps ({self.max_rate_rps:g})")
        return self


class WorkloadConfig(Section):
    """A performance workload: synthetic prompts sent at several load levels, or a capacity sweep."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    mode: Literal["concurrency", "rate", "offline", "sweep"] = Field(
        "concurrency",
        description="Fixed concurrency, Poisson arrival rate (req/s), one offline batch, or a sweep of Poisson "
        "rates for the capacity under the SLO.",
    )
    levels: tuple[PositiveFloat, ...] = Field((1,), description="Concurrency or rate levels (at least one).")
    num_requests: PositiveInt = Field(64, description="Timed requests per level (at least; see min_duration_s).")
    warmup_requests: int = Field(4, ge=0, description="Untimed requests sent before each level.")
    max_duration_s: PositiveFloat | None = Field(None, description="Stop a level early after this long.")
    min_duration_s: PositiveFloat | None = Field(
        None,
        description="Keep a level sending fresh seeded requests until it has lasted this long as well as sent "
        "num_requests (bounded by max_duration_s); ignored by offline mode, which is one batch.",
    )
    prompt_tokens: LengthDistribution = LengthDistribution(mean=32)
    output_tokens: LengthDistribution = LengthDistribution(mean=32)
    request_timeout_s: PositiveFloat = 120
    stream_interval: PositiveInt = Field(
        1,
        description="Tokens per streamed chunk after the first (vLLM's `stream_interval`); above 1 cuts the "
        "server's and client's per-token work at high load, and inter-token latencies become per chunk.",
    )
    slo: SLOConfig = SLOConfig()
    sweep: SweepConfig = SweepConfig()

    @field_validator("levels")
    @classmethod
    def _levels_given_and_whole(cls, levels: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        if not levels:
            raise ValueError("give at least one level")
        if info.data.get("mode", "concurrency") == "concurrency" and any(level != int(level) for level in levels):
            raise ValueError("concurrency levels must be whole numbers")
        return levels

    @model_validator(mode="after")
    def _modes_and_durations_agree(self) -> WorkloadConfig:
        if (
            self.min_duration_s is not None
            and self.max_duration_s is not None
            and self.min_duration_s > self.max_duration_s
        ):
            raise ValueError(
                f"min_duration_s: {self.min_duration_s:g} is above max_duration_s ({self.max_duration_s:g})"
            )
        if self.mode != "sweep":
            if self.sweep != SweepConfig():  # compared by value: a dumped config round-trips its defaults
                raise ValueError(f"sweep: only used with mode: sweep (mode is {self.mode!r})")
            return self
        if self.levels != WorkloadConfig.model_fields["levels"].default:
            raise ValueError("levels: not used with mode: sweep, which picks its rates from sweep.start_rate_rps")
        if all(limit is None for limit in (self.slo.ttft_s, self.slo.tpot_s, self.slo.e2e_s)):
            raise ValueError("slo: mode: sweep needs at least one of slo.ttft_s, slo.tpot_s, slo.e2e_s")
        return self


class HardwareConfig(Section):
    """What the run is priced as: a device type looked up in the price table."""

    device_type: str = Field("cpu-core", description="Key in the price table, e.g. 'H100-80GB' or 'cpu-core'.")
    prices: str = Field("configs/prices.yaml", description="Price table YAML ($ per device-hour).")
    devices_per_model: PositiveInt | None = Field(
        None, description="Devices billed per model server; default tensor_parallel_size (GPU) or 1 (CPU)."
    )


class CompareConfig(Section):
    """How student and teacher are judged against each other."""

    retention_margin: float = Field(
        0.05, ge=0, lt=1, description="Non-inferiority margin: the student may lose at most this much absolute score."
    )
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: PositiveInt = 2000
    controls: tuple[tuple[str, str], ...] = Field(
        (),
        description="Pairs of model names of the same architecture, e.g. [[student-a, student-b]]: compare prints "
        "their cost ratios (second / first) as a control whose interval should contain 1.",
    )


class RunConfig(Section):
    """Where results go and how the run behaves."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Run id; results/<name>/.")
    results_dir: str = "results"
    seed: int = 0
    cell_retries: int = Field(1, ge=0, description="Extra attempts for a failed cell.")
    cell_timeout_s: PositiveFloat = 3600


class BenchConfig(Section):
    """A whole benchmark: models, tasks, workloads, hardware, comparison and run settings."""

    run: RunConfig
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    tasks: tuple[TaskConfig, ...] = ()
    workloads: tuple[WorkloadConfig, ...] = ()
    hardware: HardwareConfig = HardwareConfig()
    compare: CompareConfig = CompareConfig()

    @field_validator("models")
    @classmethod
    def _unique_names_and_known_teachers(cls, models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        names = [m.name for m in models]
        for index, model in enumerate(models):
            if names.index(model.name) != index:
                raise ValueError(f"[{index}].name: duplicate model name {model.name!r}")
            if model.teacher is not None and model.teacher not in names:
                raise ValueError(f"[{index}].teacher: unknown teacher {model.teacher!r}; models are {names}")
            if model.teacher == model.name:
                raise ValueError(f"[{index}].teacher: a model cannot be its own teacher")
            if model.teacher is not None and models[names.index(model.teacher)].teacher is not None:
                raise ValueError(f"[{index}].teacher: {model.teacher!r} is itself a student")
        return models

    @model_validator(mode="after")
    def _generation_fits_every_context(self) -> BenchConfig:
        # lm-eval keeps max_length - max_gen_toks tokens of prompt; with no room left it silently cuts the
        # prompt's first tokens (BOS included) and every score is wrong.
        for t_index, task in enumerate(self.tasks):
            for m_index, model in enumerate(self.models):
                limit = model.serve.max_model_len
                if limit is not None and task.max_gen_toks is not None and task.max_gen_toks >= limit:
                    raise ValueError(
                        f"tasks[{t_index}].max_gen_toks: {task.max_gen_toks} leaves no room for the prompt within "
                        f"models[{m_index}].serve.max_model_len ({model.serve.max_model_len})"
                    )
        return self

    @model_validator(mode="after")
    def _controls_name_two_models(self) -> BenchConfig:
        names = [m.name for m in self.models]
        for index, pair in enumerate(self.compare.controls):
            for name in pair:
                if name not in names:
                    raise ValueError(f"compare.controls[{index}]: unknown model {name!r}; models are {names}")
            if pair[0] == pair[1]:
                raise ValueError(f"compare.controls[{index}]: a control compares two different models")
        return self

    def run_dir(self, results_dir: Path | None = None) -> Path:
        """Where this run's results go: <results_dir or run.results_dir>/<run.name>."""
        return (results_dir or Path(self.run.results_dir)) / self.run.name

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)

    def content_hash(self) -> str:
        """Stable hash of the validated config, recorded in the run manifest."""
        return json_sha256(self.model_dump(mode="json"))


def json_sha256(payload: object) -> str:
    """sha256 (hex) of the canonical JSON of a payload (sorted keys; str() for what JSON cannot hold).

    The one content hash of the project: config hashes, cell keys, task config hashes, toy build keys.
    """
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ConfigError(Exception):
    """A config that cannot be used; each line reads `file: dotted.key.path: message`."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


_KEY_PATH = re.compile(r"(\[\d+\]|[A-Za-z_]\w*)(\.[A-Za-z_]\w*|\[\d+\])*")


def _dotted(location: tuple[str | int, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def error_lines(source: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        location = tuple(part for part in item["loc"] if not str(part).startswith("function-after"))
        message = item["msg"].removeprefix("Value error, ")
        key = _dotted(location)
        # Validators on a list report the element's own sub-path at the start of the message, cross-field
        # validators of a section the key below it, and validators on the whole config the full path.
        head, separator, rest = message.partition(": ")
        if separator and _KEY_PATH.fullmatch(head):
            key, message = (key + head if head.startswith("[") or not key else f"{key}.{head}"), rest
        lines.append(f"{source}: {key or '<root>'}: {message}")
    return lines


def _check_paths(config: BenchConfig, base: Path, source: str) -> list[str]:
    errors = []
    for index, task in enumerate(config.tasks):
        if task.include_path is not None and not (base / task.include_path).is_dir():
            errors.append(f"{source}: tasks[{index}].include_path: no such directory {task.include_path!r}")
    if not (base / config.hardware.prices).is_file():
        errors.append(f"{source}: hardware.prices: no such file {config.hardware.prices!r}")
    for index, model in enumerate(config.models):
        looks_local = model.source.startswith((".", "/")) or model.source.count("/") > 1
        if looks_local and not (base / model.source).is_dir():
            errors.append(f"{source}: models[{index}].source: no such model directory {model.source!r}")
    return errors


def parse_config(data: object, source: str = "<config>", base: Path = Path(".")) -> BenchConfig:
    """Validate already-parsed YAML data; relative paths are checked against `base`."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: <root>: expected a mapping of config sections"])
    try:
        config = BenchConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(error_lines(source, error)) from None
    path_errors = _check_paths(config, base, source)
    if path_errors:
        raise ConfigError(path_errors)
    return config


def read_yaml(path: Path, what: str) -> object:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError naming `file:line:column`."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such {what}"]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}"]) from None


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a YAML config file. Paths inside it are relative to the working directory."""
    path = Path(path)
    return parse_config(read_yaml(path, "config file"), source=str(path))
