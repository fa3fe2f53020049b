"""bench.pairing on synthetic Arrow tables: documents paired by doc_id, perf trials paired by block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from bench import chunks, pairing, store
from bench.config import BenchConfig, redacted_dump
from bench.pairing import AdaptiveTask, Pair
from tests.unit.test_compare import build_results

PAIR = Pair("r1", "big", "small")


def perf_row(model: str, workload: str, level: float, block: int | None, session: str | None, tps: float, **more):
    row: dict[str, Any] = dict(run_id="r1", model=model, workload=workload, mode="concurrency", level=level)
    row.update(output_tokens_per_s=tps, usd_per_mtok_output=1000 / tps, j_per_output_token=None)
    if block is not None:
        row.update(block=block, session_id=session)
    return {**row, **more}


def paired_workloads(rows: list[dict[str, Any]], pair: Pair = PAIR) -> list[pairing.PairedWorkload]:
    """The pair's workloads from perf rows of any runs and models, as the comparison groups them."""
    by_model = pairing.perf_rows_by_model(pa.Table.from_pylist(rows))
    teacher, student = by_model.get((pair.run_id, pair.teacher), []), by_model.get((pair.run_id, pair.student), [])
    return pairing.paired_workloads(teacher, student)


def test_fixed_levels_pair_by_block_at_the_highest_common_level():
    rows = [perf_row("big", "chat", level, block, "s1", 100 + block) for block in range(3) for level in (1, 4)]
    rows += [perf_row("small", "chat", level, block, "s1", 200 + block) for block in (0, 2) for level in (1, 4, 8)]
    rows += [perf_row("small", "chat", 4, 5, "s1", 999)]  # a block the teacher never ran
    rows += [perf_row("big", "other-run", 1, 0, "s1", 1, run_id="r2"), perf_row("tiny", "chat", 4, 0, "s1", 1)]
    (workload,) = paired_workloads(rows)
    assert (workload.workload, workload.level) == ("chat", 4)
    assert [pair.block for pair in workload.blocks] == [0, 2]
    student, teacher = workload.values("output_tokens_per_s")
    assert student.tolist() == [200, 202] and teacher.tolist() == [100, 102]
    assert np.isnan(workload.values("j_per_output_token")[0]).all()
    assert workload.blocks_cross_session == 0


def test_a_workload_only_one_model_ran_is_left_out():
    rows = [perf_row("big", "chat", 1, 0, "s", 1.0), perf_row("big", "batch", 1, 0, "s", 1.0)]
    rows += [perf_row("small", "chat", 1, 0, "s", 2.0)]
    assert [w.workload for w in paired_workloads(rows)] == ["chat"]


def test_blocks_measured_by_different_sessions_are_counted():
    rows = [perf_row("big", "chat", 8, block, "host:1", 100) for block in range(4)]
    rows += [perf_row("small", "chat", 8, block, "host:1" if block < 2 else "host:2", 150) for block in range(4)]
    (workload,) = paired_workloads(rows)
    assert [pair.cross_session for pair in workload.blocks] == [False, False, True, True]
    assert workload.blocks_cross_session == 2


def test_sweeps_pair_by_block_whatever_the_level():
    def sweep(model: str, block: int, capacity: float | None) -> dict[str, Any]:
        level = capacity or 0.5
        return perf_row(model, "cap", level, block, "s", 10 * level, mode="sweep", capacity_requests_per_s=capacity)

    rows = [sweep("big", block, 2.0 + block / 10) for block in range(3)]
    rows += [sweep("small", 0, 4.0), sweep("small", 1, None), sweep("small", 2, 4.4)]
    (workload,) = paired_workloads(rows)
    assert workload.level is None
    assert [pair.block for pair in workload.blocks] == [0, 1, 2]
    student, teacher = workload.values("capacity_requests_per_s")
    assert np.isnan(student[1]) and student[[0, 2]].tolist() == [4.0, 4.4] and teacher.tolist() == [2.0, 2.1, 2.2]


def test_schema_2_rows_without_block_columns_are_one_block():
    rows = [perf_row("big", "chat", level, None, None, 100 * level) for level in (1, 4)]
    rows += [perf_row("small", "chat", level, None, None, 250 * level) for level in (1, 4)]
    (workload,) = paired_workloads(rows)
    assert (workload.level, [pair.block for pair in workload.blocks], workload.blocks_cross_session) == (4, [0], 0)


def samples(model: str, values: dict[int, float], task: str = "toy_add", run: str = "r1") -> list[dict[str, Any]]:
    base = dict(run_id=run, model=model, task=task, metric="acc", filter="none")
    return [{**base, "doc_id": doc, "value": value} for doc, value in values.items()]


def test_documents_pair_by_doc_id_and_keep_both_values():
    rows = samples("big", {2: 1.0, 0: 0.0, 1: 1.0}) + samples("small", {1: 0.0, 0: 1.0, 3: 1.0})
    rows += samples("small", {1: 1.0})  # a repeated row of a document is averaged
    rows += samples("big", {0: 1.0}, task="toy_sort")  # the student never ran toy_sort
    documents = pairing.paired_documents(pa.Table.from_pylist(rows), [PAIR])
    assert list(documents.groups) == [(PAIR, ("toy_add", "acc", "none"))]
    values = documents.get(PAIR, ("toy_add", "acc", "none"))
    assert values.teacher.tolist() == [0.0, 1.0] and values.student.tolist() == [1.0, 0.5]
    assert documents.get(PAIR, ("toy_sort", "acc", "none")) is None


def test_every_pair_of_every_run_is_paired_in_one_pass():
    """One teacher with two students, and the same model names in another run: each pair sees only its own."""
    rows = samples("big", {0: 1.0, 1: 0.0}) + samples("small", {0: 0.0, 1: 1.0}) + samples("tiny", {1: 1.0})
    rows += samples("big", {0: 0.0, 1: 0.0, 2: 1.0}, run="r2") + samples("small", {2: 0.0, 0: 1.0}, run="r2")
    other_run, tiny = Pair("r2", "big", "small"), Pair("r1", "big", "tiny")
    documents = pairing.paired_documents(pa.Table.from_pylist(rows), [PAIR, tiny, other_run])
    key = ("toy_add", "acc", "none")
    assert (documents.get(PAIR, key).teacher.tolist(), documents.get(PAIR, key).student.tolist()) == ([1, 0], [0, 1])
    assert (documents.get(tiny, key).teacher.tolist(), documents.get(tiny, key).student.tolist()) == ([0], [1])
    paired = documents.get(other_run, key)
    assert (paired.teacher.tolist(), paired.student.tolist()) == ([0, 1], [1, 0])  # docs 0 and 2, by doc_id


def test_scores_by_model_keep_the_last_value_of_a_cell_and_any_lower_is_better():
    rows = [
        dict(
            run_id="r1",
            model="big",
            cell_key="c",
            task="t",
            metric="ppl",
            filter="none",
            value=v,
            higher_is_better=h,
            n=9,
        )
        for v, h in ((3.0, None), (2.0, False), (1.0, None))
    ]
    (scores,) = pairing.scores_by_model(pa.Table.from_pylist(rows)).values()
    assert scores.values == {("t", "ppl", "none"): 1.0} and scores.lower_is_better == {("t", "ppl", "none")}


def test_scores_by_model_average_an_adaptive_tasks_chunks_by_their_documents():
    """Chunks of 25, 25 and 10 documents scoring 0.8, 0.6 and 0.1: the task's score over its 60 documents."""
    cells = (("c0", 0.8, 25), ("c1", 0.6, 25), ("c2", 0.1, 10))
    rows = [
        dict(
            run_id="r1",
            model="big",
            cell_key=key,
            task="t",
            metric="acc",
            filter="none",
            value=v,
            higher_is_better=True,
            n=n,
        )
        for key, v, n in cells
    ]
    (scores,) = pairing.scores_by_model(pa.Table.from_pylist(rows)).values()
    expected = sum(v * n for _, v, n in cells) / sum(n for _, _, n in cells)
    assert scores.values == {("t", "acc", "none"): pytest.approx(expected)}


def test_pairs_and_run_models():
    roles = [("r1", "big", "teacher", None), ("r1", "small", "student", "big"), ("r2", "solo", "teacher", None)]
    rows = [dict(run_id=run, name=name, role=role, teacher=teacher) for run, name, role, teacher in roles]
    models = pa.Table.from_pylist(rows)
    assert pairing.pairs(models) == [PAIR]
    assert pairing.run_models(models) == {"r1": {"big", "small"}, "r2": {"solo"}}


def test_a_runs_adaptive_tasks_are_read_from_its_manifest(tmp_path: Path):
    """The config dump a run writes to run.json gives back each adaptive task: its chunk size, its limit, and its
    documents' order under the run's seed. Keys a comparison does not read are not validated (an older run's
    dump may hold keys or values today's config rejects); a manifest without tasks has no adaptive task."""
    results = build_results(tmp_path, run_id="r1")
    config = BenchConfig.model_validate(
        {
            "run": {"name": "r1", "seed": 7},
            "models": [
                {"name": "big", "source": "org/big"},
                {"name": "small", "source": "org/small", "teacher": "big"},
            ],
            "tasks": [{"name": "toy_add", "limit": 60, "adaptive": {"chunk_documents": 25}}, {"name": "toy_sort"}],
            "compare": {"retention_margin": 0.1},
        }
    )
    assert pairing.read_runs([results / "r1"]).adaptive == {"r1": {}}  # build_results' manifest: compare only
    dumped = redacted_dump(config)
    dumped["run"]["cell_retries"] = -1
    dumped["tasks"][0] |= {"num_fewshot": "many", "a_key_of_another_version": 1}
    store.write_manifest(results / "r1", {"config": dumped})
    inputs = pairing.read_runs([results / "r1"])
    positions = chunks.evaluation_positions(config.tasks[0], 7)
    assert inputs.adaptive == {"r1": {"toy_add": AdaptiveTask(25, 60, positions)}}
    assert sorted(positions) == list(range(60)) and positions != chunks.evaluation_positions(config.tasks[0], 0)
    assert inputs.settings["r1"] == config.compare
