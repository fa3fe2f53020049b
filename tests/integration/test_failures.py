"""A model whose server cannot start: its cells are stored as failures, the run says so, nothing is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bench import store
from bench.config import parse_config
from bench.cost import load_price_table
from bench.progress import RunProgress
from bench.run import run

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_cells_of_a_model_that_cannot_be_served_are_stored_as_failures(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchArchitecture"], "model_type": "nope"}))
    data = {
        "run": {"name": "broken", "results_dir": str(tmp_path / "results"), "cell_retries": 0},
        "hardware": {"device_type": "cpu-core", "prices": "configs/prices.yaml"},
        "models": [{"name": "broken", "source": str(broken), "serve": {"startup_timeout_s": 300}}],
        "workloads": [{"name": "w", "num_requests": 2, "repeats": 2}],
        "tasks": [{"name": "toy_add", "include_path": "configs/tasks/toy", "limit": 2}],
    }
    config = parse_config(data, source="broken", base=REPO)

    outcome = run(config, load_price_table(REPO / "configs/prices.yaml"), RunProgress(Console(record=True)))

    assert (outcome.succeeded, outcome.failed) == (0, 3)
    failures = store.read_table(outcome.run_dir, "failures").to_pylist()
    assert sorted(f["target"] for f in failures) == ["toy_add", "w", "w"]  # an eval and two blocks' trials
    assert all("server did not start" in f["error"] for f in failures)
    assert store.done_cell_keys(outcome.run_dir) == set()  # a failure is not done: the next run retries it
    assert (outcome.run_dir / "logs" / "broken.server.log").is_file()
