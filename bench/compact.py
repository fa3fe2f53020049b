"""`distill-bench compact RUN_DIR`: a finished run's cell files merged into one file per table.

Why: a run of the quickstart's shape has 54 cell files, a leaderboard tree of 670 such runs 36,180; every
file costs a reader an open, a footer and the store's checks, whatever its size. Compaction writes each
table's rows to `<table>/compacted.parquet` (the file's metadata lists its cells) and removes the cell files
it holds. Readers accept both layouts and a mix (`bench.store`), and DuckDB's `*/eval_scores/*.parquet`
globs match the compacted file too.

What is merged, per table (all but `failures`, whose files a later success removes one by one): the files
of finished cells (commit table written; every `models` file), each after the store's checks. A file that
fails them (damaged, foreign), or whose rows this schema version cannot hold (an older version's file
lacking a column now required), stays where it is and is reported. A cell still running or failed keeps its
files. An existing compacted file is merged with the new cells; a damaged one stops that table (its rows
are never dropped to make room).

Crash safety: the compacted file is written to a hidden temp name, fsynced and renamed into place before
any cell file it holds is removed, and a cell file is removed only if it is still the file that was read
(same size and modification time: a cell a running `distill-bench run` wrote again stays). Killed at any
point, the run reads the same rows: before the rename the temp file is ignored and the cell files are
intact; after it, each cell file left over replaces its own, identical, compacted rows. Running compact
again finishes the job and removes the temp files a killed compaction left. A run resumed after compaction
counts the compacted cells as done (`store.done_cell_keys`) and writes new cells as cell files beside it.
A run's `comparison.parquet` is recomputed by the next `compare` (its fingerprint names the files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench import store
from bench.store_check import Damaged, SkipKind, SkippedFile, StoreError


@dataclass(frozen=True)
class TableCompaction:
    """What compaction did to one table of a run."""

    table: str
    merged: int  # cell files merged (and removed)
    cells: int  # cells the compacted file holds now (0: none written)
    kept: tuple[SkippedFile, ...]  # cell files left as they are, and why


def compact_run(run_dir: Path) -> list[TableCompaction]:
    """Compact every table of one run (see the module docstring); StoreError when `run_dir` is not a run or
    a table's compacted file is damaged (the other tables are compacted first)."""
    run = Path(run_dir)
    if not store.is_run_dir(run):
        raise StoreError(run, "not a run directory (no run.json and no table directories)")
    done = store.done_cell_keys(run)
    results, damaged = [], []
    for table in store.TABLES:
        if table == store.FAILURES_TABLE or not (run / table).is_dir():
            continue
        try:
            results.append(_compact_table(run / table, table, done))
        except StoreError as error:
            damaged.append(error)
    if damaged:
        raise damaged[0]
    return results


def _finished(path: Path, table: str, done: set[str]) -> bool:
    return table == "models" or table in store.COMMIT_TABLES or path.stem in done


def _compact_table(directory: Path, table: str, done: set[str]) -> TableCompaction:
    target = directory / f"{store.COMPACTED_STEM}.parquet"
    for leftover in directory.glob(f".{target.name}.*.tmp"):  # a compaction killed before its rename
        leftover.unlink()
    cells = [
        path
        for path in sorted(directory.glob("*.parquet"))
        if path.stem != store.COMPACTED_STEM and not path.name.startswith(".") and _finished(path, table, done)
    ]
    kept, merged, parts = [], [], []
    for path in cells:
        identity = _identity(path)
        try:
            rows = store.read_file(path, table)
        except Damaged as damage:
            kept.append(SkippedFile(path, damage.kind, damage.reason))
            continue
        missing = [f.name for f in rows.schema if not f.nullable and rows[f.name].null_count]
        if missing:
            reason = f"an older schema version without {', '.join(missing[:3])}: kept as a cell file"
            kept.append(SkippedFile(path, SkipKind.VERSION, reason))
            continue
        merged.append((path, identity))
        parts.append(rows)
    existing = _existing(target, table)
    held = store.compacted_keys(target) if existing is not None else frozenset()
    if not merged:
        return TableCompaction(table, 0, len(held), tuple(kept))
    replaced = {path.stem for path, _ in merged}
    if existing is not None:  # a cell file replaces its cell's compacted rows
        parts.insert(0, existing.filter(pc.invert(pc.is_in(existing["cell_key"], pa.array(sorted(replaced))))))
    rows = pa.concat_tables(parts).sort_by([("cell_key", "ascending")])  # stable: each cell's rows in order
    keys = held | replaced  # by name, not by rows: a cell of no rows (a sweep-less perf_probes) is held too
    store.write_table(target, rows.replace_schema_metadata(store.compacted_metadata(keys)))
    store.remove_files([path for path, identity in merged if _identity(path) == identity])
    return TableCompaction(table, len(merged), len(keys), tuple(kept))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_size, status.st_mtime_ns


def _existing(target: Path, table: str) -> pa.Table | None:
    if not target.exists():
        return None
    try:
        return store.read_file(target, table, compacted=True)
    except Damaged as damage:
        raise StoreError(target, f"{damage.kind}: {damage.reason}; not merged into, nothing removed") from None
