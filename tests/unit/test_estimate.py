"""`plan --estimate` arithmetic on a tiny config whose every number is worked out by hand below."""

from __future__ import annotations

import math

import pytest

from bench import estimate as est
from bench.config import parse_config
from bench.cost import PriceTable

PRICES = PriceTable.model_validate(
    {
        "prices": {
            "gpu-x": {
                "usd_per_hour": 2.0,
                "source": "test",
                "date": "2026-11-01",
                "peak_tflops": 100,  # 1e14 FLOP/s per device
                "peak_source": "test",
            },
            "cpu-core": {"usd_per_hour": 0.05, "source": "test", "date": "2026-11-01"},  # no peak
        }
    }
)
MFU = 0.5  # so a device does 5e13 useful FLOP/s

# teacher: MoE, 2 x 5e10 active = 1e11 FLOPs per token, on 2 GPUs: 1e14 useful FLOP/s.
# student: dense, 2 x 1e10 = 2e10 FLOPs per token, on 1 GPU: 5e13 useful FLOP/s.
# task: 10 documents x 3 samples x (100 + 400) tokens = 15,000 tokens per model.
#   teacher eval 15,000 x 1e11 / 1e14 = 15 s; student 15,000 x 2e10 / 5e13 = 6 s.
# workload "arrivals" (rate 2 and 5 req/s, 20 requests, 2 repeats): (10 + 4) x 2 = 28 s per model.
# workload "batch" (concurrency 1, 10 requests of 100 + 900 tokens, at least 8 s): 10,000 tokens;
#   teacher 10,000 x 1e11 / 1e14 = 10 s; student 10,000 x 2e10 / 5e13 = 4 s, raised to 8 s.
# teacher: 15 + 28 + 10 = 53 s on 2 GPUs: 106 GPU-s, $2 x 106 / 3600; student 6 + 28 + 8 = 42 s on 1 GPU.
TINY = {
    "run": {"name": "tiny"},
    "hardware": {"device_type": "gpu-x"},
    "models": [
        {
            "name": "teacher",
            "source": "org/teacher",
            "parameters": 10**12,
            "active_parameters": 5 * 10**10,
            "serve": {"tensor_parallel_size": 2},
        },
        {"name": "student", "source": "org/student", "teacher": "teacher", "parameters": 10**10},
    ],
    "tasks": [
        {
            "name": "quiz",
            "samples_per_question": 3,
            "estimate": {"documents": 10, "prompt_tokens": 100, "output_tokens": 400},
        }
    ],
    "workloads": [
        {"name": "arrivals", "mode": "rate", "levels": [2, 5], "num_requests": 20, "repeats": 2},
        {
            "name": "batch",
            "levels": [1],
            "num_requests": 10,
            "warmup_requests": 0,
            "min_duration_s": 8,
            "prompt_tokens": {"mean": 100},
            "output_tokens": {"mean": 900},
            "repeats": 1,
        },
    ],
}


def config(data: dict | None = None):
    return parse_config(TINY if data is None else data)


def test_hand_computed_wall_time_gpu_hours_and_dollars():
    result = est.estimate(config(), PRICES, MFU)
    teacher, student = result.models
    assert (teacher.gpus, teacher.devices_billed, teacher.flops_per_token) == (2, 2, 1e11)  # 2 x active, not total
    assert (student.gpus, student.flops_per_token) == (1, 2e10)
    assert teacher.eval_tokens == student.eval_tokens == 15_000
    assert (teacher.eval_wall_s, teacher.perf_wall_s, teacher.wall_s) == pytest.approx((15, 38, 53))
    assert (student.eval_wall_s, student.perf_wall_s, student.wall_s) == pytest.approx((6, 36, 42))
    assert teacher.gpu_hours == pytest.approx(106 / 3600)
    assert teacher.usd(result.rates) == pytest.approx(2.0 * 106 / 3600)
    assert result.total(lambda model: model.gpu_hours) == pytest.approx(148 / 3600)
    assert result.total(lambda model: model.usd(result.rates)) == pytest.approx(2.0 * 148 / 3600)


def test_limit_caps_documents_and_the_budget_stands_in_for_unknown_output():
    data = {
        **TINY,
        "tasks": [
            {"name": "quiz", "limit": 4, "max_gen_toks": 900, "estimate": {"documents": 10, "prompt_tokens": 100}}
        ],
    }
    (load,) = est.estimate(config(data), PRICES, MFU).loads
    assert (load.documents, load.samples, load.output_tokens, load.output_is_budget) == (4, 1, 900, True)
    assert load.tokens == 4 * 1 * (100 + 900)


def test_tasks_without_an_estimate_are_listed_not_guessed():
    data = {**TINY, "tasks": [*TINY["tasks"], {"name": "mystery"}]}
    result = est.estimate(config(data), PRICES, MFU)
    assert result.tasks_not_counted == ("mystery",)
    assert result.models[0].eval_tokens == 15_000
    assert any("not counted (no estimate: documents unknown): mystery" in line for line in est.assumption_lines(result))


def test_without_a_peak_or_a_parameter_count_compute_is_unknown_not_zero():
    no_peak = est.estimate(config({**TINY, "hardware": {"device_type": "cpu-core"}}), PRICES, MFU)
    assert all(model.eval_wall_s is None and model.gpu_hours is None for model in no_peak.models)
    assert no_peak.total(lambda model: model.gpu_hours) is None
    assert any("no peak_tflops for cpu-core" in line for line in est.assumption_lines(no_peak))

    models = [dict(TINY["models"][0]), {**TINY["models"][1], "parameters": None}]
    no_count = est.estimate(config({**TINY, "models": models}), PRICES, MFU)
    assert no_count.models[1].flops_per_token is None and no_count.models[1].wall_s is None
    assert no_count.models[0].wall_s == pytest.approx(53)
    assert "no FLOPs for models without `parameters`: student" in est.assumption_lines(no_count)


def workload(**settings) -> dict:
    return {"name": "w", "num_requests": 30, "warmup_requests": 0, "repeats": 1, **settings}


def seconds(**settings) -> float | None:
    return est.workload_seconds(config({**TINY, "workloads": [workload(**settings)]}).workloads[0], lambda tokens: 1.0)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"mode": "rate", "levels": [3], "max_duration_s": 4}, 4),  # 30 / 3 = 10 s, capped at 4
        ({"mode": "rate", "levels": [3], "min_duration_s": 12}, 12),  # 10 s, raised to 12
        ({"mode": "offline", "min_duration_s": 12}, 1),  # offline is one batch: no minimum
        ({"min_duration_s": 7, "max_duration_s": 7, "levels": [1, 2]}, 14),  # fixed length, whatever compute says
        ({"levels": [1, 2], "repeats": 3}, 6),  # compute per level x levels x repeats
        (
            {"mode": "sweep", "slo": {"ttft_s": 1}, "sweep": {"start_rate_rps": 5, "max_probes": 4}},
            4 * 30 / 5,  # max_probes probes at the start rate
        ),
    ],
)
def test_level_durations(settings: dict, expected: float):
    assert seconds(**settings) == pytest.approx(expected)


def test_an_mfu_outside_zero_to_one_is_refused():
    for mfu in (0, -0.1, 1.01, math.nan):
        with pytest.raises(ValueError, match="MFU"):
            est.estimate(config(), PRICES, mfu)


def test_every_assumption_is_printed():
    text = "\n".join(est.assumption_lines(est.estimate(config(), PRICES, MFU)))
    for needle in (
        "2 x active parameters FLOPs per token",
        "peak 100 TFLOP/s per gpu-x (dense BF16; test)",
        "assumed MFU 50% (--mfu)",
        "quiz: 10 documents x 3 samples x (100 + 400 tokens; output = estimate.output_tokens) = 15,000 tokens",
        "GPU-hours = wall x GPUs",
        "$2 per gpu-x-hour",
        "not counted: server start-up",
    ):
        assert needle in text, needle
