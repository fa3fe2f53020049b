"""The plan stage: cell order, content keys (what changes them and what does not), and the resume filter."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from bench import chunks
from bench.config import BenchConfig, parse_config
from bench.hashing import FINGERPRINT_SAMPLE_BYTES, local_fingerprint
from bench.plan import Cell, block_state, build_plan, gpus_per_model, model_key, pending_cells, select_blocks
from tests.unit.test_config import setting, valid_config_data, write_workspace


@pytest.fixture
def parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Parse config data (default: the valid one) against a workspace in tmp_path, the working directory."""
    write_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)  # local sources are read relative to the working directory, as in a run

    def parse(data: dict | None = None) -> BenchConfig:
        return parse_config(copy.deepcopy(data or valid_config_data()), base=tmp_path)

    return parse


def keys(config: BenchConfig) -> dict[tuple[str, str, str, int | None], str]:
    return {(cell.kind, cell.model, cell.target, cell.block): cell.key for cell in build_plan(config)}


def edited(dotted: str, value: object) -> dict:
    return setting(dotted, value)(valid_config_data())


def test_evals_by_model_then_perf_blocks_of_every_model(parse) -> None:
    cells = build_plan(parse())
    assert [(c.kind, c.model, c.target, c.block) for c in cells] == [
        ("eval", "teacher", "toy_arith", None),
        ("eval", "student", "toy_arith", None),
        *[("perf", model, "chat", block) for block in range(3) for model in ("teacher", "student")],
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
    """Pin the recipe, so stored results stay addressable: sha256 of canonical JSON, first 16 hex chars.

    Settings that shape no result are left out (a model's distillation and active_parameters, a task's
    estimate), and so are samples_per_question while it is 1 and adaptive while unset (the keys from before
    they existed).
    """
    config = parse()
    model, task = config.models[0], config.tasks[0]
    content = {
        "kind": "eval",
        "model": model.model_dump(
            mode="json", exclude={"distillation": True, "active_parameters": True, "serve": {"replicas": True}}
        ),
        "target": task.model_dump(mode="json", exclude={"estimate", "samples_per_question", "adaptive"}),
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
        ("tasks.0.samples_per_question", 4, {"eval"}, BOTH),
    ],
)
def test_result_shaping_settings_change_keys(
    parse, dotted: str, value: object, changed_kinds: set[str], changed_models: tuple[str, ...]
) -> None:
    before, after = keys(parse()), keys(parse(edited(dotted, value)))
    for (kind, model, target, block), key in before.items():
        should_change = kind in changed_kinds and model in changed_models
        assert (after[kind, model, target, block] != key) == should_change, (kind, model, target, block)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("compare", {"retention_margin": 0.01, "confidence": 0.9}),
        ("run.results_dir", "elsewhere"),
        ("run.name", "another-run"),
        ("run.cell_retries", 3),
        ("tasks.0.estimate", {"documents": 30, "prompt_tokens": 200, "output_tokens": 8000}),
        ("tasks.0.samples_per_question", 1),  # the default, written out
        ("models.0.active_parameters", 1000),
        ("models.0.serve", {"replicas": 2}),  # where cells run, not what they produce: resume finds them done
        ("models.1.serve", {"replicas": "auto"}),
        ("workloads.0.adaptive", {"min_blocks": 2}),  # how many blocks run, not what one measures
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
    assert pending_cells(cells, {cells[0].key, cells[2].key, "0123456789abcdef"}) == [cells[1], *cells[3:]]
    assert pending_cells(cells, {c.key for c in cells}) == []


# -- perf blocks ------------------------------------------------------------------------------------


def test_block_index_is_in_the_perf_key_only(parse) -> None:
    cells = build_plan(parse())
    perf = [c for c in cells if c.kind == "perf"]
    assert len({c.key for c in perf}) == len(perf) == 6
    assert all(c.block is None for c in cells if c.kind == "eval")


def test_repeats_is_not_in_the_key_so_raising_it_adds_blocks(parse) -> None:
    three, five = build_plan(parse()), build_plan(parse(edited("workloads.0.repeats", 5)))
    assert set(three) < set(five)
    assert sorted({c.block for c in five if c.kind == "perf"}) == [0, 1, 2, 3, 4]


def perf_keys(cells: list[Cell], block: int) -> set[str]:
    return {c.key for c in cells if c.kind == "perf" and c.block == block}


def test_resume_keeps_complete_blocks_and_reruns_pending_ones(parse) -> None:
    cells = build_plan(parse())
    done = perf_keys(cells, 0) | perf_keys(cells, 2)
    assert build_plan(parse(), done) == cells


def test_resume_replaces_a_partly_measured_block(parse) -> None:
    """A kill in the middle of block 1: its stored trial is left aside and block 3 takes its place."""
    cells = build_plan(parse())
    teacher_block_1 = next(c for c in cells if c.kind == "perf" and c.block == 1 and c.model == "teacher")
    done = perf_keys(cells, 0) | {teacher_block_1.key}
    again = build_plan(parse(), done)
    assert sorted({c.block for c in again if c.kind == "perf"}) == [0, 2, 3]
    assert teacher_block_1.key not in {c.key for c in again}
    assert len(again) == len(cells)


def test_a_model_added_later_gets_fresh_blocks(parse) -> None:
    """Blocks measured without the new model are partial now: every model is measured in new blocks."""
    first = build_plan(parse())
    done = {c.key for c in first}
    data = valid_config_data()
    data["models"].append({**data["models"][1], "name": "student2"})
    again = build_plan(parse(data), done)
    assert sorted({c.block for c in again if c.kind == "perf"}) == [3, 4, 5]
    assert {c.model for c in again if c.block == 3} == {"teacher", "student", "student2"}


@pytest.mark.parametrize(
    ("states", "repeats", "chosen"),
    [
        ({}, 3, [0, 1, 2]),
        ({0: "complete", 1: "complete", 2: "complete"}, 3, [0, 1, 2]),
        ({1: "partial"}, 3, [0, 2, 3]),
        ({0: "partial", 1: "partial", 3: "complete"}, 2, [2, 3]),
        ({0: "complete", 1: "partial", 2: "pending"}, 1, [0]),
        ({0: "partial", 1: "partial", 2: "partial"}, 1, [3]),
    ],
)
def test_select_blocks_skips_partial_blocks(states: dict[int, str], repeats: int, chosen: list[int]) -> None:
    """Blocks are fake: block b has keys b-x and b-y; `states` says which of them are done."""
    done_of = {"complete": {"x", "y"}, "partial": {"x"}, "pending": set()}
    done = {f"{block}-{key}" for block, state in states.items() for key in done_of[state]}
    assert select_blocks(repeats, lambda block: [f"{block}-x", f"{block}-y"], done) == chosen


def test_block_state() -> None:
    assert block_state(["a", "b"], {"a", "b", "c"}) == "complete"
    assert block_state(["a", "b"], {"c"}) == "pending"
    assert block_state(["a", "b"], {"b"}) == "partial"


def test_cell_is_frozen() -> None:
    cell = Cell("eval", "m", "t", "0" * 16)
    assert cell.block is None
    with pytest.raises(AttributeError):
        cell.key = "x"  # type: ignore[misc]


def test_gpus_per_model(parse) -> None:
    config = parse(edited("models.0.serve", {"tensor_parallel_size": 4}))
    assert gpus_per_model(config) == {"teacher": 4, "student": 1}


def test_replicas_keep_the_model_key_and_the_key_from_before_the_setting(parse) -> None:
    """The recipe of a model's key is unchanged by `serve.replicas` (any value, or absent as before it existed)."""
    config = parse()
    model = config.models[0]
    before_the_setting = model.model_dump(mode="json", exclude={"distillation", "active_parameters"})
    del before_the_setting["serve"]["replicas"]
    expected = hashlib.sha256(
        json.dumps({"kind": "model", "model": before_the_setting, "weights": None}, sort_keys=True).encode()
    ).hexdigest()[:16]
    assert model_key(model, None) == expected
    for replicas in (3, "auto"):
        served = model.model_copy(update={"serve": model.serve.model_copy(update={"replicas": replicas})})
        assert model_key(served, None) == expected


def test_an_adaptive_task_plans_one_cell_per_chunk_on_shared_documents(parse) -> None:
    """limit 10, chunks of 4: chunks 0, 1, 2 split the 10 documents, the same for teacher and student, each
    chunk its own key; the workload's keys stay those of the config without `adaptive`."""
    plain = parse()
    config = parse(edited("tasks.0.adaptive", {"chunk_documents": 4}))
    evals = [cell for cell in build_plan(config) if cell.kind == "eval"]
    by_model = {model: [c for c in evals if c.model == model] for model in ("teacher", "student")}
    for model, model_cells in by_model.items():
        assert [c.chunk for c in model_cells] == [0, 1, 2], model
        assert sorted(doc for c in model_cells for doc in c.documents) == list(range(10))
        assert [len(c.documents) for c in model_cells] == [4, 4, 2]
        assert all(list(c.documents) == sorted(c.documents) for c in model_cells)  # as lm-eval's samples need
    assert [c.documents for c in by_model["teacher"]] == [c.documents for c in by_model["student"]]
    assert len({c.key for c in evals}) == len(evals)
    assert not {c.key for c in evals} & {c.key for c in build_plan(plain)}
    perf = {k: v for k, v in keys(config).items() if k[0] == "perf"}
    assert perf == {k: v for k, v in keys(plain).items() if k[0] == "perf"}
    assert build_plan(config) == build_plan(parse(edited("tasks.0.adaptive", {"chunk_documents": 4})))


def test_an_adaptive_task_draws_its_document_order_once_for_all_chunks_and_models(parse) -> None:
    """Each chunk is a slice of one seeded order: drawing it per chunk and model made `plan` quadratic in
    `limit` (seconds for a 20,000-document task)."""
    config = parse(edited("tasks.0.adaptive", {"chunk_documents": 4}))
    chunks._documents_in_order.cache_clear()
    build_plan(config)
    assert chunks._documents_in_order.cache_info().misses == 1
