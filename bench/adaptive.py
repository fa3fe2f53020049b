"""What adaptive verdicts would have saved on a stored run: the sequential replay as rows, stored beside the run
(`results/<run>/sequential.parquet`), and the summaries `compare --sequential` prints and the leaderboard shows.

The replay (`bench.sequential_replay`) puts each pair's stored per-document values in a seeded random order and
stops at the first decisive look of the anytime-valid confidence sequence (`bench.sequential`); one order is
one possible adaptive run, so `orders` seeds give the spread, reported as median and range. Perf ratios are
replayed over their blocks in the order measured (one row each, no seed).

Device-seconds saved are an estimate, stated as such: a cell's measured lm-eval wall time
(`eval_scores.eval_wall_s`, schema 5), times the devices its server held (`models.gpu_count`, 1 without a
GPU), split among the cell's tasks by their documents, times the share of the task's documents the adaptive
run skips. It assumes time scales with documents (per-call overheads, server warm-up, do not shrink), so it is
an upper bound on the saving. A teacher's documents serve every student: its cell stops only when its last
student has stopped on that task, and a task with several metrics stops when its last metric does.
Runs stored before schema 5 have no wall time: their rows carry null device-seconds and only documents count.

A task the run evaluated adaptively (`tasks[].adaptive`) is not replayed: its row (`ReplayKind.LIVE`) is the
run itself, the documents both models answered out of the task's limit and compare's verdict from the
confidence sequence, with no order and no full-data verdict. Its device-seconds are the ones its chunks took;
what it saved is estimated at that rate per document for the documents it skipped (`full_run_device_s`).
In a run's totals and the leaderboard's "docs to decision", a live task counts the same in every order.

Stored like `comparison.parquet` (`bench.comparison_file`): computed once per run with the default orders and
chunk, keyed by the fingerprint of the run's files, manifest and this code, and recomputed when any of them
changes (a resume that adds cells, a new cell key in run.json). The leaderboard reads only fresh files.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from bench import comparison_file, pairing, sequential_replay, store
from bench.compare import Verdict
from bench.config import CompareConfig
from bench.sequential import RatioDecision

NAME = "sequential.parquet"
DEFAULT_ORDERS = 20  # seeded document orders: enough for a median and a range that mean something
DEFAULT_CHUNK_DOCUMENTS = 25  # a look every 25 documents; looks cost nothing in a replay
# The modules a stored row depends on (see `comparison_file.fingerprint`).
_CODE = (
    "adaptive", "chunks", "compare", "comparison_file", "config", "hashing", "pairing", "records", "sequential",
    "sequential_replay", "stats", "store", "store_check",
)  # fmt: skip


class ReplayKind(StrEnum):
    QUALITY = "quality"  # one (pair, task, metric, filter) under one document order
    LIVE = "live"  # one (pair, task, metric, filter) the run evaluated adaptively: as it ran, no order
    PERF = "perf"  # one (pair, workload, level) ratio over its blocks


@dataclass(frozen=True)
class ReplayRow:
    """One row of `sequential.parquet`; quality columns are null in perf rows and the other way round; a live
    row (a task the run evaluated adaptively) has no order and no full-data verdict to agree with."""

    run_id: str
    teacher: str
    student: str
    kind: ReplayKind
    task: str | None
    metric: str | None
    filter: str | None
    workload: str | None
    level: float | None
    order_seed: int | None  # the document order (quality); perf blocks replay in the order measured
    documents_full: int | None  # documents both models answered (live: the task's limit)
    documents_used: int | None  # documents the adaptive run would have evaluated (live: did evaluate)
    blocks_full: int | None
    blocks_used: int | None
    sequential_verdict: Verdict | None
    full_verdict: Verdict | None  # compare's, from all documents (live: null, they were not all evaluated)
    sequential_decision: RatioDecision | None  # the ratio against target_ratio
    full_decision: RatioDecision | None  # from the fixed-n t-interval over all blocks
    agrees: bool | None  # null in live rows
    opposite: bool | None  # the two verdicts (decisions) on opposite sides: an error of one of them
    ratio: float | None  # perf: student / teacher over the blocks used
    ci_low: float | None  # at the stopping look: quality student - teacher; perf the ratio (null: unbounded)
    ci_high: float | None
    full_ci_low: float | None  # quality: compare's interval over all documents
    full_ci_high: float | None
    # The teacher's eval of this task, device-seconds (live: of the chunks it ran); null: not recorded.
    teacher_eval_device_s: float | None
    student_eval_device_s: float | None
    chunk_documents: int | None
    target_ratio: float | None
    retention_margin: float
    confidence: float


# -- computing and storing --------------------------------------------------------------------------------


def eval_device_seconds(run: Path, cells: Iterable[str]) -> dict[tuple[str, str], float]:
    """Per (model, task) of one run, device-seconds of its eval (see the module docstring); cells without a
    recorded wall time are left out. Damaged files are left out silently: the comparison reported them."""
    columns = ("cell_key", "model", "task", "n", "eval_wall_s")
    scores = store.read_run_table(run, "eval_scores", [], columns, frozenset(cells)).to_pylist()
    devices: dict[str, int] = {}
    for row in store.read_run_table(run, "models", [], ("name", "gpu_count"), frozenset(cells)).to_pylist():
        devices[row["name"]] = max(devices.get(row["name"], 1), row["gpu_count"])
    by_cell: dict[str, dict[str, int]] = {}
    wall: dict[str, tuple[str, float]] = {}
    for row in scores:
        if row["eval_wall_s"] is None:
            continue
        tasks = by_cell.setdefault(row["cell_key"], {})
        tasks[row["task"]] = max(tasks.get(row["task"], 0), row["n"])
        wall[row["cell_key"]] = (row["model"], row["eval_wall_s"])
    seconds = {}
    for cell, tasks in by_cell.items():
        model, wall_s = wall[cell]
        total = sum(tasks.values())
        for task, documents in tasks.items():
            share = documents / total if total else 1 / len(tasks)
            key = (model, task)  # a live adaptive task has a cell per chunk: their seconds add up
            seconds[key] = seconds.get(key, 0.0) + wall_s * devices.get(model, 1) * share
    return seconds


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) and value > 0 else None


def _quality_row(
    replay: sequential_replay.QualityReplay, seconds: Mapping, chunk: int, settings: CompareConfig
) -> ReplayRow:
    return ReplayRow(
        run_id=replay.run_id, teacher=replay.teacher, student=replay.student, kind=ReplayKind.QUALITY,
        task=replay.task, metric=replay.metric, filter=replay.filter, workload=None, level=None,
        order_seed=replay.order_seed, documents_full=replay.documents_full, documents_used=replay.documents_used,
        blocks_full=None, blocks_used=None, sequential_verdict=replay.sequential_verdict,
        full_verdict=replay.full_verdict, sequential_decision=None, full_decision=None, agrees=replay.agrees,
        opposite=replay.opposite, ratio=None, ci_low=replay.diff_ci_low, ci_high=replay.diff_ci_high,
        full_ci_low=replay.full_diff_ci_low, full_ci_high=replay.full_diff_ci_high,
        teacher_eval_device_s=seconds.get((replay.teacher, replay.task)),
        student_eval_device_s=seconds.get((replay.student, replay.task)), chunk_documents=chunk,
        target_ratio=None, retention_margin=settings.retention_margin, confidence=settings.confidence,
    )  # fmt: skip


def _live_row(live: sequential_replay.LiveQuality, seconds: Mapping, settings: CompareConfig) -> ReplayRow:
    return ReplayRow(
        run_id=live.run_id, teacher=live.teacher, student=live.student, kind=ReplayKind.LIVE, task=live.task,
        metric=live.metric, filter=live.filter, workload=None, level=None, order_seed=None,
        documents_full=live.documents_planned, documents_used=live.documents_used, blocks_full=None,
        blocks_used=None, sequential_verdict=live.verdict, full_verdict=None, sequential_decision=None,
        full_decision=None, agrees=None, opposite=None, ratio=None, ci_low=live.diff_ci_low,
        ci_high=live.diff_ci_high, full_ci_low=None, full_ci_high=None,
        teacher_eval_device_s=seconds.get((live.teacher, live.task)),
        student_eval_device_s=seconds.get((live.student, live.task)), chunk_documents=None, target_ratio=None,
        retention_margin=settings.retention_margin, confidence=settings.confidence,
    )  # fmt: skip


def _perf_row(replay: sequential_replay.RatioReplay, settings: CompareConfig) -> ReplayRow:
    decisions = {replay.decision, replay.full_decision}
    return ReplayRow(
        run_id=replay.run_id, teacher=replay.teacher, student=replay.student, kind=ReplayKind.PERF, task=None,
        metric=None, filter=None, workload=replay.workload, level=replay.level, order_seed=None,
        documents_full=None, documents_used=None, blocks_full=replay.blocks_full, blocks_used=replay.blocks_used,
        sequential_verdict=None, full_verdict=None, sequential_decision=replay.decision,
        full_decision=replay.full_decision, agrees=replay.decision == replay.full_decision,
        opposite=decisions == {RatioDecision.ABOVE, RatioDecision.BELOW}, ratio=replay.ratio,
        ci_low=_finite(replay.ci_low),
        ci_high=_finite(replay.ci_high), full_ci_low=None, full_ci_high=None, teacher_eval_device_s=None,
        student_eval_device_s=None, chunk_documents=None, target_ratio=replay.target_ratio,
        retention_margin=settings.retention_margin, confidence=settings.confidence,
    )  # fmt: skip


def replay_run(run: Path, inputs: pairing.RunInputs, orders: int, chunk_documents: int) -> list[ReplayRow]:
    """The replay rows of one run read into `inputs`, under its own compare settings."""
    settings = inputs.settings.get(run.name, CompareConfig())
    found = sequential_replay.replay_runs(inputs, chunk_documents, seeds=range(orders))
    seconds = eval_device_seconds(run, inputs.cells.get(run.name, ()))
    return (
        [_quality_row(row, seconds, chunk_documents, settings) for row in found.quality]
        + [_live_row(row, seconds, settings) for row in found.live]
        + [_perf_row(row, settings) for row in found.perf]
    )


def _fingerprint(run: Path) -> str:
    return comparison_file.fingerprint(run, pairing.TABLES, _CODE)


def replay_rows(
    results_dir: Path,
    orders: int = DEFAULT_ORDERS,
    chunk_documents: int = DEFAULT_CHUNK_DOCUMENTS,
    skipped: list[store.SkippedFile] | None = None,
) -> list[ReplayRow]:
    """The replay rows of every run under `results_dir`: a run's stored `sequential.parquet` while it is
    current, else computed; with the default orders and chunk, a run read cleanly has its rows stored."""
    runs = store.readable_runs(results_dir, skipped)
    stored = (orders, chunk_documents) == (DEFAULT_ORDERS, DEFAULT_CHUNK_DOCUMENTS)
    keys = {run: _fingerprint(run) for run in runs} if stored else {}
    fresh, found = comparison_file.load_fresh(keys, NAME) if stored else (set(), [])
    rows = [_stored_row(row) for row in found]
    for run in (run for run in runs if run not in fresh):
        inputs = pairing.read_runs([run], skipped)
        computed = replay_run(run, inputs, orders, chunk_documents)
        rows += computed
        # As comparison.parquet: not for a run read with a skipped file, nor one that changed while read.
        if stored and run.name in inputs.clean and _fingerprint(run) == keys[run]:
            table = store.records_table(ReplayRow, computed)
            comparison_file.save(run, table, keys[run], inputs.cells[run.name], NAME)
    return sorted(rows, key=_sort_key)


def stored_rows(results_dir: Path) -> list[ReplayRow]:
    """Only the rows of runs whose `sequential.parquet` is current; nothing is computed (the leaderboard's
    read: replaying hundreds of runs is `compare --sequential`'s job, not a page build's)."""
    runs = store.readable_runs(results_dir, [])
    _, found = comparison_file.load_fresh({run: _fingerprint(run) for run in runs}, NAME)
    return sorted((_stored_row(row) for row in found), key=_sort_key)


def _stored_row(row: dict[str, Any]) -> ReplayRow:
    def vocabulary(kind: type, value: str | None) -> Any:
        return None if value is None else kind(value)

    return ReplayRow(
        **{
            **row,
            "kind": ReplayKind(row["kind"]),
            "sequential_verdict": vocabulary(Verdict, row["sequential_verdict"]),
            "full_verdict": vocabulary(Verdict, row["full_verdict"]),
            "sequential_decision": vocabulary(RatioDecision, row["sequential_decision"]),
            "full_decision": vocabulary(RatioDecision, row["full_decision"]),
        }
    )


def _sort_key(row: ReplayRow) -> tuple:
    return (
        row.run_id, row.teacher, row.student, row.kind, row.task or "", row.metric or "", row.filter or "",
        row.workload or "", row.level or 0, row.order_seed or 0,
    )  # fmt: skip


# -- summaries -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median and range of one quantity over the replayed orders."""

    median: float
    low: float
    high: float

    def text(self, spec: str) -> str:
        if self.low == self.high:
            return format(self.median, spec)
        return f"{self.median:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def spread(values: Sequence[float]) -> Spread:
    return Spread(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class QualitySummary:
    """One (pair, task, metric, filter) over its orders; a live task (`live`) is its one run."""

    run_id: str
    teacher: str
    student: str
    task: str
    metric: str
    filter: str
    live: bool  # the run evaluated the task adaptively: no orders, no full-data verdict
    orders: int
    documents_full: int
    documents_used: Spread
    verdicts: Counter  # sequential verdict -> orders that reached it
    full_verdict: Verdict | None  # None for a live task
    agree: int | None  # orders whose verdict is the full-data one; None for a live task
    opposite: int | None
    student_device_s_saved: Spread | None  # the student's cell alone; None: wall time not recorded


@dataclass(frozen=True)
class RunSavings:
    """One run's evaluations (documents x models) over its orders, a teacher's counted once."""

    run_id: str
    orders: int
    evaluations_full: int
    evaluations_used: Spread
    device_s_total: float | None  # a full run's eval device-seconds (`full_run_device_s`); None: not recorded
    device_s_saved: Spread | None


_QUALITY_KINDS = (ReplayKind.QUALITY, ReplayKind.LIVE)


def _pair_key(row: ReplayRow) -> tuple[str, str, str]:
    return (row.run_id, row.teacher, row.student)


def full_run_device_s(row: ReplayRow, device_s: float | None, used: int) -> float | None:
    """A model's eval device-seconds for all of the row's task documents, from its `device_s` over `used`
    documents: measured for a replayed task (its cells evaluated them all); for a live one, the seconds its
    chunks took scaled to the task's limit, at the run's own seconds per document (an estimate)."""
    if device_s is None or row.kind != ReplayKind.LIVE:
        return device_s
    return device_s * row.documents_full / used if used else None


def _by_order(rows: Sequence[ReplayRow]) -> list[ReplayRow]:
    """The quality rows, a live row counted in every replayed order of its run (it ran once, the same in every
    order), so that a run's totals per order cover all of its tasks."""
    seeds: dict[str, set[int | None]] = {}
    for row in rows:
        if row.kind == ReplayKind.QUALITY:
            seeds.setdefault(row.run_id, set()).add(row.order_seed)
    found = []
    for row in rows:
        if row.kind == ReplayKind.QUALITY:
            found.append(row)
        elif row.kind == ReplayKind.LIVE:
            found += [dataclasses.replace(row, order_seed=seed) for seed in seeds.get(row.run_id, {None})]
    return found


def summarize_quality(rows: Sequence[ReplayRow]) -> list[QualitySummary]:
    groups: dict[tuple, list[ReplayRow]] = {}
    for row in rows:
        if row.kind in _QUALITY_KINDS:
            groups.setdefault((*_pair_key(row), row.task, row.metric, row.filter), []).append(row)
    summaries = []
    for key, group in groups.items():
        first = group[0]
        live = first.kind == ReplayKind.LIVE
        device_s = full_run_device_s(first, first.student_eval_device_s, first.documents_used)
        saved = (
            [device_s * (1 - row.documents_used / row.documents_full) for row in group]
            if device_s is not None
            else None
        )
        summaries.append(
            QualitySummary(
                *key,
                live=live,
                orders=len(group),
                documents_full=first.documents_full,
                documents_used=spread([row.documents_used for row in group]),
                verdicts=Counter(row.sequential_verdict for row in group),
                full_verdict=first.full_verdict,
                agree=None if live else sum(row.agrees for row in group),
                opposite=None if live else sum(row.opposite for row in group),
                student_device_s_saved=spread(saved) if saved is not None else None,
            )
        )
    return summaries


def model_documents(rows: Sequence[ReplayRow]) -> dict[tuple, tuple[int, int, float | None]]:
    """Per (run, model, task, order): (documents used, documents full, a full run's device-seconds).

    A model's cell stops when the last of its metrics, and for a teacher the last of its students, stops.
    """
    seen: dict[tuple, tuple[int, int, float | None, ReplayRow]] = {}
    for row in _by_order(rows):
        for model, device_s in ((row.teacher, row.teacher_eval_device_s), (row.student, row.student_eval_device_s)):
            key = (row.run_id, model, row.task, row.order_seed)
            used, full, _, _ = seen.get(key, (0, 0, None, row))
            seen[key] = (max(used, row.documents_used), max(full, row.documents_full), device_s, row)
    return {key: (used, full, full_run_device_s(row, s, used)) for key, (used, full, s, row) in seen.items()}


def run_savings(rows: Sequence[ReplayRow]) -> list[RunSavings]:
    per_order: dict[tuple[str, int | None], list[tuple[int, int, float | None]]] = {}
    for (run_id, _, _, order), value in model_documents(rows).items():
        per_order.setdefault((run_id, order), []).append(value)
    by_run: dict[str, list[list[tuple[int, int, float | None]]]] = {}
    for (run_id, _), cells in sorted(per_order.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        by_run.setdefault(run_id, []).append(cells)
    savings = []
    for run_id, orders in by_run.items():
        recorded = all(device_s is not None for cells in orders for _, _, device_s in cells)
        saved = (
            [sum(device_s * (1 - used / full) for used, full, device_s in cells) for cells in orders]
            if recorded
            else []
        )
        savings.append(
            RunSavings(
                run_id,
                orders=len(orders),
                evaluations_full=sum(full for _, full, _ in orders[0]),
                evaluations_used=spread([sum(used for used, _, _ in cells) for cells in orders]),
                device_s_total=sum(device_s for _, _, device_s in orders[0]) if recorded else None,
                device_s_saved=spread(saved) if saved else None,
            )
        )
    return savings


def docs_to_decision(rows: Sequence[ReplayRow]) -> dict[tuple[str, str, str], float]:
    """Per (run, teacher, student): the median over orders of the share of the pair's documents an adaptive
    run needed (over all its tasks, those it ran adaptively included; a task stops when its last metric does)."""
    tasks: dict[tuple, tuple[int, int]] = {}
    for row in _by_order(rows):
        key = (*_pair_key(row), row.order_seed, row.task)
        used, full = tasks.get(key, (0, 0))
        tasks[key] = (max(used, row.documents_used), max(full, row.documents_full))
    per_order: dict[tuple, list[tuple[int, int]]] = {}
    for key, value in tasks.items():
        per_order.setdefault(key[:4], []).append(value)
    shares: dict[tuple[str, str, str], list[float]] = {}
    for key, values in per_order.items():
        shares.setdefault(key[:3], []).append(sum(u for u, _ in values) / sum(f for _, f in values))
    return {pair: statistics.median(values) for pair, values in shares.items()}
