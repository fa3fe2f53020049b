"""lm-eval against a served model: scores with their stderr, and one record per document and metric.

lm-eval's `local-completions` backend talks to the vLLM OpenAI-compatible server through `/v1/completions`:
generate_until tasks as plain completions, loglikelihood and multiple_choice tasks as `echo` + `logprobs`
requests scored over the prompt tokens. Requests are sent as token ids from the model's own tokenizer, so
lm-eval's context/continuation split is exactly what the server scores.

Working directory: local task YAMLs (`TaskConfig.include_path`) may name `data_files` relative to the repo
root, and `datasets` resolves those against the current directory. Runs start in the repo root;
`evaluate_task` checks the files up front and names a missing one instead of failing deep inside lm-eval.

Requests in flight. lm-eval queues every request of a task at once (sorted longest first) behind a semaphore of
`num_concurrent` HTTP requests, each carrying `batch_size` prompts; vLLM batches every sequence it holds into
one step, up to its `max_num_seqs`. Fewer sequences in flight than that leave part of every step's batch
empty (the old constant: 4 requests of 1 prompt); more only wait in the server's queue, where the wait counts
against lm-eval's per-request timeout. So the default keeps exactly the server's batch in flight: requests ×
prompts per request = its `--max-num-seqs` from `extra_args`, else vLLM's default for the engine. Prompts per
request: 1 on a GPU, so that a finished sequence frees its slot at once rather than when its request's slowest
sequence ends; 8 on the CPU build, where the API server shares the engine's cores and every HTTP request it
parses is compute the model does not get (measured: tests/perf/eval_concurrency.py, BENCHMARKS.md). A model's
`serve.eval_concurrency` / `serve.eval_batch_size` replace the defaults; a task's `max_concurrency` caps the
requests for every model (long generations that would queue past the timeout).

These settings are out of every cell key (a changed setting reuses stored cells) and recorded with the scores
instead (`eval_scores.eval_concurrency`, `.eval_batch_size`). Requests are greedy (temperature 0) or score
given tokens, and lm-eval puts answers back in document order, so what is sent at once cannot change an answer
except through the numerics of the batch it lands in. On the CPU build that changes nothing: every sample is
identical (tests/integration/test_eval_concurrency.py; 2,400 of 2,400 on the quickstart). On a GPU a batched
kernel may move a logit in its last bits with the batch's make-up, which is timing-dependent at any setting
above 1 (the old 4 included): a key holding the setting would not make a cell reproducible, only re-run it.
Bitwise GPU reproducibility is vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1 in the server's env).

Importing this module is cheap: lm-eval (torch, transformers, datasets) is imported inside `evaluate_task`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.config import ModelConfig, ServeConfig, TaskConfig
from bench.flags import flag_value
from bench.hashing import task_config_hash
from bench.records import EvalSample, EvalScore

log = logging.getLogger(__name__)

# vLLM's default `max_num_seqs` for its OpenAI server (EngineArgs.get_batch_defaults, vLLM 0.32): on a GPU 256,
# raised to 1024 on GPUs of 70 GiB and more other than the A100 (256 in flight fill a quarter of their batch;
# `--max-num-seqs` in extra_args or serve.eval_concurrency asks for more); on the CPU build 128 per rank.
VLLM_GPU_MAX_NUM_SEQS = 256
VLLM_CPU_MAX_NUM_SEQS_PER_RANK = 128
# Quickstart's 12 eval cells, 128 sequences in flight: 16 requests of 8 prompts 1.35x faster than 128 of 1
# (paired median of 3 interleaved rounds, tests/perf/eval_concurrency.py); 2.8x faster than the old 4 of 1.
CPU_PROMPTS_PER_REQUEST = 8
# lm-eval's API models generate at most this many tokens when neither the task nor the config sets
# max_gen_toks (TemplateAPI's default, lm-eval 0.4).
LMEVAL_DEFAULT_MAX_GEN_TOKS = 256


@dataclass(frozen=True)
class InFlight:
    """How lm-eval sends a task: `requests` HTTP requests in flight (its `num_concurrent`), each carrying
    `prompts_per_request` prompts (its `batch_size`)."""

    requests: int
    prompts_per_request: int

    @property
    def sequences(self) -> int:
        """What the server can batch at once."""
        return self.requests * self.prompts_per_request


@dataclass(frozen=True)
class Endpoint:
    """A running OpenAI-compatible server and the tokenizer of the model it serves."""

    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    served_model: str  # the name the server serves the model under
    tokenizer: str  # local path or hub id; lm-eval counts loglikelihood tokens with it
    in_flight: InFlight
    max_length: int | None = None  # context length in tokens; None asks the server (`max_model_len`)


def server_max_num_seqs(serve: ServeConfig, gpu_count: int) -> int:
    """The most sequences the server batches: its `--max-num-seqs` (extra_args) or vLLM's default."""
    value = flag_value(serve.extra_args, "--max-num-seqs")
    if value is not None and value.isdigit() and int(value) > 0:
        return int(value)
    return VLLM_GPU_MAX_NUM_SEQS if gpu_count else VLLM_CPU_MAX_NUM_SEQS_PER_RANK * serve.tensor_parallel_size


def in_flight(model: ModelConfig, task: TaskConfig, gpu_count: int) -> InFlight:
    """Requests in flight for one model on one task, on `gpu_count` GPUs (0: the CPU build): the model's
    settings, else enough requests of the engine's prompts per request to fill the server's batch; the task's
    `max_concurrency` caps the requests."""
    serve = model.serve
    prompts = serve.eval_batch_size or (1 if gpu_count else CPU_PROMPTS_PER_REQUEST)
    requests = serve.eval_concurrency or max(1, server_max_num_seqs(serve, gpu_count) // prompts)
    if task.max_concurrency is not None:
        requests = min(requests, task.max_concurrency)
    return InFlight(requests=requests, prompts_per_request=prompts)


def evaluate_task(
    endpoint: Endpoint, task: TaskConfig, seed: int, documents: tuple[int, ...] = ()
) -> tuple[list[EvalScore], list[EvalSample]]:
    """Run one lm-eval task or group against `endpoint`; with `documents` (an adaptive task's chunk, sorted
    dataset indices), only those documents of the task, stored under their dataset indices.

    Returns one EvalScore per (leaf task, metric, filter) and one EvalSample per (leaf task, document, metric,
    filter); a group's own aggregate rows are left out, its leaf tasks are kept. Raises FileNotFoundError
    when a local task's data file does not exist relative to the working directory.
    """
    if task.include_path is not None:
        check_data_files(Path(task.include_path))
    results = _simple_evaluate(endpoint, task, seed, documents)
    from bench.matched import tokenizer_counter

    # The tokenizer lm-eval was given (`_model_args`) counts each answer's generated tokens, where there are any.
    generates = any(config.get("output_type") == "generate_until" for config in results["configs"].values())
    samples = samples_from_results(results, tokenizer_counter(endpoint.tokenizer) if generates else None)
    return scores_from_results(results, endpoint.in_flight), samples


def _simple_evaluate(endpoint: Endpoint, task: TaskConfig, seed: int, documents: tuple[int, ...]) -> dict[str, Any]:
    if Path(endpoint.tokenizer).is_dir():
        # Everything is local; offline mode stops transformers and datasets from asking a hub anyway.
        # It must be set before they are first imported, which is why it comes before `import lm_eval`.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from bench import lmeval_model  # registers lmeval_model.MODEL_NAME: local-completions, one seed per repeat

    # Indexing lm-eval's ~14,700 built-in tasks costs ~7 s; a local task directory does not need them.
    if task.include_path is not None:
        manager = TaskManager(include_path=task.include_path, include_defaults=False)
    else:
        manager = TaskManager()
    if documents and task.name not in manager.all_subtasks:
        # lm-eval reads `samples` per leaf task: a group's leaves would each evaluate every document.
        raise ValueError(f"{task.name}: adaptive needs a single lm-eval task, not a group or tag")
    results = lm_eval.simple_evaluate(
        model=lmeval_model.MODEL_NAME,
        model_args=_model_args(endpoint, seed),
        tasks=lm_eval_tasks(manager, task),
        num_fewshot=task.num_fewshot,
        # A chunk names its documents: sorted, as lm-eval walks the dataset in order and logs each document's
        # dataset index as `samples[k]` for the k-th it meets; it takes `samples` or `limit`, never both; an
        # empty list would mean every document, which a planned chunk never is.
        limit=None if documents else task.limit,
        samples={task.name: list(documents)} if documents else None,
        # Applied to generate_until tasks only; None keeps each task's own generation settings.
        gen_kwargs=gen_kwargs(task),
        log_samples=True,
        task_manager=manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # lm-eval returns None on non-zero distributed ranks; one process here has rank 0
        raise RuntimeError(f"lm-eval returned no results for task {task.name!r}")
    return results


def lm_eval_tasks(manager: Any, task: TaskConfig) -> list[Any]:
    """What lm-eval is asked to run: the task's name, or, with samples_per_question above 1, its loaded leaf
    tasks with `repeats` set (lm-eval takes no repeats argument; a loaded task's config can still be set).

    Raises ValueError for a task that would score only the first of its samples: lm-eval's default filter
    (no filter_list) keeps the first response, and a task that does not generate has nothing to sample.
    """
    if task.samples_per_question == 1:
        return [task.name]
    leaves = manager.load([task.name])["tasks"]
    for name, leaf in leaves.items():
        if leaf.get_config("output_type") != "generate_until" or leaf.get_config("filter_list") is None:
            raise ValueError(
                f"{task.name}: samples_per_question is {task.samples_per_question}, but {name} would score only "
                "the first sample: it needs output_type generate_until and a filter_list that keeps every sample "
                "(configs/tasks/r1 shows one)"
            )
        leaf.set_config(key="repeats", value=task.samples_per_question)
    return list(leaves.values())


def gen_kwargs(task: TaskConfig) -> dict[str, Any] | None:
    """Generation settings laid over the task's own; None keeps them all."""
    kwargs: dict[str, Any] = {}
    if task.max_gen_toks:
        kwargs["max_gen_toks"] = task.max_gen_toks
    # The k samples of a question differ because `lmeval_model` seeds each repeat apart (reproducibly).
    return kwargs or None


def _model_args(endpoint: Endpoint, seed: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": endpoint.served_model,
        # lm-eval posts to base_url as given, so the route is named here.
        "base_url": f"{endpoint.base_url.rstrip('/')}/completions",
        "tokenizer": endpoint.tokenizer,
        # The default "auto" probes the server's tokenizer route; the local tokenizer needs no round trips.
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        # lm-eval's API backends encode without special tokens unless told; the HF backend and vLLM (given
        # text) add the tokenizer's BOS, and models are trained with it. A tokenizer without BOS adds nothing.
        "add_bos_token": True,
        "num_concurrent": endpoint.in_flight.requests,
        # Several prompts per request: a list of token-id lists, answered in one response (choices by index).
        "batch_size": endpoint.in_flight.prompts_per_request,
        "seed": seed,  # sent with every request
    }
    # lm-eval assumes 2048 tokens and left-truncates prompts to fit; a longer prompt than the server takes
    # would be rejected, so it is told the server's real limit.
    max_length = endpoint.max_length or served_max_length(endpoint)
    if max_length is not None:
        args["max_length"] = max_length
    return args


def served_max_length(endpoint: Endpoint) -> int | None:
    """The context length vLLM reports for the served model in `/v1/models`, or None if it reports none."""
    with urllib.request.urlopen(f"{endpoint.base_url.rstrip('/')}/models", timeout=30) as response:
        models = json.load(response).get("data", [])
    lengths = [m.get("max_model_len") for m in models if m.get("id") == endpoint.served_model]
    return int(lengths[0]) if lengths and lengths[0] else None


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs; their `!function module.name` tags become None, as only paths matter here."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def check_data_files(include_path: Path) -> None:
    """Raise FileNotFoundError naming the first data file of a local task that is missing.

    Relative `dataset_kwargs.data_files` are resolved against the working directory, as `datasets` does.
    """
    for task_yaml in sorted(include_path.rglob("*.yaml")):
        config = yaml.load(task_yaml.read_text(), Loader=_TaskYamlLoader)
        if not isinstance(config, dict):
            continue
        for name in _data_files(config):
            if any(char in name for char in "*?[") or "://" in name:
                continue  # globs and URLs are datasets' to resolve
            if not Path(name).exists():
                raise FileNotFoundError(
                    f"{task_yaml}: data file {name!r} not found relative to the working directory {Path.cwd()}; "
                    "run from the repository root"
                )


def _data_files(config: dict[str, Any]) -> Iterator[str]:
    kwargs = config.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    # datasets takes a path, a list of paths, or a mapping of split to either.
    for entry in files.values() if isinstance(files, dict) else [files]:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, list):
            yield from (item for item in entry if isinstance(item, str))


def leaf_tasks(results: dict[str, Any]) -> list[str]:
    """The tasks that evaluated documents; groups are left out (they have no entry in `n-samples`)."""
    return list(results["n-samples"])


def scores_from_results(results: dict[str, Any], sent: InFlight) -> list[EvalScore]:
    """One EvalScore per (leaf task, metric, filter) of an lm-eval results dict whose requests were `sent`;
    stderr "N/A" becomes None."""
    version = results.get("lm_eval_version") or importlib.metadata.version("lm_eval")
    scores = []
    for task in leaf_tasks(results):
        entry = results["results"][task]
        directions = results.get("higher_is_better", {}).get(task, {})
        config_hash = task_config_hash(results["configs"][task])
        for key, raw in entry.items():
            # Metric keys read "metric,filter"; "name", "alias" and "sample_len" have no comma.
            metric, comma, filter_name = key.partition(",")
            value = _number(raw)
            if not comma or metric.endswith("_stderr") or value is None:
                continue
            scores.append(
                EvalScore(
                    task=task,
                    metric=metric,
                    filter=filter_name,
                    value=value,
                    stderr=_number(entry.get(f"{metric}_stderr,{filter_name}")),
                    higher_is_better=directions.get(metric),
                    n=int(results["n-samples"][task]["effective"]),
                    num_fewshot=int(results["n-shot"][task]),
                    lm_eval_version=str(version),
                    task_config_hash=config_hash,
                    eval_concurrency=sent.requests,
                    eval_batch_size=sent.prompts_per_request,
                )
            )
    return scores


def samples_from_results(results: dict[str, Any], count_tokens: Callable[[str], int] | None = None) -> list[EvalSample]:
    """One EvalSample per (leaf task, document, metric, filter) from lm-eval's logged samples.

    `response` is the filtered generation for generate_until tasks; for multiple_choice tasks it is the index
    (as a string, like `target`) of the choice with the highest unnormalised loglikelihood, the one `acc`
    scores. Metrics whose per-document value is not a number (corpus metrics such as BLEU or perplexity log
    tuples that only their aggregation turns into a score) are left out. With `count_tokens` (the model's
    tokenizer), generate_until rows carry `response_tokens`: the mean generated tokens of the document's raw
    answers, every repeat, whatever the filter kept.
    """
    rows = []
    for task in leaf_tasks(results):
        output_type = results["configs"][task].get("output_type")
        tokens_of: dict[int, float | None] = {}  # per document: every filter's sample holds the same answers
        for sample in results["samples"][task]:
            response = _response(output_type, sample["filtered_resps"])
            doc_id = int(sample["doc_id"])
            if doc_id not in tokens_of:
                tokens_of[doc_id] = _response_tokens(output_type, sample, count_tokens)
            for metric in sample["metrics"]:
                value = _number(sample.get(metric))
                if value is None:
                    continue
                rows.append(
                    EvalSample(
                        task=task,
                        doc_id=int(sample["doc_id"]),
                        metric=metric,
                        filter=sample["filter"],
                        value=value,
                        target=str(sample["target"]),
                        response=response,
                        response_tokens=tokens_of[doc_id],
                    )
                )
    return rows


def _response_tokens(
    output_type: str | None, sample: dict[str, Any], count_tokens: Callable[[str], int] | None
) -> float | None:
    """Mean generated tokens over one document's raw answers (`resps`: one list of answers per request)."""
    if output_type != "generate_until" or count_tokens is None or not sample.get("resps"):
        return None
    from bench.matched import mean_generated_tokens

    answers = [answer for answer in sample["resps"][0] if isinstance(answer, str)]
    arguments = sample.get("arguments") or [()]
    settings = arguments[0][1] if len(arguments[0]) > 1 and isinstance(arguments[0][1], dict) else {}
    limit = int(settings.get("max_gen_toks") or LMEVAL_DEFAULT_MAX_GEN_TOKS)
    return mean_generated_tokens(answers, count_tokens, limit) if answers else None


def _response(output_type: str | None, filtered: list[Any]) -> str:
    if output_type == "multiple_choice":
        # One (loglikelihood, is_greedy) pair per choice.
        loglikelihoods = [float(pair[0]) for pair in filtered]
        return str(max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__))
    first = filtered[0] if filtered else ""
    return first if isinstance(first, str) else json.dumps(first)


def _number(value: Any) -> float | None:
    """A finite float, or None for lm-eval's "N/A", NaN, and anything that is not a number."""
    if isinstance(value, bool | int | float) and math.isfinite(value):
        return float(value)
    return None
