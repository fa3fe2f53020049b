"""Toy pair throughput in vLLM CPU: is the distilled student really cheaper per token than its teacher?

Why this measurement: on tiny models, vLLM's fixed per-step cost (scheduling, sampling, Python) dominates,
so a smaller model is not automatically faster; the teacher has to be large enough for its compute to show.
Both models get the same token-id prompts and exact output lengths (ignore_eos), one model at a time on the
same cores, through the product's own path (Ray worker, vLLM server, load generator, store). Reported as
ratios, since absolute tokens/s on a shared 2-core machine are noisy: the pair is measured `--repeats`
times, alternating which model goes first, and the table shows the median ratio and its range.

Run on demand (about 4 minutes per repeat on 2 cores):
    .venv/bin/python tests/perf/toy_throughput.py [--levels 1 8 32] [--requests 128] [--repeats 3]
        [--stream-interval 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import store
from bench.config import BenchConfig, parse_config
from bench.cost import load_price_table
from bench.progress import RunProgress
from bench.run import run

REPO = Path(__file__).resolve().parents[2]
TEACHER, STUDENT = "toy-teacher", "toy-student-kd"
FOLDERS = {TEACHER: "teacher", STUDENT: "student-kd"}


def config_for(results_dir: Path, args: argparse.Namespace, order: list[str]) -> BenchConfig:
    serve = {"dtype": "float32", "max_model_len": 64, "extra_args": ["--enforce-eager"]}
    models = [{"name": name, "source": f"bench/toy/models/{FOLDERS[name]}", "serve": serve} for name in order]
    for model in models:
        if model["name"] == STUDENT:
            model["teacher"] = TEACHER
    workload = {
        "name": "gen-32x32",
        "levels": args.levels,
        "num_requests": args.requests,
        "stream_interval": args.stream_interval,
        "warmup_requests": 8,
        "prompt_tokens": {"mean": 32},
        "output_tokens": {"mean": 32},
    }
    data = {
        "run": {"name": "toy-throughput", "results_dir": str(results_dir)},
        "hardware": {"device_type": "cpu-core", "devices_per_model": 2},
        "models": models,
        "workloads": [workload],
    }
    return parse_config(data, source="toy_throughput", base=REPO)


def measure_once(args: argparse.Namespace, order: list[str], console: Console) -> dict:
    """One run of both models; perf_summary rows keyed by (model, level)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(Path(tmp), args, order)
        outcome = run(config, load_price_table(REPO / "configs/prices.yaml"), RunProgress(console))
        rows = store.read_table(outcome.run_dir, "perf_summary").to_pylist()
    return {(row["model"], int(row["level"])): row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-interval", type=int, default=1, help="tokens per streamed chunk after the first")
    args = parser.parse_args()
    console = Console()
    runs = []
    for repeat in range(args.repeats):
        order = [TEACHER, STUDENT] if repeat % 2 == 0 else [STUDENT, TEACHER]
        runs.append(measure_once(args, order, console))

    title = f"toy pair, vLLM CPU, 32 prompt / 32 output tokens, same prompts, {args.repeats} repeats"
    table = Table(title=title + f", stream_interval {args.stream_interval}")
    for column in ("concurrency", "teacher tok/s", "student tok/s", "student/teacher", "range", "per repeat"):
        table.add_column(column, justify="right")
    result = []
    for level in args.levels:
        teacher = [r[(TEACHER, level)]["output_tokens_per_s"] for r in runs]
        student = [r[(STUDENT, level)]["output_tokens_per_s"] for r in runs]
        ratios = [s / t for s, t in zip(student, teacher, strict=True)]
        median = statistics.median(ratios)
        table.add_row(str(level), f"{statistics.median(teacher):.0f}", f"{statistics.median(student):.0f}",
                      f"{median:.2f}x", f"{min(ratios):.2f}-{max(ratios):.2f}x",
                      " ".join(f"{r:.2f}" for r in ratios))  # fmt: skip
        per_repeat = {"ratios": [round(r, 3) for r in ratios], "teacher": [round(t) for t in teacher]}
        per_repeat["student"] = [round(s) for s in student]
        result.append({"concurrency": level, "median_ratio": round(median, 3), **per_repeat})
    console.print(table)
    settings = {"repeats": args.repeats, "requests": args.requests, "stream_interval": args.stream_interval}
    print(json.dumps({"benchmark": "toy_throughput", **settings, "levels": result}))


if __name__ == "__main__":
    main()
