"""Which documents each chunk of an adaptive task evaluates (`tasks[].adaptive`).

The `limit` documents of the task are put in one seeded random order, the same for the teacher and its
students so that every chunk pairs document for document, and cut into chunks of `chunk_documents`: chunk c
evaluates positions c*chunk .. (c+1)*chunk - 1 of that order. The confidence sequence read after each chunk
(`bench.gate`) is valid for exchangeable gains only, which the random order gives however the dataset is
sorted; the order is seeded by (run.seed, task), so a re-run or a resume evaluates the same chunks.
"""

from __future__ import annotations

import functools
import math

from bench.config import TaskConfig
from bench.hashing import json_sha256


def order_seed(run_seed: int, task: str) -> int:
    """The seed of a task's document order: one per (run.seed, task), shared by every model."""
    return int(json_sha256([run_seed, task])[:16], 16)


def _order(task: TaskConfig, run_seed: int) -> tuple[int, ...]:
    assert task.limit is not None  # config: adaptive needs limit
    return _documents_in_order(task.limit, run_seed, task.name)


@functools.cache  # one order per task, however many chunks and models `plan` cuts from it
def _documents_in_order(documents: int, run_seed: int, task: str) -> tuple[int, ...]:
    # bench.sequential reads results (pyarrow, through bench.compare): imported here, so that `plan` stays fast.
    from bench.sequential import document_order

    return tuple(int(doc) for doc in document_order(documents, order_seed(run_seed, task)))


def chunk_count(task: TaskConfig) -> int:
    """How many chunks an adaptive task has (the last may be shorter)."""
    assert task.adaptive is not None and task.limit is not None  # config: adaptive needs limit
    return math.ceil(task.limit / task.adaptive.chunk_documents)


def chunk_documents(task: TaskConfig, run_seed: int, chunk: int) -> tuple[int, ...]:
    """The document ids (dataset indices, sorted as lm-eval's `samples` needs them) of one chunk."""
    assert task.adaptive is not None and task.limit is not None
    size = task.adaptive.chunk_documents
    return tuple(sorted(_order(task, run_seed)[chunk * size : (chunk + 1) * size]))


def evaluation_positions(task: TaskConfig, run_seed: int) -> dict[int, int]:
    """Each document's place in the task's evaluation order: the gate reads the gains in this order."""
    return {doc: position for position, doc in enumerate(_order(task, run_seed))}
