"""bench.stats: the paired 0/1 interval (with its exact coverage), McNemar, the bootstrap, t-intervals, ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln, xlogy
from scipy.stats import norm

from bench import stats

N = 200
# (p10, p01): probabilities that a document is right only for the student / only for the teacher.
GRID_P = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.3, 0.45)
GRID = [(p10, p01) for p10 in GRID_P for p01 in GRID_P if p10 + p01 <= 1]


def exact_coverage(n: int, grid: list[tuple[float, float]], confidence: float, continuity: float) -> np.ndarray:
    """P(interval covers p10 - p01) at each grid point, summed over every trinomial outcome (b, c, n - b - c).

    The interval depends on the data only through (b, c), so the enumeration is exact: no simulation.
    """
    b, c = (axis.ravel() for axis in np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij"))
    b, c = b[b + c <= n], c[b + c <= n]
    low, high = stats.tango_interval(b, c, n, confidence, continuity)
    log_multinomial = gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(n - b - c + 1)
    coverage = []
    for p10, p01 in grid:
        probability = np.exp(log_multinomial + xlogy(b, p10) + xlogy(c, p01) + xlogy(n - b - c, 1 - p10 - p01))
        delta = p10 - p01
        coverage.append(probability[(low <= delta) & (delta <= high)].sum())
    return np.array(coverage)


def test_binary_interval_covers_at_least_94_percent_everywhere_on_the_grid():
    assert (0.005, 0.0) in GRID
    coverage = exact_coverage(N, GRID, confidence=0.95, continuity=stats.TANGO_CONTINUITY)
    worst = int(coverage.argmin())
    assert coverage.min() >= 0.94, f"coverage {coverage.min():.4f} at (p10, p01) = {GRID[worst]}"
    assert coverage[GRID.index((0.005, 0.0))] >= 0.94


def test_uncorrected_tango_dips_below_94_percent_which_is_why_it_is_corrected():
    coverage = exact_coverage(N, [(0.005, 0.025), (0.0, 0.02)], confidence=0.95, continuity=0.0)
    assert coverage.max() < 0.94


def test_four_student_only_and_no_teacher_only_is_not_a_win():
    # The bootstrap said "better" here; the exact McNemar p is 0.125.
    (low,), (high,) = stats.tango_interval(4, 0, N, 0.95)
    assert low < 0 < high
    assert stats.mcnemar_exact_p(4, 0) == pytest.approx(0.125)


def test_interval_does_not_collapse_without_discordant_documents():
    (low,), (high,) = stats.tango_interval(0, 0, N, 0.95)
    assert low == pytest.approx(-high) and high > 0.015
    # Uncorrected, the limit has a closed form: n*d / sqrt(n*d*(1-d)) = z gives d = z^2 / (n + z^2).
    z = 1.959963984540054
    (_,), (uncorrected,) = stats.tango_interval(0, 0, N, 0.95, continuity=0.0)
    assert uncorrected == pytest.approx(z * z / (N + z * z))
    assert high > uncorrected


@pytest.mark.parametrize(("b", "c"), [(0, 4), (4, 0), (5, 0), (6, 0), (1, 9), (13, 4), (30, 45), (100, 60)])
def test_zero_is_outside_the_interval_only_where_the_exact_mcnemar_test_rejects(b, c):
    (low,), (high,) = stats.tango_interval(b, c, N, 0.95)
    if not low <= 0 <= high:
        assert stats.mcnemar_exact_p(b, c) < 0.05


@pytest.mark.parametrize(("continuity", "mcnemar_numerator"), [(0.0, 8), (1.0, 7)])
def test_statistic_at_zero_is_mcnemars(continuity, mcnemar_numerator):
    # At delta = 0 the score statistic is McNemar's (|b - c| - continuity) / sqrt(b + c): at the confidence
    # whose z equals it, 0 is the interval's lower limit.
    b, c = 9, 1
    confidence = 2 * norm.cdf(mcnemar_numerator / math.sqrt(b + c)) - 1
    (low,), _ = stats.tango_interval(b, c, N, confidence, continuity)
    assert low == pytest.approx(0, abs=1e-9)


def test_interval_is_vectorised_and_mirrors_when_student_and_teacher_swap():
    low, high = stats.tango_interval(np.array([3, 10]), np.array([10, 3]), N, 0.9)
    assert low[0] == pytest.approx(-high[1]) and high[0] == pytest.approx(-low[1])
    assert low[1] < (10 - 3) / N < high[1]


def test_quantiles_and_binomial_tails_are_scipy_stats_own():
    """stats evaluates the scipy.special functions behind scipy.stats' norm, t and binom: the same floats."""
    from scipy.stats import binom, t

    for confidence in (0.8, 0.9, 0.95, 0.99):
        q = (1 + confidence) / 2
        assert stats._normal_quantile(q) == float(norm.ppf(q))
        assert all(stats._t_quantile(q, df) == float(t.ppf(q, df)) for df in (1, 2, 4, 9, 30))
    for b, c in ((4, 0), (7, 30), (13, 9), (100, 3), (250, 251)):
        assert stats.mcnemar_exact_p(b, c) == float(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))


def test_discordant_counts():
    teacher = np.array([1, 1, 0, 0, 1, 0])
    student = np.array([1, 0, 1, 1, 1, 0])
    assert stats.discordant_counts(teacher, student) == (2, 1)


def test_one_batched_interval_call_gives_each_rows_own_interval_bit_for_bit():
    """A comparison computes every row's interval in one call, with n varying by row: the same floats as one
    call per row (which is what the comparison made before batching)."""
    b, c, n = np.array([0, 4, 7, 30, 2]), np.array([0, 0, 30, 7, 9]), np.array([200, 200, 150, 150, 40])
    low, high = stats.tango_interval(b, c, n, 0.95)
    for row in range(len(b)):
        (one_low,), (one_high,) = stats.tango_interval(int(b[row]), int(c[row]), int(n[row]), 0.95)
        assert (low[row], high[row]) == (one_low, one_high)
    p = stats.mcnemar_exact_p(b, c)
    assert [float(value) for value in p] == [stats.mcnemar_exact_p(int(x), int(y)) for x, y in zip(b, c, strict=True)]


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (4, 0, 0.125),
        (0, 4, 0.125),
        (8, 0, 2 / 256),
        (1, 9, 22 / 1024),
        (5, 5, 1.0),
        (10, 20, 2 * sum(math.comb(30, k) for k in range(11)) / 2**30),
    ],
)
def test_mcnemar_exact_p_known_values(b, c, p):
    assert stats.mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-4)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [(([0, 1, 1], [1.0, 0.0]), True), (([0, 1], [0.5, 1]), False), (([], []), False), (([1], []), True)],
)
def test_is_binary(arrays, expected):
    assert stats.is_binary(*(np.array(a) for a in arrays)) is expected


def test_bootstrap_ci_covers_the_true_difference():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(40):
        # Teacher right 80% of the time; the student loses 5% of those: true mean difference -0.04.
        teacher = rng.random(400) < 0.8
        student = teacher & (rng.random(400) >= 0.05)
        low, high = stats.bootstrap_ci(student.astype(float) - teacher, confidence=0.95, samples=500, seed=0)
        covered += low <= -0.04 <= high
    assert covered >= 34  # ~95% nominal; the bound leaves room for sampling noise


def per_call_bootstrap_ci(diffs: np.ndarray, confidence: float, samples: int, seed: int) -> tuple[float, float]:
    """The bootstrap as the comparison computed it one row at a time before batching (kept as the reference)."""
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, stats._MAX_DRAWS_PER_CHUNK // diffs.size)
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        means[start:stop] = diffs[rng.integers(0, diffs.size, size=(stop - start, diffs.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def test_batched_bootstraps_give_each_group_its_own_per_call_interval_bit_for_bit():
    """Groups of one size share their resampling indices, as separate seeded calls would draw them; sizes
    above the chunk bound (several chunks of draws) included."""
    rng = np.random.default_rng(5)
    sizes = (80, 120, 80, 1500, 120, 80)
    groups = [rng.normal(0.0, 1.0, size).round(3) for size in sizes]
    confidences = [0.95, 0.9, 0.9, 0.95, 0.95, 0.8]
    assert stats._MAX_DRAWS_PER_CHUNK // 1500 < 2000  # the 1500-document group is drawn in chunks
    batched = stats.bootstrap_cis(groups, confidences, 2000, seed=0)
    expected = [per_call_bootstrap_ci(g, conf, 2000, 0) for g, conf in zip(groups, confidences, strict=True)]
    assert batched == expected


def test_bootstrap_ci_is_seeded():
    diffs = np.array([0.0, -1.0, 0.0, 1.0, -1.0, 0.0])
    assert stats.bootstrap_ci(diffs, 0.9, 300, seed=3) == stats.bootstrap_ci(diffs, 0.9, 300, seed=3)
    with pytest.raises(ValueError):
        stats.bootstrap_ci(np.empty(0), 0.9, 300, seed=3)


def test_t_interval_on_known_data():
    # mean 3, sd sqrt(2.5), t(4, 0.975) = 2.7764451: half-width 2.7764451 * sqrt(2.5) / sqrt(5) = 1.9632432.
    low, high = stats.t_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 0.95)
    assert (low, high) == (pytest.approx(3 - 1.9632432), pytest.approx(3 + 1.9632432))
    assert stats.t_interval(np.array([2.0]), 0.95) is None
    assert stats.t_interval(np.array([2.0, 2.0]), 0.95) == (2.0, 2.0)


def test_log_ratio_estimate_is_the_geometric_mean_with_a_t_interval():
    student, teacher = np.array([2.0, 4.0, 3.0]), np.array([1.0, 1.0, 1.0])
    estimate = stats.log_ratio_estimate(student, teacher, 0.95)
    assert estimate.ratio == pytest.approx(24 ** (1 / 3)) and estimate.n == 3
    low, high = stats.t_interval(np.log(student), 0.95)
    assert (estimate.ci_low, estimate.ci_high) == (pytest.approx(math.exp(low)), pytest.approx(math.exp(high)))
    swapped = stats.log_ratio_estimate(teacher, student, 0.95)
    assert swapped.ci_low == pytest.approx(1 / estimate.ci_high) and swapped.ci_high == pytest.approx(
        1 / estimate.ci_low
    )


def test_log_ratio_estimate_skips_unusable_blocks():
    one = stats.log_ratio_estimate(np.array([2.0, np.nan, 0.0]), np.array([1.0, 1.0, 1.0]), 0.95)
    assert (one.ratio, one.ci_low, one.ci_high, one.n) == (2.0, None, None, 1)
    assert stats.log_ratio_estimate(np.array([np.nan]), np.array([1.0]), 0.95) is None
    assert stats.log_ratio_estimate(np.array([]), np.array([]), 0.95) is None
