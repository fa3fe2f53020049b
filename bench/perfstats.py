"""From timed streams to rows: one `PerfRequest` per request, one `PerfSummary` per load level.

Coalesced requests. A request is *coalesced* when it produced at least two output tokens and all of its
token-carrying chunks reached the client within `COALESCED_WINDOW_S` (1 ms) of each other — including the
case of a single chunk that holds the whole output. vLLM sends the first token in a chunk of its own
whatever `stream_interval` is (later chunks carry up to `stream_interval` tokens), so any output of two or
more tokens spans at least one decode step between its first and last chunk; no engine runs a decode step
in under a millisecond and then streams it, so a shorter span means the tokens queued somewhere (a stalled
server event loop, the socket, a busy client) and were read as one burst. Such a request's TTFT is then
about its e2e and its TPOT and ITLs about 0: not latency measurements. It is kept as a row (flagged
`coalesced`), its tokens count towards throughput, its e2e latency (which is measured) counts in the e2e
percentiles, and it stays out of the TTFT/TPOT/ITL percentiles; the summary counts such requests.

SLO attainment. The share of a level's *judged* requests that meet every SLO set: judged are the failed
requests (each a miss: a user got no answer) and the ok requests that are not coalesced; met are the ok,
not coalesced requests within every limit. Coalesced requests are left out of both counts, because their
TTFT and TPOT cannot be judged; `coalesced_requests` next to the attainment says how many. None without
SLOs or with nothing to judge. Goodput is the met requests per second of the level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench import cost
from bench.config import SLOConfig, WorkloadConfig
from bench.records import PerfRequest, PerfSummary
from bench.stream import Trace

COALESCED_WINDOW_S = 1e-3  # first to last token-carrying chunk within this: one burst


@dataclass(frozen=True)
class LevelRun:
    """The timed requests of one level as they happened; warm-up requests are not in it."""

    workload: str
    level: float
    requests: tuple[PerfRequest, ...]  # by request_index
    itls_s: tuple[tuple[float, ...], ...]  # gaps between token-carrying chunks, per request, aligned with requests
    duration_s: float  # first timed send -> last timed completion
    not_sent: int  # of the planned num_requests, those never sent because max_duration_s ran out
    energy_j: float | None  # GPU energy during the timed requests; None without NVML or without gpu_indices


def _stats(values: Sequence[float] | np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Percentiles of the values, or Nones when there are none."""
    if len(values) == 0:
        return [None] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), qs)]


def _count(reported: object, fallback: int) -> int:
    """A token count from the usage chunk when it holds one, else what the client counted itself."""
    return reported if isinstance(reported, int) and not isinstance(reported, bool) else fallback


def is_coalesced(chunk_times: Sequence[float], output_tokens: int) -> bool:
    """Whether an output of `output_tokens` arrived as one burst (see the module docstring)."""
    return output_tokens >= 2 and bool(chunk_times) and chunk_times[-1] - chunk_times[0] <= COALESCED_WINDOW_S


def request_record(
    workload: str, level: float, index: int, prompt_tokens: int, trace: Trace, origin: float
) -> PerfRequest:
    """The row of one timed request; `origin` is the level's first send, `prompt_tokens` the planned length."""
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
        request_index=index,
        prompt_tokens=_count(usage.get("prompt_tokens"), prompt_tokens),
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
        coalesced=ok and is_coalesced(trace.chunk_times, output_tokens),
        error=error,
    )


def has_slo(slo: SLOConfig) -> bool:
    return any(limit is not None for limit in (slo.ttft_s, slo.tpot_s, slo.e2e_s))


def _meets_slo(request: PerfRequest, slo: SLOConfig) -> bool:
    """Whether an ok request meets every SLO that is set; a one-token output has no TPOT to miss."""
    checks = (
        (slo.ttft_s, request.ttft_s),
        (slo.tpot_s, request.tpot_s if request.output_tokens >= 2 else 0.0),
        (slo.e2e_s, request.e2e_s),
    )
    return all(limit is None or (value is not None and value <= limit) for limit, value in checks)


def slo_counts(requests: Sequence[PerfRequest], slo: SLOConfig) -> tuple[int, int]:
    """(met, judged): judged = failed + ok not coalesced; met = ok, not coalesced, within every SLO."""
    measured = [r for r in requests if r.ok and not r.coalesced]
    failed = sum(not r.ok for r in requests)
    return sum(_meets_slo(r, slo) for r in measured), len(measured) + failed


def summarize(workload: WorkloadConfig, level_run: LevelRun, billing: cost.Billing) -> PerfSummary:
    """The summary row of one level. Throughput and e2e percentiles count every ok request; TTFT, TPOT and
    ITL percentiles only the ok requests that are not coalesced (ITL pools all their inter-token gaps);
    energy is the level run's own reading; `capacity_requests_per_s` is left None (a sweep fills it)."""
    energy_j = level_run.energy_j
    pairs = list(zip(level_run.requests, level_run.itls_s, strict=True))
    ok = [request for request, _ in pairs if request.ok]
    timed = [request for request in ok if not request.coalesced]  # latency measurements
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    duration_s = level_run.duration_s

    def per_s(count: float) -> float:
        return count / duration_s if duration_s > 0 else 0.0

    qs = (50, 90, 99)
    ttft = _stats([r.ttft_s for r in timed if r.ttft_s is not None], qs)
    tpot = _stats([r.tpot_s for r in timed if r.tpot_s is not None], qs)
    itl = _stats([gap for request, gaps in pairs if request.ok and not request.coalesced for gap in gaps], qs)
    e2e = _stats([r.e2e_s for r in ok], qs)
    met, judged = slo_counts(level_run.requests, workload.slo)
    with_slo = has_slo(workload.slo)
    return PerfSummary(
        workload=workload.name,
        mode=workload.mode,
        level=level_run.level,
        duration_s=duration_s,
        requests_ok=len(ok),
        requests_failed=len(level_run.requests) - len(ok),
        coalesced_requests=len(ok) - len(timed),
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
        goodput_requests_per_s=per_s(met) if with_slo else None,
        slo_attainment=met / judged if with_slo and judged else None,
        capacity_requests_per_s=None,
        device_type=billing.device_type,
        gpu_type=billing.gpu_type,
        gpu_count=billing.gpu_count,
        devices_billed=billing.devices_billed,
        usd_per_device_hour=billing.usd_per_device_hour,
        usd_per_mtok_output=cost.usd_per_mtok(per_s(output_tokens), billing),
        energy_j=energy_j,
        j_per_output_token=cost.j_per_token(energy_j, output_tokens),
        flops_per_output_token=cost.flops_per_token(billing.parameters, billing.active_parameters),
    )
