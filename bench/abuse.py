"""Abuse bench (SPEC §11, hostile input): does hostile traffic hurt a well-behaved dashboard, grow the
server's memory without a byte bound, or produce a 5xx?

    python bench/abuse.py [--quick] [--seconds 15] [--phases quiet,urls,...] [--write]
    python bench/abuse.py --url http://127.0.0.1:8700 --nats-url nats://127.0.0.1:4222 \\
        --mongo-uri mongodb://127.0.0.1:27017 --db decnet --secret ... [--pid SERVER_PID]

By default it starts its own nats-server (JetStream) and MongoDB-wire server (nx-27017), seeds users and
attackers, and runs a fresh ``lurestream serve`` (JetStream on, otherwise default settings) for each phase,
so one attack's after-effects (memory kept, a wedged loop) are not blamed on the next. With ``--url`` it
seeds the given database and uses the running server for every phase (RSS only with ``--pid``).

In every phase a well-behaved client holds one stream on a watched attacker while the bench publishes
20 events/s for it (delivery latency = arrival − the envelope's ``ts``; a dropped stream is resumed with
``Last-Event-ID``), and opens a fresh stream every 0.1 s (connect → end of the snapshot frame). The phases
run one after another, each bounded in time: quiet (the baseline), long URLs, slowloris, held bodies,
ticket flood, hoarded connections, 1 MB bus messages. The three that only a header timeout can end last at
least that timeout + 3 s, so its effect is seen even with ``--quick``.

Per phase: the well-behaved client's p50/p99 connect→snapshot and p99 delivery latency (and × quiet),
events delivered vs published, server RSS growth (end and peak; the server process and its children), 5xx
responses seen by any client (attackers included), what each attack got back, and the server's own
counters. Targets: p99 latencies ≤ 2× quiet with nothing lost, RSS peak growth ≤ 64 MB beyond the byte
bounds the phase may legitimately fill (SPEC §11 defaults, or the server config's when it has them), no 5xx.

Attackers use raw asyncio sockets so they can send what an HTTP library would refuse. Everything runs in
one asyncio process on the server's machine, so the bench's own event-loop lag is reported beside the
latencies it could inflate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import nats
from pymongo import MongoClient

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from serving import SECRET, serve  # noqa: E402

from lurestream.config import config_from  # noqa: E402
from lurestream.localservices import ServiceError, free_port, mongo_wire_server, nats_server  # noqa: E402
from lurestream.tokens import mint_token  # noqa: E402

WATCHED = "a-watched"
OTHERS = [f"a-{i}" for i in range(100)]
PROBE_USERS = [f"good-probe-{i}" for i in range(8)]  # rotated, so a slow slot release cannot 429 a probe
USERS = ["good-held", *PROBE_USERS, "url-attacker", "body-attacker", "flooder"]
STREAM_PATH = f"/api/v1/attackers/{WATCHED}/events"

EVENT_RATE = 20.0  # events/s for the watched attacker
PROBE_GAP = 0.1  # s between the well-behaved client's fresh connects
PROBE_TIMEOUT = 30.0
WARMUP = 2.0
GRACE = 5.0  # s after an attack for its phase's events to arrive
LONG_URL_WORKERS = 32
SLOWLORIS_CONNS = 500
HELD_BODY_CONNS = 200
HELD_BODY_PART = 512 * 1024
HELD_BODY_LENGTH = 90_000_000
TICKET_LOOPS = 4
HOARD_CONNS = 2000
BIG_RATE = 4.0  # 1 MB bus messages/s
BIG_BYTES = 1_000_000
BIG_FRAME = 50_000  # a frame this long is one of the big messages, not a bench event
CONNECT_CONCURRENCY = 200
# SPEC §11 defaults; a server config that has these settings overrides them
SPEC_BOUNDS = {
    "max_header_bytes": 16 * 1024,
    "max_body_bytes": 4 * 1024,
    "stream_buffer_bytes": 1 << 20,
    "replay_memory_bytes": 64 << 20,
    "max_message_bytes": 1 << 20,
    "header_timeout_seconds": 10,
}
COUNTERS = (
    "lurestream_bus_malformed_total",
    "lurestream_auth_failures_total",
    "lurestream_lagging_closes_total",
    "lurestream_send_timeouts_total",
    "lurestream_resumes_total",
)


# -- HTTP over raw sockets ------------------------------------------------------------------------------
async def connect(host: str, port: int, timeout: float = 10.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 21), timeout)


def request(method: str, target: str, headers: dict[str, str] | None = None, close: bool = False) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: bench"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives: chunked, Content-Length, or up to the close."""
    if "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
        return
    if headers.get("transfer-encoding", "").lower() != "chunked":
        while data := await reader.read(1 << 16):
            yield data
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


def status_of(data: bytes) -> int | None:
    parts = data.split(b" ", 2)
    if data.startswith(b"HTTP/") and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return None


def reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed, no response"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return type(exc).__name__


def close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except (OSError, RuntimeError):
        pass


async def one_request(host: str, port: int, raw: bytes, timeout: float = 10.0) -> int | str:
    """Send ``raw`` on a new connection; the status, or why there was none."""
    try:
        reader, writer = await connect(host, port)
    except (OSError, asyncio.TimeoutError) as exc:
        return "connect " + reason(exc)
    try:
        writer.write(raw)
        status, _headers = await asyncio.wait_for(read_head(reader), timeout)
        return status
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        return reason(exc)
    finally:
        close(writer)


# -- what everyone saw ------------------------------------------------------------------------------------
class Board:
    """The phase statuses are filed under, the measuring window (None between phases), and every HTTP
    status any client saw, by phase and source."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.window: str | None = None
        self.statuses: dict[str, dict[str, Counter[int]]] = {}

    def record(self, source: str, status: int) -> None:
        self.statuses.setdefault(self.phase, {}).setdefault(source, Counter())[status] += 1

    def fivexx(self, phase: str) -> int:
        return sum(n for c in self.statuses.get(phase, {}).values() for s, n in c.items() if s >= 500)


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


class RssSampler:
    """VmRSS of the server process and its children, every 0.25 s; their CPU time when asked."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []

    def sample(self) -> int | None:
        if self.pid is None:
            return None
        kb = rss_kb(process_tree(self.pid))
        self.samples.append((time.monotonic(), kb))
        return kb

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.25)

    def cpu(self) -> float | None:
        return None if self.pid is None else cpu_seconds(process_tree(self.pid))

    def peak(self, since: float) -> int | None:
        values = [kb for t, kb in self.samples if t >= since]
        return max(values) if values else None


class LoopLag:
    """How late this process's own event loop wakes up: what it adds to every latency it measures."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.samples: dict[str, list[float]] = {}

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.05)
            lag = (time.monotonic() - started - 0.05) * 1000
            if self.board.window:
                self.samples.setdefault(self.board.window, []).append(lag)

    def summary(self, window: str) -> tuple[float, float] | None:
        samples = self.samples.get(window)
        return None if not samples else (percentile(samples, 0.99) or 0.0, max(samples))


class Publisher:
    """EVENT_RATE small events/s for the watched attacker, each tagged with a sequence number; remembers
    which measuring window each was published in."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.sent: dict[int, str | None] = {}
        self.at: dict[int, float] = {}  # seq → time.monotonic() at publish

    async def run(self, nats_url: str) -> None:
        nc = await nats.connect(nats_url)
        started, seq = time.monotonic(), 0
        try:
            while True:
                seq += 1
                payload = {"attacker_uuid": WATCHED, "bench_seq": seq}
                body = {"v": 1, "id": f"bench-{seq}", "type": "score", "ts": time.time(), "payload": payload}
                self.sent[seq], self.at[seq] = self.board.window, time.monotonic()
                await nc.publish("attacker.scored", json.dumps(body).encode())
                await nc.flush(timeout=10)
                await asyncio.sleep(max(started + seq / EVENT_RATE - time.monotonic(), 0))
        finally:
            await asyncio.wait_for(nc.close(), 10)

    def in_window(self, name: str) -> list[int]:
        return [seq for seq, window in self.sent.items() if window == name]


# -- the well-behaved client -------------------------------------------------------------------------------
def classify_big(data: str) -> str:
    """What one of the 1 MB bus messages looked like when it reached the well-behaved stream, found with
    string searches (parsing 1 MB here would stall the loop that times the well-behaved client)."""
    if "[[[[[[[[" in data:
        return "nested deeper than 64"
    if "NaN" in data or "Infinity" in data:
        return "non-strict JSON (NaN/Infinity)"
    kind = data.partition('"big":"')[2].partition('"')[0]
    return kind or "?"


def parse_frame(raw: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    data = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _sep, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    if data:
        fields["data"] = "\n".join(data)
    return fields


class SseParser:
    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[dict[str, str]]:
        self.buf += data
        frames = []
        while (end := self.buf.find(b"\n\n")) >= 0:
            frames.append(parse_frame(self.buf[:end]))
            self.buf = self.buf[end + 2 :]
        return frames


class HeldStream:
    """One stream on the watched attacker, held through the phase; resumed with Last-Event-ID if it drops."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.arrivals: dict[int, float] = {}  # bench_seq → delivery latency ms
        self.big: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.last_id: str | None = None
        self.up = asyncio.Event()

    async def run_forever(self) -> None:
        while True:
            self.drops[await self._once()] += 1
            await asyncio.sleep(0.5)

    async def _once(self) -> str:
        headers = {"Authorization": f"Bearer {self.run.tokens['good-held']}"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        try:
            reader, writer = await connect(self.run.host, self.run.port)
        except (OSError, asyncio.TimeoutError) as exc:
            return "connect " + reason(exc)
        try:
            writer.write(request("GET", STREAM_PATH, headers))
            status, head = await asyncio.wait_for(read_head(reader), PROBE_TIMEOUT)
            self.run.board.record("well-behaved stream", status)
            if status != 200:
                return f"status {status}"
            parser = SseParser()
            async for chunk in body_chunks(reader, head):
                now = time.time()
                for frame in parser.feed(chunk):
                    self._on_frame(frame, now)
            return "ended by the server"
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            return reason(e)
        finally:
            close(writer)

    def _on_frame(self, frame: dict[str, str], now: float) -> None:
        if "id" in frame:
            self.last_id = frame["id"]
        if frame.get("event") in ("snapshot", "resumed"):
            self.up.set()
            return
        data = frame.get("data")
        if not data:
            return
        if len(data) > BIG_FRAME:
            self.big[classify_big(data)] += 1
            return
        try:
            obj = json.loads(data)
            payload = obj["payload"]
            if isinstance(payload, dict) and "bench_seq" in payload:
                self.arrivals.setdefault(int(payload["bench_seq"]), (now - float(obj["ts"])) * 1000)
        except (ValueError, KeyError, TypeError):
            self.big["unparseable small frame"] += 1


class Prober:
    """A fresh stream every PROBE_GAP s: connect → the end of the snapshot frame, then close."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.results: list[tuple[str, float, str]] = []  # (window, ms, outcome)
        self.pending: dict[int, tuple[str, float]] = {}
        self.heads: dict[str, list[float]] = {}  # window → connect → response head, ms

    async def run_forever(self) -> None:
        n = 0
        while True:
            n += 1
            window, started = self.run.board.window, time.perf_counter()
            if window:
                self.pending[n] = (window, started)
            try:
                probe = self._probe(PROBE_USERS[n % len(PROBE_USERS)], window, started)
                outcome = await asyncio.wait_for(probe, PROBE_TIMEOUT)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                outcome = reason(exc)
            except ValueError as exc:
                outcome = f"bad response: {exc}"[:80]
            self.pending.pop(n, None)
            if window:
                self.results.append((window, (time.perf_counter() - started) * 1000, outcome))
            await asyncio.sleep(PROBE_GAP)

    async def _probe(self, user: str, window: str | None, started: float) -> str:
        reader, writer = await connect(self.run.host, self.run.port)
        try:
            writer.write(request("GET", STREAM_PATH, {"Authorization": f"Bearer {self.run.tokens[user]}"}))
            status, headers = await read_head(reader)
            if window:
                self.heads.setdefault(window, []).append((time.perf_counter() - started) * 1000)
            self.run.board.record("well-behaved probes", status)
            if status != 200:
                return f"status {status}"
            seen = b""
            async for chunk in body_chunks(reader, headers):
                seen += chunk
                if b"\n\n" in seen.partition(b"event: snapshot")[2]:
                    return "ok"
            return "ended before the snapshot"
        finally:
            close(writer)

    async def settle(self, name: str) -> None:
        """Let the probes started in window ``name`` finish (each is bounded by PROBE_TIMEOUT)."""
        deadline = time.monotonic() + PROBE_TIMEOUT + 1
        while time.monotonic() < deadline and any(w == name for w, _started in self.pending.values()):
            await asyncio.sleep(0.05)

    def for_phase(self, name: str) -> tuple[list[float], Counter[str]]:
        """Latencies (timeouts and probes still waiting count with their elapsed time, a lower bound) and
        failures for one window."""
        latencies = [ms for w, ms, o in self.results if w == name and o in ("ok", "timeout")]
        failures = Counter(o for w, _ms, o in self.results if w == name and o != "ok")
        now = time.perf_counter()
        for window, started in self.pending.values():
            if window == name:
                latencies.append((now - started) * 1000)
                failures["still waiting at the end"] += 1
        return latencies, failures


# -- attacks ----------------------------------------------------------------------------------------------
def fmt_counter(counter: Counter[Any]) -> str:
    return ", ".join(f"{key} ×{n}" for key, n in counter.most_common()) or "nothing"


@dataclass
class ConnStats:
    """What a crowd of held connections saw."""

    wanted: int
    opened: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    closed_after: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{self.opened}/{self.wanted} opened"]
        if self.failed:
            parts.append("connect failed: " + fmt_counter(self.failed))
        if self.closed_after:
            parts.append(
                f"server ended {len(self.closed_after)} (median {statistics.median(self.closed_after):.1f} s, "
                f"max {max(self.closed_after):.1f} s after open; answers: {fmt_counter(self.answers)})"
            )
        parts.append(f"{self.opened - len(self.closed_after)} still open when the phase ended")
        return "; ".join(parts)


def answer_of(watcher: asyncio.Future[bytes]) -> tuple[str, int | None]:
    exc = watcher.exception()
    if exc is not None:
        return reason(exc), None
    data = watcher.result()
    status = status_of(data)
    if status is not None:
        return str(status), status
    return ("closed, no response" if not data else "non-HTTP bytes"), None


async def hold_connection(
    run: Run,
    stats: ConnStats,
    source: str,
    plan: tuple[bytes, bytes | None],
    stop: asyncio.Event,
    stopper: asyncio.Future[Any],
    sem: asyncio.Semaphore,
) -> None:
    """Open, send ``first``, then ``drip`` every second, until the server answers or closes, or ``stop``."""
    first, drip = plan
    async with sem:
        try:
            reader, writer = await connect(run.host, run.port)
        except (OSError, asyncio.TimeoutError) as exc:
            stats.failed[reason(exc)] += 1
            return
    stats.opened += 1
    opened = time.monotonic()
    watcher = asyncio.ensure_future(reader.read(1 << 16))
    try:
        if first:
            writer.write(first)
        while not watcher.done() and not stop.is_set():
            interval = 1.0 + random.random() * 0.1 if drip else None  # a silent connection needs no wake-ups
            await asyncio.wait({watcher, stopper}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            if drip and not watcher.done() and not writer.transport.is_closing():
                writer.write(drip)
        if watcher.done():
            stats.closed_after.append(time.monotonic() - opened)
            answer, status = answer_of(watcher)
            stats.answers[answer] += 1
            if status is not None:
                run.board.record(source, status)
    finally:
        watcher.cancel()
        close(writer)


async def crowd(
    run: Run, stats: ConnStats, source: str, plans: list[tuple[bytes, bytes | None]], stop: asyncio.Event
) -> None:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.gather(*(hold_connection(run, stats, source, plan, stop, stopper, sem) for plan in plans))
    finally:
        stopper.cancel()


async def attack_slowloris(run: Run, stop: asyncio.Event) -> str:
    """SLOWLORIS_CONNS connections sending request headers a byte a second, never finishing them."""
    heads = [
        b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ",
        f"GET {STREAM_PATH} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer ".encode(),
        b"POST /api/v1/auth/sse-ticket HTTP/1.1\r\nHost: bench\r\nX-Slow: ",
    ]
    stats = ConnStats(SLOWLORIS_CONNS)
    plans: list[tuple[bytes, bytes | None]] = [(heads[i % len(heads)], b"a") for i in range(SLOWLORIS_CONNS)]
    await crowd(run, stats, "slowloris", plans, stop)
    return stats.summary()


async def attack_hoard(run: Run, stop: asyncio.Event) -> str:
    """HOARD_CONNS connections that send nothing at all."""
    stats = ConnStats(HOARD_CONNS)
    await crowd(run, stats, "hoard", [(b"", None)] * HOARD_CONNS, stop)
    return stats.summary()


def held_body_plans(run: Run) -> list[tuple[bytes, bytes | None]]:
    length = {"Content-Length": str(HELD_BODY_LENGTH), "Content-Type": "application/json"}
    bearer = {"Authorization": f"Bearer {run.tokens['body-attacker']}", **length}
    heads = [
        request("POST", "/api/v1/auth/sse-ticket", bearer),
        request("POST", "/api/v1/auth/sse-ticket", length),
        request("GET", "/healthz", length),
    ]
    part = b"x" * HELD_BODY_PART
    return [(heads[i % len(heads)] + part, None) for i in range(HELD_BODY_CONNS)]


async def attack_held_bodies(run: Run, stop: asyncio.Event) -> str:
    """Requests announcing a 90 MB body, sending HELD_BODY_PART of it, then waiting."""
    stats = ConnStats(HELD_BODY_CONNS)
    await crowd(run, stats, "held bodies", held_body_plans(run), stop)
    return f"{HELD_BODY_PART // 1024} KiB of {HELD_BODY_LENGTH / 1e6:.0f} MB sent each: " + stats.summary()


@dataclass
class RequestStats:
    """Answers and response times by kind of request."""

    answers: dict[str, Counter[str]] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, kind: str, answer: int | str, seconds: float) -> None:
        self.answers.setdefault(kind, Counter())[str(answer)] += 1
        self.times.append(seconds * 1000)

    def summary(self) -> str:
        total = len(self.times)
        rate = total / max(time.monotonic() - self.started, 1e-9)
        p99 = percentile(self.times, 0.99)
        head = f"{total} requests ({rate:.0f}/s, p99 answer {fmt_ms(p99)} ms)"
        return head + "; " + "; ".join(f"{kind}: {fmt_counter(c)}" for kind, c in self.answers.items())


def long_url_requests(run: Run) -> list[tuple[str, bytes]]:
    token = run.tokens["url-attacker"]
    bearer = {"Authorization": f"Bearer {token}"}
    long_id = "x" * 60_000
    return [
        ("/healthz?q=50 KB", request("GET", "/healthz?q=" + "a" * 50_000, close=True)),
        ("60 KB id, no credentials", request("GET", f"/api/v1/attackers/{long_id}/events", close=True)),
        ("60 KB id, Bearer", request("GET", f"/api/v1/attackers/{long_id}/events", bearer, close=True)),
        (
            "?token= + 40 KB of %74oken=",
            request("GET", f"/api/v1/attackers/a-nope/events?token={token}&" + "%74oken=x&" * 4_000, close=True),
        ),
        ("/healthz? + 48 KB of token=", request("GET", "/healthz?" + "token=" * 8_000, close=True)),
    ]


async def url_worker(
    run: Run, kinds: list[tuple[str, bytes]], offset: int, stop: asyncio.Event, stats: RequestStats
) -> None:
    n = offset
    while not stop.is_set():
        kind, raw = kinds[n % len(kinds)]
        n += 1
        started = time.monotonic()
        answer = await one_request(run.host, run.port, raw)
        stats.add(kind, answer, time.monotonic() - started)
        if isinstance(answer, int):
            run.board.record("long URLs", answer)


async def attack_long_urls(run: Run, stop: asyncio.Event) -> str:
    """LONG_URL_WORKERS loops sending 40-60 KB request targets, with and without credentials."""
    stats, kinds = RequestStats(), long_url_requests(run)
    await asyncio.gather(*(url_worker(run, kinds, i, stop, stats) for i in range(LONG_URL_WORKERS)))
    return stats.summary()


async def ticket_loop(run: Run, stop: asyncio.Event, stats: RequestStats, retry_after: Counter[str]) -> None:
    raw = request(
        "POST", "/api/v1/auth/sse-ticket", {"Authorization": f"Bearer {run.tokens['flooder']}", "Content-Length": "0"}
    )
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader, writer = await connect(run.host, run.port)
        except (OSError, asyncio.TimeoutError) as exc:
            stats.add("mint", "connect " + reason(exc), time.monotonic() - started)
            await asyncio.sleep(0.1)
            continue
        try:
            while not stop.is_set():
                started = time.monotonic()
                writer.write(raw)
                status, headers = await asyncio.wait_for(read_head(reader), 10)
                await reader.readexactly(int(headers.get("content-length", "0")))
                stats.add("mint", status, time.monotonic() - started)
                run.board.record("ticket flood", status)
                if status == 429:
                    retry_after["with Retry-After" if "retry-after" in headers else "without Retry-After"] += 1
                if headers.get("connection", "").lower() == "close":
                    break
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            stats.add("mint", reason(exc), time.monotonic() - started)
        finally:
            close(writer)


async def attack_ticket_flood(run: Run, stop: asyncio.Event) -> str:
    """One viewer minting tickets as fast as TICKET_LOOPS keep-alive loops can."""
    stats, retry_after = RequestStats(), Counter[str]()
    await asyncio.gather(*(ticket_loop(run, stop, stats, retry_after) for _ in range(TICKET_LOOPS)))
    extra = f"; 429s: {fmt_counter(retry_after)}" if retry_after else ""
    return stats.summary() + extra


def big_bodies(limit: int) -> list[tuple[str, Callable[[], bytes]]]:
    """~1 MB bus bodies: a valid one for the watched attacker and for another, nesting far deeper than 64,
    NaN/Infinity, and bytes that are not JSON. Each gets a fresh ``ts`` when published."""
    size = min(BIG_BYTES, limit - 4096)
    item = '{"k":"observation","v":"0123456789abcdef"}'
    items = ",".join([item] * (size // (len(item) + 1)))
    depth = (size - 200) // 2
    nans = ",".join(["NaN", "Infinity", "-Infinity"] * (size // 30))

    def envelope(payload: str) -> Callable[[], bytes]:
        return lambda: f'{{"v":1,"id":"big","type":"big","ts":{time.time()},"payload":{payload}}}'.encode()

    garbage = b'{"v":1,"payload":{"attacker_uuid":"' + WATCHED.encode() + b'","x":"' + b"\xff\xfe{[" * (size // 4)
    return [
        ("valid, watched", envelope(f'{{"attacker_uuid":"{WATCHED}","big":"items","items":[{items}]}}')),
        ("valid, other attacker", envelope(f'{{"attacker_uuid":"{OTHERS[1]}","big":"items","items":[{items}]}}')),
        (
            "nested deep, watched",
            envelope(f'{{"attacker_uuid":"{WATCHED}","big":"deep","x":{"[" * depth}{"]" * depth}}}'),
        ),
        ("NaN/Infinity, watched", envelope(f'{{"attacker_uuid":"{WATCHED}","big":"nan","items":[{nans}]}}')),
        ("not JSON", lambda: garbage),
    ]


async def attack_big_messages(run: Run, stop: asyncio.Event) -> str:
    """BIG_RATE ~1 MB messages/s on attacker subjects, cycling through ``big_bodies``."""
    nc = await nats.connect(run.nats_url)
    bodies = big_bodies(nc.max_payload)
    sent: Counter[str] = Counter()
    started, n = time.monotonic(), 0
    try:
        while not stop.is_set():
            kind, build = bodies[n % len(bodies)]
            n += 1
            await nc.publish("attacker.observation.big", build())
            await nc.flush(timeout=10)
            sent[kind] += 1
            await asyncio.sleep(max(started + n / BIG_RATE - time.monotonic(), 0))
    finally:
        await asyncio.wait_for(nc.close(), 10)
    size = len(bodies[0][1]()) / 1e6
    return f"published {sum(sent.values())} of ~{size:.2f} MB: {fmt_counter(sent)}"


# -- phases ---------------------------------------------------------------------------------------------
Attack = Callable[["Run", asyncio.Event], Awaitable[str]]


@dataclass(frozen=True)
class Phase:
    key: str
    name: str
    attack: Attack | None
    needs_header_timeout: bool = False


PHASES = [
    Phase("quiet", "quiet", None),
    Phase("urls", "long URLs", attack_long_urls),
    Phase("slowloris", "slowloris", attack_slowloris, needs_header_timeout=True),
    Phase("bodies", "held bodies", attack_held_bodies, needs_header_timeout=True),
    Phase("tickets", "ticket flood", attack_ticket_flood),
    Phase("hoard", "hoarded connections", attack_hoard, needs_header_timeout=True),
    Phase("bus", "1 MB bus messages", attack_big_messages),
]
ATTACK_TEXT = {
    "quiet": "none (baseline)",
    "urls": f"{LONG_URL_WORKERS} loops: 50-60 KB /healthz queries and stream ids, with and without credentials",
    "slowloris": f"{SLOWLORIS_CONNS} connections sending headers a byte a second",
    "bodies": f"{HELD_BODY_CONNS} requests announcing {HELD_BODY_LENGTH / 1e6:.0f} MB, sending "
    f"{HELD_BODY_PART // 1024} KiB, then waiting (ticket POST with/without Bearer, GET /healthz)",
    "tickets": f"one viewer, {TICKET_LOOPS} keep-alive loops POSTing /api/v1/auth/sse-ticket",
    "hoard": f"{HOARD_CONNS} connections that send nothing",
    "bus": f"{BIG_RATE:.0f} × ~1 MB messages/s on attacker.observation.big (watched attacker and others)",
}


def allowance_mb(key: str, bounds: dict[str, float]) -> float:
    """64 MB plus the byte bounds the phase may legitimately fill (two streams' buffers in every phase)."""
    extra = {
        "urls": LONG_URL_WORKERS * bounds["max_header_bytes"],
        "slowloris": SLOWLORIS_CONNS * bounds["max_header_bytes"],
        "bodies": HELD_BODY_CONNS * (bounds["max_header_bytes"] + bounds["max_body_bytes"]),
        "bus": bounds["replay_memory_bytes"] + 2 * bounds["max_message_bytes"],
    }.get(key, 0.0)
    return 64 + (2 * bounds["stream_buffer_bytes"] + extra) / 2**20


@dataclass
class PhaseResult:
    phase: Phase
    seconds: float
    connect_ms: list[float]
    head_ms: list[float]
    probe_failures: Counter[str]
    delivery_ms: list[float]
    published: int
    delivered: int
    rss_start_kb: int | None
    rss_end_kb: int | None
    rss_peak_kb: int | None
    allowed_mb: float
    fivexx: int
    statuses: dict[str, Counter[int]]
    loop_lag_ms: tuple[float, float] | None  # p99, max
    outcome: str
    server: str
    stream_drops: Counter[str]
    log_lines: list[str]
    log_bytes: int
    cpu_percent: float | None  # the server's, of one core
    bench_cpu_percent: float
    slowest: tuple[float, float] | None  # (delivery ms, published this many s into the phase)


@dataclass
class Run:
    """Where the server is, who may call it, and the state shared by every phase."""

    args: argparse.Namespace
    host: str
    port: int
    nats_url: str
    mongo_uri: str
    db: str
    tokens: dict[str, str]
    work: str
    bounds: dict[str, float]
    board: Board = field(default_factory=Board)
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    log_path: str | None = None
    skipped: list[str] = field(default_factory=list)

    async def start_server(self, phase: Phase) -> None:
        if self.args.url:
            return
        self.port = free_port()
        self.log_path = os.path.join(self.work, f"lurestream-{phase.key}.log")
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.to_thread(
                serve, self.port, self.nats_url, self.mongo_uri, self.db, log, jetstream="abuse", drain_seconds=0
            )
        self.pid = self.proc.pid
        await asyncio.sleep(1.0)

    async def stop_server(self) -> str:
        """Stop the per-phase server; how it was doing before it was asked to stop."""
        if self.args.url:
            return "alive" if await one_request(self.host, self.port, request("GET", "/healthz"), 5) == 200 else "down"
        proc, self.proc = self.proc, None
        if proc is None:
            return "not started"
        state = "alive" if proc.poll() is None else f"exited {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)
            state += ", did not stop on SIGTERM within 15 s"
        return state


async def fetch(run: Run, path: str) -> bytes:
    reader, writer = await connect(run.host, run.port, 5)
    try:
        writer.write(request("GET", path, close=True))
        status, headers = await read_head(reader)
        return b"".join([c async for c in body_chunks(reader, headers)]) if status == 200 else b""
    finally:
        close(writer)


async def scrape_counters(run: Run) -> dict[str, float]:
    """The server's COUNTERS (labels summed), or {} when /metrics does not answer within 5 s."""
    try:
        body = await asyncio.wait_for(fetch(run, "/metrics"), 5)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return {}
    totals: dict[str, float] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in COUNTERS:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def counter_changes(before: dict[str, float], after: dict[str, float]) -> str:
    changes = [
        f"{name.removeprefix('lurestream_')} +{after[name] - before.get(name, 0):.0f}"
        for name in COUNTERS
        if name in after and after[name] - before.get(name, 0) > 0
    ]
    return ", ".join(changes)


def log_problems(path: str | None) -> list[str]:
    """Distinct warning, error and traceback lines in the phase's server log, without their timestamps,
    cut to 160 characters, with how often each came."""
    if path is None or not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        lines = fh.read().decode("utf-8", "replace").splitlines()
    seen: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            ending = next((ln for ln in lines[i + 1 :] if ln and not ln[0].isspace()), "?")
            seen[f"Traceback … {ending}"[:200]] += 1
        elif any(word in line for word in ("WARNING", "ERROR", "CRITICAL")):
            message = line[line.find(" ", 11) + 1 :] if line[:2].isdigit() else line  # without the timestamp
            seen[re.sub(r"\d+\.\d+ms", "…ms", message)[:200]] += 1
    return [f"{line} (×{n})" if n > 1 else line for line, n in seen.most_common()]


def phase_seconds(phase: Phase, run: Run) -> float:
    seconds = float(run.args.seconds)
    if phase.needs_header_timeout:
        seconds = max(seconds, run.bounds["header_timeout_seconds"] + 3)
    return seconds


async def finish(task: asyncio.Task[str] | None, limit: float) -> str:
    if task is None:
        return ""
    try:
        return await asyncio.wait_for(task, limit)
    except asyncio.TimeoutError:
        return f"attack did not wind down within {limit:.0f} s (cancelled)"
    except Exception as exc:  # an attack that breaks is an outcome to report, not a reason to stop the bench
        return f"attack failed: {type(exc).__name__}: {exc}"[:200]


async def wait_delivered(publisher: Publisher, held: HeldStream, name: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    wanted = publisher.in_window(name)
    while time.monotonic() < deadline and any(seq not in held.arrivals for seq in wanted):
        await asyncio.sleep(0.1)


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=10)


async def run_phase(run: Run, phase: Phase, publisher: Publisher, lag: LoopLag) -> PhaseResult:
    await run.start_server(phase)
    run.board.phase, seconds = phase.name, phase_seconds(phase, run)
    held, prober, sampler = HeldStream(run), Prober(run), RssSampler(run.pid)
    tasks = [asyncio.create_task(c) for c in (held.run_forever(), prober.run_forever(), sampler.run())]
    attack: asyncio.Task[str] | None = None
    try:
        try:
            await asyncio.wait_for(held.up.wait(), 15)
        except asyncio.TimeoutError:
            print(f"  {phase.name}: the held stream got no snapshot within 15 s", file=sys.stderr)
        await asyncio.sleep(WARMUP)
        counters = await scrape_counters(run)
        rss_start, cpu_start, started = sampler.sample(), sampler.cpu(), time.monotonic()
        bench_start = own_cpu()
        run.board.window = phase.name
        stop = asyncio.Event()
        attack = asyncio.create_task(phase.attack(run, stop)) if phase.attack else None
        await asyncio.sleep(seconds)
        run.board.window = None
        cpu_end, bench_end = sampler.cpu(), own_cpu()
        stop.set()
        outcome = await finish(attack, 20)
        await wait_delivered(publisher, held, phase.name, GRACE)
        rss_end, rss_peak = sampler.sample(), sampler.peak(started)
        changes = counter_changes(counters, await scrape_counters(run))
        await prober.settle(phase.name)
        connect_ms, failures = prober.for_phase(phase.name)
    finally:
        run.board.window = None
        await cancel_all(tasks + ([attack] if attack is not None else []))
        server = await run.stop_server()
    wanted = publisher.in_window(phase.name)
    delivered = [held.arrivals[s] for s in wanted if s in held.arrivals]
    if held.big:
        outcome += f"; the watched stream got: {fmt_counter(held.big)}"
    slowest = max(((held.arrivals[s], publisher.at[s] - started) for s in wanted if s in held.arrivals), default=None)
    cpu = None if cpu_start is None or cpu_end is None else (cpu_end - cpu_start) * 100 / seconds
    return PhaseResult(
        phase=phase,
        seconds=seconds,
        connect_ms=connect_ms,
        head_ms=prober.heads.get(phase.name, []),
        probe_failures=failures,
        delivery_ms=delivered,
        published=len(wanted),
        delivered=len(delivered),
        rss_start_kb=rss_start,
        rss_end_kb=rss_end,
        rss_peak_kb=rss_peak,
        allowed_mb=allowance_mb(phase.key, run.bounds),
        fivexx=run.board.fivexx(phase.name),
        statuses=run.board.statuses.get(phase.name, {}),
        loop_lag_ms=lag.summary(phase.name),
        outcome=(outcome or ATTACK_TEXT[phase.key]) + (f"; server counters: {changes}" if changes else ""),
        server=server,
        stream_drops=held.drops,
        log_lines=log_problems(run.log_path),
        log_bytes=os.path.getsize(run.log_path) if run.log_path and os.path.exists(run.log_path) else 0,
        cpu_percent=cpu,
        bench_cpu_percent=(bench_end - bench_start) * 100 / seconds,
        slowest=slowest,
    )


class PhaseStalled(RuntimeError):
    """A phase did not finish within its time limit: the bench itself is stuck somewhere."""


def dump_tasks() -> None:
    """Where every task of this process is waiting, to stderr: the evidence for a stalled phase."""
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        task.print_stack(limit=8, file=sys.stderr)


async def run_phase_bounded(run: Run, phase: Phase, publisher: Publisher, lag: LoopLag) -> PhaseResult:
    limit = phase_seconds(phase, run) + 120
    task = asyncio.create_task(run_phase(run, phase, publisher, lag))
    done, _pending = await asyncio.wait({task}, timeout=limit)
    if not done:
        dump_tasks()
        task.cancel()
        await asyncio.wait({task}, timeout=30)
        raise PhaseStalled(f"not done within {limit:.0f} s; task stacks on stderr")
    return task.result()


async def run_all(run: Run, phases: list[Phase]) -> list[PhaseResult]:
    publisher, lag = Publisher(run.board), LoopLag(run.board)
    background = [asyncio.create_task(publisher.run(run.nats_url)), asyncio.create_task(lag.run())]
    results = []
    try:
        for phase in phases:
            print(f"phase: {phase.name} ...", file=sys.stderr, flush=True)
            try:
                result = await run_phase_bounded(run, phase, publisher, lag)
            except (ServiceError, PhaseStalled) as exc:
                if phase.key == "quiet":
                    raise
                run.skipped.append(f"{phase.name}: {type(exc).__name__}: {exc} (server log {run.log_path})")
                print(f"  not run: {run.skipped[-1]}", file=sys.stderr, flush=True)
                await run.stop_server()
                continue
            print(f"  {one_line(result)}", file=sys.stderr, flush=True)
            results.append(result)
            await asyncio.sleep(1.0)
    finally:
        await cancel_all(background)
        if run.proc is not None:
            await run.stop_server()
    return results


# -- report ---------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def mb(kb: int | None, base: int | None) -> float | None:
    return None if kb is None or base is None else (kb - base) / 1024


def verdicts(r: PhaseResult, quiet: PhaseResult) -> tuple[str, str, str]:
    """Latency (≤ 2× quiet, nothing lost, no failed probe), RSS (peak growth within the allowance), 5xx."""
    ratios = [
        ratio(percentile(r.connect_ms, 0.99), percentile(quiet.connect_ms, 0.99)),
        ratio(percentile(r.delivery_ms, 0.99), percentile(quiet.delivery_ms, 0.99)),
    ]
    lost = r.delivered < r.published or bool(r.probe_failures)
    latency_ok = all(x is not None and x <= 2 for x in ratios) and not lost
    peak = mb(r.rss_peak_kb, r.rss_start_kb)
    rss = "—" if peak is None else "met" if peak <= r.allowed_mb else "missed"
    return ("met" if latency_ok else "missed"), rss, ("met" if r.fivexx == 0 else "missed")


def one_line(r: PhaseResult) -> str:
    return (
        f"connect p50/p99 {fmt_ms(percentile(r.connect_ms, 0.5))}/{fmt_ms(percentile(r.connect_ms, 0.99))} ms, "
        f"delivery p99 {fmt_ms(percentile(r.delivery_ms, 0.99))} ms, {r.delivered}/{r.published} delivered, "
        f"RSS peak +{fmt_mb(mb(r.rss_peak_kb, r.rss_start_kb))} MB, 5xx {r.fivexx}; {r.outcome}"
    )


def fmt_mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def client_table(results: list[PhaseResult]) -> list[str]:
    quiet = results[0]
    out = [
        "| phase | s | connect→snapshot p50 / p99 ms | p99 × quiet | delivery p99 ms | × quiet | delivered "
        "| RSS start MB | Δ end / peak MB | allowed MB | 5xx | CPU % server / bench | bench loop lag p99 / max ms "
        "| latency ≤ 2× | RSS | no 5xx |",
        "|---" * 16 + "|",
    ]
    for r in results:
        c99, d99 = percentile(r.connect_ms, 0.99), percentile(r.delivery_ms, 0.99)
        failed = f" ({sum(r.probe_failures.values())} failed)" if r.probe_failures else ""
        start = "—" if r.rss_start_kb is None else f"{r.rss_start_kb / 1024:.0f}"
        cells = [
            r.phase.name,
            f"{r.seconds:.0f}",
            f"{fmt_ms(percentile(r.connect_ms, 0.5))} / {fmt_ms(c99)}{failed}",
            fmt_ratio(ratio(c99, percentile(quiet.connect_ms, 0.99))),
            fmt_ms(d99),
            fmt_ratio(ratio(d99, percentile(quiet.delivery_ms, 0.99))),
            f"{r.delivered}/{r.published}",
            start,
            f"{fmt_mb(mb(r.rss_end_kb, r.rss_start_kb))} / {fmt_mb(mb(r.rss_peak_kb, r.rss_start_kb))}",
            f"{r.allowed_mb:.0f}",
            str(r.fivexx),
            ("—" if r.cpu_percent is None else f"{r.cpu_percent:.0f}") + f" / {r.bench_cpu_percent:.0f}",
            "—" if r.loop_lag_ms is None else f"{fmt_ms(r.loop_lag_ms[0])} / {fmt_ms(r.loop_lag_ms[1])}",
            *verdicts(r, quiet),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def outcome_table(results: list[PhaseResult]) -> list[str]:
    out = ["| phase | attack | what the attackers got | the well-behaved client | server |", "|---|---|---|---|---|"]
    for r in results:
        seen = "; ".join(f"{src}: {fmt_counter(c)}" for src, c in r.statuses.items() if src.startswith("well-"))
        if r.head_ms:
            head = f"{fmt_ms(percentile(r.head_ms, 0.5))} / {fmt_ms(percentile(r.head_ms, 0.99))}"
            seen += f"; connect→response head p50 / p99 {head} ms"
        if r.probe_failures:
            seen += f"; probes failed: {fmt_counter(r.probe_failures)}"
        if r.stream_drops:
            seen += f"; held stream dropped: {fmt_counter(r.stream_drops)}"
        if r.slowest:
            seen += f"; slowest delivery {fmt_ms(r.slowest[0])} ms (published {r.slowest[1]:.1f} s into the phase)"
        attackers = r.outcome if r.phase.attack else "—"
        server = r.server + (f"; log {r.log_bytes / 1e6:.2f} MB" if r.log_bytes else "")
        server += f", {len(r.log_lines)} distinct warnings/errors" if r.log_lines else ""
        cells = [r.phase.name, ATTACK_TEXT[r.phase.key], attackers, seen.strip("; ") or "—", server]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def log_notes(results: list[PhaseResult]) -> list[str]:
    notes = []
    for r in results:
        for line in r.log_lines[:5]:
            quoted = line.replace("`", "'")
            notes.append(f"- {r.phase.name}: `{quoted}`")
    return (
        ["", "Server log (warnings and errors, the 5 most frequent distinct lines per phase):", "", *notes]
        if notes
        else []
    )


def render(results: list[PhaseResult], args: argparse.Namespace, skipped: list[str]) -> str:
    mode = (
        f"the server at {args.url}, shared by every phase"
        if args.url
        else "a fresh `lurestream serve` per phase (JetStream on, otherwise default settings)"
    )
    parts = [
        "## Abuse bench",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}. The server, the bench (one asyncio process: "
        "attackers and the well-behaved client), nats-server and the MongoDB-wire server share this machine.",
        "",
        "Command: `" + " ".join(["python bench/abuse.py", *shown_argv(sys.argv[1:])]) + "`" + code_version(),
        "",
        f"Against {mode}. The well-behaved client holds one stream on `{WATCHED}` receiving {EVENT_RATE:.0f} "
        f"events/s (delivery = arrival − envelope `ts`) and opens a fresh stream every {PROBE_GAP} s "
        "(connect → end of the snapshot frame). Targets: p99 ≤ 2× quiet with nothing lost and no failed "
        'connect; RSS peak growth ≤ 64 MB + the byte bounds the phase may fill ("allowed"); no 5xx from '
        "any client, attackers included. CPU is % of one core over the attack; the bench's loop lag is what it "
        "adds to its own latency readings. With few samples (a short phase) p99 is close to the maximum.",
        "",
        *client_table(results),
        "",
        *outcome_table(results),
        *log_notes(results),
        *(["", "Not run: " + "; ".join(skipped)] if skipped else []),
        "",
    ]
    return "\n".join(parts)


def shown_argv(argv: list[str]) -> list[str]:
    """The command line with the value of ``--secret`` masked: a report is no place for a credential."""
    shown = []
    for i, arg in enumerate(argv):
        if arg.startswith("--secret="):
            shown.append("--secret=***")
        else:
            shown.append("***" if i > 0 and argv[i - 1] == "--secret" else arg)
    return shown


def code_version() -> str:
    """`` on <commit>`` of the checkout the bench's lurestream comes from (read-only git), or ''."""
    root = os.path.dirname(HERE)
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "lurestream"], capture_output=True, text=True
        )
    except OSError:
        return ""
    if rev.returncode != 0:
        return ""
    return f" on {rev.stdout.strip()}" + (" with uncommitted changes to lurestream/" if dirty.stdout.strip() else "")


def write_section(path: str, section: str) -> None:
    """Replace the ``## Abuse bench`` section of ``path`` (up to the next ``## `` heading), or append it."""
    text = open(path).read() if os.path.exists(path) else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Abuse bench"), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section if text else section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    with open(path, "w") as fh:
        fh.write(text)


# -- set-up -----------------------------------------------------------------------------------------------
def seed(mongo_uri: str, db_name: str, secret: str) -> dict[str, str]:
    """Users and attackers (upserts, so a shared database is only added to); a token per user."""
    with MongoClient(mongo_uri) as client:
        db = client[db_name]
        for user in USERS:
            db.users.replace_one({"_id": user}, {"_id": user, "role": "viewer"}, upsert=True)
        for i, uuid in enumerate([WATCHED, *OTHERS]):
            doc = {"_id": uuid, "ip": f"10.77.{i // 250}.{i % 250}", "identity_id": None}
            db.attackers.replace_one({"_id": uuid}, doc, upsert=True)
        if db.observations.count_documents({"attacker_uuid": WATCHED}) == 0:
            db.observations.insert_many(
                [
                    {"attacker_uuid": WATCHED, "primitive": f"p{i % 20}", "value": "v", "confidence": 0.9, "ts": i}
                    for i in range(200)
                ]
            )
    config = config_from({"jwt_secret": secret})
    return {user: mint_token(config, user, ttl=6 * 3600) for user in USERS}


def init_db(mongo_uri: str, db: str) -> None:
    """``lurestream init-db``: the indexes (TTL ones included) a deployment has."""
    env = dict(os.environ, LURESTREAM_MONGO_URI=mongo_uri, LURESTREAM_MONGO_DB=db, LURESTREAM_JWT_SECRET=SECRET)
    subprocess.run([sys.executable, "-m", "lurestream", "init-db"], env=env, check=True, capture_output=True)


def configured_bounds() -> dict[str, float]:
    config = config_from({"jwt_secret": SECRET})
    return {name: float(getattr(config, name, default)) for name, default in SPEC_BOUNDS.items()}


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop what this started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s phases instead of 15")
    parser.add_argument("--seconds", type=float, help="each attack's duration (default 15, --quick 5)")
    parser.add_argument("--phases", default=",".join(p.key for p in PHASES), help="quiet is always run first")
    parser.add_argument("--write", action="store_true", help="replace or append '## Abuse bench' in --output")
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--url", help="use a running server instead of starting one per phase")
    parser.add_argument("--nats-url", help="with --url: the server's NATS")
    parser.add_argument("--mongo-uri", help="with --url: the server's MongoDB (seeded with bench users)")
    parser.add_argument("--db", default="decnet", help="with --url: the server's database")
    parser.add_argument("--secret", help="with --url: the server's LURESTREAM_JWT_SECRET")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 15.0
    if args.url and not (args.nats_url and args.mongo_uri and args.secret):
        parser.error("--url needs --nats-url, --mongo-uri and --secret (to publish, seed and mint tokens)")
    return args


def selected_phases(keys: str) -> list[Phase]:
    wanted = {k.strip() for k in keys.split(",") if k.strip()} | {"quiet"}
    unknown = wanted - {p.key for p in PHASES}
    if unknown:
        raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))} (known: {', '.join(p.key for p in PHASES)})")
    return [p for p in PHASES if p.key in wanted]


def main() -> None:
    args = parse_args()
    phases = selected_phases(args.phases)
    raise_nofile()
    signal.signal(signal.SIGTERM, exit_on_signal)
    work = tempfile.mkdtemp(prefix="lurestream-abuse-")
    services = []
    try:
        if args.url:
            url = urlsplit(args.url)
            host, port = url.hostname or "127.0.0.1", url.port or 80
            nats_url, mongo_uri, db, secret = args.nats_url, args.mongo_uri, args.db, args.secret
        else:
            services = [nats_server(work).start(), mongo_wire_server(work).start()]
            host, port = "127.0.0.1", 0
            nats_url, mongo_uri, db, secret = services[0].url, services[1].url, "abuse", SECRET
            init_db(mongo_uri, db)
        tokens = seed(mongo_uri, db, secret)
        run = Run(args, host, port, nats_url, mongo_uri, db, tokens, work, configured_bounds(), pid=args.pid)
        results = asyncio.run(run_all(run, phases))
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(os.path.join(work, "jetstream"), ignore_errors=True)
    print(f"server logs: {work}", file=sys.stderr)
    text = render(results, args, run.skipped)
    print(text)
    if args.write:
        write_section(args.output, text)


if __name__ == "__main__":
    main()
