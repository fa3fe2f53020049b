"""Toy pair throughput in vLLM CPU: is the distilled student really cheaper per token than its teacher?

Why this measurement: on tiny models, vLLM's fixed per-step cost (scheduling, sampling, Python) dominates,
so a smaller model is not automatically faster; the teacher has to be large enough for its compute to show.
Both models get the same token-id prompts and exact output lengths (ignore_eos), one model at a time on the
same cores, through the product's own path (Ray worker, vLLM server, load generator, store). Reported as
ratios, since absolute tokens/s on a shared 2-core machine are noisy.

Run on demand (about 5 minutes on 2 cores):
    .venv/bin/python tests/perf/toy_throughput.py [--levels 1 8 32] [--requests 96]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import store
from bench.config import parse_config
from bench.cost import load_price_table
from bench.progress import RunProgress
from bench.run import run

REPO = Path(__file__).resolve().parents[2]
MODELS = {"toy-teacher": "teacher", "toy-student-kd": "student-kd"}


def config_for(results_dir: Path, levels: list[int], requests: int):
    serve = {"dtype": "float32", "max_model_len": 64, "extra_args": ["--enforce-eager"]}
    models = [{"name": name, "source": f"bench/toy/models/{folder}", "serve": serve} for name, folder in MODELS.items()]
    models[1]["teacher"] = "toy-teacher"
    workload = {
        "name": "gen-32x32",
        "levels": levels,
        "num_requests": requests,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(Path(tmp), args.levels, args.requests)
        outcome = run(config, load_price_table(REPO / "configs/prices.yaml"), RunProgress(console))
        rows = store.read_table(outcome.run_dir, "perf_summary").to_pylist()
    by = {(row["model"], row["level"]): row for row in rows}
    table = Table(title="toy pair, vLLM CPU, 32 prompt / 32 output tokens, same prompts")
    for column in ("concurrency", "teacher tok/s", "student tok/s", "student/teacher", "TPOT p50 teacher/student"):
        table.add_column(column, justify="right")
    result = []
    for level in args.levels:
        teacher, student = by[("toy-teacher", float(level))], by[("toy-student-kd", float(level))]
        ratio = student["output_tokens_per_s"] / teacher["output_tokens_per_s"]
        tpot = teacher["tpot_p50_s"] / student["tpot_p50_s"]
        table.add_row(str(level), f"{teacher['output_tokens_per_s']:.0f}", f"{student['output_tokens_per_s']:.0f}",
                      f"{ratio:.2f}x", f"{tpot:.2f}x")  # fmt: skip
        result.append({"concurrency": level, "throughput_ratio": round(ratio, 3), "tpot_ratio": round(tpot, 3)})
    console.print(table)
    print(json.dumps({"benchmark": "toy_throughput", "levels": result}))


if __name__ == "__main__":
    main()
