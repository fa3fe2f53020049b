"""The plan stage: expand a config into cells, each with a content key, and drop the ones already done.

A cell is one unit of stored work: one model on one lm-eval task (`eval`), or one trial of one model on
one load workload (`perf`). Perf trials come in blocks: block b of a workload runs every model once
(`WorkloadConfig.repeats` blocks per workload), and the block index is part of the cell's key. A block is
measured in one process on one host, so a resume never completes a partly measured block (a kill in the
middle of it, a model added to the config later) with trials from another process: it leaves that block
aside and measures a fresh one in its place (`select_blocks`).

A cell's key hashes exactly the settings that can change its results (the model and how it is served,
the task or workload, the seed) and a fingerprint of the local files behind them (a local model
directory, a local task directory), so a re-run with the same settings and files finds its cells done,
while retrained weights or edited task data make new cells instead of silently reusing stale ones.
Settings that only affect how results are read (compare margins, the results directory, the run name)
are not in the key, and neither is `repeats`: raising it adds blocks and keeps the stored ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from bench import chunks
from bench.config import BenchConfig, ModelConfig, TaskConfig, WorkloadConfig
from bench.hashing import local_fingerprint, short_hash

CellKind = Literal["eval", "perf"]


BlockState = Literal["complete", "pending", "partial"]
# `estimate` (documents and tokens for `plan --estimate`) shapes no result, like a workload's `repeats` and
# `adaptive` (how many of its blocks run, not what a trial measures: turning it on keeps the stored blocks).
TARGET_KEY_EXCLUDES: dict[CellKind, set[str]] = {"eval": {"estimate"}, "perf": {"repeats", "adaptive"}}
# Task settings added after results were stored: in the key only when set away from their default, so a
# config that leaves them alone keeps the keys (and the stored cells) it had.
TASK_KEY_WHEN_SET = {"samples_per_question", "adaptive"}
# Model settings that shape no measurement: left out of every key, so declaring them never re-runs a cell.
# `active_parameters` only feeds the FLOPs-per-token estimate, never what the server does; how many servers
# run a model's cells (`serve.replicas`) changes where they run, not what they produce.
MODEL_KEY_EXCLUDES = {"distillation": True, "active_parameters": True, "serve": {"replicas": True}}


@dataclass(frozen=True)
class Cell:
    """One model on one task (`eval`) or one trial on one workload (`perf`, in block `block`);
    `target` is the task or workload name."""

    kind: CellKind
    model: str
    target: str
    key: str
    block: int | None = None  # the perf trial's block; None for eval cells
    chunk: int | None = None  # an adaptive task's chunk (`bench.chunks`); None: the whole task
    documents: tuple[int, ...] = ()  # the chunk's document ids, sorted; () for a whole task


def cell_key(
    kind: CellKind, model: ModelConfig, target: BaseModel, seed: int, files: dict[str, str | None],
    block: int | None = None, chunk: dict[str, int] | None = None,
) -> str:  # fmt: skip
    """Content key of a cell: a short sha256 of the canonical JSON of everything that shapes its results.

    `files` holds the fingerprints of the local inputs (`weights`, and `task_files` for eval cells); perf
    cells add their `block` and an adaptive task's cells their `chunk` (its index and the seed of the
    documents' order), so whole-task eval keys keep the recipe they had before blocks and chunks existed.
    """
    target_json = _target_json(kind, target)
    content = {"kind": kind, "model": model_json(model), "target": target_json, "seed": seed}
    content["files"] = files
    if block is not None:
        content["block"] = block
    if chunk is not None:
        content["chunk"] = chunk
    return short_hash(content)


@dataclass(frozen=True)
class Fingerprints:
    """`hashing.local_fingerprint` of each model's weights and each task's files (None: not local), read once
    per run and shared by the cell keys and the model keys."""

    weights: dict[str, str | None]
    task_files: dict[str, str | None]


def local_fingerprints(config: BenchConfig) -> Fingerprints:
    """Fingerprint every local input of a config (a few MiB read per file)."""
    return Fingerprints(
        weights={model.name: local_fingerprint(model.source) for model in config.models},
        task_files={task.name: local_fingerprint(task.include_path) for task in config.tasks},
    )


def model_key(model: ModelConfig, weights: str | None) -> str:
    """Key of a model's row in the `models` table: changes whenever the model, its weights (their
    fingerprint, `weights`) or serving change."""
    return short_hash({"kind": "model", "model": model_json(model), "weights": weights})


def model_json(model: ModelConfig) -> dict:
    """The model's settings that shape its results, as hashed into cell and model keys."""
    return model.model_dump(mode="json", exclude=MODEL_KEY_EXCLUDES)


def _target_json(kind: CellKind, target: BaseModel) -> dict:
    at_default = {
        name
        for name in TASK_KEY_WHEN_SET & set(type(target).model_fields)
        if getattr(target, name) == type(target).model_fields[name].default
    }
    return target.model_dump(mode="json", exclude=TARGET_KEY_EXCLUDES[kind] | at_default)


def build_plan(
    config: BenchConfig, done_keys: Set[str] = frozenset(), fingerprints: Fingerprints | None = None
) -> list[Cell]:
    """All cells of a config: for each model its eval cells, in config order; then per workload its chosen
    perf blocks, each with one cell per model in config order (the run order is `schedule.perf_order`'s).

    `done_keys` (the cells already stored) decides which blocks are chosen (`select_blocks`); without it
    the blocks are 0 .. repeats-1. `fingerprints` (from `local_fingerprints`) are read when not given.
    """
    seed = config.run.seed
    fingerprints = fingerprints or local_fingerprints(config)
    task_files, weights = fingerprints.task_files, fingerprints.weights
    cells = []
    for model in config.models:
        for task in config.tasks:
            files = {"weights": weights[model.name], "task_files": task_files[task.name]}
            if task.adaptive is None:
                cells.append(Cell("eval", model.name, task.name, cell_key("eval", model, task, seed, files)))
            else:
                cells.extend(_chunk_cells(model, task, seed, files))
    for workload in config.workloads:

        def block(index: int, workload: WorkloadConfig = workload) -> list[Cell]:
            return _perf_block(config, workload, index, weights)

        for index in select_blocks(workload.repeats, lambda b: [cell.key for cell in block(b)], done_keys):
            cells.extend(block(index))
    return cells


def _chunk_cells(model: ModelConfig, task: TaskConfig, seed: int, files: dict[str, str | None]) -> list[Cell]:
    """An adaptive task's cells for one model: one per chunk, in chunk order (`bench.chunks`)."""
    cells = []
    for index in range(chunks.chunk_count(task)):
        chunk = {"index": index, "order_seed": chunks.order_seed(seed, task.name)}
        key = cell_key("eval", model, task, seed, files, chunk=chunk)
        documents = chunks.chunk_documents(task, seed, index)
        cells.append(Cell("eval", model.name, task.name, key, chunk=index, documents=documents))
    return cells


def _perf_block(
    config: BenchConfig, workload: WorkloadConfig, block: int, weights: dict[str, str | None]
) -> list[Cell]:
    """One block of a workload: a trial of every model, in config order."""
    cells = []
    for model in config.models:
        key = cell_key("perf", model, workload, config.run.seed, {"weights": weights[model.name]}, block)
        cells.append(Cell("perf", model.name, workload.name, key, block))
    return cells


def block_state(keys: Sequence[str], done_keys: Set[str]) -> BlockState:
    """A block is complete when every cell is stored, pending when none is, partial otherwise."""
    done = sum(key in done_keys for key in keys)
    return "complete" if done == len(keys) else "pending" if done == 0 else "partial"


def select_blocks(repeats: int, block_keys: Callable[[int], Sequence[str]], done_keys: Set[str]) -> list[int]:
    """The `repeats` block indices a run uses: walk 0, 1, 2, ... and take every complete or pending block,
    skipping partial ones (a fresh index takes a partial block's place, so no block mixes processes).

    Terminates: each partial block holds a done key of its own, so there are at most len(done_keys).
    """
    chosen: list[int] = []
    block = 0
    while len(chosen) < repeats:
        if block_state(block_keys(block), done_keys) != "partial":
            chosen.append(block)
        block += 1
    return chosen


def pending_cells(cells: Iterable[Cell], done_keys: set[str]) -> list[Cell]:
    """The cells still to run: those whose key is not among the finished ones (the resume filter)."""
    return [cell for cell in cells if cell.key not in done_keys]


def gpus_per_model(config: BenchConfig) -> dict[str, int]:
    """GPUs each model's server needs, all on one node (its tensor_parallel_size)."""
    return {model.name: model.serve.tensor_parallel_size for model in config.models}
