"""The Ray actor that owns one model's vLLM server for the whole run and runs that model's cells against it.

Evals (lm-eval) and perf trials (the load generator) both run inside this actor, next to the server on the
same node. `cluster.dispatch` decides when each call happens; this module only does the work.

Pinning (see `serve.py`): the worker reads the cores it may use once, gives the server all but the last,
and pins itself, which runs the load generator, to the last core for the duration of a perf trial (not
during evals: lm-eval's tokenizing is quality work, and sharing the server's cores there costs nothing
that is measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bench.config import ModelConfig, TaskConfig, WorkloadConfig
from bench.cost import Billing
from bench.records import EvalSample, EvalScore, ModelRecord, PerfProbe, PerfRequest, PerfSummary
from bench.serve import CoreSplit, VllmServer, pin_process, split_cores


class ModelWorker:
    """The Ray actor for one server of a model: owns its vLLM server and runs that model's cells against it.

    `server_class` makes the server; the scheduling simulation's `FakeEngineWorker`
    (tests/fakes/fake_engine.py) swaps in a fake engine, the only other class that ever goes here.
    """

    server_class: type[VllmServer] = VllmServer

    def __init__(self, model: ModelConfig, seed: int, run_dir: str, workdir: str, device_type: str, replica: int = 0):
        # Task files and relative model paths are relative to where `distill-bench run` was started.
        os.chdir(workdir)
        self.model = model
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.device_type = device_type
        self.replica = replica  # which of the model's servers this is (0: its first)
        self.node_cores = os.sched_getaffinity(0)
        self.cores: CoreSplit = split_cores(self.node_cores)
        self.server = None
        self._prompt_space = None

    def start(self) -> ModelRecord:
        """Start (or restart) the server and wait until it is healthy; returns its provenance."""
        if self.server is not None:
            self.server.stop()
        name = self.model.name if self.replica == 0 else f"{self.model.name}.replica{self.replica}"
        log_path = self.run_dir / "logs" / f"{name}.server.log"
        self.server = self.server_class(self.model, self.seed, log_path, self.cores)
        self.server.start()
        return self.server.provenance(self.device_type)

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def assigned_gpus(self) -> list[int]:
        """The GPU ids Ray gave this worker (empty on CPU); NVML samples these."""
        import ray

        return [int(gpu) for gpu in ray.get_gpu_ids()]

    def evaluate(self, task: TaskConfig, documents: tuple[int, ...] = ()) -> tuple[list[EvalScore], list[EvalSample]]:
        """Run one eval cell: the whole task, or an adaptive task's chunk of `documents`."""
        from bench.evaluate import Endpoint, evaluate_task, in_flight

        sent = in_flight(self.model, task, self.server.hardware.gpu_count)
        endpoint = Endpoint(self.server.base_url, self.model.name, self.model.source, sent)
        started_s = time.monotonic()
        scores, samples = evaluate_task(endpoint, task, self.seed, documents)
        # What the cell held its server for: an adaptive run's saving is estimated from it (bench.adaptive).
        wall_s = time.monotonic() - started_s
        self.server.check_alive(during=f"eval {task.name}")
        return [dataclasses.replace(score, eval_wall_s=wall_s) for score in scores], samples

    def measure(
        self, workload: WorkloadConfig, billing: Billing
    ) -> tuple[list[PerfRequest], list[PerfSummary], list[PerfProbe]]:
        """One trial of the whole workload (every level, or the whole sweep), with the load generator on its
        own core."""
        from bench.loadgen import measure_workload

        if self._prompt_space is None:
            self._prompt_space = prompt_space(self.model)  # before pinning: loading a tokenizer is not measured
        with self._loadgen_pinned():
            result = measure_workload(
                self.server.base_url,
                self.model.name,
                workload,
                self._prompt_space,
                self.seed,
                billing,
                gpu_indices=self.assigned_gpus(),
            )
        self.server.check_alive(during=f"perf {workload.name}")
        return result.requests, result.summaries, result.probes

    @contextlib.contextmanager
    def _loadgen_pinned(self) -> Iterator[None]:
        if not self.cores.pinned:
            yield
            return
        pin_process(self.cores.loadgen)
        try:
            yield
        finally:
            pin_process(self.node_cores)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def prompt_space(model: ModelConfig):
    """Token ids for synthetic prompts: the tokenizer's vocabulary minus its special tokens."""
    from transformers import AutoTokenizer

    from bench.loadgen import PromptSpace

    tokenizer = AutoTokenizer.from_pretrained(model.source, revision=model.revision)
    return PromptSpace(vocab_size=len(tokenizer), special_ids=frozenset(tokenizer.all_special_ids))
