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
from bench.evaluate import Endpoint
from bench.hashing import task_config_hash

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "lm_eval_toy_limit8.json"
LEAVES = ["toy_reverse", "toy_sort", "toy_add", "toy_add_mc"]


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


def test_a_group_gives_rows_for_its_leaf_tasks_only(results):
    # A group with aggregate_metric_list reports its own metrics; they are not a task's score.
    results["results"]["toy"].update({"acc,none": 0.5, "acc_stderr,none": 0.1})
    scores = evaluate.scores_from_results(results)
    assert [(s.task, s.metric, s.filter) for s in scores] == [
        ("toy_reverse", "exact_match", "none"),
        ("toy_sort", "exact_match", "none"),
        ("toy_add", "exact_match", "none"),
        ("toy_add_mc", "acc", "none"),
    ]
    assert {s.task for s in evaluate.samples_from_results(results)} == set(LEAVES)


def test_scores_keep_stderr_n_fewshot_version_and_config_hash(results):
    score = next(s for s in evaluate.scores_from_results(results) if s.task == "toy_add_mc")
    assert (score.value, score.stderr, score.n, score.num_fewshot) == (0.125, 0.125, 8, 0)
    assert score.lm_eval_version == "0.4.13"
    assert score.task_config_hash == task_config_hash(results["configs"]["toy_add_mc"])
    assert len(score.task_config_hash) == 16


def test_scores_carry_the_metric_direction_lm_eval_reports(results):
    results["higher_is_better"]["toy_sort"]["exact_match"] = False  # as lm-eval reports perplexity
    del results["higher_is_better"]["toy_reverse"]
    directions = {s.task: s.higher_is_better for s in evaluate.scores_from_results(results)}
    assert directions == {"toy_add": True, "toy_add_mc": True, "toy_sort": False, "toy_reverse": None}


def test_na_and_nan_stderr_become_none(results):
    results["results"]["toy_add"]["exact_match_stderr,none"] = "N/A"  # what lm-eval writes for one document
    results["results"]["toy_sort"]["exact_match_stderr,none"] = float("nan")
    stderrs = {s.task: s.stderr for s in evaluate.scores_from_results(results)}
    assert stderrs["toy_add"] is None and stderrs["toy_sort"] is None
    assert stderrs["toy_add_mc"] == 0.125


def test_mean_of_sample_values_is_the_score(results):
    values = defaultdict(list)
    for sample in evaluate.samples_from_results(results):
        values[sample.task, sample.metric, sample.filter].append(sample.value)
    scores = evaluate.scores_from_results(results)
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
    endpoint = Endpoint("http://127.0.0.1:1/v1/", "tiny", "/models/tiny", num_concurrent=2, max_length=64)
    args = evaluate._model_args(endpoint, seed=7)
    assert args["base_url"] == "http://127.0.0.1:1/v1/completions"
    assert (args["model"], args["tokenizer"], args["max_length"], args["seed"]) == ("tiny", "/models/tiny", 64, 7)
    assert (args["tokenizer_backend"], args["tokenized_requests"], args["add_bos_token"]) == ("huggingface", True, True)
    assert args["num_concurrent"] == 2


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
        assert evaluate.served_max_length(Endpoint(base_url, "tiny", "t")) == 64
        assert evaluate.served_max_length(Endpoint(base_url, "absent", "t")) is None
    finally:
        server.shutdown()
        server.server_close()


def test_importing_the_module_does_not_import_lm_eval_or_torch():
    code = "import sys, bench.evaluate; print(sorted({'lm_eval', 'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
