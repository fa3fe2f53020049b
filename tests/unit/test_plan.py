"""The plan stage: cell order, content keys (what changes them and what does not), and the resume filter."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from bench.config import BenchConfig, parse_config
from bench.plan import FINGERPRINT_SAMPLE_BYTES, Cell, build_plan, gpus_per_model, local_fingerprint, pending_cells
from tests.unit.test_config import setting, valid_config_data, write_workspace


@pytest.fixture
def parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Parse config data (default: the valid one) against a workspace in tmp_path, the working directory."""
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)  # local sources are read relative to the working directory, as in a run

    def parse(data: dict | None = None) -> BenchConfig:
        return parse_config(copy.deepcopy(data or valid_config_data()), base=tmp_path)

    return parse


def keys(config: BenchConfig) -> dict[tuple[str, str, str], str]:
    return {(cell.kind, cell.model, cell.target): cell.key for cell in build_plan(config)}


def edited(dotted: str, value: object) -> dict:
    return setting(dotted, value)(valid_config_data())


def test_cells_in_config_order_models_outer(parse) -> None:
    cells = build_plan(parse())
    assert [(c.kind, c.model, c.target) for c in cells] == [
        ("eval", "teacher", "toy_arith"),
        ("perf", "teacher", "chat"),
        ("eval", "student", "toy_arith"),
        ("perf", "student", "chat"),
    ]
    assert all(len(c.key) == 16 and int(c.key, 16) >= 0 for c in cells)
    assert len({c.key for c in cells}) == len(cells)


def test_no_tasks_or_workloads_means_no_cells_of_that_kind(parse) -> None:
    data = valid_config_data()
    del data["workloads"]
    assert {c.kind for c in build_plan(parse(data))} == {"eval"}


def test_keys_stable_across_runs(parse) -> None:
    assert build_plan(parse()) == build_plan(parse())
    reordered = {key: value for key, value in reversed(valid_config_data().items())}
    assert keys(parse(reordered)) == keys(parse())


def test_key_is_the_documented_content_hash(parse) -> None:
    """Pin the recipe, so stored results stay addressable: sha256 of canonical JSON, first 16 hex chars."""
    config = parse()
    model, task = config.models[0], config.tasks[0]
    content = {
        "kind": "eval",
        "model": model.model_dump(mode="json"),
        "target": task.model_dump(mode="json"),
        "seed": config.run.seed,
        "files": {"weights": local_fingerprint(model.source), "task_files": local_fingerprint(task.include_path)},
    }
    canonical = json.dumps(content, sort_keys=True)
    assert build_plan(config)[0].key == hashlib.sha256(canonical.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "serve",
    [
        {"tensor_parallel_size": 2},
        {"dtype": "bfloat16"},
        {"max_model_len": 512},
        {"extra_args": ["--enforce-eager"]},
    ],
)
def test_serve_settings_change_only_that_models_keys(parse, serve: dict) -> None:
    before, after = keys(parse()), keys(parse(edited("models.1.serve", serve)))
    for cell, key in before.items():
        assert (after[cell] != key) == (cell[1] == "student"), cell


BOTH = ("teacher", "student")


@pytest.mark.parametrize(
    ("dotted", "value", "changed_kinds", "changed_models"),
    [
        ("run.seed", 8, {"eval", "perf"}, BOTH),
        ("models.1.revision", "abc123", {"eval", "perf"}, ("student",)),
        ("tasks.0.num_fewshot", 3, {"eval"}, BOTH),
        ("tasks.0.limit", 20, {"eval"}, BOTH),
        ("workloads.0.levels", [1, 8], {"perf"}, BOTH),
        ("workloads.0.slo", {"ttft_s": 0.5}, {"perf"}, BOTH),
    ],
)
def test_result_shaping_settings_change_keys(
    parse, dotted: str, value: object, changed_kinds: set[str], changed_models: tuple[str, ...]
) -> None:
    before, after = keys(parse()), keys(parse(edited(dotted, value)))
    for (kind, model, target), key in before.items():
        should_change = kind in changed_kinds and model in changed_models
        assert (after[kind, model, target] != key) == should_change, (kind, model, target)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("compare", {"retention_margin": 0.01, "confidence": 0.9}),
        ("run.results_dir", "elsewhere"),
        ("run.name", "another-run"),
        ("run.cell_retries", 3),
    ],
)
def test_reading_settings_do_not_change_keys(parse, dotted: str, value: object) -> None:
    assert keys(parse(edited(dotted, value))) == keys(parse())


def test_retrained_weights_change_only_that_models_keys(parse, tmp_path: Path) -> None:
    weights = tmp_path / "models/student/model.safetensors"
    weights.write_bytes(b"A" * 100)
    before = keys(parse())
    weights.write_bytes(b"B" * 100)  # same name and size, new values
    after = keys(parse())
    for cell, key in before.items():
        assert (after[cell] != key) == (cell[1] == "student"), cell


def test_edited_task_data_changes_only_eval_keys(parse, tmp_path: Path) -> None:
    data = tmp_path / "tasks/data/test.jsonl"
    data.parent.mkdir()
    data.write_text('{"q": "1+1", "a": "2"}\n')
    before = keys(parse())
    data.write_text('{"q": "1+1", "a": "3"}\n')
    after = keys(parse())
    for cell, key in before.items():
        assert (after[cell] != key) == (cell[0] == "eval"), cell


def test_fingerprint_reads_content_not_timestamps_or_caches(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    shard = tmp_path / "model-00001.safetensors"
    shard.write_bytes(bytes(3 * FINGERPRINT_SAMPLE_BYTES))
    first = local_fingerprint(str(tmp_path))
    shard.write_bytes(bytes(3 * FINGERPRINT_SAMPLE_BYTES))  # rewritten, same bytes, new mtime
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__/x.pyc").write_bytes(b"cache")
    (tmp_path / ".lock").write_text("")
    assert local_fingerprint(str(tmp_path)) == first
    shard.write_bytes(bytes(3 * FINGERPRINT_SAMPLE_BYTES - 1) + b"\x01")  # the last byte of a large shard
    assert local_fingerprint(str(tmp_path)) != first


def test_hub_ids_have_no_fingerprint() -> None:
    assert local_fingerprint("deepseek-ai/DeepSeek-R1") is None
    assert local_fingerprint(None) is None


def test_pending_drops_done_cells_and_keeps_order(parse) -> None:
    cells = build_plan(parse())
    assert pending_cells(cells, set()) == cells
    assert pending_cells(cells, {cells[0].key, cells[2].key, "0123456789abcdef"}) == [cells[1], cells[3]]
    assert pending_cells(cells, {c.key for c in cells}) == []


def test_cell_is_frozen() -> None:
    cell = Cell("eval", "m", "t", "0" * 16)
    with pytest.raises(AttributeError):
        cell.key = "x"  # type: ignore[misc]


def test_gpus_per_model(parse) -> None:
    config = parse(edited("models.0.serve", {"tensor_parallel_size": 4}))
    assert gpus_per_model(config) == {"teacher": 4, "student": 1}
