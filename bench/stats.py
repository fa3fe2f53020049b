"""The statistics behind a comparison: pure functions on numpy arrays, no tables, no I/O.

Quality, continuous metrics: a percentile bootstrap of the mean paired difference, resampling documents.

Quality, 0/1 metrics (exact match, accuracy): the bootstrap collapses there. With no discordant document
every resample has mean 0 and the interval is [0, 0]: at n = 200 with p10 = 0.005, p01 = 0 that happens,
and the true difference 0.005 is missed, in 0.995^200 = 37 % of runs. The interval used instead is Tango's
score interval for a difference of paired proportions (Tango 1998), which depends only on the discordant
counts b (student-only 1) and c (teacher-only 1) and n, and stays wide when b = c = 0. Its numerator is
continuity-corrected by one count (see `tango_interval`).
Newcombe's hybrid score interval (Newcombe 1998, method 10) was rejected: with b = c = 0 its correlation
estimate is 1 and the interval shrinks to the small asymmetry of two Wilson intervals, so at n = 200,
p11 = 0.5, p01 = 0.0025, p10 = 0 its exact coverage is 0.43. `mcnemar_exact_p` gives the exact test of
b = c (two-sided binomial on b of b + c) reported beside the interval.

Cost ratios: per block b, r_b = ln(student_b / teacher_b); the estimate is exp(mean r) with a t-interval over
blocks. Why a t-interval and not a bootstrap over blocks: a run has 3-5 blocks, and a percentile bootstrap
of a mean from n = 3, 4, 5 values covers only about 74 %, 79 %, 84 % at a nominal 95 % (normal data,
simulated), because it uses the plug-in variance and ignores the uncertainty of estimating it; with 3
blocks it has only 10 distinct resamples. The t-interval is exact for normal log-ratios at any n ≥ 2, and
the log makes it symmetric under swapping student and teacher (the interval of teacher/student is the
reciprocal of that of student/teacher).

Batches: a comparison of many runs asks for thousands of intervals. `tango_interval` and `mcnemar_exact_p`
take arrays (one bisection, one binomial call for all rows), `bootstrap_cis` draws each resampling matrix
once for every group of the same size (the draws depend only on the seed, the count and the size, so every
group gets exactly the indices a call of its own would draw), and quantiles are computed once per
(confidence, degrees of freedom). Each value is the one the per-row call gives, bit for bit (tested).

scipy: the quantiles and the binomial tail come from the `scipy.special` functions that `scipy.stats`'
`norm.ppf`, `t.ppf` and `binom.cdf` evaluate (`ndtri`, `stdtrit`, the boost binomial cdf), so the values are
theirs (tested) without importing `scipy.stats`, a second of start-up; and only on first use, since reading
stored comparisons needs none of this module's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

# Bound the bootstrap's index matrix (draws x documents) so big tasks do not need gigabytes.
_MAX_DRAWS_PER_CHUNK = 2_000_000
_BISECTION_STEPS = 60  # halves [-1, 1] down to ~1e-18: past float precision
TANGO_CONTINUITY = 1.0  # counts taken off |b - c - n*delta|; see tango_interval


@dataclass(frozen=True)
class RatioEstimate:
    """A student/teacher ratio over blocks: exp(mean log-ratio) and its t-interval (None with < 2 blocks)."""

    ratio: float
    ci_low: float | None
    ci_high: float | None
    n: int  # blocks with a usable (positive, finite) value on both sides


def bootstrap_ci(diffs: np.ndarray, confidence: float, samples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences, resampling documents with a seeded RNG."""
    ((low, high),) = bootstrap_cis([diffs], [confidence], samples, seed)
    return low, high


def bootstrap_cis(
    diffs: Sequence[np.ndarray], confidences: Sequence[float], samples: int, seed: int
) -> list[tuple[float, float]]:
    """`bootstrap_ci` of every group of paired differences (with its own confidence), in order.

    Groups of one size share the resampling indices: `bootstrap_ci` seeds a fresh generator per call, so its
    draws depend only on (seed, samples, size), and drawing them once per size gives each group the same
    indices, the same means and the same interval as a call of its own.
    """
    groups = [np.asarray(values, dtype=np.float64) for values in diffs]
    if any(group.size == 0 for group in groups):
        raise ValueError("bootstrap_ci needs at least one paired difference")
    by_size: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_size.setdefault(group.size, []).append(index)
    intervals: list[tuple[float, float]] = [(math.nan, math.nan)] * len(groups)
    for size, members in by_size.items():
        rng = np.random.default_rng(seed)
        means = np.empty((len(members), samples))
        chunk = max(1, _MAX_DRAWS_PER_CHUNK // size)
        for start in range(0, samples, chunk):
            stop = min(samples, start + chunk)
            draws = rng.integers(0, size, size=(stop - start, size))
            for row, index in enumerate(members):
                means[row, start:stop] = groups[index][draws].mean(axis=1)
        for row, index in enumerate(members):
            tail = (1 - confidences[index]) / 2
            low, high = np.quantile(means[row], [tail, 1 - tail])
            intervals[index] = (float(low), float(high))
    return intervals


def is_binary(*values: np.ndarray) -> bool:
    """True when every value of every array is exactly 0 or 1 (and there is at least one)."""
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    return any(a.size for a in arrays) and all(bool(np.isin(a, (0.0, 1.0)).all()) for a in arrays)


def discordant_counts(teacher: np.ndarray, student: np.ndarray) -> tuple[int, int]:
    """(b, c) of paired 0/1 values: documents where only the student scores 1, and only the teacher."""
    teacher, student = np.asarray(teacher) == 1, np.asarray(student) == 1
    return int((student & ~teacher).sum()), int((teacher & ~student).sum())


def mcnemar_exact_p(b: np.ndarray | int, c: np.ndarray | int) -> np.ndarray | float:
    """Exact two-sided McNemar p-value: twice the smaller binomial tail of b in b + c at 1/2 (1 when b = c = 0).

    Vectorised over b and c; a float for scalar arguments.
    """
    b_arr, c_arr = np.broadcast_arrays(np.asarray(b, dtype=np.int64), np.asarray(c, dtype=np.int64))
    total = b_arr + c_arr
    p = np.ones(total.shape)
    some = total > 0
    p[some] = np.minimum(1.0, 2 * _binomial_cdf()(np.minimum(b_arr, c_arr)[some], total[some], 0.5))
    return float(p) if p.ndim == 0 else p


def _binomial_cdf():
    """The ufunc behind `scipy.stats.binom.cdf` at integer k (same values), without importing scipy.stats."""
    try:
        from scipy.special._ufuncs import _binom_cdf
    except ImportError:  # a scipy that moved it: the public route, slower to import
        from scipy.stats import binom

        return binom.cdf
    return _binom_cdf


def _tango_statistic(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta: np.ndarray, continuity: float) -> np.ndarray:
    # Tango (1998), eq. 3: the score statistic for H0: p10 - p01 = delta, with the constrained maximum
    # likelihood estimate of p01 (the root of A q^2 + B q + C = 0 in [0, 1]).
    a = 2.0 * n
    bq = -b - c + (2.0 * n - b + c) * delta
    cq = -c * delta * (1.0 - delta)
    p01 = (np.sqrt(np.maximum(bq * bq - 4.0 * a * cq, 0.0)) - bq) / (2.0 * a)
    numerator = b - c - n * delta
    numerator = np.sign(numerator) * np.maximum(np.abs(numerator) - continuity, 0.0)
    variance = n * (2.0 * p01 + delta * (1.0 - delta))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(numerator == 0, 0.0, numerator / np.sqrt(variance))


def tango_interval(
    b: np.ndarray | int,
    c: np.ndarray | int,
    n: np.ndarray | int,
    confidence: float,
    continuity: float = TANGO_CONTINUITY,
) -> tuple[np.ndarray, np.ndarray]:
    """Score CI of p10 - p01 = (student - teacher) for paired 0/1 data, from b, c and n; vectorised over all three.

    Tango, T. (1998). Equivalence test and confidence interval for the difference in proportions for the
    paired-sample design. Statistics in Medicine 17(8), 891-908. The limits are the deltas where the score
    statistic equals -/+ z, found by bisection (the statistic decreases in delta).

    Continuity correction: |b - c - n*delta| is reduced by one count. Uncorrected, the interval's exact
    coverage at n = 200 dips to 0.932 (p10 = 0.005, p01 = 0.025; also 0.933 at p10 = 0, p01 = 0.02), below
    the 0.94 required, and with b = 4, c = 0 it excludes 0 although the exact McNemar p is 0.125. Corrected
    by one count (at delta = 0 the statistic becomes the continuity-corrected McNemar (|b - c| - 1)/sqrt(b + c)),
    the exact coverage at 95 % is at least 0.9586 on the test grid at n = 200 (lowest at p10 = p01 = 0.45;
    0.9999 at p10 = 0.005, p01 = 0), at least 0.950 on a 2,605-point grid of p10 + p01 <= 1 for n = 50, 100,
    200, 500, and 0 is outside the interval only where the exact McNemar test rejects too (checked over every
    b + c <= 200). Half a count was not enough for that: it keeps 0 out at b = 5, c = 0 where the exact p is
    0.0625. The price is about 1/n of width on each side, and coverage above nominal (0.975 on average).
    """
    b_arr, c_arr, n_arr = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(value, dtype=np.float64)) for value in (b, c, n))
    )
    z = _normal_quantile((1 + confidence) / 2)

    def solve(target: float) -> np.ndarray:
        low, high = np.full(b_arr.shape, -1.0), np.full(b_arr.shape, 1.0)
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            right = _tango_statistic(b_arr, c_arr, n_arr, mid, continuity) > target
            low, high = np.where(right, mid, low), np.where(right, high, mid)
        return (low + high) / 2

    return solve(z), solve(-z)


@cache
def _normal_quantile(q: float) -> float:
    """`scipy.stats.norm.ppf(q)`: the function it evaluates."""
    from scipy.special import ndtri

    return float(ndtri(q))


@cache
def _t_quantile(q: float, df: int) -> float:
    """`scipy.stats.t.ppf(q, df)`: the function it evaluates."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def t_interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Student-t CI of the mean of `values`; None with fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    mean = float(values.mean())
    half = _t_quantile((1 + confidence) / 2, values.size - 1) * float(values.std(ddof=1))
    half /= math.sqrt(values.size)
    return mean - half, mean + half


def log_ratio_estimate(student: np.ndarray, teacher: np.ndarray, confidence: float) -> RatioEstimate | None:
    """exp(mean of ln(student / teacher)) over blocks, with its t-interval; None when no block is usable.

    Blocks where either value is missing (nan), zero or negative are left out: a log-ratio needs both.
    """
    student = np.asarray(student, dtype=np.float64)
    teacher = np.asarray(teacher, dtype=np.float64)
    usable = np.isfinite(student) & np.isfinite(teacher) & (student > 0) & (teacher > 0)
    if not usable.any():
        return None
    logs = np.log(student[usable] / teacher[usable])
    interval = t_interval(logs, confidence)
    low, high = (None, None) if interval is None else (math.exp(interval[0]), math.exp(interval[1]))
    return RatioEstimate(ratio=math.exp(float(logs.mean())), ci_low=low, ci_high=high, n=int(usable.sum()))
