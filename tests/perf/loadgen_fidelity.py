"""Load-generator fidelity: does bench.loadgen measure the same output tokens/s as `vllm bench serve`?

Why: every cost ratio the product prints rests on the load generator's throughput numbers. This script puts
it next to vLLM's own benchmark client on ONE vLLM server (started with the product's `bench.serve.VllmServer`),
with the same prompt/output lengths (exact: ignore_eos), the same concurrency and request count, and runs the
two in interleaved order (repeat r, level i: ours first when r + i is even, else theirs first), so drift of
the machine hits both alike. It prints per-repeat output tok/s of both, the ratio ours/theirs, and the median
ratio with its range per level; `--out` writes the same as JSON.

Protocol details (the clients and the interleaving are tests/perf/clients.py's):
- The server runs with prefix caching off: vllm bench's random prompts repeat one pattern
  ((offset + i) mod vocab) and would hit the prefix cache where ours would not.
- Request count per level: `--requests`, else calibrated from one untimed run of ours so that a run lasts
  about `--target-s` seconds (same count for both).
- Pinning: the server to `--server-cores` (taskset; on CPU also VLLM_CPU_OMP_THREADS_BIND), both clients to
  `--client-cores` (sched_setaffinity): by default the last core for clients, the others for the server
  (2 cores: server 0, clients 1). On a GPU machine only the server/client split applies (no OMP binding).
  Server and clients run at niceness `--nice` (-10 as root), so other work on a shared machine disturbs them
  less.

Needs vLLM, aiohttp and transformers only (no Ray, no lm-eval), so it also runs on a GPU machine. Run on
demand, on the CPU machine under the lock (see CONTRACT):
    flock /tmp/heavy.lock .venv/bin/python tests/perf/loadgen_fidelity.py --repeats 5 --out fidelity.json
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from clients import (
    REPO,
    Pair,
    Theirs,
    command_prefix,
    default_nice,
    measure,
    place_self,
    print_report,
    split_cores,
    summarize_levels,
    write_record,
)


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
    parser.add_argument("--nice", type=int, default=default_nice(), help="niceness of server and clients")
    parser.add_argument("--prefix-caching", action="store_true", help="leave vLLM's prefix caching on")
    parser.add_argument("--server-arg", action="append", default=[], help="extra vLLM server argument (repeatable)")
    parser.add_argument(
        "--theirs-extra-body",
        help='JSON added to vllm bench\'s requests, e.g. \'{"min_tokens": 32, "return_token_ids": true}\' to send '
        "the server exactly what ours sends: separates the request body's cost from the client's",
    )
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args()
    if args.requests and len(args.requests) != len(args.levels):
        parser.error("give one --requests value per level")

    server_cores, client_cores = split_cores(args.server_cores, args.client_cores, pin=not args.no_pin)
    place_self(client_cores, args.nice)  # before anything starts threads: later threads and children inherit it

    import torch

    from bench.serve import VllmServer
    from bench.worker import prompt_space

    gpu = torch.cuda.is_available()
    model = model_config(args, gpu)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no server left behind

    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        work_dir = Path(tmp)
        theirs = Theirs(client_cores, args.nice, work_dir / "theirs.log")
        cores = ",".join(map(str, sorted(server_cores)))
        if cores and not gpu:  # only the server reads it (its env is taken at start)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)
        server = VllmServer(model, seed=0, log_path=work_dir / "server.log")
        server.command = command_prefix(server_cores, args.nice) + server.command
        try:
            print("starting vLLM:", " ".join(server.command), flush=True)
            server.start()
            theirs.wait_ready()
            root_url = server.base_url.removesuffix("/v1")
            pair = Pair(root_url, model.name, args.model_dir, prompt_space(model), args.prompt_tokens,
                        args.output_tokens, args.min_warmup, theirs, work_dir, args.theirs_extra_body)  # fmt: skip
            results, requests = measure(pair, args.levels, args.repeats, args.requests, args.target_s)
        except BaseException:
            for log in ("server.log", "theirs.log"):
                path = work_dir / log
                tail = path.read_text(errors="replace").splitlines()[-25:] if path.exists() else []
                print(f"--- {log} tail ---", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            theirs.close()
            server.stop()

    rows = summarize_levels(results, args.levels, "output_tokens_per_s")
    for row in rows:
        row["within_5pct"] = abs(row["median_ratio"] - 1) <= 0.05
    print_report(rows, requests, "tok/s")
    print("\nmedian ratio within 5 % at every level:", all(row["within_5pct"] for row in rows))
    if args.out:
        settings = {
            "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores)",
            "model_dir": args.model_dir,
            "server_command": server.command,
            "server_cores": sorted(server_cores),
            "client_cores": sorted(client_cores),
            "nice": args.nice,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
            "repeats": args.repeats,
            "theirs_extra_body": args.theirs_extra_body,
        }
        write_record(args.out, "loadgen_fidelity", settings, requests, rows, results)


if __name__ == "__main__":
    main()
