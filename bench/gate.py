"""The gate between the chunks of an adaptive task: after chunk c, which models evaluate chunk c + 1.

A student goes on while any of its verdicts on the task (one per leaf task, metric and filter with
per-document values in [0, 1]) is still inconclusive under the anytime-valid confidence sequence of
`bench.sequential` (read at every chunk so far, bets tuned to all `limit` documents, the task's documents
in their evaluation order, `bench.chunks`); its teacher goes on while any of its students does; a model
in no pair goes on to the end (it has no verdict to decide). The confidence sequence holds at every look
at once, so stopping at the first decisive chunk keeps the verdict's error rate; and since the replay of
the stored chunks (`sequential_quality` over all of them) stops at the same look, a resumed run, which
rebuilds the gates from the stored rows, never evaluates a skipped chunk and never re-runs a stored one.

`continuing` and `decided` are pure; `ChunkGates` holds the per-document values seen so far and walks each
task's chunks as far as they are decided, for `cluster.Dispatch` (live) and `run` (resume).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from bench import chunks, store
from bench.compare import Verdict
from bench.config import BenchConfig, TaskConfig
from bench.plan import Cell
from bench.records import EvalSample, EvalScore
from bench.sequential import in_unit_interval, sequential_quality

# open: its gate is open (it runs now); held: it waits for the gate of an earlier chunk; skipped: its model
# stopped on this task (decided, or its task ended), so it never runs; abandoned: an earlier chunk of its
# model failed for good, so it is reported failed.
ChunkState = Literal["open", "held", "skipped", "abandoned"]
SeriesKey = tuple[str, str, str]  # (leaf task, metric, filter)


@dataclass(frozen=True)
class ChunkValues:
    """One stored chunk cell as the gate reads it: per-document values and each metric's direction."""

    values: Mapping[tuple[str, str, str, int], float]  # (leaf task, metric, filter, doc_id) -> value
    higher_is_better: Mapping[SeriesKey, bool] = field(default_factory=dict)

    @classmethod
    def of(
        cls, scores: Iterable[tuple[str, str, str, bool | None]], samples: Iterable[tuple[str, str, str, int, float]]
    ) -> ChunkValues:
        """From (task, metric, filter, higher_is_better) score rows and (task, metric, filter, doc_id, value)
        sample rows; a metric without a direction counts as higher-is-better, as in `compare`."""
        return cls(
            values={(task, metric, name, doc): value for task, metric, name, doc, value in samples},
            higher_is_better={(task, metric, name): higher is not False for task, metric, name, higher in scores},
        )


def decided(
    teacher: Sequence[ChunkValues], student: Sequence[ChunkValues], positions: Mapping[int, int],
    task: TaskConfig, margin: float, confidence: float,
) -> bool:  # fmt: skip
    """Whether every verdict of a student on a task is decisive after the chunks given (both models' chunks
    0..c). A series whose values leave [0, 1], or that has no paired document, is never decided."""
    assert task.adaptive is not None and task.limit is not None
    ours = {key: value for part in teacher for key, value in part.values.items()}
    theirs = {key: value for part in student for key, value in part.values.items()}
    higher = {key: up for part in (*teacher, *student) for key, up in part.higher_is_better.items()}
    series: dict[SeriesKey, list[int]] = {}
    for task_name, metric, name, doc in theirs.keys() & ours.keys():
        series.setdefault((task_name, metric, name), []).append(doc)
    if not series:
        return False
    for key, docs in series.items():
        docs.sort(key=positions.__getitem__)
        t = np.array([ours[(*key, doc)] for doc in docs])
        s = np.array([theirs[(*key, doc)] for doc in docs])
        if not in_unit_interval(t, s):
            return False
        stop = sequential_quality(
            t, s, task.adaptive.chunk_documents, margin, confidence, higher.get(key, True), task.limit
        )
        if stop.verdict == Verdict.INCONCLUSIVE:
            return False
    return True


def continuing(
    members: Collection[str], teachers: Mapping[str, str | None], decided_students: Collection[str]
) -> set[str]:
    """The models (of `members`, those that evaluated this chunk) that evaluate the next one: undecided
    students, teachers with an undecided student among them, and models in no pair (`teachers`: each
    config model's teacher, None for a teacher)."""
    undecided = {m for m in members if teachers.get(m) is not None and m not in decided_students}
    keep = set(undecided)
    for model in members:
        if teachers.get(model) is None:
            students = [s for s, t in teachers.items() if t == model]
            if not students or any(s in undecided for s in students):
                keep.add(model)
    return keep


class ChunkGates:
    """Every adaptive task's walk through its chunks: which chunk it is at, which models are still on it."""

    def __init__(self, config: BenchConfig, cells: Sequence[Cell], stored: Mapping[str, ChunkValues]):
        """`cells`: the run's chunk cells (planned, stored or not); `stored`: the values of the stored ones."""
        self.config = config
        self.cells = {(c.model, c.target, c.chunk): c for c in cells if c.chunk is not None}
        self.values: dict[str, ChunkValues] = dict(stored)
        self.failed: set[str] = set()
        self.teachers = {model.name: model.teacher for model in config.models}
        self.at: dict[str, int] = {}
        self.members: dict[str, set[str]] = {}
        self.abandoned: dict[str, set[str]] = {}
        self.positions: dict[str, dict[int, int]] = {}
        for task in config.tasks:
            models = {model for model, name, _ in self.cells if name == task.name}
            if task.adaptive is None or not models:
                continue
            self.at[task.name], self.members[task.name], self.abandoned[task.name] = 0, models, set()
            self.positions[task.name] = chunks.evaluation_positions(task, config.run.seed)
            self._advance(task.name)

    def governs(self, cell: Cell) -> bool:
        return cell.chunk is not None

    def state(self, cell: Cell) -> ChunkState:
        assert cell.chunk is not None
        if cell.model in self.abandoned[cell.target]:
            return "abandoned"
        if cell.model not in self.members[cell.target] or cell.chunk < self.at[cell.target]:
            return "skipped"
        return "open" if cell.chunk == self.at[cell.target] else "held"

    def record(self, cell: Cell, values: ChunkValues) -> None:
        """A chunk cell was stored."""
        self.values[cell.key] = values
        self._advance(cell.target)

    def fail(self, cell: Cell) -> None:
        """A chunk cell failed for good: its model leaves the task."""
        self.failed.add(cell.key)
        self._advance(cell.target)

    def _advance(self, task_name: str) -> None:
        task = next(t for t in self.config.tasks if t.name == task_name)
        last = chunks.chunk_count(task)
        while self.members[task_name] and self.at[task_name] < last:
            index = self.at[task_name]
            keys = {model: self.cells[model, task_name, index].key for model in self.members[task_name]}
            if any(key not in self.values and key not in self.failed for key in keys.values()):
                return  # the gate of this chunk waits for its last cell
            failed = {model for model, key in keys.items() if key in self.failed}
            self.abandoned[task_name] |= failed
            alive = self.members[task_name] - failed
            done = {s for s in alive if self.teachers[s] in alive and self._decided(task, s, index)}
            self.at[task_name] = index + 1
            self.members[task_name] = continuing(alive, self.teachers, done)

    def _decided(self, task: TaskConfig, student: str, index: int) -> bool:
        def seen(model: str) -> list[ChunkValues]:
            return [self.values[self.cells[model, task.name, c].key] for c in range(index + 1)]

        teacher = self.teachers[student]
        assert teacher is not None
        compare = self.config.compare
        return decided(
            seen(teacher), seen(student), self.positions[task.name], task, compare.retention_margin, compare.confidence
        )


def chunk_values(scores: Sequence[EvalScore], samples: Sequence[EvalSample]) -> ChunkValues:
    """A finished chunk cell's rows as the gate reads them."""
    return ChunkValues.of(
        ((s.task, s.metric, s.filter, s.higher_is_better) for s in scores),
        ((s.task, s.metric, s.filter, s.doc_id, s.value) for s in samples),
    )


def gates_for(
    config: BenchConfig, cells: Sequence[Cell], done_keys: Collection[str], run_dir: Path
) -> ChunkGates | None:
    """The gates of a run (None without adaptive tasks), rebuilt from the chunk cells already stored."""
    planned = [cell for cell in cells if cell.chunk is not None]
    if not planned:
        return None
    keys = {cell.key for cell in planned} & set(done_keys)
    stored: dict[str, tuple[list, list]] = {key: ([], []) for key in keys}
    if keys:
        scores = store.read_run_table(run_dir, "eval_scores", cells=keys, columns=SCORE_COLUMNS).to_pylist()
        samples = store.read_run_table(run_dir, "eval_samples", cells=keys, columns=SAMPLE_COLUMNS).to_pylist()
        for row in scores:
            stored[row["cell_key"]][0].append(tuple(row[name] for name in SCORE_COLUMNS[1:]))
        for row in samples:
            stored[row["cell_key"]][1].append(tuple(row[name] for name in SAMPLE_COLUMNS[1:]))
    return ChunkGates(config, planned, {key: ChunkValues.of(*rows) for key, rows in stored.items()})


SCORE_COLUMNS = ("cell_key", "task", "metric", "filter", "higher_is_better")
SAMPLE_COLUMNS = ("cell_key", "task", "metric", "filter", "doc_id", "value")


class Gates(Protocol):
    """What the dispatch asks of a gate: `ChunkGates` here, `bench.blockgate.BlockGates` for perf blocks."""

    def governs(self, cell: Cell) -> bool: ...
    def state(self, cell: Cell) -> ChunkState: ...
    def fail(self, cell: Cell) -> None: ...


def skipped(gates: Gates | None, cell: Cell) -> bool:
    """Whether a gate (chunk or block) has already decided that this cell never runs."""
    return gates is not None and gates.governs(cell) and gates.state(cell) == "skipped"

