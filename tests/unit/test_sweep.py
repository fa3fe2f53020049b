"""bench.sweep: the capacity search, driven by fake attainment curves (monotone and noisy), no server."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from bench import sweep
from bench.config import SweepConfig


def attainment_curve(capacity_rps: float, width: float = 0.3) -> Callable[[float], float]:
    """1.0 up to a knee, then falling: it crosses 0.9 exactly at `capacity_rps`."""
    knee = capacity_rps * (1 - width)

    def attainment(rate: float) -> float:
        return 1.0 if rate <= knee else max(0.0, 1.0 - 0.1 * (rate - knee) / (capacity_rps - knee))

    return attainment


def search(settings: SweepConfig, attainment: Callable[[float], float]) -> list[sweep.Outcome]:
    """Run the search to its end against a fake attainment curve; the probes in order."""
    history: list[sweep.Outcome] = []
    while (rate := sweep.next_rate(settings, history)) is not None:
        history.append(sweep.Outcome(rate, sweep.meets_target(attainment(rate), settings.target_attainment)))
    return history


def test_brackets_by_doubling_then_bisects_to_the_tolerance():
    settings = SweepConfig(start_rate_rps=1, max_probes=20, tolerance=0.05)
    history = search(settings, attainment_curve(capacity_rps=6.0))
    rates = [o.rate_rps for o in history]
    assert rates[:4] == [1, 2, 4, 8]  # 8 is the first miss
    assert [o.meets_target for o in history[:4]] == [True, True, True, False]
    assert all(4 < rate < 8 for rate in rates[4:])  # bisection stays inside the bracket
    passing, failing = sweep.bracket(history)
    assert (failing - passing) / passing <= 0.05
    assert 6.0 / 1.05 <= sweep.capacity(history) <= 6.0
    assert len(history) <= 4 + math.ceil(math.log2(math.log(2) / math.log(1.05)))  # halving the log-width


def test_geometric_midpoints():
    settings = SweepConfig(tolerance=0.01)
    history = [sweep.Outcome(2, True), sweep.Outcome(8, False)]
    assert sweep.next_rate(settings, history) == pytest.approx(4.0)


def test_a_start_above_capacity_halves_until_a_probe_passes():
    history = search(SweepConfig(start_rate_rps=100, max_probes=20), attainment_curve(capacity_rps=6.0))
    assert [o.rate_rps for o in history[:6]] == [100, 50, 25, 12.5, 6.25, 3.125]
    assert 6.0 / 1.1 <= sweep.capacity(history) <= 6.0


def test_max_rate_caps_the_doubling_and_a_pass_there_ends_the_search():
    history = search(SweepConfig(start_rate_rps=3, max_rate_rps=10, max_probes=20), attainment_curve(100.0))
    assert [o.rate_rps for o in history] == [3, 6, 10]
    assert sweep.capacity(history) == 10

    history = search(SweepConfig(start_rate_rps=3, max_rate_rps=10, max_probes=20), attainment_curve(8.0))
    assert [o.rate_rps for o in history[:3]] == [3, 6, 10] and not history[2].meets_target
    assert 8.0 / 1.1 <= sweep.capacity(history) <= 8.0


def test_the_probe_budget_ends_the_search_whatever_the_width():
    settings = SweepConfig(start_rate_rps=1, max_probes=3, tolerance=0.001)
    history = search(settings, attainment_curve(capacity_rps=1000.0))
    assert [o.rate_rps for o in history] == [1, 2, 4]
    assert sweep.capacity(history) == 4 and sweep.next_rate(settings, history) is None


def test_no_capacity_when_every_probe_misses():
    history = search(SweepConfig(start_rate_rps=1, max_probes=4), lambda rate: 0.5)
    assert [o.rate_rps for o in history] == [1, 0.5, 0.25, 0.125]
    assert sweep.capacity(history) is None


def test_nothing_to_judge_is_a_miss():
    assert not sweep.meets_target(None, 0.9)
    assert sweep.meets_target(0.9, 0.9) and not sweep.meets_target(0.89, 0.9)


def test_a_lucky_pass_above_a_miss_is_ignored():
    history = [sweep.Outcome(4, True), sweep.Outcome(8, False), sweep.Outcome(16, True)]
    assert sweep.bracket(history) == (4, 8)


@pytest.mark.parametrize("seed", range(40))
def test_noisy_attainment_keeps_the_search_consistent_and_bounded(seed):
    """Binomial noise on the curve (a probe judges 32 requests): the search still ends within its budget, never
    probes outside its bracket, and answers a passing rate below every miss, near the true capacity."""
    rng = np.random.default_rng(seed)
    curve = attainment_curve(capacity_rps=6.0, width=0.05)  # steep past capacity, as queueing makes it
    settings = SweepConfig(start_rate_rps=1, max_probes=10, tolerance=0.05)
    history = search(settings, lambda rate: rng.binomial(32, curve(rate)) / 32)

    assert len(history) <= settings.max_probes
    rates = [o.rate_rps for o in history]
    assert len(set(rates)) == len(rates)
    for index in range(1, len(history)):
        passing, failing = sweep.bracket(history[:index])
        if passing is not None and failing is not None:
            assert passing < rates[index] < failing
    capacity = sweep.capacity(history)
    if capacity is not None:
        assert any(o.rate_rps == capacity and o.meets_target for o in history)
        assert all(capacity < o.rate_rps for o in history if not o.meets_target)
        assert 6.0 / 2 <= capacity <= 6.0 * 1.3  # noise moves the answer, within one doubling
