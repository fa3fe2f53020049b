"""The plan stage: expand a config into cells, each with a content key, and drop the ones already done.

A cell is one unit of stored work: one model on one lm-eval task (`eval`) or on one load workload
(`perf`). Its key hashes exactly the settings that can change its results (the model and how it is
served, the task or workload, the seed) and a fingerprint of the local files behind them (a local model
directory, a local task directory), so a re-run with the same settings and files finds its cells done,
while retrained weights or edited task data make new cells instead of silently reusing stale ones.
Settings that only affect how results are read (compare margins, the results directory, the run name)
are not in the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from bench.config import BenchConfig, ModelConfig, json_sha256, scan_local_dir

CellKind = Literal["eval", "perf"]
KEY_HEX_CHARS = 16
FINGERPRINT_SAMPLE_BYTES = 1 << 20  # read per end of each file: multi-GB shards stay cheap to fingerprint


@dataclass(frozen=True)
class Cell:
    """One model on one task (`eval`) or one workload (`perf`); `target` is the task or workload name."""

    kind: CellKind
    model: str
    target: str
    key: str


def _short_hash(content: dict) -> str:
    return json_sha256(content)[:KEY_HEX_CHARS]


def local_fingerprint(path: str | None) -> str | None:
    """A cheap fingerprint of a local directory's contents; None for hub ids and paths that do not exist.

    It hashes each file's relative name and size and its first and last MiB, so retrained weights (same
    shapes, new values) and edited task data change it, while a 70B checkpoint costs a few MiB of reading.
    The walk is `config.scan_local_dir`'s (bounded; hidden files and caches left out; a link leaving the
    directory is hashed by its target's name, never read); validation has refused directories it flags.
    """
    if path is None or not Path(path).is_dir():
        return None
    root, digest = Path(path), hashlib.sha256()
    for entry in scan_local_dir(root).entries:
        file = entry.path
        if entry.link_target is not None:
            digest.update(f"{file.relative_to(root).as_posix()}\0->{entry.link_target}\0".encode())
            continue
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
            handle.seek(max(FINGERPRINT_SAMPLE_BYTES, size - FINGERPRINT_SAMPLE_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()[:KEY_HEX_CHARS]


def cell_key(kind: CellKind, model: ModelConfig, target: BaseModel, seed: int, files: dict[str, str | None]) -> str:
    """Content key of a cell: a short sha256 of the canonical JSON of everything that shapes its results.

    `files` holds the fingerprints of the local inputs (`weights`, and `task_files` for eval cells).
    """
    content = {"model": model.model_dump(mode="json"), "target": target.model_dump(mode="json")}
    return _short_hash({"kind": kind, **content, "seed": seed, "files": files})


def model_key(model: ModelConfig) -> str:
    """Key of a model's row in the `models` table: changes whenever the model, its weights or serving change."""
    return _short_hash(
        {"kind": "model", "model": model.model_dump(mode="json"), "weights": local_fingerprint(model.source)}
    )


def build_plan(config: BenchConfig) -> list[Cell]:
    """All cells of a config, in config order: for each model, its eval cells then its perf cells."""
    seed = config.run.seed
    task_files = {task.name: local_fingerprint(task.include_path) for task in config.tasks}
    cells = []
    for model in config.models:
        weights = local_fingerprint(model.source)
        for task in config.tasks:
            key = cell_key("eval", model, task, seed, {"weights": weights, "task_files": task_files[task.name]})
            cells.append(Cell("eval", model.name, task.name, key))
        for workload in config.workloads:
            key = cell_key("perf", model, workload, seed, {"weights": weights})
            cells.append(Cell("perf", model.name, workload.name, key))
    return cells


def pending_cells(cells: Iterable[Cell], done_keys: set[str]) -> list[Cell]:
    """The cells still to run: those whose key is not among the finished ones (the resume filter)."""
    return [cell for cell in cells if cell.key not in done_keys]


def gpus_per_model(config: BenchConfig) -> dict[str, int]:
    """GPUs each model's server needs, all on one node (its tensor_parallel_size)."""
    return {model.name: model.serve.tensor_parallel_size for model in config.models}
