"""Teacher/student comparison: quality with a paired interval and a non-inferiority verdict, cost ratios
with intervals over blocks, and student/student controls.

Reading and pairing stored results live in `bench.pairing`, the statistics in `bench.stats`, the sentences
and number formats in `bench.report`; this module decides what is compared and what the verdict is.

Quality: the interval is of the mean per-document difference (student - teacher) over documents both models
answered. Pairing removes the per-document difficulty that both models share, so it is far tighter than
comparing two independent scores. For 0/1 metrics it is Tango's score interval from the discordant counts
(`stats.tango_interval`), reported with those counts and an exact McNemar p; for other metrics a seeded
paired bootstrap over documents. The verdict tests the interval against the run's absolute
`retention_margin`, oriented by the metric's direction (lm-eval's `higher_is_better`, stored in
`eval_scores`): for a lower-is-better metric such as perplexity, a student whose score is lower is the
better one, and retention is teacher / student.

Speed and cost: per block, the student's perf summary over its teacher's at the same workload and level
(the highest both ran; for a sweep, each at its capacity); the ratio is exp(mean log-ratio) over blocks with
a t-interval (`stats.log_ratio_estimate`, which says why t). A control (`compare.controls`) compares two
models of the same architecture the same way: its interval should contain 1. A workload whose blocks stopped
early (`workloads[].adaptive`, `bench.blockgate`: `n_blocks` below `repeats`) is compared the same way over
the blocks it has; that fixed-n interval is then optimistic, as the run stopped when the ratio looked
decisive: the anytime-valid bound is the confidence sequence the gate read (`sequential.sequential_ratio`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import comparison_file, pairing, report, stats, store, tco
from bench.config import CompareConfig
from bench.pairing import AdaptiveTask, Pair, PairedValues, PairedWorkload, ScoreKey

_PREFERRED_FILTER = "none"


class Verdict(StrEnum):
    """Non-inferiority of the student on one task metric, from the interval of (student - teacher)."""

    BETTER = "better"
    NON_INFERIOR = "non-inferior"
    INCONCLUSIVE = "inconclusive"
    INFERIOR = "inferior"
    NO_DATA = "no-data"  # no document both models answered


class Scoring(StrEnum):
    """How a compute-matched row scores the student's k sampled answers (lm-eval filters `maj@k`, `pass@k`)."""

    MAJ = "maj"  # their majority vote: deployable, no oracle needed
    PASS = "pass"  # any of them right: an upper bound on what any selector of one of the k answers achieves


class IntervalMethod(StrEnum):
    """How a quality interval was computed."""

    TANGO_CC = "tango-cc"  # every paired value is 0/1: Tango's score interval, continuity-corrected
    BOOTSTRAP = "bootstrap"  # percentile bootstrap over documents
    # an adaptive task (`tasks[].adaptive`): the anytime-valid confidence sequence of `bench.sequential` after
    # all its paired documents; a fixed-n interval would not cover at a number of documents chosen by the data
    CONFIDENCE_SEQUENCE = "confidence-sequence"


@dataclass(frozen=True)
class QualityComparison:
    """One (task, metric) of a pair: scores, retention and the paired interval of the difference."""

    task: str
    metric: str
    filter: str
    teacher_score: float
    student_score: float
    retention_pct: float | None  # None when the teacher scores 0
    retention_ci_low_pct: float | None  # the difference's interval relative to the teacher's score
    retention_ci_high_pct: float | None
    diff_mean: float | None  # mean per-document (student - teacher) over paired documents
    diff_ci_low: float | None
    diff_ci_high: float | None
    n_paired: int
    discordant_student_only: int | None  # 0/1 metrics: documents only the student scores 1 on (b)
    discordant_teacher_only: int | None  # ... only the teacher (c)
    mcnemar_p: float | None  # exact two-sided McNemar p of b vs c; 0/1 metrics only
    interval_method: IntervalMethod | None
    verdict: Verdict
    higher_is_better: bool


@dataclass(frozen=True)
class PerfComparison:
    """One workload of a pair: student / teacher ratios over the blocks both ran, with t-intervals."""

    workload: str
    level: float | None  # None for a sweep: each model at its own capacity
    throughput_ratio: float | None  # output tokens per second
    throughput_ratio_ci_low: float | None
    throughput_ratio_ci_high: float | None
    usd_per_mtok_ratio: float | None  # $ per million output tokens
    usd_per_mtok_ratio_ci_low: float | None
    usd_per_mtok_ratio_ci_high: float | None
    j_per_token_ratio: float | None  # joules per output token
    j_per_token_ratio_ci_low: float | None
    j_per_token_ratio_ci_high: float | None
    capacity_ratio: float | None  # sweeps: requests/s at capacity under the SLO
    capacity_ratio_ci_low: float | None
    capacity_ratio_ci_high: float | None
    n_blocks: int  # blocks both models ran at this workload (and level)
    blocks_cross_session: int  # of those, blocks whose two trials come from different driver processes
    distillation_usd: float | None = None  # training + teacher tokens at the teacher's $/Mtok (bench.tco)
    saving_usd_per_mtok: float | None = None  # teacher − student $/Mtok, mean over blocks
    saving_usd_per_mtok_ci_low: float | None = None
    saving_usd_per_mtok_ci_high: float | None = None
    break_even_mtok: float | None = None  # output tokens (millions) that repay distillation_usd; None: never
    break_even_ci_low_mtok: float | None = None
    break_even_ci_high_mtok: float | None = None  # None with a saving whose interval reaches 0: unbounded


@dataclass(frozen=True)
class ComparisonRow:
    """One row of the comparison: a pair, one task metric, one workload, with units in the names."""

    run_id: str
    teacher: str
    student: str
    task: str | None
    metric: str | None
    filter: str | None
    teacher_score: float | None
    student_score: float | None
    retention_pct: float | None
    retention_ci_low_pct: float | None
    retention_ci_high_pct: float | None
    diff_mean: float | None
    diff_ci_low: float | None
    diff_ci_high: float | None
    n_paired: int
    discordant_student_only: int | None
    discordant_teacher_only: int | None
    mcnemar_p: float | None
    interval_method: IntervalMethod | None
    verdict: Verdict
    higher_is_better: bool | None
    retention_margin: float
    confidence: float
    workload: str | None
    level: float | None
    throughput_ratio: float | None
    throughput_ratio_ci_low: float | None
    throughput_ratio_ci_high: float | None
    usd_per_mtok_ratio: float | None
    usd_per_mtok_ratio_ci_low: float | None
    usd_per_mtok_ratio_ci_high: float | None
    j_per_token_ratio: float | None
    j_per_token_ratio_ci_low: float | None
    j_per_token_ratio_ci_high: float | None
    capacity_ratio: float | None
    capacity_ratio_ci_low: float | None
    capacity_ratio_ci_high: float | None
    n_blocks: int
    blocks_cross_session: int
    distillation_usd: float | None
    saving_usd_per_mtok: float | None
    saving_usd_per_mtok_ci_low: float | None
    saving_usd_per_mtok_ci_high: float | None
    break_even_mtok: float | None
    break_even_ci_low_mtok: float | None
    break_even_ci_high_mtok: float | None
    cost_verdict: str | None  # e.g. "≥ 2.1x cheaper", or the $/Mtok ratio with its interval
    control: bool  # a control row: two models of the same architecture, perf only
    summary: str
    # Compute-matched rows (bench.matched, `compare.compute_matched`): the student's maj@k or pass@k on the sampled
    # `task` (filter maj@<k>, pass@<k>) against the teacher's pass@1 on `baseline_task`; the $ of each at
    # `workload`'s $/Mtok.
    compute_matched: bool = False
    baseline_task: str | None = None
    k: int | None = None  # the student's answers per question
    scoring: Scoring | None = None  # how those k answers are scored: majority vote or pass@k
    teacher_tokens_per_answer: float | None = None  # mean generated tokens (eval_samples.response_tokens)
    student_tokens_per_answer: float | None = None
    teacher_usd_per_question: float | None = None  # one answer
    student_usd_per_question: float | None = None  # k answers
    within_budget: bool | None = None  # k answers cost no more than the teacher's one; None: not priced
    smallest_matching_k: int | None = None  # of the row's (pair, task, workload): the smallest k within budget
    # whose maj@k verdict is non-inferior or better; None when none is, and on pass@k rows (an oracle's bound)


def verdict(diff_ci_low: float, diff_ci_high: float, retention_margin: float, higher_is_better: bool = True) -> Verdict:
    """Non-inferiority at an absolute margin: is the whole interval of the student's gain above -margin?

    The interval is of (student - teacher); the gain is that difference where higher is better, its negation
    where lower is better.
    """
    low, high = (diff_ci_low, diff_ci_high) if higher_is_better else (-diff_ci_high, -diff_ci_low)
    if low > 0:
        return Verdict.BETTER
    if low > -retention_margin:
        return Verdict.NON_INFERIOR
    if high < -retention_margin:
        return Verdict.INFERIOR
    return Verdict.INCONCLUSIVE


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return value if np.isfinite(value) else None


def _pick_filter(teacher: dict[ScoreKey, float], student: dict[ScoreKey, float], task: str, metric: str) -> str:
    common = sorted(f for (t, m, f) in teacher if t == task and m == metric and (t, m, f) in student)
    return _PREFERRED_FILTER if _PREFERRED_FILTER in common else common[0]


def _retention_pct(teacher: float, student: float, higher_is_better: bool) -> float | None:
    value = _ratio(student, teacher) if higher_is_better else _ratio(teacher, student)
    return None if value is None else value * 100


def _retention_ci_pct(teacher: float, low: float, high: float, higher_is_better: bool) -> tuple[float | None, ...]:
    """The difference's interval relative to the teacher's score (student = teacher + difference)."""
    if teacher <= 0:
        return None, None
    if higher_is_better:
        return (teacher + low) / teacher * 100, (teacher + high) / teacher * 100
    # teacher / student: the high difference gives the low retention; a student score <= 0 has no bound.
    return tuple(None if teacher + d <= 0 else teacher / (teacher + d) * 100 for d in (high, low))


@dataclass(frozen=True)
class _QualityInput:
    """One (task, metric) of one pair to compare: its scored key, both scores, direction and documents."""

    key: ScoreKey
    scores: tuple[float, float]  # teacher, student
    higher_is_better: bool
    paired: PairedValues  # empty when no document was answered by both
    settings: CompareConfig
    adaptive: AdaptiveTask | None = None  # the task was evaluated in chunks


_NO_DOCUMENTS = PairedValues(np.empty(0), np.empty(0))


def _quality_inputs(
    teacher: dict[ScoreKey, float],
    student: dict[ScoreKey, float],
    paired: Callable[[ScoreKey], PairedValues | None],
    lower_is_better: set[ScoreKey],
    settings: CompareConfig,
    adaptive: Mapping[str, AdaptiveTask] | None = None,
) -> list[_QualityInput]:
    """Every (task, metric) both models scored, at its preferred filter, with its paired documents."""
    inputs = []
    for task, metric in sorted({(t, m) for (t, m, f) in teacher if (t, m, f) in student}):
        key = (task, metric, _pick_filter(teacher, student, task, metric))
        documents = paired(key) or _NO_DOCUMENTS
        scores, higher = (teacher[key], student[key]), key not in lower_is_better
        chunked = (adaptive or {}).get(task)
        if chunked is not None and documents.teacher.size:
            # The teacher evaluates chunks while any of its students is undecided, so its stored score covers
            # more documents than this student's: both scores come from the documents they share.
            scores = (float(documents.teacher.mean()), float(documents.student.mean()))
        inputs.append(_QualityInput(key, scores, higher, documents, settings, chunked))
    return inputs


def _sequential_interval(item: _QualityInput) -> dict[str, Any] | None:
    """An adaptive task's interval: the confidence sequence after all its paired documents, read in their
    evaluation order (it covers at every look at once, so also at the last one, however far past the gate's
    stopping look the stored documents go); None where it does not apply (values outside [0, 1], documents
    without ids), and the fixed-n interval stands. The verdict is read from it as from any interval."""
    from bench.sequential import confidence_bounds, in_unit_interval  # sequential uses this module's verdicts

    paired, task = item.paired, item.adaptive
    if task is None or paired.doc_ids is None or not in_unit_interval(paired.teacher, paired.student):
        return None
    order = np.argsort([task.positions.get(int(doc), len(task.positions)) for doc in paired.doc_ids], kind="stable")
    gains = (paired.student - paired.teacher)[order]
    if not item.higher_is_better:
        gains = -gains
    planned = max(task.planned_documents, gains.size)
    low, high = confidence_bounds(gains, planned, item.settings.confidence)
    diff_low, diff_high = (low, high) if item.higher_is_better else (-high, -low)
    return dict(diff_ci_low=diff_low, diff_ci_high=diff_high, interval_method=IntervalMethod.CONFIDENCE_SEQUENCE)


def _intervals(inputs: list[_QualityInput], seed: int) -> list[dict[str, Any] | None]:
    """Per input, the interval of mean(student - teacher) (None without paired documents), in batches.

    0/1 values: Tango's interval from the discordant counts, with the exact McNemar p, for all inputs of one
    confidence in one call; others: the seeded bootstrap, for all inputs of one resample count in one call.
    """
    found: list[dict[str, Any] | None] = [None] * len(inputs)
    for i, item in enumerate(inputs):
        if item.adaptive is not None and item.paired.teacher.size:
            found[i] = _sequential_interval(item)
    with_documents = [i for i, item in enumerate(inputs) if item.paired.teacher.size and found[i] is None]
    binary = [i for i in with_documents if stats.is_binary(inputs[i].paired.teacher, inputs[i].paired.student)]
    if binary:
        counts = np.array([stats.discordant_counts(inputs[i].paired.teacher, inputs[i].paired.student) for i in binary])
        sizes = np.array([inputs[i].paired.teacher.size for i in binary])
        p_values = stats.mcnemar_exact_p(counts[:, 0], counts[:, 1])
        confidences = np.array([inputs[i].settings.confidence for i in binary])
        lows, highs = np.empty(len(binary)), np.empty(len(binary))
        for confidence in sorted(set(confidences.tolist())):
            rows = confidences == confidence
            lows[rows], highs[rows] = stats.tango_interval(counts[rows, 0], counts[rows, 1], sizes[rows], confidence)
        for row, i in enumerate(binary):
            found[i] = dict(
                diff_ci_low=float(lows[row]), diff_ci_high=float(highs[row]),
                discordant_student_only=int(counts[row, 0]), discordant_teacher_only=int(counts[row, 1]),
                mcnemar_p=float(p_values[row]), interval_method=IntervalMethod.TANGO_CC,
            )  # fmt: skip
    continuous = sorted(set(with_documents) - set(binary))
    for samples in sorted({inputs[i].settings.bootstrap_samples for i in continuous}):
        members = [i for i in continuous if inputs[i].settings.bootstrap_samples == samples]
        diffs = [inputs[i].paired.student - inputs[i].paired.teacher for i in members]
        confidences = [inputs[i].settings.confidence for i in members]
        for i, (low, high) in zip(members, stats.bootstrap_cis(diffs, confidences, samples, seed), strict=True):
            found[i] = dict(diff_ci_low=low, diff_ci_high=high, interval_method=IntervalMethod.BOOTSTRAP)
    return found


def _quality(item: _QualityInput, interval: dict[str, Any] | None) -> QualityComparison:
    (teacher_score, student_score), higher_is_better, paired = item.scores, item.higher_is_better, item.paired
    fields: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(QualityComparison))
    fields.update(task=item.key[0], metric=item.key[1], filter=item.key[2], teacher_score=teacher_score)
    fields.update(student_score=student_score, higher_is_better=higher_is_better, n_paired=int(paired.teacher.size))
    fields.update(retention_pct=_retention_pct(teacher_score, student_score, higher_is_better))
    fields.update(verdict=Verdict.NO_DATA)
    if interval is not None:
        low, high = interval["diff_ci_low"], interval["diff_ci_high"]
        fields.update(interval, diff_mean=float((paired.student - paired.teacher).mean()))
        fields.update(verdict=verdict(low, high, item.settings.retention_margin, higher_is_better))
        retention = _retention_ci_pct(teacher_score, low, high, higher_is_better)
        fields.update(retention_ci_low_pct=retention[0], retention_ci_high_pct=retention[1])
    return QualityComparison(**fields)


def _qualities(inputs: list[_QualityInput], seed: int) -> list[QualityComparison]:
    return [_quality(item, interval) for item, interval in zip(inputs, _intervals(inputs, seed), strict=True)]


def compare_quality(
    teacher: dict[ScoreKey, float],
    student: dict[ScoreKey, float],
    paired: dict[ScoreKey, PairedValues],
    lower_is_better: set[ScoreKey],
    settings: CompareConfig,
    seed: int,
    adaptive: Mapping[str, AdaptiveTask] | None = None,
) -> list[QualityComparison]:
    """Every (task, metric) both models scored, with the paired per-document values (`adaptive`: the tasks
    the run evaluated in chunks, read from their confidence sequence)."""
    return _qualities(_quality_inputs(teacher, student, paired.get, lower_is_better, settings, adaptive), seed)


# Ratio field -> the perf_summary column it divides: output tokens/s, $/Mtok, J/token, capacity (sweeps).
_RATIOS = ("throughput_ratio", "usd_per_mtok_ratio", "j_per_token_ratio", "capacity_ratio")
_RATIO_COLUMNS = dict(zip(_RATIOS, pairing.PERF_VALUES, strict=True))


def compare_workload(
    workload: PairedWorkload, confidence: float, distillation: pairing.Distillation | None = None
) -> PerfComparison:
    """Student / teacher ratios of one workload over its paired blocks, each with its t-interval, and, for a
    student whose distillation cost is known, the break-even volume at this workload's $/Mtok."""
    fields: dict[str, Any] = dict(workload=workload.workload, level=workload.level, n_blocks=len(workload.blocks))
    fields["blocks_cross_session"] = workload.blocks_cross_session
    for name, column in _RATIO_COLUMNS.items():
        estimate = stats.log_ratio_estimate(*workload.values(column), confidence)
        fields[name] = None if estimate is None else estimate.ratio
        fields[f"{name}_ci_low"] = None if estimate is None else estimate.ci_low
        fields[f"{name}_ci_high"] = None if estimate is None else estimate.ci_high
    return PerfComparison(**fields, **_break_even(workload, confidence, distillation))


def _break_even(
    workload: PairedWorkload, confidence: float, distillation: pairing.Distillation | None
) -> dict[str, float | None]:
    if distillation is None:
        return {}
    student, teacher = workload.values("usd_per_mtok_output")
    _, teacher_rate = workload.means("usd_per_mtok_output")
    cost = tco.distillation_usd(distillation.training_usd, distillation.teacher_tokens, teacher_rate)
    result = tco.break_even(cost, teacher, student, confidence) if cost is not None else None
    if result is None:
        return {"distillation_usd": cost}
    return {
        "distillation_usd": cost,
        "saving_usd_per_mtok": result.saving_usd_per_mtok,
        "saving_usd_per_mtok_ci_low": result.saving_ci_low,
        "saving_usd_per_mtok_ci_high": result.saving_ci_high,
        "break_even_mtok": result.mtok,
        "break_even_ci_low_mtok": result.ci_low_mtok,
        "break_even_ci_high_mtok": result.ci_high_mtok,
    }


def _fields(record: Any) -> dict[str, Any]:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def _row(
    pair: Pair,
    quality: QualityComparison | None,
    perf: PerfComparison | None,
    settings: CompareConfig,
    control: bool = False,
) -> ComparisonRow:
    # The parts' field names are ComparisonRow's own; fields a row lacks (no eval, no perf) stay None.
    fields: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(ComparisonRow))
    fields.update(_fields(pair), n_paired=0, verdict=Verdict.NO_DATA, n_blocks=0, blocks_cross_session=0)
    fields.update(retention_margin=settings.retention_margin, confidence=settings.confidence, control=control)
    fields.update(compute_matched=False)
    fields.update(_fields(quality) if quality else {})
    fields.update(_fields(perf) if perf else {})
    row = ComparisonRow(**{**fields, "summary": ""})
    row = dataclasses.replace(row, cost_verdict=report.cost_verdict(row))
    return dataclasses.replace(row, summary=report.summary(row))


def _workloads(perf: dict[tuple[str, str], list[dict[str, Any]]], pair: Pair) -> list[PairedWorkload]:
    teacher, student = perf.get((pair.run_id, pair.teacher), []), perf.get((pair.run_id, pair.student), [])
    return pairing.paired_workloads(teacher, student)


def compare_runs(
    inputs: pairing.RunInputs, settings: CompareConfig | None = None, seed: int = 0
) -> list[ComparisonRow]:
    """Every student against its teacher, and every configured control, in the runs read into `inputs`.

    Each student pair gets its rows for every compared task metric crossed with every compared workload (a
    pair with nothing comparable still gets a "no-data" row, so a missing student is visible); a control
    (`pair.teacher` and `pair.student` are two models of the same architecture) gets perf-only rows. The
    documents of every pair are paired in one pass and the intervals computed in batches.
    """
    tables = inputs.tables
    models = pairing.run_models(tables["models"])
    settings_of = {run_id: settings or inputs.settings.get(run_id, CompareConfig()) for run_id in models}
    students = pairing.pairs(tables["models"])
    scores = pairing.scores_by_model(tables["eval_scores"])
    documents = pairing.paired_documents(tables["eval_samples"], students)
    perf = pairing.perf_rows_by_model(tables["perf_summary"])
    distilled = pairing.distillations(tables["models"])
    none = pairing.ModelScores({}, set())
    quality_inputs = {
        pair: _quality_inputs(
            scores.get((pair.run_id, pair.teacher), none).values, scores.get((pair.run_id, pair.student), none).values,
            partial(documents.get, pair), scores.get((pair.run_id, pair.teacher), none).lower_is_better,
            settings_of[pair.run_id], inputs.adaptive.get(pair.run_id),
        )
        for pair in students
    }  # fmt: skip
    flat = [item for items in quality_inputs.values() for item in items]
    computed = iter(_qualities(flat, seed))
    qualities = {pair: [next(computed) for _ in items] for pair, items in quality_inputs.items()}
    by_run: dict[str, list[Pair]] = {}
    for pair in students:
        by_run.setdefault(pair.run_id, []).append(pair)
    from bench import matched  # matched uses this module's verdicts

    matched_samples = matched.sample_groups(tables["eval_samples"], settings_of)
    rows = []
    for run_id in sorted(models):
        run_settings = settings_of[run_id]
        for pair in by_run.get(run_id, []):
            workloads = _workloads(perf, pair)
            distillation = distilled.get((run_id, pair.student))
            perfs = [compare_workload(workload, run_settings.confidence, distillation) for workload in workloads]
            rows += [
                _row(pair, quality, perf_row, run_settings)
                for quality, perf_row in itertools.product(qualities[pair] or [None], perfs or [None])
            ]
            rows += matched.pair_rows(pair, run_settings, matched_samples, workloads)
        for first, second in run_settings.controls:
            if {first, second} <= models[run_id]:
                control = Pair(run_id, first, second)
                perfs = [compare_workload(workload, run_settings.confidence) for workload in _workloads(perf, control)]
                rows += [_row(control, None, perf_row, run_settings, control=True) for perf_row in perfs or [None]]
    return rows


RUNS_PER_BATCH = 32  # runs read and compared together: bounded memory, and few enough batches to stay cheap


def compare_results(
    results_dir: Path,
    settings: CompareConfig | None = None,
    seed: int = 0,
    skipped: list[store.SkippedFile] | None = None,
) -> list[ComparisonRow]:
    """Compare every student with its teacher, and every configured control, under a results directory.

    `settings` overrides the compare settings that each run's manifest recorded. Rows are sorted and the
    bootstrap is seeded, so the same results always give the same rows. Damaged or foreign files are left
    out and listed in `skipped`; without a list, or for a damaged manifest, `store.StoreError` is raised.

    With the run's own settings and seed 0 (what the commands use), a run whose `comparison.parquet` is
    current gives its stored rows, and a run compared from its files stores them (`bench.comparison_file`).
    """
    runs = store.readable_runs(results_dir, skipped)
    stored = settings is None and seed == 0
    keys = {run: comparison_file.fingerprint(run, pairing.TABLES) for run in runs} if stored else {}
    fresh, found = comparison_file.load_fresh(keys) if stored else (set(), [])
    rows = [_stored_row(row) for row in found]
    pending = [run for run in runs if run not in fresh]
    for start in range(0, len(pending), RUNS_PER_BATCH):
        batch = pending[start : start + RUNS_PER_BATCH]
        inputs = pairing.read_runs(batch, skipped)
        computed = compare_runs(inputs, settings, seed)
        rows += computed
        if stored:
            _store(batch, inputs, computed, keys)
    return sorted(rows, key=_sort_key)


def _store(runs: list[Path], inputs: pairing.RunInputs, rows: list[ComparisonRow], keys: dict[Path, str]) -> None:
    """Write each cleanly read run's rows to its comparison.parquet, unless the run changed while it was read."""
    by_run: dict[str, list[ComparisonRow]] = {}
    for row in rows:
        by_run.setdefault(row.run_id, []).append(row)
    for run in runs:
        if run.name in inputs.clean and comparison_file.fingerprint(run, pairing.TABLES) == keys[run]:
            table = store.records_table(ComparisonRow, by_run.get(run.name, []))
            comparison_file.save(run, table, keys[run], inputs.cells[run.name])


def _stored_row(row: dict[str, Any]) -> ComparisonRow:
    method, scoring = row["interval_method"], row["scoring"]
    vocabularies = {"verdict": Verdict(row["verdict"]), "interval_method": method and IntervalMethod(method)}
    return ComparisonRow(**row | vocabularies | {"scoring": scoring and Scoring(scoring)})


def _sort_key(row: ComparisonRow) -> tuple:
    return (
        row.run_id, row.control, row.teacher, row.student, row.compute_matched, row.task or "", row.metric or "",
        row.workload or "", row.level or 0, row.k or 0, row.scoring or "",
    )  # fmt: skip
