"""Compute-matched quality: costs, the affordable k, pairing by document, verdicts, the smallest matching k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import compare, store
from bench.cli import app
from bench.compare import ComparisonRow, Scoring, Verdict
from bench.config import CompareConfig
from bench.leaderboard import MatchedStatus, matched_status
from bench.matched import (
    AnswerCost,
    affordable_k,
    compare_matched,
    filter_k,
    generated_tokens,
    mean_generated_tokens,
    sample_groups,
    smallest_matching_k,
)
from bench.records import EvalSample, ModelRecord, PerfSummary
from bench.stats import discordant_counts, tango_interval
from tests.unit.test_store import make_record

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


def test_filter_k_reads_the_filter_names_of_its_scoring_only() -> None:
    assert filter_k("maj@1") == 1
    assert filter_k("maj@16") == 16
    assert [filter_k(name) for name in ("none", "maj@", "maj@0", "maj@x", "strict-match", "pass@3")] == [None] * 6
    assert (filter_k("pass@3", Scoring.PASS), filter_k("maj@3", Scoring.PASS)) == (3, None)


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


# -- from stored results: compare's compute-matched rows -------------------------------------------------

TEACHER_PRICES = (2.2, 1.8, 2.0)  # $/Mtok over 3 blocks: mean 2.0
STUDENT_PRICES = (0.6, 0.4, 0.5)  # mean 0.5
VOTES = {1: 150, 3: 178, 5: 190}  # maj@k filter -> documents right, of N
ENTRY = {"task": "add_sampled", "baseline_task": "add", "metric": "exact_match"}


def samples(task: str, filter_name: str, right: int, tokens: float | None) -> list[EvalSample]:
    return [
        make_record(
            EvalSample, task=task, doc_id=doc, metric="exact_match", filter=filter_name, value=float(doc < right),
            response_tokens=tokens,
        )
        for doc in range(N)
    ]  # fmt: skip


def write_run(
    root: Path,
    tokens: float | None = 5.0,
    perf: bool = True,
    votes: dict[int, int] = VOTES,
    passes: dict[int, int] | None = None,
    **entry,
) -> Path:
    """A run of a teacher (pass@1 0.90 on `add`, 5 tokens an answer) and its student (maj@1/3/5 on
    `add_sampled`, and pass@k where `passes` says, 5 tokens an answer), with `chat` priced over 3 blocks, and
    one compute_matched entry."""
    run = root / "results" / "r1"
    for name, role, teacher in (("T", "teacher", None), ("S", "student", "T")):
        record = make_record(
            ModelRecord, name=name, role=role, teacher=teacher, distillation_usd=None, distillation_teacher_tokens=None
        )
        store.write_cell(run, "models", f"{name}-server", name, [record])
    store.write_cell(run, "eval_samples", "T-add", "T", samples("add", "none", 180, tokens))
    filters = {f"maj@{k}": right for k, right in votes.items()} | {f"pass@{k}": r for k, r in (passes or {}).items()}
    student_rows = [row for name, right in filters.items() for row in samples("add_sampled", name, right, tokens)]
    store.write_cell(run, "eval_samples", "S-add_sampled", "S", student_rows)
    for model, prices in (("T", TEACHER_PRICES), ("S", STUDENT_PRICES)):
        for block, price in enumerate(prices if perf else ()):
            summary = make_record(
                PerfSummary, workload="chat", mode="concurrency", level=8.0, block=block, session_id="one",
                usd_per_mtok_output=price,
            )  # fmt: skip
            store.write_cell(run, "perf_summary", f"{model}-chat-{block}", model, [summary])
    compare_section = {"retention_margin": 0.05, "compute_matched": [ENTRY | entry]}
    store.write_manifest(run, {"run_id": "r1", "config": {"compare": compare_section}})
    return root / "results"


def matched_rows(results: Path) -> list[ComparisonRow]:
    return [row for row in compare.compare_results(results) if row.compute_matched]


def test_rows_pair_maj_at_k_with_pass_at_1_and_price_answers_at_the_pairs_measured_rate(tmp_path) -> None:
    rows = matched_rows(write_run(tmp_path))
    assert [(row.k, row.filter, row.task, row.baseline_task) for row in rows] == [
        (k, f"maj@{k}", "add_sampled", "add") for k in VOTES
    ]
    assert [(row.n_paired, row.teacher_score, row.student_score) for row in rows] == [
        (N, 0.9, right / N) for right in VOTES.values()
    ]
    # The same points as bench.matched's own, with the price compare's break-even uses: the mean over blocks.
    expected = compare_matched(ones(180), {k: ones(right) for k, right in VOTES.items()}, TEACHER, STUDENT, 0.05, 0.95)
    for row, point in zip(rows, expected, strict=True):
        assert (row.diff_ci_low, row.diff_ci_high, row.verdict) == (
            point.diff_ci_low,
            point.diff_ci_high,
            point.verdict,
        )
        assert row.teacher_usd_per_question == pytest.approx(point.teacher_usd_per_question)
        assert row.student_usd_per_question == pytest.approx(point.student_usd_per_question)
        assert row.within_budget == point.within_budget
        assert (row.discordant_student_only, row.discordant_teacher_only) == (
            point.discordant_student_only, point.discordant_teacher_only,
        )  # fmt: skip
    assert [row.within_budget for row in rows] == [True, True, False]
    assert {row.smallest_matching_k for row in rows} == {3}
    assert {(row.workload, row.level, row.n_blocks) for row in rows} == {("chat", 8.0, 3)}
    assert (rows[0].teacher_tokens_per_answer, rows[0].student_tokens_per_answer) == (5.0, 5.0)
    assert "within the teacher's budget" in rows[1].summary and "over the teacher's budget" in rows[2].summary


def test_configured_k_restricts_the_rows_and_a_missing_one_says_so(tmp_path) -> None:
    rows = matched_rows(write_run(tmp_path, k=[3, 7]))
    assert [(row.k, row.verdict) for row in rows] == [(3, Verdict.NON_INFERIOR), (7, Verdict.NO_DATA)]
    assert "maj@7 of S on add_sampled is not stored" in rows[1].summary


def test_results_without_response_tokens_are_not_priced_and_say_why(tmp_path) -> None:
    rows = matched_rows(write_run(tmp_path, tokens=None))  # as a schema-4 file reads: the column null
    assert [row.verdict for row in rows] == [Verdict.INFERIOR, Verdict.NON_INFERIOR, Verdict.BETTER]
    assert {(row.within_budget, row.teacher_usd_per_question, row.smallest_matching_k) for row in rows} == {
        (None, None, None)
    }
    assert all("not priced: eval_samples without response_tokens" in row.summary for row in rows)


def test_a_schema_4_file_reads_response_tokens_as_null(tmp_path) -> None:
    results = write_run(tmp_path)
    path = next((results / "r1" / "eval_samples").glob("T-*.parquet"))
    old = pq.read_table(path).drop_columns(["response_tokens"])
    pq.write_table(old.replace_schema_metadata({**old.schema.metadata, b"schema_version": b"4"}), path)
    rows = matched_rows(results)
    assert {row.teacher_tokens_per_answer for row in rows} == {None}
    assert all("not priced" in row.summary for row in rows)


def test_without_perf_rows_are_compared_but_not_priced(tmp_path) -> None:
    rows = matched_rows(write_run(tmp_path, perf=False))
    assert [row.k for row in rows] == list(VOTES) and {row.workload for row in rows} == {None}
    assert all("not priced: no perf workload that both models ran" in row.summary for row in rows)


def test_an_entry_whose_teacher_has_no_pass_at_1_gets_one_no_data_row(tmp_path) -> None:
    (row,) = matched_rows(write_run(tmp_path, baseline_task="gsm8k"))
    assert (row.k, row.verdict, row.baseline_task) == (None, Verdict.NO_DATA, "gsm8k")
    assert row.summary.endswith("no data: no exact_match of T on gsm8k")


def test_runs_without_entries_get_no_rows_and_no_sample_scan(tmp_path) -> None:
    results = write_run(tmp_path)
    store.write_manifest(results / "r1", {"run_id": "r1", "config": {"compare": {}}})
    assert matched_rows(results) == []
    assert sample_groups(store.read_table(results, "eval_samples"), {"r1": CompareConfig()}) == {}


def test_the_cli_prints_the_compute_matched_table(tmp_path) -> None:
    results = write_run(tmp_path)
    table = CliRunner().invoke(app, ["compare", str(results)], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "compute-matched quality (r1)" in table.output and "smallest matching k" in table.output
    markdown = CliRunner().invoke(app, ["compare", str(results), "--format", "markdown"]).output
    assert "Compute-matched quality:" in markdown
    assert "| S | T | add_sampled vs add | 3 | maj@k | 0.890 | 0.900 |" in markdown


PASSES = {1: 150, 3: 186, 5: 196}  # pass@k filter -> documents right, of N: at least maj@k's


def test_pass_at_k_rows_sit_beside_maj_at_k_with_the_same_pairing_price_and_no_smallest_k(tmp_path) -> None:
    rows = matched_rows(write_run(tmp_path, passes=PASSES))
    assert [(row.k, row.scoring, row.filter) for row in rows] == [
        (k, scoring, f"{scoring}@{k}") for k in VOTES for scoring in (Scoring.MAJ, Scoring.PASS)
    ]
    maj = [row for row in rows if row.scoring is Scoring.MAJ]
    passed = [row for row in rows if row.scoring is Scoring.PASS]
    assert maj == matched_rows(write_run(tmp_path / "maj-only"))  # pass@k filters leave the maj@k rows alone
    expected = compare_matched(ones(180), {k: ones(right) for k, right in PASSES.items()}, TEACHER, STUDENT, 0.05, 0.95)
    for row, point in zip(passed, expected, strict=True):
        assert (row.student_score, row.diff_ci_low, row.diff_ci_high, row.verdict, row.within_budget) == (
            point.student_score, point.diff_ci_low, point.diff_ci_high, point.verdict, point.within_budget,
        )  # fmt: skip
        assert row.student_usd_per_question == pytest.approx(point.student_usd_per_question)
    assert [row.verdict for row in passed] == [Verdict.INFERIOR, Verdict.BETTER, Verdict.BETTER]
    # The smallest matching k is maj@k's (deployable): pass@k needs an oracle to pick the right answer.
    assert {row.smallest_matching_k for row in maj} == {3} and {row.smallest_matching_k for row in passed} == {None}
    assert passed[1].summary.startswith("S pass@3 on add_sampled vs T pass@1 on add: 0.930 vs 0.900 exact_match")


def test_pass_rows_read_back_from_the_stored_comparison_with_their_scoring(tmp_path) -> None:
    results = write_run(tmp_path, passes=PASSES)
    computed = compare.compare_results(results)
    assert (results / "r1" / "comparison.parquet").exists()
    assert compare.compare_results(results) == computed  # read back: "pass" is Scoring.PASS again


def test_a_task_without_pass_filters_gets_none_and_a_configured_missing_k_says_so(tmp_path) -> None:
    assert {row.scoring for row in matched_rows(write_run(tmp_path))} == {Scoring.MAJ}
    rows = matched_rows(write_run(tmp_path / "configured", passes=PASSES, k=[3, 7]))
    assert [(row.k, row.scoring, row.verdict) for row in rows] == [
        (3, Scoring.MAJ, Verdict.NON_INFERIOR), (3, Scoring.PASS, Verdict.BETTER),
        (7, Scoring.MAJ, Verdict.NO_DATA), (7, Scoring.PASS, Verdict.NO_DATA),
    ]  # fmt: skip
    assert "pass@7 of S on add_sampled is not stored" in rows[3].summary


def test_the_leaderboard_status_ignores_pass_rows(tmp_path) -> None:
    # Only pass@3 stored: its row is compared and within budget, yet without a maj@k there is nothing deployable.
    rows = matched_rows(write_run(tmp_path, votes={}, passes={3: 186}, k=[3]))
    assert [(row.scoring, row.n_paired) for row in rows] == [(Scoring.MAJ, 0), (Scoring.PASS, N)]
    assert matched_status(rows) == (MatchedStatus.NO_DATA, None)
