"""Teacher/student comparison: pairing, paired bootstrap CIs, non-inferiority verdicts, cost ratios.

Works from stored results alone (`store.read_table`), so a comparison re-renders without re-running.
Each student is paired with its teacher within the same run, so both were measured on the same hardware.

Quality: the CI is of the mean per-document difference (student - teacher) over documents both models
answered, resampling documents (a paired bootstrap): pairing removes the per-document difficulty that both
models share, so the CI is far tighter than comparing two independent scores. The verdict tests that
difference against the run's absolute `retention_margin`, oriented by the metric's direction (lm-eval's
`higher_is_better`, stored in `eval_scores`): for a lower-is-better metric such as perplexity, a student whose
score is lower is the better one, and retention is teacher / student.
Speed and cost: ratios of the student's perf summary to the teacher's for the same workload, at the
highest load level both ran, where throughput is closest to the server's capacity.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench import store
from bench.config import CompareConfig

# Bound the bootstrap's index matrix (draws x documents) so big tasks do not need gigabytes.
_MAX_DRAWS_PER_CHUNK = 2_000_000
_DOC_KEYS = ("task", "metric", "filter", "doc_id")
_PREFERRED_FILTER = "none"

ScoreKey = tuple[str, str, str]  # task, metric, filter


@dataclass(frozen=True)
class Pair:
    """A student and its teacher in one run."""

    run_id: str
    teacher: str
    student: str


@dataclass(frozen=True)
class QualityComparison:
    """One (task, metric) of a pair: scores, retention and the paired CI of the difference."""

    task: str
    metric: str
    filter: str
    teacher_score: float
    student_score: float
    retention_pct: float | None  # None when the teacher scores 0
    diff_mean: float | None  # mean per-document (student - teacher) over paired documents
    diff_ci_low: float | None
    diff_ci_high: float | None
    n_paired: int
    verdict: str  # "better", "non-inferior", "inconclusive", "inferior", or "no-data" without paired samples
    higher_is_better: bool


@dataclass(frozen=True)
class PerfComparison:
    """One workload of a pair at the highest load level both models ran."""

    workload: str
    level: float
    throughput_ratio: float | None  # student / teacher output tokens per second
    usd_per_mtok_ratio: float | None  # student / teacher $ per million output tokens
    j_per_token_ratio: float | None  # student / teacher joules per output token


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
    diff_mean: float | None
    diff_ci_low: float | None
    diff_ci_high: float | None
    n_paired: int
    verdict: str
    higher_is_better: bool | None
    retention_margin: float
    confidence: float
    workload: str | None
    level: float | None
    throughput_ratio: float | None
    usd_per_mtok_ratio: float | None
    j_per_token_ratio: float | None
    summary: str
    # STUB (leaderboard branch h-board only; drop at merge in favour of helper "stats"'s fields): the
    # schema-3 fields named in the contract, defaulted so the leaderboard's code and tests run before them.
    discordant_student_only: int | None = None
    discordant_teacher_only: int | None = None
    mcnemar_p: float | None = None
    interval_method: str | None = None
    retention_ci_low_pct: float | None = None
    retention_ci_high_pct: float | None = None
    throughput_ratio_ci_low: float | None = None
    throughput_ratio_ci_high: float | None = None
    usd_per_mtok_ratio_ci_low: float | None = None
    usd_per_mtok_ratio_ci_high: float | None = None
    j_per_token_ratio_ci_low: float | None = None
    j_per_token_ratio_ci_high: float | None = None
    capacity_ratio: float | None = None
    capacity_ratio_ci_low: float | None = None
    capacity_ratio_ci_high: float | None = None
    n_blocks: int = 0
    blocks_cross_session: int = 0
    cost_verdict: str | None = None
    control: bool = False


# -- statistics ---------------------------------------------------------------------------------------


def bootstrap_ci(diffs: np.ndarray, confidence: float, samples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences, resampling documents with a seeded RNG."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        raise ValueError("bootstrap_ci needs at least one paired difference")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // diffs.size)
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        means[start:stop] = diffs[rng.integers(0, diffs.size, size=(stop - start, diffs.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def verdict(diff_ci_low: float, diff_ci_high: float, retention_margin: float, higher_is_better: bool = True) -> str:
    """Non-inferiority at an absolute margin: is the whole CI of the student's gain above -margin?

    The CI is of (student - teacher); the gain is that difference where higher is better, its negation where
    lower is better.
    """
    low, high = (diff_ci_low, diff_ci_high) if higher_is_better else (-diff_ci_high, -diff_ci_low)
    if low > 0:
        return "better"
    if low > -retention_margin:
        return "non-inferior"
    if high < -retention_margin:
        return "inferior"
    return "inconclusive"


def _ratio(student: float | None, teacher: float | None) -> float | None:
    if student is None or teacher is None or teacher == 0:
        return None
    value = student / teacher
    return value if math.isfinite(value) else None


# -- reading the stored tables ------------------------------------------------------------------------


def _select(table: pa.Table, run_id: str, model: str) -> pa.Table:
    return table.filter(pc.and_(pc.equal(table["run_id"], run_id), pc.equal(table["model"], model)))


def _pairs(models: pa.Table) -> list[Pair]:
    found = {
        Pair(row["run_id"], row["teacher"], row["name"])
        for row in models.to_pylist()
        if row["role"] == "student" and row["teacher"]
    }
    return sorted(found, key=dataclasses.astuple)


def _scores(eval_scores: pa.Table, run_id: str, model: str) -> dict[ScoreKey, float]:
    return {
        (row["task"], row["metric"], row["filter"]): row["value"]
        for row in _select(eval_scores, run_id, model).to_pylist()
    }


def _lower_is_better(eval_scores: pa.Table, run_id: str, model: str) -> set[ScoreKey]:
    # A null direction (older results, tasks that give none) counts as higher is better.
    return {
        (row["task"], row["metric"], row["filter"])
        for row in _select(eval_scores, run_id, model).to_pylist()
        if row["higher_is_better"] is False
    }


def _doc_values(eval_samples: pa.Table, run_id: str, model: str) -> pa.Table:
    # Averaging repeated rows of a document keeps the join one-to-one.
    return _select(eval_samples, run_id, model).group_by(list(_DOC_KEYS)).aggregate([("value", "mean")])


def _paired_diffs(eval_samples: pa.Table, pair: Pair) -> dict[ScoreKey, np.ndarray]:
    """Per-document (student - teacher) differences for every (task, metric, filter), ordered by doc_id."""
    teacher = _doc_values(eval_samples, pair.run_id, pair.teacher)
    student = _doc_values(eval_samples, pair.run_id, pair.student)
    joined = teacher.join(student, keys=list(_DOC_KEYS), left_suffix="_teacher", right_suffix="_student")
    # Join output order is unspecified; sort so the seeded bootstrap sees the same vector every time.
    joined = joined.sort_by([(key, "ascending") for key in _DOC_KEYS])
    diffs = pc.subtract(joined["value_mean_student"], joined["value_mean_teacher"]).to_numpy(zero_copy_only=False)
    keys = zip(*(joined[key].to_pylist() for key in _DOC_KEYS[:3]), strict=True)
    grouped: dict[ScoreKey, np.ndarray] = {}
    position = 0
    for key, group in itertools.groupby(keys):
        size = sum(1 for _ in group)
        grouped[key] = diffs[position : position + size]
        position += size
    return grouped


def _perf_levels(perf_summary: pa.Table, run_id: str, model: str) -> dict[tuple[str, float], dict[str, Any]]:
    return {(row["workload"], row["level"]): row for row in _select(perf_summary, run_id, model).to_pylist()}


def _manifest_settings(results_dir: Path) -> dict[str, CompareConfig]:
    """Each run's compare settings from its manifest's config dump (defaults where it has none)."""
    settings = {}
    for run_dir in store.run_dirs(results_dir):
        try:
            config = store.read_manifest(run_dir).get("config", {})
        except FileNotFoundError:
            config = {}
        # Only the compare section: an older manifest's other sections need not validate today.
        settings[run_dir.name] = CompareConfig.model_validate(config.get("compare", {}))
    return settings


def _current_cell_keys(results_dir: Path) -> dict[str, set[str]]:
    """Per run, the cell and model keys its manifest lists: those of its latest config and input files.

    A run directory resumed with a changed config or rebuilt weights keeps the old cells on disk; only the
    current ones are compared, so old and new results never mix. The keys are read, not recomputed, so a
    comparison needs neither the config's model directories nor the harness version that ran it. Runs whose
    manifest lists no keys are compared whole.
    """
    current = {}
    for run_dir in store.run_dirs(results_dir):
        try:
            current[run_dir.name] = set(store.read_manifest(run_dir)["cell_keys"])
        except (FileNotFoundError, KeyError):
            continue
    return current


def _only_current(table: pa.Table, current: dict[str, set[str]]) -> pa.Table:
    if not current or table.num_rows == 0:
        return table
    keep = [
        run_id not in current or cell_key in current[run_id]
        for run_id, cell_key in zip(table["run_id"].to_pylist(), table["cell_key"].to_pylist(), strict=True)
    ]
    return table.filter(pa.array(keep, type=pa.bool_()))


# -- comparing ----------------------------------------------------------------------------------------


def _pick_filter(teacher: dict[ScoreKey, float], student: dict[ScoreKey, float], task: str, metric: str) -> str:
    common = sorted(f for (t, m, f) in teacher if t == task and m == metric and (t, m, f) in student)
    return _PREFERRED_FILTER if _PREFERRED_FILTER in common else common[0]


def _quality(
    key: ScoreKey,
    scores: tuple[float, float],
    higher_is_better: bool,
    paired: np.ndarray,
    settings: CompareConfig,
    seed: int,
) -> QualityComparison:
    teacher_score, student_score = scores
    retention = _ratio(student_score, teacher_score) if higher_is_better else _ratio(teacher_score, student_score)
    mean = low = high = None
    outcome = "no-data"
    if paired.size:
        mean = float(paired.mean())
        low, high = bootstrap_ci(paired, settings.confidence, settings.bootstrap_samples, seed)
        outcome = verdict(low, high, settings.retention_margin, higher_is_better)
    return QualityComparison(
        task=key[0],
        metric=key[1],
        filter=key[2],
        teacher_score=teacher_score,
        student_score=student_score,
        retention_pct=None if retention is None else retention * 100,
        diff_mean=mean,
        diff_ci_low=low,
        diff_ci_high=high,
        n_paired=int(paired.size),
        verdict=outcome,
        higher_is_better=higher_is_better,
    )


def compare_quality(
    teacher: dict[ScoreKey, float],
    student: dict[ScoreKey, float],
    diffs: dict[ScoreKey, np.ndarray],
    lower_is_better: set[ScoreKey],
    settings: CompareConfig,
    seed: int,
) -> list[QualityComparison]:
    """Every (task, metric) both models scored, with the paired (student - teacher) differences."""
    results = []
    for task, metric in sorted({(t, m) for (t, m, f) in teacher if (t, m, f) in student}):
        key = (task, metric, _pick_filter(teacher, student, task, metric))
        scores, paired = (teacher[key], student[key]), diffs.get(key, np.empty(0))
        results.append(_quality(key, scores, key not in lower_is_better, paired, settings, seed))
    return results


def compare_perf(
    teacher: dict[tuple[str, float], dict[str, Any]], student: dict[tuple[str, float], dict[str, Any]]
) -> list[PerfComparison]:
    """Per workload, student/teacher ratios at the highest load level both models ran."""
    results = []
    for workload in sorted({w for (w, _) in teacher}):
        levels = [level for (w, level) in teacher if w == workload and (w, level) in student]
        if not levels:
            continue
        level = max(levels)
        t, s = teacher[(workload, level)], student[(workload, level)]
        results.append(
            PerfComparison(
                workload=workload,
                level=level,
                throughput_ratio=_ratio(s["output_tokens_per_s"], t["output_tokens_per_s"]),
                usd_per_mtok_ratio=_ratio(s["usd_per_mtok_output"], t["usd_per_mtok_output"]),
                j_per_token_ratio=_ratio(s["j_per_output_token"], t["j_per_output_token"]),
            )
        )
    return results


def _row(
    pair: Pair, quality: QualityComparison | None, perf: PerfComparison | None, settings: CompareConfig
) -> ComparisonRow:
    # The parts' field names are ComparisonRow's own; fields a row lacks (no eval, no perf) stay None.
    fields: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(ComparisonRow))
    fields.update(dataclasses.asdict(pair), n_paired=0, verdict="no-data")
    fields.update(retention_margin=settings.retention_margin, confidence=settings.confidence)
    fields.update(dataclasses.asdict(quality) if quality else {})
    fields.update(dataclasses.asdict(perf) if perf else {})
    fields["summary"] = _summary(pair, quality, perf, settings)
    return ComparisonRow(**fields)


def compare_pair(tables: dict[str, pa.Table], pair: Pair, settings: CompareConfig, seed: int) -> list[ComparisonRow]:
    """Rows for one pair: every compared task metric crossed with every compared workload."""
    qualities = compare_quality(
        _scores(tables["eval_scores"], pair.run_id, pair.teacher),
        _scores(tables["eval_scores"], pair.run_id, pair.student),
        _paired_diffs(tables["eval_samples"], pair),
        _lower_is_better(tables["eval_scores"], pair.run_id, pair.teacher),
        settings,
        seed,
    )
    perfs = compare_perf(
        _perf_levels(tables["perf_summary"], pair.run_id, pair.teacher),
        _perf_levels(tables["perf_summary"], pair.run_id, pair.student),
    )
    # A pair with nothing comparable still gets a "no-data" row, so a missing student is visible.
    return [
        _row(pair, quality, perf, settings) for quality, perf in itertools.product(qualities or [None], perfs or [None])
    ]


def compare_results(results_dir: Path, settings: CompareConfig | None = None, seed: int = 0) -> list[ComparisonRow]:
    """Compare every student with its teacher under a results directory (or one run directory).

    `settings` overrides the compare settings that each run's manifest recorded. Rows are sorted and the
    bootstrap is seeded, so the same results always give the same rows.
    """
    names = ("models", "eval_scores", "eval_samples", "perf_summary")
    current = _current_cell_keys(results_dir)
    tables = {name: _only_current(store.read_table(results_dir, name), current) for name in names}
    by_run = _manifest_settings(results_dir)
    rows = [
        row
        for pair in _pairs(tables["models"])
        for row in compare_pair(tables, pair, settings or by_run.get(pair.run_id, CompareConfig()), seed)
    ]
    return sorted(rows, key=_sort_key)


def _sort_key(row: ComparisonRow) -> tuple:
    return (row.run_id, row.teacher, row.student, row.task or "", row.metric or "", row.workload or "", row.level or 0)


# -- the one-line summary ----------------------------------------------------------------------------------------


def _summary(
    pair: Pair, quality: QualityComparison | None, perf: PerfComparison | None, settings: CompareConfig
) -> str:
    """One line a person can read: how much quality the student keeps, at what speed and cost."""
    text = f"{pair.student} vs {pair.teacher}" + ("" if quality or perf else ": no comparable results")
    if quality:
        kept = (
            f"keeps {quality.retention_pct:.1f}% of {pair.teacher}'s {quality.metric}"
            if quality.retention_pct is not None
            else f"scores {quality.student_score:.3f} vs {pair.teacher}'s {quality.teacher_score:.3f} {quality.metric}"
        )
        paired = f"CI of diff {format_ci(quality.diff_ci_low, quality.diff_ci_high)}"
        text = f"{pair.student} {kept} on {quality.task} ({paired}, n={quality.n_paired})"
    if perf:
        ratios = (
            (perf.throughput_ratio, "throughput"),
            (perf.usd_per_mtok_ratio, "$/Mtok"),
            (perf.j_per_token_ratio, "J/token"),
        )
        costs = [f"{ratio:.2f}x {unit}" for ratio, unit in ratios if ratio is not None]
        text += f" at {', '.join(costs)} ({perf.workload} @ {perf.level:g})"
    if quality:
        text += f": {quality.verdict} at margin {settings.retention_margin:g}"
    return text


def format_value(value: float | None, spec: str) -> str:
    """A number for a table cell; "-" when missing."""
    return "-" if value is None else format(value, spec)


def format_ci(low: float | None, high: float | None) -> str:
    """A confidence interval as "low..high"; "-" when missing."""
    return "-" if low is None or high is None else f"{low:+.3f}..{high:+.3f}"
