"""bench.sequential: simulated paired documents and perf blocks with known truth; the sequential verdict's
error rate under repeated looks, its saving, and the agreement of its verdict with its interval.

Monte Carlo slack: an error rate is estimated from REPLICATES simulated runs, so it is allowed to exceed the
nominal one-sided level by three binomial standard errors at that level (a true rate at nominal fails the
check with probability ~0.1 %). Every simulation is seeded, so the numbers are the same on every run.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from bench import compare, pairing, sequential, sequential_replay, stats, store
from bench.compare import Verdict
from bench.sequential import RatioDecision
from tests.unit.test_compare import build_results

MARGIN = 0.05
CONFIDENCE = 0.95
DOCUMENTS = 1000
CHUNK = 100
REPLICATES = 3000
ONE_SIDED = (1 - CONFIDENCE) / 2  # each side of the interval errs at this rate, sequential or fixed-n
SLACK = 3 * math.sqrt(ONE_SIDED * (1 - ONE_SIDED) / REPLICATES)
DECLARED_NOT_INFERIOR = (Verdict.NON_INFERIOR, Verdict.BETTER)

# Truths as (p10, p01): the probability that a document is right only for the student / only the teacher;
# the true difference student - teacher is p10 - p01.
AT_MARGIN = {"15% discordant": (0.05, 0.10), "5% discordant, all teacher-only": (0.0, 0.05)}
INFERIOR = (0.05, 0.25)  # difference -0.20
BETTER = (0.15, 0.05)  # +0.10
NON_INFERIOR = (0.02, 0.02)  # 0, with 4 % discordant documents, typical of a good student


@functools.cache
def simulate(p10: float, p01: float, seed: int = 0) -> sequential.SequentialVerdicts:
    """REPLICATES runs of DOCUMENTS paired 0/1 documents each, decided sequentially every CHUNK documents."""
    uniform = np.random.default_rng(seed).random((REPLICATES, DOCUMENTS))
    gains = np.where(uniform < p10, 1.0, np.where(uniform < p10 + p01, -1.0, 0.0))
    looks = sequential.look_counts(DOCUMENTS, CHUNK)
    return sequential.sequential_verdicts(gains, looks, MARGIN, CONFIDENCE)


def rate(result: sequential.SequentialVerdicts, verdicts: tuple[Verdict, ...]) -> float:
    return float(np.isin(result.verdicts, verdicts).mean())


@pytest.mark.parametrize("truth", AT_MARGIN.values(), ids=AT_MARGIN.keys())
def test_at_the_margin_neither_side_is_declared_more_often_than_nominal(truth):
    result = simulate(*truth)
    assert rate(result, DECLARED_NOT_INFERIOR) <= ONE_SIDED + SLACK
    assert rate(result, (Verdict.INFERIOR,)) <= ONE_SIDED + SLACK


def test_peeking_at_the_fixed_n_interval_every_chunk_errs_far_more_often_which_is_why():
    # The fixed-n Tango interval read after every chunk, stopping at the first look above the margin.
    p10, p01 = AT_MARGIN["15% discordant"]
    uniform = np.random.default_rng(0).random((REPLICATES, DOCUMENTS))
    student_only, teacher_only = (
        np.cumsum(uniform < p10, axis=1),
        np.cumsum((uniform >= p10) & (uniform < p10 + p01), axis=1),
    )
    declared = np.zeros(REPLICATES, dtype=bool)
    for n in sequential.look_counts(DOCUMENTS, CHUNK):
        low, _ = stats.tango_interval(student_only[:, n - 1], teacher_only[:, n - 1], int(n), CONFIDENCE)
        declared |= low > -MARGIN
    assert declared.mean() > 2 * ONE_SIDED
    assert rate(simulate(p10, p01), DECLARED_NOT_INFERIOR) < ONE_SIDED


@pytest.mark.parametrize(
    "truth, expected",
    [(INFERIOR, (Verdict.INFERIOR,)), (BETTER, DECLARED_NOT_INFERIOR), (NON_INFERIOR, DECLARED_NOT_INFERIOR)],
    ids=["inferior", "better", "non-inferior"],
)
def test_far_from_the_margin_it_decides_rightly_on_fewer_than_half_the_documents(truth, expected):
    result = simulate(*truth)
    assert rate(result, expected) >= CONFIDENCE
    wrong_side = (Verdict.INFERIOR,) if expected == DECLARED_NOT_INFERIOR else DECLARED_NOT_INFERIOR
    assert rate(result, wrong_side) <= ONE_SIDED + SLACK
    assert result.documents_used.mean() < DOCUMENTS / 2


def test_runs_at_the_margin_mostly_use_every_document():
    result = simulate(*AT_MARGIN["15% discordant"])
    assert np.median(result.documents_used) == DOCUMENTS
    assert rate(result, (Verdict.INCONCLUSIVE,)) >= CONFIDENCE


def test_the_verdict_is_the_one_compare_reads_from_the_interval_at_the_stop():
    rng = np.random.default_rng(1)
    documents = 300
    for case in range(100):
        p10, p01 = rng.uniform(0, 0.3, size=2)
        higher_is_better = bool(case % 2)
        uniform = rng.random(documents)
        teacher = (uniform < 0.5).astype(float)
        student = teacher.copy()
        student[(uniform >= 0.5) & (uniform < 0.5 + p10)] = 1.0
        student[uniform < p01] = 0.0
        if not higher_is_better:
            teacher, student = 1 - teacher, 1 - student
        stop = sequential.sequential_quality(teacher, student, 50, MARGIN, CONFIDENCE, higher_is_better)
        from_interval = compare.verdict(stop.diff_ci_low, stop.diff_ci_high, MARGIN, higher_is_better)
        assert stop.verdict == from_interval, (case, stop)
        assert stop.diff_ci_low <= stop.diff_mean <= stop.diff_ci_high


def test_a_run_deciding_after_each_chunk_stops_where_the_replay_of_all_documents_does():
    # In-run, the gate sees only the chunks evaluated so far; with the planned count it must reach the
    # replay's verdict at the replay's stopping look, and not stop before it.
    rng = np.random.default_rng(5)
    planned, chunk = 400, 50
    for p_student in (0.9, 0.8, 0.7):
        teacher = (rng.random(planned) < 0.85).astype(float)
        student = np.where(rng.random(planned) < 0.9, teacher, (rng.random(planned) < p_student).astype(float))
        replay = sequential.sequential_quality(teacher, student, chunk, MARGIN, CONFIDENCE)
        for seen in range(chunk, replay.documents_used + 1, chunk):
            gate = sequential.sequential_quality(
                teacher[:seen], student[:seen], chunk, MARGIN, CONFIDENCE, True, planned
            )
            stopped = gate.documents_used == seen and gate.verdict != Verdict.INCONCLUSIVE
            assert stopped == (seen == replay.documents_used and replay.verdict != Verdict.INCONCLUSIVE)
        assert gate == replay


def test_the_capital_falls_as_the_candidate_mean_rises_so_the_sequence_is_an_interval():
    gains = np.random.default_rng(2).choice([-1.0, 0.0, 1.0], p=[0.1, 0.8, 0.1], size=(1, 500))
    bets = sequential.bet_fractions(gains, gains.shape[1], CONFIDENCE)
    nulls = np.linspace(-0.99, 0.99, 199)
    above = [sequential.log_capital(gains, bets, null, sequential.Side.ABOVE)[0, -1] for null in nulls]
    below = [sequential.log_capital(gains, bets, null, sequential.Side.BELOW)[0, -1] for null in nulls]
    assert np.all(np.diff(above) <= 0) and np.all(np.diff(below) >= 0)


def test_at_all_documents_the_sequence_is_wider_than_tango_by_less_than_half():
    # The price of looking often, stated in bench.sequential's docstring (15 % discordant, n = 1,000).
    p10, p01 = AT_MARGIN["15% discordant"]
    uniform = np.random.default_rng(3).random((100, DOCUMENTS))
    gains = np.where(uniform < p10, 1.0, np.where(uniform < p10 + p01, -1.0, 0.0))
    widths = [np.subtract(*sequential.confidence_bounds(row, DOCUMENTS, CONFIDENCE)[::-1]) for row in gains]
    low, high = stats.tango_interval((gains == 1).sum(axis=1), (gains == -1).sum(axis=1), DOCUMENTS, CONFIDENCE)
    ratio = np.mean(widths) / np.mean(high - low)
    assert 1 < ratio < 1.5


def test_looks_fall_every_chunk_and_at_the_last_document():
    assert sequential.look_counts(250, 100).tolist() == [100, 200, 250]
    assert sequential.look_counts(200, 100).tolist() == [100, 200]
    assert sequential.look_counts(50, 100).tolist() == [50]
    with pytest.raises(ValueError):
        sequential.look_counts(10, 0)


def test_documents_are_evaluated_in_a_seeded_random_order():
    order = sequential.document_order(100, seed=7)
    assert sorted(order) == list(range(100)) and order.tolist() != list(range(100))
    assert order.tolist() == sequential.document_order(100, seed=7).tolist()


def test_values_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sequential.sequential_quality(np.array([0.0, 2.0]), np.array([1.0, 1.0]), 1, MARGIN, CONFIDENCE)


# -- perf repeats --------------------------------------------------------------------------------------------

BLOCKS = 20
PERF_REPLICATES = 20000
BLOCK_SD = 0.1  # sd of a block's log-ratio; the quickstart's are 0.07 and 0.10
TWO_SIDED_SLACK = 3 * math.sqrt((1 - CONFIDENCE) * CONFIDENCE / PERF_REPLICATES)


def simulate_blocks(mean_log_ratio: float, blocks: int = BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    logs = np.random.default_rng(4).normal(mean_log_ratio, BLOCK_SD, size=(PERF_REPLICATES, blocks))
    return sequential.sequential_ratios(logs, target_ratio=1.0, confidence=CONFIDENCE)


def test_a_ratio_at_its_target_is_declared_either_way_no_more_often_than_nominal():
    decisions, used = simulate_blocks(0.0)
    assert np.mean(decisions != RatioDecision.UNDECIDED) <= (1 - CONFIDENCE) + TWO_SIDED_SLACK
    assert np.median(used) == BLOCKS


def test_a_ratio_like_the_quickstarts_is_decided_in_a_few_of_ten_blocks():
    planned = 10
    decisions, used = simulate_blocks(0.6, blocks=planned)  # 1.8x, the quickstart's throughput ratio
    assert np.mean(decisions == RatioDecision.ABOVE) >= CONFIDENCE
    assert used.mean() < planned / 2


def test_one_block_says_nothing_about_the_noise():
    low, high = sequential.ratio_confidence_sequence(np.array([[0.5, 0.6, 0.55]]), CONFIDENCE)
    assert np.isinf(low[0, 0]) and np.isinf(high[0, 0])
    assert low[0, -1] < 0.55 < high[0, -1] and np.isfinite([low[0, -1], high[0, -1]]).all()


def test_a_replayed_ratio_reports_its_interval_at_the_stopping_block():
    student, teacher = np.array([1.9, 1.7, 1.93, 1.8, 1.85]), np.ones(5)
    stop = sequential.sequential_ratio(student, teacher, target_ratio=1.0, confidence=CONFIDENCE)
    assert stop.decision == RatioDecision.ABOVE and stop.blocks_used < stop.blocks_planned == 5
    assert 1 < stop.ci_low < stop.ratio < stop.ci_high


# -- replay on stored results --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    results = build_results(tmp_path_factory.mktemp("replay"))
    return sequential_replay.replay_runs(pairing.read_runs(store.readable_runs(results)), 25, seeds=(0, 1))


def test_replay_stops_the_clear_task_early_on_the_same_side_as_all_the_data(replay):
    quality = replay.quality
    sort_rows = [row for row in quality if row.task == "toy_sort"]  # student better by +0.3: full data say better
    assert len(sort_rows) == 2 and {row.full_verdict for row in sort_rows} == {Verdict.BETTER}
    # It stops at the first decisive look, which may be "non-inferior" before "better" is shown: not opposite.
    assert all(row.sequential_verdict in DECLARED_NOT_INFERIOR and not row.opposite for row in sort_rows)
    assert all(row.documents_used < row.documents_full for row in sort_rows)
    assert {row.documents_full for row in quality} == {200}


def test_replay_of_one_block_decides_nothing(replay):
    perf = replay.perf
    assert perf and all(row.blocks_full == 1 and row.decision == RatioDecision.UNDECIDED for row in perf)
    assert all(row.full_decision == RatioDecision.UNDECIDED for row in perf)
