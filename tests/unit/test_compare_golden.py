"""Comparison rows and leaderboard entries against a golden captured from the per-pair code (before issue 8).

The vectorised comparison (one join and group-by over every pair, batched intervals, cached
`comparison.parquet`, compacted tables) must give exactly the rows the per-pair code gave: the golden file
was written by `bench/` at revision 1ece355 from the tree `build_golden_tree` writes, and every value is
compared exactly (JSON floats round-trip). The tree covers what the comparison distinguishes: 0/1 metrics
(Tango, McNemar), continuous ones (the seeded bootstrap, at two document counts), a lower-is-better
metric, several filters, repeated rows of one document (averaged), documents only one model answered, a
teacher scoring 0, a student without results, another with no perf, fixed-level and sweep workloads over
blocks with a missing level and a block from another session, controls, and two runs with their own
compare settings.

To re-capture after an intended change of the rows: `python -m tests.unit.test_compare_golden` (then
review the diff of the golden file).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import compact, compare, comparison_file, leaderboard, report, store
from bench.records import EvalSample, EvalScore, ModelRecord, PerfSummary
from tests.unit.test_store import make_record

GOLDEN = Path(__file__).parent / "fixtures" / "compare_golden.json"
TEACHER = "T"
STUDENTS = ("s1", "s2", "s3", "s4")  # s3 has no results; s4 has evals but no perf
# task -> (metric, filters, documents, binary, higher_is_better)
TASKS = {
    "add": ("acc", ("none",), 150, True, True),
    "qa": ("exact_match", ("none", "strict"), 120, True, True),
    "qa_f1": ("f1", ("none",), 120, False, True),
    "ppl": ("word_perplexity", ("none",), 80, False, False),
    "same": ("acc", ("none",), 60, True, True),  # every model answers alike: no discordant document
    "hard": ("acc", ("none",), 40, True, True),  # the teacher scores 0
}
SETTINGS = {
    "g1": {"retention_margin": 0.05, "bootstrap_samples": 400, "controls": [["s1", "s2"], ["s1", "nobody"]]},
    "g2": {"retention_margin": 0.1, "confidence": 0.9, "bootstrap_samples": 250},
}


def _doc_values(rng: np.random.Generator, model: str, task: str) -> np.ndarray:
    _, _, docs, binary, _ = TASKS[task]
    skill = {TEACHER: 0.8, "s1": 0.72, "s2": 0.7, "s4": 0.75}[model]
    if task == "same":
        return (np.arange(docs) % 3 == 0).astype(float)
    if task == "hard":
        return np.zeros(docs) if model == TEACHER else (rng.random(docs) < 0.1).astype(float)
    if task == "ppl":
        return rng.normal(12.0 if model == TEACHER else 13.0, 2.0, docs).round(3)
    if binary:
        return (rng.random(docs) < skill).astype(float)
    return np.clip(rng.normal(skill, 0.2, docs), 0, 1).round(4)


def _write_eval(run: Path, model: str, rng: np.random.Generator) -> None:
    for task, (metric, filters, docs, _, higher) in TASKS.items():
        samples, scores = [], []
        for position, filter_name in enumerate(filters):
            values = _doc_values(rng, model, task)
            doc_ids = list(range(docs))
            if model == "s1" and task == "ppl":  # a repeated document (averaged) and one only s1 answered
                doc_ids, values = [*doc_ids, 3, docs], np.append(values, [15.5, 11.0])
            samples += [
                make_record(EvalSample, task=task, doc_id=doc, metric=metric, filter=filter_name, value=float(value))
                for doc, value in zip(doc_ids, values, strict=True)
            ]
            score = float(values.mean()) - 0.01 * position
            scores.append(
                make_record(
                    EvalScore, task=task, metric=metric, filter=filter_name, value=score, higher_is_better=higher
                )
            )
        key = f"{model}-{task}"
        store.write_cell(run, "eval_samples", key, model, samples)
        store.write_cell(run, "eval_scores", key, model, scores)


def _summary(workload: str, level: float, block: int, session: str, tps: float, joules: float | None, sweep: bool):
    return make_record(
        PerfSummary, workload=workload, mode="sweep" if sweep else "concurrency", level=level,
        output_tokens_per_s=tps, usd_per_mtok_output=1000.0 / tps, j_per_output_token=joules, block=block,
        session_id=session, capacity_requests_per_s=level if sweep else None,
    )  # fmt: skip


def _write_perf(run: Path, model: str, rng: np.random.Generator) -> None:
    speed = {TEACHER: 100.0, "s1": 230.0, "s2": 240.0}[model]
    for block in range(3):
        session = "resumed" if (model == "s2" and block == 2) else "first"
        joules = None if model == "s2" else round(float(rng.uniform(0.2, 0.6)), 4)
        levels = (1.0,) if (model == "s1" and block == 2) else (1.0, 4.0)  # s1's block 2 lacks level 4
        rows = [
            _summary("chat", level, block, session, round(speed * level * rng.uniform(0.9, 1.1), 3), joules, False)
            for level in levels
        ]
        store.write_cell(run, "perf_summary", f"{model}-chat-{block}", model, rows)
        capacity = round(speed / 50 * rng.uniform(0.9, 1.1), 3)
        store.write_cell(
            run, "perf_summary", f"{model}-cap-{block}", model,
            [_summary("cap", capacity, block, session, round(speed * rng.uniform(0.9, 1.1), 3), joules, True)],
        )  # fmt: skip


def build_golden_tree(root: Path) -> Path:
    """results/g1 and results/g2: the teacher T and students s1..s4 (see the module docstring)."""
    for index, (run_id, settings) in enumerate(SETTINGS.items()):
        run = root / "results" / run_id
        rng = np.random.default_rng(index)
        undistilled = {"distillation_usd": None, "distillation_teacher_tokens": None}
        teacher = make_record(ModelRecord, name=TEACHER, role="teacher", **undistilled)
        store.write_cell(run, "models", "T-server", TEACHER, [teacher])
        for student in STUDENTS:
            record = make_record(ModelRecord, name=student, role="student", teacher=TEACHER, **undistilled)
            store.write_cell(run, "models", f"{student}-server", student, [record])
        for model in (TEACHER, "s1", "s2", "s4"):
            _write_eval(run, model, rng)
        for model in (TEACHER, "s1", "s2"):
            _write_perf(run, model, rng)
        store.write_manifest(run, {"run_id": run_id, "config": {"compare": settings}})
    return root / "results"


def outputs(results: Path) -> dict:
    """What the golden holds: the rows as `compare --format json` prints them, and the leaderboard."""
    rows = compare.compare_results(results)
    board = leaderboard.build_leaderboard(rows)
    return {
        "rows": json.loads(report.to_json(rows)),
        "entries": [dataclasses.asdict(entry) for entry in board.entries],
        "controls": [dataclasses.asdict(control) for control in board.controls],
    }


@pytest.fixture(scope="module")
def golden_tree(tmp_path_factory) -> Path:
    return build_golden_tree(tmp_path_factory.mktemp("golden"))


# Row and entry fields added after the golden was captured, with the value every one of them holds here: none
# of this tree's students declares a distillation, no run configures compare.compute_matched and
# no run has an adaptive replay.
FIELDS_SINCE_GOLDEN = {
    **dict.fromkeys((
        "distillation_usd", "saving_usd_per_mtok", "saving_usd_per_mtok_ci_low", "saving_usd_per_mtok_ci_high",
        "break_even_mtok", "break_even_ci_low_mtok", "break_even_ci_high_mtok", "baseline_task", "k", "scoring",
        "teacher_tokens_per_answer", "student_tokens_per_answer", "teacher_usd_per_question",
        "student_usd_per_question", "within_budget", "smallest_matching_k", "matched_status", "docs_to_decision_pct",
    )),
    "compute_matched": False,
}  # fmt: skip


def assert_golden(results: Path) -> None:
    expected = json.loads(GOLDEN.read_text())
    found = json.loads(json.dumps(outputs(results)))
    for row in found["rows"] + found["entries"]:
        assert all(row.pop(field, value) == value for field, value in FIELDS_SINCE_GOLDEN.items())
    assert [row["summary"] for row in found["rows"]] == [row["summary"] for row in expected["rows"]]
    assert found == expected


def test_rows_and_leaderboard_match_the_per_pair_code(golden_tree):
    assert not list(golden_tree.glob(f"*/{comparison_file.NAME}"))
    assert_golden(golden_tree)  # compared from the cell files


def test_stored_comparisons_give_the_same_rows(golden_tree):
    stored = sorted(golden_tree.glob(f"*/{comparison_file.NAME}"))
    assert [path.parent.name for path in stored] == list(SETTINGS)  # written by the first comparison
    written = [path.stat().st_mtime_ns for path in stored]
    assert_golden(golden_tree)  # read back from them, not written again
    assert [path.stat().st_mtime_ns for path in stored] == written


def test_a_compacted_copy_gives_the_same_rows(golden_tree, tmp_path):
    copy = shutil.copytree(golden_tree, tmp_path / "results")
    for run in copy.iterdir():
        compact.compact_run(run)
    assert_golden(copy)


if __name__ == "__main__":
    scratch = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/compare-golden")
    shutil.rmtree(scratch, ignore_errors=True)
    GOLDEN.write_text(json.dumps(outputs(build_golden_tree(scratch)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
