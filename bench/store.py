"""The results store: Arrow schemas, atomic Parquet writes, and reading a results tree back.

Layout (one directory per run, one file per finished cell and table):

    results/<run_id>/run.json                      run manifest
    results/<run_id>/<table>/<cell_key>.parquet    one cell's rows of one table

The Arrow schema of each table is derived here, and only here, from the record dataclasses in
`bench.records`. Every write goes to a hidden temp file in the target directory, is fsynced, renamed over
the final name and the directory fsynced, so a crash leaves either the old file or the new one, never a
torn file. A cell counts as done (for resume) once its commit table is written: `eval_scores` for eval
cells (after `eval_samples`), `perf_summary` for perf cells (after `perf_requests` and `perf_probes`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import tempfile
import types
import typing
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench.records import CellFailure, EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary

SCHEMA_VERSION = 3  # 2: eval_scores.higher_is_better; 3: perf blocks/session_id, coalesced requests, SLO
# attainment, sweeps (perf_probes), models server/loadgen cpus
TOOL_NAME = "distill-bench"
MANIFEST_NAME = "run.json"

TABLES: dict[str, type] = {
    "models": ModelRecord,
    "eval_scores": EvalScore,
    "eval_samples": EvalSample,
    "perf_requests": PerfRequest,
    "perf_probes": PerfProbe,
    "perf_summary": PerfSummary,
    "failures": CellFailure,
}
# Writing one of these tables finishes a cell; the cell's other tables are written before it.
COMMIT_TABLES = ("eval_scores", "perf_summary")
FAILURES_TABLE = "failures"

KEY_COLUMNS: tuple[pa.Field, ...] = (
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cell_key", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("schema_version", pa.int32(), nullable=False),
)
_ARROW_TYPES: dict[type, pa.DataType] = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
_TEMP_SUFFIX = ".tmp"  # temp names end in .tmp so no `*.parquet` glob (ours, DuckDB's) can match them


def _arrow_field(name: str, hint: Any) -> pa.Field:
    """Map one type hint (`T` or `T | None`) to a field; only `| None` makes a column nullable."""
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) in (types.UnionType, typing.Union)
    if is_union and type(None) in args and len(args) == 2:
        (inner,) = (arg for arg in args if arg is not type(None))
        return pa.field(name, _arrow_type(name, inner), nullable=True)
    return pa.field(name, _arrow_type(name, hint), nullable=False)


def _arrow_type(name: str, hint: Any) -> pa.DataType:
    try:
        return _ARROW_TYPES[hint]
    except (KeyError, TypeError):
        raise TypeError(f"{name}: no Arrow type for {hint!r}; records use str, int, float, bool or X | None") from None


def _metadata() -> dict[bytes, bytes]:
    return {
        b"schema_version": str(SCHEMA_VERSION).encode(),
        b"tool": TOOL_NAME.encode(),
        b"tool_version": _tool_version().encode(),
    }


@cache
def _tool_version() -> str:
    try:
        return importlib.metadata.version(TOOL_NAME)
    except importlib.metadata.PackageNotFoundError:  # running from a source checkout
        return "unknown"


def record_schema(record: type) -> pa.Schema:
    """The Arrow schema of a record dataclass alone: its fields in declaration order, with the file metadata."""
    hints = typing.get_type_hints(record)
    return pa.schema([_arrow_field(f.name, hints[f.name]) for f in dataclasses.fields(record)], metadata=_metadata())


@cache
def schema(table: str) -> pa.Schema:
    """The Arrow schema of `table`: the key columns, then the record's fields in declaration order."""
    record = _record_class(table)
    fields = list(record_schema(record))
    clashes = {f.name for f in fields} & {f.name for f in KEY_COLUMNS}
    if clashes:
        raise TypeError(f"{record.__name__}: fields {sorted(clashes)} clash with the key columns")
    return pa.schema([*KEY_COLUMNS, *fields], metadata=_metadata())


def _record_class(table: str) -> type:
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; tables are {sorted(TABLES)}") from None


def _check_cell_key(cell_key: str) -> None:
    # Cell keys become file names; refuse anything that could escape the table directory or hide in it.
    if not cell_key or cell_key.startswith(".") or "/" in cell_key or os.sep in cell_key:
        raise ValueError(f"cell key {cell_key!r} is not a usable file name")


# -- atomic files -------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    _fsync_dir(directory.parent)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` via a hidden temp file in the same directory: fsync, rename, fsync the directory."""
    _ensure_dir(path.parent)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _remove_durably(path: Path) -> None:
    if path.exists():
        path.unlink()
        _fsync_dir(path.parent)


# -- writing ------------------------------------------------------------------------------------------


def to_arrow(table: str, run_id: str, cell_key: str, model: str, rows: Sequence[Any]) -> pa.Table:
    """Rows of one cell as an Arrow table with the table's schema (key columns filled in)."""
    record = _record_class(table)
    wrong = {type(row).__name__ for row in rows if type(row) is not record}
    if wrong:
        raise TypeError(f"{table}: expected {record.__name__} rows, got {sorted(wrong)}")
    keys = {"run_id": run_id, "cell_key": cell_key, "model": model, "schema_version": SCHEMA_VERSION}
    key_columns = {name: [value] * len(rows) for name, value in keys.items()}
    return _records_table(table, schema(table), record, rows, key_columns)


def _records_table(
    what: str, target: pa.Schema, record: type, rows: Sequence[Any], columns: dict[str, list]
) -> pa.Table:
    """`columns` plus one column per field of the `record` rows, as a table of the `target` schema."""
    for field in dataclasses.fields(record):
        columns[field.name] = [getattr(row, field.name) for row in rows]
    arrow = pa.Table.from_pydict(columns, schema=target)
    # Arrow does not enforce nullable=False on construction; a None in a required field is a bug upstream.
    nulls = [f.name for f in target if not f.nullable and arrow.column(f.name).null_count]
    if nulls:
        raise ValueError(f"{what}: None in required columns {nulls}")
    return arrow


def write_records(path: Path, record: type, rows: Sequence[Any]) -> Path:
    """Atomically write rows of one record dataclass as a standalone Parquet file (e.g. the leaderboard)."""
    arrow = _records_table(path.name, record_schema(record), record, rows, {})
    _atomic_write(path, lambda handle: pq.write_table(arrow, handle))
    return path


def cell_path(run_dir: Path, table: str, cell_key: str) -> Path:
    """Where one cell's rows of one table live."""
    return run_dir / table / f"{cell_key}.parquet"


def write_cell(run_dir: Path, table: str, cell_key: str, model: str, rows: Sequence[Any]) -> Path:
    """Atomically write one cell's rows of `table` to `run_dir/<table>/<cell_key>.parquet`.

    Zero rows still write a valid file with the schema. Writing a commit table (`eval_scores`,
    `perf_summary`) marks the cell done and removes a failures file left by an earlier attempt.
    """
    run_dir = Path(run_dir)
    _check_cell_key(cell_key)
    arrow = to_arrow(table, run_dir.name, cell_key, model, rows)
    path = cell_path(run_dir, table, cell_key)
    _atomic_write(path, lambda handle: pq.write_table(arrow, handle))
    if table in COMMIT_TABLES:
        # After the commit, not before: a crash in between leaves a stale failure next to a done cell,
        # which is harmless, rather than a failed cell with no record of its failure.
        _remove_durably(cell_path(run_dir, FAILURES_TABLE, cell_key))
    return path


def done_cell_keys(run_dir: Path) -> set[str]:
    """Cell keys whose commit table is written; a failures file alone does not make a cell done."""
    return {path.stem for table in COMMIT_TABLES for path in _cell_files(Path(run_dir) / table)}


def _cell_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("*.parquet") if not path.name.startswith("."))


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Atomically write the run manifest `run_dir/run.json` (indent 2, sorted keys)."""
    path = Path(run_dir) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _atomic_write(path, lambda handle: handle.write(text.encode()))
    return path


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run manifest of `run_dir`; FileNotFoundError when the run has none."""
    return json.loads((Path(run_dir) / MANIFEST_NAME).read_text())


# -- reading ------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """True when `path` is one run's directory rather than a results directory holding runs."""
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or any((path / table).is_dir() for table in TABLES)


def run_dirs(results_dir: Path) -> list[Path]:
    """The run directories under a results directory (or the directory itself if it is a run)."""
    results_dir = Path(results_dir)
    if is_run_dir(results_dir):
        return [results_dir]
    if not results_dir.is_dir():
        return []
    return sorted(path for path in results_dir.iterdir() if path.is_dir() and is_run_dir(path))


def table_files(results_dir: Path, table: str) -> list[Path]:
    """Every finished file of `table` under a results directory or a run directory, sorted."""
    _record_class(table)
    return [path for run in run_dirs(results_dir) for path in _cell_files(run / table)]


def read_table(results_dir: Path, table: str) -> pa.Table:
    """All rows of `table` under a results directory or a run directory; no files gives an empty table."""
    files = [str(path) for path in table_files(results_dir, table)]
    return ds.dataset(files, schema=schema(table), format="parquet").to_table()
