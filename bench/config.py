"""The benchmark config: frozen pydantic models, YAML loading, and errors that name the key path.

A config is validated once, here; every later stage receives these typed sections. Loading never
imports vLLM, Ray or lm-eval, so `validate` and `plan` stay instant.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]

# Bounds on what a config may ask for: a hostile or mistyped value fails validation with its key instead of
# an OverflowError, a petabyte allocation or a hang later in the run.
INT64_MAX = 2**63 - 1  # every int in a config ends up in Parquet (int64), numpy or a C API
MAX_TENSOR_PARALLEL = 1024  # GPUs of one server on one node: far above any real node
MAX_SEED = 2**32 - 1  # numpy's and lm-eval's seeds are 32-bit
MAX_BOOTSTRAP_SAMPLES = 1_000_000  # samples × documents are held in memory at once
MAX_LOCAL_FILES = 10_000  # files a local model or task directory may hold: each is fingerprinted by plan
MAX_FLOAT = 1e9  # seconds (31 years), req/s, $/hour: nothing real comes near; time APIs overflow far above
MAX_REQUESTS = 10_000_000  # requests of one level: each is planned in memory before the level starts
MAX_TOKENS = 10_000_000  # tokens of one synthetic prompt or output: above the longest context of any model
NORMAL_TAIL_SDS = 4  # a normal length without `max` is checked against the context at mean + 4 sd
FREE_TEXT_FIELDS = frozenset({"note"})  # string fields that may span lines (a price's note)
_UNPRINTABLE = frozenset({"Cc", "Zl", "Zp"})  # control characters and line/paragraph separators


def _unprintable(text: str) -> str | None:
    return next((character for character in text if unicodedata.category(character) in _UNPRINTABLE), None)


def _unbounded_or_unprintable(value: object, field_name: str = "", path: str = "") -> str | None:
    """Why a validated value cannot be used safely downstream, or None; `path` locates tuple items."""
    where = f"{path}: " if path else ""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return f"{where}must fit in 64 bits (at most {INT64_MAX})"
    if isinstance(value, float) and abs(value) > MAX_FLOAT:
        return f"{where}must be at most {MAX_FLOAT:g} in size"
    if isinstance(value, str) and field_name not in FREE_TEXT_FIELDS:
        character = _unprintable(value)
        if character is not None:
            return f"{where}contains the control character {character!r}"
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            problem = _unbounded_or_unprintable(item, field_name, f"{path}[{index}]")
            if problem:
                return problem
    return None


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _fits_and_prints(cls, value: Any, info: ValidationInfo) -> Any:
        # Every field of every section: ints fit in int64 and strings hold no control characters (a newline in
        # a name would break every one-line message and log line that prints it). Floats are finite by
        # allow_inf_nan=False above.
        problem = _unbounded_or_unprintable(value, info.field_name or "")
        if problem:
            raise ValueError(problem)
        return value


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
        if value > MAX_TENSOR_PARALLEL:
            raise ValueError(f"must be at most {MAX_TENSOR_PARALLEL} (GPUs of one server, on one node)")
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @field_validator("extra_args")
    @classmethod
    def _harness_owns_its_flags(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        for index, arg in enumerate(args):
            owner = harness_flag_owner(arg)
            if owner is not None:
                raise ValueError(f"[{index}]: {arg.split('=', 1)[0]!r} is set by the harness: {owner}")
        return args


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

    @field_validator("name")
    @classmethod
    def _no_whitespace(cls, name: str) -> str:
        if any(character.isspace() for character in name):
            raise ValueError(f"{name!r} contains whitespace; lm-eval task names never do")
        return name


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
    repeats: PositiveInt = Field(
        3,
        description="Trials of the whole workload per model, in blocks: block b runs every model once, in a "
        "seeded random order, so drift of the machine hits every model alike; cost ratios get an interval "
        "over blocks. 5 is recommended; raising it later adds blocks without re-running the stored ones.",
    )

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

    @field_validator("bootstrap_samples")
    @classmethod
    def _bootstrap_fits_in_memory(cls, samples: int) -> int:
        if samples > MAX_BOOTSTRAP_SAMPLES:
            raise ValueError(f"must be at most {MAX_BOOTSTRAP_SAMPLES:,} (each sample is a resample held in memory)")
        return samples


class RunConfig(Section):
    """Where results go and how the run behaves."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Run id; results/<name>/.")
    results_dir: str = "results"
    seed: int = 0
    cell_retries: int = Field(1, ge=0, description="Extra attempts for a failed cell.")
    cell_timeout_s: PositiveFloat = 3600

    @field_validator("name")
    @classmethod
    def _stays_inside_results_dir(cls, name: str) -> str:
        if name.startswith("."):
            raise ValueError(
                f"{name!r} starts with '.': the run directory would be results_dir itself, its parent, or hidden"
            )
        return name

    @field_validator("seed")
    @classmethod
    def _seed_is_32_bit(cls, seed: int) -> int:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"must be between 0 and {MAX_SEED} (numpy and lm-eval take 32-bit seeds)")
        return seed


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

    @field_validator("tasks", "workloads")
    @classmethod
    def _unique_names(cls, items: tuple[TaskConfig | WorkloadConfig, ...]) -> tuple[TaskConfig | WorkloadConfig, ...]:
        # Results are stored and compared by task and workload name: a second entry would mix with the first.
        names = [item.name for item in items]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise ValueError(f"[{index}].name: duplicate name {name!r} (also [{names.index(name)}])")
        return items

    @model_validator(mode="after")
    def _requests_fit_every_context(self) -> BenchConfig:
        # vLLM refuses a request whose prompt + max_tokens exceeds max_model_len: every request would fail.
        # Counts and lengths are bounded too: the load generator plans a level's requests in memory.
        for w_index, workload in enumerate(self.workloads):
            for key in ("num_requests", "warmup_requests"):
                if getattr(workload, key) > MAX_REQUESTS:
                    raise ValueError(f"workloads[{w_index}].{key}: must be at most {MAX_REQUESTS:,} per level")
            prompt, output = longest_length(workload.prompt_tokens), longest_length(workload.output_tokens)
            for key, longest in (("prompt_tokens", prompt), ("output_tokens", output)):
                if longest > MAX_TOKENS:
                    raise ValueError(
                        f"workloads[{w_index}].{key}: lengths up to {longest} tokens; at most {MAX_TOKENS:,} (set max)"
                    )
            for m_index, model in enumerate(self.models):
                limit = model.serve.max_model_len
                if limit is not None and prompt + output > limit:
                    raise ValueError(
                        f"workloads[{w_index}].output_tokens: prompt_tokens up to {prompt} + output_tokens up to "
                        f"{output} exceed models[{m_index}].serve.max_model_len ({limit})"
                    )
        return self

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
        return json_sha256(redacted_dump(self))


def json_sha256(payload: object) -> str:
    """sha256 (hex) of the canonical JSON of a payload (sorted keys; str() for what JSON cannot hold).

    The one content hash of the project: config hashes, cell keys, task config hashes, toy build keys.
    """
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# -- bounds and safety checks used by the validators above ---------------------------------------------


def longest_length(lengths: LengthDistribution) -> int:
    """The longest length (tokens) the load generator draws from a distribution (clipped to min/max)."""
    if lengths.kind == "fixed":
        longest = lengths.mean
    elif lengths.kind == "uniform":
        longest = lengths.mean + lengths.spread
    else:
        longest = lengths.mean + NORMAL_TAIL_SDS * lengths.spread
    if lengths.max is not None:
        longest = min(longest, lengths.max) if lengths.kind != "normal" else lengths.max
    return max(longest, lengths.min)


# Server flags the harness sets itself (bench.serve.server_command): an extra_args copy would win silently
# (argparse keeps the last), and results would be recorded under settings that did not run.
HARNESS_FLAGS = {
    "--model": "models[].source names the weights",
    "--served-model-name": "models[].name is the served name",
    "--host": "the server binds 127.0.0.1, where its clients (lm-eval, the load generator) run",
    "--port": "each server gets a free port of its own",
    "--tensor-parallel-size": "use serve.tensor_parallel_size",
    "-tp": "use serve.tensor_parallel_size",
    "--dtype": "use serve.dtype",
    "--max-model-len": "use serve.max_model_len",
    "--gpu-memory-utilization": "use serve.gpu_memory_utilization",
    "--seed": "use run.seed",
    "--revision": "use models[].revision",
    "--config": "a vLLM config file could set any harness flag; give its options in extra_args",
}


def _flag_name(arg: str) -> str:
    """`--foo_bar=1` -> `--foo-bar`: vLLM's parser accepts underscores for dashes."""
    flag = arg.split("=", 1)[0]
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def harness_flag_owner(arg: str) -> str | None:
    """What owns a server flag the harness sets (for the error message), or None for a flag extra_args may set.

    Catches `--port 1`, `--port=1`, `--tensor_parallel_size` and abbreviations argparse would expand (`--hos`).
    """
    flag = _flag_name(arg)
    if flag in HARNESS_FLAGS:
        return HARNESS_FLAGS[flag]
    if flag.startswith("--") and len(flag) > 3:
        for owned, owner in HARNESS_FLAGS.items():
            if owned.startswith(flag):
                return f"{owner} ({flag!r} abbreviates {owned!r})"
    return None


REDACTED = "<redacted>"
_SECRET_WORDS = frozenset({"token", "key", "apikey", "secret", "password", "passwd", "credential", "credentials"})
_SECRET_VALUE = re.compile(r"(sk-|hf_|ghp_|github_pat_|xox[abp]-|AKIA)[A-Za-z0-9_-]{8,}")


def _secret_flag(flag: str) -> bool:
    """`--api-key`, `--hf-token`, `--db-password`: a word of the flag's name is a secret's (not `--tokenizer`)."""
    return flag.startswith("-") and any(word in _SECRET_WORDS for word in flag.lstrip("-").lower().split("-"))


def redact_args(args: Sequence[str]) -> list[str]:
    """Server arguments with secret-looking values replaced by `<redacted>`, for anything that is stored.

    A value is secret when its flag is named like one (`--api-key X`, `--api-key=X`, `--hf-token X`) or when it
    looks like a provider key itself (`sk-...`, `hf_...`). Flags and every other value are kept.
    """
    redacted, after_secret_flag = [], False
    for arg in args:
        flag, equals, value = arg.partition("=")
        if after_secret_flag and not arg.startswith("-"):
            redacted.append(REDACTED)
        elif equals and _secret_flag(_flag_name(flag)):
            redacted.append(f"{flag}={REDACTED}")
        elif _SECRET_VALUE.search(arg):
            redacted.append(f"{flag}={REDACTED}" if equals and flag.startswith("-") else REDACTED)
        else:
            redacted.append(arg)
        after_secret_flag = not equals and _secret_flag(_flag_name(arg))
    return redacted


def redacted_dump(config: BenchConfig) -> dict:
    """The config as JSON data for storage (run.json): secret-looking extra_args values redacted."""
    data = config.model_dump(mode="json")
    for model in data["models"]:
        model["serve"]["extra_args"] = redact_args(model["serve"]["extra_args"])
    return data


# -- local model and task directories -------------------------------------------------------------------

MODEL_DIR_MARKERS = ("config.json", "params.json")  # Hugging Face and Mistral layouts: what vLLM loads
_PSEUDO_FILESYSTEMS = frozenset({"proc", "sys", "dev"})


@dataclass(frozen=True)
class LocalEntry:
    """A file of a local model or task directory, as plan fingerprints it."""

    path: Path  # root / relative path
    link_target: str | None = None  # a symlink leading out of the directory: its target, named, never followed


@dataclass(frozen=True)
class LocalScan:
    """The visible files of a local directory, and why it cannot be used (empty when it can)."""

    entries: tuple[LocalEntry, ...]
    problems: tuple[str, ...]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"  # not inputs: VCS data, editor files, caches


def _on_pseudo_filesystem(path: Path) -> bool:
    return path.is_absolute() and len(path.parts) > 1 and path.parts[1] in _PSEUDO_FILESYSTEMS


def _local_entry(path: Path, root: Path, real_root: Path) -> tuple[LocalEntry | None, str | None]:
    """The entry for one file (None for what is not an input: sockets, fifos, devices), or a problem."""
    name = path.relative_to(root).as_posix()
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            target = path.resolve(strict=True)
            if target.is_relative_to(real_root) and not _on_pseudo_filesystem(target):
                return (LocalEntry(path) if target.is_file() and os.access(target, os.R_OK) else None), None
            if _on_pseudo_filesystem(target) or not stat.S_ISREG(target.stat().st_mode):
                return None, f"{name!r} links to {str(target)!r}, which is not a regular file"
            return LocalEntry(path, os.readlink(path)), None
        if not stat.S_ISREG(mode):
            return None, None
        if not os.access(path, os.R_OK):
            return None, f"{name!r} is not readable"
        return LocalEntry(path), None
    except (OSError, RuntimeError) as error:  # a dangling link, a link loop, a file gone since listing
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return None, f"{name!r} cannot be read ({reason})"


def scan_local_dir(root: Path, limit: int = MAX_LOCAL_FILES) -> LocalScan:
    """The visible files under a local model or task directory, bounded: validate and plan never walk a
    whole tree (`source: /usr`), never enter linked directories and never read through a link that leaves
    the directory (a model folder's link to /proc/self/mem is a problem here, not a crash later).

    Hidden files and `__pycache__` are left out. Links out of the directory to regular files stay entries
    (the Hugging Face cache's snapshot folders are links to content-named blobs), named rather than read.
    """
    real_root = root.resolve()
    if _on_pseudo_filesystem(real_root):
        return LocalScan(
            (), (f"{str(root)!r} is on a pseudo filesystem (/{real_root.parts[1]}), not a directory of files",)
        )
    entries, problems, seen = [], [], 0
    for directory, dirnames, filenames in os.walk(root):  # followlinks=False: linked directories are not entered
        dirnames[:] = [name for name in dirnames if not _hidden(name)]
        seen += len(dirnames) + len(filenames)
        if seen > limit:
            return LocalScan(
                (),
                (f"more than {limit:,} files and folders under {str(root)!r}: point it at a model or task directory",),
            )
        for name in filenames:
            if _hidden(name):
                continue
            entry, problem = _local_entry(Path(directory, name), root, real_root)
            if entry is not None:
                entries.append(entry)
            if problem is not None:
                problems.append(problem)
    return LocalScan(tuple(sorted(entries, key=lambda entry: entry.path)), tuple(problems))


class ConfigError(Exception):
    """A config that cannot be used; each line reads `file: dotted.key.path: message`."""

    def __init__(self, lines: list[str]):
        # One line each, whatever a file name or value holds: control characters are shown escaped.
        lines = [_escaped(line) for line in lines]
        super().__init__("\n".join(lines))
        self.lines = lines


def _escaped(line: str) -> str:
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in _UNPRINTABLE else c for c in line)


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
        elif task.include_path is not None:
            problems = scan_local_dir(base / task.include_path).problems
            errors += [f"{source}: tasks[{index}].include_path: {problem}" for problem in problems]
    if not (base / config.hardware.prices).is_file():
        errors.append(f"{source}: hardware.prices: no such file {config.hardware.prices!r}")
    for index, model in enumerate(config.models):
        looks_local = model.source.startswith((".", "/")) or model.source.count("/") > 1
        if looks_local and not (base / model.source).is_dir():
            errors.append(f"{source}: models[{index}].source: no such model directory {model.source!r}")
        elif (base / model.source).is_dir():
            errors += [
                f"{source}: models[{index}].source: {problem}" for problem in _model_dir_problems(base, model.source)
            ]
    return errors + _results_dir_problems(config, base, source)


def _model_dir_problems(base: Path, source: str) -> list[str]:
    """Why a local directory cannot be a model's: vLLM needs its config.json, and plan fingerprints its files."""
    if not any((base / source / marker).is_file() for marker in MODEL_DIR_MARKERS):
        return [f"{source!r} is not a model directory: it has no {' or '.join(MODEL_DIR_MARKERS)}"]
    return list(scan_local_dir(base / source).problems)


def _first_existing(path: Path) -> Path | None:
    """The path itself or its nearest ancestor that exists (None when none can be seen)."""
    for candidate in (path, *path.parents):
        try:
            candidate.stat()
            return candidate
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
    return None


def results_root_problem(results_dir: Path) -> str | None:
    """Why results cannot be written under this directory (a file stands at it or above it), or None."""
    existing = _first_existing(results_dir)
    if existing is not None and not existing.is_dir():
        return f"{str(existing)!r} is a file, not a directory" + (
            "" if existing == results_dir else f" (in {str(results_dir)!r})"
        )
    return None


def _results_dir_problems(config: BenchConfig, base: Path, source: str) -> list[str]:
    results_dir = base / config.run.results_dir
    problem = results_root_problem(results_dir)
    if problem is not None:
        return [f"{source}: run.results_dir: {problem}"]
    run_dir = results_dir / config.run.name
    if run_dir.exists() and not run_dir.is_dir():
        return [f"{source}: run.name: the run directory {str(run_dir)!r} is a file"]
    return []


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


MAX_YAML_BYTES = 16 << 20  # a config or price table is a few KiB; this bounds reading `/dev/zero`
MAX_YAML_VALUES = 1_000_000  # values after expanding aliases: a "billion laughs" file stops here


def _yaml_text(path: Path, what: str) -> str:
    """The file's text: UTF-8, no NUL bytes, bounded in size; anything else is a ConfigError naming the file."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such {what}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: <root>: is a directory, not a {what}"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: <root>: cannot read the {what}: {error.strerror or error}"]) from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError([f"{path}: <root>: larger than {MAX_YAML_BYTES >> 20} MiB; not a {what}"])
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # the UTF-32 BOMs start with these too
        raise ConfigError([f"{path}: <root>: UTF-16 or UTF-32 text; save it as UTF-8"])
    if b"\0" in data:
        raise ConfigError([f"{path}: <root>: a binary file (NUL byte at offset {data.index(0)}), not a YAML {what}"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"{path}: <root>: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save as UTF-8"]
        ) from None


def _yaml_key(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    return loader.construct_object(node) if isinstance(node, yaml.ScalarNode) else None


def _check_yaml_tree(loader: yaml.SafeLoader, root: yaml.Node, path: Path) -> None:
    """Duplicate mapping keys (PyYAML keeps the last silently), self-referencing aliases, and alias
    expansion beyond MAX_YAML_VALUES are ConfigErrors naming the dotted key and the line."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def visit(node: yaml.Node, dotted: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in in_progress:
            raise ConfigError([f"{path}: {dotted or '<root>'}: an alias refers to the value that contains it"])
        in_progress.add(id(node))
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(visit(item, f"{dotted}[{index}]") for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[object, str] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: later keys may override these
                    size += visit(value_node, dotted)
                    continue
                key = _yaml_key(loader, key_node)
                child = f"{dotted}.{key}" if dotted else str(key)
                mark = key_node.start_mark
                where = f"line {mark.line + 1}" + (f":{mark.column + 1}" if node.flow_style else "")
                if key is not None and key in first_line:
                    raise ConfigError(
                        [
                            f"{path}: {child}: duplicate key at {where} (first at {first_line[key]}); YAML would "
                            f"silently keep only the last value"
                        ]
                    )
                if key is not None:
                    first_line[key] = where
                size += visit(key_node, child) + visit(value_node, child)
        in_progress.discard(id(node))
        if size > MAX_YAML_VALUES:
            raise ConfigError(
                [f"{path}: {dotted or '<root>'}: more than {MAX_YAML_VALUES:,} values once aliases are expanded"]
            )
        sizes[id(node)] = size
        return size

    visit(root, "")


def _load_yaml(text: str, path: Path) -> object:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_tree(loader, node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _as_text(character: object) -> object:
    return chr(character) if isinstance(character, int) else character


def read_yaml(path: Path, what: str) -> object:
    """Parse a YAML file; a missing, unreadable, binary or non-UTF-8 file, a syntax error and a duplicate key
    are ConfigErrors naming the file (and `file:line:column` or the dotted key)."""
    text = _yaml_text(path, what)
    try:
        return _load_yaml(text, path)
    except RecursionError:
        raise ConfigError([f"{path}: <root>: nested too deeply to be a {what}"]) from None
    except yaml.reader.ReaderError as error:
        raise ConfigError(
            [f"{path}: <root>: not YAML text: character {_as_text(error.character)!r} at offset {error.position}"]
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}"]) from None


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a YAML config file. Paths inside it are relative to the working directory."""
    path = Path(path)
    return parse_config(read_yaml(path, "config file"), source=str(path))
