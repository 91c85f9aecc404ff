"""The HTTP edge: what a client may cost before any handler runs (protocol §11, §16).

Tornado parses HTTP/1.1 for us; this module adds the bounds a server on the internet edge needs, at
the points Tornado lets us in — the accept loop, the stream it reads from, the connection's delegate,
and ``handle_stream``:

- request line + headers ≤ ``max_header_bytes`` → 431 (or 414 when the request line alone is too long);
  path + query ≤ ``max_url_bytes`` → 414; a body over ``max_body_bytes`` → 413 *before it is read*;
  ``Transfer-Encoding`` on a request → 411; a malformed head → 400 — each a JSON ``{"detail": ...}``;
- complete headers within ``header_timeout`` of the connection (or of the first byte of a kept-alive
  request) → else 408 and close; a kept-alive connection idle for ``idle_timeout`` is closed;
  a body gets ``header_timeout`` too; what Tornado may buffer per connection is bounded;
- at most ``max_connections_per_ip`` open connections per client address (0 = no bound), decided at the
  first request head that is not a probe (see ``EdgeServer.count_connection``): the count follows the
  socket, also after a stream leaves Tornado for the live writer;
- out of descriptors (or kernel buffers), accepting pauses with a back-off instead of spinning
  (``AcceptLoop``, protocol §16).

Tornado's own behaviour here would be: a 1 h header timeout, a 100 MB body buffered before any
handler sees the request, an empty reply (a bare close) to an oversized head, and an accept loop that
retries a failing ``accept()`` on every event-loop pass (a core at 100 % and a traceback each time).

A refused request gets its reply and then a *lingering close*: the write side is shut, and what the
client still sends is read and dropped for a short while, so the client reads the reply instead of a
connection reset (a client mid-way through a 90 MB body would otherwise never see its 413).

**The per-address cap and what it no longer bounds.** The cap is decided at the request head, not at
accept, because only the head says whether the request is a probe (``/healthz``, ``/readyz``,
``/metrics``: never counted, never refused, so a load balancer's health checks from its one address
always reach us) and, behind a trusted proxy (``xheaders``), which client it is for. The price: a
connection that never sends a head is not counted. A hoarder opening thousands of silent connections
from one address now holds each one until ``header_timeout`` (10 s) instead of having it refused at
accept — which itself held the socket for the ``LINGER_SECONDS`` (2 s) of its 429 reply. A hoarder
connecting at R connections/s therefore holds about R × ``header_timeout`` descriptors (R × 2 before),
each costing a socket, its IOStream, HTTP1 connection, head-reading task and timer: about 11 KB of
process memory (measured: 3,000 silent connections, 34 MB RSS) plus the kernel's socket, no read buffer
until bytes arrive. So 1,000 silent connects/s hold ~10,000 descriptors and ~110 MB. When the
descriptors run out, accepting pauses (``AcceptLoop``) and open streams go on; a hoarder that large is
for a firewall or the proxy's own per-source limit.
Likewise a client that only ever sends probes on kept-alive connections is never capped; each such
connection is closed after ``idle_timeout`` without a request.
"""

from __future__ import annotations

import asyncio
import errno
import http
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tornado import gen, httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError

from lurestream import replies, tornado_internals

log = logging.getLogger("lurestream.edge")

LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 256 * 1024
_HEAD_END = b"\n\r?\n"

# Requests a load balancer or monitor sends from its one address: never counted against the per-address cap.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# accept() failures that mean "no resources right now" (the process's or the system's descriptor table,
# kernel memory): the connection waits in the backlog, and retrying at once fails the same way.
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
_OUT_OF_MEMORY = frozenset({errno.ENOBUFS, errno.ENOMEM})
# accept() failures that concern one connection only (it was reset or its network went away while it
# waited; Linux passes such pending errors on from accept(2), and EPERM when a firewall rule refuses
# it): skip that connection and go on, as Tornado does with ECONNABORTED.
_ONE_CONNECTION = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)


@dataclass(frozen=True)
class EdgeLimits:
    """The bounds of protocol §11 that apply before a handler runs (each a ``LURESTREAM_*`` setting)."""

    max_header_bytes: int = 16 * 1024
    max_url_bytes: int = 8 * 1024
    max_body_bytes: int = 4 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections_per_ip: int = 0

    @property
    def read_buffer_bytes(self) -> int:
        """What Tornado may buffer from one client: a full head and body, and one read chunk on top."""
        return self.max_header_bytes + self.max_body_bytes + 64 * 1024


class ConnectionCounter:
    """Open connections per client address (protocol §11 ``MAX_CONNECTIONS_PER_IP``); one per process.

    A connection is counted from its first request head that is not a probe until it closes — or, once
    it has become a live stream, until the writer ends the stream (see ``EdgeServer.count_connection``).
    """

    def __init__(self, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self._open: dict[str, int] = {}
        self.total = 0

    def acquire(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self.max_per_ip and count >= self.max_per_ip:
            return False
        self._open[address] = count + 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)
        self.total -= 1

    def count(self, address: str) -> int:
        return self._open.get(address, 0)


def forwarded_client(headers: httputil.HTTPHeaders, trusted_downstream: Iterable[str] = ()) -> str | None:
    """The client address a trusted proxy reports in ``headers``, normalised, or None when it reports none.

    Tornado's ``xheaders`` take ``X-Real-IP`` first, else the last ``X-Forwarded-For`` hop (skipping the
    ``trusted_downstream`` proxies). We take the last ``X-Forwarded-For`` hop first: HAProxy
    (``option forwardfor``) and nginx (``$proxy_add_x_forwarded_for``) *append* the address they saw,
    so the last hop is the proxy's word, while a proxy that only appends passes a client's own
    ``X-Real-IP`` through untouched — with Tornado's order any client could pick the address it is
    counted under and never reach the cap. ``X-Real-IP`` is used when there is no (valid) forwarded hop,
    which is right for a proxy that sets only ``X-Real-IP`` — and such a proxy must then also strip or
    overwrite ``X-Forwarded-For``, or a client's own header is believed (the deployment docs must say so).
    Every step is linear in the header's length.
    """
    forwarded = headers.get("X-Forwarded-For")
    if forwarded:
        trusted = set(trusted_downstream)
        if trusted:
            hop = next((h for h in (c.strip() for c in reversed(forwarded.split(","))) if h not in trusted), "")
        else:
            hop = forwarded.rpartition(",")[2].strip()
        address = _normalised_ip(hop)
        if address is not None:
            return address
    return _normalised_ip(headers.get("X-Real-IP", "").strip())


def _normalised_ip(text: str) -> str | None:
    """``text`` as one canonical IP address, or None: ``2001:DB8::1`` and ``2001:db8:0::1`` count as one
    client, and so do ``::ffff:192.0.2.1`` and ``192.0.2.1``."""
    if not text or len(text) > 64:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with the JSON error body every endpoint uses."""
    body = replies.error_body(detail)
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in replies.COMMON_HEADERS.items()),
        "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _target_length(head: bytes) -> int:
    """The length of a request head's target (``METHOD target HTTP/1.1``), by three searches at C speed."""
    end = head.find(b"\n")
    first = head.find(b" ", 0, end)
    last = head.rfind(b" ", 0, end)
    return last - first - 1 if 0 <= first < last else 0


def linger_close(sock: socket.socket, reply: bytes) -> None:
    """Send ``reply``, shut the write side, drop what the client still sends for a moment, close.

    The reply is small and goes out with one non-blocking send; whatever arrives afterwards is read
    and discarded (at most ``LINGER_MAX_BYTES`` for at most ``LINGER_SECONDS``) so the kernel does not
    answer it with a reset that would destroy the reply in flight.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        sock.send(reply)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    fd = sock.fileno()
    drained = 0

    def finish() -> None:
        if sock.fileno() >= 0:
            loop.remove_reader(fd)
            timer.cancel()
            sock.close()

    def readable() -> None:
        nonlocal drained
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        drained += len(chunk)
        if not chunk or drained > LINGER_MAX_BYTES:
            finish()

    timer = loop.call_later(LINGER_SECONDS, finish)
    loop.add_reader(fd, readable)


class AcceptPause:
    """How long a listener rests after ``accept()`` failed for want of resources, and the one log line a
    second that says so (protocol §16). One per server: descriptors are the process's, not a socket's.

    The first failure rests ``FIRST`` seconds, each further one twice as long up to ``LONGEST``; a
    successful accept starts over. Every failure is counted (``on_refusal``, reason
    ``out_of_descriptors`` for EMFILE/ENFILE, ``out_of_memory`` for ENOBUFS/ENOMEM, ``accept_error``
    otherwise) and summed into the next line, so a long shortage writes one line a second saying how many
    accepts were deferred, not a line (and a traceback) per attempt; its end is one line too.
    """

    FIRST = 0.1
    LONGEST = 1.0
    LOG_EVERY = 1.0

    def __init__(self, on_refusal: Callable[[str], None] | None = None) -> None:
        self.on_refusal = on_refusal
        self.delay = 0.0  # the current rest; 0 while accepts succeed
        self.deferred = 0  # failed accepts not yet in a log line
        self.since = 0.0  # when the current shortage began
        self.cause = ""
        self._ended_after: float | None = None  # a shortage ended and not yet logged: how long it lasted
        self._last_line = float("-inf")
        self._line_timer: object | None = None

    def failed(self, exc: OSError) -> float:
        """Note a failed accept; returns how long the listener should rest before it tries again."""
        now = IOLoop.current().time()
        if not self.delay:
            self.since = now
        self.delay = min(self.LONGEST, self.delay * 2) if self.delay else self.FIRST
        self.deferred += 1
        code = exc.errno or 0
        self.cause = f"{errno.errorcode.get(code, str(code))}: {exc.strerror or exc}"
        if code in _OUT_OF_DESCRIPTORS:
            reason = "out_of_descriptors"
        elif code in _OUT_OF_MEMORY:
            reason = "out_of_memory"
        else:
            reason = "accept_error"
        if self.on_refusal is not None:
            self.on_refusal(reason)
        self._report()
        return self.delay

    def accepted(self) -> None:
        """A connection was accepted: the back-off starts over (and the shortage's end is logged)."""
        if self.delay:
            self.delay = 0.0
            self._ended_after = IOLoop.current().time() - self.since
            self._report()

    def _report(self) -> None:
        """Write the line the state calls for now, or once ``LOG_EVERY`` has passed since the last one."""
        io_loop = IOLoop.current()
        wait = self._last_line + self.LOG_EVERY - io_loop.time()
        if wait <= 0:
            self._write_line()
        elif self._line_timer is None:
            self._line_timer = io_loop.call_later(wait, self._write_line)

    def _write_line(self) -> None:
        self._line_timer = None
        now = IOLoop.current().time()
        if self.delay:
            if not self.deferred:
                return
            log.warning(
                "not accepting connections for now (%s, for %.1fs): deferred accepts since the last line: %d; "
                "next try in %.1fs (the wait doubles up to 1s); open connections are still served",
                self.cause,
                now - self.since,
                self.deferred,
                self.delay,
            )
        elif self._ended_after is not None:
            log.warning(
                "accepting connections again after %.1fs out of resources (%s); deferred accepts since the last "
                "line: %d",
                self._ended_after,
                self.cause,
                self.deferred,
            )
        else:
            return
        self.deferred = 0
        self._ended_after = None
        self._last_line = now


class AcceptLoop:
    """Accepts connections on one listening socket, in place of ``tornado.netutil.add_accept_handler``.

    Tornado's handler accepts up to 128 connections per readiness event and lets every ``OSError`` but
    EAGAIN and ECONNABORTED escape to the IOLoop, which logs it at ERROR with a traceback and leaves the
    handler armed. Out of descriptors (EMFILE) the connection stays in the backlog, so the socket stays
    readable and the very next loop pass fails the same way: measured, 100 % of a core, 2.68 M log lines
    (188 MB) in 40 s, and no client answered (ERROR lines pass the log flood filter by design).

    Here such a failure removes the socket's reader and re-arms it after ``AcceptPause``'s back-off
    (0.1 s doubling to 1 s): the loop keeps serving everything else (open streams, timers, the bus), and
    the connections waiting in the backlog are accepted once descriptors free. A failure that concerns
    one connection only (``_ONE_CONNECTION``) skips it, as Tornado skips ECONNABORTED; any other error
    rests the listener too, since an unknown error repeated every pass would be the same spin.
    Only public IOLoop calls are used here; the Tornado internals are in ``EdgeServer.add_sockets``.
    """

    BATCH = 128  # Tornado's bound per readiness event (its default backlog), so accepting cannot starve the loop

    def __init__(
        self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None], pause: AcceptPause
    ) -> None:
        self.sock = sock
        self.on_connection = on_connection
        self.pause = pause
        self.io_loop = IOLoop.current()
        self._armed = False
        self._closed = False
        self._rest_timer: object | None = None
        self._arm()

    def _arm(self) -> None:
        self._rest_timer = None
        if not self._closed and not self._armed:
            self.io_loop.add_handler(self.sock, self._ready, IOLoop.READ)
            self._armed = True

    def _ready(self, _fd: Any, _events: int) -> None:
        for _ in range(self.BATCH):
            if not self._armed:  # closed by a callback meanwhile
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:  # every waiting connection accepted
                return
            except OSError as exc:
                if exc.errno in _ONE_CONNECTION:
                    continue
                self._rest(self.pause.failed(exc))
                return
            self.pause.accepted()
            self.on_connection(connection, address)

    def _rest(self, seconds: float) -> None:
        self.io_loop.remove_handler(self.sock)
        self._armed = False
        self._rest_timer = self.io_loop.call_later(seconds, self._arm)

    def close(self) -> None:
        """Stop accepting (``TCPServer.stop`` calls this, then closes the socket itself)."""
        self._closed = True
        if self._rest_timer is not None:
            self.io_loop.remove_timeout(self._rest_timer)
            self._rest_timer = None
        if self._armed:
            self.io_loop.remove_handler(self.sock)
            self._armed = False


class GuardedStream(IOStream):
    """The IOStream of one client connection, reading request heads within the edge's bounds.

    ``HTTP1Connection`` reads each request head with one ``read_until_regex`` call; this class times
    that call (header and idle timeouts) and turns an oversized head into a 431/414 reply.

    ``peer`` is the socket's remote address; ``address`` is the client address the connection is
    counted under in ``edge.connections`` ("" while it is not counted: no head yet, or probes only).
    """

    def __init__(self, sock: socket.socket, edge: EdgeServer, peer: str, read_chunk_size: int | None = None) -> None:
        super().__init__(sock, max_buffer_size=edge.limits.read_buffer_bytes, read_chunk_size=read_chunk_size)
        self.edge = edge
        self.peer = peer
        self.address = ""
        self.heads_read = 0
        self._target_bytes = 0  # the last head's request-target length, for a head Tornado cannot parse
        self._reading_head = False
        self._accepted_at = self.io_loop.time()
        self._handed_off = False

    # -- request heads ---------------------------------------------------------------------------
    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        if regex == tornado_internals.HEAD_END_PATTERN:
            # The same end of match, but the pattern starts with a literal, so the regex engine skips to
            # each newline at C speed instead of trying every position: 18 µs, not 1.5 ms, per 64 KB a
            # flood of long URLs makes it scan (that alone kept a core busy at ~1,000 requests/s).
            regex = _HEAD_END
        return asyncio.ensure_future(self._read_head(regex, max_bytes))

    async def _read_head(self, regex: bytes, max_bytes: int | None) -> bytes:
        limits = self.edge.limits
        self._reading_head = True
        try:
            if self.heads_read == 0:  # a new connection: the whole head within the header timeout
                deadline = self._accepted_at + limits.header_timeout
                head = await self._within(deadline, super().read_until_regex(regex, max_bytes), "header_timeout")
            else:  # kept alive: it may idle, but once a request begins its head must arrive in time
                first = await self._within(self.io_loop.time() + limits.idle_timeout, self.read_bytes(1), "idle")
                rest_max = None if max_bytes is None else max_bytes - 1
                deadline = self.io_loop.time() + limits.header_timeout
                head = first + await self._within(deadline, super().read_until_regex(regex, rest_max), "header_timeout")
        finally:
            self._reading_head = False
        self.heads_read += 1
        self._target_bytes = _target_length(head)
        return head

    async def _within(self, deadline: float, future: Awaitable[bytes], why: str) -> bytes:
        try:
            data: bytes = await gen.with_timeout(deadline, future, quiet_exceptions=StreamClosedError)
            return data
        except asyncio.TimeoutError:  # what gen.with_timeout raises (tornado.util.TimeoutError is its alias)
            if why == "idle":  # an idle kept-alive connection is simply closed
                self.edge.count_refusal("idle_timeout")
                self.close()
            else:
                self.reject(408, "Request timeout: headers not received in time", why)
            raise StreamClosedError() from None

    # -- refusing and closing ----------------------------------------------------------------------
    def reject(self, status: int, detail: str, why: str, headers: dict[str, str] | None = None) -> None:
        """Reply with a JSON error and close (lingering); nothing more is read from this client."""
        if self.closed():
            return
        self.edge.count_refusal(why)
        try:
            sock = self.socket.dup()
        except OSError:
            sock = None
        self.close()
        if sock is not None:
            linger_close(sock, error_response(status, detail, {**self.edge.cors_headers(), **(headers or {})}))

    def close(self, exc_info: Any = False) -> None:
        if not self.closed() and self._reading_head and isinstance(exc_info, UnsatisfiableReadError):
            self._reading_head = False
            status, detail, why = self._oversized_head()
            self.reject(status, detail, why)
            return
        super().close(exc_info)
        if self.address and not self._handed_off:  # once handed off, the writer releases it
            self.edge.connections.release(self.address)
            self.address = ""

    def count_as(self, client: str) -> bool:
        """Count this connection under ``client`` (moving its count if it was counted under another
        address); False, and nothing changed, when ``client`` already holds the cap."""
        if client == self.address:
            return True
        if not self.edge.connections.acquire(client):
            return False
        if self.address:
            self.edge.connections.release(self.address)
        self.address = client
        return True

    def _oversized_head(self) -> tuple[int, str, str]:
        # 414 when the request line alone is past the URL bound (a long URL, not many headers); if Tornado
        # ever keeps its buffer elsewhere, the answer is the still-correct 431.
        line = tornado_internals.buffered_prefix(self, self.edge.limits.max_url_bytes + 32)
        if b"\n" not in line and len(line) > self.edge.limits.max_url_bytes:
            return 414, "URI too long", "uri_too_long"
        return 431, "Request header fields too large", "header_too_large"

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        if data == tornado_internals.BARE_BAD_REQUEST:  # a head Tornado could not parse: answer in JSON
            if self._target_bytes > self.edge.limits.max_url_bytes:  # the URL bound answers first (protocol §11)
                self.edge.count_refusal("uri_too_long")
                data = error_response(414, "URI too long", self.edge.cors_headers())
            else:
                self.edge.count_refusal("bad_request")
                data = error_response(400, "Bad request: malformed request line or headers", self.edge.cors_headers())
        return super().write(data)

    def hand_off(self) -> str:
        """The connection leaves Tornado for the live writer, which has its own duplicate of the socket
        (``lifecycle.StreamOwner.open``): close this side, and return the address the per-address count
        was taken under ("" when none) — it stays taken, and the stream's owner gives it back."""
        if self.closed():  # the client left while its request was being answered
            raise StreamClosedError()
        self._handed_off = True
        self.close()
        return self.address


class _Guard(httputil.HTTPMessageDelegate):
    """Checks a request's head before the application sees it; refuses without reading the body."""

    def __init__(
        self, edge: EdgeServer, inner: httputil.HTTPMessageDelegate, conn: Any, stream: GuardedStream | None
    ) -> None:
        self.edge = edge
        self.inner = inner
        self.conn = conn
        self.stream = stream
        self.passed = False

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        refusal = self.edge.check_head(start_line, headers)
        extra: dict[str, str] = {}
        if refusal is None and self.stream is not None:
            if not self.edge.count_connection(self.stream, start_line.path, headers):
                refusal = 429, "Too many connections from this address", "connections_per_ip"
                extra = {"Retry-After": "1"}
        if refusal is None:
            self.passed = True
            return self.inner.headers_received(start_line, headers)
        status, detail, why = refusal
        stream = self.conn.detach()  # Tornado stops here: the body is never read
        if isinstance(stream, GuardedStream):
            stream.reject(status, detail, why, {**self.edge.cors_headers(headers.get("Origin")), **extra})
        else:  # not one of ours (cannot happen with EdgeServer); still never read the body
            stream.close()
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk) if self.passed else None

    def finish(self) -> None:
        if self.passed:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if self.passed:
            self.inner.on_connection_close()


class EdgeServer(HTTPServer):
    """Tornado's HTTPServer with the bounds of protocol §11 on every connection (see the module docstring)."""

    limits: EdgeLimits
    connections: ConnectionCounter
    accept_pause: AcceptPause

    def initialize(  # type: ignore[override]
        self,
        request_callback: Any,
        limits: EdgeLimits | None = None,
        connections: ConnectionCounter | None = None,
        on_refusal: Callable[[str], None] | None = None,
        cors_origins: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        if kwargs.get("ssl_options"):  # the live writer sends on the raw socket (tornado_internals)
            raise ValueError("lurestream does not terminate TLS: put it behind a TLS-terminating proxy")
        self.limits = limits or EdgeLimits()
        self.connections = connections or ConnectionCounter(self.limits.max_connections_per_ip)
        self.on_refusal = on_refusal
        self.accept_pause = AcceptPause(on_refusal)
        self.cors_origins = cors_origins
        super().initialize(
            request_callback,
            max_header_size=self.limits.max_header_bytes,
            max_body_size=self.limits.max_body_bytes,
            body_timeout=self.limits.header_timeout,
            **kwargs,
        )
        tornado_internals.disable_header_timeout(self)  # GuardedStream times heads itself (header vs idle)

    # -- accepting ------------------------------------------------------------------------------------
    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Accept on ``sockets`` with ``AcceptLoop`` instead of ``tornado.netutil.add_accept_handler``
        (which spins out of descriptors: see ``AcceptLoop``). ``add_socket`` and ``listen`` come here too;
        ``stop()`` still stops accepting (``tornado_internals.adopt_listener``, tests/test_descriptors.py)."""
        handle = tornado_internals.connection_handler(self)
        for sock in sockets:
            tornado_internals.register_listener(self, sock, AcceptLoop(sock, handle, self.accept_pause).close)

    # -- connections and requests ----------------------------------------------------------------
    def handle_stream(self, stream: IOStream, address: Any) -> None:
        # "local" for a Unix socket's (empty) address: "" would mean "not counted" to GuardedStream
        peer = str(address[0]) if isinstance(address, tuple) and address else "local"
        super().handle_stream(GuardedStream(stream.socket, self, peer, stream.read_chunk_size), address)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        stream = getattr(request_conn, "stream", None)  # HTTP1Connection.stream: the GuardedStream it reads
        guarded = stream if isinstance(stream, GuardedStream) else None
        return _Guard(self, super().start_request(server_conn, request_conn), request_conn, guarded)

    def client_address(self, peer: str, headers: httputil.HTTPHeaders) -> str:
        """The address a request is counted under: the peer's, or with ``xheaders`` (trust_proxy_headers)
        the client address the proxy reports (``forwarded_client``), the peer's when it reports none."""
        if self.xheaders:
            return forwarded_client(headers, self.trusted_downstream or ()) or peer
        return peer

    def count_connection(self, stream: GuardedStream, path: str, headers: httputil.HTTPHeaders) -> bool:
        """Count ``stream``'s connection against its client's address at a request head; False when that
        address already holds ``max_connections_per_ip`` (the caller answers 429).

        Probes (``PROBE_PATHS``) are never counted nor refused: a load balancer checks every backend from
        its one address, and a 429 there takes the whole site down. Any other request counts the
        connection once, for its whole life, under the client address of its first such request; if a
        later request on the same kept-alive connection is for another client (a proxy reusing its
        backend connections), the count moves to that client, so a connection is never counted twice.
        """
        if path.partition("?")[0] in PROBE_PATHS:
            return True
        return stream.count_as(self.client_address(stream.peer, headers))

    def check_head(
        self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders
    ) -> tuple[int, str, str] | None:
        """Why a request may not proceed (status, detail, metrics reason), or None."""
        limits = self.limits
        if len(start_line.path) > limits.max_url_bytes:
            return 414, "URI too long", "uri_too_long"
        if "Transfer-Encoding" in headers:
            return 411, "Length Required: send a Content-Length (request bodies are at most small JSON)", "chunked_body"
        lengths = headers.get_list("Content-Length")
        if lengths:
            if len(set(lengths)) > 1 or not all(v.isascii() and v.isdigit() for v in lengths) or len(lengths[0]) > 18:
                return 400, "Bad request: invalid Content-Length", "bad_request"
            if int(lengths[0]) > limits.max_body_bytes:
                return 413, f"Request body too large (at most {limits.max_body_bytes} bytes)", "body_too_large"
        return None

    def count_refusal(self, why: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(why)

    def cors_headers(self, origin: str | None = None) -> dict[str, str]:
        """The CORS headers an edge reply carries (protocol §11: ``Vary: Origin`` on every response)."""
        return replies.cors_headers(self.cors_origins, origin)
