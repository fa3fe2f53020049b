"""Checks of what is read back from a results tree: a run manifest, one cell file.

The policy (what is an error, what is a reported skip, and why) is in `bench.store`'s module docstring;
`bench.store` walks the tree and calls these. They take the expected schema and versions as arguments, so
this module needs nothing from the store and the store imports it without a cycle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CELL_KEYS_METADATA = b"cell_keys"  # a compacted file's metadata: the JSON array of the cells it holds


class SkipKind(StrEnum):
    """Why a file of a results tree was left out of a read."""

    UNREADABLE = "unreadable"  # not Parquet, truncated, or not a regular file
    NOT_A_CELL = "not a cell file"  # a stray file in a table directory
    EMPTY = "empty"  # a table directory without cell files
    VERSION = "unknown schema version"  # written by a newer distill-bench, or a version that never existed
    SCHEMA = "wrong schema"  # a required column missing, or a column of the wrong type
    VALUES = "bad values"  # null in a required column, NaN or infinity in a float column
    FOREIGN = "foreign rows"  # rows of another run or cell: a copied or renamed folder or file


@dataclass(frozen=True)
class SkippedFile:
    """A file (or directory) of a results tree that a read left out, and why (`reason` is one line)."""

    path: Path
    kind: SkipKind
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: skipped ({self.kind}): {self.reason}"


class StoreError(Exception):
    """A results tree that cannot be read as it stands; its text is one line that names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class Damaged(Exception):
    """A file that must be left out: the caller reports it (`SkippedFile`) or raises StoreError."""

    def __init__(self, kind: SkipKind, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0][:200] if lines else "") or type(error).__name__


def check_version(version: int, current: int) -> None:
    """Raise Damaged unless `version` is one this code (schema `current`) can read."""
    if version > current:
        reason = f"schema_version {version} is newer than this distill-bench reads ({current}): use a newer version"
        raise Damaged(SkipKind.VERSION, reason)
    if version < 1:
        raise Damaged(SkipKind.VERSION, f"schema_version {version} never existed")


# -- the manifest -------------------------------------------------------------------------------------

_JSON_TYPES: dict[type, str] = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
# The keys readers use, with their types; other keys are the run's record and are not read back.
_MANIFEST_TYPES: dict[str, type] = {"schema_version": int, "run_id": str, "cell_keys": list, "config": dict}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_json(path: Path) -> Any:
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise StoreError(path, "not UTF-8 text") from None
    except OSError as error:
        raise StoreError(path, f"cannot be read: {error.strerror or one_line(error)}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise StoreError(path, "not valid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError is a ValueError; so is a NaN
        raise StoreError(path, f"not valid JSON: {one_line(error)}") from None


def read_manifest(path: Path) -> dict[str, Any]:
    """A run manifest, the keys that readers use checked for type; StoreError naming the file otherwise.

    FileNotFoundError when there is none. A newer schema_version is returned as is (the caller decides).
    """
    manifest = _parse_json(path)
    if not isinstance(manifest, dict):
        raise StoreError(path, f"expected a JSON object, got {_json_type(manifest)}")
    for key, expected in _MANIFEST_TYPES.items():
        value = manifest.get(key, expected())
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            wanted = "an integer" if expected is int else _JSON_TYPES[expected]
            raise StoreError(path, f"{key}: expected {wanted}, got {_json_type(value)}")
    if not all(isinstance(key, str) for key in manifest.get("cell_keys", [])):
        raise StoreError(path, "cell_keys: expected an array of strings")
    if not isinstance(manifest.get("config", {}).get("compare", {}), dict):
        raise StoreError(path, "config.compare: expected an object")
    if manifest.get("schema_version", 1) < 1:
        raise StoreError(path, f"schema_version {manifest['schema_version']} never existed")
    return manifest


# -- one cell file ------------------------------------------------------------------------------------


def _file_version(metadata: dict[bytes, bytes] | None, data: pa.Table, current: int) -> int:
    """The file's schema version from its metadata and its rows' schema_version; `current` when it has neither."""
    versions = set()
    raw = (metadata or {}).get(b"schema_version")
    if raw is not None:
        try:
            versions.add(int(raw.decode()))
        except (UnicodeDecodeError, ValueError):
            raise Damaged(SkipKind.VERSION, f"schema_version {raw[:20]!r} is not a version") from None
    if "schema_version" in data.column_names and data.num_rows:
        # Nulls are left to `_check_values` (a required column): they are no version.
        versions |= {value for value in pc.min_max(data["schema_version"]).as_py().values() if value is not None}
    for version in versions:
        check_version(version, current)
    # The oldest: a file whose rows say 1 and metadata 2 may lack what 2 added.
    return min(versions, default=current)


def _check_types(expected: pa.Schema, found: pa.Schema) -> list[str]:
    """The expected columns the file has; Damaged on a duplicate or a column of another type (no casting)."""
    present = []
    for field in expected:
        indices = found.get_all_field_indices(field.name)
        if len(indices) > 1:
            raise Damaged(SkipKind.SCHEMA, f"column {field.name!r} appears {len(indices)} times")
        if not indices:
            continue
        found_type = found.field(indices[0]).type
        if not found_type.equals(field.type):
            raise Damaged(SkipKind.SCHEMA, f"column {field.name!r} is {found_type}, expected {field.type}")
        present.append(field.name)
    return present


def _check_missing(what: str, expected: pa.Schema, present: list[str], optional: set[str]) -> None:
    missing = [f.name for f in expected if f.name not in present and f.name not in optional]
    if missing:
        names = ", ".join(repr(name) for name in missing[:4]) + (", ..." if len(missing) > 4 else "")
        hint = f" (not a {what} file?)" if not present else ""
        noun = "required column" if len(missing) == 1 else "required columns"
        raise Damaged(SkipKind.SCHEMA, f"missing {len(missing)} {noun}: {names}{hint}")


@cache
def _value_columns(expected: pa.Schema) -> tuple[frozenset[str], frozenset[str]]:
    """(required, floating) column names of a schema."""
    required = frozenset(f.name for f in expected if not f.nullable)
    return required, frozenset(f.name for f in expected if pa.types.is_floating(f.type))


def _check_values(expected: pa.Schema, data: pa.Table, owners: dict[str, tuple[frozenset[str], str]]) -> None:
    """Nulls only where the schema allows them, finite floats, and rows that belong where the file lies.

    `owners` maps a column to the values its rows may have, and how a message names them. Each check is one
    vectorised test over the file (all float columns at once); only a file that fails it is looked at column
    by column, in the schema's order, for the message.
    """
    rows = data.num_rows
    required, floating = _value_columns(expected)
    named = list(zip(data.column_names, data.columns, strict=True))
    nulls = any(column.null_count for name, column in named if name in required)
    chunks = [chunk for name, column in named if name in floating for chunk in column.chunks]
    if nulls or (rows and chunks and pc.all(pc.is_finite(pa.concat_arrays(chunks))).as_py() is False):
        for name, column in named:
            if name in required and column.null_count:
                raise Damaged(SkipKind.VALUES, f"{column.null_count} of {rows} rows have no {name!r} (required)")
            bad = (pc.sum(pc.invert(pc.is_finite(column))).as_py() or 0) if name in floating else 0
            if bad:
                reason = f"{bad} of {rows} rows have NaN or infinity in {name!r} (a missing value is null)"
                raise Damaged(SkipKind.VALUES, reason)
    for column, (allowed, described) in owners.items():
        values = pa.array(sorted(allowed), pa.string())
        if rows and not pc.all(pc.is_in(data[column], values)).as_py():
            others = pc.filter(data[column], pc.invert(pc.is_in(data[column], values)))
            share = "rows say" if len(others) == rows else f"{len(others)} of {rows} rows say"
            raise Damaged(SkipKind.FOREIGN, f"{share} {column} {others[0].as_py()!r}, not {described}")


def compacted_cell_keys(metadata: dict[bytes, bytes] | None) -> frozenset[str]:
    """The cells a compacted file holds, from its `cell_keys` metadata (a JSON array of strings)."""
    raw = (metadata or {}).get(CELL_KEYS_METADATA)
    try:
        keys = json.loads(raw) if raw is not None else None
    except (UnicodeDecodeError, ValueError):
        keys = None
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise Damaged(SkipKind.SCHEMA, "a compacted file without the list of its cells (metadata cell_keys)")
    return frozenset(keys)


def read_cell_file(
    path: Path,
    table: str,
    expected: pa.Schema,
    current: int,
    added_after: Callable[[int], set[str]],
    run_id: str,
    compacted: bool = False,
) -> pa.Table:
    """One file of `table` in run `run_id`, checked, as a table of `expected`; Damaged when it is not usable.

    A cell file's rows must all say its name as their cell_key; a `compacted` file's rows (many cells') a key
    that its metadata lists. `current` is the schema version this code writes; `added_after(v)` names the
    columns a file of version v may lack, which come back as nulls.
    """
    if not path.is_file():
        raise Damaged(SkipKind.UNREADABLE, "not a regular file")
    try:
        parquet = pq.ParquetFile(path)
        found = parquet.schema_arrow
    except Exception as error:  # noqa: BLE001 - pyarrow raises many types for one cause: the file is damaged
        raise Damaged(SkipKind.UNREADABLE, f"not a readable Parquet file ({one_line(error)})") from None
    if compacted:
        keys = compacted_cell_keys(found.metadata)
        cells = (keys, f"one of the {len(keys)} cells the compacted file lists")
    else:
        cells = (frozenset({path.stem}), f"{path.stem!r} (the file's name)")
    present = _check_types(expected, found)
    try:
        # No thread pool: these files are small, and handing their few columns to threads costs more than it saves.
        data = parquet.read(columns=present, use_threads=False)
    except Exception as error:  # noqa: BLE001 - as above: a torn page, a bad encoding, a short read
        raise Damaged(SkipKind.UNREADABLE, f"not a readable Parquet file ({one_line(error)})") from None
    _check_missing(table, expected, present, added_after(_file_version(found.metadata, data, current)))
    folder = f"{run_id!r} (the folder's name; a copied or renamed run folder?)"
    owners = {"run_id": (frozenset({run_id}), folder), "cell_key": cells}
    _check_values(expected, data, owners)
    if len(present) == len(expected):  # every column, in the schema's order (`_check_types` keeps it)
        return pa.Table.from_arrays(data.columns, schema=expected)
    have = set(present)
    columns = [data[f.name] if f.name in have else pa.chunked_array([pa.nulls(len(data), f.type)]) for f in expected]
    return pa.Table.from_arrays(columns, schema=expected)
