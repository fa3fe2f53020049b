"""The load generator against a FAKE OpenAI completions server (127.0.0.1 only; the product never uses it).

The fake streams one token per SSE chunk with a fixed delay, reports usage in a final chunk, tracks how many
requests are in flight, and can misbehave on chosen requests (by arrival order): HTTP 500, a stall past the
client's timeout, a malformed SSE event, a connection dropped mid-stream, or every token in one burst
(generated at the usual pace, written in one go, as a stalled server event loop does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
import threading
import types
from collections.abc import Iterator

import numpy as np
import pytest
from aiohttp import web

from bench import cost, loadgen, perfstats
from bench.config import LengthDistribution, SLOConfig, SweepConfig, WorkloadConfig
from bench.power import PowerSampler
from bench.records import PerfRequest

SPACE = loadgen.PromptSpace(vocab_size=50, special_ids=frozenset({0, 1, 2}))
BILLING = cost.Billing("H100-80GB", "NVIDIA H100", 1, 1, 3.6, 1_000_000)


class FakeOpenAIServer:
    """A fake of vLLM's streaming /v1/completions, run on its own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.reset()

    def reset(self) -> None:
        self.token_delay_s = 0.002
        # arrival number -> "http500", "stall", "malformed", "error_event", "drop", "burst"
        self.faults: dict[int, str] = {}
        self.send_usage = True
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fault = self.faults.get(len(self.bodies))
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if fault == "http500":
                return web.json_response({"error": {"message": "fake failure"}}, status=500)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b": an SSE comment, which clients ignore\n\n")
            # Like vLLM: the first token alone, then chunks of `stream_interval` tokens.
            interval, pending, held = body.get("stream_interval", 1), [], b""
            for position in range(body["max_tokens"]):
                await asyncio.sleep(1.0 if fault == "stall" else self.token_delay_s)
                if fault == "malformed" and position == 1:
                    await response.write(b'data: {"choices": [{"text": \n\n')
                if fault == "error_event" and position == 1:
                    await response.write(b'data: {"error": {"message": "engine died"}}\n\n')
                if fault == "drop" and position == 2:
                    request.transport.close()
                    return response
                pending.append(7)
                if position == 0 or len(pending) == interval or position == body["max_tokens"] - 1:
                    chunk = {"choices": [{"index": 0, "text": f" t{position}", "token_ids": pending}], "usage": None}
                    event = f"data: {json.dumps(chunk)}\n\n".encode()
                    if fault == "burst":
                        held += event
                    else:
                        await response.write(event)
                    pending = []
            if held:
                await response.write(held)
        finally:
            # Leave before the last bytes go out: the client may send its next request as soon as it reads them.
            self.in_flight -= 1
        if self.send_usage:
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
            await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    def start(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        # handler_cancellation: a stalled handler ends when the client gives up, so in-flight counts stay true.
        self.runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
        self._call(self.runner.setup())
        self._call(web.SockSite(self.runner, sock).start())
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def stop(self) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)


@pytest.fixture(scope="module")
def fake_server_root() -> Iterator[tuple[FakeOpenAIServer, str]]:
    server = FakeOpenAIServer()
    root = server.start()
    yield server, root
    server.stop()


@pytest.fixture
def fake_openai_server(fake_server_root: tuple[FakeOpenAIServer, str]) -> tuple[FakeOpenAIServer, str]:
    server, root = fake_server_root
    server.reset()
    return server, root


def workload(**overrides: object) -> WorkloadConfig:
    settings = {
        "name": "w",
        "levels": (1,),
        "num_requests": 6,
        "warmup_requests": 0,
        "prompt_tokens": LengthDistribution(kind="uniform", mean=8, spread=4),
        "output_tokens": LengthDistribution(mean=5),
        "request_timeout_s": 5,
    }
    return WorkloadConfig(**(settings | overrides))


def run(root: str, work: WorkloadConfig, level: float, **kwargs: object) -> loadgen.LevelRun:
    return asyncio.run(loadgen.run_level(root, "fake-model", work, level, SPACE, seed=7, **kwargs))


def test_concurrency_level_is_consistent_and_never_exceeded(fake_openai_server):
    server, root = fake_openai_server
    work = workload(
        num_requests=12, warmup_requests=3, output_tokens=LengthDistribution(kind="uniform", mean=6, spread=3)
    )
    calls: list[tuple[int, int]] = []
    result = run(root, work, 4, progress=lambda done, planned: calls.append((done, planned)))

    assert len(server.bodies) == 15 and len(result.requests) == 12  # warm-up sent, not recorded
    assert server.max_in_flight == 4
    assert calls[-1] == (12, 12) and len(calls) == 12
    plan = loadgen.plan_level(work, 4, SPACE, seed=7)
    for request, itls, spec in zip(result.requests, result.itls_s, plan.timed, strict=True):
        assert request.ok and request.error is None
        assert request.output_tokens == spec.output_tokens and request.prompt_tokens == len(spec.prompt)
        assert 0 < request.ttft_s <= request.e2e_s
        assert len(itls) == request.output_tokens - 1
        assert request.tpot_s == pytest.approx((request.e2e_s - request.ttft_s) / (request.output_tokens - 1))
        assert request.start_s >= 0 and request.start_s + request.e2e_s <= result.duration_s + 1e-9
    sent = [body for body in server.bodies if body["prompt"] in [list(s.prompt) for s in plan.timed]]
    assert len(sent) == 12 and all(b["min_tokens"] == b["max_tokens"] and b["ignore_eos"] for b in sent)

    summary = loadgen.summarize(work, result, BILLING)
    assert summary.output_tokens_total == sum(r.output_tokens for r in result.requests)
    assert summary.requests_ok == 12 and summary.requests_failed == 0
    assert summary.output_tokens_per_s == pytest.approx(summary.output_tokens_total / result.duration_s)
    assert summary.goodput_requests_per_s is None and summary.energy_j is None and summary.j_per_output_token is None
    assert summary.flops_per_output_token == 2_000_000
    moe = dataclasses.replace(BILLING, active_parameters=250_000)
    assert loadgen.summarize(work, result, moe).flops_per_output_token == 500_000  # 2 x active, not 2 x total


def test_stream_interval_is_asked_for_and_tokens_are_counted_per_chunk(fake_openai_server):
    server, root = fake_openai_server
    result = run(root, workload(num_requests=3, output_tokens=LengthDistribution(mean=9), stream_interval=4), 1)
    assert all(body["stream_interval"] == 4 for body in server.bodies)
    for request, itls in zip(result.requests, result.itls_s, strict=True):
        assert request.ok and request.output_tokens == 9
        assert len(itls) == 2  # chunks of 1, 4 and 4 tokens
        assert request.tpot_s == pytest.approx((request.e2e_s - request.ttft_s) / 8)
    server.reset()
    run(root, workload(num_requests=1), 1)
    assert "stream_interval" not in server.bodies[0]  # the default sends nothing vLLM-specific for it


def test_measure_workload_runs_every_level_and_counts_progress_across_them(fake_openai_server):
    _, root = fake_openai_server
    calls: list[tuple[int, int]] = []
    work = workload(levels=(1, 2), num_requests=3)
    result = loadgen.measure_workload(
        root, "fake-model", work, SPACE, 7, BILLING, progress=lambda done, planned: calls.append((done, planned))
    )
    assert [s.level for s in result.summaries] == [1, 2] and result.probes == []
    assert [r.level for r in result.requests] == [1, 1, 1, 2, 2, 2]
    assert all(s.capacity_requests_per_s is None and s.mode == "concurrency" for s in result.summaries)
    assert calls == [(done, 6) for done in range(1, 7)]


def test_offline_sends_everything_at_once(fake_openai_server):
    server, root = fake_openai_server
    result = run(root, workload(mode="offline", num_requests=8), 1)
    assert server.max_in_flight == 8 and all(r.ok for r in result.requests)


def test_poisson_arrivals_are_seeded_and_followed(fake_openai_server):
    server, root = fake_openai_server
    work = workload(mode="rate", num_requests=10, output_tokens=LengthDistribution(mean=2))
    first = loadgen.plan_level(work, 40, SPACE, seed=7).schedule.offsets_s
    assert first == loadgen.plan_level(work, 40, SPACE, seed=7).schedule.offsets_s
    assert first != loadgen.plan_level(work, 40, SPACE, seed=8).schedule.offsets_s
    many = loadgen.plan_level(workload(mode="rate", num_requests=4000), 40, SPACE, seed=1).schedule.offsets_s
    assert np.mean(np.diff(many)) == pytest.approx(1 / 40, rel=0.1)

    result = run(root, work, 40)
    starts = [r.start_s for r in result.requests]
    assert all(r.ok for r in result.requests)
    assert np.allclose(starts, first, atol=0.1)  # loose: a shared 2-core machine delays timers


def test_prompts_avoid_special_ids_and_differ_by_level():
    work = workload(num_requests=50, warmup_requests=5)
    plan = loadgen.plan_level(work, 1, SPACE, seed=3)
    ids = {token for spec in plan.timed for token in spec.prompt}
    assert ids <= set(range(3, 50))
    assert all(4 <= len(spec.prompt) <= 12 for spec in plan.timed)
    assert {s.prompt for s in plan.warmup}.isdisjoint({s.prompt for s in plan.timed})
    assert plan.timed != loadgen.plan_level(work, 2, SPACE, seed=3).timed
    assert plan == loadgen.plan_level(work, 1, SPACE, seed=3)


def test_failures_become_rows(fake_openai_server):
    server, root = fake_openai_server
    server.faults = {0: "http500", 1: "stall", 2: "malformed", 3: "drop", 4: "error_event"}
    work = workload(num_requests=6, request_timeout_s=0.3)
    result = run(root, work, 1)

    errors = [r.error for r in result.requests]
    assert [r.ok for r in result.requests] == [False, False, False, False, False, True]
    assert errors[0].startswith("HTTP 500") and "fake failure" in errors[0]
    assert errors[1] == "timeout after 0.3 s"
    assert errors[2].startswith("malformed stream event")
    assert "Payload" in errors[3] or "before [DONE]" in errors[3]
    assert result.requests[3].output_tokens == 2 and result.requests[3].tpot_s is None  # what arrived before the drop
    assert errors[4] == "error in stream: {'message': 'engine died'}"

    summary = loadgen.summarize(work, result, BILLING)
    assert (summary.requests_ok, summary.requests_failed) == (1, 5)
    assert summary.output_tokens_total == 5 and summary.ttft_p50_s == result.requests[5].ttft_s


def test_token_count_falls_back_to_chunks_without_usage(fake_openai_server):
    server, root = fake_openai_server
    server.send_usage = False
    result = run(root, workload(num_requests=2), 1)
    assert [r.output_tokens for r in result.requests] == [5, 5]
    assert all(r.prompt_tokens > 0 for r in result.requests)


def test_max_duration_stops_launching(fake_openai_server):
    server, root = fake_openai_server
    server.token_delay_s = 0.02  # about 0.1 s per request
    result = run(root, workload(num_requests=20, max_duration_s=0.25), 1)
    assert 1 <= len(result.requests) < 20 and result.not_sent == 20 - len(result.requests)
    assert len(server.bodies) == len(result.requests)


def test_energy_comes_from_nvml_counter(fake_openai_server, monkeypatch):
    """A fake pynvml whose energy counter advances 500 mJ per read: 0.5 J over the timed requests."""
    readings = iter(range(0, 10_000, 500))
    fake = types.SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(readings),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    _, root = fake_openai_server
    work = workload(num_requests=2)
    result = run(root, work, 1, gpu_indices=(0,))
    assert result.energy_j == pytest.approx(0.5)
    summary = loadgen.summarize(work, result, BILLING)
    assert summary.j_per_output_token == pytest.approx(0.5 / 10)


def test_power_integration_without_counter(monkeypatch):
    def no_counter(handle: int) -> int:
        raise RuntimeError("not supported")

    fake = types.SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetTotalEnergyConsumption=no_counter,
        nvmlDeviceGetPowerUsage=lambda handle: 100_000,  # mW
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with PowerSampler([0, 1], interval_s=0.01) as sampler:
        threading.Event().wait(0.1)
    assert sampler.energy_j == pytest.approx(200 * 0.1, rel=0.5)  # 2 GPUs x 100 W x ~0.1 s


def test_power_is_none_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with PowerSampler([0]) as sampler:
        pass
    assert sampler.energy_j is None


def request(
    index: int, ttft_s: float, e2e_s: float, output_tokens: int = 11, ok: bool = True, coalesced: bool = False
) -> PerfRequest:
    tpot_s = (e2e_s - ttft_s) / (output_tokens - 1)
    return PerfRequest(
        workload="w",
        level=1.0,
        request_index=index,
        prompt_tokens=4,
        output_tokens=output_tokens,
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        itl_mean_s=tpot_s,
        itl_p50_s=tpot_s,
        itl_p99_s=tpot_s,
        itl_max_s=tpot_s,
        e2e_s=e2e_s,
        start_s=0.0,
        ok=ok,
        coalesced=coalesced,
        error=None if ok else "boom",
    )


def test_summarize_percentiles_goodput_and_cost():
    requests = tuple(request(i, ttft_s=0.1 * (i + 1), e2e_s=1.0 + 0.1 * i) for i in range(10))
    requests += (request(10, ttft_s=0.05, e2e_s=0.1, ok=False),)
    itls = tuple((r.tpot_s,) * 10 for r in requests)
    level_run = loadgen.LevelRun("w", 1.0, requests, itls, duration_s=2.0, not_sent=0, energy_j=55.0)
    work = workload(slo=SLOConfig(ttft_s=0.5, e2e_s=1.35))

    summary = loadgen.summarize(work, level_run, BILLING)
    ttfts = [0.1 * (i + 1) for i in range(10)]
    assert summary.ttft_p50_s == pytest.approx(np.percentile(ttfts, 50))
    assert summary.ttft_p99_s == pytest.approx(np.percentile(ttfts, 99))
    assert summary.e2e_p90_s == pytest.approx(np.percentile([1.0 + 0.1 * i for i in range(10)], 90))
    assert summary.itl_p50_s == pytest.approx(np.percentile([r.tpot_s for r in requests[:10]], 50))
    assert summary.goodput_requests_per_s == pytest.approx(4 / 2.0)  # ttft <= 0.5 and e2e <= 1.35: i = 0..3
    assert summary.slo_attainment == pytest.approx(4 / 11)  # the failed request is judged, and misses
    assert summary.coalesced_requests == 0 and summary.capacity_requests_per_s is None
    assert summary.output_tokens_per_s == pytest.approx(110 / 2.0)
    # 1 device x $3.6/h = $0.001/s; at 55 tokens/s that is $0.001 / 55 per token.
    assert summary.usd_per_mtok_output == pytest.approx(0.001 / 55 * 1e6)
    assert summary.j_per_output_token == pytest.approx(55.0 / 110)


def test_summarize_without_ok_requests_is_all_none():
    requests = (request(0, 0.1, 0.2, ok=False),)
    level_run = loadgen.LevelRun("w", 1.0, requests, ((),), duration_s=0.2, not_sent=0, energy_j=None)
    summary = loadgen.summarize(workload(slo=SLOConfig(ttft_s=1)), level_run, BILLING)
    assert summary.ttft_p50_s is None and summary.itl_p99_s is None and summary.e2e_p90_s is None
    assert summary.output_tokens_per_s == 0.0 and summary.usd_per_mtok_output is None
    assert summary.goodput_requests_per_s == 0.0 and summary.slo_attainment == 0.0


# -- coalesced requests, SLO attainment --------------------------------------------------------------


def test_a_burst_is_flagged_coalesced_and_kept_out_of_latency_percentiles(fake_openai_server):
    server, root = fake_openai_server
    server.token_delay_s = 0.01
    server.faults = {1: "burst", 3: "burst"}
    work = workload(num_requests=5, output_tokens=LengthDistribution(mean=6), slo=SLOConfig(e2e_s=5))
    result = run(root, work, 1)

    assert [r.coalesced for r in result.requests] == [False, True, False, True, False]
    assert all(r.ok and r.output_tokens == 6 for r in result.requests)
    burst = result.requests[1]
    assert burst.ttft_s == pytest.approx(burst.e2e_s, abs=0.01) and burst.tpot_s < 0.001  # not measurements
    summary = loadgen.summarize(work, result, BILLING)
    timed = [result.requests[i] for i in (0, 2, 4)]
    assert summary.coalesced_requests == 2 and summary.requests_ok == 5
    assert summary.ttft_p99_s == pytest.approx(np.percentile([r.ttft_s for r in timed], 99))
    assert summary.tpot_p50_s == pytest.approx(np.percentile([r.tpot_s for r in timed], 50))
    assert summary.itl_p50_s > 0.005  # the bursts' ~0 gaps are not pooled
    assert summary.e2e_p99_s == pytest.approx(np.percentile([r.e2e_s for r in result.requests], 99))
    assert summary.output_tokens_total == 30  # throughput counts every ok request
    assert summary.slo_attainment == 1.0 and summary.goodput_requests_per_s == pytest.approx(3 / result.duration_s)


def test_coalesced_stays_right_with_a_stream_interval(fake_openai_server):
    server, root = fake_openai_server
    server.token_delay_s = 0.005
    server.faults = {0: "burst"}
    result = run(root, workload(num_requests=3, output_tokens=LengthDistribution(mean=9), stream_interval=4), 1)
    # Chunks of 1, 4 and 4 tokens: normally ~4 decode steps apart; the burst's three chunks arrive together.
    assert [r.coalesced for r in result.requests] == [True, False, False]
    assert all(len(itls) == 2 for itls in result.itls_s)


@pytest.mark.parametrize(
    ("chunk_times", "output_tokens", "coalesced"),
    [
        ([1.0], 1, False),  # one token: nothing to coalesce
        ([1.0], 2, True),  # two tokens in one chunk: the first one was not sent on its own
        ([1.0, 1.0005], 24, True),
        ([1.0, 1.0005, 1.0009], 3, True),
        ([1.0, 1.002], 2, False),
        ([1.0, 1.0001, 1.5], 24, False),  # a stall, then tokens: the first chunk's time is a real TTFT
        ([], 0, False),
    ],
)
def test_coalesced_definition(chunk_times, output_tokens, coalesced):
    assert perfstats.is_coalesced(chunk_times, output_tokens) is coalesced


def test_attainment_counts_failures_as_misses_and_sets_coalesced_aside():
    requests = (
        request(0, ttft_s=0.1, e2e_s=0.5),  # met
        request(1, ttft_s=0.9, e2e_s=1.0),  # ttft missed
        request(2, ttft_s=0.1, e2e_s=2.0, coalesced=True),  # not judged
        request(3, ttft_s=0.1, e2e_s=0.2, ok=False),  # failed: a miss, even with fast numbers
        request(4, ttft_s=0.2, e2e_s=0.6),  # met
    )
    level_run = loadgen.LevelRun("w", 1.0, requests, ((),) * 5, duration_s=2.0, not_sent=0, energy_j=None)
    summary = loadgen.summarize(workload(slo=SLOConfig(ttft_s=0.5)), level_run, BILLING)
    assert summary.slo_attainment == pytest.approx(2 / 4)
    assert summary.goodput_requests_per_s == pytest.approx(2 / 2.0)
    assert (summary.requests_ok, summary.requests_failed, summary.coalesced_requests) == (4, 1, 1)
    assert loadgen.summarize(workload(), level_run, BILLING).slo_attainment is None  # no SLO set

    only_coalesced = loadgen.LevelRun("w", 1.0, requests[2:3], ((),), duration_s=2.0, not_sent=0, energy_j=None)
    assert loadgen.summarize(workload(slo=SLOConfig(ttft_s=0.5)), only_coalesced, BILLING).slo_attainment is None


# -- minimum level length ----------------------------------------------------------------------------


def test_min_duration_keeps_a_closed_loop_level_going_with_fresh_seeded_requests(fake_openai_server):
    server, root = fake_openai_server
    server.token_delay_s = 0.01  # ~0.05 s per request
    work = workload(num_requests=3, warmup_requests=1, min_duration_s=0.4)
    result = run(root, work, 1)

    assert len(result.requests) > 3 and result.duration_s >= 0.4 and result.not_sent == 0
    assert [r.request_index for r in result.requests] == list(range(len(result.requests)))
    plan = loadgen.plan_level(work, 1, SPACE, seed=7)
    extra, offsets = loadgen.extra_requests(work, 1, SPACE, seed=7, batch=1)
    assert offsets is None and [spec.index for spec in extra] == [3, 4, 5]
    assert extra == loadgen.extra_requests(work, 1, SPACE, seed=7, batch=1)[0]  # seeded
    prompts = [body["prompt"] for body in server.bodies[1:]]  # after the warm-up request
    assert prompts[:6] == [list(spec.prompt) for spec in (*plan.timed, *extra)]
    assert len({tuple(prompt) for prompt in prompts}) == len(prompts)  # fresh prompts, no prefix-cache hits


def test_min_duration_is_bounded_by_max_duration(fake_openai_server):
    server, root = fake_openai_server
    server.token_delay_s = 0.01
    result = run(root, workload(num_requests=100, min_duration_s=0.2, max_duration_s=0.3), 1)
    assert 2 < len(result.requests) < 100 and result.not_sent == 100 - len(result.requests)
    assert result.requests[-1].start_s < 0.3


def test_min_duration_extends_an_open_loop_on_the_schedules_clock(fake_openai_server):
    _, root = fake_openai_server
    work = workload(mode="rate", num_requests=4, min_duration_s=0.5, output_tokens=LengthDistribution(mean=2))
    result = run(root, work, 40)
    plan = loadgen.plan_level(work, 40, SPACE, seed=7)
    _, offsets = loadgen.extra_requests(work, 40, SPACE, seed=7, batch=1)
    expected = [*plan.schedule.offsets_s, *(plan.schedule.offsets_s[-1] + offset for offset in offsets)]
    starts = [r.start_s for r in result.requests]
    assert expected[3] < expected[4] and len(result.requests) >= 8  # ~20 at 40 req/s over 0.5 s
    assert np.allclose(starts[:8], expected[:8], atol=0.1)
    assert starts[-1] < 0.5 + 0.1  # the last request went out before the schedule reached min_duration_s


def test_keep_sending():
    work = workload(num_requests=4, min_duration_s=2, max_duration_s=3)
    assert loadgen.keep_sending(work, 3, 5.0) is False  # max_duration_s first
    assert loadgen.keep_sending(work, 3, 0.1) and loadgen.keep_sending(work, 10, 1.9)
    assert not loadgen.keep_sending(work, 4, 2.0)
    assert not loadgen.keep_sending(workload(num_requests=4), 4, 0.0)


# -- sweeps ------------------------------------------------------------------------------------------


def test_a_sweep_probes_poisson_rates_and_reports_the_probe_at_capacity(fake_openai_server):
    server, root = fake_openai_server
    sweep = SweepConfig(start_rate_rps=5, max_rate_rps=20, max_probes=5)
    work = workload(mode="sweep", num_requests=4, slo=SLOConfig(e2e_s=2), sweep=sweep)
    calls: list[tuple[int, int]] = []
    result = loadgen.measure_workload(root, "fake-model", work, SPACE, 7, BILLING, progress=lambda *c: calls.append(c))

    # The fake's latency does not grow with load: every probe passes, up to the cap.
    assert [p.rate_rps for p in result.probes] == [5, 10, 20]
    assert [p.probe_index for p in result.probes] == [0, 1, 2]
    assert all(p.meets_target and p.slo_attainment == 1.0 and p.requests_ok == 4 for p in result.probes)
    assert [r.level for r in result.requests] == [5] * 4 + [10] * 4 + [20] * 4
    (summary,) = result.summaries
    assert (summary.mode, summary.level, summary.capacity_requests_per_s) == ("sweep", 20, 20)
    assert calls[-1] == (12, 20)  # planned: the probe budget

    server.reset()
    miss = work.model_copy(update={"slo": SLOConfig(ttft_s=1e-6), "sweep": sweep.model_copy(update={"max_probes": 2})})
    result = loadgen.measure_workload(root, "fake-model", miss, SPACE, 7, BILLING)
    assert [(p.rate_rps, p.meets_target, p.slo_attainment) for p in result.probes] == [
        (5, False, 0.0),
        (2.5, False, 0.0),
    ]
    (summary,) = result.summaries
    assert summary.capacity_requests_per_s is None and summary.level == 2.5  # the lowest probe
