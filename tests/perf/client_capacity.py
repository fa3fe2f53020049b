"""Client capacity: how many streamed requests/s can bench.loadgen drive, against `vllm bench serve`?

Why: a load generator that saturates before the server does measures itself. Against a server that costs
(almost) nothing, the requests/s a client reaches is its own ceiling. The server here is a FAKE: no model, a
minimal HTTP/1.1 server on asyncio that answers `POST /v1/completions` with a prebuilt vLLM-shaped SSE stream
of `--tokens` one-token events (each with `token_ids` when the request asks for them), a usage event and
`data: [DONE]`, written at once; plus `/v1/models`. It lives only here, never in the product.

Protocol: the fake server in its own process pinned to `--server-cores`, both clients pinned to
`--client-cores` (default: the last core for clients, the rest for the server; on 2 cores 0 and 1); at each
concurrency level, `--repeats` interleaved runs (repeat r, level i: ours first when r + i is even) with the
same request count (calibrated from one untimed run of ours to last about `--target-s`, or `--requests`);
warm-up `max(level, 4)` requests for both. The clients are tests/perf/clients.py's (vllm bench's random
prompts come from the toy tokenizer).

    flock /tmp/heavy.lock .venv/bin/python tests/perf/client_capacity.py --levels 64 256 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from clients import (
    REPO,
    Pair,
    Theirs,
    default_nice,
    measure,
    place_self,
    placed,
    print_report,
    split_cores,
    summarize_levels,
    write_record,
)

MODEL = "fake-model"


def _event(choices: list, usage: dict | None) -> bytes:
    payload = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": MODEL}
    return b"data: " + json.dumps(payload | {"choices": choices, "usage": usage}).encode() + b"\n\n"


def fake_stream(tokens: int, prompt_tokens: int, token_ids: bool) -> bytes:
    """A vLLM-shaped completion stream of `tokens` one-token events, then usage and [DONE]."""
    events = []
    for index in range(tokens):
        choice = {"index": 0, "text": " a", "logprobs": None, "stop_reason": None}
        choice["finish_reason"] = "length" if index == tokens - 1 else None
        if token_ids:
            choice["token_ids"] = [7]
        events.append(_event([choice], None))
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + tokens, "completion_tokens": tokens}
    events += [_event([], usage), b"data: [DONE]\n\n"]
    return b"".join(events)


def _http(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class FakeOpenAIServer(asyncio.Protocol):
    """Keep-alive HTTP/1.1, one prebuilt response per route; requests are only split, never parsed as JSON."""

    def __init__(self, responses: dict[str, bytes]):
        self.responses = responses
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return  # the body has not all arrived
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.transport.write(self.respond(head.split(" ", 2)[1], body))

    def respond(self, path: str, body: bytes) -> bytes:
        if path.endswith("/completions"):
            return self.responses["ids" if b"return_token_ids" in body else "text"]
        if path.endswith("/models"):
            return self.responses["models"]
        return self.responses["missing"]


def serve(port: int, tokens: int, prompt_tokens: int) -> None:
    """Run the fake server until killed; prints READY once it listens."""
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})
    responses = {
        "ids": _http("200 OK", "text/event-stream", fake_stream(tokens, prompt_tokens, token_ids=True)),
        "text": _http("200 OK", "text/event-stream", fake_stream(tokens, prompt_tokens, token_ids=False)),
        "models": _http("200 OK", "application/json", models.encode()),
        "missing": _http("404 Not Found", "text/plain", b""),
    }

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FakeOpenAIServer(responses), "127.0.0.1", port, backlog=4096)
        print("READY", flush=True)
        await server.serve_forever()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the fake server process
    parser.add_argument("--levels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="output tokens (events) per response")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, nargs="+", help="requests per run, one per level (default: calibrated)")
    parser.add_argument("--target-s", type=float, default=5.0)
    parser.add_argument("--tokenizer", default=str(REPO / "bench/toy/models/teacher"), help="for vllm bench's prompts")
    parser.add_argument("--server-cores", default=None)
    parser.add_argument("--client-cores", default=None)
    parser.add_argument("--nice", type=int, default=default_nice(), help="niceness of server and clients")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.prompt_tokens)
        return
    server_cores, client_cores = split_cores(args.server_cores, args.client_cores)
    place_self(client_cores, args.nice)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from bench.serve import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--tokens", str(args.tokens)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=placed(server_cores, args.nice),
    )
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        work_dir = Path(tmp)
        theirs = Theirs(client_cores, args.nice, work_dir / "theirs.log")
        try:
            if server.stdout.readline().strip() != "READY":
                raise RuntimeError("the fake server did not start")
            theirs.wait_ready()
            from bench.loadgen import PromptSpace

            space = PromptSpace(vocab_size=49, special_ids=frozenset({0, 1, 2}))  # the toy tokenizer's ids
            pair = Pair(f"http://127.0.0.1:{port}", MODEL, args.tokenizer, space, args.prompt_tokens, args.tokens,
                        4, theirs, work_dir)  # fmt: skip
            results, requests = measure(pair, args.levels, args.repeats, args.requests, args.target_s)
        finally:
            theirs.close()
            server.terminate()
            server.wait()
    rows = summarize_levels(results, args.levels, "requests_per_s")
    print_report(rows, requests, "req/s")
    print("\nours >= vllm bench serve (median) at every level:", all(row["median_ratio"] >= 1 for row in rows))
    if args.out:
        settings = {
            "server": "fake instant OpenAI-compatible server (tests/perf/client_capacity.py)",
            "tokens_per_response": args.tokens,
            "server_cores": sorted(server_cores),
            "client_cores": sorted(client_cores),
            "nice": args.nice,
            "repeats": args.repeats,
        }
        write_record(args.out, "client_capacity", settings, requests, rows, results)


if __name__ == "__main__":
    main()
