"""Local model and task directories: a bounded walk that never follows a link out of the directory.

Validation reports its problems; plan fingerprints its entries (`bench.hashing.local_fingerprint`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_LOCAL_FILES = 10_000  # files a local model or task directory may hold: each is fingerprinted by plan
MODEL_DIR_MARKERS = ("config.json", "params.json")  # Hugging Face and Mistral layouts: what vLLM loads
_PSEUDO_FILESYSTEMS = frozenset({"proc", "sys", "dev"})


@dataclass(frozen=True)
class LocalEntry:
    """A file of a local model or task directory, as plan fingerprints it."""

    path: Path  # root / relative path
    link_target: str | None = None  # a symlink leading out of the directory: its target, named, never followed


@dataclass(frozen=True)
class LocalScan:
    """The visible files of a local directory, and why it cannot be used (empty when it can)."""

    entries: tuple[LocalEntry, ...]
    problems: tuple[str, ...]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"  # not inputs: VCS data, editor files, caches


def _on_pseudo_filesystem(path: Path) -> bool:
    return path.is_absolute() and len(path.parts) > 1 and path.parts[1] in _PSEUDO_FILESYSTEMS


def _local_entry(path: Path, root: Path, real_root: Path) -> tuple[LocalEntry | None, str | None]:
    """The entry for one file (None for what is not an input: sockets, fifos, devices), or a problem."""
    name = path.relative_to(root).as_posix()
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            target = path.resolve(strict=True)
            if target.is_relative_to(real_root) and not _on_pseudo_filesystem(target):
                return (LocalEntry(path) if target.is_file() and os.access(target, os.R_OK) else None), None
            if _on_pseudo_filesystem(target) or not stat.S_ISREG(target.stat().st_mode):
                return None, f"{name!r} links to {str(target)!r}, which is not a regular file"
            return LocalEntry(path, os.readlink(path)), None
        if not stat.S_ISREG(mode):
            return None, None
        if not os.access(path, os.R_OK):
            return None, f"{name!r} is not readable"
        return LocalEntry(path), None
    except (OSError, RuntimeError) as error:  # a dangling link, a link loop, a file gone since listing
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return None, f"{name!r} cannot be read ({reason})"


def scan_local_dir(root: Path, limit: int = MAX_LOCAL_FILES) -> LocalScan:
    """The visible files under a local model or task directory, bounded: validate and plan never walk a
    whole tree (`source: /usr`), never enter linked directories and never read through a link that leaves
    the directory (a model folder's link to /proc/self/mem is a problem here, not a crash later).

    Hidden files and `__pycache__` are left out. Links out of the directory to regular files stay entries
    (the Hugging Face cache's snapshot folders are links to content-named blobs), named rather than read.
    """
    real_root = root.resolve()
    if _on_pseudo_filesystem(real_root):
        return LocalScan(
            (), (f"{str(root)!r} is on a pseudo filesystem (/{real_root.parts[1]}), not a directory of files",)
        )
    entries, problems, seen = [], [], 0
    for directory, dirnames, filenames in os.walk(root):  # followlinks=False: linked directories are not entered
        dirnames[:] = [name for name in dirnames if not _hidden(name)]
        seen += len(dirnames) + len(filenames)
        if seen > limit:
            return LocalScan(
                (),
                (f"more than {limit:,} files and folders under {str(root)!r}: point it at a model or task directory",),
            )
        for name in filenames:
            if _hidden(name):
                continue
            entry, problem = _local_entry(Path(directory, name), root, real_root)
            if entry is not None:
                entries.append(entry)
            if problem is not None:
                problems.append(problem)
    return LocalScan(tuple(sorted(entries, key=lambda entry: entry.path)), tuple(problems))
