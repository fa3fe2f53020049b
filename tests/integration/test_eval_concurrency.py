"""Scores do not depend on requests in flight: the claim that keeps `eval_concurrency` out of the cell keys.

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
