"""An adaptive run's results compared: chunk scores averaged over the documents evaluated, the verdict and
interval from the confidence sequence, the same verdict as the replay of every document; and a resume that
rebuilds the gates from the stored chunks runs none of the skipped ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench import adaptive, chunks, cli, compare, gate, store
from bench.adaptive import ReplayKind
from bench.config import BenchConfig
from bench.plan import build_plan, local_fingerprints, model_key
from bench.records import EvalSample, EvalScore, ModelRecord
from bench.run import manifest, model_keys
from bench.sequential import confidence_bounds, sequential_quality
from tests.unit.test_store import make_record

LIMIT, CHUNK = 200, 25
SECONDS_PER_DOCUMENT = 0.1  # each chunk's lm-eval wall time, per document


def value(model: str, doc: int) -> float:
    """Both models miss every tenth document and agree on all others: non-inferior well before 200."""
    return float(doc % 10 != 0)


def make_config(*students: str) -> BenchConfig:
    """big and its student small, and more students of big."""
    more = [{"name": name, "source": f"org/{name}", "teacher": "big"} for name in students]
    return BenchConfig.model_validate(
        {
            "run": {"name": "r", "seed": 5},
            "models": [
                {"name": "big", "source": "org/big"},
                {"name": "small", "source": "org/s", "teacher": "big"},
                *more,
            ],
            "tasks": [{"name": "toy_add", "limit": LIMIT, "adaptive": {"chunk_documents": CHUNK}}],
        }
    )


def store_chunk(run: Path, cell, value: Callable[[str, int], float] = value) -> gate.ChunkValues:
    samples = [
        make_record(EvalSample, task="toy_add", doc_id=doc, metric="acc", filter="none", value=value(cell.model, doc))
        for doc in cell.documents
    ]
    mean = float(np.mean([s.value for s in samples]))
    score = make_record(
        EvalScore, task="toy_add", metric="acc", filter="none", value=mean, higher_is_better=True, n=len(samples),
        eval_wall_s=SECONDS_PER_DOCUMENT * len(samples),
    )  # fmt: skip
    store.write_cell(run, "eval_samples", cell.key, cell.model, samples)
    store.write_cell(run, "eval_scores", cell.key, cell.model, [score])
    return gate.chunk_values([score], samples)


def store_models(run: Path, config: BenchConfig) -> None:
    for model in config.models:
        record = make_record(
            ModelRecord, name=model.name, role=model.role, teacher=model.teacher, distillation_usd=None,
            distillation_teacher_tokens=None,
        )  # fmt: skip
        store.write_cell(run, "models", model_key(model, None), model.name, [record])


def two_students(model: str, doc: int) -> float:
    """noisy also misses one document in 25: near the margin, it keeps its teacher going."""
    return float(value(model, doc) and doc % 25 != 1) if model == "noisy" else value(model, doc)


def run_gated(run: Path, config: BenchConfig, value: Callable[[str, int], float] = value) -> dict[str, set[int]]:
    """Store the chunks a live run evaluates (each gate walked as `cluster.Dispatch` walks it) and the
    run's manifest; each model's documents evaluated."""
    cells = build_plan(config)
    store_models(run, config)
    gates = gate.ChunkGates(config, cells, stored={})
    evaluated: dict[str, set[int]] = {model.name: set() for model in config.models}
    for index in range(chunks.chunk_count(config.tasks[0])):
        for cell in (c for c in cells if c.chunk == index and gates.state(c) == "open"):
            gates.record(cell, store_chunk(run, cell, value))
            evaluated[cell.model] |= set(cell.documents)
    store.write_manifest(run, manifest(config, cells, model_keys(config, local_fingerprints(config)), address=None))
    return evaluated


def test_an_adaptive_run_is_compared_on_its_confidence_sequence(tmp_path: Path) -> None:
    config, run = make_config(), tmp_path / "r"
    cells = build_plan(config)
    evaluated = run_gated(run, config)["small"]

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

    # A resume rebuilds the gates from the stored rows: no chunk is left to run.
    resumed = gate.gates_for(config, cells, store.done_cell_keys(run), run)
    waiting = [c for c in cells if c.key not in store.done_cell_keys(run)]
    assert waiting and all(resumed.state(c) == "skipped" for c in waiting)


def test_each_student_is_scored_against_the_teacher_on_the_documents_they_share(tmp_path: Path) -> None:
    """small is decided early; noisy, which also misses one document in 25, near the margin, keeps the
    teacher going: small's teacher_score, student_score and retention cover small's documents only."""

    config, run = make_config("noisy"), tmp_path / "r"
    evaluated = run_gated(run, config, two_students)
    assert evaluated["small"] < evaluated["big"]  # the teacher went on for noisy

    rows = {row.student: row for row in compare.compare_results(run)}
    documents = sorted(evaluated["small"])
    small = rows["small"]
    assert small.n_paired == len(documents)
    assert abs(small.teacher_score - np.mean([two_students("big", d) for d in documents])) < 1e-12
    assert abs(small.student_score - np.mean([two_students("small", d) for d in documents])) < 1e-12
    assert abs(small.retention_pct - small.student_score / small.teacher_score * 100) < 1e-9
    assert abs(small.diff_mean - (small.student_score - small.teacher_score)) < 1e-12


def test_the_interval_and_verdict_cover_every_stored_document_even_past_the_stopping_look(tmp_path: Path) -> None:
    """Every chunk of both models stored (as where the student kept going for another metric): the
    confidence sequence holds at every look, so the row reads it after all paired documents, the same
    documents as its diff_mean and n_paired, not at the replay's first decisive look."""
    config, run = make_config(), tmp_path / "r"
    cells = build_plan(config)
    store_models(run, config)
    for cell in cells:
        store_chunk(run, cell)
    store.write_manifest(run, manifest(config, cells, model_keys(config, local_fingerprints(config)), address=None))

    (row,) = compare.compare_results(run)
    positions = chunks.evaluation_positions(config.tasks[0], config.run.seed)
    order = sorted(range(LIMIT), key=positions.__getitem__)
    teacher, student = np.array([value("big", d) for d in order]), np.array([value("small", d) for d in order])
    settings = config.compare
    assert (
        sequential_quality(teacher, student, CHUNK, settings.retention_margin, settings.confidence).documents_used
        < LIMIT
    )
    assert row.n_paired == LIMIT and row.diff_mean == float((student - teacher).mean())
    assert (row.diff_ci_low, row.diff_ci_high) == confidence_bounds(student - teacher, LIMIT, settings.confidence)
    assert row.verdict == compare.verdict(row.diff_ci_low, row.diff_ci_high, settings.retention_margin)
    assert row.discordant_student_only is None and row.mcnemar_p is None


def test_the_replay_reports_an_adaptive_task_as_it_ran_with_its_documents_and_device_seconds(
    tmp_path: Path, capsys
) -> None:
    """Nothing of a live task is replayed: one `live` row with the documents both models answered and compare's
    verdict; the saving is priced at the run's own seconds per document; the end of `run` says so in a line."""
    config, run = make_config(), tmp_path / "r"
    evaluated = len(run_gated(run, config)["small"])
    (compared,) = compare.compare_results(run)

    rows = adaptive.replay_rows(tmp_path)
    (row,) = rows
    assert row.kind == ReplayKind.LIVE and row.order_seed is None
    assert (row.documents_used, row.documents_full) == (compared.n_paired, LIMIT) == (evaluated, LIMIT)
    assert row.sequential_verdict == compared.verdict and row.full_verdict is None and row.agrees is None
    assert (row.ci_low, row.ci_high) == (compared.diff_ci_low, compared.diff_ci_high)
    assert row.student_eval_device_s == pytest.approx(SECONDS_PER_DOCUMENT * evaluated)

    (savings,) = adaptive.run_savings(rows)
    assert savings.orders == 1
    assert (savings.evaluations_used.median, savings.evaluations_full) == (2 * evaluated, 2 * LIMIT)
    assert savings.device_s_total == pytest.approx(2 * SECONDS_PER_DOCUMENT * LIMIT)
    assert savings.device_s_saved.median == pytest.approx(2 * SECONDS_PER_DOCUMENT * (LIMIT - evaluated))
    assert adaptive.docs_to_decision(adaptive.stored_rows(tmp_path)) == {("r", "big", "small"): evaluated / LIMIT}

    cli._print_adaptive(run)
    (line,) = capsys.readouterr().out.splitlines()  # no replay line: the run's only task ran adaptively
    assert line.startswith(f"adaptive tasks: {2 * evaluated} of {2 * LIMIT} documents")
    saved, spent = savings.device_s_saved.median, SECONDS_PER_DOCUMENT * 2 * evaluated
    assert f"about {saved:.1f} more eval device-seconds at its own rate ({spent:.1f} spent)" in line


def test_a_teachers_documents_are_counted_once_up_to_its_last_student(tmp_path: Path) -> None:
    config, run = make_config("noisy"), tmp_path / "r"
    evaluated = {model: len(docs) for model, docs in run_gated(run, config, two_students).items()}
    (savings,) = adaptive.run_savings(adaptive.replay_rows(tmp_path))
    assert evaluated["big"] == max(evaluated["small"], evaluated["noisy"])
    assert savings.evaluations_used.median == sum(evaluated.values())
    assert savings.evaluations_full == 3 * LIMIT
