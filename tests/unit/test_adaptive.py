"""bench.adaptive on a small synthetic results tree: the replay rows stored in sequential.parquet, reused while
current and recomputed when the run changes, the device-seconds estimate, `compare --sequential`'s tables
and the leaderboard's "docs to decision" column."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import adaptive, comparison_file, leaderboard, store
from bench.adaptive import ReplayKind
from bench.cli import app
from bench.compare import Verdict
from bench.pairing import TABLES
from bench.records import EvalScore, ModelRecord
from tests.unit.test_compare import CORRECT, DOCS, FILTERS, build_results
from tests.unit.test_store import README, make_record

ORDERS = 4  # enough for a spread, few enough to keep each replay in milliseconds
CHUNK = 25
WALL_S = {"big": 30.0, "small": 12.0}  # each eval cell's measured lm-eval wall time
GPUS = {"big": 2, "small": 0}  # the student ran without a GPU: one device


def record_walls(run: Path) -> None:
    """Rewrite the tree's eval_scores and models as schema 5 runs store them: wall time, GPUs, documents."""
    for model, wall_s in WALL_S.items():
        record = make_record(ModelRecord, name=model, role="student" if model == "small" else "teacher",
                             teacher="big" if model == "small" else None, gpu_count=GPUS[model])  # fmt: skip
        store.write_cell(run, "models", f"{model}-server", model, [record])
        for task, filters in FILTERS.items():
            scores = [
                make_record(
                    EvalScore,
                    task=task,
                    metric="acc",
                    filter=name,
                    value=CORRECT[(model, task)] / DOCS,
                    n=DOCS,
                    eval_wall_s=wall_s,
                )  # fmt: skip
                for name in filters
            ]
            store.write_cell(run, "eval_scores", f"{model}-{task}", model, scores)


@pytest.fixture
def results(tmp_path) -> Path:
    results = build_results(tmp_path)
    record_walls(results / "r1")
    return results


def quality_rows(rows: list[adaptive.ReplayRow]) -> list[adaptive.ReplayRow]:
    return [row for row in rows if row.kind == ReplayKind.QUALITY]


def test_the_clear_task_stops_early_in_every_order_and_agrees_with_all_the_data(results):
    rows = quality_rows(adaptive.replay_rows(results, ORDERS, CHUNK))
    sort_rows = [row for row in rows if row.task == "toy_sort"]  # student better by +0.3
    assert sorted(row.order_seed for row in sort_rows) == list(range(ORDERS))
    assert all(row.documents_used < row.documents_full == DOCS for row in sort_rows)
    assert all(row.sequential_verdict in (Verdict.NON_INFERIOR, Verdict.BETTER) for row in sort_rows)
    assert all(not row.opposite and row.full_verdict == Verdict.BETTER for row in sort_rows)
    assert all(row.ci_low <= row.ci_high and row.chunk_documents == CHUNK for row in sort_rows)


def test_device_seconds_are_the_cells_wall_time_times_its_devices(results):
    (row, *_) = quality_rows(adaptive.replay_rows(results, ORDERS, CHUNK))
    assert row.teacher_eval_device_s == WALL_S["big"] * GPUS["big"]
    assert row.student_eval_device_s == WALL_S["small"] * 1  # no GPU: billed as one device


def test_a_cell_of_several_tasks_splits_its_time_by_documents(tmp_path):
    run = tmp_path / "r"
    store.write_cell(run, "models", "m-server", "m", [make_record(ModelRecord, name="m", gpu_count=1)])
    documents = {"a": 300, "b": 100}
    scores = [make_record(EvalScore, task=task, n=n, eval_wall_s=WALL_S["big"]) for task, n in documents.items()]
    store.write_cell(run, "eval_scores", "group-cell", "m", scores)
    seconds = adaptive.eval_device_seconds(run, ["m-server", "group-cell"])
    assert seconds == {("m", task): WALL_S["big"] * n / sum(documents.values()) for task, n in documents.items()}


def test_runs_without_wall_times_report_documents_but_no_device_seconds(tmp_path):
    results = build_results(tmp_path)  # eval_scores as a schema 4 run stored them: no eval_wall_s
    for path in (results / "r1" / "eval_scores").glob("*.parquet"):
        table = pq.read_table(path)
        index = table.schema.get_field_index("eval_wall_s")
        pq.write_table(table.set_column(index, "eval_wall_s", pa.nulls(table.num_rows, pa.float64())), path)
    rows = adaptive.replay_rows(results, ORDERS, CHUNK)
    (savings,) = adaptive.run_savings(rows)
    assert savings.device_s_saved is None and savings.device_s_total is None
    assert savings.evaluations_used.median < savings.evaluations_full
    assert all(item.student_device_s_saved is None for item in adaptive.summarize_quality(rows))


def test_savings_count_a_teachers_cell_once_stopping_with_its_last_pair(results):
    rows = quality_rows(adaptive.replay_rows(results, ORDERS, CHUNK))
    (savings,) = adaptive.run_savings(rows)
    tasks = sorted(FILTERS)
    expected_saved, expected_used = [], []
    for order in range(ORDERS):
        # One pair (big, small), one compared metric per task: both models stop at the pair's stopping look.
        used = {row.task: row.documents_used for row in rows if row.order_seed == order}
        expected_used.append(2 * sum(used[task] for task in tasks))
        per_task = WALL_S["big"] * GPUS["big"] + WALL_S["small"]
        expected_saved.append(sum(per_task * (1 - used[task] / DOCS) for task in tasks))
    assert savings.evaluations_full == 2 * DOCS * len(tasks)
    assert savings.evaluations_used == adaptive.spread(expected_used)
    assert savings.device_s_saved.median == pytest.approx(statistics.median(expected_saved))
    assert savings.device_s_total == pytest.approx(len(tasks) * (WALL_S["big"] * GPUS["big"] + WALL_S["small"]))


def test_docs_to_decision_is_the_median_share_over_orders(results):
    rows = quality_rows(adaptive.replay_rows(results, ORDERS, CHUNK))
    shares = [
        sum(row.documents_used for row in rows if row.order_seed == order) / (DOCS * len(FILTERS))
        for order in range(ORDERS)
    ]
    assert adaptive.docs_to_decision(rows) == {("r1", "big", "small"): statistics.median(shares)}


def test_perf_rows_replay_the_blocks_and_keep_none_for_an_unbounded_sequence(results):
    perf = [row for row in adaptive.replay_rows(results, ORDERS, CHUNK) if row.kind == ReplayKind.PERF]
    assert perf and all(row.blocks_full == row.blocks_used == 1 for row in perf)  # one block decides nothing
    assert all(row.ci_low is None and row.ci_high is None and row.order_seed is None for row in perf)


# -- stored like comparison.parquet ------------------------------------------------------------------------


def stored_path(results: Path) -> Path:
    return results / "r1" / adaptive.NAME


def tamper(path: Path) -> int:
    """Rewrite a stored replay's documents_used, keeping its metadata: rows with this value were read, not
    computed. Returns the value."""
    marker = -7
    table = pq.read_table(path)
    index = table.schema.get_field_index("documents_used")
    column = pa.array([marker] * table.num_rows, pa.int64())
    pq.write_table(table.set_column(index, table.schema.field(index), column), path)
    return marker


def test_the_default_replay_is_stored_with_its_fingerprint_and_read_back(results):
    computed = adaptive.replay_rows(results)
    path = stored_path(results)
    metadata = pq.read_schema(path).metadata
    assert metadata[comparison_file.KEY_METADATA] == adaptive._fingerprint(results / "r1").encode()
    assert set(json.loads(metadata[b"cell_keys"])) == {
        p.stem for table in TABLES for p in (results / "r1" / table).glob("*.parquet")
    }
    assert adaptive.replay_rows(results) == computed == adaptive.stored_rows(results)
    marker = tamper(path)
    assert {row.documents_used for row in quality_rows(adaptive.replay_rows(results))} == {marker}


def test_other_orders_or_chunks_are_computed_and_not_stored(results):
    adaptive.replay_rows(results, ORDERS, CHUNK)
    assert not stored_path(results).exists()


def cells_but(run: Path, left_out: str) -> list[str]:
    """The run's cell keys less one: a resumed run whose config no longer has that cell."""
    return sorted({p.stem for table in TABLES for p in (run / table).glob("*.parquet")} - {left_out})


@pytest.mark.parametrize(
    "change",
    [
        lambda run: store.write_manifest(
            run, {**store.read_manifest(run), "cell_keys": cells_but(run, "small-toy_sort")}
        ),
        lambda run: store.write_cell(run, "eval_scores", "extra", "small", [make_record(EvalScore, task="x")]),
        lambda run: (run / "eval_samples" / "small-toy_sort.parquet").unlink(),
    ],
    ids=["cell keys of the run changed", "a cell added", "a cell file removed"],
)
def test_a_changed_run_is_replayed_again_and_its_file_rewritten(results, change):
    adaptive.replay_rows(results)
    marker = tamper(stored_path(results))
    change(results / "r1")
    assert adaptive.stored_rows(results) == []  # the leaderboard no longer trusts the stale file
    rows = adaptive.replay_rows(results)
    assert rows and marker not in {row.documents_used for row in rows}
    assert adaptive.stored_rows(results) == rows


def test_results_readme_lists_exactly_the_replay_columns():
    text = README.read_text().split("### The adaptive replay: `sequential.parquet`")[1].split("\n### ")[0]
    documented = re.findall(r"^\| `(\w+)` \| ", text, flags=re.MULTILINE)
    assert documented == [field.name for field in dataclasses.fields(adaptive.ReplayRow)]


# -- the commands ----------------------------------------------------------------------------------------


def test_compare_sequential_prints_documents_verdicts_and_device_seconds(results):
    result = CliRunner().invoke(app, ["compare", str(results), "--sequential", "--orders", str(ORDERS)])
    assert result.exit_code == 0, result.output
    assert f"{ORDERS} document orders, a look every {adaptive.DEFAULT_CHUNK_DOCUMENTS} documents" in result.output
    rows = adaptive.replay_rows(results, ORDERS, adaptive.DEFAULT_CHUNK_DOCUMENTS)
    for item in adaptive.summarize_quality(rows):
        line = next(line for line in result.output.splitlines() if f" {item.task} " in line and "/ big" in line)
        assert f"{item.documents_used.text('.0f')} / {DOCS}" in line
        assert f"{item.agree}/{ORDERS}" in line and str(item.full_verdict) in line
        assert item.student_device_s_saved.text(".1f") in line
    (savings,) = adaptive.run_savings(rows)
    assert f"{savings.device_s_saved.text('.1f')} / {savings.device_s_total:.1f}" in result.output
    assert not stored_path(results).exists()  # not the default orders


def test_the_end_of_a_run_stores_the_default_replay_and_sums_it_up_in_one_line(results, capsys):
    from bench import cli

    cli._print_adaptive(results / "r1")  # what `distill-bench run` does after its comparison
    (line,) = capsys.readouterr().out.splitlines()
    (savings,) = adaptive.run_savings(adaptive.stored_rows(results))  # stored: the leaderboard reads it
    assert f"{savings.evaluations_used.text('.0f')} of {savings.evaluations_full} documents" in line
    assert f"compare {results / 'r1'} --sequential" in line


def test_compare_sequential_refuses_machine_formats(results):
    result = CliRunner().invoke(app, ["compare", str(results), "--sequential", "--format", "json"])
    assert result.exit_code == 2 and "--sequential prints tables" in result.output


def test_compare_help_names_the_stored_defaults():
    result = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
    assert f"default {adaptive.DEFAULT_ORDERS}," in result.output
    assert f"default {adaptive.DEFAULT_CHUNK_DOCUMENTS}," in result.output


def test_the_leaderboard_shows_docs_to_decision_only_for_replayed_runs(results, tmp_path):
    runner = CliRunner()
    site = tmp_path / "site"
    assert runner.invoke(app, ["leaderboard", str(results), "--out", str(site)]).exit_code == 0
    assert {entry["docs_to_decision_pct"] for entry in pq.read_table(site / "leaderboard.parquet").to_pylist()} == {
        None
    }
    assert runner.invoke(app, ["compare", str(results), "--sequential"]).exit_code == 0  # stores the replay
    assert runner.invoke(app, ["leaderboard", str(results), "--out", str(site)]).exit_code == 0
    share = adaptive.docs_to_decision(adaptive.stored_rows(results))[("r1", "big", "small")]
    entries = {entry["student"]: entry for entry in pq.read_table(site / "leaderboard.parquet").to_pylist()}
    assert entries["small"]["docs_to_decision_pct"] == pytest.approx(100 * share)
    assert entries["tiny"]["docs_to_decision_pct"] is None  # a student without results was not replayed
    text = f"{100 * share:.0f} %"
    assert f"| {text} |" in (site / "leaderboard.md").read_text()
    assert f"<td>{text}</td>" in (site / "index.html").read_text()


def test_an_entry_without_a_replay_shows_a_dash():
    entry = make_record(leaderboard.LeaderboardEntry, docs_to_decision_pct=None)
    assert leaderboard.docs_to_decision_text(entry) == "-"


def quality_row(task: str, used: int, full: int, kind: ReplayKind = ReplayKind.QUALITY, order: int | None = None):
    return make_record(
        adaptive.ReplayRow, run_id="r", teacher="big", student="small", kind=kind, task=task, metric="acc",
        filter="none", order_seed=order, documents_used=used, documents_full=full, teacher_eval_device_s=None,
        student_eval_device_s=None,
        **({"full_verdict": None, "agrees": None, "opposite": None} if kind == ReplayKind.LIVE else {}),
    )  # fmt: skip


def test_a_task_run_adaptively_counts_the_same_in_every_replayed_order():
    """A run with a replayed task (two orders) and a task it evaluated adaptively (one live row): each order's
    share covers both tasks, the live one with the documents it did evaluate."""
    rows = [
        quality_row("replayed", used=50, full=200, order=0),
        quality_row("replayed", used=100, full=200, order=1),
        quality_row("live", used=75, full=100, kind=ReplayKind.LIVE),
    ]
    shares = [(50 + 75) / 300, (100 + 75) / 300]
    assert adaptive.docs_to_decision(rows) == {("r", "big", "small"): pytest.approx(statistics.median(shares))}
    (savings,) = adaptive.run_savings(rows)
    assert savings.orders == 2 and savings.evaluations_full == 2 * 300
    assert (savings.evaluations_used.low, savings.evaluations_used.high) == (2 * 125, 2 * 175)
    (live,) = [item for item in adaptive.summarize_quality(rows) if item.live]
    assert live.orders == 1 and live.agree is None and live.opposite is None
