"""`bench.blockgate`: when an adaptive workload's remaining blocks are skipped, live and on resume, and that
the live gate stops where the replay of the stored blocks (`sequential.sequential_ratio`) stops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bench import store
from bench.blockgate import BlockGates, Rows, block_gates_for, block_rows, blocks_run, decided
from bench.config import parse_config
from bench.plan import build_plan
from bench.records import PerfSummary
from bench.sequential import RatioDecision, sequential_ratio
from tests.unit.test_store import make_record

REPO = Path(__file__).resolve().parents[2]
REPEATS, MIN_BLOCKS, TEACHER_TPS, NOISE_SD = 8, 2, 100.0, 0.05


def make_config(students: dict[str, float]):
    """A teacher and `students` (name -> true throughput ratio), one adaptive workload of REPEATS blocks."""
    models = [{"name": "teacher", "source": "org/teacher"}]
    models += [{"name": name, "source": f"org/{name}", "teacher": "teacher"} for name in students]
    workload = {"name": "w", "repeats": REPEATS, "adaptive": {"min_blocks": MIN_BLOCKS}}
    data = {"run": {"name": "b", "seed": 3}, "models": models, "tasks": [], "workloads": [workload]}
    return parse_config(data, source="b", base=REPO)


def throughputs(ratios: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Output tokens/s of every model in every block: the true ratio times log-normal block noise."""
    rng = np.random.default_rng(seed)
    every = {"teacher": 1.0, **ratios}
    return {model: TEACHER_TPS * ratio * np.exp(rng.normal(0, NOISE_SD, REPEATS)) for model, ratio in every.items()}


def summary(workload: str, tps: float) -> PerfSummary:
    return make_record(PerfSummary, workload=workload, mode="concurrency", level=4.0, output_tokens_per_s=float(tps))


def rows_upto(tps: dict[str, np.ndarray], blocks: int) -> dict[str, Rows]:
    return {
        model: [{"workload": "w", "block": b, "level": 4.0, "mode": "concurrency", "output_tokens_per_s": v[b]}
                for b in range(blocks)]
        for model, v in tps.items()
    }  # fmt: skip


def walk(config, tps: dict[str, np.ndarray]) -> tuple[BlockGates, dict[str, list[int]]]:
    """Run the blocks in order as a dispatch would: each open cell is measured and recorded."""
    cells = build_plan(config)
    gates = BlockGates(config, cells, stored={})
    ran: dict[str, list[int]] = {model: [] for model in tps}
    for cell in cells:  # the plan lists the blocks in order, every model in each
        if gates.state(cell) == "open":
            gates.record(cell, block_rows(cell, [summary("w", tps[cell.model][cell.block])]))
            ran[cell.model].append(cell.block)
    return gates, ran


def test_a_pair_is_decided_where_the_replay_of_its_blocks_is_decisive_and_never_after_one_block() -> None:
    teachers = {"teacher": None, "kd": "teacher"}
    for ratio in (2.0, 0.5, 1.0):
        tps = throughputs({"kd": ratio})
        for blocks in range(1, REPEATS + 1):
            replay = sequential_ratio(tps["kd"][:blocks], tps["teacher"][:blocks], 1.0, 0.95)
            expected = replay.decision != RatioDecision.UNDECIDED
            assert decided(rows_upto(tps, blocks), teachers, 0.95) == expected, (ratio, blocks)
        assert not decided(rows_upto(tps, 1), teachers, 0.95)  # one block says nothing about the noise
    both = throughputs({"kd": 2.0, "same": 1.0})
    assert not decided(rows_upto(both, REPEATS), {"teacher": None, "kd": "teacher", "same": "teacher"}, 0.95)
    assert decided(rows_upto(both, REPEATS), {"teacher": None, "kd": "teacher"}, 0.95)
    assert not decided(rows_upto(both, REPEATS), {"teacher": None}, 0.95)  # no pair: nothing to decide
    assert not decided({"teacher": rows_upto(both, REPEATS)["teacher"]}, {"teacher": None, "kd": "teacher"}, 0.95)


def test_the_live_gate_skips_every_models_remaining_blocks_where_the_replay_stops() -> None:
    config = make_config({"kd": 2.0})
    tps = throughputs({"kd": 2.0})
    gates, ran = walk(config, tps)
    replay = sequential_ratio(tps["kd"], tps["teacher"], 1.0, config.compare.confidence)
    assert replay.decision == RatioDecision.ABOVE
    blocks = max(MIN_BLOCKS, replay.blocks_used)
    assert ran == {"teacher": list(range(blocks)), "kd": list(range(blocks))}
    assert blocks < REPEATS  # blocks were saved
    assert {gates.state(c) for c in build_plan(config) if c.block >= blocks} == {"skipped"}


def test_one_undecided_pair_keeps_every_block_for_every_model() -> None:
    config = make_config({"kd": 2.0, "same": 1.0})
    _, ran = walk(config, throughputs({"kd": 2.0, "same": 1.0}))
    assert ran == {model: list(range(REPEATS)) for model in ("teacher", "kd", "same")}


def test_a_failed_trial_finishes_its_block_without_its_row() -> None:
    config = make_config({"kd": 2.0})
    cells = build_plan(config)
    gates = BlockGates(config, cells, stored={})
    for cell in (c for c in cells if c.block < MIN_BLOCKS):
        if cell.model == "kd" and cell.block == 0:
            gates.fail(cell)
        else:
            gates.record(cell, [])
    assert {gates.state(c) for c in cells if c.block == MIN_BLOCKS} == {"open"}  # nothing decided: go on
    assert {gates.state(c) for c in cells if c.block > MIN_BLOCKS} == {"held"}


def test_a_resumed_run_rebuilds_the_gate_from_the_stored_blocks(tmp_path: Path) -> None:
    config = make_config({"kd": 2.0})
    tps = throughputs({"kd": 2.0})
    live, ran = walk(config, tps)
    cells = build_plan(config)
    for cell in cells:
        if cell.block in ran[cell.model]:
            row = dataclasses.replace(summary("w", tps[cell.model][cell.block]), block=cell.block)
            store.write_cell(tmp_path, "perf_summary", cell.key, cell.model, [row])
    done = store.done_cell_keys(tmp_path)
    store.write_manifest(tmp_path, {"cell_keys": sorted(done)})
    assert blocks_run(config, tmp_path) == {"w": (len(ran["kd"]), REPEATS)}
    resumed = block_gates_for(config, build_plan(config, done), done, tmp_path)
    assert resumed is not None
    assert {c.key: resumed.state(c) for c in cells} == {c.key: live.state(c) for c in cells}
    before = {c.key for c in cells if c.block < MIN_BLOCKS}  # a run stopped after its first blocks
    partial = block_gates_for(config, cells, before, tmp_path)
    assert partial is not None
    assert {(c.block, partial.state(c)) for c in cells if c.block <= MIN_BLOCKS + 1} == {
        *((b, "open") for b in range(MIN_BLOCKS + 1)),
        (MIN_BLOCKS + 1, "held"),
    }
