"""The sequential mode replayed on stored results: at which document (or block) count each comparison would
have stopped, and whether its verdict agrees with the one from all the data.

This answers "what would adaptive verdicts have saved on this run?" without re-running anything: the stored
per-document values are put in a seeded random order (the order an adaptive run would evaluate them in,
`sequential.document_order`), read chunk by chunk, and stopped at the first decisive look. Several orders
(seeds) give the spread: one order is one possible run. Perf ratios are replayed over blocks in block order,
the order they were measured in.

The full-data verdict is the product's own (`compare.compare_quality`, the fixed-n interval). A decisive
sequential verdict is on the same side, possibly weaker ("non-inferior" where all the data show "better":
it stopped at the first decisive look), unless one of the two is one of the rare errors both allow
(`QualityReplay.opposite`); an "inconclusive" where the full data decide is the price of looking often
(see `bench.sequential`).

A task the run already evaluated adaptively (`tasks[].adaptive`) is not replayed (its stored documents are the
ones its gate let through; replaying them would count its stops twice): it is reported as it ran
(`LiveQuality`), its documents out of the task's limit and the verdict `compare` reads from its sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bench import compare, pairing, sequential, stats
from bench.compare import Verdict
from bench.config import CompareConfig
from bench.pairing import Pair

# The perf ratio replayed: throughput decides how many GPUs serve a load; $/Mtok is its reciprocal on
# the shared hardware of a pair.
RATIO_COLUMN = "output_tokens_per_s"


@dataclass(frozen=True)
class QualityReplay:
    """One (pair, task, metric) under one document order: where the sequential mode stops, against all data."""

    run_id: str
    teacher: str
    student: str
    task: str
    metric: str
    filter: str
    order_seed: int
    documents_full: int
    documents_used: int
    sequential_verdict: Verdict
    full_verdict: Verdict
    diff_ci_low: float  # the confidence sequence at the stopping look
    diff_ci_high: float
    full_diff_ci_low: float  # the fixed-n interval over all documents
    full_diff_ci_high: float

    @property
    def agrees(self) -> bool:
        return self.sequential_verdict == self.full_verdict

    @property
    def opposite(self) -> bool:
        """One verdict says inferior and the other non-inferior or better: an error of one of them.

        A sequential "non-inferior" where all the data say "better" is not one: the run stopped at the first
        decisive look, where non-inferiority was shown and superiority not yet.
        """
        return Verdict.INFERIOR in (self.sequential_verdict, self.full_verdict) and bool(
            {self.sequential_verdict, self.full_verdict} & {Verdict.NON_INFERIOR, Verdict.BETTER}
        )


@dataclass(frozen=True)
class RatioReplay:
    """One (pair, workload) ratio of `RATIO_COLUMN` replayed over its blocks against a target ratio."""

    run_id: str
    teacher: str
    student: str
    workload: str
    level: float | None
    target_ratio: float
    blocks_full: int
    blocks_used: int
    decision: sequential.RatioDecision
    full_decision: sequential.RatioDecision  # from the fixed-n t-interval over all blocks
    ratio: float  # over the blocks used
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class LiveQuality:
    """One (pair, task, metric) of a task the run evaluated adaptively (`tasks[].adaptive`): where its own
    gate stopped, and the verdict `compare` reads from the confidence sequence. Nothing is replayed: the
    documents it skipped were never evaluated, so there is no full-data verdict to hold it against."""

    run_id: str
    teacher: str
    student: str
    task: str
    metric: str
    filter: str
    documents_planned: int  # the task's limit: what a full run evaluates
    documents_used: int  # documents both models answered
    verdict: Verdict
    diff_ci_low: float | None  # the confidence sequence after those documents
    diff_ci_high: float | None


@dataclass(frozen=True)
class RunReplays:
    """What `replay_runs` finds: replayed quality (one row per order), live adaptive tasks, perf ratios."""

    quality: list[QualityReplay]
    live: list[LiveQuality]
    perf: list[RatioReplay]


@dataclass(frozen=True)
class _Grouped:
    """The tables of a batch of runs grouped once for all their pairs (`pairing`'s one-pass groupings)."""

    documents: pairing.PairedDocuments
    scores: dict[tuple[str, str], pairing.ModelScores]
    perf: dict[tuple[str, str], list[dict]]

    @classmethod
    def of(cls, tables: dict[str, pa.Table], pairs: Sequence[Pair]) -> _Grouped:
        return cls(
            pairing.paired_documents(tables["eval_samples"], pairs),
            pairing.scores_by_model(tables["eval_scores"]),
            pairing.perf_rows_by_model(tables["perf_summary"]),
        )


def replay_pair_quality(
    grouped: _Grouped,
    pair: Pair,
    settings: CompareConfig,
    chunk_documents: int,
    seeds: Sequence[int],
    adaptive: Mapping[str, pairing.AdaptiveTask] | None = None,
) -> tuple[list[QualityReplay], list[LiveQuality]]:
    """Every (task, metric) of one pair whose per-document values lie in [0, 1], under each order seed; a task
    the run evaluated adaptively (`adaptive`) is not replayed but reported as it ran."""
    adaptive = adaptive or {}
    documents, none = grouped.documents, pairing.ModelScores({}, set())
    teacher = grouped.scores.get((pair.run_id, pair.teacher), none)
    student = grouped.scores.get((pair.run_id, pair.student), none)
    paired = {key: documents.get(pair, key) for group_pair, key in documents.groups if group_pair == pair}
    full = compare.compare_quality(
        teacher.values, student.values, paired, teacher.lower_is_better, settings, seed=0, adaptive=adaptive
    )
    rows, live = [], []
    for quality in full:
        values = paired.get((quality.task, quality.metric, quality.filter))
        if values is None or quality.verdict == Verdict.NO_DATA:
            continue  # no documents both answered
        if quality.task in adaptive:
            live.append(_live(pair, quality, adaptive[quality.task]))
        elif sequential.in_unit_interval(values.teacher, values.student):  # else the sequence cannot bound it
            rows += _replayed(pair, quality, values, settings, chunk_documents, seeds)
    return rows, live


def _live(pair: Pair, quality: compare.QualityComparison, task: pairing.AdaptiveTask) -> LiveQuality:
    return LiveQuality(
        **dataclasses.asdict(pair), task=quality.task, metric=quality.metric, filter=quality.filter,
        documents_planned=max(task.planned_documents, quality.n_paired), documents_used=quality.n_paired,
        verdict=quality.verdict, diff_ci_low=quality.diff_ci_low, diff_ci_high=quality.diff_ci_high,
    )  # fmt: skip


def _replayed(
    pair: Pair,
    quality: compare.QualityComparison,
    values: pairing.PairedValues,
    settings: CompareConfig,
    chunk_documents: int,
    seeds: Sequence[int],
) -> list[QualityReplay]:
    rows = []
    for seed in seeds:
        order = sequential.document_order(values.teacher.size, seed)
        stop = sequential.sequential_quality(
            values.teacher[order], values.student[order], chunk_documents,
            settings.retention_margin, settings.confidence, quality.higher_is_better,
        )  # fmt: skip
        rows.append(
            QualityReplay(
                **dataclasses.asdict(pair),
                task=quality.task,
                metric=quality.metric,
                filter=quality.filter,
                order_seed=seed,
                documents_full=quality.n_paired,
                documents_used=stop.documents_used,
                sequential_verdict=stop.verdict,
                full_verdict=quality.verdict,
                diff_ci_low=stop.diff_ci_low,
                diff_ci_high=stop.diff_ci_high,
                full_diff_ci_low=quality.diff_ci_low,
                full_diff_ci_high=quality.diff_ci_high,
            )  # fmt: skip
        )
    return rows


def replay_pair_perf(grouped: _Grouped, pair: Pair, target_ratio: float, confidence: float) -> list[RatioReplay]:
    """Every workload of one pair with at least one usable block: the ratio of `RATIO_COLUMN` over blocks."""
    rows = []
    perf = grouped.perf
    teacher, student = perf.get((pair.run_id, pair.teacher), []), perf.get((pair.run_id, pair.student), [])
    for workload in pairing.paired_workloads(teacher, student):
        student, teacher = workload.values(RATIO_COLUMN)
        estimate = stats.log_ratio_estimate(student, teacher, confidence)
        if estimate is None:
            continue
        stop = sequential.sequential_ratio(student, teacher, target_ratio, confidence)
        full_low, full_high = (
            (np.log(estimate.ci_low), np.log(estimate.ci_high)) if estimate.ci_low is not None else (-np.inf, np.inf)
        )
        rows.append(
            RatioReplay(
                **dataclasses.asdict(pair),
                workload=workload.workload,
                level=workload.level,
                target_ratio=target_ratio,
                blocks_full=stop.blocks_planned,
                blocks_used=stop.blocks_used,
                decision=stop.decision,
                full_decision=sequential.ratio_decisions(np.array([full_low]), np.array([full_high]), target_ratio)[0],
                ratio=stop.ratio,
                ci_low=stop.ci_low,
                ci_high=stop.ci_high,
            )  # fmt: skip
        )
    return rows


def replay_runs(
    inputs: pairing.RunInputs,
    chunk_documents: int,
    seeds: Sequence[int],
    target_ratio: float = 1.0,
    settings: CompareConfig | None = None,
) -> RunReplays:
    """Replay every student/teacher pair of runs already read (`pairing.read_runs`); the tasks a run evaluated
    adaptively come back as they ran (`RunReplays.live`)."""
    pairs = pairing.pairs(inputs.tables["models"])
    grouped = _Grouped.of(inputs.tables, pairs)
    found = RunReplays([], [], [])
    for pair in pairs:
        run_settings = settings or inputs.settings.get(pair.run_id, CompareConfig())
        adaptive = inputs.adaptive.get(pair.run_id)
        quality, live = replay_pair_quality(grouped, pair, run_settings, chunk_documents, seeds, adaptive)
        found.quality.extend(quality)
        found.live.extend(live)
        found.perf.extend(replay_pair_perf(grouped, pair, target_ratio, run_settings.confidence))
    return found
