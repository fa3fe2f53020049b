"""The plan stage: expand a config into cells, each with a content key, and drop the ones already done.

A cell is one unit of stored work: one model on one lm-eval task (`eval`) or on one load workload
(`perf`). Its key hashes exactly the settings that can change its results (the model and how it is
served, the task or workload, the seed), so a re-run with the same settings finds its cells done, and
changing anything that matters makes new cells instead of silently reusing stale ones. Settings that only
affect how results are read (compare margins, the results directory, the run name) are not in the key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from bench.config import BenchConfig, ModelConfig, json_sha256

CellKind = Literal["eval", "perf"]
KEY_HEX_CHARS = 16


@dataclass(frozen=True)
class Cell:
    """One model on one task (`eval`) or one workload (`perf`); `target` is the task or workload name."""

    kind: CellKind
    model: str
    target: str
    key: str


def _short_hash(content: dict) -> str:
    return json_sha256(content)[:KEY_HEX_CHARS]


def cell_key(kind: CellKind, model: ModelConfig, target: BaseModel, seed: int) -> str:
    """Content key of a cell: a short sha256 of the canonical JSON of everything that shapes its results."""
    return _short_hash(
        {"kind": kind, "model": model.model_dump(mode="json"), "target": target.model_dump(mode="json"), "seed": seed}
    )


def model_key(model: ModelConfig) -> str:
    """Key of a model's row in the `models` table: changes whenever the model or its serving changes."""
    return _short_hash({"kind": "model", "model": model.model_dump(mode="json")})


def build_plan(config: BenchConfig) -> list[Cell]:
    """All cells of a config, in config order: for each model, its eval cells then its perf cells."""
    seed = config.run.seed
    cells = []
    for model in config.models:
        cells += [Cell("eval", model.name, t.name, cell_key("eval", model, t, seed)) for t in config.tasks]
        cells += [Cell("perf", model.name, w.name, cell_key("perf", model, w, seed)) for w in config.workloads]
    return cells


def pending_cells(cells: Iterable[Cell], done_keys: set[str]) -> list[Cell]:
    """The cells still to run: those whose key is not among the finished ones (the resume filter)."""
    return [cell for cell in cells if cell.key not in done_keys]


def gpus_per_model(config: BenchConfig) -> dict[str, int]:
    """GPUs each model's server needs, all on one node (its tensor_parallel_size)."""
    return {model.name: model.serve.tensor_parallel_size for model in config.models}
