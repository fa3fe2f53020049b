"""Eval wall time against requests in flight: the quickstart's 12 eval cells at the old setting and the new default.

Why: lm-eval sends a task's requests through a semaphore of `num_concurrent` requests of `batch_size` prompts;
vLLM batches every sequence in flight into one step, so with 4 requests of 1 prompt (the old constant) the
server steps with a batch of at most 4. This measures what the engine-derived default (`bench.evaluate.in_flight`:
on the CPU build, 16 requests of 8 prompts = the engine's 128-sequence batch) buys, through the product's own
eval path (`bench.evaluate.evaluate_task` against `bench.serve.VllmServer`), and checks that the scores do not
move (every per-document sample equal).

Protocol: the quickstart's three toy models (configs/quickstart.yaml: serve settings, tasks, limits) are served
at once, as a run serves them, each pinned to cores 0 .. n-2 (the product's `split_cores`); this process,
which runs lm-eval, is pinned to the last core. One untimed warm-up pass (every model on its first task at
each setting) precedes the timing. Then `--repeats` rounds; a round times all 12 cells (models × tasks in
config order) once at each setting, the order of the settings reversed every other round so that drift hits
both alike. Reported: per setting the median and range of the 12-cell wall time, and the paired ratio
old / new per round (median and range). Sample equality compares every (model, task, doc, metric, filter)
value and response with the first round at the first setting.

Run under the machine's heavy-work lock (about 4 minutes with the defaults on 2 cores):
    flock /tmp/heavy.lock .venv/bin/python tests/perf/eval_concurrency.py [--settings 4x1 default] [--repeats 3]

A setting is REQUESTSxPROMPTS (requests in flight x prompts per request) or `default` (each cell's
`in_flight`, what a run uses).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.config import BenchConfig, ModelConfig, TaskConfig, load_config
from bench.evaluate import Endpoint, InFlight, evaluate_task, in_flight
from bench.serve import VllmServer, pin_process, split_cores

REPO = Path(__file__).resolve().parents[2]
OLD_SETTING = "4x1"  # bench/evaluate.py's hard-coded num_concurrent (and lm-eval's batch_size 1) before
Samples = dict[tuple, tuple[float, str]]


def sent(setting: str, model: ModelConfig, task: TaskConfig) -> InFlight:
    """What a setting sends for one cell: `default` is the run's own choice (CPU build: no GPUs)."""
    if setting == "default":
        return in_flight(model, task, gpu_count=0)
    requests, prompts = (int(part) for part in setting.split("x"))
    return InFlight(requests, prompts)


def time_round(servers: dict, config: BenchConfig, setting: str) -> tuple[float, dict[str, float], Samples]:
    """All eval cells once at `setting`: total wall seconds, seconds per cell, and every sample."""
    per_cell, samples = {}, {}
    for model in config.models:
        server = servers[model.name]
        for task in config.tasks:
            endpoint = Endpoint(server.base_url, model.name, model.source, sent(setting, model, task))
            start = time.perf_counter()
            _, rows = evaluate_task(endpoint, task, config.run.seed)
            per_cell[f"{model.name}/{task.name}"] = time.perf_counter() - start
            samples |= {(model.name, r.task, r.doc_id, r.metric, r.filter): (r.value, r.response) for r in rows}
    return sum(per_cell.values()), per_cell, samples


def differing(reference: Samples, samples: Samples) -> int:
    """How many samples differ from the reference (a missing or extra one counts too)."""
    return sum(reference.get(key) != samples.get(key) for key in reference.keys() | samples.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml", help="its models and tasks are used")
    parser.add_argument("--settings", nargs="+", default=[OLD_SETTING, "default"], help="REQUESTSxPROMPTS or default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.chdir(REPO)  # task YAMLs name their data files relative to the repository root
    config = load_config(args.config)
    console = Console()
    cores = split_cores(os.sched_getaffinity(0))
    servers = {}
    with tempfile.TemporaryDirectory() as logs:
        try:
            for model in config.models:
                servers[model.name] = VllmServer(model, config.run.seed, Path(logs) / f"{model.name}.log", cores)
                servers[model.name].start()
            pin_process(cores.loadgen)  # lm-eval (this process) on the last core; each server pinned itself
            console.print(f"servers on cores {cores.server}, lm-eval on {cores.loadgen}; warming up")
            for setting in args.settings:
                for model in config.models:
                    server, task = servers[model.name], config.tasks[0]
                    endpoint = Endpoint(server.base_url, model.name, model.source, sent(setting, model, task))
                    evaluate_task(endpoint, task, config.run.seed)
            walls: dict[str, list[float]] = {setting: [] for setting in args.settings}
            cells: dict[str, list[dict[str, float]]] = {setting: [] for setting in args.settings}
            reference, differences = None, {setting: 0 for setting in args.settings}
            for repeat in range(args.repeats):
                order = args.settings if repeat % 2 == 0 else args.settings[::-1]
                for setting in order:
                    wall, per_cell, samples = time_round(servers, config, setting)
                    reference = reference or samples
                    differences[setting] += differing(reference, samples)
                    walls[setting].append(wall)
                    cells[setting].append(per_cell)
                    console.print(f"round {repeat}, {setting}: {wall:.1f} s for {len(per_cell)} cells")
        finally:
            for server in servers.values():
                server.stop()
    report(console, args, walls, cells, differences, len(reference or {}))


def report(console: Console, args, walls: dict, cells: dict, differences: dict, n_samples: int) -> None:
    old, new = args.settings[0], args.settings[-1]
    ratios = [o / n for o, n in zip(walls[old], walls[new], strict=True)]
    title = f"quickstart eval cells, vLLM CPU, {args.repeats} interleaved rounds"
    table = Table(title=title)
    for column in ("requests x prompts", "wall s, all cells (median)", "range", "samples differing"):
        table.add_column(column, justify="right")
    for setting in args.settings:
        table.add_row(
            setting, f"{statistics.median(walls[setting]):.1f}",
            f"{min(walls[setting]):.1f}-{max(walls[setting]):.1f}", f"{differences[setting]} of {n_samples}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"ratio {old} / {new} wall time: median {statistics.median(ratios):.2f}x "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} paired rounds)"
    )
    per_cell = {
        setting: {cell: round(statistics.median(r[cell] for r in cells[setting]), 2) for cell in cells[setting][0]}
        for setting in args.settings
    }
    record = {
        "benchmark": "eval_concurrency",
        "settings": args.settings,
        "repeats": args.repeats,
        "wall_s": {s: [round(w, 2) for w in walls[s]] for s in args.settings},
        "ratio_old_over_new": [round(r, 3) for r in ratios],
        "samples": n_samples,
        "samples_differing": differences,
        "cell_median_s": per_cell,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
