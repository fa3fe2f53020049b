"""Compute-matched quality: costs, the affordable k, pairing by document, verdicts, the smallest matching k."""

from __future__ import annotations

import numpy as np
import pytest

from bench.compare import Verdict
from bench.matched import (
    AnswerCost,
    affordable_k,
    compare_matched,
    generated_tokens,
    mean_generated_tokens,
    smallest_matching_k,
    vote_k,
)
from bench.stats import discordant_counts, tango_interval

# Teacher: 5 tokens at $2/Mtok = $1e-5 an answer; student: 5 tokens at $0.5/Mtok = $2.5e-6, a quarter.
TEACHER = AnswerCost(output_tokens_per_answer=5, usd_per_mtok_output=2.0)
STUDENT = AnswerCost(output_tokens_per_answer=5, usd_per_mtok_output=0.5)
N = 200


def ones(count: int, n: int = N) -> dict[int, float]:
    """Documents 0..n-1, the first `count` right."""
    return {doc: float(doc < count) for doc in range(n)}


def test_cost_per_answer_and_affordable_k() -> None:
    assert TEACHER.usd_per_answer == pytest.approx(1e-5)
    assert STUDENT.usd_per_answer == pytest.approx(2.5e-6)
    assert affordable_k(STUDENT, TEACHER) == 4  # 4 × 2.5e-6 = 1e-5 exactly: still affordable
    assert affordable_k(TEACHER, STUDENT) == 0
    # 3 tokens at $1/Mtok against 10 tokens at $1/Mtok: 3.33 answers, so 3.
    assert affordable_k(AnswerCost(3, 1.0), AnswerCost(10, 1.0)) == 3
    with pytest.raises(ValueError, match="positive"):
        affordable_k(AnswerCost(0, 1.0), TEACHER)


def test_generated_tokens_adds_the_stripped_stop_unless_cut_at_the_limit() -> None:
    count = len  # the toy tokenizer: one token per character
    assert generated_tokens("579", count, max_gen_toks=16) == 4  # "579" + the newline that stopped it
    assert generated_tokens("", count, max_gen_toks=16) == 1  # stopped at once: the stop alone
    assert generated_tokens("1234", count, max_gen_toks=4) == 4  # ran to the limit: no stop generated
    assert mean_generated_tokens(["1", "123"], count, max_gen_toks=16) == 3.0  # (2 + 4) / 2
    with pytest.raises(ValueError, match="no responses"):
        mean_generated_tokens([], count, max_gen_toks=16)


def test_vote_k_reads_majority_filter_names_only() -> None:
    assert vote_k("maj@1") == 1
    assert vote_k("maj@16") == 16
    assert [vote_k(name) for name in ("none", "maj@", "maj@0", "maj@x", "strict-match")] == [None] * 5


def test_points_pair_documents_price_k_answers_and_decide() -> None:
    teacher = ones(180)  # pass@1 0.90
    student_by_k = {
        1: ones(150),  # 0.75: 30 documents lost, none won
        3: ones(178),  # 0.89: 2 lost
        5: ones(190),  # 0.95: 10 won, none lost
    }
    points = compare_matched(teacher, student_by_k, TEACHER, STUDENT, retention_margin=0.05, confidence=0.95)
    assert [p.k for p in points] == [1, 3, 5]
    assert [p.n for p in points] == [N] * 3
    assert [p.teacher_score for p in points] == [0.9] * 3
    assert [p.student_score for p in points] == [0.75, 0.89, 0.95]
    assert [p.student_usd_per_question for p in points] == pytest.approx([2.5e-6, 7.5e-6, 1.25e-5])
    assert [p.within_budget for p in points] == [True, True, False]
    # 30 of 200 lost and none won: the whole interval is below -0.05. 2 lost: within 0.05. 10 won, 0 lost:
    # above 0 (the exact McNemar p is 2 × 0.5**10 = 0.002).
    assert [p.verdict for p in points] == [Verdict.INFERIOR, Verdict.NON_INFERIOR, Verdict.BETTER]
    b, c = discordant_counts(np.array([teacher[d] for d in range(N)]), np.array([student_by_k[3][d] for d in range(N)]))
    low, high = tango_interval(b, c, N, 0.95)  # the interval is compare's own, over the same pairs
    assert (points[1].diff_ci_low, points[1].diff_ci_high) == (float(low[0]), float(high[0]))
    assert points[1].diff_ci_low < -0.01 < points[1].diff_ci_high
    assert smallest_matching_k(points) == 3
    assert smallest_matching_k(points[:1]) is None


def test_smallest_matching_k_can_ignore_the_budget() -> None:
    # Only k = 9 matches, and 9 answers cost 2.25 teacher answers.
    points = compare_matched(ones(180), {1: ones(150), 9: ones(180)}, TEACHER, STUDENT, 0.05, 0.95)
    assert [p.verdict for p in points] == [Verdict.INFERIOR, Verdict.NON_INFERIOR]
    assert smallest_matching_k(points) is None
    assert smallest_matching_k(points, within_budget=False) == 9


def test_pairs_only_documents_both_answered() -> None:
    teacher = {doc: 1.0 for doc in range(10)}
    student = {doc: 0.0 for doc in range(5, 15)}  # documents 5..9 in common, all lost
    (point,) = compare_matched(teacher, {3: student}, TEACHER, STUDENT, 0.05, 0.95)
    assert (point.n, point.teacher_score, point.student_score) == (5, 1.0, 0.0)


def test_refuses_disjoint_documents_and_continuous_values() -> None:
    with pytest.raises(ValueError, match="no document"):
        compare_matched({0: 1.0}, {3: {1: 1.0}}, TEACHER, STUDENT, 0.05, 0.95)
    with pytest.raises(ValueError, match="0/1"):
        compare_matched({0: 0.5}, {3: {0: 1.0}}, TEACHER, STUDENT, 0.05, 0.95)
