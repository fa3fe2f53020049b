"""An adaptive run's results compared: chunk scores averaged over the documents evaluated, the verdict and
interval from the confidence sequence, the same verdict as the replay of every document; and a resume that
rebuilds the gates from the stored chunks runs none of the skipped ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import chunks, compare, gate, store
from bench.config import BenchConfig
from bench.plan import build_plan, local_fingerprints, model_key
from bench.records import EvalSample, EvalScore, ModelRecord
from bench.run import manifest, model_keys
from bench.sequential import sequential_quality
from tests.unit.test_store import make_record

LIMIT, CHUNK = 200, 25


def value(model: str, doc: int) -> float:
    """Both models miss every tenth document and agree on all others: non-inferior well before 200."""
    return float(doc % 10 != 0)


def make_config() -> BenchConfig:
    return BenchConfig.model_validate(
        {
            "run": {"name": "r", "seed": 5},
            "models": [{"name": "big", "source": "org/big"}, {"name": "small", "source": "org/s", "teacher": "big"}],
            "tasks": [{"name": "toy_add", "limit": LIMIT, "adaptive": {"chunk_documents": CHUNK}}],
        }
    )


def store_chunk(run: Path, cell) -> gate.ChunkValues:
    samples = [
        make_record(EvalSample, task="toy_add", doc_id=doc, metric="acc", filter="none", value=value(cell.model, doc))
        for doc in cell.documents
    ]
    mean = float(np.mean([s.value for s in samples]))
    score = make_record(
        EvalScore, task="toy_add", metric="acc", filter="none", value=mean, higher_is_better=True, n=len(samples)
    )
    store.write_cell(run, "eval_samples", cell.key, cell.model, samples)
    store.write_cell(run, "eval_scores", cell.key, cell.model, [score])
    return gate.chunk_values([score], samples)


def test_an_adaptive_run_is_compared_on_its_confidence_sequence(tmp_path: Path) -> None:
    config, run = make_config(), tmp_path / "r"
    cells = build_plan(config)
    for model in config.models:
        record = make_record(
            ModelRecord, name=model.name, role=model.role, teacher=model.teacher, distillation_usd=None,
            distillation_teacher_tokens=None,
        )  # fmt: skip
        store.write_cell(run, "models", model_key(model, None), model.name, [record])
    gates = gate.ChunkGates(config, cells, stored={})
    evaluated: set[int] = set()
    for index in range(chunks.chunk_count(config.tasks[0])):
        for cell in (c for c in cells if c.chunk == index and gates.state(c) == "open"):
            gates.record(cell, store_chunk(run, cell))
            evaluated |= set(cell.documents)
    store.write_manifest(run, manifest(config, cells, model_keys(config, local_fingerprints(config)), address=None))

    (row,) = compare.compare_results(run)
    assert 0 < len(evaluated) < LIMIT  # the gate stopped early
    assert row.n_paired == len(evaluated)
    assert row.interval_method == compare.IntervalMethod.CONFIDENCE_SEQUENCE
    expected_score = np.mean([value("big", doc) for doc in evaluated])
    assert abs(row.teacher_score - expected_score) < 1e-12  # the chunks' scores weighted by their documents
    positions = chunks.evaluation_positions(config.tasks[0], config.run.seed)
    order = sorted(range(LIMIT), key=positions.__getitem__)
    full = sequential_quality(
        np.array([value("big", d) for d in order]), np.array([value("small", d) for d in order]), CHUNK,
        config.compare.retention_margin, config.compare.confidence,
    )  # fmt: skip
    assert row.verdict == full.verdict == compare.Verdict.NON_INFERIOR
    assert full.documents_used == len(evaluated)
    assert row.diff_ci_low > -config.compare.retention_margin

    assert gate.documents_evaluated(config, run) == (2 * len(evaluated), 2 * LIMIT)

    # A resume rebuilds the gates from the stored rows: no chunk is left to run.
    resumed = gate.gates_for(config, cells, store.done_cell_keys(run), run)
    waiting = [c for c in cells if c.key not in store.done_cell_keys(run)]
    assert waiting and all(resumed.state(c) == "skipped" for c in waiting)
