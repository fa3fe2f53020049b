"""Streaming load generator for an OpenAI-compatible vLLM server (`POST /v1/completions`, SSE).

Why token-id prompts: the completions API accepts `prompt: [int, ...]`, so prompt lengths are exact with no
tokenizer, and `min_tokens = max_tokens` with `ignore_eos` (vLLM extensions) makes output lengths exact:
every model of a pair does exactly the same work. Prompts come from a seeded RNG keyed by (seed, workload,
level), so teacher and student get identical requests, while each level and its warm-up get fresh prompts
that cannot hit the prefix cache another level filled.

A level is three steps: `plan_level` (pure and seeded: prompts, output lengths, arrival schedule),
`run_level` (warm-up at the level's concurrency, then the timed requests, one coroutine per request) and
`summarize` (percentiles, throughput, SLO attainment, goodput, cost, energy). A level sends at least
`num_requests` and, with `min_duration_s`, goes on with fresh seeded requests (`extra_requests`) until it
has lasted that long, so a fast model's level is not over before it means anything. A mode is only an
arrival schedule: closed loop (N workers taking the next request when their last one finishes) or open loop
(send times); a new mode is a new entry in SCHEDULES. A `sweep` is a series of Poisson levels whose rates
`bench.sweep` picks. `measure_workload` is one trial of a whole workload, the worker's entry point.
One request's HTTP stream and its timing are `bench.stream`'s; the per-request rows and the level's
summary are `bench.perfstats`'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from bench import cost, sweep
from bench.config import LengthDistribution, WorkloadConfig
from bench.perfstats import LevelRun, request_record, summarize
from bench.power import PowerSampler
from bench.records import PerfProbe, PerfRequest, PerfSummary
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
    timed: tuple[RequestSpec, ...]  # the first num_requests; `extra_requests` continues them
    schedule: Schedule
    warmup_concurrency: int


@dataclass(frozen=True)
class WorkloadResult:
    """One trial of a workload: every timed request, one summary per level (a sweep: the probe at capacity),
    and a sweep's probes (empty for the other modes)."""

    requests: list[PerfRequest]
    summaries: list[PerfSummary]
    probes: list[PerfProbe]


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


# mode -> (level, request count, rng) -> Schedule; a sweep's probes are Poisson levels
SCHEDULES: dict[str, Callable[[float, int, np.random.Generator], Schedule]] = {
    "concurrency": lambda level, count, rng: Schedule(concurrency=int(level)),
    "rate": _poisson,
    "sweep": _poisson,
    "offline": lambda level, count, rng: Schedule(offsets_s=(0.0,) * count),  # the level is only a label
}


def _request_specs(
    workload: WorkloadConfig, count: int, ids: np.ndarray, rng: np.random.Generator, first_index: int = 0
) -> tuple[RequestSpec, ...]:
    prompt_lengths = sample_lengths(workload.prompt_tokens, count, rng)
    output_lengths = sample_lengths(workload.output_tokens, count, rng)
    return tuple(
        RequestSpec(first_index + index, tuple(rng.choice(ids, size=int(n)).tolist()), int(m))
        for index, (n, m) in enumerate(zip(prompt_lengths, output_lengths, strict=True))
    )


def _entropy(workload: WorkloadConfig, level: float, seed: int) -> list[int]:
    return [seed % 2**63, zlib.crc32(workload.name.encode()), round(level * 1000)]


def plan_level(workload: WorkloadConfig, level: float, prompt_space: PromptSpace, seed: int) -> LevelPlan:
    """The prompts, output lengths and arrival schedule of one level; the same inputs give the same plan."""
    warmup_seed, timed_seed, arrival_seed = np.random.SeedSequence(_entropy(workload, level, seed)).spawn(3)
    ids = prompt_space.allowed_ids()
    warmup = _request_specs(workload, workload.warmup_requests, ids, np.random.default_rng(warmup_seed))
    timed = _request_specs(workload, workload.num_requests, ids, np.random.default_rng(timed_seed))
    schedule = SCHEDULES[workload.mode](level, workload.num_requests, np.random.default_rng(arrival_seed))
    # Warm up at the level's concurrency (CUDA graphs and batch shapes of that size); open loops all at once.
    warmup_concurrency = max(1, min(schedule.concurrency or len(warmup), len(warmup)))
    return LevelPlan(warmup, timed, schedule, warmup_concurrency)


def extra_requests(
    workload: WorkloadConfig, level: float, prompt_space: PromptSpace, seed: int, batch: int
) -> tuple[tuple[RequestSpec, ...], tuple[float, ...] | None]:
    """Batch `batch` (1, 2, ...) of the requests a level sends past its plan to last `min_duration_s`.

    num_requests fresh seeded requests, indexed after the previous batch, and for open loops their send
    offsets counted from the previous batch's last send (the first gap included, so arrivals stay Poisson).
    """
    timed_seed, arrival_seed = np.random.SeedSequence([*_entropy(workload, level, seed), batch]).spawn(2)
    count = workload.num_requests
    specs = _request_specs(
        workload, count, prompt_space.allowed_ids(), np.random.default_rng(timed_seed), batch * count
    )
    schedule = SCHEDULES[workload.mode](level, count + 1, np.random.default_rng(arrival_seed))
    return specs, None if schedule.offsets_s is None else schedule.offsets_s[1:]


def _paired(
    specs: Sequence[RequestSpec], offsets_s: Sequence[float] | None
) -> Iterator[tuple[RequestSpec, float | None]]:
    return zip(specs, offsets_s, strict=True) if offsets_s is not None else ((spec, None) for spec in specs)


def _timed_stream(
    plan: LevelPlan, workload: WorkloadConfig, level: float, prompt_space: PromptSpace, seed: int
) -> Iterator[tuple[RequestSpec, float | None]]:
    """The level's timed requests with their send offsets (None: closed loop): the plan, then, for a
    `min_duration_s`, extra batches for as long as the caller reads (offline is one batch: none)."""
    offsets_s = plan.schedule.offsets_s
    yield from _paired(plan.timed, offsets_s)
    if workload.min_duration_s is None or workload.mode == "offline":
        return
    last_s = offsets_s[-1] if offsets_s else 0.0
    for batch in itertools.count(1):
        specs, more_s = extra_requests(workload, level, prompt_space, seed, batch)
        yield from _paired(specs, None if more_s is None else [last_s + offset for offset in more_s])
        last_s += more_s[-1] if more_s else 0.0


def keep_sending(workload: WorkloadConfig, sent: int, elapsed_s: float) -> bool:
    """Whether a timed level sends another request, `sent` having gone out `elapsed_s` into the level:
    until it has sent num_requests and lasted min_duration_s, and never from max_duration_s on."""
    if workload.max_duration_s is not None and elapsed_s >= workload.max_duration_s:
        return False
    return sent < workload.num_requests or elapsed_s < (workload.min_duration_s or 0.0)


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
KeepSending = Callable[[int, float], bool]  # (requests sent so far, seconds into the level)


async def _run_closed_loop(specs: Iterator[RequestSpec], concurrency: int, send: Send, more: KeepSending) -> Sent:
    """`concurrency` workers share one queue; a worker takes the next request when its last one is done."""
    start = time.perf_counter()
    sent: Sent = []
    taken = 0

    async def worker() -> None:
        nonlocal taken
        # A shared iterator is a queue here: workers only switch at awaits.
        while more(taken, time.perf_counter() - start) and (spec := next(specs, None)) is not None:
            taken += 1
            sent.append((spec, await send(spec)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


async def _run_open_loop(stream: Iterator[tuple[RequestSpec, float | None]], send: Send, more: KeepSending) -> Sent:
    """Launch each request as its own task at its offset, whether or not earlier ones have finished."""
    base = time.perf_counter()
    specs, tasks = [], []
    for spec, offset_s in stream:
        if not more(len(tasks), offset_s or 0.0):  # by the schedule's clock: the same requests for every model
            break
        delay_s = base + (offset_s or 0.0) - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        specs.append(spec)
        tasks.append(asyncio.create_task(send(spec)))
    return list(zip(specs, await asyncio.gather(*tasks), strict=True))


async def _warm_up(plan: LevelPlan, send: Send) -> None:
    """Untimed requests first, at the level's concurrency: compile/capture kernels, open connections, fill
    allocator pools."""
    if not plan.warmup:
        return
    sent = await _run_closed_loop(iter(plan.warmup), plan.warmup_concurrency, send, lambda sent, elapsed_s: True)
    errors = [trace.error for _, trace in sent if trace.error is not None]
    if errors:
        log.warning("%d of %d warm-up requests failed; first error: %s", len(errors), len(sent), errors[0])


def _level_run(workload: WorkloadConfig, level: float, sent: Sent, energy_j: float | None) -> LevelRun:
    sent = sorted(sent, key=lambda pair: pair[0].index)
    origin = min((trace.start for _, trace in sent), default=0.0)
    finish = max((trace.end for _, trace in sent), default=origin)
    requests = tuple(
        request_record(workload.name, level, spec.index, len(spec.prompt), trace, origin) for spec, trace in sent
    )
    itls = tuple(tuple(np.diff(trace.chunk_times).tolist()) for _, trace in sent)
    not_sent = max(0, workload.num_requests - len(sent))
    return LevelRun(workload.name, level, requests, itls, finish - origin, not_sent, energy_j)


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

    `progress(done, planned)` is called after each timed request (planned grows past num_requests when
    min_duration_s keeps the level going). Energy is measured on `gpu_indices` (NVML indices on this node)
    during the timed requests only.
    """
    plan = plan_level(workload, level, prompt_space, seed)
    url = base_url.rstrip("/").removesuffix("/v1") + "/v1/completions"
    stream = _timed_stream(plan, workload, level, prompt_space, seed)
    more: KeepSending = functools.partial(keep_sending, workload)
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
                progress(done, max(done, len(plan.timed)))
            return trace

        await _warm_up(plan, send)
        with PowerSampler(gpu_indices) as power:
            if plan.schedule.concurrency is not None:
                specs = (spec for spec, _ in stream)
                sent = await _run_closed_loop(specs, plan.schedule.concurrency, send_timed, more)
            else:
                sent = await _run_open_loop(stream, send_timed, more)
    return _level_run(workload, level, sent, power.energy_j)


LevelRunner = Callable[[float, int, int], Awaitable[LevelRun]]  # (level, timed requests before it, planned)


def measure_workload(
    base_url: str,
    model: str,
    workload: WorkloadConfig,
    prompt_space: PromptSpace,
    seed: int,
    billing: cost.Billing,
    gpu_indices: Sequence[int] = (),
    progress: Progress | None = None,
) -> WorkloadResult:
    """One trial of a workload: every level in order, or the whole capacity sweep (blocking: it runs its own
    event loop). `progress(done, planned)` counts timed requests over all levels or probes."""

    async def run_one(level: float, before: int, planned: int) -> LevelRun:
        on_done = None
        if progress is not None:
            on_done = lambda done, _: progress(before + done, max(planned, before + done))  # noqa: E731
        return await run_level(base_url, model, workload, level, prompt_space, seed, on_done, gpu_indices)

    if workload.mode == "sweep":
        return asyncio.run(_sweep(workload, billing, run_one))

    async def run_all() -> list[LevelRun]:
        runs: list[LevelRun] = []
        for level in workload.levels:
            before = sum(len(run.requests) for run in runs)
            runs.append(await run_one(level, before, workload.num_requests * len(workload.levels)))
        return runs

    runs = asyncio.run(run_all())
    summaries = [summarize(workload, run, billing) for run in runs]
    return WorkloadResult([request for run in runs for request in run.requests], summaries, [])


async def _sweep(workload: WorkloadConfig, billing: cost.Billing, run_one: LevelRunner) -> WorkloadResult:
    """Probe the Poisson rates `bench.sweep` picks; the summary row is the probe at capacity (without a
    capacity: the lowest rate probed), with `capacity_requests_per_s` set."""
    settings = workload.sweep
    planned = workload.num_requests * settings.max_probes
    history: list[sweep.Outcome] = []
    requests: list[PerfRequest] = []
    summaries: list[PerfSummary] = []
    probes: list[PerfProbe] = []
    while (rate := sweep.next_rate(settings, history)) is not None:
        level_run = await run_one(rate, len(requests), planned)
        summary = summarize(workload, level_run, billing)
        passed = sweep.meets_target(summary.slo_attainment, settings.target_attainment)
        probes.append(
            PerfProbe(
                workload=workload.name,
                probe_index=len(probes),
                rate_rps=rate,
                requests_ok=summary.requests_ok,
                requests_failed=summary.requests_failed,
                slo_attainment=summary.slo_attainment,
                output_tokens_per_s=summary.output_tokens_per_s,
                duration_s=summary.duration_s,
                meets_target=passed,
            )
        )
        log.info(
            "sweep %s probe %d: %.4g req/s, attainment %s", workload.name, len(probes) - 1, rate, summary.slo_attainment
        )
        history.append(sweep.Outcome(rate, passed))
        requests.extend(level_run.requests)
        summaries.append(summary)
    capacity = sweep.capacity(history)
    at_rate = capacity if capacity is not None else min(outcome.rate_rps for outcome in history)
    at_capacity = next(summary for summary in summaries if summary.level == at_rate)
    return WorkloadResult(requests, [dataclasses.replace(at_capacity, capacity_requests_per_s=capacity)], probes)
