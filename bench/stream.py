"""One streamed completion request, timed: the client side of the load generator.

vLLM's OpenAI-compatible server streams a completion as Server-Sent Events, one whole JSON event per
`data:` line, ending with `data: [DONE]`. `stream_request` sends one request and records when each chunk
that carried tokens arrived; it never raises, so one broken request cannot abort a load level.

The body is read as it arrives (`iter_any`) and split into lines here, not line by line through aiohttp's
`readline`: that path costs about twice the client CPU per event (measured by tests/perf/client_capacity.py),
and a client that saturates measures itself. Every line of one read gets the time of that read, which is
when its bytes arrived; lines that came together are not spread over the time it took to parse them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import aiohttp

log = logging.getLogger(__name__)


@dataclass
class Trace:
    """What one streamed response looked like; times are time.perf_counter() seconds."""

    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried tokens
    tokens_seen: int = 0
    usage: dict | None = None
    done: bool = False
    error: str | None = None


MAX_LINE_BYTES = 1 << 20  # an unterminated line this long is not a completion stream


class StreamError(Exception):
    """The server answered with an error or with something that is not a completion stream."""


def _consume_line(raw: bytes, now: float, trace: Trace) -> None:
    """Apply one SSE line to the trace; each `data:` line of vLLM's stream is one whole JSON event."""
    line = raw.strip()
    if not line.startswith(b"data:"):
        return  # blank event separators, comments and other SSE fields carry nothing we measure
    data = line[len(b"data:") :].strip()
    if data == b"[DONE]":
        trace.done = True
        return
    try:
        event = json.loads(data)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        raise StreamError(f"malformed stream event: {data[:80]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("choices", []), list):
        raise StreamError(f"malformed stream event: {data[:80]!r}")
    if "error" in event:
        raise StreamError(f"error in stream: {event['error']}")
    if event.get("usage"):
        if not isinstance(event["usage"], dict):
            raise StreamError(f"malformed usage: {event['usage']!r:.80}")
        trace.usage = event["usage"]
    new_tokens, has_text = 0, False
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            raise StreamError(f"malformed stream event: {data[:80]!r}")
        new_tokens += len(choice.get("token_ids") or ())
        has_text = has_text or bool(choice.get("text"))
    if new_tokens or has_text:
        trace.chunk_times.append(now)
        trace.tokens_seen += new_tokens or 1


async def _read_stream(session: aiohttp.ClientSession, url: str, body: dict, trace: Trace) -> None:
    async with session.post(url, json=body) as response:
        if response.status != 200:
            text = await response.text(errors="replace")
            raise StreamError(f"HTTP {response.status}: {text[:300]}")
        pending = b""
        async for data in response.content.iter_any():
            now = time.perf_counter()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                _consume_line(line, now, trace)
                if trace.done:
                    return
            if len(pending) > MAX_LINE_BYTES:
                raise StreamError(f"line longer than {MAX_LINE_BYTES} bytes: {pending[:80]!r}")
        _consume_line(pending, time.perf_counter(), trace)  # a last line without its newline
        if trace.done:
            return
    raise StreamError("stream ended before [DONE]")


async def stream_request(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float) -> Trace:
    """Send one request and time its stream; every failure ends up in `trace.error`, never raised."""
    trace = Trace(start=time.perf_counter())
    try:
        async with asyncio.timeout(timeout_s):
            await _read_stream(session, url, body, trace)
    except TimeoutError:
        trace.error = f"timeout after {timeout_s:g} s"
    except StreamError as error:
        trace.error = str(error)
    except (aiohttp.ClientError, OSError, ValueError) as error:  # ValueError: e.g. a malformed URL
        trace.error = f"{type(error).__name__}: {error}"
    except Exception as error:  # one broken request must not abort the level; keep the trace for a bug report
        log.exception("unexpected error in a load-test request")
        trace.error = f"unexpected {type(error).__name__}: {error}"
    trace.end = time.perf_counter()
    return trace
