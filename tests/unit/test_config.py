"""Config contract: every malformed config is rejected through the CLI with the key path that is wrong.

Each case starts from a valid workspace (config, price table, model and task directories in tmp_path),
breaks one thing, and runs `distill-bench validate`: exit code 2, the line names the exact key, and
nothing is written. The other unit tests reuse `write_workspace` and `valid_config_data` from here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import BenchConfig, parse_config

PRICES_YAML = 'prices: {cpu-core: {usd_per_hour: 0.05, source: "test fixture", date: "2026-11-01"}}\n'


def valid_config_data() -> dict:
    """A small valid config: a teacher and its student, one local task, one workload."""
    return {
        "run": {"name": "unit-run", "seed": 7},
        "models": [
            {"name": "teacher", "source": "./models/teacher"},
            {"name": "student", "source": "./models/student", "teacher": "teacher"},
        ],
        "tasks": [{"name": "toy_arith", "include_path": "./tasks", "limit": 10}],
        "workloads": [{"name": "chat", "levels": [1, 4], "num_requests": 8}],
        "hardware": {"device_type": "cpu-core", "prices": "prices.yaml"},
    }


def write_workspace(root: Path, data: object = None, prices: str = PRICES_YAML) -> Path:
    """Write config.yaml, prices.yaml and the model and task directories under root; return the config."""
    for directory in ("models/teacher", "models/student", "tasks"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for model in ("models/teacher", "models/student"):
        (root / model / "config.json").write_text("{}\n")  # what makes a directory a model's (MODEL_DIR_MARKERS)
    (root / "prices.yaml").write_text(prices)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(valid_config_data() if data is None else data, sort_keys=False))
    return config


def listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


# -- edits that break a valid config ---------------------------------------------------------------


def _parts(dotted: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in dotted.split(".")]


def setting(dotted: str, value: object) -> Callable[[dict], dict]:
    """An edit that sets `a.0.b` (list indexes as numbers) to value."""

    def edit(data: dict) -> dict:
        *parents, last = _parts(dotted)
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
        return data

    return edit


def removing(dotted: str) -> Callable[[dict], dict]:
    def edit(data: dict) -> dict:
        *parents, last = _parts(dotted)
        node = data
        for part in parents:
            node = node[part]
        del node[last]
        return data

    return edit


def adding_model(model: dict) -> Callable[[dict], dict]:
    def edit(data: dict) -> dict:
        data["models"].append(model)
        return data

    return edit


@dataclass(frozen=True)
class Case:
    id: str
    expected: str  # must appear in stderr; `at(key)` for a config key
    edit: Callable[[dict], object] = lambda data: data
    raw_config: str | None = None  # written verbatim instead of the edited YAML
    prices: str = PRICES_YAML
    delete_config: bool = False


def at(key: str, file: str = "config.yaml") -> str:
    """The start of an error line naming exactly this key (the ': ' after it rules out longer keys)."""
    return f"{file}: {key}: "


CASES = [
    Case("unknown-top-level-key", at("colour"), setting("colour", "blue")),
    Case("unknown-nested-key", at("models[0].serve.foo"), setting("models.0.serve", {"foo": 1})),
    Case("unknown-teacher", at("models[1].teacher"), setting("models.1.teacher", "nobody")),
    Case("duplicate-model-name", at("models[1].name"), setting("models.1.name", "teacher")),
    Case(
        "student-of-a-student",
        at("models[2].teacher"),
        adding_model({"name": "grandchild", "source": "./models/student", "teacher": "student"}),
    ),
    Case("own-teacher", at("models[0].teacher"), setting("models.0.teacher", "teacher")),
    Case(
        "generation-fills-the-context",
        at("tasks[0].max_gen_toks"),
        lambda data: setting("tasks.0.max_gen_toks", 64)(setting("models.1.serve", {"max_model_len": 64})(data)),
    ),
    Case("missing-include-path", at("tasks[0].include_path"), setting("tasks.0.include_path", "./no-such-tasks")),
    Case(
        "negative-rate-level",
        at("workloads[0].levels[0]"),
        lambda data: setting("workloads.0.levels", [-2.0])(setting("workloads.0.mode", "rate")(data)),
    ),
    Case("zero-concurrency", at("workloads[0].levels[1]"), setting("workloads.0.levels", [1, 0])),
    Case("fractional-concurrency", at("workloads[0].levels"), setting("workloads.0.levels", [1, 2.5])),
    Case(
        "adaptive-zero-chunk",
        at("tasks[0].adaptive.chunk_documents"),
        setting("tasks.0.adaptive", {"chunk_documents": 0}),
    ),
    Case(
        "adaptive-without-limit",
        at("tasks[0].adaptive"),
        lambda data: setting("tasks.0.adaptive", {"chunk_documents": 5})(removing("tasks.0.limit")(data)),
    ),
    Case("zero-repeats", at("workloads[0].repeats"), setting("workloads.0.repeats", 0)),
    Case(
        "adaptive-one-block", at("workloads[0].adaptive.min_blocks"), setting("workloads.0.adaptive", {"min_blocks": 1})
    ),
    Case(
        "adaptive-min-blocks-above-repeats",
        at("workloads[0].adaptive.min_blocks"),
        lambda data: setting("workloads.0.adaptive", {"min_blocks": 4})(setting("workloads.0.repeats", 3)(data)),
    ),
    Case("adaptive-unknown-key", at("workloads[0].adaptive.blocks"), setting("workloads.0.adaptive", {"blocks": 2})),
    Case(
        "non-numeric-price",
        at("prices.cpu-core.usd_per_hour", file="prices.yaml"),
        prices='prices: {cpu-core: {usd_per_hour: cheap, source: "x", date: "2026-11-01"}}\n',
    ),
    Case("unknown-device-type", at("hardware.device_type"), setting("hardware.device_type", "H100-80GB")),
    Case("missing-price-file", at("hardware.prices"), setting("hardware.prices", "no-such-prices.yaml")),
    Case(
        "tensor-parallel-3",
        at("models[0].serve.tensor_parallel_size"),
        setting("models.0.serve", {"tensor_parallel_size": 3}),
    ),
    Case(
        "gpu-memory-1.5",
        at("models[1].serve.gpu_memory_utilization"),
        setting("models.1.serve", {"gpu_memory_utilization": 1.5}),
    ),
    Case("bad-dtype", at("models[0].serve.dtype"), setting("models.0.serve", {"dtype": "float8"})),
    Case("zero-replicas", at("models[0].serve.replicas"), setting("models.0.serve", {"replicas": 0})),
    Case("replicas-unbounded", at("models[0].serve.replicas"), setting("models.0.serve", {"replicas": 10**6})),
    Case("replicas-not-auto", at("models[1].serve.replicas"), setting("models.1.serve", {"replicas": "all"})),
    Case("missing-run-name", at("run.name"), removing("run.name")),
    Case("missing-run-section", at("run"), removing("run")),
    Case("empty-models", at("models"), setting("models", [])),
    Case("models-not-a-list", at("models"), setting("models", {"name": "teacher"})),
    Case("bad-model-name", at("models[0].name"), setting("models.0.name", "my teacher")),
    Case(
        "length-max-below-min",
        at("workloads[0].prompt_tokens"),
        setting("workloads.0.prompt_tokens", {"mean": 16, "min": 8, "max": 4}),
    ),
    Case("unknown-slo-key", at("workloads[0].slo.ttft_ms"), setting("workloads.0.slo", {"ttft_ms": 200})),
    Case(
        "min-duration-above-max",
        at("workloads[0].min_duration_s"),
        lambda data: setting("workloads.0.min_duration_s", 20)(setting("workloads.0.max_duration_s", 10)(data)),
    ),
    Case(
        "sweep-without-slo",
        at("workloads[0].slo"),
        lambda data: setting("workloads.0.mode", "sweep")(removing("workloads.0.levels")(data)),
    ),
    Case("sweep-section-without-sweep-mode", at("workloads[0].sweep"), setting("workloads.0.sweep", {"max_probes": 4})),
    Case(
        "sweep-with-levels",
        at("workloads[0].levels"),
        lambda data: setting("workloads.0.mode", "sweep")(setting("workloads.0.slo", {"ttft_s": 1})(data)),
    ),
    Case(
        "sweep-start-above-max",
        at("workloads[0].sweep.start_rate_rps"),
        setting("workloads.0.sweep", {"start_rate_rps": 8, "max_rate_rps": 4}),
    ),
    Case("sweep-unknown-key", at("workloads[0].sweep.probes"), setting("workloads.0.sweep", {"probes": 4})),
    Case(
        "sweep-target-above-one",
        at("workloads[0].sweep.target_attainment"),
        setting("workloads.0.sweep", {"target_attainment": 1.5}),
    ),
    Case("negative-fewshot", at("tasks[0].num_fewshot"), setting("tasks.0.num_fewshot", -1)),
    Case("confidence-one", at("compare.confidence"), setting("compare", {"confidence": 1.0})),
    Case("unknown-control-model", at("compare.controls[0]"), setting("compare", {"controls": [["teacher", "x"]]})),
    Case("control-of-itself", at("compare.controls[0]"), setting("compare", {"controls": [["student", "student"]]})),
    Case("control-of-three", at("compare.controls[0]"), setting("compare", {"controls": [["a", "b", "c"]]})),
    Case("missing-local-model-dir", at("models[1].source"), setting("models.1.source", "./models/nowhere")),
    Case("non-mapping-yaml", at("<root>"), raw_config="- just\n- a list\n"),
    Case("invalid-yaml", "config.yaml:2:7: not valid YAML", raw_config="run: {name: x\nmodels: [\n"),
    Case("missing-config-file", "config.yaml: no such config file", delete_config=True),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_config_names_the_key(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config's relative paths resolve against the working directory
    config = write_workspace(tmp_path, case.edit(copy.deepcopy(valid_config_data())), prices=case.prices)
    if case.raw_config is not None:
        config.write_text(case.raw_config)
    if case.delete_config:
        config.unlink()
    before = listing(tmp_path)

    result = CliRunner().invoke(app, ["validate", "config.yaml"])

    assert result.exit_code == 2, result.output
    assert case.expected in result.stderr, result.stderr
    assert result.stdout == ""
    assert listing(tmp_path) == before


def test_cases_cover_at_least_twenty_malformed_configs() -> None:
    assert len(CASES) >= 20
    assert len({case.id for case in CASES}) == len(CASES)


# -- valid configs -----------------------------------------------------------------------------------


def _parsed(tmp_path: Path, data: dict | None = None) -> BenchConfig:
    write_workspace(tmp_path)
    return parse_config(valid_config_data() if data is None else data, source="config.yaml", base=tmp_path)


@pytest.mark.parametrize("mode", ["python", "json"])
def test_model_dump_round_trips(tmp_path: Path, mode: str) -> None:
    config = _parsed(tmp_path)
    again = parse_config(config.model_dump(mode=mode), base=tmp_path)
    assert again == config
    assert again.content_hash() == config.content_hash()


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    config = _parsed(tmp_path)
    assert config.model("student").role == "student"
    assert config.model("teacher").serve.tensor_parallel_size == 1
    assert config.workloads[0].levels == (1, 4)


def test_content_hash_is_stable_and_key_order_free(tmp_path: Path) -> None:
    first = _parsed(tmp_path)
    reordered = {key: value for key, value in reversed(valid_config_data().items())}
    assert _parsed(tmp_path, reordered).content_hash() == first.content_hash()
    assert len(first.content_hash()) == 64


def test_content_hash_changes_with_any_setting(tmp_path: Path) -> None:
    base = _parsed(tmp_path).content_hash()
    changed = setting("compare", {"retention_margin": 0.1})(valid_config_data())
    assert _parsed(tmp_path, changed).content_hash() != base
