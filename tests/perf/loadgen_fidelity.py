"""Load-generator fidelity: does bench.loadgen measure the same output tokens/s as `vllm bench serve`?

Why: every cost ratio the product prints rests on the load generator's throughput numbers. This script puts
it next to vLLM's own benchmark client on ONE vLLM server (started with the product's `bench.serve.VllmServer`),
with the same prompt/output lengths (exact: ignore_eos), the same concurrency and request count, and runs the
two in interleaved order (repeat r, level i: ours first when r + i is even, else theirs first), so drift of
the machine hits both alike. It prints per-repeat output tok/s of both, the ratio ours/theirs, and the median
ratio with its range per level; `--out` writes the same as JSON.

Protocol details (each chosen so the two clients do the same work on the server):
- `vllm bench serve` runs as vLLM's own module code (`vllm.benchmarks.serve.main`, what the CLI calls) in a
  persistent worker process that imports vLLM once (the import costs ~20 s of CPU on 2 cores) and runs one
  benchmark per request line; its `--dataset-name random` prompts, `--ignore-eos`, `--temperature 0` (ours is
  greedy too), `--request-rate inf`, `--max-concurrency N`, `--num-warmups W` and `--save-result`.
- Ours is `bench.loadgen.run_level` + `summarize` in this process (token-id prompts, W warm-up requests at the
  level's concurrency), a fresh seed per repeat.
- The server runs with prefix caching off: vllm bench's random prompts repeat one pattern
  ((offset + i) mod vocab) and would hit the prefix cache where ours would not.
- Request count per level: `--requests`, else calibrated from one untimed run of ours so that a run lasts
  about `--target-s` seconds (same count for both).
- Pinning: the server to `--server-cores` (taskset; on CPU also VLLM_CPU_OMP_THREADS_BIND), both clients to
  `--client-cores` (sched_setaffinity): by default the last core for clients, the others for the server
  (2 cores: server 0, clients 1). On a GPU machine only the server/client split applies (no OMP binding).

Needs vLLM, aiohttp and transformers only (no Ray, no lm-eval), so it also runs on a GPU machine. Run on
demand, on the CPU machine under the lock (see CONTRACT):
    flock /tmp/heavy.lock .venv/bin/python tests/perf/loadgen_fidelity.py --repeats 5 --out fidelity.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the product's own modules come first

Tool = str  # "ours" | "theirs"

# The vllm bench worker: imports vLLM's benchmark module once, then runs `main` once per JSON argv line on
# stdin, answering "OK" or "ERR ..." on stdout (the benchmark's own prints go to stderr, i.e. the log).
THEIRS_WORKER = r"""
import contextlib, json, sys, traceback
from vllm.benchmarks.serve import add_cli_args, main
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
print("READY", flush=True)
for line in sys.stdin:
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            main(parser.parse_args(json.loads(line)))
        print("OK", flush=True)
    except BaseException as error:
        traceback.print_exc()
        print("ERR " + repr(error).replace("\n", " "), flush=True)
"""


@dataclass(frozen=True)
class RunResult:
    """One timed run of one client at one level."""

    tool: Tool
    level: int
    repeat: int
    requests: int
    requests_failed: int
    output_tokens: int
    duration_s: float
    output_tokens_per_s: float
    requests_per_s: float
    client_cpu_s: float  # CPU time the client process used during the run (incl. its warm-up)


def parse_cores(text: str) -> set[int]:
    """'0', '0-2', '0,3' -> a set of core ids."""
    cores: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def default_cores() -> tuple[str, str]:
    """(server, client): the last core for the clients, the rest for the server."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return "", ""
    return ",".join(map(str, available[:-1])), str(available[-1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Theirs:
    """`vllm bench serve` in a persistent worker process pinned to the client cores."""

    def __init__(self, client_cores: set[int] | None, log_path: Path):
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", THEIRS_WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, client_cores)) if client_cores else None,
        )

    def wait_ready(self) -> None:
        line = self.process.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"vllm bench worker did not start (got {line!r}); see its log {self.log.name}")

    def run(self, argv: list[str]) -> None:
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if answer != "OK":
            raise RuntimeError(f"vllm bench serve failed: {answer or 'worker exited'}; see {self.log.name}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Fidelity:
    """The server, both clients and the settings they share."""

    def __init__(self, args: argparse.Namespace, server, theirs: Theirs, prompt_space, work_dir: Path):
        self.args = args
        self.server = server
        self.theirs = theirs
        self.prompt_space = prompt_space
        self.work_dir = work_dir
        self.root_url = server.base_url.removesuffix("/v1")

    def warmup_requests(self, level: int) -> int:
        return max(level, self.args.min_warmup)

    def workload(self, level: int, requests: int):
        from bench.config import WorkloadConfig

        return WorkloadConfig.model_validate(
            {
                "name": "fidelity",
                "levels": [level],
                "num_requests": requests,
                "warmup_requests": self.warmup_requests(level),
                "prompt_tokens": {"mean": self.args.prompt_tokens},
                "output_tokens": {"mean": self.args.output_tokens},
            }
        )

    def run_ours(self, level: int, repeat: int, requests: int) -> RunResult:
        from bench.cost import Billing
        from bench.loadgen import run_level, summarize

        workload = self.workload(level, requests)
        before = time.process_time()
        level_run = asyncio.run(
            run_level(self.root_url, self.server.model.name, workload, level, self.prompt_space, seed=1000 + repeat)
        )
        cpu_s = time.process_time() - before
        summary = summarize(workload, level_run, Billing("cpu-core", None, 0, 1, None, None))
        return RunResult(
            "ours", level, repeat, requests, summary.requests_failed, summary.output_tokens_total,
            summary.duration_s, summary.output_tokens_per_s, summary.requests_per_s, cpu_s,
        )  # fmt: skip

    def run_theirs(self, level: int, repeat: int, requests: int) -> RunResult:
        name = f"theirs-c{level}-r{repeat}.json"
        argv = [
            "--backend", "vllm", "--base-url", self.root_url, "--endpoint", "/v1/completions",
            "--model", self.server.model.name, "--tokenizer", self.args.model_dir,
            "--dataset-name", "random", "--random-input-len", str(self.args.prompt_tokens),
            "--random-output-len", str(self.args.output_tokens), "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(requests), "--max-concurrency", str(level), "--request-rate", "inf",
            "--num-warmups", str(self.warmup_requests(level)), "--seed", str(1000 + repeat), "--disable-tqdm",
            "--save-result", "--result-dir", str(self.work_dir), "--result-filename", name,
        ]  # fmt: skip
        before = cpu_seconds(self.theirs.process.pid)
        self.theirs.run(argv)
        cpu_s = cpu_seconds(self.theirs.process.pid) - before
        result = json.loads((self.work_dir / name).read_text())
        return RunResult(
            "theirs", level, repeat, requests, requests - result["completed"], result["total_output_tokens"],
            result["duration"], result["output_throughput"], result["request_throughput"], cpu_s,
        )  # fmt: skip

    def run(self, tool: Tool, level: int, repeat: int, requests: int) -> RunResult:
        return (self.run_ours if tool == "ours" else self.run_theirs)(level, repeat, requests)

    def calibrate(self, level: int) -> int:
        """Requests for a run of about target_s seconds, from one untimed run of ours (also a warm-up)."""
        probe = self.run_ours(level, repeat=-1, requests=max(16, 4 * level))
        count = self.args.target_s * probe.requests_per_s
        return max(2 * level, math.ceil(count / level) * level)


def model_config(args: argparse.Namespace, gpu: bool):
    from bench.config import ModelConfig

    extra = [] if gpu else ["--enforce-eager"]
    if not args.prefix_caching:
        extra.append("--no-enable-prefix-caching")
    serve = {
        "dtype": args.dtype or ("bfloat16" if gpu else "float32"),
        "max_model_len": args.max_model_len or args.prompt_tokens + args.output_tokens,
        "extra_args": extra + args.server_arg,
    }
    return ModelConfig.model_validate({"name": "fidelity-model", "source": args.model_dir, "serve": serve})


def summarize_levels(results: list[RunResult], levels: list[int]) -> list[dict]:
    rows = []
    for level in levels:
        ours = sorted((r for r in results if r.level == level and r.tool == "ours"), key=lambda r: r.repeat)
        theirs = sorted((r for r in results if r.level == level and r.tool == "theirs"), key=lambda r: r.repeat)
        ratios = [o.output_tokens_per_s / t.output_tokens_per_s for o, t in zip(ours, theirs, strict=True)]
        rows.append(
            {
                "concurrency": level,
                "median_ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratios": ratios,
                "ours_tok_s": [o.output_tokens_per_s for o in ours],
                "theirs_tok_s": [t.output_tokens_per_s for t in theirs],
                "ours_cpu_s": [o.client_cpu_s for o in ours],
                "theirs_cpu_s": [t.client_cpu_s for t in theirs],
                "failed": sum(r.requests_failed for r in ours + theirs),
                "within_5pct": abs(statistics.median(ratios) - 1) <= 0.05,
            }
        )
    return rows


def print_report(rows: list[dict], requests: dict[int, int]) -> None:
    for row in rows:
        level = row["concurrency"]
        print(f"\nconcurrency {level}, {requests[level]} requests per run")
        print(f"  {'repeat':>6} {'ours tok/s':>11} {'theirs tok/s':>13} {'ours/theirs':>12}")
        for repeat, (o, t, r) in enumerate(zip(row["ours_tok_s"], row["theirs_tok_s"], row["ratios"], strict=True)):
            print(f"  {repeat:>6} {o:>11.1f} {t:>13.1f} {r:>12.3f}")
        verdict = "within 5 %" if row["within_5pct"] else "OFF by more than 5 %"
        print(
            f"  median ratio {row['median_ratio']:.3f} (range {row['ratio_min']:.3f}-{row['ratio_max']:.3f}), "
            f"{verdict}; failed requests {row['failed']}"
        )


def measure(args: argparse.Namespace, fidelity: Fidelity) -> tuple[list[RunResult], dict[int, int]]:
    requests = {}
    for index, level in enumerate(args.levels):
        requests[level] = args.requests[index] if args.requests else fidelity.calibrate(level)
        print(f"concurrency {level}: {requests[level]} requests per run", flush=True)
    results = []
    for repeat in range(args.repeats):
        for index, level in enumerate(args.levels):
            order = ("ours", "theirs") if (repeat + index) % 2 == 0 else ("theirs", "ours")
            for tool in order:
                result = fidelity.run(tool, level, repeat, requests[level])
                results.append(result)
                print(
                    f"repeat {repeat} c={level} {tool:>6}: {result.output_tokens_per_s:8.1f} tok/s "
                    f"{result.duration_s:6.2f} s, failed {result.requests_failed}, "
                    f"client CPU {result.client_cpu_s:.2f} s",
                    flush=True,
                )
    return results, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(REPO / "bench/toy/models/teacher"))
    parser.add_argument("--dtype", default=None, help="vLLM --dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: prompt + output tokens")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, nargs="+", help="requests per run, one per level (default: calibrated)")
    parser.add_argument("--target-s", type=float, default=6.0, help="calibrated run length in seconds")
    parser.add_argument("--min-warmup", type=int, default=4, help="warm-up requests per run: max(level, this)")
    parser.add_argument("--server-cores", default=None, help="e.g. '0' or '0-14' (default: all but the last core)")
    parser.add_argument("--client-cores", default=None, help="e.g. '1' (default: the last core)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--prefix-caching", action="store_true", help="leave vLLM's prefix caching on")
    parser.add_argument("--server-arg", action="append", default=[], help="extra vLLM server argument (repeatable)")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args()
    if args.requests and len(args.requests) != len(args.levels):
        parser.error("give one --requests value per level")

    server_default, client_default = default_cores()
    server_cores = "" if args.no_pin else (args.server_cores or server_default)
    client_cores = "" if args.no_pin else (args.client_cores or client_default)
    if client_cores:  # before anything starts threads: later threads and children inherit it
        os.sched_setaffinity(0, parse_cores(client_cores))

    import torch

    from bench.cluster import prompt_space
    from bench.serve import VllmServer

    gpu = torch.cuda.is_available()
    model = model_config(args, gpu)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no server left behind

    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        work_dir = Path(tmp)
        theirs = Theirs(parse_cores(client_cores) if client_cores else None, work_dir / "theirs.log")
        if server_cores and not gpu:  # only the server reads it (its env is taken at start)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", server_cores)
        server = VllmServer(model, seed=0, log_path=work_dir / "server.log")
        if server_cores:
            server.command = ["taskset", "-c", server_cores, *server.command]
        try:
            print("starting vLLM:", " ".join(server.command), flush=True)
            server.start()
            theirs.wait_ready()
            fidelity = Fidelity(args, server, theirs, prompt_space(model), work_dir)
            results, requests = measure(args, fidelity)
        except BaseException:
            for log in ("server.log", "theirs.log"):
                path = work_dir / log
                tail = path.read_text(errors="replace").splitlines()[-25:] if path.exists() else []
                print(f"--- {log} tail ---", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            theirs.close()
            server.stop()

    rows = summarize_levels(results, args.levels)
    print_report(rows, requests)
    if args.out:
        record = {
            "benchmark": "loadgen_fidelity",
            "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores)",
            "model_dir": args.model_dir,
            "server_command": server.command,
            "server_cores": server_cores,
            "client_cores": client_cores,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
            "repeats": args.repeats,
            "order": "repeat r, level i: ours first when r + i is even",
            "requests_per_run": {str(level): count for level, count in requests.items()},
            "levels": rows,
            "runs": [asdict(result) for result in results],
        }
        args.out.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
