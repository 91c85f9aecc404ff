"""The live phase: one writer per process, one small object per open stream (protocol §2, §7).

Tornado does everything up to a stream's live phase — parsing, auth, 404, 429, the response headers'
contents — and then the handler hands the socket over (:meth:`LiveWriter.open`). From there a stream
is a :class:`LiveStream`: the socket, the frames waiting for it, its keys and its position. No
coroutine, future, IOStream or timer per stream.

- **Fan-out**: the hub calls ``put_nowait`` with the frame bytes it encoded once; the stream appends a
  reference (no copy) and is marked dirty. One flush per event-loop tick sends each dirty stream's
  frames as one HTTP chunk with one ``sendmsg`` (scatter-gather: the shared frames are never joined).
- **Back-pressure**: what the kernel does not take is kept (``unsent``) and sent when the socket is
  writable again. A stream holding more than ``max_bytes`` (``LURESTREAM_STREAM_BUFFER_BYTES``) or
  ``queue_max`` frames is *lagging*: it stops receiving at once, gets what is queued and a ``retry:``
  hint, and is closed, so the client reconnects and resumes.
- **One sweep** a fraction of a second apart does what would otherwise be a timer per stream:
  keepalives for idle streams, the send timeout of stalled ones, and (protocol §12) credential expiry.
- **A peer's close** is seen on the read side (the socket is watched for reading), without a write.

Every exit goes through :meth:`LiveWriter.abort`, which unregisters the stream from its source, closes
the socket and calls the stream's ``on_end`` — its owner (``lifecycle.StreamLife``), which gives back
everything else the stream held.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from lurestream import sse
from lurestream.metrics import Metrics
from lurestream.routing import Key

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("lurestream.writer")

# why a stream ended (the metrics label of its disconnect)
CLIENT_CLOSED = "client_closed"
LAGGING = "lagging"
DRAINING = "draining"
SEND_TIMEOUT = "send_timeout"
ERROR = "error"
SNAPSHOT_FAILED = "snapshot_failed"
SHUTDOWN = "shutdown"
EXPIRED = "expired"  # protocol §12: the credential's exp (or the session's expiry) passed
REVOKED = "revoked"  # its jti was revoked, its user's tokens_valid_from moved past it, or the user is gone
FORBIDDEN = "forbidden"  # the user's role may no longer stream, or a password change is required

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
IOV_MAX = 512  # frames per sendmsg; beyond this they are joined (Linux allows 1024 buffers)


class Source(Protocol):
    """Where a live stream's frames come from: the hub (bus events) or the log tail (log rows)."""

    def register(self, stream: LiveStream) -> None:
        """Route frames to ``stream`` from now on; it records its position (``stream.position``)."""
        ...

    def unregister(self, stream: LiveStream) -> None:
        """Stop routing to ``stream`` (idempotent)."""
        ...

    def keepalive_id(self, stream: LiveStream) -> str | None:
        """The ``id:`` an idle keepalive carries (so a quiet stream's resume point moves on), or None."""
        ...


class LiveStream:
    """One open stream in its live phase. Small on purpose: tens of thousands are open at once."""

    __slots__ = (
        "writer",
        "source",
        "on_end",
        "sock",
        "fd",
        "keys",
        "position",
        "epoch",
        "serial",
        "user",
        "kind",
        "chunked",
        "live",
        "held",
        "floor",
        "frames",
        "frames_bytes",
        "unsent",
        "unsent_offset",
        "dirty",
        "closing",
        "closed",
        "reason",
        "last_sent",
        "stalled_since",
        "span",
        "expires",
        "jti",
        "iat",
        "session",
        "__weakref__",
    )

    def __init__(
        self, writer: LiveWriter, source: Source, sock: socket.socket, keys: tuple[Key, ...], user: str, kind: str
    ) -> None:
        self.writer = writer
        self.source = source
        self.on_end: Callable[[LiveStream], None] | None = None  # its owner gives back what it held
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.keys = keys
        self.position: int | None = None  # the hub's stream sequence when this stream registered
        self.epoch = ""  # the JetStream stream (eventids) that position belongs to
        self.serial = 0  # the hub's registration counter when it registered (see snapshots.py)
        self.user = user
        self.kind = kind
        self.chunked = True
        self.live = False  # False while the snapshot or replay is being read: live items are held
        self.held: list[tuple[int, bytes]] | None = []
        self.floor = 0  # live items with a sequence at or below this are duplicates (after a resume)
        self.frames: list[bytes] = []  # encoded frames not yet handed to the kernel
        self.frames_bytes = 0
        self.unsent: bytes | None = None  # a chunk the kernel took part of; the rest goes first
        self.unsent_offset = 0
        self.dirty = False
        self.closing = False  # ended: what is queued (and a final frame) goes out, then the socket closes
        self.closed = False
        self.reason: str | None = None
        self.last_sent = 0.0
        self.stalled_since = 0.0  # when the kernel last refused part of a chunk (0: not stalled)
        self.span: Span | None = None  # the stream request's trace span, while it records
        self.expires = 0.0  # epoch seconds the credential expires (0: never checked)
        self.jti = ""  # the credential's JWT id and issue time, for the revocation sweep (protocol §12)
        self.iat = 0.0
        self.session = ""  # the session's hash, when a session cookie opened it

    # -- what the hub and the tests see ----------------------------------------------------------
    @property
    def pending(self) -> int:
        """Frames queued and not yet handed to the kernel."""
        return len(self.frames) + (len(self.held) if self.held else 0)

    @property
    def unflushed(self) -> int:
        """Bytes queued here that the kernel has not taken."""
        return self.frames_bytes + (len(self.unsent) - self.unsent_offset if self.unsent is not None else 0)

    def put_nowait(self, item: tuple[int, bytes, float]) -> bool:
        """Queue a live frame (the hub's fan-out); False when ended, a duplicate, or the stream lags.

        The hot path of every delivery: a reference appended, a size checked, the stream marked dirty.
        """
        if self.closing:
            return False
        seq = item[0]
        frame = item[1]
        writer = self.writer
        if self.live:
            if seq and seq <= self.floor:
                return False
            frames = self.frames
            frames.append(frame)
            size = self.frames_bytes = self.frames_bytes + len(frame)
            if self.unsent is not None:
                size += len(self.unsent) - self.unsent_offset
            if size > writer.max_bytes or len(frames) > writer.queue_max:
                writer.lagging(self)
                return False
            if not self.dirty:
                self.dirty = True
                writer.mark(self)
            return True
        held = self.held
        assert held is not None
        held.append((seq, frame))
        self.frames_bytes += len(frame)
        if self.frames_bytes > writer.max_bytes or len(held) > writer.queue_max:
            writer.lagging(self)
            return False
        return True

    # -- the phases ----------------------------------------------------------------------------------
    def go_live(self, opening: list[bytes], floor: int) -> None:
        """Send ``opening`` (the snapshot, or a resume's frames), then the live frames held meanwhile
        that are newer than ``floor``, then live frames as they come."""
        if self.closing:
            return
        held, self.held = self.held or [], None
        self.floor = floor
        self.live = True
        # One chunk for the opening: a replay may hold thousands of frames (bounded in bytes by the
        # handler), and QUEUE_MAX counts live frames waiting, not the replay they follow.
        frames = [b"".join(opening)] if opening else []
        frames.extend(frame for seq, frame in held if not (seq and seq <= floor))
        self.frames = frames
        self.frames_bytes = sum(len(f) for f in frames)
        self.dirty = True
        self.writer.mark(self)

    def end(self, reason: str, final: bytes = b"") -> None:
        """Stop receiving, send what is queued and ``final``, end the response, close. Idempotent."""
        if self.closing:
            return
        self.closing = True
        self.reason = reason
        self.source.unregister(self)
        if not self.live:  # nothing but the headers went out: the held frames have no snapshot to follow
            self.held = None
            self.frames = []
            self.frames_bytes = 0
            self.live = True
        if final:
            self.frames.append(final)
            self.frames_bytes += len(final)
        if not self.dirty:
            self.dirty = True
            self.writer.mark(self)

    # -- sending -------------------------------------------------------------------------------------
    def flush(self, now: float) -> None:
        """Hand what is queued to the kernel as one chunk; keep what it does not take."""
        self.dirty = False
        sock = self.sock
        if sock is None:
            return
        if self.unsent is not None and not self._send_unsent(sock, now):
            return
        frames = self.frames
        if not frames and not self.closing:
            return
        self.frames = []
        size = self.frames_bytes
        self.frames_bytes = 0
        if len(frames) == 1 and self.chunked and not self.closing:
            # the common case: one frame, shared by every stream it went to, so its chunk is too
            data = self.writer.chunk_of(frames[0])
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.writer.abort(self, CLIENT_CLOSED)
                return
            if sent < len(data):
                self._stalled(data, sent, now)
                return
            self.last_sent = now
            return
        if self.chunked:
            if len(frames) > IOV_MAX:
                frames = [b"".join(frames)]
            head = b"%x\r\n" % size
            buffers = [head, *frames, CRLF] if size else []
            total = size + len(head) + 2 if size else 0
            if self.closing:
                buffers.append(LAST_CHUNK)
                total += len(LAST_CHUNK)
        else:
            buffers = frames if len(frames) <= IOV_MAX else [b"".join(frames)]
            total = size
        sent = 0
        if total:
            try:
                sent = sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.writer.abort(self, CLIENT_CLOSED)
                return
        if sent < total:
            self._stalled(b"".join(buffers), sent, now)
            return
        self.last_sent = now
        if self.closing:
            self.writer.abort(self, self.reason or CLIENT_CLOSED)

    def _stalled(self, data: bytes, sent: int, now: float) -> None:
        """The kernel took ``sent`` bytes of ``data``: keep the rest, wait until it can take more."""
        self.unsent = data
        self.unsent_offset = sent
        if not self.stalled_since:
            self.stalled_since = now
        self.writer.want_writable(self)

    def _send_unsent(self, sock: socket.socket, now: float) -> bool:
        """Send the rest of a partly sent chunk; True once it is all out."""
        assert self.unsent is not None
        try:
            sent = sock.send(memoryview(self.unsent)[self.unsent_offset :])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.writer.abort(self, CLIENT_CLOSED)
            return False
        self.unsent_offset += sent
        if self.unsent_offset < len(self.unsent):
            return False
        self.unsent = None
        self.unsent_offset = 0
        self.stalled_since = 0.0
        self.last_sent = now
        self.writer.unwatch_writable(self)
        return True


class LiveWriter:
    """Owns every stream in its live phase for one process (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        keepalive_seconds: float,
        send_timeout_seconds: float,
        retry_ms: int,
        max_bytes: int,
        queue_max: int,
    ) -> None:
        """``metrics``: lagging closes, send timeouts and, once per flush tick, the delivery latency — the
        age of the oldest event the tick carried (envelope ``ts`` to now), measured once per tick, not per
        stream."""
        self.metrics = metrics
        self.keepalive_seconds = keepalive_seconds
        self.send_timeout_seconds = send_timeout_seconds
        self.retry_ms = retry_ms
        self.max_bytes = max_bytes
        self.queue_max = queue_max
        self.streams: set[LiveStream] = set()
        self._oldest_ts = float("inf")  # the oldest event queued since the last flush
        self._chunks: dict[bytes, bytes] = {}  # this tick's frames as HTTP chunks (shared by their streams)
        self._dirty: list[LiveStream] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.checks: list[Callable[[float], None]] = []  # extra work for each sweep (credential checks)
        self.draining = False  # the process is shutting down: a stream that opens now is sent on at once

    # -- life of the writer ------------------------------------------------------------------------
    @property
    def sweep_interval(self) -> float:
        return max(0.05, min(1.0, self.keepalive_seconds / 4, self.send_timeout_seconds / 4))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.call_later(self.sweep_interval, self._sweep)

    def close(self) -> None:
        """Close every stream at once (the end of shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for stream in list(self.streams):
            self.abort(stream, SHUTDOWN)

    # -- opening -------------------------------------------------------------------------------------
    def open(
        self,
        sock: socket.socket,
        source: Source,
        keys: list[Key],
        head: bytes,
        *,
        user: str,
        kind: str,
        chunked: bool = True,
        on_end: Callable[[LiveStream], None] | None = None,
    ) -> LiveStream:
        """Take over a connection whose request passed every check: register it with its source (before
        any snapshot read, so nothing published from now on is missed) and send the response head and
        the opening keepalive at once. ``on_end`` is called once when the stream ends, for any reason."""
        loop = self._loop or asyncio.get_running_loop()
        sock.setblocking(False)
        stream = LiveStream(self, source, sock, tuple(keys), user, kind)
        stream.chunked = chunked
        stream.on_end = on_end
        source.register(stream)
        self.streams.add(stream)
        loop.add_reader(stream.fd, self._readable, stream)
        first = head + (b"%x\r\n%s\r\n" % (len(sse.KEEPALIVE), sse.KEEPALIVE) if chunked else sse.KEEPALIVE)
        stream.unsent = first
        stream._send_unsent(sock, loop.time()) if stream.sock is not None else None
        if stream.unsent is not None and not stream.closed:
            stream.stalled_since = loop.time()
            self.want_writable(stream)
        if self.draining:  # its request began before the drain: it reconnects elsewhere right away
            self.drain(stream)
        return stream

    # -- flushing --------------------------------------------------------------------------------------
    def note_delivered(self, ts: float) -> None:
        """The hub delivered an event with this envelope ``ts`` (called once per event)."""
        if ts < self._oldest_ts:
            self._oldest_ts = ts

    def chunk_of(self, frame: bytes) -> bytes:
        """``frame`` as one HTTP/1.1 chunk, built once per tick however many streams send it."""
        chunk = self._chunks.get(frame)
        if chunk is None:
            chunk = self._chunks[frame] = b"%x\r\n%s\r\n" % (len(frame), frame)
        return chunk

    def mark(self, stream: LiveStream) -> None:
        self._dirty.append(stream)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self.flush)

    def flush(self) -> None:
        """Once per loop tick: one send per dirty stream."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        now = (self._loop or asyncio.get_running_loop()).time()
        for stream in dirty:
            if stream.dirty:
                stream.flush(now)
        self._chunks.clear()
        oldest, self._oldest_ts = self._oldest_ts, float("inf")
        if oldest != float("inf"):
            self.metrics.delivery_seconds.observe(max(time.time() - oldest, 0.0))

    def want_writable(self, stream: LiveStream) -> None:
        if stream.sock is not None:
            (self._loop or asyncio.get_running_loop()).add_writer(stream.fd, self._writable, stream)

    def unwatch_writable(self, stream: LiveStream) -> None:
        if stream.sock is not None:
            (self._loop or asyncio.get_running_loop()).remove_writer(stream.fd)

    def _writable(self, stream: LiveStream) -> None:
        now = (self._loop or asyncio.get_running_loop()).time()
        stream.flush(now)

    def _readable(self, stream: LiveStream) -> None:
        """The client sent something or went away: EOF or an error ends the stream at once; bytes
        (nothing a client should send now) are read and dropped."""
        sock = stream.sock
        if sock is None:
            return
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.abort(stream, CLIENT_CLOSED)

    # -- ending ----------------------------------------------------------------------------------------
    def retry_frame(self) -> bytes:
        return sse.retry_frame(int(self.retry_ms * random.uniform(0.5, 1.5)))

    def lagging(self, stream: LiveStream) -> None:
        self.metrics.lagging.inc()
        log.warning("a %s stream is lagging (%d bytes queued); closing it so it resumes", stream.kind, stream.unflushed)
        stream.end(LAGGING, self.retry_frame())

    def end_credential(self, stream: LiveStream, reason: str) -> None:
        """End a stream whose credential no longer holds: ``event: end`` with the reason, no retry hint."""
        stream.end(reason, sse.end_frame(reason))

    def drain(self, stream: LiveStream) -> None:
        stream.end(DRAINING, self.retry_frame())

    def drain_all(self) -> None:
        """End every stream with a ``retry:`` hint (a shutdown without the spread)."""
        for stream in list(self.streams):
            self.drain(stream)

    def epoch_changed(self, source: Source, epoch: str) -> None:
        """``source``'s JetStream stream was re-created: sequences restart, so a live stream's duplicate
        floor (from a resume of the old stream) would swallow new events — reset it; a stream still opening
        read its snapshot or replay against the old stream — send it to reconnect (its old id then gets
        the ``"resumed": false`` snapshot)."""
        for stream in list(self.streams):
            if stream.closing or stream.source is not source:
                continue
            if stream.live:
                stream.floor = 0
                stream.epoch = epoch
            else:
                self.drain(stream)

    def abort(self, stream: LiveStream, reason: str) -> None:
        """Close the socket now (nothing more can or need be written) and give everything back."""
        if stream.closed:
            return
        stream.closed = True
        stream.closing = True
        if stream.reason is None:  # the first reason stands (a lagging stream whose client then leaves is lagging)
            stream.reason = reason
        stream.source.unregister(stream)
        sock, stream.sock = stream.sock, None
        if sock is not None:
            loop = self._loop or asyncio.get_running_loop()
            loop.remove_reader(stream.fd)
            loop.remove_writer(stream.fd)
            sock.close()
        stream.frames = []
        stream.unsent = None
        stream.held = None
        self.streams.discard(stream)
        on_end, stream.on_end = stream.on_end, None
        if on_end is not None:
            on_end(stream)

    # -- the sweep -------------------------------------------------------------------------------------
    def _sweep(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        try:
            self.sweep(now)
            for check in self.checks:
                check(time.time())
        finally:
            self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    def sweep(self, now: float) -> None:
        """Keepalives for idle streams, the send timeout for stalled ones, the end of expired credentials."""
        keepalive_before = now - self.keepalive_seconds
        stalled_before = now - self.send_timeout_seconds
        wall = time.time()
        for stream in list(self.streams):
            if stream.expires and stream.expires <= wall and not stream.closing:
                self.end_credential(stream, EXPIRED)
            if stream.stalled_since:
                if stream.stalled_since < stalled_before:
                    log.warning("send timeout after %.1fs; closing a %s stream", self.send_timeout_seconds, stream.kind)
                    self.metrics.send_timeouts.inc()
                    self.abort(stream, SEND_TIMEOUT)
                continue
            if stream.closing or stream.frames or stream.last_sent > keepalive_before:
                continue
            frame = sse.keepalive_frame(stream.source.keepalive_id(stream)) if stream.live else sse.KEEPALIVE
            stream.frames.append(frame)
            stream.frames_bytes += len(frame)
            stream.last_sent = now  # not again before the next interval, even if this one stalls
            if not stream.dirty:
                stream.dirty = True
                self.mark(stream)
