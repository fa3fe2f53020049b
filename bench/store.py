"""The results store: Arrow schemas, atomic Parquet writes, and reading a results tree back.

Layout (one directory per run, one file per finished cell and table):

    results/<run_id>/run.json                      run manifest
    results/<run_id>/<table>/<cell_key>.parquet    one cell's rows of one table
    results/<run_id>/<table>/compacted.parquet     many cells' rows of one table (`bench.compact`)
    results/<run_id>/comparison.parquet            the run's comparison rows (`bench.comparison_file`)

Readers accept both layouts, and a mix: a table's rows are those of its compacted file, except that a cell
file beside it replaces the compacted rows of its cell (a compaction interrupted before it removed the cell
files it merged, or a cell written again after it), and the rows come back in cell-key order as the cell
files would give them.

The Arrow schema of each table is derived here, and only here, from the record dataclasses in
`bench.records`. Every write goes to a hidden temp file in the target directory, is fsynced, renamed over
the final name and the directory fsynced, so a crash leaves either the old file or the new one, never a
torn file. A cell counts as done (for resume) once its commit table is written: `eval_scores` for eval
cells (after `eval_samples`), `perf_summary` for perf cells (after `perf_requests` and `perf_probes`).

Reading treats a results tree as untrusted input: trees are copied around, merged by hand and read by
leaderboard builds. The policy is that a damaged tree never silently gives a different number and never a
traceback; each problem is either an error or a reported skip:

- Errors (`StoreError`, one line naming the file; the CLI exits 2): a `run.json` that is not UTF-8, not
  JSON (NaN included), not an object, or whose keys that readers use (`schema_version`, `run_id`,
  `cell_keys`, `config`, `config.compare`) have the wrong type. The manifest says which cells are current
  and how the run is judged: without it a comparison would silently use other cells or other margins.
- Skips (`SkippedFile(path, kind, reason)`, collected in the list the caller passes to `read_table`;
  compare and leaderboard print one warning line each): every cell file is checked before its rows are
  used, and left out whole when it is not a readable Parquet file; a column it has is not of the expected
  Arrow type (scores stored as strings are not converted); it lacks a column that its schema version
  had (see `COLUMNS_ADDED`: an older file's missing later columns are filled with nulls, so schema 2 files
  read under schema 3); its schema version is newer than this code's, or never existed; a required column
  holds nulls, or a float column NaN or infinity (records store a missing measurement as null); its rows'
  `run_id` is not its run folder's name or its rows' `cell_key` not its file name (the folder and file
  names are the authority: a run folder copied to `quickstart-backup` keeps rows saying `quickstart`, and
  merging them would mix two runs in one interval). Stray non-Parquet files and empty table directories
  are reported too; hidden names are the store's own temp files and are ignored. A run whose manifest has
  a newer schema version is left out whole, reported once.
- `read_table` without a `skipped` list raises StoreError at the first problem instead: no caller gets a
  skip it did not ask to hear about. The file is the unit of trust: one bad row leaves out its whole file
  (for a compacted file, the rows of every cell it holds; `bench.compact` merges only files that pass).
  The checks themselves are in `bench.store_check`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import tempfile
import types
import typing
from collections.abc import Callable, Collection, Sequence
from enum import StrEnum
from functools import cache, partial
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import store_check
from bench.records import CellFailure, EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary
from bench.store_check import CELL_KEYS_METADATA, Damaged, SkipKind, SkippedFile, StoreError

SCHEMA_VERSION = 5  # 2: eval_scores.higher_is_better; 3: perf blocks/session_id, coalesced requests, SLO
# attainment, sweeps (perf_probes), models server/loadgen cpus; 4: models.active_parameters and
# distillation cost, eval_scores.eval_concurrency and eval_batch_size; 5: eval_samples.response_tokens and
# eval_scores.eval_wall_s
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
# Columns added to a table after its first schema version, with the version that added them. A file of an
# older version may lack them (reading fills nulls); every other column must be in every file. Add a column
# here when adding it to a record. Names that no record has yet are ignored (version 3 is on its way).
COLUMNS_ADDED: dict[str, dict[str, int]] = {
    "eval_scores": {"higher_is_better": 2, "eval_concurrency": 4, "eval_batch_size": 4, "eval_wall_s": 5},
    "eval_samples": {"response_tokens": 5},
    "models": {
        "server_cpus": 3, "loadgen_cpus": 3, "active_parameters": 4, "distillation_usd": 4,
        "distillation_teacher_tokens": 4,
    },
    "perf_requests": {"coalesced": 3, "block": 3, "session_id": 3},
    "perf_summary": {
        "coalesced_requests": 3, "slo_attainment": 3, "capacity_requests_per_s": 3, "block": 3, "session_id": 3,
    },
    "perf_probes": {"block": 3, "session_id": 3},  # the table itself is new in 3
}  # fmt: skip

KEY_COLUMNS: tuple[pa.Field, ...] = (
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cell_key", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("schema_version", pa.int32(), nullable=False),
)
_ARROW_TYPES: dict[type, pa.DataType] = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
_TEMP_SUFFIX = ".tmp"  # temp names end in .tmp so no `*.parquet` glob (ours, DuckDB's) can match them
COMPACTED_STEM = "compacted"  # <table>/compacted.parquet holds many cells' rows; no cell key may be this


def _arrow_field(name: str, hint: Any) -> pa.Field:
    """Map one type hint (`T` or `T | None`) to a field; only `| None` makes a column nullable."""
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) in (types.UnionType, typing.Union)
    if is_union and type(None) in args and len(args) == 2:
        (inner,) = (arg for arg in args if arg is not type(None))
        return pa.field(name, _arrow_type(name, inner), nullable=True)
    return pa.field(name, _arrow_type(name, hint), nullable=False)


def _arrow_type(name: str, hint: Any) -> pa.DataType:
    if isinstance(hint, type) and issubclass(hint, StrEnum):  # a vocabulary is stored as its value
        return pa.string()
    try:
        return _ARROW_TYPES[hint]
    except (KeyError, TypeError):
        raise TypeError(f"{name}: no Arrow type for {hint!r}; records use str, int, float, bool or X | None") from None


def _metadata(extra: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
    return {
        b"schema_version": str(SCHEMA_VERSION).encode(),
        b"tool": TOOL_NAME.encode(),
        b"tool_version": _tool_version().encode(),
        **(extra or {}),
    }


@cache
def _tool_version() -> str:
    try:
        return importlib.metadata.version(TOOL_NAME)
    except importlib.metadata.PackageNotFoundError:  # running from a source checkout
        return "unknown"


@cache
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
    # Cell keys become file names; refuse anything that could escape the table directory or hide in it, and
    # the compacted file's name.
    if not cell_key or cell_key.startswith(".") or "/" in cell_key or os.sep in cell_key or cell_key == COMPACTED_STEM:
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


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Write `path` via a hidden temp file in the same directory: fsync, rename, fsync the directory.

    Not `durable`: no fsyncs (milliseconds each), for files derived from others (a stored comparison): readers
    still see the old file or the new one, and one a crash left torn reads as damaged and is recomputed.
    """
    _ensure_dir(path.parent)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def remove_files(paths: Sequence[Path]) -> None:
    """Remove files (those already gone are fine) and make each removal durable."""
    directories = set()
    for path in paths:
        if path.exists():
            path.unlink()
            directories.add(path.parent)
    for directory in sorted(directories):
        _fsync_dir(directory)


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


def records_table(record: type, rows: Sequence[Any], metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """Rows of one record dataclass as an Arrow table of `record_schema(record)`, `metadata` added to the file's."""
    target = record_schema(record)
    target = target.with_metadata({**target.metadata, **(metadata or {})})
    return _records_table(record.__name__, target, record, rows, {})


def write_table(path: Path, table: pa.Table, durable: bool = True) -> Path:
    """Atomically write an Arrow table as a standalone Parquet file (its schema metadata kept); `durable` as in
    `_atomic_write`."""
    _atomic_write(path, lambda handle: pq.write_table(table, handle), durable)
    return path


def write_records(path: Path, record: type, rows: Sequence[Any]) -> Path:
    """Atomically write rows of one record dataclass as a standalone Parquet file (e.g. the leaderboard)."""
    return write_table(path, records_table(record, rows))


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
        remove_files([cell_path(run_dir, FAILURES_TABLE, cell_key)])
    return path


def done_cell_keys(run_dir: Path) -> set[str]:
    """Cell keys whose commit table is written; a failures file alone does not make a cell done.

    A compacted commit table counts its cells; one whose list cannot be read counts none, so a resume runs
    those cells again and their new files take the place of the compacted rows.
    """
    keys = set()
    for table in COMMIT_TABLES:
        for path in _cell_files(Path(run_dir) / table):
            keys |= compacted_keys(path) if path.stem == COMPACTED_STEM else {path.stem}
    return keys


def compacted_keys(path: Path) -> frozenset[str]:
    """The cells a compacted file lists in its metadata; none when it cannot be read."""
    try:
        return store_check.compacted_cell_keys(pq.read_schema(path).metadata)
    except (Damaged, OSError, pa.ArrowException):
        return frozenset()


def compacted_metadata(cell_keys: Collection[str]) -> dict[bytes, bytes]:
    """The file metadata of a compacted file holding `cell_keys`, beside the usual schema version and tool."""
    return _metadata({CELL_KEYS_METADATA: json.dumps(sorted(cell_keys)).encode()})


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


# -- reading: a results tree is untrusted input (see the module docstring) -------------------------------


def columns_added_after(table: str, version: int) -> set[str]:
    """Columns of `table` that a file of schema `version` may lack: those a later schema version added."""
    return {name for name, added in COLUMNS_ADDED.get(table, {}).items() if added > version}


def _skip(skipped: list[SkippedFile] | None, path: Path, kind: SkipKind, reason: str) -> None:
    """Report a file left out, or raise when the caller collects no skips: nothing is skipped silently."""
    if skipped is None:
        raise StoreError(path, f"{kind}: {reason}")
    skipped.append(SkippedFile(path, kind, reason))


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run manifest of `run_dir`; FileNotFoundError when the run has none, StoreError when it is damaged."""
    return store_check.read_manifest(Path(run_dir) / MANIFEST_NAME)


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


def readable_runs(results_dir: Path, skipped: list[SkippedFile] | None = None) -> list[Path]:
    """`run_dirs` less the runs whose manifest has a newer schema_version: left out whole, and reported.

    A damaged manifest raises StoreError; a run without one is read (its files carry their own versions).
    """
    runs = []
    for run in run_dirs(results_dir):
        try:
            store_check.check_version(read_manifest(run).get("schema_version", SCHEMA_VERSION), SCHEMA_VERSION)
        except FileNotFoundError:
            pass
        except Damaged as damage:
            _skip(skipped, run / MANIFEST_NAME, damage.kind, f"{damage.reason}; the whole run is left out")
            continue
        runs.append(run)
    return runs


def _table_entries(run: Path, table: str, skipped: list[SkippedFile] | None) -> list[Path]:
    """The cell files of one run's table directory; stray entries and an empty directory are reported."""
    directory = run / table
    if not directory.exists():
        return []
    if not directory.is_dir():
        _skip(skipped, directory, SkipKind.NOT_A_CELL, f"expected the {table} table's directory, found a file")
        return []
    # Hidden names are the store's own temp files (a write a crash interrupted), never results.
    entries = sorted(path for path in directory.iterdir() if not path.name.startswith("."))
    if not entries and table != FAILURES_TABLE:  # a success removes its cell's failure: failures/ may empty
        _skip(skipped, directory, SkipKind.EMPTY, "no cell files: this run has no rows of this table")
    for path in entries:
        if path.suffix != ".parquet":
            _skip(skipped, path, SkipKind.NOT_A_CELL, "not <cell_key>.parquet: not part of the results")
    return [path for path in entries if path.suffix == ".parquet"]


def read_table(results_dir: Path, table: str, skipped: list[SkippedFile] | None = None) -> pa.Table:
    """All rows of `table` under a results directory or a run directory, each file checked first.

    With a `skipped` list, a damaged or foreign file is left out and reported there; without one, the first
    such file raises StoreError. No files gives an empty table with the schema.
    """
    parts = [read_run_table(run, table, skipped) for run in readable_runs(results_dir, skipped)]
    return pa.concat_tables(parts) if parts else schema(table).empty_table()


def read_run_table(
    run: Path,
    table: str,
    skipped: list[SkippedFile] | None = None,
    columns: Sequence[str] | None = None,
    cells: Collection[str] | None = None,
) -> pa.Table:
    """One run's rows of `table`, in either layout (see the module docstring), each file checked first.

    `cells`: only these cells' rows (None: all; a cell file of another cell is not even read); `columns`:
    only these columns (the checks still cover every column of a file). Skips as in `read_table`.
    """
    entries = _table_entries(run, table, skipped)
    compacted = [path for path in entries if path.stem == COMPACTED_STEM]
    wanted = [path for path in entries if path.stem != COMPACTED_STEM and (cells is None or path.stem in cells)]
    parts, read = [], set()
    for path, is_compacted in [*((path, False) for path in wanted), *((path, True) for path in compacted)]:
        try:
            rows = read_file(path, table, is_compacted)
        except Damaged as damage:
            _skip(skipped, path, damage.kind, damage.reason)
            continue
        if is_compacted:
            keep = pc.invert(pc.is_in(rows["cell_key"], pa.array(sorted(read), pa.string())))
            if cells is not None:
                keep = pc.and_(keep, pc.is_in(rows["cell_key"], pa.array(sorted(cells), pa.string())))
            rows = rows.filter(keep)
        else:
            read.add(path.stem)
        parts.append(rows)
    found = pa.concat_tables(parts) if parts else schema(table).empty_table()
    if compacted:  # cell-key order, stable: as the cell files alone would give the rows
        found = found.sort_by([("cell_key", "ascending")])
    return found.select(list(columns)) if columns is not None else found


def read_file(path: Path, table: str, compacted: bool = False) -> pa.Table:
    """One file of `table` (a cell file, or a `compacted` one) in the run folder that holds it, checked;
    `store_check.Damaged` when it must be left out."""
    run_id = path.absolute().parent.parent.name  # absolute: the run of `./eval_scores/x.parquet` has a name
    added = partial(columns_added_after, table)
    return store_check.read_cell_file(path, table, schema(table), SCHEMA_VERSION, added, run_id, compacted)


def _run_of(path: Path) -> Path:
    return path.parent.parent if path.parent.name in TABLES else path.parent


def skip_report(skipped: Sequence[SkippedFile], collapse_at: int = 3) -> list[str]:
    """One line per skipped file, except that many files of one run skipped for one reason (a copied run
    folder) are one line naming the first."""
    groups: dict[tuple[Path, SkipKind, str], list[SkippedFile]] = {}
    for item in dict.fromkeys(skipped):  # each table's read reports a left-out run again
        groups.setdefault((_run_of(item.path), item.kind, item.reason), []).append(item)
    lines = []
    for (run, kind, reason), items in groups.items():
        if len(items) < collapse_at:
            lines += [str(item) for item in items]
        else:
            first = items[0].path.relative_to(run)
            lines.append(f"{run}: {len(items)} files skipped ({kind}), the first {first}: {reason}")
    return lines
