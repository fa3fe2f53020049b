"""Every hash of the project: content keys of JSON payloads, fingerprints of local directories, weights
digests and lm-eval task config hashes. Nothing here imports vLLM, Ray or lm-eval.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench.localdir import scan_local_dir

KEY_HEX_CHARS = 16  # of cell keys, model keys, fingerprints and task config hashes
FINGERPRINT_SAMPLE_BYTES = 1 << 20  # read per end of each file: multi-GB shards stay cheap to fingerprint


def json_sha256(payload: object) -> str:
    """sha256 (hex) of the canonical JSON of a payload (sorted keys; str() for what JSON cannot hold).

    The one content hash of the project: config hashes, cell keys, task config hashes, toy build keys.
    """
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def short_hash(payload: object) -> str:
    """The first KEY_HEX_CHARS of `json_sha256`: cell and model keys."""
    return json_sha256(payload)[:KEY_HEX_CHARS]


def local_fingerprint(path: str | None) -> str | None:
    """A cheap fingerprint of a local directory's contents; None for hub ids and paths that do not exist.

    It hashes each file's relative name and size and its first and last MiB, so retrained weights (same
    shapes, new values) and edited task data change it, while a 70B checkpoint costs a few MiB of reading.
    The walk is `localdir.scan_local_dir`'s (bounded; hidden files and caches left out; a link leaving the
    directory is hashed by its target's name, never read); validation has refused directories it flags.
    """
    if path is None or not Path(path).is_dir():
        return None
    root, digest = Path(path), hashlib.sha256()
    for entry in scan_local_dir(root).entries:
        file = entry.path
        if entry.link_target is not None:
            digest.update(f"{file.relative_to(root).as_posix()}\0->{entry.link_target}\0".encode())
            continue
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
            handle.seek(max(FINGERPRINT_SAMPLE_BYTES, size - FINGERPRINT_SAMPLE_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()[:KEY_HEX_CHARS]


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the safetensors files of a model directory, in name order (the `models` table's exact
    identity of the weights; keys use the cheaper `local_fingerprint`)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def task_config_hash(config: dict[str, Any]) -> str:
    """A short hash of a task's resolved lm-eval config, to tell whether two scores come from the same task.

    `metadata.config_source` (where the YAML lies on this machine) is left out, so that the same task read
    from two checkouts hashes the same.
    Callables inside it (a `!function` filter class in `filter_list`) are hashed by module file stem and
    qualified name: lm-eval names a module it imports from a task directory by its absolute path, and str() of a
    function holds its memory address.
    """
    metadata = config.get("metadata")
    if isinstance(metadata, dict):
        config = {**config, "metadata": {k: v for k, v in metadata.items() if k != "config_source"}}
    return short_hash(_portable(config))


def _portable(value: Any) -> Any:
    """`value` with each callable inside dicts and lists replaced by "<module file stem>.<qualified name>"."""
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(item) for item in value]
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{Path(str(value.__module__)).name}.{value.__qualname__}"
    return value
