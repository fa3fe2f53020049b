"""The GPU path on real hardware: vLLM CUDA serving of the toy pair, the load generator, NVML energy.

Why a script and not a test: no CI machine has a GPU. It uses the product's own pieces (`bench.serve.VllmServer`,
`bench.loadgen.run_level` + `summarize`, `bench.power.PowerSampler` through `gpu_indices`, the price table)
and needs vLLM (CUDA build), aiohttp, transformers and nvidia-ml-py, not Ray or lm-eval, so it runs on a bare
GPU machine with wheels carried in.

Protocol: every model's server is up at once on the GPU (each gets `--gpu-memory-utilization` of it), so
models can be interleaved: for each repeat and level the model order is a seeded permutation, and each model
is warmed up at the level's concurrency before its timed requests. Energy is the GPU's own counter over the
timed requests; the idle servers' draw is part of the same GPU's reading (the counter is per GPU), so J/token
here is the whole card's energy, as a billed GPU would be. Prints per-repeat rows and the median
student/teacher ratio with its range, and writes a JSON record with `--out`.

    python tests/perf/gpu_path.py --repeats 5 --levels 1 8 32 --out gpu_path.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MODELS = {"teacher": "bench/toy/models/teacher", "student-kd": "bench/toy/models/student-kd"}


def _model(name: str, source: str, args: argparse.Namespace):
    from bench.config import ModelConfig

    serve = {
        "dtype": args.dtype,
        "max_model_len": args.prompt_tokens + args.output_tokens,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "extra_args": args.server_arg,
    }
    return ModelConfig.model_validate({"name": name, "source": str(REPO / source), "serve": serve})


def _workload(args: argparse.Namespace, level: int):
    from bench.config import WorkloadConfig

    return WorkloadConfig.model_validate(
        {
            "name": "gpu-path",
            "levels": [level],
            "num_requests": max(args.requests, 4 * level),
            "warmup_requests": max(8, level),
            "prompt_tokens": {"mean": args.prompt_tokens},
            "output_tokens": {"mean": args.output_tokens},
        }
    )


def _billing(server, parameters: int | None):
    from bench.config import HardwareConfig
    from bench.cost import billing_for, load_price_table

    prices = load_price_table(REPO / "configs/prices.yaml")
    hardware = HardwareConfig(device_type="H100-80GB")
    return billing_for(hardware, prices, server.hardware.gpu_type, server.hardware.gpu_count, parameters)


def measure(servers: dict, args: argparse.Namespace) -> list[dict]:
    from bench.loadgen import run_level, summarize
    from bench.worker import prompt_space

    spaces = {name: prompt_space(server.model) for name, server in servers.items()}
    billings = {name: _billing(server, None) for name, server in servers.items()}
    order_rng = random.Random(args.seed)
    rows = []
    for repeat in range(args.repeats):
        for level in args.levels:
            workload = _workload(args, level)
            order = list(servers)
            order_rng.shuffle(order)
            for name in order:
                server = servers[name]
                root = server.base_url.removesuffix("/v1")
                run = asyncio.run(
                    run_level(root, name, workload, level, spaces[name], seed=repeat, gpu_indices=args.gpu_indices)
                )
                summary = summarize(workload, run, billings[name])
                row = {"repeat": repeat, "model": name, **asdict(summary)}
                rows.append(row)
                energy = "-" if summary.energy_j is None else f"{summary.energy_j:8.1f} J"
                jpt = "-" if summary.j_per_output_token is None else f"{summary.j_per_output_token * 1e3:7.2f} mJ/tok"
                print(
                    f"r{repeat} c={level:<3} {name:<11} {summary.output_tokens_per_s:9.1f} tok/s "
                    f"TPOT p50 {1e3 * (summary.tpot_p50_s or 0):6.2f} ms  {energy}  {jpt}  "
                    f"failed {summary.requests_failed}",
                    flush=True,
                )
    return rows


def ratios(rows: list[dict], student: str, teacher: str, field: str) -> dict[int, list[float]]:
    """Per level, the per-repeat student/teacher ratio of one summary field."""
    found: dict[int, list[float]] = {}
    for level in sorted({row["level"] for row in rows}):
        by_repeat = {(r["repeat"], r["model"]): r[field] for r in rows if r["level"] == level}
        values = [
            by_repeat[(rep, student)] / by_repeat[(rep, teacher)]
            for rep in sorted({rep for rep, _ in by_repeat})
            if by_repeat.get((rep, student)) and by_repeat.get((rep, teacher))
        ]
        found[int(level)] = values
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64, help="timed requests per level (at least 4 x level)")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--gpu-indices", type=int, nargs="*", default=[0], help="NVML indices for energy")
    parser.add_argument("--server-arg", action="append", default=[], help="extra vLLM argument (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from bench.serve import VllmServer

    with tempfile.TemporaryDirectory(prefix="gpu-path-") as tmp:
        servers = {
            name: VllmServer(_model(name, source, args), seed=0, log_path=Path(tmp) / f"{name}.log")
            for name, source in MODELS.items()
        }
        try:
            for name, server in servers.items():
                print(f"starting {name}: {' '.join(server.command)}", flush=True)
                server.start()
                record = server.provenance("H100-80GB")
                print(f"  up: {record.engine} {record.engine_version} on {record.gpu_type} x{record.gpu_count}")
            rows = measure(servers, args)
        except BaseException:
            for path in sorted(Path(tmp).glob("*.log")):
                print(f"--- {path.name} ---", *path.read_text(errors="replace").splitlines()[-40:], sep="\n")
            raise
        finally:
            for server in servers.values():
                server.stop()

    print("\nstudent-kd / teacher, per level: median (range) over repeats")
    summary = {}
    for field in ("output_tokens_per_s", "j_per_output_token", "usd_per_mtok_output"):
        per_level = ratios(rows, "student-kd", "teacher", field)
        summary[field] = per_level
        for level, values in per_level.items():
            if values:
                print(
                    f"  {field:<22} c={level:<3} {statistics.median(values):6.3f} "
                    f"({min(values):.3f}-{max(values):.3f}) n={len(values)}"
                )
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "ratios": summary, "argv": sys.argv}, indent=1, default=str))


if __name__ == "__main__":
    main()
