"""Scores do not depend on requests in flight (the claim that keeps `eval_concurrency` out of the cell keys),
nor on evaluating a chunk of documents alone (what an adaptive task does).

One prompt at a time (lm-eval's synchronous path) against the CPU build's default (its asyncio path: many
requests of several prompts, every sequence batched by the server), on the toy student behind a real vLLM CPU
server: a generate_until task and a multiple-choice (loglikelihood) task, compared document by document.
"""

from __future__ import annotations

import pytest

from bench.config import ModelConfig, TaskConfig
from bench.evaluate import Endpoint, InFlight, evaluate_task, in_flight

pytestmark = pytest.mark.slow
DOCUMENTS = 100  # per task; enough for both code paths to answer many documents in different batches


@pytest.mark.parametrize("task", ["toy_add", "toy_add_mc"])
def test_every_sample_is_identical_one_at_a_time_and_at_the_cpu_default(student_server, task: str) -> None:
    config = TaskConfig(name=task, include_path="configs/tasks/toy", limit=DOCUMENTS, max_gen_toks=16)
    model: ModelConfig = student_server.model
    default = in_flight(model, config, gpu_count=0)
    assert default.sequences > 1
    runs = []
    for sent in (InFlight(requests=1, prompts_per_request=1), default):
        scores, samples = evaluate_task(Endpoint(student_server.base_url, model.name, model.source, sent), config, 0)
        assert {(s.eval_concurrency, s.eval_batch_size) for s in scores} == {(sent.requests, sent.prompts_per_request)}
        runs.append(
            (
                sorted((s.doc_id, s.metric, s.filter, s.value, s.response) for s in samples),
                sorted((s.metric, s.filter, s.value, s.stderr, s.n) for s in scores),
            )
        )
    assert len(runs[0][0]) >= DOCUMENTS
    assert runs[0] == runs[1]


def test_an_adaptive_chunk_evaluates_only_its_documents_with_the_full_runs_answers(student_server) -> None:
    """lm-eval's `samples=` (what an adaptive task's chunk cell sends): only the chunk's documents are
    evaluated, stored under their dataset indices, each with the answer and score the whole task gave it."""
    config = TaskConfig(name="toy_sort", include_path="configs/tasks/toy", limit=60, max_gen_toks=16)
    model: ModelConfig = student_server.model
    endpoint = Endpoint(student_server.base_url, model.name, model.source, in_flight(model, config, gpu_count=0))
    chunk = (3, 17, 18, 40, 59)  # sorted dataset indices, as bench/chunks.py gives them

    _, whole = evaluate_task(endpoint, config, 0)
    scores, part = evaluate_task(endpoint, config, 0, documents=chunk)

    assert {s.doc_id for s in part} == set(chunk) and {s.n for s in scores} == {len(chunk)}
    rows = sorted((s.doc_id, s.metric, s.filter, s.value, s.response) for s in part)
    assert rows == sorted((s.doc_id, s.metric, s.filter, s.value, s.response) for s in whole if s.doc_id in chunk)
