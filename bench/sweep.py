"""The capacity search of a `sweep` workload: the highest Poisson rate whose SLO attainment meets a target.

Why a threshold search: past a server's capacity its queue grows for as long as arrivals continue, so
latency, and with it the share of requests meeting the SLO, falls steeply with the arrival rate. Capacity
is then a threshold on one axis, found by bracketing and bisection:

1. Bracket: probe `start_rate_rps`; while every probe passes, double the rate (never above
   `max_rate_rps`; a pass there ends the search, and that capacity is a lower bound). When the first probe
   already misses, halve instead until one passes, so a start guess that is too high still finds an answer
   (each halving makes a probe of `num_requests` last twice as long: set `max_duration_s` for a bound).
2. Bisect between the best passing rate P and the lowest failing rate F at their geometric mean, until
   (F - P) / P <= `tolerance`. The geometric mean halves the *relative* width, which is what the tolerance
   bounds, and it stays a sensible midpoint when P and F are a factor of two apart or more.
3. Stop after `max_probes` probes whatever the width: the budget bounds the sweep's time.

Noise: a probe's attainment is a share of a few dozen requests, so near capacity a higher rate can pass
where a lower one missed. The search keeps only the interval (P, F): F is the lowest failing rate and P the
best passing rate below F, so a lucky pass above a miss is ignored (the answer errs low), and every new
probe lies inside (P, F), which keeps the state consistent however the outcomes come out. The answer,
`capacity`, is P, or None when no probe passed.

Everything here is pure: `next_rate(sweep, history)` reads the outcomes so far; `bench.loadgen` runs the
probes and the tests drive the search with fake attainment curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.config import SweepConfig


@dataclass(frozen=True)
class Outcome:
    """What one probe decided: its rate and whether its attainment met the target."""

    rate_rps: float
    meets_target: bool


def meets_target(slo_attainment: float | None, target_attainment: float) -> bool:
    """A probe passes when its attainment reaches the target; a probe with nothing to judge does not."""
    return slo_attainment is not None and slo_attainment >= target_attainment


def bracket(history: Sequence[Outcome]) -> tuple[float | None, float | None]:
    """(best passing rate below the lowest failing one, lowest failing rate); None where there is none."""
    failing = min((o.rate_rps for o in history if not o.meets_target), default=None)
    passing = max(
        (o.rate_rps for o in history if o.meets_target and (failing is None or o.rate_rps < failing)), default=None
    )
    return passing, failing


def capacity(history: Sequence[Outcome]) -> float | None:
    """The capacity the probes so far support: the best passing rate below every miss, or None."""
    return bracket(history)[0]


def next_rate(sweep: SweepConfig, history: Sequence[Outcome]) -> float | None:
    """The rate of the next probe, or None when the search is done (bracketed within tolerance, the
    maximum rate passed, or the probe budget spent)."""
    if len(history) >= sweep.max_probes:
        return None
    if not history:
        return sweep.start_rate_rps
    passing, failing = bracket(history)
    if failing is None:  # every probe passed: keep doubling, up to the cap
        assert passing is not None
        if sweep.max_rate_rps is not None and passing >= sweep.max_rate_rps:
            return None
        return min(2.0 * passing, sweep.max_rate_rps or math.inf)
    if passing is None:  # every probe missed: halve
        return failing / 2.0
    if (failing - passing) / passing <= sweep.tolerance:
        return None
    return math.sqrt(passing * failing)
