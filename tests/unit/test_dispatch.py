"""`cluster.Dispatch` against a fake `ray` module: retries, a worker replaced once, a model given up, and
every cell ending stored or failed. No Ray, no vLLM: each fake call finishes at once, in submission order."""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path

import pytest

from bench import cluster, schedule
from bench.config import parse_config
from bench.plan import build_plan

REPO = Path(__file__).resolve().parents[2]


class FakeRef:
    _ids = itertools.count()

    def __init__(self, call):
        self.id, self.call = next(FakeRef._ids), call


class FakeActor:
    """A worker whose calls follow a script: `failures[(model, method)]` is how many calls raise first."""

    def __init__(self, model, failures: dict, log: list, alive: dict):
        self.model, self.failures, self.log, self.alive_after_failure = model, failures, log, alive
        for method in ("start", "evaluate", "measure", "alive", "stop"):
            setattr(self, method, types.SimpleNamespace(remote=self._remote(method)))

    def _remote(self, method: str):
        def remote(*args):
            return FakeRef(lambda: self._run(method, args))

        return remote

    def _run(self, method: str, args: tuple):
        name = self.model.name
        if method == "alive":
            return self.alive_after_failure.get(name, True)
        if method == "stop":
            return None
        self.log.append((name, method, getattr(args[0], "name", None) if args else None))
        if self.failures.get((name, method), 0) > 0:
            self.failures[name, method] -= 1
            raise RuntimeError(f"{name} {method} failed")
        if method == "start":
            return types.SimpleNamespace(name=name)
        return ([], []) if method == "evaluate" else ([], [], [])


def fake_ray(failures: dict, alive: dict, log: list) -> tuple[types.ModuleType, dict[str, types.ModuleType]]:
    ray = types.ModuleType("ray")
    ray.nodes = lambda: [{"Alive": True, "Resources": {"CPU": 2}}]
    ray.wait = lambda refs, num_returns, timeout: (sorted(refs, key=lambda r: r.id)[:1], [])

    def get(ref, timeout=None):
        return ref.call()

    ray.get = get
    ray.kill = lambda actor: None
    ray.remote = lambda cls: types.SimpleNamespace(
        options=lambda **options: types.SimpleNamespace(
            remote=lambda model, *rest: FakeActor(model, failures, log, alive)
        )
    )
    util = types.ModuleType("ray.util")
    groups = types.ModuleType("ray.util.placement_group")
    groups.placement_group = groups.remove_placement_group = lambda *a, **k: None
    strategies = types.ModuleType("ray.util.scheduling_strategies")
    strategies.PlacementGroupSchedulingStrategy = lambda **k: None
    ray.util = util
    return ray, {"ray.util": util, "ray.util.placement_group": groups, "ray.util.scheduling_strategies": strategies}


@pytest.fixture
def config():
    models = [
        {"name": "teacher", "source": "org/t"},
        {"name": "kd", "source": "org/kd", "teacher": "teacher"},
    ]
    data = {
        "run": {"name": "d", "cell_retries": 1},
        "models": models,
        "tasks": [{"name": "task"}],
        "workloads": [{"name": "w", "repeats": 2}],
    }
    return parse_config(data, source="dispatch", base=REPO)


def run_dispatch(config, monkeypatch, failures=None, alive=None):
    log: list = []
    ray, submodules = fake_ray(failures or {}, alive or {}, log)
    monkeypatch.setitem(sys.modules, "ray", ray)
    for name, module in submodules.items():
        monkeypatch.setitem(sys.modules, name, module)
    stored, failed, reported = [], [], []
    events = cluster.Events(
        on_started=lambda record: None,
        on_eval=lambda cell, *_: stored.append(cell),
        on_perf=lambda cell, *_: stored.append(cell),
        on_failed=lambda cell, attempts, message: failed.append((cell, attempts, message)),
        on_retry=lambda cell, attempts, message: reported.append(("retry", cell.model, cell.kind, attempts)),
        on_replaced=lambda model, why: reported.append(("replaced", model, why)),
        on_stage=lambda model, what: None,
        billing_for=lambda record: None,
    )
    cells = build_plan(config)
    cluster.dispatch(config, cells, Path("/tmp/unused"), events)
    assert sorted(c.key for c in stored + [f[0] for f in failed]) == sorted(c.key for c in cells)  # none dropped
    return stored, failed, log, reported


def test_everything_runs_evals_first_then_trials_in_block_order(config, monkeypatch) -> None:
    stored, failed, log, reported = run_dispatch(config, monkeypatch)
    assert failed == [] and reported == []
    assert [c.kind for c in stored] == ["eval", "eval", "perf", "perf", "perf", "perf"]
    expected = schedule.perf_order(build_plan(config), config.run.seed, ["teacher", "kd"])
    assert [c for c in stored if c.kind == "perf"] == expected
    assert [entry for entry in log if entry[1] == "start"] == [("teacher", "start", None), ("kd", "start", None)]


def test_a_failed_cell_is_retried_once_then_stored_as_failed(config, monkeypatch) -> None:
    stored, failed, _, reported = run_dispatch(config, monkeypatch, failures={("kd", "evaluate"): 5})
    assert [(cell.model, cell.kind, attempts) for cell, attempts, _ in failed] == [("kd", "eval", 2)]
    assert len(stored) == 5
    assert reported == [("retry", "kd", "eval", 1)]  # the server answered: retried in place, not replaced


def test_a_transient_failure_is_retried_and_stored(config, monkeypatch) -> None:
    stored, failed, log, reported = run_dispatch(config, monkeypatch, failures={("teacher", "measure"): 1})
    assert failed == [] and len(stored) == 6
    assert reported == [("retry", "teacher", "perf", 1)]
    assert sum(1 for entry in log if entry[:2] == ("teacher", "measure")) == 3  # 2 blocks + 1 retry


def test_a_dead_server_gets_its_worker_replaced_once(config, monkeypatch) -> None:
    failures = {("kd", "evaluate"): 1}
    stored, failed, log, reported = run_dispatch(config, monkeypatch, failures=failures, alive={"kd": False})
    assert failed == [] and len(stored) == 6
    assert [entry for entry in log if entry[1] == "start"].count(("kd", "start", None)) == 2
    assert reported == [("retry", "kd", "eval", 1), ("replaced", "kd", "RuntimeError: kd evaluate failed")]


def test_a_server_that_never_starts_fails_all_its_cells(config, monkeypatch) -> None:
    stored, failed, _, reported = run_dispatch(config, monkeypatch, failures={("kd", "start"): 9})
    assert {cell.model for cell, _, _ in failed} == {"kd"} and len(failed) == 3
    assert reported == [("replaced", "kd", "server did not start: RuntimeError: kd start failed")]  # once only
    assert all("server did not start" in message for _, _, message in failed)
    assert {cell.model for cell in stored} == {"teacher"}
