"""Damaged and hostile results trees: each is an error of one line naming the file, or a reported skip.

Every case starts from a good tree of two identical runs (`r1`, `r2`: teacher `big`, students `small` and
`tiny`, written by the store as the harness would), damages one thing in `r1`, then runs `compare` and
`leaderboard` through the CLI. An error case must exit 2 with one stderr line naming the file; a skip case
must exit 0, warn on stderr naming the file and why, and give exactly the undamaged comparison for every
row the damage does not touch. No case may end in a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import compact, compare, pairing, report, store
from bench.cli import app
from bench.records import EvalScore
from bench.store_check import SkipKind
from tests.unit.test_compare import build_results
from tests.unit.test_store import make_record

REPO = Path(__file__).resolve().parents[2]
RUNS = ("r1", "r2")
RowKey = tuple[str, str, str | None, str | None]  # run, student, task, workload


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    for run in RUNS:
        build_results(root, run_id=run)
    return root / "results"


@pytest.fixture
def results(pristine, tmp_path) -> Path:
    """A fresh copy of the good tree, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "results"))


def by_key(rows: list[dict]) -> dict[RowKey, dict]:
    return {(row["run_id"], row["student"], row["task"], row["workload"]): row for row in rows}


@pytest.fixture(scope="module")
def baseline(pristine) -> dict[RowKey, dict]:
    rows = compare.compare_results(pristine)
    assert len(rows) == 6  # per run: small on two tasks (one workload each), tiny with no data
    return by_key(json.loads(report.to_json(rows)))  # as `compare --format json` prints them


# -- damage helpers -----------------------------------------------------------------------------------


def cell(results: Path, table: str, key: str, run: str = "r1") -> Path:
    return results / run / table / f"{key}.parquet"


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Rewrite a Parquet file through `change`, keeping its metadata (schema_version, tool)."""
    table = pq.read_table(path)
    changed = change(table)
    pq.write_table(changed.replace_schema_metadata(changed.schema.metadata or table.schema.metadata), path)


def set_column(name: str, values: Callable[[pa.ChunkedArray], pa.Array]) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        index = table.schema.get_field_index(name)
        return table.set_column(index, name, values(table[name]))

    return change


def with_metadata(**items: bytes) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        return table.replace_schema_metadata({**table.schema.metadata, **{k.encode(): v for k, v in items.items()}})

    return change


def edit_manifest(results: Path, change: Callable[[dict], object]) -> None:
    path = results / "r1" / "run.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


ADAPTIVE_TASK = {"name": "toy_add", "limit": 200, "adaptive": {"chunk_documents": 25}}


def edit_config(**sections: object) -> Callable[[Path], None]:
    """A damage: r1's manifest with these config sections set, its compare section kept."""
    return lambda r: edit_manifest(r, lambda m: {**m, "config": {**m["config"], **sections}})


def adaptive_task(**keys: object) -> list[dict]:
    """The tasks section of a run with one adaptive task, these keys of it changed (None: left out)."""
    task = {**ADAPTIVE_TASK, **keys}
    return [{key: value for key, value in task.items() if value is not None}]


# -- the cases ----------------------------------------------------------------------------------------

SAMPLES = "eval_samples/small-toy_add"
SMALL_ADD = {("r1", "small", "toy_add", "chat")}
R1 = {("r1", "small", "toy_add", "chat"), ("r1", "small", "toy_sort", "chat")}
R1_ALL = R1 | {("r1", "tiny", None, None)}


@dataclass(frozen=True)
class Case:
    """One damage: what it does to `results`, and the message (stderr) and exit code it must give."""

    name: str
    damage: Callable[[Path], None]
    message: str  # a substring of the one stderr line (error) or the warning line (skip)
    names: str  # the file (relative to results/) the line must name
    kind: SkipKind | None = None  # None: an error, exit 2
    affected: frozenset[RowKey] = frozenset()  # rows that may differ or vanish (skips only)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def compacted(results: Path, table: str) -> Path:
    """r1 compacted (`distill-bench compact`), and the path of `table`'s compacted file."""
    compact.compact_run(results / "r1")
    return results / "r1" / table / f"{store.COMPACTED_STEM}.parquet"


def listing(keys: list[str]) -> Callable[[pa.Table], pa.Table]:
    """A compacted file's metadata listing `keys` as its cells."""
    return lambda table: table.replace_schema_metadata(store.compacted_metadata(keys))


CASES = [
    Case(
        "truncated parquet",
        lambda r: truncate(cell(r, "eval_samples", "small-toy_add")),
        "not a readable Parquet file (",
        f"r1/{SAMPLES}.parquet",
        SkipKind.UNREADABLE,
        frozenset(SMALL_ADD),
    ),
    Case(
        "garbage parquet",
        lambda r: cell(r, "perf_summary", "big-chat").write_bytes(b"PAR1" + bytes(range(256)) * 8 + b"PAR1"),
        "not a readable Parquet file (",
        "r1/perf_summary/big-chat.parquet",
        SkipKind.UNREADABLE,
        frozenset(R1),
    ),
    Case(
        "zero-byte parquet",
        lambda r: cell(r, "eval_scores", "big-toy_sort").write_bytes(b""),
        "not a readable Parquet file (",
        "r1/eval_scores/big-toy_sort.parquet",
        SkipKind.UNREADABLE,
        frozenset({("r1", "small", "toy_sort", "chat")}),
    ),
    Case(
        "directory named like a cell",
        lambda r: cell(r, "eval_scores", "extra").mkdir(),
        "not a regular file",
        "r1/eval_scores/extra.parquet",
        SkipKind.UNREADABLE,
    ),
    Case(
        "scores stored as strings",
        lambda r: rewrite(
            cell(r, "eval_scores", "small-toy_add"), set_column("value", lambda c: pc.cast(c, pa.string()))
        ),
        "column 'value' is string, expected double",
        "r1/eval_scores/small-toy_add.parquet",
        SkipKind.SCHEMA,
        frozenset(SMALL_ADD),
    ),
    Case(
        "key column of another integer type",
        lambda r: rewrite(
            cell(r, "eval_samples", "small-toy_add"), set_column("schema_version", lambda c: pc.cast(c, pa.int64()))
        ),
        "column 'schema_version' is int64, expected int32",
        f"r1/{SAMPLES}.parquet",
        SkipKind.SCHEMA,
        frozenset(SMALL_ADD),
    ),
    Case(
        "task column missing",
        lambda r: rewrite(cell(r, "eval_samples", "small-toy_add"), lambda t: t.drop_columns(["task"])),
        "missing 1 required column: 'task'",
        f"r1/{SAMPLES}.parquet",
        SkipKind.SCHEMA,
        frozenset(SMALL_ADD),
    ),
    Case(
        "unrelated schema",
        lambda r: pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), cell(r, "eval_samples", "big-toy_add")),
        "(not a eval_samples file?)",
        "r1/eval_samples/big-toy_add.parquet",
        SkipKind.SCHEMA,
        frozenset(SMALL_ADD),
    ),
    Case(
        "a column added in schema 2 missing from a schema-2 file",
        lambda r: rewrite(cell(r, "eval_scores", "small-toy_add"), lambda t: t.drop_columns(["higher_is_better"])),
        "missing 1 required column: 'higher_is_better'",
        "r1/eval_scores/small-toy_add.parquet",
        SkipKind.SCHEMA,
        frozenset(SMALL_ADD),
    ),
    Case(
        "NaN sample values",
        lambda r: rewrite(
            cell(r, "eval_samples", "small-toy_add"),
            set_column("value", lambda c: pa.array([float("nan")] + c.to_pylist()[1:], pa.float64())),
        ),
        "1 of 402 rows have NaN or infinity in 'value'",
        f"r1/{SAMPLES}.parquet",
        SkipKind.VALUES,
        frozenset(SMALL_ADD),
    ),
    Case(
        "infinite throughput",
        lambda r: rewrite(
            cell(r, "perf_summary", "small-chat"),
            set_column("output_tokens_per_s", lambda c: pa.array([float("inf")] * len(c), pa.float64())),
        ),
        "3 of 3 rows have NaN or infinity in 'output_tokens_per_s'",
        "r1/perf_summary/small-chat.parquet",
        SkipKind.VALUES,
        frozenset(R1),
    ),
    Case(
        "null in a required column",
        lambda r: rewrite(
            cell(r, "eval_samples", "small-toy_add"),
            set_column("doc_id", lambda c: pa.array([None] + c.to_pylist()[1:], pa.int64())),
        ),
        "1 of 402 rows have no 'doc_id' (required)",
        f"r1/{SAMPLES}.parquet",
        SkipKind.VALUES,
        frozenset(SMALL_ADD),
    ),
    Case(
        "no schema_version in any row",  # was a traceback: the version check met None
        lambda r: rewrite(
            cell(r, "eval_samples", "small-toy_add"),
            set_column("schema_version", lambda c: pa.array([None] * len(c), pa.int32())),
        ),
        "402 of 402 rows have no 'schema_version' (required)",
        f"r1/{SAMPLES}.parquet",
        SkipKind.VALUES,
        frozenset(SMALL_ADD),
    ),
    Case(
        "phantom rows of another run",
        lambda r: rewrite(
            cell(r, "eval_samples", "small-toy_add"), set_column("run_id", lambda c: pa.array(["r2"] * len(c)))
        ),
        "rows say run_id 'r2', not 'r1' (the folder's name; a copied or renamed run folder?)",
        f"r1/{SAMPLES}.parquet",
        SkipKind.FOREIGN,
        frozenset(SMALL_ADD),
    ),
    Case(
        "some phantom rows",
        lambda r: rewrite(
            cell(r, "eval_samples", "small-toy_add"),
            set_column("run_id", lambda c: pa.array(["r1"] * (len(c) - 2) + ["elsewhere"] * 2)),
        ),
        "2 of 402 rows say run_id 'elsewhere', not 'r1'",
        f"r1/{SAMPLES}.parquet",
        SkipKind.FOREIGN,
        frozenset(SMALL_ADD),
    ),
    Case(
        "a cell file renamed",
        lambda r: cell(r, "eval_samples", "small-toy_add").rename(cell(r, "eval_samples", "small-toy_add-copy")),
        "rows say cell_key 'small-toy_add', not 'small-toy_add-copy' (the file's name)",
        f"r1/{SAMPLES}-copy.parquet",
        SkipKind.FOREIGN,
        frozenset(SMALL_ADD),
    ),
    Case(
        "a newer schema_version file",
        lambda r: rewrite(cell(r, "eval_samples", "small-toy_add"), with_metadata(schema_version=b"99")),
        f"schema_version 99 is newer than this distill-bench reads ({store.SCHEMA_VERSION})",
        f"r1/{SAMPLES}.parquet",
        SkipKind.VERSION,
        frozenset(SMALL_ADD),
    ),
    Case(
        "a schema_version that is not a number",
        lambda r: rewrite(cell(r, "eval_samples", "small-toy_add"), with_metadata(schema_version=b"two")),
        "schema_version b'two' is not a version",
        f"r1/{SAMPLES}.parquet",
        SkipKind.VERSION,
        frozenset(SMALL_ADD),
    ),
    Case(
        "a newer run manifest",
        lambda r: edit_manifest(r, lambda m: {**m, "schema_version": 99}),
        "schema_version 99 is newer than this distill-bench reads",
        "r1/run.json",
        SkipKind.VERSION,
        frozenset(R1_ALL),
    ),
    Case(
        "empty table directory",
        lambda r: [path.unlink() for path in (r / "r1" / "eval_samples").iterdir()],
        "no cell files: this run has no rows of this table",
        "r1/eval_samples",
        SkipKind.EMPTY,
        frozenset(R1),
    ),
    Case(
        "stray non-Parquet file",
        lambda r: (r / "r1" / "eval_scores" / "notes.txt").write_text("copied by hand"),
        "not <cell_key>.parquet: not part of the results",
        "r1/eval_scores/notes.txt",
        SkipKind.NOT_A_CELL,
    ),
    Case(
        "a file where a table directory belongs",
        lambda r: (shutil.rmtree(r / "r1" / "perf_summary"), (r / "r1" / "perf_summary").write_text("x")),
        "expected the perf_summary table's directory, found a file",
        "r1/perf_summary",
        SkipKind.NOT_A_CELL,
        frozenset(R1),
    ),
    Case(
        "a truncated compacted file",
        lambda r: truncate(compacted(r, "eval_samples")),
        "not a readable Parquet file (",
        "r1/eval_samples/compacted.parquet",
        SkipKind.UNREADABLE,
        frozenset(R1),
    ),
    Case(
        "compacted rows of a cell the file does not list",
        lambda r: rewrite(compacted(r, "eval_scores"), listing(["big-toy_add", "big-toy_sort"])),
        "rows say cell_key 'small-toy_add', not one of the 2 cells the compacted file lists",
        "r1/eval_scores/compacted.parquet",
        SkipKind.FOREIGN,
        frozenset(R1 | {("r1", "small", None, "chat")}),  # no score left: small's row without quality
    ),
    Case(
        "run.json not JSON",
        lambda r: (r / "r1" / "run.json").write_text('{"config": {"compare": '),
        "not valid JSON: Expecting value: line 1 column 24",
        "r1/run.json",
    ),
    Case(
        "run.json with NaN",
        lambda r: (r / "r1" / "run.json").write_text('{"config": {"compare": {"retention_margin": NaN}}}'),
        "not valid JSON: NaN is not JSON",
        "r1/run.json",
    ),
    Case(
        "run.json not UTF-8",
        lambda r: (r / "r1" / "run.json").write_bytes(b'{"run_id": "\xff\xfe"}'),
        "not UTF-8 text",
        "r1/run.json",
    ),
    Case(
        "run.json an array",
        lambda r: (r / "r1" / "run.json").write_text("[1, 2]"),
        "expected a JSON object, got an array",
        "r1/run.json",
    ),
    Case(
        "run.json cell_keys a string",
        lambda r: edit_manifest(r, lambda m: {**m, "cell_keys": "small-toy_add"}),
        "cell_keys: expected an array, got a string",
        "r1/run.json",
    ),
    Case(
        "run.json schema_version a boolean",
        lambda r: edit_manifest(r, lambda m: {**m, "schema_version": True}),
        "schema_version: expected an integer, got a boolean",
        "r1/run.json",
    ),
    Case(
        "run.json compare margin a string",
        lambda r: edit_manifest(r, lambda m: {**m, "config": {"compare": {"retention_margin": "wide"}}}),
        "config.compare.retention_margin: Input should be a valid number",
        "r1/run.json",
    ),
    Case(
        "run.json adaptive a string",
        edit_config(tasks=adaptive_task(adaptive="yes")),
        "config.tasks.0.adaptive: Input should be a valid dictionary or instance of AdaptiveConfig",
        "r1/run.json",
    ),
    Case(
        "run.json chunk_documents missing",
        edit_config(tasks=adaptive_task(adaptive={})),
        "config.tasks.0.adaptive.chunk_documents: Field required",
        "r1/run.json",
    ),
    Case(
        "run.json chunk_documents zero",
        edit_config(tasks=adaptive_task(adaptive={"chunk_documents": 0})),
        "config.tasks.0.adaptive.chunk_documents: Input should be greater than 0",
        "r1/run.json",
    ),
    Case(
        "run.json chunk_documents a fraction",
        edit_config(tasks=adaptive_task(adaptive={"chunk_documents": 2.5})),
        "config.tasks.0.adaptive.chunk_documents: Input should be a valid integer, got a number with a fractional",
        "r1/run.json",
    ),
    Case(
        "run.json limit a string",
        edit_config(tasks=adaptive_task(limit="all")),
        "config.tasks.0.limit: Input should be a valid integer, unable to parse string as an integer",
        "r1/run.json",
    ),
    Case(
        "run.json limit negative",
        edit_config(tasks=adaptive_task(limit=-200)),
        "config.tasks.0.limit: Input should be greater than 0",
        "r1/run.json",
    ),
    Case(
        "run.json adaptive task without a limit",
        edit_config(tasks=adaptive_task(limit=None)),
        "config.tasks.0: adaptive: needs limit",
        "r1/run.json",
    ),
    Case(
        "run.json task without a name",
        edit_config(tasks=adaptive_task(name=None)),
        "config.tasks.0.name: Field required",
        "r1/run.json",
    ),
    Case(
        "run.json tasks an object",
        edit_config(tasks=ADAPTIVE_TASK),
        "config.tasks: Input should be a valid tuple",
        "r1/run.json",
    ),
    Case(
        "run.json task a string",
        edit_config(tasks=["toy_add"]),
        "config.tasks.0: Input should be a valid dictionary or instance of TaskConfig",
        "r1/run.json",
    ),
    Case(
        "run.json seed a string",
        edit_config(run={"name": "r1", "seed": "five"}, tasks=adaptive_task()),
        "config.run.seed: Input should be a valid integer, unable to parse string as an integer",
        "r1/run.json",
    ),
    Case(
        "run.json seed negative",
        edit_config(run={"name": "r1", "seed": -1}, tasks=adaptive_task()),
        "config.run.seed: must be between 0 and 4294967295",
        "r1/run.json",
    ),
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def assert_no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_damaged_tree_is_an_error_or_a_reported_skip(case: Case, results: Path, baseline, tmp_path) -> None:
    case.damage(results)
    named = str(results / case.names)
    shown = invoke("compare", str(results), "--format", "json")
    board = invoke("leaderboard", str(results), "--out", str(tmp_path / "board"))
    for result in (shown, board):
        assert_no_traceback(result)
    if case.kind is None:
        for result in (shown, board):
            assert result.exit_code == 2, result.output
            assert result.stdout == ""
            assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
            assert result.stderr.startswith(f"{named}: ") and case.message in result.stderr
        return
    for result in (shown, board):
        assert result.exit_code == 0, result.output
        (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
        assert warning.startswith(f"warning: {named}: skipped ({case.kind}): ") and case.message in warning
    rows = by_key(json.loads(shown.stdout))
    for key, expected in baseline.items():
        if key not in case.affected:
            assert rows.get(key) == expected, key
    # An affected row may come back changed in shape (without its workload when a perf file is skipped).
    assert {key[:3] for key in set(rows) - set(baseline)} <= {key[:3] for key in case.affected}
    # The library reports the same skip; without a list to collect skips into, it raises instead.
    skipped: list = []
    compare.compare_results(results, skipped=skipped)
    assert [(item.kind, str(item.path)) for item in skipped][:1] == [(case.kind, named)]
    with pytest.raises(store.StoreError, match=re.escape(case.message)):
        compare.compare_results(results)


def test_a_copied_run_folder_is_not_merged_into_the_run_it_copies(results, baseline, tmp_path) -> None:
    shutil.copytree(results / "r1", results / "r1-backup")  # its rows still say r1
    result = invoke("compare", str(results), "--format", "json")
    assert_no_traceback(result)
    assert result.exit_code == 0
    # The tables a comparison reads, in the order it reads them.
    files = [path for table in pairing.TABLES for path in sorted((results / "r1-backup" / table).glob("*.parquet"))]
    (warning,) = result.stderr.splitlines()
    assert warning == (
        f"warning: {results / 'r1-backup'}: {len(files)} files skipped (foreign rows), the first "
        f"{files[0].relative_to(results / 'r1-backup')}: rows say run_id 'r1', not 'r1-backup' (the folder's name; "
        "a copied or renamed run folder?)"
    )
    assert by_key(json.loads(result.stdout)) == baseline
    board = invoke("leaderboard", str(results), "--out", str(tmp_path / "board"))
    assert_no_traceback(board)
    assert board.exit_code == 0 and warning in board.stderr


def test_several_damages_at_once_through_the_installed_entry_point(results, baseline) -> None:
    """The real process (not CliRunner): warnings on stderr, no traceback, the rest of the comparison intact."""
    truncate(cell(results, "eval_samples", "small-toy_add", run="r2"))
    (results / "r1" / "eval_scores" / "notes.txt").write_text("x")
    shutil.copytree(results / "r1", results / "r1-backup")
    command = [sys.executable, "-c", "from bench.cli import app; app()", "compare", str(results), "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 4  # the stray file in r1 and in its copy, the copy, the torn file
    rows = by_key(json.loads(done.stdout))
    assert {key: rows[key] for key in baseline if key != ("r2", "small", "toy_add", "chat")} == {
        key: value for key, value in baseline.items() if key != ("r2", "small", "toy_add", "chat")
    }
    (results / "r1" / "run.json").write_text("{")
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(f"{results / 'r1' / 'run.json'}: not valid JSON")


# -- schema versions ----------------------------------------------------------------------------------


def test_an_older_file_lacking_a_later_column_reads_with_nulls(tmp_path) -> None:
    """A schema-1 eval_scores file (before higher_is_better) reads; the direction is null (higher is better)."""
    path = store.write_cell(tmp_path / "run", "eval_scores", "c", "m", [make_record(EvalScore)])
    rewrite(path, lambda t: t.drop_columns(["higher_is_better"]))
    rewrite(path, set_column("schema_version", lambda c: pa.array([1] * len(c), pa.int32())))
    rewrite(path, with_metadata(schema_version=b"1"))
    read = store.read_table(tmp_path / "run", "eval_scores")
    assert read.schema.equals(store.schema("eval_scores"))
    assert read["higher_is_better"].to_pylist() == [None] and read["value"].to_pylist() == [0.0]


def test_a_column_added_by_the_current_version_is_optional_only_in_older_files(tmp_path, monkeypatch) -> None:
    """As schema 3 adds perf columns (block, session_id, ...): a schema 2 file lacks them and reads with nulls;
    a file of the current version that lacks them is damaged. Shown with a column of today's perf_summary."""
    current = store.SCHEMA_VERSION
    monkeypatch.setitem(store.COLUMNS_ADDED, "perf_summary", {"gpu_count": current})
    run = tmp_path / "run"
    rows = [make_record(store.TABLES["perf_summary"], index) for index in range(2)]
    old = store.write_cell(run, "perf_summary", "old", "m", rows)
    rewrite(old, lambda t: t.drop_columns(["gpu_count"]))
    rewrite(old, set_column("schema_version", lambda c: pa.array([current - 1] * len(c), pa.int32())))
    rewrite(old, with_metadata(schema_version=str(current - 1).encode()))
    read = store.read_table(run, "perf_summary")
    assert read["gpu_count"].to_pylist() == [None, None] and read["workload"].to_pylist() == [
        "workload-0",
        "workload-1",
    ]
    new = store.write_cell(run, "perf_summary", "new", "m", rows)
    rewrite(new, lambda t: t.drop_columns(["gpu_count"]))
    skipped: list = []
    assert store.read_table(run, "perf_summary", skipped).num_rows == 2
    assert [(item.path, item.reason) for item in skipped] == [(new, "missing 1 required column: 'gpu_count'")]


def test_a_schema_2_perf_file_reads_under_the_current_schema(tmp_path) -> None:
    """A perf_summary file written before schema 3 lacks its columns: they read as nulls, the rest as written."""
    added = store.columns_added_after("perf_summary", 2) & set(store.schema("perf_summary").names)
    assert {"coalesced_requests", "slo_attainment", "capacity_requests_per_s"} <= added
    rows = [make_record(store.TABLES["perf_summary"], index) for index in range(2)]
    path = store.write_cell(tmp_path / "run", "perf_summary", "c", "m", rows)
    rewrite(path, lambda t: t.drop_columns(sorted(added)))
    rewrite(path, set_column("schema_version", lambda c: pa.array([2] * len(c), pa.int32())))
    rewrite(path, with_metadata(schema_version=b"2"))
    read = store.read_table(tmp_path / "run", "perf_summary")
    assert all(read[name].null_count == 2 for name in added)
    assert read["output_tokens_per_s"].to_pylist() == [row.output_tokens_per_s for row in rows]


def test_every_field_added_with_a_default_is_registered_in_columns_added() -> None:
    """Fields added to a record after its first version come with a default (the data contract); each must be
    in COLUMNS_ADDED, or every older file would be skipped as missing it."""
    for table, record in store.TABLES.items():
        defaulted = {
            f.name for f in dataclasses.fields(record) if f.default is not MISSING or f.default_factory is not MISSING
        }
        assert defaulted <= set(store.COLUMNS_ADDED.get(table, {})), table
    assert set(store.COLUMNS_ADDED) <= set(store.TABLES)


# -- the report ---------------------------------------------------------------------------------------


def test_skip_report_collapses_many_files_of_one_run_with_one_reason() -> None:
    run = Path("results/q-copy")
    same = [
        store.SkippedFile(run / "models" / f"m{i}.parquet", SkipKind.FOREIGN, "rows say run_id 'q'") for i in range(3)
    ]
    other = store.SkippedFile(run / "eval_scores" / "x.txt", SkipKind.NOT_A_CELL, "stray")
    lines = store.skip_report([*same, other, same[0]])
    assert lines == [
        "results/q-copy: 3 files skipped (foreign rows), the first models/m0.parquet: rows say run_id 'q'",
        "results/q-copy/eval_scores/x.txt: skipped (not a cell file): stray",
    ]
    assert store.skip_report(same[:2]) == [str(item) for item in same[:2]]


# -- hostile names ------------------------------------------------------------------------------------


def test_names_from_a_results_tree_are_text_not_markup(results, tmp_path) -> None:
    """A model name is whatever a tree says: rich markup in it must not end in a traceback, nor Markdown or
    HTML in it reach the Markdown outputs unescaped."""
    names = {"big": "[/]", "small": "a|b<i>x</i>[bold]"}
    for path in (results / "r1").glob("*/*.parquet"):
        table = pq.read_table(path)
        for column in {"model", "name", "teacher"} & set(table.column_names):
            values = pa.array([names.get(value, value) for value in table[column].to_pylist()], pa.string())
            table = table.set_column(table.schema.get_field_index(column), table.schema.field(column), values)
        pq.write_table(table, path)
    shown = invoke("compare", str(results))
    assert_no_traceback(shown)
    assert shown.exit_code == 0 and "a|b<i>x</i>[bold] keeps 95.6% of [/]'s acc on toy_add" in shown.stdout
    markdown = invoke("compare", str(results), "--format", "markdown")
    assert markdown.exit_code == 0 and "| r1 | [/] | a\\|b&lt;i&gt;x&lt;/i&gt;[bold] |" in markdown.stdout
    assert "<i>" not in markdown.stdout
    board = invoke("leaderboard", str(results), "--out", str(tmp_path / "board"))
    assert_no_traceback(board)
    assert board.exit_code == 0 and "<i>" not in (tmp_path / "board" / "leaderboard.md").read_text()
