"""One owner for a stream's life (protocol §2): admit → open → live → release.

A stream holds several things at once — its user's slot under the cap (protocol §13), the per-address
count the edge took for its connection (§11), its socket, its registration with its source (the hub or the
log tail), the ``streams_open`` gauge and its trace span. Each is taken in one place here, and each
acquisition pushes its own release onto the stream's :class:`StreamLife`; whatever ends the stream (the
client leaving, a lagging close, a drain, an expired credential, an exception while it opens), the life
gives everything back exactly once, newest first. Handlers read: credentials → 404 → ``admit`` →
``open``; a new kind of stream adds no lifecycle code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import tornado.web
from opentelemetry.trace import Span
from tornado.iostream import StreamClosedError

from lurestream import tornado_internals
from lurestream.auth import Identity
from lurestream.edge import ConnectionCounter, GuardedStream
from lurestream.limits import Slots
from lurestream.metrics import Metrics
from lurestream.routing import Key
from lurestream.writer import ERROR, LiveStream, LiveWriter, Source

log = logging.getLogger("lurestream.lifecycle")


class CapReached(Exception):
    """The user holds ``limit`` streams already; ``wait`` seconds when the refusal clears on its own
    (protocol §16, "Waiting instead of an error"), else None: final."""

    def __init__(self, limit: int, wait: float | None) -> None:
        super().__init__(f"SSE connection limit ({limit}) reached")
        self.limit = limit
        self.wait = wait


class NoDescriptors(Exception):
    """The process cannot take the connection over now (out of descriptors): a refusal that clears."""


class StreamLife:
    """Everything one stream holds: each acquisition pushes its release; :meth:`release` gives them all back
    once, newest first. Pushing onto a life already released gives the new thing back at once."""

    __slots__ = ("_releases",)

    def __init__(self) -> None:
        self._releases: list[Callable[[], None]] | None = []

    @property
    def released(self) -> bool:
        return self._releases is None

    def push(self, release: Callable[[], None]) -> None:
        if self._releases is None:
            release()
            return
        self._releases.append(release)

    def release(self, _stream: Any = None) -> None:
        """Give everything back (idempotent; usable as a stream's ``on_end``)."""
        releases, self._releases = self._releases, None
        for release in reversed(releases or ()):
            try:
                release()
            except Exception:  # one failed release must not keep the others
                log.exception("releasing a stream's resources")


class StreamOwner:
    """Admits and opens every stream of the process (one per process, owned by ``Services``)."""

    def __init__(self, limiter: Slots, connections: ConnectionCounter, writer: LiveWriter, metrics: Metrics) -> None:
        self.limiter = limiter
        self.connections = connections
        self.writer = writer
        self.metrics = metrics

    def admit(self, user: str, reconnecting: bool) -> StreamLife:
        """A life holding the user's slot under the cap, or :class:`CapReached`."""
        if not self.limiter.try_acquire(user):
            wait = self.limiter.wait_hint(user, reconnecting)
            self.metrics.http_refused.labels("user_cap" if wait is None else "user_cap_wait").inc()
            raise CapReached(self.limiter.max_per_user, wait)
        life = StreamLife()
        life.push(lambda: self.limiter.release(user))
        return life

    def open(
        self,
        life: StreamLife,
        handler: tornado.web.RequestHandler,
        source: Source,
        keys: list[Key],
        head: bytes,
        *,
        identity: Identity,
        kind: str,
        chunked: bool,
        span: Span | None = None,
    ) -> LiveStream:
        """Take the connection from Tornado and give it to the live writer, registered with ``source``.

        The socket is duplicated *before* the response leaves Tornado: out of descriptors, the request is
        still Tornado's and gets its refusal (:class:`NoDescriptors`) instead of a stream that cannot exist.
        :class:`StreamClosedError` when the client left meanwhile (nothing to answer).
        """
        try:
            sock = tornado_internals.connection_socket(handler).dup()
        except OSError as exc:
            raise NoDescriptors(str(exc)) from None
        life.push(sock.close)  # until the writer owns it (closing twice is harmless)
        stream = handler.detach()
        if stream.closed():
            raise StreamClosedError()
        if isinstance(stream, GuardedStream):  # the per-address count follows the socket
            address = stream.hand_off()
            if address:
                life.push(lambda: self.connections.release(address))
        else:
            stream.close()
        live = self.writer.open(
            sock, source, keys, head, user=identity.uuid, kind=kind, chunked=chunked, on_end=life.release
        )
        live.jti, live.iat, live.expires = identity.jti, identity.iat, identity.exp  # checked for its whole life
        live.session = identity.session
        self.metrics.streams_open.labels(kind).inc()
        self.metrics.connects.labels(kind).inc()
        life.push(lambda: self._ended(live, kind, span))
        life.push(lambda: self.writer.abort(live, live.reason or ERROR))  # a life ended early ends the stream
        return live

    def _ended(self, live: LiveStream, kind: str, span: Span | None) -> None:
        reason = live.reason or "client_closed"
        self.metrics.streams_open.labels(kind).dec()
        self.metrics.disconnects.labels(kind, reason).inc()
        if span is not None:
            span.add_event("stream.end", {"reason": reason})
            span.end()
