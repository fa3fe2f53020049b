"""Integration fixtures: the shipped toy pair, served by the real CPU build of vLLM (started once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.config import ModelConfig, ServeConfig

REPO = Path(__file__).resolve().parents[2]
TOY_MODELS = REPO / "bench" / "toy" / "models"
TOY_SERVE = ServeConfig(dtype="float32", max_model_len=64, cpu_kv_cache_gib=1, extra_args=("--enforce-eager",))


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Task YAMLs name their data files relative to the repository root, as `distill-bench run` expects.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def student_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The distilled toy student behind a real vLLM CPU server."""
    from bench.serve import VllmServer

    model = ModelConfig(name="toy-student-kd", source=str(TOY_MODELS / "student-kd"), serve=TOY_SERVE)
    server = VllmServer(model, seed=0, log_path=tmp_path_factory.mktemp("server") / "server.log")
    server.start()
    yield server
    server.stop()
