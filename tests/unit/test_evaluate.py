"""Turning lm-eval results into EvalScore/EvalSample rows, and the checks made before lm-eval runs.

The fixture is a real lm-eval 0.4.13 results dict, trimmed to the keys `bench.evaluate` reads: the `toy` group
(configs/tasks/toy) at limit 8, seed 0, run through `evaluate_task` against a vLLM CPU server of a tiny
untrained Llama, so most answers are wrong.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from bench import evaluate
from bench.config import (
    MAX_EVAL_IN_FLIGHT,
    BenchConfig,
    ModelConfig,
    ServeConfig,
    TaskConfig,
    parse_config,
    redacted_dump,
)
from bench.evaluate import (
    CPU_PROMPTS_PER_REQUEST,
    VLLM_CPU_MAX_NUM_SEQS_PER_RANK,
    VLLM_GPU_MAX_NUM_SEQS,
    Endpoint,
    InFlight,
)
from bench.hashing import task_config_hash
from bench.plan import Fingerprints, build_plan, model_key
from tests.unit.test_config import valid_config_data, write_workspace

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "lm_eval_toy_limit8.json"
LEAVES = ["toy_reverse", "toy_sort", "toy_add", "toy_add_mc"]
SENT = InFlight(requests=8, prompts_per_request=1)  # any: the fixture's scores do not depend on it


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


def test_a_group_gives_rows_for_its_leaf_tasks_only(results):
    # A group with aggregate_metric_list reports its own metrics; they are not a task's score.
    results["results"]["toy"].update({"acc,none": 0.5, "acc_stderr,none": 0.1})
    scores = evaluate.scores_from_results(results, SENT)
    assert [(s.task, s.metric, s.filter) for s in scores] == [
        ("toy_reverse", "exact_match", "none"),
        ("toy_sort", "exact_match", "none"),
        ("toy_add", "exact_match", "none"),
        ("toy_add_mc", "acc", "none"),
    ]
    assert {s.task for s in evaluate.samples_from_results(results)} == set(LEAVES)


def test_scores_keep_stderr_n_fewshot_version_and_config_hash(results):
    score = next(s for s in evaluate.scores_from_results(results, SENT) if s.task == "toy_add_mc")
    assert (score.value, score.stderr, score.n, score.num_fewshot) == (0.125, 0.125, 8, 0)
    assert score.lm_eval_version == "0.4.13"
    assert score.task_config_hash == task_config_hash(results["configs"]["toy_add_mc"])
    assert len(score.task_config_hash) == 16


def test_scores_carry_the_metric_direction_lm_eval_reports(results):
    results["higher_is_better"]["toy_sort"]["exact_match"] = False  # as lm-eval reports perplexity
    del results["higher_is_better"]["toy_reverse"]
    directions = {s.task: s.higher_is_better for s in evaluate.scores_from_results(results, SENT)}
    assert directions == {"toy_add": True, "toy_add_mc": True, "toy_sort": False, "toy_reverse": None}


def test_na_and_nan_stderr_become_none(results):
    results["results"]["toy_add"]["exact_match_stderr,none"] = "N/A"  # what lm-eval writes for one document
    results["results"]["toy_sort"]["exact_match_stderr,none"] = float("nan")
    stderrs = {s.task: s.stderr for s in evaluate.scores_from_results(results, SENT)}
    assert stderrs["toy_add"] is None and stderrs["toy_sort"] is None
    assert stderrs["toy_add_mc"] == 0.125


def test_mean_of_sample_values_is_the_score(results):
    values = defaultdict(list)
    for sample in evaluate.samples_from_results(results):
        values[sample.task, sample.metric, sample.filter].append(sample.value)
    scores = evaluate.scores_from_results(results, SENT)
    assert len(values) == len(scores) == 4
    for score in scores:
        per_doc = values[score.task, score.metric, score.filter]
        assert len(per_doc) == score.n
        assert sum(per_doc) / len(per_doc) == pytest.approx(score.value)


def test_sample_responses_are_generations_or_the_chosen_choice_index(results):
    samples = {(s.task, s.doc_id): s for s in evaluate.samples_from_results(results)}
    add = samples["toy_add", 0]
    assert (add.target, add.response, add.value) == ("7449", "1", 0.0)
    # Loglikelihoods of the 4 choices: -13.15, -12.67, -13.38, -12.91; gold is choice 1.
    mc = samples["toy_add_mc", 0]
    assert (mc.target, mc.response, mc.value) == ("1", "1", 1.0)
    for sample in samples.values():
        if sample.task == "toy_add_mc":
            assert sample.value == float(sample.response == sample.target)


def test_samples_of_each_filter_are_kept_apart(results):
    extra = copy.deepcopy(results["samples"]["toy_add"][0])
    extra.update(filter="strict-match", exact_match=1.0)
    results["samples"]["toy_add"].append(extra)
    filters = [s.filter for s in evaluate.samples_from_results(results) if s.task == "toy_add" and s.doc_id == 0]
    assert filters == ["none", "strict-match"]


def test_generated_answers_are_counted_per_document_over_every_repeat(results):
    # As lm-eval logs a document of a task with repeats: its request's arguments and its raw answers.
    for sample in results["samples"]["toy_add"]:
        sample.update(arguments=[["2+3=", {"until": ["\n"], "max_gen_toks": 4}]], resps=[["12", "12345"]])
    count = len  # one token per character
    samples = evaluate.samples_from_results(results, count)
    add = [s.response_tokens for s in samples if s.task == "toy_add"]
    # "12" and its stop: 3 tokens; "12345" ran into max_gen_toks: 4, no stop generated. Mean 3.5.
    assert add and set(add) == {3.5}
    assert {s.response_tokens for s in samples if s.task == "toy_add_mc"} == {None}  # nothing generated
    assert {s.response_tokens for s in evaluate.samples_from_results(results)} == {None}  # no tokenizer given


def test_per_document_values_that_are_not_numbers_are_left_out(results):
    # Corpus metrics such as BLEU log (reference, prediction) per document, not a score.
    sample = results["samples"]["toy_add"][0]
    sample.update(metrics=["exact_match", "bleu"], bleu=[["7449"], "1"])
    metrics = {s.metric for s in evaluate.samples_from_results(results) if s.task == "toy_add"}
    assert metrics == {"exact_match"}


def test_config_hash_follows_content_not_location(results):
    config = results["configs"]["toy_add"]
    moved = copy.deepcopy(config)
    moved["metadata"]["config_source"] = "/elsewhere/toy_add.yaml"
    changed = copy.deepcopy(config)
    changed["generation_kwargs"]["max_gen_toks"] = 32
    assert task_config_hash(moved) == task_config_hash(config)
    assert task_config_hash(changed) != task_config_hash(config)


def write_task(directory: Path, data_file: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "t.yaml"
    path.write_text(
        "task: t\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: [{data_file}]\n"
        "process_docs: !function utils.process_docs\n"
    )
    return path


def test_relative_data_files_resolve_against_the_working_directory(tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    write_task(tasks, "tasks/data/t.jsonl")
    (tasks / "data").mkdir()
    (tasks / "data" / "t.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    evaluate.check_data_files(Path("tasks"))
    monkeypatch.chdir(tasks)
    with pytest.raises(FileNotFoundError, match=r"t\.yaml: data file 'tasks/data/t\.jsonl' not found"):
        evaluate.check_data_files(tasks)


def test_shipped_toy_tasks_find_their_data_from_the_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)
    evaluate.check_data_files(Path("configs/tasks/toy"))


def test_model_args_name_the_completions_route_and_the_context_length():
    endpoint = Endpoint("http://127.0.0.1:1/v1/", "tiny", "/models/tiny", InFlight(2, 3), max_length=64)
    args = evaluate._model_args(endpoint, seed=7)
    assert args["base_url"] == "http://127.0.0.1:1/v1/completions"
    assert (args["model"], args["tokenizer"], args["max_length"], args["seed"]) == ("tiny", "/models/tiny", 64, 7)
    assert (args["tokenizer_backend"], args["tokenized_requests"], args["add_bos_token"]) == ("huggingface", True, True)
    assert (args["num_concurrent"], args["batch_size"]) == (2, 3)


class ModelsHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "other", "max_model_len": 8}, {"id": "tiny", "max_model_len": 64}]})
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_context_length_is_read_from_the_server():
    server = HTTPServer(("127.0.0.1", 0), ModelsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base_url = f"http://127.0.0.1:{server.server_port}/v1"
        assert evaluate.served_max_length(Endpoint(base_url, "tiny", "t", SENT)) == 64
        assert evaluate.served_max_length(Endpoint(base_url, "absent", "t", SENT)) is None
    finally:
        server.shutdown()
        server.server_close()


def test_importing_the_module_does_not_import_lm_eval_or_torch():
    code = "import sys, bench.evaluate; print(sorted({'lm_eval', 'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- requests in flight -------------------------------------------------------------------------------------


def model_with(**serve: object) -> ModelConfig:
    return ModelConfig(name="m", source="org/m", serve=ServeConfig(**serve))


@pytest.mark.parametrize(
    ("serve", "gpus", "expected"),
    [
        ({}, 1, InFlight(VLLM_GPU_MAX_NUM_SEQS, 1)),  # vLLM's default batch, one prompt per request
        ({"extra_args": ("--max-num-seqs", "512")}, 4, InFlight(512, 1)),  # the batch the server was given
        ({"extra_args": ("--enforce-eager", "--max_num_seqs=64")}, 1, InFlight(64, 1)),  # underscores, `=`
        ({"extra_args": ("--max-num-seqs", "8", "--max-num-seqs", "16")}, 1, InFlight(16, 1)),  # the last wins
        ({"extra_args": ("--max-num-seqs-x", "9")}, 1, InFlight(VLLM_GPU_MAX_NUM_SEQS, 1)),  # another flag
        ({}, 0, InFlight(VLLM_CPU_MAX_NUM_SEQS_PER_RANK // CPU_PROMPTS_PER_REQUEST, CPU_PROMPTS_PER_REQUEST)),
        (  # the CPU build batches per rank
            {"tensor_parallel_size": 2},
            0,
            InFlight(2 * VLLM_CPU_MAX_NUM_SEQS_PER_RANK // CPU_PROMPTS_PER_REQUEST, CPU_PROMPTS_PER_REQUEST),
        ),
        ({"extra_args": ("--max-num-seqs", "2")}, 0, InFlight(1, CPU_PROMPTS_PER_REQUEST)),  # at least one request
        ({"eval_concurrency": 40}, 0, InFlight(40, CPU_PROMPTS_PER_REQUEST)),  # the model's settings win
        ({"eval_batch_size": 4}, 1, InFlight(VLLM_GPU_MAX_NUM_SEQS // 4, 4)),  # ...and still fill the batch
        ({"eval_concurrency": 3, "eval_batch_size": 5}, 1, InFlight(3, 5)),
    ],
)
def test_the_default_fills_the_servers_batch(serve, gpus, expected):
    assert evaluate.in_flight(model_with(**serve), TaskConfig(name="t"), gpu_count=gpus) == expected


def test_a_tasks_cap_bounds_the_requests_of_every_model():
    capped = TaskConfig(name="t", max_concurrency=3)
    assert evaluate.in_flight(model_with(eval_concurrency=40), capped, gpu_count=0).requests == 3
    assert evaluate.in_flight(model_with(), capped, gpu_count=1) == InFlight(3, 1)
    loose = TaskConfig(name="t", max_concurrency=MAX_EVAL_IN_FLIGHT)
    assert evaluate.in_flight(model_with(), loose, gpu_count=1) == InFlight(VLLM_GPU_MAX_NUM_SEQS, 1)


def test_scores_record_how_requests_were_sent(results):
    scores = evaluate.scores_from_results(results, InFlight(5, 7))
    assert {(score.eval_concurrency, score.eval_batch_size) for score in scores} == {(5, 7)}


def test_in_flight_settings_change_no_cell_or_model_key(tmp_path):
    # Scores are identical at any setting (tests/integration/test_eval_concurrency.py): stored cells stay valid.
    write_workspace(tmp_path)
    plain = valid_config_data()
    tuned = valid_config_data()
    for model in tuned["models"]:
        model["serve"] = {"eval_concurrency": 77, "eval_batch_size": 2}
    for task in tuned["tasks"]:
        task["max_concurrency"] = 5
    configs = [parsed(tmp_path, data) for data in (plain, tuned)]
    assert configs[1].models[0].serve.eval_concurrency == 77
    fingerprints = Fingerprints(weights={"teacher": "w1", "student": "w2"}, task_files={"toy_arith": "t"})
    keys = [[cell.key for cell in build_plan(config, fingerprints=fingerprints)] for config in configs]
    assert keys[0] == keys[1] and keys[0]
    assert [model_key(m, "w") for m in configs[0].models] == [model_key(m, "w") for m in configs[1].models]
    # Left out of the dumps that keys hash: keys stored before the settings existed still match.
    assert not {"eval_concurrency", "eval_batch_size"} & set(configs[1].models[0].serve.model_dump())
    assert "max_concurrency" not in configs[1].tasks[0].model_dump()


def test_the_manifest_keeps_the_settings_as_written(tmp_path):
    write_workspace(tmp_path)
    data = valid_config_data()
    data["models"][0]["serve"] = {"eval_concurrency": 12, "eval_batch_size": 3}
    data["tasks"][0]["max_concurrency"] = 6
    dumped = redacted_dump(parsed(tmp_path, data))
    assert dumped["models"][0]["serve"]["eval_concurrency"] == 12 and dumped["tasks"][0]["max_concurrency"] == 6
    assert dumped["models"][0]["serve"]["eval_batch_size"] == 3
    assert dumped["models"][1]["serve"]["eval_concurrency"] is None
    assert redacted_dump(parsed(tmp_path, dumped)) == dumped  # the manifest's config validates again


def test_the_bound_leaves_room_above_every_default():
    assert 4 * max(VLLM_GPU_MAX_NUM_SEQS, VLLM_CPU_MAX_NUM_SEQS_PER_RANK) <= MAX_EVAL_IN_FLIGHT


def parsed(root: Path, data: dict) -> BenchConfig:
    return parse_config(data, source="t", base=root)


def test_config_hash_names_a_task_directory_filter_by_module_stem_not_path(results):
    # lm-eval names a `!function` module imported from a task directory by its absolute path.
    def filter_class(module: str) -> type:
        return type("FirstCorrectOfK", (), {"__module__": module})

    def with_filter(cls: type) -> dict:
        config = copy.deepcopy(results["configs"]["toy_add"])
        return config | {"filter_list": [{"name": "pass@3", "filter": [{"function": cls, "k": 3}]}]}

    here = task_config_hash(with_filter(filter_class("/checkout/a/configs/tasks/toy_sampled/pass_at_k")))
    assert here == task_config_hash(with_filter(filter_class("/elsewhere/configs/tasks/toy_sampled/pass_at_k")))
    assert here != task_config_hash(with_filter(filter_class("/checkout/a/configs/tasks/toy_sampled/other")))
