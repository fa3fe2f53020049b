"""Streaming load generator for an OpenAI-compatible vLLM server (`POST /v1/completions`, SSE).

Why token-id prompts: the completions API accepts `prompt: [int, ...]`, so prompt lengths are exact with no
tokenizer, and `min_tokens = max_tokens` with `ignore_eos` (vLLM extensions) makes output lengths exact:
every model of a pair does exactly the same work. Prompts come from a seeded RNG keyed by (seed, workload,
level), so teacher and student get identical requests, while each level and its warm-up get fresh prompts
that cannot hit the prefix cache another level filled.

A level is three steps: `plan_level` (pure and seeded: prompts, output lengths, arrival schedule),
`run_level` (warm-up, then the timed requests, one coroutine per request) and `summarize` (percentiles,
throughput, goodput, cost, energy). A mode is only an arrival schedule: closed loop (N workers taking the
next request when their last one finishes) or open loop (send times); a new mode is a new entry in SCHEDULES.
One request's HTTP stream and its timing are `bench.stream`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from bench import cost
from bench.config import LengthDistribution, SLOConfig, WorkloadConfig
from bench.power import PowerSampler
from bench.records import PerfRequest, PerfSummary
from bench.stream import Trace, stream_request

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (timed requests done, timed requests planned)


@dataclass(frozen=True)
class PromptSpace:
    """Token ids synthetic prompts are drawn from: [0, vocab_size) minus `special_ids` (BOS, EOS, pad...)."""

    vocab_size: int
    special_ids: frozenset[int] = frozenset()

    def allowed_ids(self) -> np.ndarray:
        ids = np.setdiff1d(np.arange(self.vocab_size), np.fromiter(self.special_ids, dtype=np.int64))
        if ids.size == 0:
            raise ValueError(f"no usable token ids below vocab_size={self.vocab_size}")
        return ids


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: its token-id prompt and its exact output length."""

    index: int
    prompt: tuple[int, ...]
    output_tokens: int


@dataclass(frozen=True)
class Schedule:
    """When requests are sent: `concurrency` workers (closed loop), or at `offsets_s` from the start (open loop)."""

    concurrency: int | None = None
    offsets_s: tuple[float, ...] | None = None


@dataclass(frozen=True)
class LevelPlan:
    """Everything about a level that the seed decides, before anything is sent."""

    warmup: tuple[RequestSpec, ...]
    timed: tuple[RequestSpec, ...]
    schedule: Schedule
    warmup_concurrency: int


@dataclass(frozen=True)
class LevelRun:
    """The timed requests of one level as they happened; warm-up requests are not in it."""

    workload: str
    level: float
    requests: tuple[PerfRequest, ...]  # by request_index
    itls_s: tuple[tuple[float, ...], ...]  # gaps between token-carrying chunks, per request, aligned with requests
    duration_s: float  # first timed send -> last timed completion
    not_sent: int  # planned requests never sent because max_duration_s ran out
    energy_j: float | None  # GPU energy during the timed requests; None without NVML or without gpu_indices


def sample_lengths(dist: LengthDistribution, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` token lengths from a distribution, clipped to [min, max]."""
    if dist.kind == "fixed":
        raw = np.full(count, dist.mean)
    elif dist.kind == "uniform":
        raw = rng.integers(dist.mean - dist.spread, dist.mean + dist.spread, size=count, endpoint=True)
    else:
        raw = np.rint(rng.normal(dist.mean, dist.spread, size=count))
    upper = dist.max if dist.max is not None else np.iinfo(np.int64).max
    return np.clip(raw, dist.min, upper).astype(np.int64)


def _poisson(level: float, count: int, rng: np.random.Generator) -> Schedule:
    # Exponential gaps at `level` requests/s; the first request goes at 0 so the level starts at once.
    gaps_s = rng.exponential(1.0 / level, size=count)
    return Schedule(offsets_s=tuple(np.concatenate(([0.0], np.cumsum(gaps_s[:-1]))).tolist()))


# mode -> (level, request count, rng) -> Schedule
SCHEDULES: dict[str, Callable[[float, int, np.random.Generator], Schedule]] = {
    "concurrency": lambda level, count, rng: Schedule(concurrency=int(level)),
    "rate": _poisson,
    "offline": lambda level, count, rng: Schedule(offsets_s=(0.0,) * count),  # the level is only a label
}


def _request_specs(
    workload: WorkloadConfig, count: int, ids: np.ndarray, rng: np.random.Generator
) -> tuple[RequestSpec, ...]:
    prompt_lengths = sample_lengths(workload.prompt_tokens, count, rng)
    output_lengths = sample_lengths(workload.output_tokens, count, rng)
    return tuple(
        RequestSpec(index, tuple(rng.choice(ids, size=int(n)).tolist()), int(m))
        for index, (n, m) in enumerate(zip(prompt_lengths, output_lengths, strict=True))
    )


def plan_level(workload: WorkloadConfig, level: float, prompt_space: PromptSpace, seed: int) -> LevelPlan:
    """The prompts, output lengths and arrival schedule of one level; the same inputs give the same plan."""
    entropy = [seed % 2**63, zlib.crc32(workload.name.encode()), round(level * 1000)]
    warmup_seed, timed_seed, arrival_seed = np.random.SeedSequence(entropy).spawn(3)
    ids = prompt_space.allowed_ids()
    warmup = _request_specs(workload, workload.warmup_requests, ids, np.random.default_rng(warmup_seed))
    timed = _request_specs(workload, workload.num_requests, ids, np.random.default_rng(timed_seed))
    schedule = SCHEDULES[workload.mode](level, workload.num_requests, np.random.default_rng(arrival_seed))
    # Warm up at the level's concurrency (CUDA graphs and batch shapes of that size); open loops all at once.
    warmup_concurrency = max(1, min(schedule.concurrency or len(warmup), len(warmup)))
    return LevelPlan(warmup, timed, schedule, warmup_concurrency)


def _request_body(model: str, spec: RequestSpec, stream_interval: int) -> dict:
    body = {
        "model": model,
        "prompt": list(spec.prompt),
        "max_tokens": spec.output_tokens,
        "min_tokens": spec.output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Token ids per chunk let a token that decodes to no text (half a UTF-8 character) count as arrived.
        "return_token_ids": True,
    }
    # Only when asked: vLLM's per-request `stream_interval` batches tokens into chunks after the first one.
    return body | {"stream_interval": stream_interval} if stream_interval > 1 else body


Send = Callable[[RequestSpec], Awaitable[Trace]]
Sent = list[tuple[RequestSpec, Trace]]


async def _run_closed_loop(specs: Sequence[RequestSpec], concurrency: int, send: Send, stop_s: float | None) -> Sent:
    """`concurrency` workers share one queue; a worker takes the next request when its last one is done."""
    queue = iter(specs)  # a shared iterator is a queue here: workers only switch at awaits
    deadline = time.perf_counter() + stop_s if stop_s is not None else None
    sent: Sent = []

    async def worker() -> None:
        for spec in queue:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            sent.append((spec, await send(spec)))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    return sent


async def _run_open_loop(
    specs: Sequence[RequestSpec], offsets_s: Sequence[float], send: Send, stop_s: float | None
) -> Sent:
    """Launch each request as its own task at its offset, whether or not earlier ones have finished."""
    base = time.perf_counter()
    tasks = []
    for spec, offset_s in zip(specs, offsets_s, strict=True):
        if stop_s is not None and offset_s >= stop_s:
            break
        delay_s = base + offset_s - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        tasks.append(asyncio.create_task(send(spec)))
    traces = await asyncio.gather(*tasks)
    return list(zip(specs, traces, strict=False))


async def _execute(specs: Sequence[RequestSpec], schedule: Schedule, send: Send, stop_s: float | None) -> Sent:
    if schedule.concurrency is not None:
        return await _run_closed_loop(specs, schedule.concurrency, send, stop_s)
    return await _run_open_loop(specs, schedule.offsets_s or (), send, stop_s)


def _stats(values: Sequence[float] | np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Percentiles of the values, or Nones when there are none."""
    if len(values) == 0:
        return [None] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), qs)]


def _count(reported: object, fallback: int) -> int:
    """A token count from the usage chunk when it holds one, else what the client counted itself."""
    return reported if isinstance(reported, int) and not isinstance(reported, bool) else fallback


def _record(workload: str, level: float, spec: RequestSpec, trace: Trace, origin: float) -> PerfRequest:
    usage = trace.usage or {}
    output_tokens = _count(usage.get("completion_tokens"), trace.tokens_seen)
    error = trace.error
    if error is None and not trace.chunk_times:
        error = "no tokens streamed"
    ok = error is None
    ttft_s = trace.chunk_times[0] - trace.start if trace.chunk_times else None
    e2e_s = trace.end - trace.start
    itls_s = np.diff(trace.chunk_times)
    itl_p50_s, itl_p99_s = _stats(itls_s, (50, 99))
    return PerfRequest(
        workload=workload,
        level=level,
        request_index=spec.index,
        prompt_tokens=_count(usage.get("prompt_tokens"), len(spec.prompt)),
        output_tokens=output_tokens,
        ttft_s=ttft_s,
        tpot_s=(e2e_s - ttft_s) / (output_tokens - 1) if ok and output_tokens >= 2 else None,
        itl_mean_s=float(itls_s.mean()) if itls_s.size else None,
        itl_p50_s=itl_p50_s,
        itl_p99_s=itl_p99_s,
        itl_max_s=float(itls_s.max()) if itls_s.size else None,
        e2e_s=e2e_s,
        start_s=trace.start - origin,
        ok=ok,
        error=error,
    )


def _level_run(workload: WorkloadConfig, level: float, sent: Sent, planned: int, energy_j: float | None) -> LevelRun:
    sent = sorted(sent, key=lambda pair: pair[0].index)
    origin = min((trace.start for _, trace in sent), default=0.0)
    finish = max((trace.end for _, trace in sent), default=origin)
    requests = tuple(_record(workload.name, level, spec, trace, origin) for spec, trace in sent)
    itls = tuple(tuple(np.diff(trace.chunk_times).tolist()) for _, trace in sent)
    return LevelRun(workload.name, level, requests, itls, finish - origin, planned - len(sent), energy_j)


async def _warm_up(plan: LevelPlan, send: Send) -> None:
    """Untimed requests first: compile/capture kernels, open connections, fill allocator pools."""
    if not plan.warmup:
        return
    sent = await _run_closed_loop(plan.warmup, plan.warmup_concurrency, send, None)
    errors = [trace.error for _, trace in sent if trace.error is not None]
    if errors:
        log.warning("%d of %d warm-up requests failed; first error: %s", len(errors), len(sent), errors[0])


async def run_level(
    base_url: str,
    model: str,
    workload: WorkloadConfig,
    level: float,
    prompt_space: PromptSpace,
    seed: int,
    progress: Progress | None = None,
    gpu_indices: Sequence[int] = (),
) -> LevelRun:
    """Warm up, then send one level's timed requests to `base_url` (server root, e.g. http://127.0.0.1:8000).

    `progress(done, planned)` is called after each timed request. Energy is measured on `gpu_indices`
    (NVML indices on this node) during the timed requests only.
    """
    plan = plan_level(workload, level, prompt_space, seed)
    url = base_url.rstrip("/").removesuffix("/v1") + "/v1/completions"
    done = 0

    # limit=0: the schedule, not aiohttp's pool (100 connections by default), decides the concurrency.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def send(spec: RequestSpec) -> Trace:
            body = _request_body(model, spec, workload.stream_interval)
            return await stream_request(session, url, body, workload.request_timeout_s)

        async def send_timed(spec: RequestSpec) -> Trace:
            nonlocal done
            trace = await send(spec)
            done += 1
            if progress is not None:
                progress(done, len(plan.timed))
            return trace

        await _warm_up(plan, send)
        with PowerSampler(gpu_indices) as power:
            sent = await _execute(plan.timed, plan.schedule, send_timed, workload.max_duration_s)
    return _level_run(workload, level, sent, len(plan.timed), power.energy_j)


def run_workload(
    base_url: str,
    model: str,
    workload: WorkloadConfig,
    prompt_space: PromptSpace,
    seed: int,
    progress: Progress | None = None,
    gpu_indices: Sequence[int] = (),
) -> list[LevelRun]:
    """Run every level of a workload in order (blocking; from inside an event loop, await run_level).

    `progress(done, planned)` counts timed requests over all levels.
    """

    async def run_all() -> list[LevelRun]:
        planned = workload.num_requests * len(workload.levels)
        runs: list[LevelRun] = []
        for level in workload.levels:
            before = workload.num_requests * len(runs)
            on_done = None if progress is None else (lambda done, _, before=before: progress(before + done, planned))
            runs.append(await run_level(base_url, model, workload, level, prompt_space, seed, on_done, gpu_indices))
        return runs

    return asyncio.run(run_all())


def _meets_slo(request: PerfRequest, slo: SLOConfig) -> bool:
    """Whether an ok request meets every SLO that is set; a one-token output has no TPOT to miss."""
    checks = (
        (slo.ttft_s, request.ttft_s),
        (slo.tpot_s, request.tpot_s if request.output_tokens >= 2 else 0.0),
        (slo.e2e_s, request.e2e_s),
    )
    return all(limit is None or (value is not None and value <= limit) for limit, value in checks)


def summarize(workload: WorkloadConfig, level_run: LevelRun, billing: cost.Billing) -> PerfSummary:
    """The summary row of one level. Latency percentiles and throughput count ok requests only; ITL
    percentiles pool every inter-token gap of every ok request; energy is the level run's own reading."""
    energy_j = level_run.energy_j
    pairs = list(zip(level_run.requests, level_run.itls_s, strict=True))
    ok = [request for request, _ in pairs if request.ok]
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    duration_s = level_run.duration_s

    def per_s(count: float) -> float:
        return count / duration_s if duration_s > 0 else 0.0

    qs = (50, 90, 99)
    ttft = _stats([r.ttft_s for r in ok if r.ttft_s is not None], qs)
    tpot = _stats([r.tpot_s for r in ok if r.tpot_s is not None], qs)
    itl = _stats([gap for request, gaps in pairs if request.ok for gap in gaps], qs)
    e2e = _stats([r.e2e_s for r in ok], qs)
    slo = workload.slo
    has_slo = any(limit is not None for limit in (slo.ttft_s, slo.tpot_s, slo.e2e_s))
    return PerfSummary(
        workload=workload.name,
        mode=workload.mode,
        level=level_run.level,
        duration_s=duration_s,
        requests_ok=len(ok),
        requests_failed=len(level_run.requests) - len(ok),
        prompt_tokens_total=prompt_tokens,
        output_tokens_total=output_tokens,
        output_tokens_per_s=per_s(output_tokens),
        total_tokens_per_s=per_s(prompt_tokens + output_tokens),
        requests_per_s=per_s(len(ok)),
        ttft_p50_s=ttft[0],
        ttft_p90_s=ttft[1],
        ttft_p99_s=ttft[2],
        tpot_p50_s=tpot[0],
        tpot_p90_s=tpot[1],
        tpot_p99_s=tpot[2],
        itl_p50_s=itl[0],
        itl_p90_s=itl[1],
        itl_p99_s=itl[2],
        e2e_p50_s=e2e[0],
        e2e_p90_s=e2e[1],
        e2e_p99_s=e2e[2],
        goodput_requests_per_s=per_s(sum(_meets_slo(r, slo) for r in ok)) if has_slo else None,
        device_type=billing.device_type,
        gpu_type=billing.gpu_type,
        gpu_count=billing.gpu_count,
        devices_billed=billing.devices_billed,
        usd_per_device_hour=billing.usd_per_device_hour,
        usd_per_mtok_output=cost.usd_per_mtok(per_s(output_tokens), billing),
        energy_j=energy_j,
        j_per_output_token=cost.j_per_token(energy_j, output_tokens),
        flops_per_output_token=cost.flops_per_token(billing.parameters),
    )
