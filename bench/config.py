"""The benchmark config: frozen pydantic models, their bounds, and `load_config`.

A config is validated once, here; every later stage receives these typed sections. Reading the YAML file
and the error format are `configfile`'s, local directories are walked by `localdir`, server flags are
checked by `flags`. Loading never imports vLLM, Ray or lm-eval, so `validate` and `plan` stay instant.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bench.configfile import UNPRINTABLE_CATEGORIES, ConfigError, error_lines, read_yaml
from bench.flags import harness_flag_owner, redact_args
from bench.hashing import json_sha256
from bench.localdir import MODEL_DIR_MARKERS, scan_local_dir

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]

# Bounds on what a config may ask for: a hostile or mistyped value fails validation with its key instead of
# an OverflowError, a petabyte allocation or a hang later in the run.
INT64_MAX = 2**63 - 1  # every int in a config ends up in Parquet (int64), numpy or a C API
MAX_TENSOR_PARALLEL = 1024  # GPUs of one server on one node: far above any real node
MAX_REPLICAS = 1024  # servers of one model: each is a Ray actor and a placement group, planned up front
MAX_SEED = 2**32 - 1  # numpy's and lm-eval's seeds are 32-bit
MAX_BOOTSTRAP_SAMPLES = 1_000_000  # samples × documents are held in memory at once
MAX_FLOAT = 1e9  # seconds (31 years), req/s, $/hour: nothing real comes near; time APIs overflow far above
MAX_REQUESTS = 10_000_000  # requests of one level: each is planned in memory before the level starts
MAX_TOKENS = 10_000_000  # tokens of one synthetic prompt or output: above the longest context of any model
MAX_EVAL_IN_FLIGHT = 4096  # lm-eval requests in flight, prompts per request: 4x vLLM's largest default batch
NORMAL_TAIL_SDS = 4  # a normal length without `max` is checked against the context at mean + 4 sd
MAX_SAMPLES_PER_QUESTION = 1024  # lm-eval holds every sample of every document in memory until it scores them
FREE_TEXT_FIELDS = frozenset({"note"})  # string fields that may span lines (a price's note)


def _within_any_batch(value: int) -> int:
    if value > MAX_EVAL_IN_FLIGHT:
        raise ValueError(f"must be at most {MAX_EVAL_IN_FLIGHT} (far above any server's batch; each is held open)")
    return value


InFlightCount = Annotated[int, Field(gt=0), AfterValidator(_within_any_batch)]  # lm-eval requests or prompts


def _seed_is_32_bit(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"must be between 0 and {MAX_SEED} (numpy and lm-eval take 32-bit seeds)")
    return seed


Seed = Annotated[int, AfterValidator(_seed_is_32_bit)]  # run.seed, also as `bench.pairing` reads it back from run.json


def _unprintable(text: str) -> str | None:
    return next((character for character in text if unicodedata.category(character) in UNPRINTABLE_CATEGORIES), None)


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
    replicas: int | Literal["auto"] = Field(
        1,
        description="Servers of this model, each on its own GPUs (its own placement group); the model's eval "
        "cells are spread over them, each (model, task) cell whole on one server. 'auto' starts one and adds "
        "more while GPUs are free and its queued evals outlast a server start. Perf trials use one server. "
        "Not part of any cell key; ignored without GPUs (servers sharing CPUs run one cell at a time).",
    )

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas_counted_or_auto(cls, value: object) -> object:
        # Checked before the union's own validation, which would print one error per alternative.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPLICAS):
            return value
        raise ValueError(f"must be a whole number from 1 to {MAX_REPLICAS} (servers of one model), or 'auto'")

    # How fast, not what (bench.evaluate): excluded from dumps (exclude=True), hence from every cell and model key,
    # so changing them never re-runs stored cells; `redacted_dump` writes them back into run.json.
    eval_concurrency: InFlightCount | None = Field(
        None,
        exclude=True,
        description="lm-eval HTTP requests in flight against this server; default: enough to fill the server's "
        "batch (its --max-num-seqs, else vLLM's default: 256 on GPU, 128 per rank on CPU).",
    )
    eval_batch_size: InFlightCount | None = Field(
        None, exclude=True, description="Prompts per lm-eval request; default 1 on GPU, 8 on the CPU build."
    )

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


class DistillationConfig(Section):
    """How a student was made, for its total cost of ownership: the compute it took (device-hours of a priced
    device type, or a dollar figure) and, optionally, the teacher tokens generated for it (costed at the
    teacher's $/Mtok measured in the run). Nothing here changes a measurement, so none of it is in a cell key.
    """

    gpu_hours: PositiveFloat | None = Field(
        None, description="Device-hours of training: GPU-hours, or vCPU-hours for device_type 'cpu-core'."
    )
    device_type: str | None = Field(None, description="Price-table key of the training devices, e.g. 'H100-80GB'.")
    usd: Annotated[float, Field(ge=0)] | None = Field(None, description="The training cost in US dollars, if known.")
    teacher_tokens_generated: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Teacher output tokens generated to train the student (costed at the teacher's $/Mtok)."
    )
    source: str | None = Field(None, description="Where these numbers come from (a report, a paper, a bill).")

    @model_validator(mode="after")
    def _one_cost(self) -> DistillationConfig:
        if self.usd is not None and (self.gpu_hours is not None or self.device_type is not None):
            raise ValueError("give usd, or gpu_hours with device_type, not both")
        if (self.gpu_hours is None) != (self.device_type is None):
            raise ValueError("gpu_hours and device_type go together (the price table prices the hours)")
        if self.usd is None and self.gpu_hours is None and self.teacher_tokens_generated is None:
            raise ValueError("give usd, gpu_hours with device_type, or teacher_tokens_generated")
        return self


class ModelConfig(Section):
    """A model under test. A student names its teacher; a model without one is a teacher."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Unique name, e.g. 'r1-distill-7b'.")
    source: str = Field(min_length=1, description="Hugging Face model id or a local model directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    teacher: str | None = Field(None, description="Name of this student's teacher model.")
    parameters: PositiveInt | None = Field(None, description="Parameter count; read from the weights if omitted.")
    active_parameters: PositiveInt | None = Field(
        None,
        description="Parameters that take part in each token's forward pass, for a mixture of experts (e.g. "
        "DeepSeek-R1: 37e9 of 671e9); FLOPs per token are 2 x this. Default: all parameters (a dense model).",
    )
    serve: ServeConfig = ServeConfig()
    distillation: DistillationConfig | None = Field(None, description="How a student was made (its cost).")

    @model_validator(mode="after")
    def _active_within_total(self) -> ModelConfig:
        both = self.parameters is not None and self.active_parameters is not None
        if both and self.active_parameters > self.parameters:
            raise ValueError(f"active_parameters: {self.active_parameters} is above parameters ({self.parameters})")
        return self

    @property
    def role(self) -> Literal["teacher", "student"]:
        return "student" if self.teacher else "teacher"


class TaskEstimate(Section):
    """What `distill-bench plan --estimate` needs to know about a task before anything is downloaded or run.

    Only the estimate reads these; they change no measurement, so they are in no cell key.
    """

    documents: PositiveInt = Field(description="Documents in the evaluated split, e.g. 30 for AIME 2024.")
    prompt_tokens: PositiveInt = Field(description="Prompt tokens per document (template and few-shot included).")
    output_tokens: PositiveInt | None = Field(
        None,
        description="Expected generated tokens per sample; default: the task's max_gen_toks (an upper bound: "
        "every answer uses its whole budget).",
    )

    @field_validator("prompt_tokens", "output_tokens")
    @classmethod
    def _within_any_context(cls, tokens: int | None) -> int | None:
        if tokens is not None and tokens > MAX_TOKENS:
            raise ValueError(f"must be at most {MAX_TOKENS:,} tokens")
        return tokens


class AdaptiveConfig(Section):
    """Evaluate a task in chunks and stop each (task, pair) at its first decisive look (`bench.chunks`)."""

    chunk_documents: PositiveInt = Field(
        description="Documents per chunk, e.g. 25: after each chunk every pair's confidence sequence is read, and "
        "the models whose verdicts are all decided skip the task's remaining documents."
    )


class TaskConfig(Section):
    """An lm-eval task, by registered name or from a local task YAML directory."""

    name: str = Field(min_length=1, description="lm-eval task or group name, e.g. 'gsm8k' or 'toy'.")
    include_path: str | None = Field(None, description="Directory of local lm-eval task YAMLs.")
    num_fewshot: int = Field(0, ge=0)
    limit: PositiveInt | None = Field(None, description="Evaluate only the first N documents per task.")
    max_gen_toks: PositiveInt | None = Field(
        None, description="Generation budget for generate_until tasks; default: the task's own."
    )
    samples_per_question: PositiveInt = Field(
        1,
        description="Samples generated per document (lm-eval's `repeats`), e.g. 64 for pass@1 averaged over 64 "
        "samples as in the DeepSeek-R1 paper. Above 1 the task must sample and its filters must keep every sample "
        "(see configs/tasks/r1); each repeat is seeded apart (bench.lmeval_model), so the samples differ.",
    )
    estimate: TaskEstimate | None = Field(
        None, description="Documents and tokens per document, for `plan --estimate`; not used by a run."
    )
    adaptive: AdaptiveConfig | None = Field(
        None,
        description="Opt-in adaptive verdicts, e.g. {chunk_documents: 25}: for a single lm-eval task whose "
        "per-document values lie in [0, 1]; needs `limit` (the documents are permuted before anything is loaded).",
    )
    max_concurrency: InFlightCount | None = Field(
        None,
        exclude=True,  # how fast, not what: out of cell keys, like serve.eval_concurrency
        description="Cap on lm-eval requests in flight for this task, for every model (below each model's "
        "serve.eval_concurrency): for long generations that would queue past lm-eval's request timeout.",
    )

    @field_validator("name")
    @classmethod
    def _no_whitespace(cls, name: str) -> str:
        if any(character.isspace() for character in name):
            raise ValueError(f"{name!r} contains whitespace; lm-eval task names never do")
        return name

    @field_validator("samples_per_question")
    @classmethod
    def _samples_fit_in_memory(cls, samples: int) -> int:
        if samples > MAX_SAMPLES_PER_QUESTION:
            raise ValueError(f"must be at most {MAX_SAMPLES_PER_QUESTION} (lm-eval holds every sample in memory)")
        return samples

    @model_validator(mode="after")
    def _adaptive_knows_its_documents(self) -> TaskConfig:
        if self.adaptive is None:
            return self
        if self.limit is None:
            raise ValueError(
                "adaptive: needs limit (the number of documents, at most the dataset's): the seeded order of the "
                "documents is drawn before the dataset is loaded"
            )
        if self.samples_per_question != 1:
            raise ValueError("adaptive: needs samples_per_question 1 (a chunk's verdict pairs one answer per document)")
        return self

    @model_validator(mode="after")
    def _estimate_knows_the_output(self) -> TaskConfig:
        if self.estimate is not None and self.estimate.output_tokens is None and self.max_gen_toks is None:
            raise ValueError("estimate.output_tokens: give it, or max_gen_toks (each answer is then taken to use it)")
        return self


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


class AdaptiveBlocksConfig(Section):
    """Stop a workload's blocks once every pair's throughput ratio is decided (`bench.blockgate`)."""

    min_blocks: int = Field(
        2,
        ge=2,  # the ratio's confidence sequence is unbounded after one block: one block says nothing of the noise
        description="Blocks every model runs before the first look, e.g. 2; after each later block, the "
        "remaining blocks (up to `repeats`) are skipped once every pair's ratio is above or below 1.",
    )


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
    adaptive: AdaptiveBlocksConfig | None = Field(
        None,
        description="Opt-in adaptive repeats, e.g. {min_blocks: 2}: `repeats` becomes the most blocks run; "
        "blocks stop early once every student/teacher throughput ratio is decided. Shapes no trial: in no cell key.",
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
    def _adaptive_within_repeats(self) -> WorkloadConfig:
        if self.adaptive is not None and self.adaptive.min_blocks > self.repeats:
            raise ValueError(f"adaptive.min_blocks: {self.adaptive.min_blocks} is above repeats ({self.repeats})")
        return self

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


class ComputeMatchedConfig(Section):
    """A compute-matched comparison (bench.matched): the student's maj@k on a sampled task against the
    teacher's pass@1 on its greedy twin, at equal $ per question. Changes no measurement: in no cell key."""

    task: str = Field(
        min_length=1,
        description="The sampled task (in `tasks`) whose lm-eval filters vote: one `maj@<k>` filter per k "
        "(configs/tasks/toy_sampled shows one).",
    )
    baseline_task: str = Field(
        min_length=1, description="The task (in `tasks`) whose teacher score is pass@1, e.g. the greedy 'toy_add'."
    )
    metric: str = Field("exact_match", min_length=1, description="The 0/1 metric both tasks report.")
    k: tuple[PositiveInt, ...] = Field(
        (), description="The k to report, e.g. [1, 3, 5]; default: every maj@k filter the sampled task stored."
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
    compute_matched: tuple[ComputeMatchedConfig, ...] = Field(
        (),
        description="Student maj@k against teacher pass@1 at equal $/question, e.g. [{task: toy_add_sampled, "
        "baseline_task: toy_add}]: compare adds one row per k and the smallest k that matches within budget.",
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
    seed: Seed = 0
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
            if model.distillation is not None and model.teacher is None:
                raise ValueError(f"[{index}].distillation: only a student (a model with a teacher) was distilled")
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

    @model_validator(mode="after")
    def _compute_matched_names_two_tasks(self) -> BenchConfig:
        names = [t.name for t in self.tasks]
        adaptive = {t.name for t in self.tasks if t.adaptive is not None}
        for index, entry in enumerate(self.compare.compute_matched):
            for key, name in (("task", entry.task), ("baseline_task", entry.baseline_task)):
                if name not in names:
                    raise ValueError(f"compare.compute_matched[{index}].{key}: unknown task {name!r}; tasks: {names}")
                if name in adaptive:  # its documents stop where a gate decided: a fixed-n interval would not hold
                    raise ValueError(
                        f"compare.compute_matched[{index}].{key}: {name!r} is adaptive (tasks[].adaptive); "
                        "compute-matched rows need every document of both tasks"
                    )
            if entry.task == entry.baseline_task:
                raise ValueError(
                    f"compare.compute_matched[{index}].baseline_task: {entry.task!r} is the sampled task itself; "
                    "name the greedy task the teacher answers once"
                )
        return self

    def run_dir(self, results_dir: Path | None = None) -> Path:
        """Where this run's results go: <results_dir or run.results_dir>/<run.name>."""
        return (results_dir or Path(self.run.results_dir)) / self.run.name

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)

    def content_hash(self) -> str:
        """Stable hash of the validated config, recorded in the run manifest."""
        return json_sha256(redacted_dump(self))


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


def redacted_dump(config: BenchConfig) -> dict:
    """The config as JSON data for storage (run.json): secret-looking extra_args values redacted."""
    data = config.model_dump(mode="json")
    for model, dumped in zip(config.models, data["models"], strict=True):
        dumped["serve"]["extra_args"] = redact_args(dumped["serve"]["extra_args"])
        # Excluded from dumps so that cell keys ignore them; the manifest still records the config as written.
        dumped["serve"] |= {
            "eval_concurrency": model.serve.eval_concurrency,
            "eval_batch_size": model.serve.eval_batch_size,
        }
    for task, dumped in zip(config.tasks, data["tasks"], strict=True):
        dumped["max_concurrency"] = task.max_concurrency
    return data


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


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a YAML config file. Paths inside it are relative to the working directory."""
    path = Path(path)
    return parse_config(read_yaml(path, "config file"), source=str(path))
