"""`distill-bench plan --estimate`: the GPUs, GPU-hours and dollars a config will take, before anything runs.

Why an estimate from arithmetic and not from a trial run: the configs this matters for (DeepSeek-R1 on eight
H200s, 64 samples of up to 32,768 tokens per question) cost hundreds of GPU-hours, and the question "can
we afford this, and on what allocation?" comes before any GPU is held. Everything below is pure arithmetic
on the validated config and the price table; nothing imports vLLM, Ray or lm-eval, and nothing is read
from a hub, so `plan --estimate` stays instant and offline.

The model, stated in full by `assumption_lines` next to every estimate:
- Eval: a task generates documents × samples_per_question samples of prompt_tokens + output_tokens tokens
  (`tasks[].estimate`; output_tokens defaults to max_gen_toks, the upper bound where every answer uses its
  whole budget). Each token costs 2 × active parameters FLOPs (`cost.flops_per_token`). The server's wall
  time is FLOPs ÷ (GPUs × peak FLOP/s × MFU): the peak is the price table's dense BF16 `peak_tflops`, the
  model FLOPs utilisation (MFU) an assumption the user states (`--mfu`), best taken from a measured run.
- Perf: a load level lasts num_requests ÷ rate (Poisson arrivals), num_requests ÷ start_rate_rps per sweep
  probe (max_probes of them), or its compute time (concurrency and offline levels: a floor, since a level
  at low concurrency waits on latency, not compute), always within [min_duration_s, max_duration_s];
  times the levels and the repeats.
- GPU-hours = wall time × GPUs of the server; $ = wall time × devices billed × $ per device-hour.
Server start-up, weight downloads and loading, the drain of a level's requests in flight at max_duration_s,
and retries are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.config import BenchConfig, ModelConfig, TaskConfig, WorkloadConfig
from bench.cost import FLOPS_PER_TFLOP, SECONDS_PER_HOUR, PriceTable, devices_billed, flops_per_token
from bench.plan import gpus_per_model

# Decode-heavy serving (long outputs) keeps tensor cores far below their training utilisation; 20 % is a
# round planning figure, not a measurement. A measured run gives the real one: perf_summary's
# output_tokens_per_s × flops_per_output_token ÷ (gpu_count × peak FLOP/s).
DEFAULT_MFU = 0.2


@dataclass(frozen=True)
class TaskLoad:
    """The tokens one task makes a model process: documents × samples × (prompt + output) tokens."""

    task: str
    documents: int  # estimate.documents, capped by the task's limit
    samples: int  # samples_per_question
    prompt_tokens: int
    output_tokens: int
    output_is_budget: bool  # output_tokens is max_gen_toks (the upper bound), not an expectation

    @property
    def tokens(self) -> int:
        return self.documents * self.samples * (self.prompt_tokens + self.output_tokens)


@dataclass(frozen=True)
class Rates:
    """What compute and time cost on the config's device type."""

    device_type: str
    peak_flops: float | None  # per device, FLOP/s; None: the price table gives no peak
    peak_source: str | None
    usd_per_device_hour: float | None
    mfu: float  # assumed model FLOPs utilisation, 0 < mfu <= 1


@dataclass(frozen=True)
class ModelEstimate:
    """One model server's share of a config: its GPUs, compute per token, and time for evals and perf."""

    model: str
    role: str
    gpus: int
    devices_billed: int
    flops_per_token: float | None  # None without a parameter count
    eval_tokens: int
    eval_wall_s: float | None  # None: the compute cannot be estimated (no FLOPs or no peak)
    perf_wall_s: float | None

    @property
    def wall_s(self) -> float | None:
        if self.eval_wall_s is None or self.perf_wall_s is None:
            return None
        return self.eval_wall_s + self.perf_wall_s

    @property
    def gpu_hours(self) -> float | None:
        return None if self.wall_s is None else self.wall_s * self.gpus / SECONDS_PER_HOUR

    def usd(self, rates: Rates) -> float | None:
        if self.wall_s is None or rates.usd_per_device_hour is None:
            return None
        return self.wall_s * self.devices_billed * rates.usd_per_device_hour / SECONDS_PER_HOUR


@dataclass(frozen=True)
class Estimate:
    """The estimate of a whole config: per model, the task loads behind it, and what it could not count."""

    rates: Rates
    models: tuple[ModelEstimate, ...]
    loads: tuple[TaskLoad, ...]
    tasks_not_counted: tuple[str, ...]  # tasks without `estimate:`

    def total(self, quantity: Callable[[ModelEstimate], float | None]) -> float | None:
        """The sum over models of one quantity; None when any model's is unknown."""
        values = [quantity(model) for model in self.models]
        return None if any(value is None for value in values) else sum(values)


def task_load(task: TaskConfig) -> TaskLoad | None:
    """The task's tokens per model, or None when the config does not say how many documents it has."""
    if task.estimate is None:
        return None
    documents = task.estimate.documents if task.limit is None else min(task.limit, task.estimate.documents)
    output = task.estimate.output_tokens or task.max_gen_toks
    assert output is not None  # TaskConfig validation: estimate needs output_tokens or max_gen_toks
    return TaskLoad(
        task=task.name,
        documents=documents,
        samples=task.samples_per_question,
        prompt_tokens=task.estimate.prompt_tokens,
        output_tokens=output,
        output_is_budget=task.estimate.output_tokens is None,
    )


def rates_for(config: BenchConfig, prices: PriceTable, mfu: float) -> Rates:
    """The config's device type as the estimate prices it. Raises ValueError for an MFU outside (0, 1]."""
    if not 0 < mfu <= 1:
        raise ValueError(f"the MFU must be in (0, 1], got {mfu:g}")
    price = prices.price(config.hardware.device_type)
    peak = price.peak_tflops if price is not None else None
    return Rates(
        device_type=config.hardware.device_type,
        peak_flops=peak * FLOPS_PER_TFLOP if peak is not None else None,
        peak_source=price.peak_source if price is not None else None,
        usd_per_device_hour=price.usd_per_hour if price is not None else None,
        mfu=mfu,
    )


def compute_seconds(tokens: float, per_token: float | None, gpus: int, rates: Rates) -> float | None:
    """Wall seconds for `tokens` at `per_token` FLOPs on `gpus` devices at the assumed MFU."""
    if per_token is None or rates.peak_flops is None:
        return None
    return tokens * per_token / (gpus * rates.peak_flops * rates.mfu)


def level_seconds(workload: WorkloadConfig, level: float, compute: Callable[[float], float | None]) -> float | None:
    """How long one level (or sweep probe) of a workload lasts; `compute(tokens)` prices tokens in seconds."""
    lower = workload.min_duration_s if workload.mode != "offline" else None  # offline is one batch
    upper = workload.max_duration_s
    if lower is not None and lower == upper:
        return upper  # a level of fixed length: nothing to estimate
    if workload.mode == "rate":
        seconds = workload.num_requests / level
    elif workload.mode == "sweep":
        seconds = workload.num_requests / workload.sweep.start_rate_rps
    else:
        requests = workload.num_requests + workload.warmup_requests
        seconds = compute(requests * (workload.prompt_tokens.mean + workload.output_tokens.mean))
        if seconds is None:
            return None
    if lower is not None:
        seconds = max(seconds, lower)
    return seconds if upper is None else min(seconds, upper)


def workload_seconds(workload: WorkloadConfig, compute: Callable[[float], float | None]) -> float | None:
    """All trials of a workload on one model: its levels (or max_probes probes) times its repeats."""
    sweep = workload.sweep
    levels = [sweep.start_rate_rps] * sweep.max_probes if workload.mode == "sweep" else list(workload.levels)
    seconds = [level_seconds(workload, level, compute) for level in levels]
    return None if any(s is None for s in seconds) else sum(seconds) * workload.repeats


def estimate_model(config: BenchConfig, model: ModelConfig, loads: list[TaskLoad], rates: Rates) -> ModelEstimate:
    """One model's GPUs, eval and perf wall time."""
    gpus = gpus_per_model(config)[model.name]
    per_token = flops_per_token(model.parameters, model.active_parameters)

    def compute(tokens: float) -> float | None:
        return compute_seconds(tokens, per_token, gpus, rates)

    eval_tokens = sum(load.tokens for load in loads)
    perf = [workload_seconds(workload, compute) for workload in config.workloads]
    return ModelEstimate(
        model=model.name,
        role=model.role,
        gpus=gpus,
        devices_billed=devices_billed(config.hardware, gpus),
        flops_per_token=per_token,
        eval_tokens=eval_tokens,
        eval_wall_s=compute(eval_tokens) if eval_tokens else 0.0,
        perf_wall_s=None if any(s is None for s in perf) else sum(perf),
    )


def estimate(config: BenchConfig, prices: PriceTable, mfu: float = DEFAULT_MFU) -> Estimate:
    """The estimate of a config (see the module docstring for the model). Raises ValueError for a bad MFU."""
    rates = rates_for(config, prices, mfu)
    loads = [load for load in map(task_load, config.tasks) if load is not None]
    return Estimate(
        rates=rates,
        models=tuple(estimate_model(config, model, loads, rates) for model in config.models),
        loads=tuple(loads),
        tasks_not_counted=tuple(task.name for task in config.tasks if task.estimate is None),
    )


def assumption_lines(result: Estimate) -> list[str]:
    """Every assumption behind the numbers, one printable line each."""
    rates = result.rates
    peak = (
        f"peak {rates.peak_flops / FLOPS_PER_TFLOP:g} TFLOP/s per {rates.device_type} (dense BF16; {rates.peak_source})"
        if rates.peak_flops is not None
        else f"no peak_tflops for {rates.device_type} in the price table: compute time not estimated"
    )
    lines = [
        f"compute: 2 x active parameters FLOPs per token (attention over the context not counted); {peak}; "
        f"assumed MFU {rates.mfu:.0%} (--mfu)",
        "eval: documents x samples_per_question x (prompt_tokens + output_tokens) per task (tasks[].estimate)",
    ]
    for load in result.loads:
        output = "max_gen_toks, an upper bound" if load.output_is_budget else "estimate.output_tokens"
        lines.append(
            f"  {load.task}: {load.documents:,} documents x {load.samples} samples x ({load.prompt_tokens:,} + "
            f"{load.output_tokens:,} tokens; output = {output}) = {load.tokens:,} tokens per model"
        )
    if result.tasks_not_counted:
        lines.append(f"  not counted (no estimate: documents unknown): {', '.join(result.tasks_not_counted)}")
    lines += [
        "perf: a level lasts num_requests / rate (rate), num_requests / start_rate_rps per probe (sweep, "
        "max_probes probes), or its compute time (concurrency, offline: a floor), within [min_duration_s, "
        "max_duration_s]; x levels x repeats",
        "GPUs: tensor_parallel_size per model server; GPU-hours = wall x GPUs; $ = wall x devices billed x "
        + (
            f"${rates.usd_per_device_hour:g} per {rates.device_type}-hour (price table)"
            if rates.usd_per_device_hour is not None
            else "(no price)"
        ),
        "not counted: server start-up, weight downloads and loading, requests still in flight when a level "
        "reaches max_duration_s, failed cells and their retries",
    ]
    no_count = [m.model for m in result.models if m.flops_per_token is None]
    if no_count:
        lines.append(f"no FLOPs for models without `parameters`: {', '.join(no_count)}")
    return lines
