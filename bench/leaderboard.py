"""The leaderboard: every student ranked, with its evidence, as Parquet, Markdown, an HTML page and a Pareto plot.

Built from comparison rows only (`compare.compare_results`), so it re-renders from stored results at any
time and each number traces back to them. One entry per (run, student, workload): the student's quality
over every task metric it was compared on beside its speed and cost ratios to its teacher for that workload,
each with its interval.

Quality kept. Per task metric, compare gives the retention (student / teacher, %) and its interval
(`retention_ci_low_pct` .. `retention_ci_high_pct`). An entry reports the **unweighted mean of the per-task
retentions**, and as its interval the **mean of the per-task lower bounds .. the mean of the per-task upper
bounds**. That interval is conservative, not exact: if each task's estimate is roughly normal, the mean's
interval has half-width sd(sum of estimates) / k, and sd of a sum is at most the sum of the sds whatever the
correlation between tasks, so the mean of the bounds is at least as wide as the mean's own interval. When
any task lacks an interval (no paired documents, a teacher scoring 0), the entry has none: a mean over some
tasks' bounds would not bound the mean over all of them. The verdict is the worst task's: a student is only
as non-inferior as its worst task, which is why the page's drill-down lists every task.

Cost. The ratios (throughput, $/Mtok, J/token, capacity under the SLO for sweep workloads) and their
intervals are compare's, per workload: exp(mean per-block log ratio) with a t-interval over `n_blocks`
blocks (none with fewer than 2). `cost_verdict` is compare's sentence ("≥ 2.1x cheaper" only when the
interval's bound supports it).

Ranking: students non-inferior (or better) on every task first, fastest first (point estimate; the intervals
are printed beside it); then the rest, inconclusive before inferior, each fastest first.
Controls (`control=True` rows: two models of the same architecture, perf only) are not students. They get a
small section of their own, with whether each throughput interval contains 1, as it should.
The Pareto plot and the HTML page are in `bench.leaderboard_page`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bench import store
from bench.compare import ComparisonRow, Scoring
from bench.report import format_value, markdown_table, markdown_text

VERDICTS_WORST_FIRST = ("no-data", "inferior", "inconclusive", "non-inferior", "better")
PASSING = frozenset({"non-inferior", "better"})
FILES = ("leaderboard.parquet", "controls.parquet", "leaderboard.md", "pareto.svg", "index.html")

GroupKey = tuple[str, str, str, str | None, float | None]  # run, student, teacher, workload, level
DocsToDecision = Mapping[tuple[str, str, str], float]  # (run, teacher, student) -> share of documents


class MatchedStatus(StrEnum):
    """What compute-matched quality says of an entry: does k answers' majority vote match the teacher's pass@1
    at no more than the teacher's $/question, on every configured task?"""

    MATCHED = "matched"  # yes, at `smallest_matching_k` (the largest of the tasks' smallest matching k)
    NONE_WITHIN_BUDGET = "none-within-budget"  # on some task no affordable k is non-inferior
    NOT_PRICED = "not-priced"  # an answer has no $ (results without response_tokens, or no $/Mtok)
    NO_DATA = "no-data"  # no maj@k compared with a teacher pass@1 on some task


def matched_status(rows: Sequence[ComparisonRow]) -> tuple[MatchedStatus | None, int | None]:
    """(status, smallest matching k) of an entry's compute-matched rows; (None, None) without any."""
    by_task: dict[tuple, list[ComparisonRow]] = {}
    for row in rows:
        if row.compute_matched and row.scoring is not Scoring.PASS:  # pass@k needs an oracle: maj@k decides
            by_task.setdefault((row.task, row.baseline_task, row.metric), []).append(row)
    if not by_task:
        return None, None
    statuses, ks = set(), []
    for task_rows in by_task.values():
        compared = [row for row in task_rows if row.k is not None and row.n_paired > 0]
        if not compared:
            statuses.add(MatchedStatus.NO_DATA)
        elif any(row.within_budget is None for row in compared):
            statuses.add(MatchedStatus.NOT_PRICED)
        elif compared[0].smallest_matching_k is None:
            statuses.add(MatchedStatus.NONE_WITHIN_BUDGET)
        else:
            ks.append(compared[0].smallest_matching_k)
    for status in (MatchedStatus.NO_DATA, MatchedStatus.NOT_PRICED, MatchedStatus.NONE_WITHIN_BUDGET):
        if status in statuses:
            return status, None
    return MatchedStatus.MATCHED, max(ks)


def matched_text(entry: LeaderboardEntry) -> str:
    """The leaderboard cell: "k=3", or why no k matched within the teacher's $/question; "-" if not configured."""
    if entry.matched_status is None:
        return "-"
    if entry.matched_status is MatchedStatus.MATCHED:
        return f"k={entry.smallest_matching_k}"
    return str(entry.matched_status).replace("-", " ")


@dataclass(frozen=True)
class LeaderboardEntry:
    """One student on one workload, against its teacher in the same run (file `leaderboard.parquet`).

    Ratios are student / teacher; each `_ci_low`/`_ci_high` pair is an interval at `confidence`.
    """

    rank: int
    run_id: str
    student: str
    teacher: str
    task_metrics: int  # (task, metric) pairs compared
    passing: int  # of those, verdict "non-inferior" or "better"
    mean_retention_pct: float | None  # unweighted mean over task metrics
    retention_ci_low_pct: float | None  # mean of the per-task lower bounds (conservative, see the module doc)
    retention_ci_high_pct: float | None  # mean of the per-task upper bounds
    worst_verdict: str
    confidence: float
    workload: str | None
    level: float | None
    throughput_ratio: float | None  # output tokens per second
    throughput_ratio_ci_low: float | None
    throughput_ratio_ci_high: float | None
    usd_per_mtok_ratio: float | None
    usd_per_mtok_ratio_ci_low: float | None
    usd_per_mtok_ratio_ci_high: float | None
    j_per_token_ratio: float | None
    j_per_token_ratio_ci_low: float | None
    j_per_token_ratio_ci_high: float | None
    capacity_ratio: float | None  # requests/s at the SLO target (sweep workloads)
    capacity_ratio_ci_low: float | None
    capacity_ratio_ci_high: float | None
    n_blocks: int  # blocks behind the cost ratios
    blocks_cross_session: int  # of those, blocks whose two trials ran in different processes
    cost_verdict: str | None
    distillation_usd: float | None = None  # what making the student cost (bench.tco); None: not declared
    break_even_mtok: float | None = None  # output tokens (millions) that repay it; None: never, or no cost
    break_even_ci_low_mtok: float | None = None
    break_even_ci_high_mtok: float | None = None  # None with a saving whose interval reaches 0: unbounded
    matched_status: MatchedStatus | None = None  # compute-matched quality (bench.matched); None: not configured
    smallest_matching_k: int | None = None  # with status "matched": answers per question that match the teacher
    # Median share of the pair's documents an adaptive run needed to decide (bench.adaptive); None: not replayed.
    docs_to_decision_pct: float | None = None

    @property
    def key(self) -> GroupKey:
        return (self.run_id, self.student, self.teacher, self.workload, self.level)


@dataclass(frozen=True)
class ControlEntry:
    """A control pair on one workload (file `controls.parquet`): ratios model_b / model_a, expected near 1."""

    run_id: str
    model_a: str  # the control row's "teacher" (the ratio's denominator)
    model_b: str  # its "student"
    confidence: float
    workload: str | None
    level: float | None
    throughput_ratio: float | None
    throughput_ratio_ci_low: float | None
    throughput_ratio_ci_high: float | None
    usd_per_mtok_ratio: float | None
    usd_per_mtok_ratio_ci_low: float | None
    usd_per_mtok_ratio_ci_high: float | None
    capacity_ratio: float | None
    capacity_ratio_ci_low: float | None
    capacity_ratio_ci_high: float | None
    n_blocks: int
    blocks_cross_session: int
    throughput_ci_contains_1: bool | None  # None without an interval


@dataclass(frozen=True)
class Leaderboard:
    """The ranked entries, the controls, and per entry the comparison rows behind it (the drill-down)."""

    entries: tuple[LeaderboardEntry, ...]
    controls: tuple[ControlEntry, ...]
    rows: dict[GroupKey, tuple[ComparisonRow, ...]]

    def rows_of(self, entry: LeaderboardEntry) -> tuple[ComparisonRow, ...]:
        return self.rows.get(entry.key, ())


# -- building -----------------------------------------------------------------------------------------


def _group(rows: Sequence[ComparisonRow]) -> dict[GroupKey, list[ComparisonRow]]:
    groups: dict[GroupKey, list[ComparisonRow]] = {}
    for row in rows:
        groups.setdefault((row.run_id, row.student, row.teacher, row.workload, row.level), []).append(row)
    return groups


RATIOS = ("throughput_ratio", "usd_per_mtok_ratio", "j_per_token_ratio", "capacity_ratio")
_INTERVALS = tuple(f"{ratio}{end}" for ratio in RATIOS for end in ("", "_ci_low", "_ci_high"))
_BREAK_EVEN = ("distillation_usd", "break_even_mtok", "break_even_ci_low_mtok", "break_even_ci_high_mtok")
_PERF_FIELDS = ("workload", "level", *_INTERVALS, "cost_verdict", *_BREAK_EVEN)


def _perf_fields(row: ComparisonRow, record: type) -> dict:
    """The perf half of a comparison row, for the fields `record` has (same names as the row's)."""
    names = {f.name for f in dataclasses.fields(record)}
    fields = {name: getattr(row, name) for name in _PERF_FIELDS if name in names}
    # Stored as int: compare's rows without perf leave them unset.
    return fields | {"n_blocks": row.n_blocks or 0, "blocks_cross_session": row.blocks_cross_session or 0}


def mean_retention(quality: Sequence[ComparisonRow]) -> tuple[float | None, float | None, float | None]:
    """(mean retention %, mean of lower bounds, mean of upper bounds) over task metrics; see the module doc."""
    retentions = [row.retention_pct for row in quality if row.retention_pct is not None]
    mean = statistics.fmean(retentions) if retentions else None
    lows = [row.retention_ci_low_pct for row in quality]
    highs = [row.retention_ci_high_pct for row in quality]
    if not quality or None in lows or None in highs or len(retentions) < len(quality):
        return mean, None, None
    return mean, statistics.fmean(lows), statistics.fmean(highs)


def quality_rows(rows: Sequence[ComparisonRow]) -> list[ComparisonRow]:
    """The rows of task metrics compared at one answer each (compute-matched rows are apart)."""
    return [row for row in rows if row.task is not None and not row.compute_matched]


def _entry(key: GroupKey, rows: list[ComparisonRow], docs_to_decision: DocsToDecision) -> LeaderboardEntry:
    quality = quality_rows(rows)
    verdicts = [str(row.verdict) for row in quality] or ["no-data"]
    mean, low, high = mean_retention(quality)
    status, smallest = matched_status(rows)
    return LeaderboardEntry(
        matched_status=status,
        smallest_matching_k=smallest,
        rank=0,
        run_id=key[0],
        student=key[1],
        teacher=key[2],
        task_metrics=len(quality),
        passing=sum(verdict in PASSING for verdict in verdicts),
        mean_retention_pct=mean,
        retention_ci_low_pct=low,
        retention_ci_high_pct=high,
        worst_verdict=min(verdicts, key=VERDICTS_WORST_FIRST.index),
        confidence=rows[0].confidence,
        docs_to_decision_pct=_percent(docs_to_decision.get((key[0], key[2], key[1]))),
        **_perf_fields(rows[0], LeaderboardEntry),
    )


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _control(rows: list[ComparisonRow]) -> ControlEntry:
    row = rows[0]
    low, high = row.throughput_ratio_ci_low, row.throughput_ratio_ci_high
    return ControlEntry(
        run_id=row.run_id,
        model_a=row.teacher,
        model_b=row.student,
        confidence=row.confidence,
        throughput_ci_contains_1=None if low is None or high is None else low <= 1.0 <= high,
        **_perf_fields(row, ControlEntry),
    )


def _rank_key(entry: LeaderboardEntry) -> tuple:
    speed = entry.throughput_ratio if entry.throughput_ratio is not None else float("-inf")
    # Passing students by speed alone; the others by how badly their worst task failed, then speed.
    passing = entry.worst_verdict in PASSING
    failure = 0 if passing else -VERDICTS_WORST_FIRST.index(entry.worst_verdict)
    return (not passing, failure, -speed, entry.run_id, entry.student, entry.workload or "")


def build_entries(
    rows: Sequence[ComparisonRow], docs_to_decision: DocsToDecision | None = None
) -> list[LeaderboardEntry]:
    """Entries of the students (control rows left out), ranked (1 = best); `docs_to_decision`: per (run,
    teacher, student), the share of documents an adaptive run needed (`adaptive.docs_to_decision`), if replayed."""
    groups = _group([row for row in rows if not row.control])
    entries = sorted((_entry(key, group, docs_to_decision or {}) for key, group in groups.items()), key=_rank_key)
    return [dataclasses.replace(entry, rank=rank) for rank, entry in enumerate(entries, start=1)]


def build_leaderboard(rows: Sequence[ComparisonRow], docs_to_decision: DocsToDecision | None = None) -> Leaderboard:
    """The ranked students, the controls (in row order) and the rows behind each entry."""
    groups = _group([row for row in rows if not row.control])
    controls = tuple(_control(group) for group in _group([row for row in rows if row.control]).values())
    return Leaderboard(
        tuple(build_entries(rows, docs_to_decision)), controls, {key: tuple(group) for key, group in groups.items()}
    )


# -- text ---------------------------------------------------------------------------------------------


def format_interval(value: float | None, low: float | None, high: float | None, spec: str) -> str:
    """A value with its interval, "2.10 [1.85, 2.38]"; the value alone without one; "-" when missing."""
    if value is None:
        return "-"
    if low is None or high is None:
        return format(value, spec)
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def format_load(workload: str | None, level: float | None) -> str:
    return f"{workload}@{format_value(level, 'g')}" if workload else "-"


def ratio_text(item: LeaderboardEntry | ControlEntry, ratio: str) -> str:
    """One of `RATIOS` of an entry with its interval, "2.10 [1.85, 2.38]"."""
    low, high = getattr(item, f"{ratio}_ci_low"), getattr(item, f"{ratio}_ci_high")
    return format_interval(getattr(item, ratio), low, high, ".2f")


def quality_text(entry: LeaderboardEntry) -> str:
    return format_interval(entry.mean_retention_pct, entry.retention_ci_low_pct, entry.retention_ci_high_pct, ".1f")


def _ratio_column(header: str, ratio: str) -> tuple[str, Callable[[LeaderboardEntry | ControlEntry], str]]:
    return (f"{header} x [CI]", lambda item: ratio_text(item, ratio))


_COLUMNS: tuple[tuple[str, Callable[[LeaderboardEntry], str]], ...] = (
    ("#", lambda e: str(e.rank)),
    ("student", lambda e: markdown_text(e.student)),
    ("teacher", lambda e: markdown_text(e.teacher)),
    ("run", lambda e: markdown_text(e.run_id)),
    ("quality kept % [CI]", quality_text),
    ("tasks passing", lambda e: f"{e.passing}/{e.task_metrics}"),
    ("worst verdict", lambda e: e.worst_verdict),
    ("workload", lambda e: markdown_text(format_load(e.workload, e.level))),
    _ratio_column("throughput", "throughput_ratio"),
    _ratio_column("$/Mtok", "usd_per_mtok_ratio"),
    _ratio_column("J/token", "j_per_token_ratio"),
    _ratio_column("capacity", "capacity_ratio"),
    ("blocks", lambda e: str(e.n_blocks)),
    ("cost verdict", lambda e: markdown_text(e.cost_verdict or "-")),
    ("break-even Mtok [CI]", lambda e: break_even_text(e)),
    ("compute-matched k", matched_text),
    ("docs to decision", lambda e: docs_to_decision_text(e)),
)

_CONTROL_COLUMNS: tuple[tuple[str, Callable[[ControlEntry], str]], ...] = (
    ("model b / model a", lambda c: f"{markdown_text(c.model_b)} / {markdown_text(c.model_a)}"),
    ("run", lambda c: markdown_text(c.run_id)),
    ("workload", lambda c: markdown_text(format_load(c.workload, c.level))),
    _ratio_column("throughput", "throughput_ratio"),
    _ratio_column("$/Mtok", "usd_per_mtok_ratio"),
    _ratio_column("capacity", "capacity_ratio"),
    ("blocks", lambda c: str(c.n_blocks)),
    ("CI contains 1", lambda c: contains_one_text(c.throughput_ci_contains_1)),
)


def break_even_text(entry: LeaderboardEntry) -> str:
    """Millions of output tokens after which the student has repaid its distillation, with the interval."""
    if entry.distillation_usd is None:
        return "-"
    if entry.break_even_mtok is None:
        return "never"
    if entry.break_even_ci_low_mtok is None:
        return f"{entry.break_even_mtok:.3g}"
    high = "∞" if entry.break_even_ci_high_mtok is None else f"{entry.break_even_ci_high_mtok:.3g}"
    return f"{entry.break_even_mtok:.3g} [{entry.break_even_ci_low_mtok:.3g}, {high}]"


def docs_to_decision_text(entry: LeaderboardEntry) -> str:
    """ "34 %": the median share of documents an adaptive run needed; "-" where the run was not replayed."""
    return "-" if entry.docs_to_decision_pct is None else f"{entry.docs_to_decision_pct:.0f} %"


def contains_one_text(contains: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[contains]


READING = (
    "x = student / teacher, measured on the same hardware in the same run. [low, high] is an interval at the "
    "run's confidence. Quality kept: the mean over task metrics of the retention, with the mean of the "
    "per-task bounds (a conservative interval). Cost ratios: exp(mean per-block log ratio), t-interval over "
    "the blocks. Controls: two models of the same architecture; their throughput interval should contain 1. "
    "Compute-matched k: the fewest answers per question whose majority vote is non-inferior to the teacher's "
    "pass@1 at no more than the teacher's $/question (compare.compute_matched). "
    "Docs to decision: the median, over seeded document orders, of the share of the student's documents an "
    "adaptive run would have evaluated before its verdicts were decided (`run` and `compare --sequential` store it)."
)


def to_markdown(board: Leaderboard) -> str:
    """The leaderboard as Markdown: the ranked table, the controls' table when there are controls, a key."""
    lines = [*markdown_table(_COLUMNS, board.entries)]
    if board.controls:
        lines += ["", "Controls (not ranked):", "", *markdown_table(_CONTROL_COLUMNS, board.controls)]
    return "\n".join([*lines, "", READING]) + "\n"


def write_leaderboard(board: Leaderboard, out_dir: Path, source: str) -> list[Path]:
    """Write leaderboard.parquet, controls.parquet, leaderboard.md, pareto.svg and index.html into `out_dir`."""
    from bench.leaderboard_page import plot_pareto, to_html

    out_dir.mkdir(parents=True, exist_ok=True)
    parquet = store.write_records(out_dir / "leaderboard.parquet", LeaderboardEntry, board.entries)
    controls = store.write_records(out_dir / "controls.parquet", ControlEntry, board.controls)
    markdown = out_dir / "leaderboard.md"
    markdown.write_text(to_markdown(board))
    svg = out_dir / "pareto.svg"
    plot = plot_pareto(board.entries)
    svg.write_text(plot)
    page = out_dir / "index.html"
    page.write_text(to_html(board, plot, source))
    return [parquet, controls, markdown, svg, page]
