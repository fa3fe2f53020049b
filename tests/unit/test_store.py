"""bench.store: schemas derived from records, atomic cell files, the resume commit rule, readers."""

from __future__ import annotations

import dataclasses
import enum as enum_module
import json
import os
import re
import typing
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import store
from bench.records import CellFailure, EvalSample, EvalScore, ModelRecord

README = Path(__file__).resolve().parents[2] / "results" / "README.md"
_VALUES = {
    str: lambda name, i: f"{name}-{i}",
    int: lambda _, i: i,
    float: lambda _, i: i / 2,
    bool: lambda _, i: i % 2 == 0,
}


def make_record(record: type, index: int = 0, **overrides):
    """A record of `record` with a value of the right type in every field (distinct per `index`)."""
    hints = typing.get_type_hints(record)
    values = {}
    for field in dataclasses.fields(record):
        options = (*typing.get_args(hints[field.name]), hints[field.name])
        enum = next((t for t in options if isinstance(t, type) and issubclass(t, enum_module.Enum)), None)
        if enum is not None:  # a vocabulary: its members in turn
            values[field.name] = list(enum)[index % len(enum)]
            continue
        base = next(t for t in options if t in _VALUES)
        values[field.name] = _VALUES[base](field.name, index)
    return record(**{**values, **overrides})


def eval_score(task: str = "toy_add") -> EvalScore:
    return make_record(EvalScore, task=task)


def build_tree(root: Path) -> Path:
    """results/ with two runs of a teacher and its student, every table written, as the harness would."""
    results = root / "results"
    roles = {"teacher": {"role": "teacher", "teacher": None}, "student": {"role": "student", "teacher": "teacher"}}
    for run_id in ("run-a", "run-b"):
        for model, provenance in roles.items():
            store.write_cell(
                results / run_id, "models", model, model, [make_record(ModelRecord, name=model, **provenance)]
            )
            for table, record in store.TABLES.items():
                if table != "models":
                    rows = [make_record(record, index) for index in range(3)]
                    store.write_cell(results / run_id, table, f"{table}-{model}", model, rows)
        store.write_manifest(results / run_id, {"run_id": run_id})
    return results


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# -- schemas ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(store.TABLES))
def test_schema_is_key_columns_then_record_fields(table):
    record = store.TABLES[table]
    schema = store.schema(table)
    hints = typing.get_type_hints(record)
    assert schema.names == [
        "run_id",
        "cell_key",
        "model",
        "schema_version",
        *(f.name for f in dataclasses.fields(record)),
    ]
    assert schema.field("schema_version").type == pa.int32()
    for field in dataclasses.fields(record):
        assert schema.field(field.name).nullable == (type(None) in typing.get_args(hints[field.name]))
    assert schema.metadata[b"schema_version"] == str(store.SCHEMA_VERSION).encode()


def test_schema_maps_python_types():
    scores, requests = store.schema("eval_scores"), store.schema("perf_requests")
    assert scores.field("value").type == pa.float64() and not scores.field("value").nullable
    assert scores.field("stderr").type == pa.float64() and scores.field("stderr").nullable
    assert scores.field("n").type == pa.int64()
    assert requests.field("ok").type == pa.bool_()
    assert requests.field("error").type == pa.string() and requests.field("error").nullable


def test_unknown_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown table"):
        store.write_cell(tmp_path, "nope", "c", "m", [])


# -- writing and reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(store.TABLES))
def test_round_trip_every_table(tmp_path, table):
    record = store.TABLES[table]
    rows = [make_record(record, index) for index in range(3)]
    path = store.write_cell(tmp_path / "run-1", table, "cell-1", "student", rows)
    assert path == tmp_path / "run-1" / table / "cell-1.parquet"
    read = store.read_table(tmp_path / "run-1", table)
    assert read.schema.equals(store.schema(table))
    keys = {"run_id": "run-1", "cell_key": "cell-1", "model": "student", "schema_version": store.SCHEMA_VERSION}
    assert read.to_pylist() == [{**keys, **dataclasses.asdict(row)} for row in rows]


def test_file_metadata_names_schema_version_and_tool(tmp_path):
    path = store.write_cell(tmp_path / "run", "eval_scores", "c", "m", [eval_score()])
    metadata = pq.read_metadata(path).metadata
    assert metadata[b"schema_version"] == b"5"
    assert metadata[b"tool"] == b"distill-bench"


def test_none_is_stored_as_null(tmp_path):
    row = make_record(EvalScore, stderr=None)
    store.write_cell(tmp_path / "run", "eval_scores", "c", "m", [row])
    assert store.read_table(tmp_path / "run", "eval_scores")["stderr"].null_count == 1


def test_empty_rows_write_a_valid_file_with_the_schema(tmp_path):
    path = store.write_cell(tmp_path / "run", "eval_samples", "c", "m", [])
    assert pq.read_table(path).num_rows == 0
    assert pq.read_schema(path).remove_metadata().equals(store.schema("eval_samples").remove_metadata())


def test_bad_rows_are_refused(tmp_path):
    with pytest.raises(TypeError, match="expected EvalScore"):
        store.write_cell(tmp_path, "eval_scores", "c", "m", [make_record(EvalSample)])
    with pytest.raises(ValueError, match="required columns.*'task'"):
        store.write_cell(tmp_path, "eval_scores", "c", "m", [make_record(EvalScore, task=None)])
    for key in ("", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="not a usable file name"):
            store.write_cell(tmp_path, "eval_scores", key, "m", [])


def test_read_table_on_empty_or_missing_dir_is_empty_with_schema(tmp_path):
    for directory in (tmp_path, tmp_path / "missing"):
        table = store.read_table(directory, "perf_summary")
        assert table.num_rows == 0
        assert table.schema.equals(store.schema("perf_summary"))


def test_read_table_reads_a_results_dir_or_one_run(tmp_path):
    results = build_tree(tmp_path)
    assert store.read_table(results, "eval_scores").num_rows == 12
    one_run = store.read_table(results / "run-b", "eval_scores")
    assert set(one_run["run_id"].to_pylist()) == {"run-b"} and one_run.num_rows == 6


# -- atomicity ----------------------------------------------------------------------------------------


def test_write_leaves_only_the_final_file(tmp_path):
    store.write_cell(tmp_path / "run", "eval_scores", "c", "m", [eval_score()])
    assert files_in(tmp_path / "run" / "eval_scores") == ["c.parquet"]


def test_crash_before_rename_keeps_earlier_cells_and_marks_nothing_done(tmp_path, monkeypatch):
    run = tmp_path / "run"
    store.write_cell(run, "eval_scores", "old", "m", [eval_score("first")])

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.write_cell(run, "eval_scores", "new", "m", [eval_score()])
    with pytest.raises(OSError, match="disk gone"):
        store.write_cell(run, "eval_scores", "old", "m", [eval_score("second")])
    monkeypatch.undo()

    assert files_in(run / "eval_scores") == ["old.parquet"]
    assert store.done_cell_keys(run) == {"old"}
    assert store.read_table(run, "eval_scores")["task"].to_pylist() == ["first"]


def test_temp_file_left_by_a_hard_crash_is_ignored(tmp_path):
    results = build_tree(tmp_path)
    torn = results / "run-a" / "eval_scores" / ".torn.parquet.x1y2.tmp"
    torn.write_bytes(b"PAR1 half a file")
    assert "torn" not in store.done_cell_keys(results / "run-a")
    assert store.read_table(results, "eval_scores").num_rows == 12
    query = f"select count(*) from read_parquet('{results}/*/eval_scores/*.parquet')"
    assert duckdb.sql(query).fetchall() == [(12,)]


# -- resume commit rule -------------------------------------------------------------------------------


def test_cell_is_done_only_when_its_commit_table_is_written(tmp_path):
    run = tmp_path / "run"
    assert store.done_cell_keys(run) == set()
    store.write_cell(run, "eval_samples", "eval-cell", "m", [make_record(EvalSample)])
    store.write_cell(run, "perf_requests", "perf-cell", "m", [])
    store.write_cell(run, "failures", "failed-cell", "m", [make_record(CellFailure)])
    assert store.done_cell_keys(run) == set()
    store.write_cell(run, "eval_scores", "eval-cell", "m", [eval_score()])
    store.write_cell(run, "perf_summary", "perf-cell", "m", [])
    assert store.done_cell_keys(run) == {"eval-cell", "perf-cell"}


def test_success_removes_a_stale_failure(tmp_path):
    run = tmp_path / "run"
    store.write_cell(run, "failures", "cell", "m", [make_record(CellFailure)])
    store.write_cell(run, "failures", "other", "m", [make_record(CellFailure)])
    store.write_cell(run, "eval_samples", "cell", "m", [])
    assert files_in(run / "failures") == ["cell.parquet", "other.parquet"]
    store.write_cell(run, "eval_scores", "cell", "m", [eval_score()])
    assert files_in(run / "failures") == ["other.parquet"]


# -- manifest -----------------------------------------------------------------------------------------


def test_manifest_round_trip_is_sorted_and_indented(tmp_path):
    manifest = {"run_id": "r", "config": {"b": 1, "a": [1, 2]}}
    path = store.write_manifest(tmp_path / "r", manifest)
    assert store.read_manifest(tmp_path / "r") == manifest
    assert path.read_text() == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert files_in(tmp_path / "r") == ["run.json"]


# -- results/README.md --------------------------------------------------------------------------------


def readme_columns() -> dict[str, list[tuple[str, str, bool]]]:
    """Per table section of the README, its column rows as (name, type, nullable)."""
    tables: dict[str, list[tuple[str, str, bool]]] = {}
    current = None
    for line in README.read_text().splitlines():
        if line.startswith("### Key columns"):
            current = tables.setdefault("keys", [])
        elif heading := re.fullmatch(r"### `(\w+)`.*", line):
            current = tables.setdefault(heading.group(1), [])
        elif (row := re.match(r"\| `(\w+)` \| (\w+) \| (yes|no) \|", line)) and current is not None:
            current.append((row.group(1), row.group(2), row.group(3) == "yes"))
    return tables


def test_readme_lists_every_column_of_every_table():
    expected = {table: [(f.name, str(f.type), f.nullable) for f in store.schema(table)] for table in store.TABLES}
    documented = readme_columns()
    key_columns = documented.pop("keys")
    assert key_columns == [(f.name, str(f.type), f.nullable) for f in store.KEY_COLUMNS]
    assert {table: key_columns + rows for table, rows in documented.items()} == expected


def test_readme_examples_run_against_a_results_tree(tmp_path, monkeypatch, capsys):
    build_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    examples = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    printed = []
    for example in examples:
        exec(compile(example, str(README), "exec"), {})
        printed.append(capsys.readouterr().out)
    scores, pairing, arrow = printed
    assert "teacher" in scores and "student" in scores and "task-2" in scores
    assert "run-a" in pairing and "run-b" in pairing  # rows only appear if the student/teacher join matched
    assert "output_tokens_per_s" in arrow and "'model': 'student'" in arrow
