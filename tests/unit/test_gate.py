"""`bench.gate`: which models evaluate an adaptive task's next chunk, live and on resume, and that the live
gates stop where the replay of every document stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import chunks
from bench.compare import Verdict
from bench.config import parse_config
from bench.gate import ChunkGates, ChunkValues, continuing
from bench.plan import build_plan
from bench.sequential import sequential_quality

REPO = Path(__file__).resolve().parents[2]
LIMIT, CHUNK = 200, 25
PAIRS = {"teacher": None, "kd": "teacher", "bad": "teacher"}


def make_config():
    models = [{"name": name, "source": f"org/{name}", **({"teacher": t} if t else {})} for name, t in PAIRS.items()]
    task = {"name": "task", "limit": LIMIT, "adaptive": {"chunk_documents": CHUNK}}
    return parse_config({"run": {"name": "g", "seed": 3}, "models": models, "tasks": [task]}, source="g", base=REPO)


# Per-document values: the teacher and kd answer every document right (kd is non-inferior once enough
# documents agree); bad answers none (inferior after the first chunk).
VALUE = {"teacher": 1.0, "kd": 1.0, "bad": 0.0}


def values_of(model: str, documents: tuple[int, ...]) -> ChunkValues:
    return ChunkValues.of(
        [("task", "exact_match", "none", True)],
        [("task", "exact_match", "none", doc, VALUE[model]) for doc in documents],
    )


def test_continuing_keeps_undecided_students_their_teacher_and_models_in_no_pair() -> None:
    teachers = {"t": None, "a": "t", "b": "t", "lone": None}
    assert continuing({"t", "a", "b", "lone"}, teachers, decided_students={"a"}) == {"t", "b", "lone"}
    assert continuing({"t", "a", "b", "lone"}, teachers, decided_students={"a", "b"}) == {"lone"}
    assert continuing({"t", "b"}, teachers, decided_students=set()) == {"t", "b"}


def test_the_live_gates_stop_each_student_where_the_replay_of_all_documents_does() -> None:
    config = make_config()
    cells = build_plan(config)
    gates = ChunkGates(config, cells, stored={})
    ran: dict[str, list[int]] = {name: [] for name in PAIRS}
    for index in range(chunks.chunk_count(config.tasks[0])):
        for cell in (c for c in cells if c.chunk == index):
            if gates.state(cell) == "open":
                gates.record(cell, values_of(cell.model, cell.documents))
                ran[cell.model].append(index)
    task = config.tasks[0]
    order = np.array(sorted(range(LIMIT), key=chunks.evaluation_positions(task, config.run.seed).__getitem__))
    replay = {
        student: sequential_quality(
            np.full(order.size, VALUE["teacher"]),
            np.full(order.size, VALUE[student]),
            CHUNK,
            config.compare.retention_margin,
            config.compare.confidence,
        )  # fmt: skip
        for student in ("kd", "bad")
    }
    assert replay["kd"].verdict == Verdict.NON_INFERIOR and replay["bad"].verdict == Verdict.INFERIOR
    for student in ("kd", "bad"):
        assert len(ran[student]) * CHUNK == replay[student].documents_used
    assert ran["bad"] == [0]
    assert ran["teacher"] == ran["kd"] and len(ran["kd"]) < chunks.chunk_count(task)  # documents were saved


def test_a_resumed_run_rebuilds_the_gates_from_the_stored_chunks() -> None:
    config = make_config()
    cells = build_plan(config)
    stored = {c.key: values_of(c.model, c.documents) for c in cells if c.chunk in (0, 1) and c.model != "bad"}
    stored |= {c.key: values_of(c.model, c.documents) for c in cells if c.chunk == 0 and c.model == "bad"}
    gates = ChunkGates(config, cells, stored)
    states = {(c.model, c.chunk): gates.state(c) for c in cells}
    assert states["bad", 1] == "skipped"  # decided inferior after chunk 0: never evaluated
    assert states["kd", 2] == states["teacher", 2] == "open"
    assert states["kd", 3] == "held"


def test_a_failed_chunk_abandons_its_model_and_not_its_pairs_teacher() -> None:
    config = make_config()
    cells = build_plan(config)
    gates = ChunkGates(config, cells, stored={})
    first = [c for c in cells if c.chunk == 0]
    for cell in first:
        if cell.model == "kd":
            gates.fail(cell)
        else:
            gates.record(cell, values_of(cell.model, cell.documents))
    states = {(c.model, c.chunk): gates.state(c) for c in cells if c.chunk == 1}
    assert states == {("kd", 1): "abandoned", ("bad", 1): "skipped", ("teacher", 1): "skipped"}
