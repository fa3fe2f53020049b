"""The toy build: deterministic for a seed, cached, disjoint splits, loadable model directories."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.hashing import weights_sha256
from bench.toy import tasks
from bench.toy.build import MODEL_NAMES, build
from bench.toy.tokenizer import encode

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny preset built twice from scratch with the same seed, in two directories."""
    roots = [tmp_path_factory.mktemp(f"toy{i}") for i in range(2)]
    for root in roots:
        build(root / "models", root / "tasks", "tiny", seed=7, log=lambda _: None)
    return roots[0], roots[1]


def test_build_is_bit_for_bit_deterministic(tiny_builds: tuple[Path, Path]) -> None:
    first, second = tiny_builds
    for name in MODEL_NAMES:
        assert weights_sha256(first / "models" / name) == weights_sha256(second / "models" / name)
    for task_file in sorted((first / "tasks" / "data").iterdir()):
        assert task_file.read_bytes() == (second / "tasks" / "data" / task_file.name).read_bytes()


def test_second_build_returns_at_once_from_cache(tiny_builds: tuple[Path, Path]) -> None:
    root = tiny_builds[0]
    before = (root / "models" / "report.json").read_text()
    started = time.monotonic()
    report = build(root / "models", root / "tasks", "tiny", seed=7, log=lambda _: None)
    assert time.monotonic() - started < 2
    assert json.dumps(report, indent=2, sort_keys=True) + "\n" == before


def test_changing_a_student_setting_does_not_retrain_the_teacher(tiny_builds, tmp_path, monkeypatch) -> None:
    import dataclasses
    import shutil

    from bench.toy import build as toy_build

    root = tmp_path / "copy"
    shutil.copytree(tiny_builds[0], root)
    tiny = toy_build.PRESETS["tiny"]
    other = dataclasses.replace(tiny, student_steps=tiny.student_steps + 1)
    monkeypatch.setitem(toy_build.PRESETS, "tiny-other", other)
    logged: list[str] = []
    build(root / "models", root / "tasks", "tiny-other", seed=7, log=logged.append)
    assert "teacher: cached" in logged
    teacher = (root / "models" / "teacher" / "build.json").read_text()
    assert teacher == (tiny_builds[0] / "models" / "teacher" / "build.json").read_text()
    student = weights_sha256(root / "models" / "student-kd")
    assert student != weights_sha256(tiny_builds[0] / "models" / "student-kd")


def test_saved_directories_load_in_transformers(tiny_builds: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in MODEL_NAMES:
        model_dir = tiny_builds[0] / "models" / name
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        assert model.config.architectures == ["LlamaForCausalLM"]
        prompt = "add 12+345="
        assert tokenizer(prompt).input_ids == [tokenizer.bos_token_id, *encode(prompt)]
        assert tokenizer.decode(encode("sort 321=123")) == "sort 321=123"
        assert tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False) == prompt


def test_train_stream_never_yields_a_held_out_prompt() -> None:
    held_out = {e.prompt for task in tasks.GENERATIVE_TASKS for e in tasks.held_out_split(task, 200, seed=0)}
    stream = tasks.train_stream(0, held_out)
    drawn = [next(stream) for _ in range(5000)]
    assert not held_out & {e.prompt for e in drawn}
    assert {e.task for e in drawn} == set(tasks.GENERATIVE_TASKS)


def test_lm_eval_task_files_cover_both_output_types(tiny_builds: tuple[Path, Path]) -> None:
    import yaml

    task_dir = tiny_builds[0] / "tasks"
    specs = {path.stem: yaml.safe_load(path.read_text()) for path in task_dir.glob("toy_*.yaml")}
    assert {spec["output_type"] for spec in specs.values()} == {"generate_until", "multiple_choice"}
    assert yaml.safe_load((task_dir / "toy.yaml").read_text())["task"] == list(tasks.ALL_TASKS)
    for doc in map(json.loads, (task_dir / "data" / "toy_add_mc.jsonl").read_text().splitlines()):
        assert len(set(doc["choices"])) == 4
        prompt_sum = sum(map(int, doc["prompt"].removeprefix("add ").removesuffix("=").split("+")))
        assert doc["choices"][doc["gold"]] == str(prompt_sum)
