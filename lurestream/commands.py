"""Operator commands: ``tail`` a stream in the terminal, ``publish`` one envelope, ``mint-token`` (dev).

Each returns an exit status: 0 done, 1 the other side failed (unreachable, refused), 2 bad input.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from lurestream.config import Config
from lurestream.envelope import encode_envelope
from lurestream.redact import redact


# -- tail ------------------------------------------------------------------------------------------
@dataclass
class Frame:
    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None


@dataclass
class FrameParser:
    """Incremental SSE parser: feed it bytes, get complete frames."""

    buffer: str = ""
    pending: list[Frame] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[Frame]:
        self.buffer += chunk.decode("utf-8", "replace")
        frames = []
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            frames.append(parse_frame(block))
        return frames


def parse_frame(block: str) -> Frame:
    frame = Frame()
    data: list[str] = []
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            frame.event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            frame.id = value
        elif name == "retry" and value.isdigit():
            frame.retry = int(value)
    frame.data = "\n".join(data) if data else None
    return frame


def describe(frame: Frame) -> str:
    """One terminal line for a frame with data."""
    stamp = time.strftime("%H:%M:%S")
    ident = f" #{frame.id}" if frame.id else ""
    try:
        data = json.loads(frame.data or "null")
    except ValueError:
        data = frame.data
    if frame.event == "snapshot" and isinstance(data, dict):
        parts = [f"{len(v)} {k}" for k, v in data.items() if isinstance(v, list)]
        parts += [f"{k}={v}" for k, v in data.items() if isinstance(v, (str, int, float, bool)) and v is not None]
        summary = ", ".join(parts)
    elif isinstance(data, dict) and "payload" in data:
        summary = json.dumps(data["payload"], separators=(",", ":"), ensure_ascii=False)
    else:
        summary = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{stamp}{ident:>8}  {frame.event or 'message':<28} {summary}"


@dataclass
class TailState:
    last_id: str | None = None
    retry: float = 2.0  # seconds; the server's retry: hint replaces it
    events: int = 0


async def tail(
    base_url: str,
    kind: str,
    resource_id: str,
    token: str,
    out: TextIO = sys.stdout,
    max_events: int = 0,
    connect_timeout: float = 10.0,
) -> int:
    """Follow a stream, printing each frame; reconnects with Last-Event-ID until interrupted."""
    path = "attackers" if kind == "attacker" else "topologies"
    url = f"{base_url.rstrip('/')}/api/v1/{path}/{resource_id}/events"
    state = TailState()
    done = asyncio.Event()
    client = AsyncHTTPClient()

    def on_frame(frame: Frame) -> None:
        if frame.id is not None:
            state.last_id = frame.id
        if frame.retry is not None:
            state.retry = frame.retry / 1000
        if frame.data is None:
            return
        print(describe(frame), file=out, flush=True)
        if frame.event not in ("snapshot", "resumed"):
            state.events += 1
            if max_events and state.events >= max_events:
                done.set()

    attempt = 0
    while not done.is_set():
        parser = FrameParser()
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if state.last_id is not None:
            headers["Last-Event-ID"] = state.last_id
        request = HTTPRequest(
            url,
            headers=headers,
            request_timeout=0,  # a stream has no end
            connect_timeout=connect_timeout,
            streaming_callback=_feeder(parser, on_frame),
        )
        fetch: asyncio.Future[Any] = asyncio.ensure_future(client.fetch(request, raise_error=True))
        stop: asyncio.Future[Any] = asyncio.ensure_future(done.wait())
        await asyncio.wait([fetch, stop], return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            fetch.cancel()
            break
        stop.cancel()
        try:
            fetch.result()
            note = "stream ended by the server"
        except HTTPClientError as exc:
            if exc.code in (401, 403, 404, 429):
                detail = _detail(exc, parser.buffer)
                print(f"lurestream tail: {exc.code} {detail}", file=sys.stderr)
                return 1
            note = f"HTTP {exc.code}"
        except Exception as exc:  # unreachable, reset: keep trying, like EventSource
            note = f"{type(exc).__name__}: {exc}"
        attempt += 1
        delay = min(state.retry * (0.5 + random.random()) * min(attempt, 5), 30.0)
        print(f"-- {redact(note)}; reconnecting in {delay:.1f}s", file=out, flush=True)
        await asyncio.sleep(delay)
    return 0


def _feeder(parser: FrameParser, on_frame: Callable[[Frame], None]) -> Callable[[bytes], None]:
    def feed(chunk: bytes) -> None:
        for frame in parser.feed(chunk):
            on_frame(frame)

    return feed


def _detail(exc: HTTPClientError, streamed: str) -> str:
    """The error's JSON ``detail`` (with a streaming callback the body went to the parser)."""
    try:
        return str(json.loads(streamed)["detail"])
    except Exception:
        return exc.message or ""


# -- publish -----------------------------------------------------------------------------------------
def parse_payload(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"payload must be a JSON object, got {type(value).__name__}")
    return value


async def publish(config: Config, subject: str, payload: dict[str, Any], type_: str) -> str:
    """Publish one envelope; with JetStream on, through it (so the answer names the stream sequence)."""
    from lurestream.jetstream import connect_once

    nc = await connect_once(config.nats_url, "lurestream publish", config=config)
    try:
        body = encode_envelope(subject, payload, type_)
        if config.jetstream:
            ack = await nc.jetstream().publish(subject, body)
            return f"published to {subject} (stream {ack.stream}, sequence {ack.seq})"
        await nc.publish(subject, body)
        await nc.flush()
        return f"published to {subject}"
    finally:
        await nc.close()
