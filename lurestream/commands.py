"""Operator commands: ``tail`` a stream in the terminal, ``publish`` one envelope.

Each returns an exit status: 0 done (``--max-events`` reached, Ctrl-C), 1 the other side refused (401, 403,
404, a final 429, signed out by ``event: end``, not an event stream), 2 bad input (the server's 400 too).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TextIO

from lurestream.config import Config
from lurestream.envelope import encode_envelope
from lurestream.kinds import KINDS
from lurestream.redact import redact
from lurestream.sse import Frame, FrameParser

# -- tail: what to follow ------------------------------------------------------------------------------
LOG_FEED = "logs"  # the live log feed (protocol §15): not a bus kind, so not in KINDS
LOG_FEED_PATH = "/api/v1/stream"
LOG_FEED_PARAMETERS = ("search", "start_time", "end_time")
TAIL_KINDS = (*(kind.name for kind in KINDS), LOG_FEED)
_ID_GROUP = "([^/]+)"  # how a kind's path (kinds.py) captures its id


@dataclass(frozen=True)
class Target:
    """A stream to follow: its kind and the path (with the query) that names it."""

    kind: str
    path: str

    @property
    def is_log_feed(self) -> bool:
        return self.kind == LOG_FEED


def target(kind: str, resource_id: str | None = None, **query: str | None) -> Target:
    """The stream of ``kind`` (one of ``TAIL_KINDS``). The bus kinds' paths are the server's own declarations
    (``kinds.KINDS``), so a kind added there can be tailed at once. ``query`` holds what narrows a stream:
    a firehose's scope (``decky``) or the log feed's ``search``, ``start_time``, ``end_time``; None or empty
    is absent. Raises ValueError, naming the misuse, for an id or a parameter the kind does not take."""
    given = {name: value for name, value in query.items() if value}
    allowed: tuple[str, ...]
    if kind == LOG_FEED:
        path, has_id, allowed = LOG_FEED_PATH, False, LOG_FEED_PARAMETERS
    else:
        declared = next((k for k in KINDS if k.name == kind), None)
        if declared is None:
            raise ValueError(f"unknown kind {kind!r}: one of {', '.join(TAIL_KINDS)}")
        path, has_id, allowed = declared.path, declared.has_id, declared.scope
    if has_id and not resource_id:
        raise ValueError(f"{kind} needs an id: lurestream tail {kind} <id>")
    if not has_id and resource_id:
        raise ValueError(f"{kind} takes no id (got {resource_id!r})")
    for name in given:
        if name not in allowed:
            flag = "--" + name.replace("_", "-")
            takers = [k.name for k in KINDS if name in k.scope] or ([LOG_FEED] if name in LOG_FEED_PARAMETERS else [])
            raise ValueError(f"{flag} is for {' and '.join(takers) or 'no kind'}, not {kind}")
    if has_id:
        assert resource_id is not None
        path = path.replace(_ID_GROUP, urllib.parse.quote(resource_id, safe=""))
    if given:
        path += "?" + urllib.parse.urlencode(given)
    return Target(kind, path)


# -- tail: how each frame is shown -------------------------------------------------------------------------
# What a terminal could act on, or that would garble the line, in text an attacker chose (a log row's raw
# line, a payload): C0 and C1 controls (ESC, CSI), DEL, bidi overrides, line and paragraph separators and
# lone surrogates (which cannot even be written as UTF-8). They are shown escaped, \u001b.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _line(label: str, summary: str, event_id: str | None = None) -> str:
    ident = f"  #{event_id}" if event_id else ""
    return printable(f"{time.strftime('%H:%M:%S')}  {label:<28} {summary}{ident}")


def _snapshot_summary(data: Any) -> str:
    if not isinstance(data, dict):
        return _compact(data)
    parts = [f"{len(v)} {k}" for k, v in data.items() if isinstance(v, list)]
    parts += [f"{k}={v}" for k, v in data.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    summary = ", ".join(parts)
    if data.get("resumed") is False:  # protocol §7: discard what you had and rebuild from this
        summary = "rebuilt (the missed events could not be replayed): " + summary
    return summary


def describe(frame: Frame) -> list[str]:
    """The terminal lines of a stream frame that carries data (protocol §2, §3, §4, §14): one line each."""
    try:
        data = json.loads(frame.data or "null")
    except ValueError:
        data = frame.data
    name = frame.name
    if name == "snapshot":
        summary = _snapshot_summary(data)
    elif name == "resumed" and isinstance(data, dict):
        summary = f"after #{data.get('last_event_id')}: {data.get('replayed')} missed events follow"
    elif isinstance(data, dict) and "payload" in data:
        summary = _compact(data["payload"])
    else:
        summary = _compact(data)
    return [_line(name, summary, frame.id)]


def _field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    return "-" if value is None or value == "" else str(value)


def describe_log_feed(frame: Frame) -> list[str]:
    """The terminal lines of a log feed frame (protocol §15): a line per row; stats and the histogram
    summarised; a gap said plainly (rows were skipped, not lost silently)."""
    try:
        message = json.loads(frame.data or "null")
    except ValueError:
        message = None
    if not isinstance(message, dict) or "type" not in message:
        return describe(frame)
    kind, data = message["type"], message.get("data")
    if kind == "logs" and isinstance(data, list):
        return [
            _line(
                "log",
                " ".join(_field(row, f) for f in ("timestamp", "decky", "service", "event_type", "attacker_ip"))
                + "  "
                + _field(row, "raw_line"),
                str(row.get("id", "")),
            )
            for row in data
            if isinstance(row, dict)
        ]
    if kind == "stats" and isinstance(data, dict):
        return [_line("stats", ", ".join(f"{k}={v}" for k, v in data.items()))]
    if kind == "histogram" and isinstance(data, list):
        buckets = [b for b in data if isinstance(b, dict)]
        if not buckets:
            return [_line("histogram", "no matching rows")]
        total = sum(b.get("count", 0) for b in buckets if isinstance(b.get("count"), int))
        span = f"{buckets[0].get('time')} to {buckets[-1].get('time')}"
        return [_line("histogram", f"{total} matching rows in {len(buckets)} buckets, {span}")]
    if kind == "gap" and isinstance(data, dict):
        summary = (
            f"rows after #{data.get('after')} were too many to replay and are NOT shown; "
            f"going on from #{data.get('resumed_at')}"
        )
        return [_line("gap", summary)]
    return [_line(str(kind), _compact(data), frame.id)]


# -- tail: the HTTP exchange -----------------------------------------------------------------------------
MAX_CHUNK = 16 << 20  # a frame is at most LURESTREAM_STREAM_BUFFER_BYTES; a bigger chunk is not lurestream
MAX_ERROR_BODY = 64 << 10


class OutputClosed(Exception):
    """Whoever reads tail's output went away (``lurestream tail … | head``). Not an OSError, so that it is
    never taken for a network failure and retried."""


class BrokenResponse(Exception):
    """A response that is not HTTP/1.1 as lurestream (or a proxy) sends it."""


@dataclass
class Response:
    """One HTTP response, its body read piece by piece (chunked, Content-Length or up to the close)."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    _left: int | None = None  # Content-Length bytes still to read
    _done: bool = False

    def __post_init__(self) -> None:
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if not self._chunked and "content-length" in self.headers:
            try:
                self._left = int(self.headers["content-length"])
            except ValueError:
                raise BrokenResponse(f"Content-Length {self.headers['content-length']!r}") from None

    @property
    def is_event_stream(self) -> bool:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower() == "text/event-stream"

    async def read(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        if self._done:
            return None
        if self._chunked:
            line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BrokenResponse(f"chunk size {line[:20]!r}") from None
            if size == 0:
                self._done = True
                return None
            if size > MAX_CHUNK:
                raise BrokenResponse(f"a chunk of {size} bytes")
            piece = await self.reader.readexactly(size + 2)
            if piece[-2:] != b"\r\n":
                raise BrokenResponse("a chunk not followed by CRLF")
            return piece[:-2]
        if self._left is not None:
            if self._left == 0:
                self._done = True
                return None
            piece = await self.reader.read(min(self._left, 65536))
            if not piece:
                raise asyncio.IncompleteReadError(piece, self._left)
            self._left -= len(piece)
            return piece
        piece = await self.reader.read(65536)  # HTTP/1.0 style: the body ends with the connection
        if not piece:
            self._done = True
            return None
        return piece

    async def text(self, timeout: float) -> str:
        """The (short) body of a refusal."""
        body = b""
        while len(body) < MAX_ERROR_BODY:
            piece = await asyncio.wait_for(self.read(), timeout)
            if piece is None:
                break
            body += piece
        return body.decode("utf-8", "replace")

    def close(self) -> None:
        self.writer.close()


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL naming a host (``--url``), else ValueError saying so."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise ValueError(f"--url must be an http:// or https:// URL with a host, got {url!r}")
    return url


async def get(url: str, headers: dict[str, str], timeout: float) -> Response:
    """``GET url`` over a connection of its own (HTTP/1.1, ``Connection: close``), up to the response head;
    the caller reads the body and closes. ``timeout`` bounds the connect and the wait for the head."""
    parts = urllib.parse.urlsplit(check_url(url))
    assert parts.hostname is not None
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, port, ssl=ssl.create_default_context() if secure else None),
        timeout,
    )
    try:
        target_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target_path} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise BrokenResponse(f"status line {status_line[:60]!r}")
        fields: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        return Response(int(rest[:3]), fields, reader, writer)
    except BaseException:
        writer.close()
        raise


# -- tail: following -------------------------------------------------------------------------------------
DEFAULT_RETRY = 3.0  # seconds before the first reconnect when the server gave no retry: hint (EventSource's)
MAX_BACKOFF = 30.0
FINAL = {400: 2, 401: 1, 403: 1, 404: 1, 429: 1}  # refusals that will not clear on their own → exit status


@dataclass
class Stop:
    """Stop following: exit with ``status``, after saying ``message`` on stderr (if any)."""

    status: int
    message: str = ""


@dataclass
class Again:
    """Reconnect after the back-off; ``note`` says why (on stderr), ``wait`` is a server's minimum wait."""

    note: str
    wait: float = 0.0


class Follower:
    """``lurestream tail``: one stream followed across responses, as an EventSource would — the last id is sent
    back as ``Last-Event-ID``, the server's ``retry:`` hint is the reconnect delay, the waiting answer
    (protocol §16) is waited out — and each frame printed as it comes."""

    def __init__(
        self,
        base_url: str,
        target: Target,
        token: str,
        out: TextIO,
        err: TextIO,
        max_events: int = 0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.url = base_url.rstrip("/") + target.path
        self.target = target
        self.token = token
        self.out = out
        self.err = err
        self.max_events = max_events
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.last_id: str | None = None
        self.retry = DEFAULT_RETRY  # the server's last retry: hint, in seconds
        self.failures = 0  # responses in a row that opened no stream: the back-off's exponent
        self.events = 0

    async def run(self) -> int:
        while True:
            try:
                outcome = await self._once()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                outcome = Again(_reason(exc))
            except BrokenResponse as exc:
                outcome = Again(f"a broken response ({exc})")
            if isinstance(outcome, Stop):
                if outcome.message:
                    print(f"lurestream tail: {outcome.message}", file=self.err, flush=True)
                return outcome.status
            delay = max(outcome.wait, self._backoff())
            print(f"-- {redact(outcome.note)}; reconnecting in {delay:.1f}s", file=self.err, flush=True)
            await asyncio.sleep(delay)

    def _backoff(self) -> float:
        """The server's retry hint, doubled for each response in a row that opened no stream (at most 30 s, but
        never less than the hint), spread by up to a quarter so that many clients do not return at once."""
        base = max(self.retry, min(self.retry * 2.0**self.failures, MAX_BACKOFF))
        self.failures += 1
        return base * (1 + random.random() / 4)

    async def _once(self) -> Stop | Again:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", "Authorization": f"Bearer {self.token}"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        response = await get(self.url, headers, self.connect_timeout)
        try:
            if response.status != 200:
                return await self._refused(response)
            if not response.is_event_stream:
                kind = response.headers.get("content-type", "no Content-Type")
                return Stop(1, f"{self.url} is not an event stream ({kind}): is --url the lurestream server?")
            return await self._stream(response)
        finally:
            response.close()

    async def _refused(self, response: Response) -> Stop | Again:
        body = await response.text(self.connect_timeout)
        try:
            detail = str(json.loads(body)["detail"])
        except Exception:
            detail = body.strip()[:200]
        if response.status in FINAL:
            return Stop(FINAL[response.status], f"{response.status} {detail}")
        wait = response.headers.get("retry-after", "")
        return Again(f"HTTP {response.status} {detail}".strip(), float(wait) if wait.isdigit() else 0.0)

    async def _stream(self, response: Response) -> Stop | Again:
        parser = FrameParser()
        while True:
            try:
                piece = await asyncio.wait_for(response.read(), self.idle_timeout)
            except asyncio.TimeoutError:
                return Again(f"nothing for {self.idle_timeout:.0f}s, not even a keepalive: the connection is dead")
            if piece is None:
                return Again("the server ended the stream")
            for frame in parser.feed(piece):
                outcome = self._frame(frame)
                if outcome is not None:
                    return outcome

    def _frame(self, frame: Frame) -> Stop | Again | None:
        if frame.retry is not None:
            self.retry = frame.retry / 1000
        if frame.id is not None:
            self.last_id = frame.id
        if frame.data is None:
            return None  # a keepalive, an id or a retry hint: nothing to show
        name = frame.name
        if name == "end":  # signed out (protocol §12): a reconnect would be refused
            reason = _data(frame).get("reason", frame.data)
            return Stop(1, f"signed out by the server ({reason}): the token no longer holds; not reconnecting")
        if name == "unavailable":  # the waiting answer (protocol §16): its retry: frame came first; the end follows
            data = _data(frame)
            return Again(f"the server asks to wait ({data.get('status')} {data.get('detail')})")
        if name == "error":  # the stream failed inside the server; the response ends after it
            return Again(f"the server interrupted the stream ({_data(frame).get('message', frame.data)})")
        self.failures = 0  # a stream is open: the back-off starts over
        lines = describe_log_feed(frame) if self.target.is_log_feed else describe(frame)
        counted = self._counted(frame, lines)  # when not 0, one per line
        if self.max_events and counted and self.events + counted >= self.max_events:
            self._print(lines[: self.max_events - self.events])
            return Stop(0)
        self.events += counted
        self._print(lines)
        return None

    def _counted(self, frame: Frame, lines: list[str]) -> int:
        """How many live events the frame is: a bus event is one; a log feed frame, one per row."""
        if self.target.is_log_feed:
            message = _data(frame)
            return len(lines) if message.get("type") == "logs" else 0
        return 0 if frame.name in ("snapshot", "resumed") else 1

    def _print(self, lines: list[str]) -> None:
        try:
            for line in lines:
                print(line, file=self.out)
            self.out.flush()
        except BrokenPipeError as exc:
            raise OutputClosed() from exc


def _data(frame: Frame) -> dict[str, Any]:
    try:
        data = frame.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (the server is down or restarting)"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection was cut"
    return f"{type(exc).__name__}: {exc}"


async def tail(
    base_url: str,
    target: Target,
    token: str,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    max_events: int = 0,
    connect_timeout: float = 10.0,
    idle_timeout: float = 60.0,
) -> int:
    """Follow ``target`` on the server at ``base_url``, printing each frame, until ``max_events`` live events
    (0: no bound), a refusal, or the end of the credential; returns the exit status."""
    follower = Follower(base_url, target, token, out, err, max_events, connect_timeout, idle_timeout)
    return await until_interrupted(follower.run())


async def until_interrupted(work: Coroutine[Any, Any, int]) -> int:
    """``work``'s exit status, or 0 as soon as Ctrl-C stops it.

    Why not asyncio's own handling: ``asyncio.run`` answers Ctrl-C by cancelling the main task once, and up
    to Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives as the read it waits on completes
    (CPython gh-86296, fixed in 3.12) — under load, ``tail`` then read on after Ctrl-C as if nothing had
    happened. Here Ctrl-C sets a flag and the work is cancelled again until it has stopped.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    except (NotImplementedError, RuntimeError, ValueError):  # no signal handlers here (not the main thread)
        return await task
    waiter = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not interrupted.is_set():
            return task.result()
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with, the user asked to stop
        return 0
    finally:
        waiter.cancel()
        loop.remove_signal_handler(signal.SIGINT)


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
