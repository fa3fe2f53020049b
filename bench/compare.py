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
models of the same architecture the same way: its interval should contain 1.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench import pairing, report, stats, store
from bench.config import CompareConfig
from bench.pairing import Pair, PairedValues, PairedWorkload, ScoreKey

_PREFERRED_FILTER = "none"


class Verdict(StrEnum):
    """Non-inferiority of the student on one task metric, from the interval of (student - teacher)."""

    BETTER = "better"
    NON_INFERIOR = "non-inferior"
    INCONCLUSIVE = "inconclusive"
    INFERIOR = "inferior"
    NO_DATA = "no-data"  # no document both models answered


class IntervalMethod(StrEnum):
    """How a quality interval was computed."""

    TANGO_CC = "tango-cc"  # every paired value is 0/1: Tango's score interval, continuity-corrected
    BOOTSTRAP = "bootstrap"  # percentile bootstrap over documents


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
    cost_verdict: str | None  # e.g. "≥ 2.1x cheaper", or the $/Mtok ratio with its interval
    control: bool  # a control row: two models of the same architecture, perf only
    summary: str


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


def _interval(paired: PairedValues, settings: CompareConfig, seed: int) -> dict[str, Any]:
    """The interval of mean(student - teacher), with the discordant counts and McNemar p for 0/1 values."""
    if stats.is_binary(paired.teacher, paired.student):
        b, c = stats.discordant_counts(paired.teacher, paired.student)
        low, high = stats.paired_binary_ci(paired.teacher, paired.student, settings.confidence)
        return dict(
            diff_ci_low=low, diff_ci_high=high, discordant_student_only=b, discordant_teacher_only=c,
            mcnemar_p=stats.mcnemar_exact_p(b, c), interval_method=IntervalMethod.TANGO_CC,
        )  # fmt: skip
    diffs = paired.student - paired.teacher
    low, high = stats.bootstrap_ci(diffs, settings.confidence, settings.bootstrap_samples, seed)
    return dict(diff_ci_low=low, diff_ci_high=high, interval_method=IntervalMethod.BOOTSTRAP)


def _quality(
    key: ScoreKey,
    scores: tuple[float, float],
    higher_is_better: bool,
    paired: PairedValues,
    settings: CompareConfig,
    seed: int,
) -> QualityComparison:
    teacher_score, student_score = scores
    fields: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(QualityComparison))
    fields.update(task=key[0], metric=key[1], filter=key[2], teacher_score=teacher_score)
    fields.update(student_score=student_score, higher_is_better=higher_is_better, n_paired=int(paired.teacher.size))
    fields.update(retention_pct=_retention_pct(teacher_score, student_score, higher_is_better))
    fields.update(verdict=Verdict.NO_DATA)
    if paired.teacher.size:
        interval = _interval(paired, settings, seed)
        low, high = interval["diff_ci_low"], interval["diff_ci_high"]
        fields.update(interval, diff_mean=float((paired.student - paired.teacher).mean()))
        fields.update(verdict=verdict(low, high, settings.retention_margin, higher_is_better))
        retention = _retention_ci_pct(teacher_score, low, high, higher_is_better)
        fields.update(retention_ci_low_pct=retention[0], retention_ci_high_pct=retention[1])
    return QualityComparison(**fields)


def compare_quality(
    teacher: dict[ScoreKey, float],
    student: dict[ScoreKey, float],
    paired: dict[ScoreKey, PairedValues],
    lower_is_better: set[ScoreKey],
    settings: CompareConfig,
    seed: int,
) -> list[QualityComparison]:
    """Every (task, metric) both models scored, with the paired per-document values."""
    empty = PairedValues(np.empty(0), np.empty(0))
    results = []
    for task, metric in sorted({(t, m) for (t, m, f) in teacher if (t, m, f) in student}):
        key = (task, metric, _pick_filter(teacher, student, task, metric))
        scores = (teacher[key], student[key])
        results.append(_quality(key, scores, key not in lower_is_better, paired.get(key, empty), settings, seed))
    return results


_RATIO_COLUMNS = {
    "throughput_ratio": "output_tokens_per_s",
    "usd_per_mtok_ratio": "usd_per_mtok_output",
    "j_per_token_ratio": "j_per_output_token",
    "capacity_ratio": "capacity_requests_per_s",
}


def compare_workload(workload: PairedWorkload, confidence: float) -> PerfComparison:
    """Student / teacher ratios of one workload over its paired blocks, each with its t-interval."""
    fields: dict[str, Any] = dict(workload=workload.workload, level=workload.level, n_blocks=len(workload.blocks))
    fields["blocks_cross_session"] = workload.blocks_cross_session
    for name, column in _RATIO_COLUMNS.items():
        estimate = stats.log_ratio_estimate(*workload.values(column), confidence)
        fields[name] = None if estimate is None else estimate.ratio
        fields[f"{name}_ci_low"] = None if estimate is None else estimate.ci_low
        fields[f"{name}_ci_high"] = None if estimate is None else estimate.ci_high
    return PerfComparison(**fields)


def _row(
    pair: Pair,
    quality: QualityComparison | None,
    perf: PerfComparison | None,
    settings: CompareConfig,
    control: bool = False,
) -> ComparisonRow:
    # The parts' field names are ComparisonRow's own; fields a row lacks (no eval, no perf) stay None.
    fields: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(ComparisonRow))
    fields.update(dataclasses.asdict(pair), n_paired=0, verdict=Verdict.NO_DATA, n_blocks=0, blocks_cross_session=0)
    fields.update(retention_margin=settings.retention_margin, confidence=settings.confidence, control=control)
    fields.update(dataclasses.asdict(quality) if quality else {})
    fields.update(dataclasses.asdict(perf) if perf else {})
    row = ComparisonRow(**{**fields, "summary": ""})
    row = dataclasses.replace(row, cost_verdict=report.cost_verdict(row))
    return dataclasses.replace(row, summary=report.summary(row))


def compare_pair(tables: dict[str, pa.Table], pair: Pair, settings: CompareConfig, seed: int) -> list[ComparisonRow]:
    """Rows for one pair: every compared task metric crossed with every compared workload."""
    scores, samples = tables["eval_scores"], tables["eval_samples"]
    qualities = compare_quality(
        pairing.scores(scores, pair.run_id, pair.teacher),
        pairing.scores(scores, pair.run_id, pair.student),
        pairing.paired_values(samples, pair),
        pairing.lower_is_better(scores, pair.run_id, pair.teacher),
        settings,
        seed,
    )
    perfs = [compare_workload(w, settings.confidence) for w in pairing.paired_workloads(tables["perf_summary"], pair)]
    # A pair with nothing comparable still gets a "no-data" row, so a missing student is visible.
    return [
        _row(pair, quality, perf, settings) for quality, perf in itertools.product(qualities or [None], perfs or [None])
    ]


def compare_control(tables: dict[str, pa.Table], pair: Pair, settings: CompareConfig) -> list[ComparisonRow]:
    """Perf-only rows for a control: `pair.teacher` and `pair.student` are two models of the same architecture."""
    workloads = pairing.paired_workloads(tables["perf_summary"], pair)
    perfs = [compare_workload(w, settings.confidence) for w in workloads]
    return [_row(pair, None, perf, settings, control=True) for perf in perfs or [None]]


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
    """
    tables = pairing.read_tables(results_dir, skipped)
    by_run = pairing.manifest_settings(results_dir, skipped)
    models = pairing.run_models(tables["models"])
    rows = []
    for run_id in sorted(models):
        run_settings = settings or by_run.get(run_id, CompareConfig())
        for pair in (p for p in pairing.pairs(tables["models"]) if p.run_id == run_id):
            rows += compare_pair(tables, pair, run_settings, seed)
        for first, second in run_settings.controls:
            if {first, second} <= models[run_id]:
                rows += compare_control(tables, Pair(run_id, first, second), run_settings)
    return sorted(rows, key=_sort_key)


def _sort_key(row: ComparisonRow) -> tuple:
    return (
        row.run_id, row.control, row.teacher, row.student, row.task or "", row.metric or "", row.workload or "",
        row.level or 0,
    )  # fmt: skip
