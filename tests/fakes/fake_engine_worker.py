"""The FAKE engine's side of the worker, for the scheduling simulation only (see tests/fakes/fake_engine.py)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path

from bench.records import ModelRecord
from bench.serve import VllmServer
from bench.worker import ModelWorker

# What `bench.evaluate` imports for a local-completions eval (lm-eval pulls in torch, transformers, datasets).
PRELOADED = ("lm_eval", "lm_eval.evaluator", "lm_eval.tasks", "lm_eval.models.openai_completions", "datasets")


class FakeEngineServer(VllmServer):
    """`VllmServer`'s life (start, health wait, pinning, stop) around the fake engine's process instead of vLLM's."""

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        model = self.model
        self.command = [
            sys.executable, "-m", "tests.fakes.fake_engine",
            "--port", str(self.port),
            "--served-model-name", model.name,
            "--max-model-len", str(model.serve.max_model_len or 2048),
            *model.serve.extra_args,
        ]  # fmt: skip

    def provenance(self, device_type: str) -> ModelRecord:
        return dataclasses.replace(super().provenance(device_type), engine="fake-engine", engine_version="0")


class FakeEngineWorker(ModelWorker):
    """A `ModelWorker` serving the fake engine: what the scheduling simulation passes to the dispatch.

    It imports lm-eval (and loads the tokenizer) while its server starts. The product does that in a server's
    first eval, where on a GPU node its ~10 s are nothing next to a cell of minutes; in a cell of seconds
    they would be most of it, and the rates the longest-first estimates learn from first cells would be off.
    """

    server_class = FakeEngineServer

    def start(self) -> ModelRecord:
        if Path(self.model.source).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as bench.evaluate does before importing lm-eval
        for module in PRELOADED:
            importlib.import_module(module)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(self.model.source)  # the tokenizer code lm-eval loads in every cell
        return super().start()
