"""Reading stored results and pairing them: a student's documents with its teacher's, its trials by block.

Works from stored results alone (`store.read_run_table`), so a comparison re-renders without re-running. Each
student is paired with its teacher within the same run, so both were measured on the same hardware.

Everything here works on many runs at once: the tables of a batch of runs are read once, only the columns
a comparison uses; every pair's documents are paired by one group-by (repeated rows of a document averaged)
and one join over all pairs, sorted so that each (pair, task, metric, filter) is one contiguous slice; scores
and perf rows are grouped by (run, model) in one pass. Nothing filters a whole table per pair.

Performance trials come in blocks (block b runs every model once, in a seeded random order): a student's
trial is paired with its teacher's trial of the same block, at the same (workload, level); for a sweep,
whose level is each model's own capacity, at the same (workload, block) whatever the level. Results
written before blocks existed (schema 2) have no `block` column: every row counts as block 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from bench import chunks, store
from bench.config import CompareConfig, Seed, TaskConfig

_DOC_KEYS = ("task", "metric", "filter", "doc_id")
SWEEP_MODE = "sweep"
# The perf_summary values a comparison turns into student/teacher ratios.
PERF_VALUES = ("output_tokens_per_s", "usd_per_mtok_output", "j_per_output_token", "capacity_requests_per_s")
# The tables a comparison reads, and of each the columns it uses (the store checks every column of a file).
COLUMNS: dict[str, tuple[str, ...]] = {
    "models": ("run_id", "cell_key", "name", "role", "teacher", "distillation_usd", "distillation_teacher_tokens"),
    "eval_scores": ("run_id", "cell_key", "model", "task", "metric", "filter", "value", "higher_is_better", "n"),
    "eval_samples": ("run_id", "cell_key", "model", "task", "metric", "filter", "doc_id", "value", "response_tokens"),
    "perf_summary": ("run_id", "cell_key", "model", "workload", "mode", "level", "block", "session_id", *PERF_VALUES),
}
TABLES = tuple(COLUMNS)

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
    doc_ids: np.ndarray | None = None  # the documents, ascending; None where the caller has no ids


@dataclass(frozen=True)
class AdaptiveTask:
    """A task a run evaluated in chunks (`tasks[].adaptive`): its verdicts are read from the confidence
    sequence, its documents in their evaluation order (`bench.chunks`)."""

    chunk_documents: int
    planned_documents: int  # the task's limit: the bets of the confidence sequence are tuned to it
    positions: dict[int, int]  # doc_id -> place in the evaluation order


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

    def means(self, column: str) -> tuple[float | None, float | None]:
        """(student, teacher) mean of `column` over the blocks, rows without a value left out; None for none.

        The one price per model that a pair's rows use: break-even's teacher $/Mtok, compute-matched $/answer.
        """
        return tuple(float(np.nanmean(side)) if np.isfinite(side).any() else None for side in self.values(column))

    @property
    def blocks_cross_session(self) -> int:
        return sum(pair.cross_session for pair in self.blocks)


# -- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInputs:
    """What a comparison of some runs reads: their tables (current cells, `COLUMNS` only) and settings."""

    tables: dict[str, pa.Table]
    settings: dict[str, CompareConfig]  # per run, from its manifest (defaults where it has none)
    cells: dict[str, frozenset[str]]  # per run, the cells whose rows were read
    clean: frozenset[str]  # runs read without a skipped file: their comparison may be stored
    adaptive: dict[str, dict[str, AdaptiveTask]] = field(default_factory=dict)  # per run, its adaptive tasks


def read_runs(runs: Sequence[Path], skipped: list[store.SkippedFile] | None = None) -> RunInputs:
    """The tables and compare settings of `runs`, keeping only each run's current cells.

    Damaged or foreign files are left out and reported in `skipped` (`store.read_run_table`); without a
    list, they raise `store.StoreError`, as does a manifest whose settings do not validate (`_manifest_config`).
    """
    parts: dict[str, list[pa.Table]] = {table: [] for table in TABLES}
    settings, cells, clean, adaptive = {}, {}, set(), {}
    for run in runs:
        manifest = _manifest(run)
        config = _manifest_config(run, manifest)
        settings[run.name] = config.compare
        adaptive[run.name] = _adaptive_tasks(config)
        current = _current_cell_keys(manifest)
        found: list[store.SkippedFile] | None = None if skipped is None else []
        read = {table: store.read_run_table(run, table, found, COLUMNS[table], current) for table in TABLES}
        cells[run.name] = frozenset(key for rows in read.values() for key in pc.unique(rows["cell_key"]).to_pylist())
        for table, rows in read.items():
            parts[table].append(rows)
        if found is not None:
            skipped += found
        if not found:
            clean.add(run.name)
    tables = {
        table: pa.concat_tables(pieces) if pieces else store.schema(table).empty_table().select(list(COLUMNS[table]))
        for table, pieces in parts.items()
    }
    return RunInputs(tables, settings, cells, frozenset(clean), adaptive)


def _manifest(run: Path) -> dict[str, Any]:
    try:
        return store.read_manifest(run)
    except FileNotFoundError:
        return {}


_TASK_KEYS_READ = ("name", "limit", "adaptive")


def _keys_read(task: object) -> object:
    # Only what a comparison reads of a task: an older manifest's other keys need not validate today.
    return {key: task[key] for key in _TASK_KEYS_READ if key in task} if isinstance(task, dict) else task


class _RunRead(BaseModel):
    model_config = ConfigDict(frozen=True)  # other keys of the run section are ignored

    seed: Seed = 0


class _ManifestConfig(BaseModel):
    """What a comparison reads of a manifest's config dump: the compare section, run.seed and the tasks' name,
    limit and adaptive settings, validated by the config's own models; every other key is ignored. A section a
    manifest lacks (an older run, or a run without tasks) takes its default."""

    model_config = ConfigDict(frozen=True)

    compare: CompareConfig = CompareConfig()
    run: _RunRead = _RunRead()
    tasks: tuple[Annotated[TaskConfig, BeforeValidator(_keys_read)], ...] = ()


def _manifest_config(run: Path, manifest: dict[str, Any]) -> _ManifestConfig:
    """The run's settings from its manifest's config dump, validated again: the file may have been edited.

    A key that does not validate raises `store.StoreError` naming the manifest and the key (dotted, from
    `config`): a run's margin and confidence decide its verdicts, and an adaptive task's chunks and seeded
    order decide which documents are read when, so neither defaults nor a traceback may stand in for them.
    """
    try:
        return _ManifestConfig.model_validate(manifest.get("config", {}))
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in ("config", *first["loc"]))
        raise store.StoreError(
            run / store.MANIFEST_NAME, f"{key}: {first['msg'].removeprefix('Value error, ')}"
        ) from None


def _adaptive_tasks(config: _ManifestConfig) -> dict[str, AdaptiveTask]:
    """The run's adaptive tasks (its config requires a limit of each: `TaskConfig`)."""
    return {
        task.name: AdaptiveTask(
            task.adaptive.chunk_documents, task.limit, chunks.evaluation_positions(task, config.run.seed)
        )
        for task in config.tasks
        if task.adaptive is not None and task.limit is not None
    }


def _current_cell_keys(manifest: dict[str, Any]) -> frozenset[str] | None:
    """The cell and model keys the manifest lists: those of the run's latest config and input files.

    A run directory resumed with a changed config or rebuilt weights keeps the old cells on disk; only the
    current ones are compared, so old and new results never mix. The keys are read, not recomputed, so a
    comparison needs neither the config's model directories nor the harness version that ran it. A run
    whose manifest lists no keys is compared whole (None).
    """
    keys = manifest.get("cell_keys")
    return frozenset(keys) if keys else None


# -- pairing ------------------------------------------------------------------------------------------


def pairs(models: pa.Table) -> list[Pair]:
    """Every student with its teacher, per run, sorted."""
    found = {
        Pair(row["run_id"], row["teacher"], row["name"])
        for row in models.select(["run_id", "name", "role", "teacher"]).to_pylist()
        if row["role"] == "student" and row["teacher"]
    }
    return sorted(found, key=dataclasses.astuple)


@dataclass(frozen=True)
class Distillation:
    """What making a student cost, as its `models` row recorded it (`bench.tco`)."""

    training_usd: float | None
    teacher_tokens: int | None


def distillations(models: pa.Table) -> dict[tuple[str, str], Distillation]:
    """Per (run, student), the distillation cost its config declared; students without one are absent."""
    columns = ["run_id", "name", "distillation_usd", "distillation_teacher_tokens"]
    return {
        (row["run_id"], row["name"]): Distillation(row["distillation_usd"], row["distillation_teacher_tokens"])
        for row in models.select(columns).to_pylist()
        if row["distillation_usd"] is not None or row["distillation_teacher_tokens"] is not None
    }


def run_models(models: pa.Table) -> dict[str, set[str]]:
    """The model names of each run."""
    found: dict[str, set[str]] = {}
    for row in models.select(["run_id", "name"]).to_pylist():
        found.setdefault(row["run_id"], set()).add(row["name"])
    return found


@dataclass(frozen=True)
class ModelScores:
    """A model's aggregate score of every (task, metric, filter), and the keys whose metric is lower-is-better."""

    values: dict[ScoreKey, float]
    lower_is_better: set[ScoreKey]


def scores_by_model(eval_scores: pa.Table) -> dict[tuple[str, str], ModelScores]:
    """Per (run, model), its scores. The cells of an adaptive task's chunks each score their own documents:
    their values are averaged weighted by their documents `n` (the score of every document they evaluated);
    a key repeated within one cell keeps the last row's value (in table order)."""
    found: dict[tuple[str, str], ModelScores] = {}
    parts: dict[tuple[str, str, ScoreKey], dict[str, tuple[float, int]]] = {}
    columns = ["run_id", "model", "cell_key", "task", "metric", "filter", "value", "higher_is_better", "n"]
    for row in eval_scores.select(columns).to_pylist():
        scores = found.setdefault((row["run_id"], row["model"]), ModelScores({}, set()))
        key = (row["task"], row["metric"], row["filter"])
        parts.setdefault((row["run_id"], row["model"], key), {})[row["cell_key"]] = (row["value"], row["n"])
        # A null direction (older results, tasks that give none) counts as higher is better.
        if row["higher_is_better"] is False:
            scores.lower_is_better.add(key)
    for (run_id, model, key), cells in parts.items():
        values = list(cells.values())
        documents = sum(n for _, n in values)
        last = values[-1][0]
        mean = sum(value * n for value, n in values) / documents if len(values) > 1 and documents else last
        found[run_id, model].values[key] = mean
    return found


@dataclass(frozen=True)
class PairedDocuments:
    """Every pair's paired per-document values: group i is rows `bounds[i]:bounds[i + 1]` of both arrays."""

    groups: dict[tuple[Pair, ScoreKey], int]
    bounds: np.ndarray
    teacher: np.ndarray
    student: np.ndarray
    doc_ids: np.ndarray

    def get(self, pair: Pair, key: ScoreKey) -> PairedValues | None:
        """The documents both models of `pair` answered for `key`, by doc_id; None when there are none."""
        index = self.groups.get((pair, key))
        if index is None:
            return None
        start, stop = self.bounds[index], self.bounds[index + 1]
        return PairedValues(self.teacher[start:stop], self.student[start:stop], self.doc_ids[start:stop])


def paired_documents(eval_samples: pa.Table, pairs: Sequence[Pair]) -> PairedDocuments:
    """Both models' per-document values of every pair and (task, metric, filter), on the documents both answered.

    One group-by averages repeated rows of a document (keeping the join one-to-one); one join per side
    attaches the pairs a model is the teacher or the student of; an inner join on (pair, task, metric, filter,
    doc_id) keeps the documents both answered (pyarrow's default, left outer, would pair a document only the
    teacher answered with a null); a sort by those keys makes each group a slice ordered by doc_id.
    """
    keys = ["run_id", "model", *_DOC_KEYS]
    docs = eval_samples.select([*keys, "value"]).group_by(keys, use_threads=False).aggregate([("value", "mean")])
    listing = pa.table(
        {
            "pair": pa.array(range(len(pairs)), pa.int64()),
            "run_id": pa.array([pair.run_id for pair in pairs], pa.string()),
            "teacher": pa.array([pair.teacher for pair in pairs], pa.string()),
            "student": pa.array([pair.student for pair in pairs], pa.string()),
        }
    )
    sides = [
        docs.join(
            listing.select(["pair", "run_id", side]),
            keys=["run_id", "model"],
            right_keys=["run_id", side],
            join_type="inner",
        )  # fmt: skip
        .select(["pair", *_DOC_KEYS, "value_mean"])
        .rename_columns(["pair", *_DOC_KEYS, f"value_{side}"])
        for side in ("teacher", "student")
    ]
    joined = sides[0].join(sides[1], keys=["pair", *_DOC_KEYS], join_type="inner")
    # Join output order is unspecified; sort so the seeded bootstrap sees the same vectors every time.
    joined = joined.sort_by([(key, "ascending") for key in ("pair", *_DOC_KEYS)])
    group_columns = ["pair", *_DOC_KEYS[:3]]
    starts = _group_starts(joined, group_columns)
    firsts = joined.select(group_columns).take(pa.array(starts, pa.int64())).to_pylist()
    groups = {
        (pairs[row["pair"]], (row["task"], row["metric"], row["filter"])): index for index, row in enumerate(firsts)
    }
    return PairedDocuments(
        groups,
        np.append(starts, joined.num_rows),
        joined["value_teacher"].to_numpy(),
        joined["value_student"].to_numpy(),
        joined["doc_id"].to_numpy(),
    )


def _group_starts(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Row indices where a run of equal values of `columns` starts, in a table sorted by them."""
    if table.num_rows == 0:
        return np.empty(0, dtype=np.int64)
    changed = np.zeros(table.num_rows, dtype=bool)
    changed[0] = True
    for name in columns:
        column = table[name].combine_chunks()
        changed[1:] |= pc.not_equal(column.slice(1), column.slice(0, len(column) - 1)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(changed)


def perf_rows_by_model(perf_summary: pa.Table) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (run, model), its perf_summary rows as dicts, sorted by (workload, block, level, session_id)."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in perf_summary.to_pylist():
        # Schema 2 rows have neither column: one block, one session.
        row["block"] = row.get("block") or 0
        row["session_id"] = row.get("session_id") or ""
        found.setdefault((row["run_id"], row["model"]), []).append(row)
    for rows in found.values():
        rows.sort(key=lambda row: (row["workload"], row["block"], row["level"], row["session_id"]))
    return found


def _is_sweep(rows: list[dict[str, Any]]) -> bool:
    return any(row.get("mode") == SWEEP_MODE for row in rows)


def paired_workloads(teacher_rows: list[dict[str, Any]], student_rows: list[dict[str, Any]]) -> list[PairedWorkload]:
    """Per workload both models ran, the blocks both ran at one level, sorted by workload and block.

    The rows are one model's each (`perf_rows_by_model`). Fixed levels: the highest level that both models
    ran in at least one common block, where throughput is closest to the server's capacity; the blocks are
    those where both have a row at that level. Sweeps: every block both ran, each model at its own capacity
    (level None). A block with several rows of one model at the same key (which the store's cell keys should
    prevent) keeps the last in sorted order.
    """
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
