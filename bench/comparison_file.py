"""`results/<run>/comparison.parquet`: a run's comparison rows, written once and read back while current.

Why: comparing a run reads and checks every one of its cell files, milliseconds each; a leaderboard over
hundreds of runs would do that for every run on every build. A run's rows depend only on its files, its
manifest and the code that compares them, so they are stored beside the run with a fingerprint of exactly
those (file metadata `comparison_key`) and reused while the fingerprint matches. The metadata also lists
the cells whose rows went in (`cell_keys`).

The fingerprint (`fingerprint`) is the sha256 of
- the run folder's name (the store's checks judge rows by it: a copied folder is another run),
- run.json's bytes (the current cell keys, the compare settings),
- for each table a comparison reads: whether its directory is there, and every entry's name, size and
  modification time (a cell a resume added, a file removed, rewritten, damaged, compacted),
- the comparing code: the source of the modules a row depends on, and the numpy, scipy and pyarrow versions.
So stale rows are never used: the run is compared from its files again and the file rewritten. Copying a
tree without keeping modification times (`cp -r`; `cp -a` and `rsync -a` keep them) costs one comparison
per run.

`compare` writes the file only for a run read without a skipped file (a damaged run is compared afresh each
time, so its warnings are printed each time) and only when the fingerprint taken before reading the run
equals the one after (a run still writing cells is not stored half-read). An unreadable comparison.parquet
is stale, not an error; one that cannot be written (a read-only tree) is skipped: the rows are computed
as before.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import store

NAME = "comparison.parquet"
KEY_METADATA = b"comparison_key"
# What a row depends on besides the run's files: these modules' source and these packages' versions.
_CODE = (
    "chunks", "compare", "comparison_file", "config", "hashing", "matched", "pairing", "records", "report",
    "sequential", "stats", "store", "store_check",
)  # fmt: skip
_PACKAGES = ("numpy", "scipy", "pyarrow")


@cache
def _code_digest(code: tuple[str, ...] = _CODE) -> str:
    digest = hashlib.sha256()
    for name in code:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    for package in _PACKAGES:
        digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
    return digest.hexdigest()


def _entries(directory: Path) -> list[tuple[str, bool, int, int]] | str:
    """(name, is a file, size, mtime ns) of each entry, sorted; hidden names (the store's temp files) left out."""
    try:
        with os.scandir(directory) as scan:
            found = [
                (entry.name, entry.is_file(), entry.stat().st_size, entry.stat().st_mtime_ns)
                for entry in scan
                if not entry.name.startswith(".")
            ]
    except FileNotFoundError:
        return "absent"
    except NotADirectoryError:
        return "a file"
    return sorted(found)


def fingerprint(run: Path, tables: Collection[str], code: tuple[str, ...] = _CODE) -> str:
    """The fingerprint of what a comparison of `run` reads from `tables` (see the module docstring); `code`:
    the bench modules its rows depend on (another file derived from a run, `bench.adaptive`'s, names more)."""
    try:
        manifest = (run / store.MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        manifest = b"no manifest"
    state = {table: _entries(run / table) for table in sorted(tables)}
    parts = [_code_digest(code), run.name, hashlib.sha256(manifest).hexdigest(), json.dumps(state)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


_GLOB = set("*?[{")  # DuckDB reads each path of a list as a glob pattern


def load_fresh(expected: Mapping[Path, str], name: str = NAME) -> tuple[set[Path], list[dict]]:
    """The runs (keys of `expected`) whose stored fingerprint is their value, and all their stored rows.

    Runs without a file or with a stale or unreadable one are left out. The files are read by one DuckDB
    query (a few hundred small files in a fraction of a second); if that fails on a damaged file, each file is
    read on its own so that only the damaged one counts as stale, as is a path DuckDB would take for a glob.
    """
    paths = {run / name: expected[run] for run in expected if (run / name).is_file()}
    batch = {path: key for path, key in paths.items() if not _GLOB & set(str(path))}
    read = _read_batch(batch) if batch else ([], [])
    if read is None:  # a damaged file failed the batch: every file on its own
        read, batch = ([], []), {}
    fresh, rows = read
    for path, key in paths.items():
        if path not in batch and (table := _read_one(path, key)) is not None:
            fresh.append(path)
            rows += table.to_pylist()
    return {path.parent for path in fresh}, rows


def _read_batch(paths: Mapping[Path, str]) -> tuple[list[Path], list[dict]] | None:
    """The files whose stored key matches, and their rows, through DuckDB; None when DuckDB fails on one."""
    import duckdb  # lazy: only reading stored comparisons needs it

    connection = duckdb.connect()
    try:
        connection.execute("set enable_progress_bar = false")  # it would print over the command's output
        query = "select file_name, value from parquet_kv_metadata(?) where key = ?"
        stored = set(connection.execute(query, [list(map(str, paths)), KEY_METADATA]).fetchall())
        fresh = [path for path, key in paths.items() if (str(path), key.encode()) in stored]
        if not fresh:
            return [], []
        result = connection.execute("select * from read_parquet(?)", [list(map(str, fresh))])
        names = [column[0] for column in result.description]
        rows = [dict(zip(names, values, strict=True)) for values in result.fetchall()]
    except duckdb.Error:
        return None
    finally:
        connection.close()
    return fresh, rows


def _read_one(path: Path, key: str) -> pa.Table | None:
    try:
        stored = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    return stored if (stored.schema.metadata or {}).get(KEY_METADATA) == key.encode() else None


def save(run: Path, rows: pa.Table, key: str, cell_keys: Collection[str], name: str = NAME) -> None:
    """Store a run's comparison rows with their fingerprint and cells; skipped where the run cannot be written."""
    metadata = {
        **(rows.schema.metadata or {}),
        KEY_METADATA: key.encode(),
        b"cell_keys": json.dumps(sorted(cell_keys)).encode(),
    }
    try:
        # Not fsynced: derived data; a file a crash left torn is unreadable, hence stale, and recomputed.
        store.write_table(run / name, rows.replace_schema_metadata(metadata), durable=False)
    except OSError:  # a read-only tree: the rows were computed, they just are not kept
        return
