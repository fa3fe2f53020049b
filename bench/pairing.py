"""Reading stored results and pairing them: a student's documents with its teacher's, its trials by block.

Works from stored results alone (`store.read_table`), so a comparison re-renders without re-running. Each
student is paired with its teacher within the same run, so both were measured on the same hardware.

Performance trials come in blocks (block b runs every model once, in a seeded random order): a student's
trial is paired with its teacher's trial of the same block, at the same (workload, level); for a sweep,
whose level is each model's own capacity, at the same (workload, block) whatever the level. Results
written before blocks existed (schema 2) have no `block` column: every row counts as block 0.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from bench import store
from bench.config import CompareConfig

_DOC_KEYS = ("task", "metric", "filter", "doc_id")
TABLES = ("models", "eval_scores", "eval_samples", "perf_summary")
SWEEP_MODE = "sweep"

ScoreKey = tuple[str, str, str]  # task, metric, filter


@dataclass(frozen=True)
class Pair:
    """Two models of one run compared: a student and its teacher, or the two models of a control."""

    run_id: str
    teacher: str
    student: str


@dataclass(frozen=True)
class PairedValues:
    """Per-document values of one (task, metric, filter) for the documents both models answered, by doc_id."""

    teacher: np.ndarray
    student: np.ndarray


@dataclass(frozen=True)
class BlockPair:
    """The two models' perf_summary rows of one block (a row is a dict of its columns)."""

    block: int
    teacher: dict[str, Any]
    student: dict[str, Any]

    @property
    def cross_session(self) -> bool:
        """The two trials were measured by different driver processes (a resumed run)."""
        return self.teacher.get("session_id", "") != self.student.get("session_id", "")


@dataclass(frozen=True)
class PairedWorkload:
    """One workload's blocks that both models ran, at one level (None for a sweep: each at its capacity)."""

    workload: str
    level: float | None
    blocks: tuple[BlockPair, ...]

    def values(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(student, teacher) values of `column` over the blocks, nan where a row has none."""

        def column_of(side: str) -> np.ndarray:
            raw = [getattr(pair, side).get(column) for pair in self.blocks]
            return np.array([np.nan if value is None else value for value in raw], dtype=np.float64)

        return column_of("student"), column_of("teacher")

    @property
    def blocks_cross_session(self) -> int:
        return sum(pair.cross_session for pair in self.blocks)


# -- reading ------------------------------------------------------------------------------------------


def read_tables(results_dir: Path, skipped: list[store.SkippedFile] | None = None) -> dict[str, pa.Table]:
    """The tables a comparison reads, keeping only each run's current cells.

    Damaged or foreign files are left out and reported in `skipped` (`store.read_table`); without a list,
    they raise `store.StoreError`.
    """
    current = _current_cell_keys(results_dir, skipped)
    return {name: _only_current(store.read_table(results_dir, name, skipped), current) for name in TABLES}


def manifest_settings(results_dir: Path, skipped: list[store.SkippedFile] | None = None) -> dict[str, CompareConfig]:
    """Each run's compare settings from its manifest's config dump (defaults where it has none).

    A manifest whose compare section does not validate raises `store.StoreError` naming it and the key: a
    run's margin and confidence decide its verdicts, so defaults must not silently stand in for them.
    """
    settings = {}
    for run_dir in store.readable_runs(results_dir, skipped):
        try:
            config = store.read_manifest(run_dir).get("config", {})
        except FileNotFoundError:
            config = {}
        # Only the compare section: an older manifest's other sections need not validate today.
        try:
            settings[run_dir.name] = CompareConfig.model_validate(config.get("compare", {}))
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in ("config", "compare", *first["loc"]))
            raise store.StoreError(run_dir / store.MANIFEST_NAME, f"{key}: {first['msg']}") from None
    return settings


def _current_cell_keys(results_dir: Path, skipped: list[store.SkippedFile] | None) -> dict[str, set[str]]:
    """Per run, the cell and model keys its manifest lists: those of its latest config and input files.

    A run directory resumed with a changed config or rebuilt weights keeps the old cells on disk; only the
    current ones are compared, so old and new results never mix. The keys are read, not recomputed, so a
    comparison needs neither the config's model directories nor the harness version that ran it. Runs whose
    manifest lists no keys are compared whole.
    """
    current = {}
    for run_dir in store.readable_runs(results_dir, skipped):
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


def _select(table: pa.Table, run_id: str, model: str) -> pa.Table:
    return table.filter(pc.and_(pc.equal(table["run_id"], run_id), pc.equal(table["model"], model)))


# -- pairing ------------------------------------------------------------------------------------------


def pairs(models: pa.Table) -> list[Pair]:
    """Every student with its teacher, per run, sorted."""
    found = {
        Pair(row["run_id"], row["teacher"], row["name"])
        for row in models.to_pylist()
        if row["role"] == "student" and row["teacher"]
    }
    return sorted(found, key=dataclasses.astuple)


def run_models(models: pa.Table) -> dict[str, set[str]]:
    """The model names of each run."""
    found: dict[str, set[str]] = {}
    for row in models.select(["run_id", "name"]).to_pylist():
        found.setdefault(row["run_id"], set()).add(row["name"])
    return found


def scores(eval_scores: pa.Table, run_id: str, model: str) -> dict[ScoreKey, float]:
    """A model's aggregate score of every (task, metric, filter)."""
    return {
        (row["task"], row["metric"], row["filter"]): row["value"]
        for row in _select(eval_scores, run_id, model).to_pylist()
    }


def lower_is_better(eval_scores: pa.Table, run_id: str, model: str) -> set[ScoreKey]:
    """The (task, metric, filter) keys whose metric is lower-is-better for this model's rows."""
    # A null direction (older results, tasks that give none) counts as higher is better.
    return {
        (row["task"], row["metric"], row["filter"])
        for row in _select(eval_scores, run_id, model).to_pylist()
        if row["higher_is_better"] is False
    }


def _doc_values(eval_samples: pa.Table, run_id: str, model: str) -> pa.Table:
    # Averaging repeated rows of a document keeps the join one-to-one.
    return _select(eval_samples, run_id, model).group_by(list(_DOC_KEYS)).aggregate([("value", "mean")])


def paired_values(eval_samples: pa.Table, pair: Pair) -> dict[ScoreKey, PairedValues]:
    """Both models' per-document values of every (task, metric, filter), on the documents both answered."""
    teacher = _doc_values(eval_samples, pair.run_id, pair.teacher)
    student = _doc_values(eval_samples, pair.run_id, pair.student)
    # Inner: pyarrow's default (left outer) would pair a document only the teacher answered with a null.
    joined = teacher.join(
        student, keys=list(_DOC_KEYS), join_type="inner", left_suffix="_teacher", right_suffix="_student"
    )
    # Join output order is unspecified; sort so the seeded bootstrap sees the same vectors every time.
    joined = joined.sort_by([(key, "ascending") for key in _DOC_KEYS])
    teacher_values = joined["value_mean_teacher"].to_numpy(zero_copy_only=False)
    student_values = joined["value_mean_student"].to_numpy(zero_copy_only=False)
    keys = zip(*(joined[key].to_pylist() for key in _DOC_KEYS[:3]), strict=True)
    grouped: dict[ScoreKey, PairedValues] = {}
    position = 0
    for key, group in itertools.groupby(keys):
        end = position + sum(1 for _ in group)
        grouped[key] = PairedValues(teacher_values[position:end], student_values[position:end])
        position = end
    return grouped


def _perf_rows(perf_summary: pa.Table, run_id: str, model: str) -> list[dict[str, Any]]:
    rows = _select(perf_summary, run_id, model).to_pylist()
    for row in rows:
        # Schema 2 rows have neither column: one block, one session.
        row["block"] = row.get("block") or 0
        row["session_id"] = row.get("session_id") or ""
    return sorted(rows, key=lambda row: (row["workload"], row["block"], row["level"], row["session_id"]))


def _is_sweep(rows: list[dict[str, Any]]) -> bool:
    return any(row.get("mode") == SWEEP_MODE for row in rows)


def paired_workloads(perf_summary: pa.Table, pair: Pair) -> list[PairedWorkload]:
    """Per workload both models ran, the blocks both ran at one level, sorted by workload and block.

    Fixed levels: the highest level that both models ran in at least one common block, where throughput is
    closest to the server's capacity; the blocks are those where both have a row at that level. Sweeps: every
    block both ran, each model at its own capacity (level None). A block with several rows of one model at
    the same key (which the store's cell keys should prevent) keeps the last in sorted order.
    """
    teacher_rows = _perf_rows(perf_summary, pair.run_id, pair.teacher)
    student_rows = _perf_rows(perf_summary, pair.run_id, pair.student)
    results = []
    for workload in sorted({row["workload"] for row in teacher_rows}):
        teacher = [row for row in teacher_rows if row["workload"] == workload]
        student = [row for row in student_rows if row["workload"] == workload]
        sweep = _is_sweep(teacher) or _is_sweep(student)
        key = (lambda row: (row["block"], None)) if sweep else (lambda row: (row["block"], row["level"]))
        by_key_teacher = {key(row): row for row in teacher}
        by_key_student = {key(row): row for row in student}
        common = sorted(set(by_key_teacher) & set(by_key_student), key=lambda k: (k[0], k[1] or 0.0))
        if not common:
            continue
        level = None if sweep else max(k[1] for k in common)
        blocks = tuple(
            BlockPair(block, by_key_teacher[(block, lvl)], by_key_student[(block, lvl)])
            for block, lvl in common
            if lvl == level
        )
        results.append(PairedWorkload(workload=workload, level=level, blocks=blocks))
    return results
