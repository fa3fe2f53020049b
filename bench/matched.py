"""Compute-matched quality: the student answers k times for the teacher's price of one answer.

A student that costs 1/N of the teacher per token can spend the difference sampling: k answers and a majority
vote (maj@k, self-consistency). The comparison is at equal cost per question: k is admissible when
k × the student's $/question ≤ the teacher's $/question at pass@1, and at each k the student's maj@k is
compared with the teacher's pass@1 document by document, with the same interval and verdict as every other
quality row (Tango's continuity-corrected interval of the paired difference, non-inferiority at the margin).
The answer is the smallest k at which the student matches the teacher (non-inferior or better), and whether
that k is within the budget.

$/question = output tokens per answer × $/Mtok output. $/Mtok comes from the run's perf results (measured
per model on the same hardware); tokens per answer from the eval samples' responses, counted with the
model's tokenizer (`generated_tokens`). Prompt tokens are not charged separately: $/Mtok output already
spreads the serving cost (prefill included) over output tokens, as everywhere in distill-bench.

The maj@k scores come from lm-eval itself (a task with `repeats:` and one `maj@k` filter per k, see
bench/toy/tasks.py `sampled_task_yaml`), so this module scores nothing; it only pairs, prices and decides.
Pure: no I/O, no heavy imports (the tokenizer is loaded lazily by `tokenizer_counter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.compare import Verdict, verdict
from bench.stats import discordant_counts, is_binary, tango_interval

TOKENS_PER_MTOK = 1_000_000
MATCHING_VERDICTS = (Verdict.BETTER, Verdict.NON_INFERIOR)
VOTE_FILTER_PREFIX = "maj@"  # lm-eval filter names of the sampled tasks: "maj@<k>"


def vote_k(filter_name: str) -> int | None:
    """k of a majority-vote filter named "maj@<k>"; None for any other filter."""
    count = filter_name.removeprefix(VOTE_FILTER_PREFIX)
    if count == filter_name or not count.isdigit() or int(count) < 1:
        return None
    return int(count)


@dataclass(frozen=True)
class AnswerCost:
    """What one answer of a model costs on a task: measured tokens per answer at a measured price."""

    output_tokens_per_answer: float
    usd_per_mtok_output: float

    @property
    def usd_per_answer(self) -> float:
        return self.output_tokens_per_answer * self.usd_per_mtok_output / TOKENS_PER_MTOK


@dataclass(frozen=True)
class MatchedPoint:
    """Student maj@k against teacher pass@1 on the documents both answered, with the cost of each."""

    k: int
    n: int  # documents paired
    teacher_score: float
    student_score: float
    diff_ci_low: float  # interval of mean(student maj@k - teacher pass@1)
    diff_ci_high: float
    verdict: Verdict
    teacher_usd_per_question: float  # one answer
    student_usd_per_question: float  # k answers
    within_budget: bool  # student_usd_per_question <= teacher_usd_per_question


def affordable_k(student: AnswerCost, teacher: AnswerCost) -> int:
    """The largest k with k × the student's $/answer ≤ the teacher's $/answer (0 if even one costs more)."""
    if student.usd_per_answer <= 0:
        raise ValueError("the student's cost per answer must be positive to bound k")
    # The small tolerance keeps an exact ratio (e.g. 3.0 computed as 2.9999999999999996) from losing a k.
    return math.floor(teacher.usd_per_answer / student.usd_per_answer + 1e-9)


def generated_tokens(response: str, count_tokens: Callable[[str], int], max_gen_toks: int) -> int:
    """Tokens the server generated for one lm-eval response.

    lm-eval strips the stop sequence that ended the answer (`until`, e.g. a newline) and vLLM leaves out the
    EOS text; either was one more generated token, unless the answer ran to `max_gen_toks` and was cut there.
    With a subword tokenizer the stop may have merged into a neighbouring token: an estimate within one token.
    """
    return min(count_tokens(response) + 1, max_gen_toks)


def mean_generated_tokens(responses: Iterable[str], count_tokens: Callable[[str], int], max_gen_toks: int) -> float:
    """Mean of `generated_tokens` over responses (one per document); raises ValueError on none."""
    counts = [generated_tokens(response, count_tokens, max_gen_toks) for response in responses]
    if not counts:
        raise ValueError("no responses to count tokens in")
    return float(np.mean(counts))


def tokenizer_counter(tokenizer: str) -> Callable[[str], int]:
    """Count a text's tokens with a model's tokenizer (local path or hub id), special tokens left out."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(loaded.encode(text, add_special_tokens=False))


def compare_matched(
    teacher: Mapping[int, float],
    student_by_k: Mapping[int, Mapping[int, float]],
    teacher_cost: AnswerCost,
    student_cost: AnswerCost,
    retention_margin: float,
    confidence: float,
) -> list[MatchedPoint]:
    """One MatchedPoint per k (ascending): per-document 0/1 values keyed by doc id, teacher at pass@1 and the
    student's maj@k for each k, paired over the documents both have.

    Raises ValueError when a k shares no document with the teacher or a value is not 0/1 (majority vote is
    defined for exact answers; a continuous metric would need the bootstrap, which compare already has).
    """
    points = []
    for k in sorted(student_by_k):
        student = student_by_k[k]
        docs = sorted(teacher.keys() & student.keys())
        if not docs:
            raise ValueError(f"maj@{k}: no document answered by both teacher and student")
        paired_teacher = np.array([teacher[doc] for doc in docs], dtype=np.float64)
        paired_student = np.array([student[doc] for doc in docs], dtype=np.float64)
        if not is_binary(paired_teacher, paired_student):
            raise ValueError(f"maj@{k}: compute-matched comparison needs 0/1 values (exact answers)")
        low, high = (
            float(end[0])
            for end in tango_interval(*discordant_counts(paired_teacher, paired_student), len(docs), confidence)
        )
        student_usd = k * student_cost.usd_per_answer
        points.append(
            MatchedPoint(
                k=k,
                n=len(docs),
                teacher_score=float(paired_teacher.mean()),
                student_score=float(paired_student.mean()),
                diff_ci_low=low,
                diff_ci_high=high,
                verdict=verdict(low, high, retention_margin),
                teacher_usd_per_question=teacher_cost.usd_per_answer,
                student_usd_per_question=student_usd,
                within_budget=student_usd <= teacher_cost.usd_per_answer,
            )
        )
    return points


def smallest_matching_k(points: Sequence[MatchedPoint], within_budget: bool = True) -> int | None:
    """The smallest k whose verdict is non-inferior or better (and, by default, within the teacher's cost)."""
    matching = [p.k for p in points if p.verdict in MATCHING_VERDICTS and (p.within_budget or not within_budget)]
    return min(matching, default=None)
