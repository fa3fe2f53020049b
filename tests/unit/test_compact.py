"""bench.compact and the compacted layout: both layouts read the same rows, a killed compaction loses none,
compacting again and resuming after compaction work, damage is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import compact, compare, report, store
from bench.cli import app
from bench.records import EvalSample, EvalScore
from bench.store_check import SkipKind, StoreError
from tests.unit.test_compare import build_results
from tests.unit.test_store import make_record

TABLES = ("models", "eval_scores", "eval_samples", "perf_summary", "perf_requests")


def all_rows(run: Path) -> dict[str, list[dict]]:
    return {table: store.read_table(run, table).to_pylist() for table in TABLES}


def comparison_json(results: Path) -> list[dict]:
    return json.loads(report.to_json(compare.compare_results(results)))


@pytest.fixture
def results(tmp_path) -> Path:
    return build_results(tmp_path)


def test_a_compacted_run_reads_and_compares_exactly_as_its_cell_files(results):
    run = results / "r1"
    before, compared = all_rows(run), comparison_json(results)
    tables = {table.table: table for table in compact.compact_run(run)}
    assert tables["eval_samples"].merged == 4 and tables["eval_samples"].cells == 4
    assert sorted(path.name for path in (run / "eval_samples").iterdir()) == ["compacted.parquet"]
    assert all_rows(run) == before
    assert comparison_json(results) == compared
    # DuckDB's documented globs see the compacted files: the same rows.
    query = f"select count(*) from read_parquet('{results}/*/eval_samples/*.parquet')"
    assert duckdb.sql(query).fetchall() == [(len(before["eval_samples"]),)]
    assert (
        pq.read_schema(run / "eval_samples" / "compacted.parquet").metadata[b"cell_keys"]
        == json.dumps(sorted({row["cell_key"] for row in before["eval_samples"]})).encode()
    )


def test_a_compaction_killed_before_its_rename_leaves_a_temp_file_that_nothing_reads(results):
    run = results / "r1"
    before = all_rows(run)
    torn = run / "eval_samples" / ".compacted.parquet.k1ll3d.tmp"
    torn.write_bytes(b"PAR1 half a compacted file")
    assert all_rows(run) == before and store.done_cell_keys(run) == {
        path.stem for table in store.COMMIT_TABLES for path in (run / table).glob("*.parquet")
    }
    compact.compact_run(run)  # the next compaction removes it
    assert not torn.exists() and all_rows(run) == before


@pytest.mark.parametrize("removed_before_the_kill", [0, 1])
def test_a_compaction_killed_before_it_removed_the_cell_files_reads_each_cell_once(
    results, monkeypatch, removed_before_the_kill
):
    run = results / "r1"
    before, compared = all_rows(run), comparison_json(results)

    def killed(paths):
        for path in paths[:removed_before_the_kill]:
            path.unlink()
        raise KeyboardInterrupt  # killed after the rename, before (or while) removing the cell files

    monkeypatch.setattr(store, "remove_files", killed)
    with pytest.raises(KeyboardInterrupt):
        compact.compact_run(run)
    monkeypatch.undo()
    cells = sorted(path.name for path in (run / "models").iterdir())
    assert "compacted.parquet" in cells and len(cells) == 4 - removed_before_the_kill  # both layouts side by side
    assert all_rows(run) == before and comparison_json(results) == compared
    compact.compact_run(run)  # finishes the job
    assert sorted(path.name for path in (run / "models").iterdir()) == ["compacted.parquet"]
    assert all_rows(run) == before


def test_a_cell_written_after_compaction_replaces_its_compacted_rows_and_compacts_again(results):
    run = results / "r1"
    compact.compact_run(run)
    assert "small-toy_add" in store.done_cell_keys(run)  # a resume skips the compacted cells
    rewritten = [make_record(EvalScore, task="toy_add", metric="acc", filter="none", value=0.5)]
    store.write_cell(run, "eval_scores", "small-toy_add", "small", rewritten)  # e.g. a cell run again
    store.write_cell(run, "eval_scores", "new-cell", "small", [make_record(EvalScore, task="new")])
    rows = store.read_table(run, "eval_scores").to_pylist()
    assert [row["value"] for row in rows if row["cell_key"] == "small-toy_add"] == [0.5]
    assert {"new-cell", "small-toy_add"} <= store.done_cell_keys(run)
    assert [row["cell_key"] for row in rows] == sorted(row["cell_key"] for row in rows)  # cell-key order
    (scores,) = [table for table in compact.compact_run(run) if table.table == "eval_scores"]
    assert (scores.merged, scores.cells) == (2, 5)
    assert store.read_table(run, "eval_scores").to_pylist() == rows


def test_unfinished_cells_and_damaged_files_stay_as_cell_files(results):
    run = results / "r1"
    store.write_cell(run, "eval_samples", "running", "small", [make_record(EvalSample)])  # no eval_scores yet
    bad = run / "eval_samples" / "big-toy_add.parquet"
    bad.write_bytes(b"not parquet")
    (samples,) = [table for table in compact.compact_run(run) if table.table == "eval_samples"]
    assert samples.merged == 3 and [(kept.path, kept.kind) for kept in samples.kept] == [(bad, SkipKind.UNREADABLE)]
    assert (run / "eval_samples" / "running.parquet").exists() and bad.exists()
    skipped: list = []
    store.read_table(run, "eval_samples", skipped)
    assert [item.path for item in skipped] == [bad]


def test_a_damaged_compacted_file_is_a_reported_skip_and_is_never_merged_into(results):
    run = results / "r1"
    compact.compact_run(run)
    target = run / "eval_scores" / "compacted.parquet"
    target.write_bytes(target.read_bytes()[:100])
    skipped: list = []
    assert store.read_table(run, "eval_scores", skipped).num_rows == 0
    assert [(item.path, item.kind) for item in skipped] == [(target, SkipKind.UNREADABLE)]
    store.write_cell(run, "eval_scores", "later", "small", [make_record(EvalScore)])
    with pytest.raises(StoreError, match="not merged into, nothing removed"):
        compact.compact_run(run)
    assert (run / "eval_scores" / "later.parquet").exists()


def test_compacted_rows_of_a_cell_the_file_does_not_list_are_foreign(results):
    run = results / "r1"
    compact.compact_run(run)
    target = run / "eval_scores" / "compacted.parquet"
    table = pq.read_table(target)
    pq.write_table(table.replace_schema_metadata(store.compacted_metadata(["big-toy_add"])), target)
    skipped: list = []
    store.read_table(run, "eval_scores", skipped)
    assert skipped[0].kind == SkipKind.FOREIGN and "not one of the 1 cells" in skipped[0].reason


def test_no_cell_can_take_the_compacted_files_name(tmp_path):
    with pytest.raises(ValueError, match="not a usable file name"):
        store.write_cell(tmp_path / "run", "eval_scores", store.COMPACTED_STEM, "m", [])


def test_command_compacts_and_names_what_it_kept(results, tmp_path):
    run = results / "r1"
    (run / "perf_summary" / "big-chat.parquet").write_bytes(b"")
    result = CliRunner().invoke(app, ["compact", str(run)])
    assert result.exit_code == 0, result.output
    assert "eval_samples: 4 cell files merged, 4 cells compacted" in result.stdout
    assert result.stderr.startswith(f"warning: {run / 'perf_summary' / 'big-chat.parquet'}: skipped (unreadable)")
    again = CliRunner().invoke(app, ["compact", str(run)])
    assert again.exit_code == 0 and "eval_samples: 0 cell files merged, 4 cells compacted" in again.stdout
    missing = CliRunner().invoke(app, ["compact", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a run directory" in missing.stderr


# The child compacts a throwaway copy first, so that the timed compaction is all reading, writing and removing
# (pyarrow's first calls initialise for most of a second).
KILLED_CHILD = """
import sys, time
from bench import compact
compact.compact_run(sys.argv[1])
print("ready", flush=True)
started = time.perf_counter()
compact.compact_run(sys.argv[2])
print(time.perf_counter() - started, flush=True)
"""


def compaction(run: Path, kill_after_s: float | None) -> str:
    """Compact `run` in a child process, SIGKILLed `kill_after_s` after it starts; its last stdout line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    warm_up = shutil.copytree(run, run.parent.parent / f"warm-up-{run.parent.name}" / run.name)
    command = [sys.executable, "-c", KILLED_CHILD, str(warm_up), str(run)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        child.send_signal(signal.SIGKILL)
    output, _ = child.communicate()
    return output.decode().strip()


def test_a_compaction_killed_at_any_moment_loses_no_row(results, tmp_path):
    """SIGKILL real compactions at a quarter, half and three quarters of the time one takes: whatever each had
    done, the rows read are the same, and compacting again completes it."""
    run = results / "r1"
    before, compared = all_rows(run), comparison_json(results)
    duration_s = float(compaction(shutil.copytree(results, tmp_path / "timed") / "r1", None))
    for fraction in (0.25, 0.5, 0.75):
        copy = shutil.copytree(results, tmp_path / f"killed-{fraction}")
        compaction(copy / "r1", fraction * duration_s)
        assert all_rows(copy / "r1") == before and comparison_json(copy) == compared
        compact.compact_run(copy / "r1")
        assert all_rows(copy / "r1") == before
        assert all(sorted(p.name for p in (copy / "r1" / table).iterdir()) == ["compacted.parquet"] for table in TABLES)
