"""A FAKE inference engine for the scheduling simulation only: an OpenAI-compatible server that sleeps per token.

The scheduling simulation (tests/integration/test_scheduling.py) runs the real dispatch, Ray placement,
`ModelWorker` and lm-eval against many "GPU" servers on a 2-core machine; a real vLLM server per logical
GPU would not fit, and its speed would depend on the CPU, not on the plan. This server answers what
lm-eval's `local-completions` backend asks (`/v1/completions`, generation and echo + logprobs scoring),
`/v1/models` and `/health`, and takes a fixed time per token: one token clock per server, so a cell's
time is its tokens / `--tokens-per-s` however many requests lm-eval keeps in flight, like an engine
running at its throughput. Answers are deterministic functions of the prompt (scores mean nothing, but
they are the same on every server, which the replica tests compare).

The product never uses it: the test passes `FakeEngineWorker` (tests/fakes/fake_engine_worker.py, a
`ModelWorker` whose server runs this script) to the dispatch. Only the standard library is imported here,
so a server starts in a fraction of a second.

Run: python -m tests.fakes.fake_engine --port P --served-model-name NAME [--tokens-per-s R] [--max-model-len N]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"  # as bench.serve.HOST: the clients run next to the server


class TokenClock:
    """The engine's busy time: each request books its tokens after those already booked."""

    def __init__(self, tokens_per_s: float):
        self.seconds_per_token = 1.0 / tokens_per_s
        self.busy_until = 0.0
        self.lock = threading.Lock()

    def book(self, tokens: int) -> float:
        """Book `tokens` and return when they are done (time.monotonic)."""
        with self.lock:
            self.busy_until = max(self.busy_until, time.monotonic()) + tokens * self.seconds_per_token
            return self.busy_until


def _token_ids(prompt: object) -> list[list[int]]:
    """lm-eval sends token ids (a list of lists, or one list); text prompts count a token per character."""
    if isinstance(prompt, str):
        return [[ord(c) for c in prompt]]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return [[ord(c) for c in text] for text in prompt]
    return [list(prompt) if isinstance(prompt, list) else []]


def _choice(index: int, ids: list[int], body: dict) -> dict:
    digest = zlib.crc32(json.dumps(ids).encode())
    if body.get("echo"):  # loglikelihood scoring: a logprob for every prompt token and the one generated
        logprobs = [None] + [-1.0 - (digest % 7) / 10] * len(ids)
        top = [None] + [{"x": value} for value in logprobs[1:]]
        return {"index": index, "text": "", "logprobs": {"token_logprobs": logprobs, "top_logprobs": top}}
    return {"index": index, "text": str(digest % 1000), "finish_reason": "length"}


def make_handler(served_model: str, max_model_len: int, clock: TokenClock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return  # one line per request would flood the server log

        def _reply(self, payload: dict, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._reply({})
            elif self.path == "/v1/models":
                self._reply({"data": [{"id": served_model, "object": "model", "max_model_len": max_model_len}]})
            else:
                self._reply({"error": self.path}, status=404)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/completions":
                self._reply({"error": self.path}, status=404)
                return
            prompts = _token_ids(body.get("prompt", []))
            # Generation costs its max_tokens; scoring (echo) costs the prompt's tokens, a prefill.
            tokens = sum(len(ids) if body.get("echo") else int(body.get("max_tokens") or 16) for ids in prompts)
            time.sleep(max(0.0, clock.book(tokens) - time.monotonic()))
            choices = [_choice(index, ids, body) for index, ids in enumerate(prompts)]
            self._reply({"id": "fake", "object": "text_completion", "model": served_model, "choices": choices})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--tokens-per-s", type=float, default=1000.0, help="the engine's throughput")
    args, _ = parser.parse_known_args(argv)  # vLLM flags in a config's extra_args are not ours
    handler = make_handler(args.served_model_name, args.max_model_len, TokenClock(args.tokens_per_s))
    server = ThreadingHTTPServer((HOST, args.port), handler)
    server.daemon_threads = True
    print(f"fake engine for {args.served_model_name} on {HOST}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
