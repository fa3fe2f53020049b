"""Compute-matched quality: the student answers k times for the teacher's price of one answer.

A student that costs 1/N of the teacher per token can spend the difference sampling: k answers and a majority
vote (maj@k, self-consistency). The comparison is at equal cost per question: k is admissible when
k × the student's $/question ≤ the teacher's $/question at pass@1, and at each k the student's maj@k is
compared with the teacher's pass@1 document by document, with the same interval and verdict as every other
quality row (Tango's continuity-corrected interval of the paired difference, non-inferiority at the margin).
The answer is the smallest k at which the student matches the teacher (non-inferior or better), and whether
that k is within the budget.

$/question = output tokens per answer × $/Mtok output. $/Mtok is each model's mean over the blocks of a
workload both ran (`PairedWorkload.means`, the price compare's break-even uses), measured on the same
hardware. Tokens per answer are counted when the eval runs, with the tokenizer lm-eval was given, over every
raw answer (`generated_tokens`; stored as `eval_samples.response_tokens`), so a comparison needs no model
files: leaderboards are built on machines without the weights. Why not the server's `usage`: lm-eval drops
it, and with several prompts per request it would be one sum for all of them, not a count per answer.
Prompt tokens are not charged separately: $/Mtok output already spreads the serving cost (prefill included)
over output tokens, as everywhere in distill-bench.

Where the task also has `pass@k` filters (any of the first k answers right), the same pairing, interval,
verdict and $/question are reported for pass@k beside maj@k (rows with `scoring` "pass"). pass@k is an upper
bound on what any way of picking one of the k answers can achieve (a verifier, a reward model): it needs an
oracle that knows the right answer, so it shows the headroom, not a deployable score. The smallest matching k
(and the leaderboard's column) is therefore maj@k's alone.

The scores come from lm-eval itself (a task with `repeats:` and one `maj@k` and one `pass@k` filter per k, see
bench/toy/tasks.py `sampled_task_yaml`), so this module scores nothing; it only pairs, prices and decides.
`pair_rows` turns one pair's stored samples into compare's rows (`compare.compute_matched` in the config):
one per (k, scoring), with the smallest matching k, or one no-data row saying what is missing. No I/O, no heavy
imports (the tokenizer is loaded lazily by `tokenizer_counter`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.compare import ComparisonRow, IntervalMethod, Scoring, Verdict, verdict
from bench.config import CompareConfig, ComputeMatchedConfig
from bench.pairing import Pair, PairedWorkload
from bench.report import matched_summary
from bench.stats import discordant_counts, is_binary, mcnemar_exact_p, tango_interval

TOKENS_PER_MTOK = 1_000_000
MATCHING_VERDICTS = (Verdict.BETTER, Verdict.NON_INFERIOR)


def filter_prefix(scoring: Scoring) -> str:
    """The lm-eval filter names of the sampled tasks start with this: "maj@<k>", "pass@<k>"."""
    return f"{scoring}@"


def filter_k(filter_name: str, scoring: Scoring = Scoring.MAJ) -> int | None:
    """k of a filter named "<scoring>@<k>" ("maj@3", "pass@3"); None for any other filter."""
    count = filter_name.removeprefix(filter_prefix(scoring))
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
    """Student maj@k (or pass@k) against teacher pass@1 on the documents both answered, with the cost of each.

    The costs are None when an answer could not be priced (no tokens per answer, no measured $/Mtok).
    """

    k: int
    n: int  # documents paired
    teacher_score: float
    student_score: float
    diff_ci_low: float  # interval of mean(student maj@k or pass@k - teacher pass@1)
    diff_ci_high: float
    discordant_student_only: int  # documents only the student's k answers got right
    discordant_teacher_only: int
    mcnemar_p: float
    verdict: Verdict
    teacher_usd_per_question: float | None  # one answer
    student_usd_per_question: float | None  # k answers
    within_budget: bool | None  # student_usd_per_question <= teacher_usd_per_question


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


@cache  # a worker evaluates many cells (an adaptive task's chunks) with one tokenizer: load it once
def tokenizer_counter(tokenizer: str) -> Callable[[str], int]:
    """Count a text's tokens with a model's tokenizer (local path or hub id), special tokens left out."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(loaded.encode(text, add_special_tokens=False))


def compare_matched(
    teacher: Mapping[int, float],
    student_by_k: Mapping[int, Mapping[int, float]],
    teacher_cost: AnswerCost | None,
    student_cost: AnswerCost | None,
    retention_margin: float,
    confidence: float,
) -> list[MatchedPoint]:
    """One MatchedPoint per k (ascending): per-document 0/1 values keyed by doc id, teacher at pass@1 and the
    student's maj@k (or pass@k: the pairing is the same) for each k, paired over the documents both have.
    Without both costs, the points' costs
    and `within_budget` are None.

    Raises ValueError when a k shares no document with the teacher or a value is not 0/1 (majority vote is
    defined for exact answers; a continuous metric would need the bootstrap, which compare already has).
    """
    points = []
    for k in sorted(student_by_k):
        student = student_by_k[k]
        docs = sorted(teacher.keys() & student.keys())
        if not docs:
            raise ValueError(f"k={k}: no document answered by both teacher and student")
        paired_teacher = np.array([teacher[doc] for doc in docs], dtype=np.float64)
        paired_student = np.array([student[doc] for doc in docs], dtype=np.float64)
        if not is_binary(paired_teacher, paired_student):
            raise ValueError(f"k={k}: compute-matched comparison needs 0/1 values (exact answers)")
        won, lost = discordant_counts(paired_teacher, paired_student)
        low, high = (float(end[0]) for end in tango_interval(won, lost, len(docs), confidence))
        priced = teacher_cost is not None and student_cost is not None
        teacher_usd = teacher_cost.usd_per_answer if priced else None
        student_usd = k * student_cost.usd_per_answer if priced else None
        points.append(
            MatchedPoint(
                k=k,
                n=len(docs),
                teacher_score=float(paired_teacher.mean()),
                student_score=float(paired_student.mean()),
                diff_ci_low=low,
                diff_ci_high=high,
                discordant_student_only=int(won),
                discordant_teacher_only=int(lost),
                mcnemar_p=float(mcnemar_exact_p(won, lost)),
                verdict=verdict(low, high, retention_margin),
                teacher_usd_per_question=teacher_usd,
                student_usd_per_question=student_usd,
                within_budget=None if not priced else student_usd <= teacher_usd,
            )
        )
    return points


def smallest_matching_k(points: Sequence[MatchedPoint], within_budget: bool = True) -> int | None:
    """The smallest k whose verdict is non-inferior or better (and, by default, within the teacher's cost)."""
    matching = [p.k for p in points if p.verdict in MATCHING_VERDICTS and (p.within_budget or not within_budget)]
    return min(matching, default=None)


# -- from stored results: one compare row per (pair, compute_matched entry, workload, k) --------------------

GroupKey = tuple[str, str, str, str, str]  # run, model, task, metric, filter


@dataclass(frozen=True)
class DocumentValues:
    """One model's stored rows of one (task, metric, filter): per-document values and tokens per answer."""

    values: dict[int, float]  # by doc_id; repeated rows of a document averaged, as compare does
    tokens_per_answer: float | None  # mean of `response_tokens`; None if any row lacks it (older results)


def sample_groups(eval_samples: pa.Table, settings: Mapping[str, CompareConfig]) -> dict[GroupKey, DocumentValues]:
    """The eval_samples rows that the runs' `compute_matched` entries name, grouped by (run, model, task, metric,
    filter). One vectorised filter keeps the named runs and tasks, so runs without entries cost nothing."""
    wanted = {run: {t for e in s.compute_matched for t in (e.task, e.baseline_task)} for run, s in settings.items()}
    wanted = {run: tasks for run, tasks in wanted.items() if tasks}
    if not wanted or eval_samples.num_rows == 0:
        return {}
    mask = pc.and_(
        pc.is_in(eval_samples["run_id"], value_set=pa.array(sorted(wanted), pa.string())),
        pc.is_in(eval_samples["task"], value_set=pa.array(sorted(set().union(*wanted.values())), pa.string())),
    )
    columns = ["run_id", "model", "task", "metric", "filter", "doc_id", "value", "response_tokens"]
    values: dict[GroupKey, dict[int, list[float]]] = {}
    tokens: dict[GroupKey, list[float | None]] = {}
    for row in eval_samples.filter(mask).select(columns).to_pylist():
        if row["task"] not in wanted[row["run_id"]]:
            continue
        key = (row["run_id"], row["model"], row["task"], row["metric"], row["filter"])
        values.setdefault(key, {}).setdefault(row["doc_id"], []).append(row["value"])
        tokens.setdefault(key, []).append(row["response_tokens"])
    return {
        key: DocumentValues(
            {doc: float(np.mean(found)) for doc, found in docs.items()},
            None if None in tokens[key] else float(np.mean(tokens[key])),
        )
        for key, docs in values.items()
    }


def _baseline_filter(groups: Mapping[GroupKey, DocumentValues], prefix: tuple[str, str, str, str]) -> str | None:
    """The teacher's filter of its pass@1 task: "none" where stored (as compare prefers), else the first."""
    filters = sorted(key[4] for key in groups if key[:4] == prefix)
    return "none" if "none" in filters else next(iter(filters), None)


def _filters(
    groups: Mapping[GroupKey, DocumentValues], prefix: tuple[str, ...], ks: Sequence[int], scoring: Scoring
) -> dict[int, str]:
    """k -> the student's maj@k (pass@k) filter, for the k configured (every stored one when none is). No pass@k
    filter stored: none (a task without them, where pass@k is not scored, gets no pass@k rows)."""
    stored = {k: key[4] for key in groups if key[:4] == prefix and (k := filter_k(key[4], scoring)) is not None}
    if scoring is Scoring.PASS and not stored:
        return {}
    return {k: stored.get(k, f"{filter_prefix(scoring)}{k}") for k in sorted(ks or stored)}


def pair_rows(
    pair: Pair, settings: CompareConfig, groups: Mapping[GroupKey, DocumentValues], workloads: Sequence[PairedWorkload]
) -> list[ComparisonRow]:
    """The compute-matched rows of one pair: per `compute_matched` entry and workload (its $/Mtok prices the
    answers; one unpriced set without perf), one row per k for maj@k and, where stored, for pass@k, or one
    no-data row saying what is missing."""
    rows = []
    for entry in settings.compute_matched:
        teacher_filter = _baseline_filter(groups, (pair.run_id, pair.teacher, entry.baseline_task, entry.metric))
        teacher = groups.get((pair.run_id, pair.teacher, entry.baseline_task, entry.metric, teacher_filter or ""))
        student_prefix = (pair.run_id, pair.student, entry.task, entry.metric)
        filters = {scoring: _filters(groups, student_prefix, entry.k, scoring) for scoring in Scoring}
        for workload in workloads or [None]:
            for scoring, names in filters.items():
                student = {k: (name, groups.get((*student_prefix, name))) for k, name in names.items()}
                matched = _Matched(pair, entry, settings, workload, teacher, scoring, student)
                if scoring is Scoring.PASS and (teacher is None or not names):
                    continue  # the maj@k row says what is missing; pass@k is scored where the task allows
                if teacher is None:
                    rows.append(matched.row(None, f"no {entry.metric} of {pair.teacher} on {entry.baseline_task}"))
                elif not names:
                    rows.append(matched.row(None, f"no maj@<k> filter of {pair.student} on {entry.task}"))
                else:
                    rows += matched.rows()
    return rows


@dataclass(frozen=True)
class _Matched:
    """One (pair, compute_matched entry, workload): the documents and prices its rows share."""

    pair: Pair
    entry: ComputeMatchedConfig
    settings: CompareConfig
    workload: PairedWorkload | None  # None: no perf both models ran, nothing prices an answer
    teacher: DocumentValues | None  # pass@1 on the baseline task
    scoring: Scoring
    student: dict[int, tuple[str, DocumentValues | None]]  # k -> (maj@k or pass@k filter, its rows; None: not stored)

    def tokens(self) -> tuple[float | None, float | None]:
        """(teacher, student) generated tokens per answer; every filter of the student shares the same answers."""
        stored = [values for _, values in self.student.values() if values is not None]
        student_tokens = stored[0].tokens_per_answer if stored else None
        return (self.teacher.tokens_per_answer if self.teacher else None), student_tokens

    def costs(self) -> tuple[AnswerCost | None, AnswerCost | None]:
        """(teacher, student) cost of one answer: tokens per answer × the pair's mean $/Mtok at the workload, the
        price compare's cost rows use (`PairedWorkload.means`)."""
        student_usd, teacher_usd = self.workload.means("usd_per_mtok_output") if self.workload else (None, None)
        teacher_tokens, student_tokens = self.tokens()
        return (
            None if None in (teacher_tokens, teacher_usd) else AnswerCost(teacher_tokens, teacher_usd),
            None if None in (student_tokens, student_usd) else AnswerCost(student_tokens, student_usd),
        )

    def rows(self) -> list[ComparisonRow]:
        teacher_cost, student_cost = self.costs()
        points, problems = [], {}
        for k, (_, values) in self.student.items():
            if values is None:
                problems[k] = f"{self.scoring}@{k} of {self.pair.student} on {self.entry.task} is not stored"
                continue
            try:
                points += compare_matched(
                    self.teacher.values, {k: values.values}, teacher_cost, student_cost,
                    self.settings.retention_margin, self.settings.confidence,
                )  # fmt: skip
            except ValueError as error:  # no document in common, or values that are not 0/1
                problems[k] = str(error)
        # pass@k needs an oracle to pick the right answer: the deployable smallest k is maj@k's alone.
        smallest = smallest_matching_k(points) if self.scoring is Scoring.MAJ else None
        found = [self.row(point, None, smallest) for point in points]
        found += [self.row(None, problem, k=k) for k, problem in problems.items()]
        return sorted(found, key=lambda row: row.k or 0)

    def row(
        self, point: MatchedPoint | None, problem: str | None, smallest: int | None = None, k: int | None = None
    ) -> ComparisonRow:
        """One row: a point, or (no point) a no-data row for `k` (None: the whole entry) saying what is missing."""
        k = point.k if point else k
        fields: dict = dict.fromkeys(field.name for field in dataclasses.fields(ComparisonRow))
        fields.update(run_id=self.pair.run_id, teacher=self.pair.teacher, student=self.pair.student)
        fields.update(task=self.entry.task, metric=self.entry.metric, baseline_task=self.entry.baseline_task, k=k)
        fields.update(scoring=self.scoring)
        fields.update(filter=self.student[k][0] if k in self.student else None, higher_is_better=True)
        fields.update(retention_margin=self.settings.retention_margin, confidence=self.settings.confidence)
        fields.update(n_paired=0, verdict=Verdict.NO_DATA, control=False, compute_matched=True)
        fields.update(n_blocks=len(self.workload.blocks) if self.workload else 0, smallest_matching_k=smallest)
        fields.update(blocks_cross_session=self.workload.blocks_cross_session if self.workload else 0)
        if self.workload is not None:
            fields.update(workload=self.workload.workload, level=self.workload.level)
        fields.update(zip(("teacher_tokens_per_answer", "student_tokens_per_answer"), self.tokens(), strict=True))
        if point is not None:
            fields.update({name: getattr(point, name) for name in _POINT_FIELDS})
            fields.update(n_paired=point.n, diff_mean=point.student_score - point.teacher_score)
            fields.update(interval_method=IntervalMethod.TANGO_CC)
        row = ComparisonRow(**{**fields, "summary": ""})
        return dataclasses.replace(row, summary=matched_summary(row, problem))


# MatchedPoint fields that a ComparisonRow has under the same name.
_POINT_FIELDS = (
    "teacher_score", "student_score", "diff_ci_low", "diff_ci_high", "discordant_student_only",
    "discordant_teacher_only", "mcnemar_p", "verdict", "teacher_usd_per_question", "student_usd_per_question",
    "within_budget",
)  # fmt: skip
