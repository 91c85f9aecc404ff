"""StreamHandler: the one SSE lifecycle every stream shares (SPEC §2).

Order, all before any byte of the 200: auth (in ``prepare``) → the resource exists (404) → a per-user
slot (429). Then: register with the hub for the stream's keys, put the headers and a keepalive on the
wire, send the replay of a resume (SPEC §7) or else the snapshot, and forward queued frames until the
client leaves. Registering first means no event published meanwhile can be missed: it waits in the
queue, and after a resume items the client already has are dropped by sequence.
A lagging or draining end sends what is queued and a jittered ``retry:`` hint before closing.

One writer: only ``get()`` writes the response. ``on_connection_close`` just closes the subscription,
which wakes the loop; the slot and the registration are released in ``finally`` because
``on_connection_close`` does not run when the server itself closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from lurestream import sse
from lurestream.cache import TTLCache
from lurestream.handlers.base import STORE_UNAVAILABLE, ApiError, BaseHandler
from lurestream.hub import Hub
from lurestream.limits import ConnectionLimiter
from lurestream.metrics import Metrics
from lurestream.routing import Key
from lurestream.snapshots import SnapshotReads
from lurestream.store import Store, StoreUnavailable
from lurestream.subscription import DRAINING, LAGGING, Subscription

log = logging.getLogger("lurestream.stream")

# Tornado's per-connection write buffer bound once live forwarding starts: one batch (at most
# LURESTREAM_QUEUE_MAX frames) is written and flushed at a time, so this is only ever hit by runaway frames.
WRITE_BUFFER_MAX = 4 * 1024 * 1024


class StreamHandler(BaseHandler):
    """Subclasses say what the stream is about: ``load``, ``keys`` and ``snapshot``."""

    auth_required = True
    accept_ticket = True
    accept_query_token = True
    not_found = "Not found"
    kind = "stream"  # the metrics and tracing label: attacker or topology

    hub: Hub
    store: Store
    limiter: ConnectionLimiter
    metrics: Metrics
    tracer: Tracer
    snapshots: SnapshotReads
    resources: TTLCache[dict[str, Any] | None]
    subscription: Subscription | None = None
    end_reason = "client_closed"
    _span: Span | None = None

    # -- what a concrete stream provides ---------------------------------------------------------
    async def load(self, resource_id: str) -> dict[str, Any] | None:
        """The resource document, or None (→ 404)."""
        raise NotImplementedError

    def keys(self, resource: dict[str, Any]) -> list[Key]:
        """The routing keys whose events this stream forwards."""
        raise NotImplementedError

    async def snapshot(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The data of the ``snapshot`` frame."""
        raise NotImplementedError

    async def _load_cached(self, resource_id: str) -> dict[str, Any] | None:
        """``load`` behind a 1 s per-process cache: a connect storm on one attacker reads it once."""
        return await self.resources.get_or_load(f"{self.kind}:{resource_id}", lambda: self.load(resource_id))

    # -- tunables (Application settings, like WebSocketHandler.ping_interval) --------------------
    @property
    def keepalive_seconds(self) -> float:
        return float(self.settings.get("keepalive_seconds", 15.0))

    @property
    def send_timeout_seconds(self) -> float:
        return float(self.settings.get("send_timeout_seconds", 10.0))

    # -- tracing: one span per stream request, children for auth, existence and snapshot --------
    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        self._span = self.tracer.start_span(
            "lurestream.stream",
            kind=SpanKind.SERVER,
            attributes={"lurestream.stream.kind": self.kind, "url.path": self.request.path},
        )
        with self._child("lurestream.auth") as span:
            try:
                await super().prepare()
            except ApiError as exc:
                span.set_attribute("lurestream.outcome", f"refused_{exc.status_code}")
                raise
            span.set_attribute("lurestream.outcome", "ok")

    def _child(self, name: str) -> Any:
        context = trace.set_span_in_context(self._span) if self._span is not None else None
        return self.tracer.start_as_current_span(name, context=context)

    def on_finish(self) -> None:
        span = self._span
        if span is not None:
            span.set_attribute("http.response.status_code", self.get_status())
            if self.subscription is not None:
                span.add_event("stream.end", {"reason": self.end_reason})
            span.end()
            self._span = None

    # -- the lifecycle ---------------------------------------------------------------------------
    async def get(self, resource_id: str) -> None:
        assert self.identity is not None
        if len(resource_id) > self.config.max_id_length:  # no id is that long: unknown, without a query
            self.metrics.http_refused.labels("id_too_long").inc()
            raise ApiError(404, self.not_found)
        with self._child("lurestream.load") as span:
            span.set_attribute("lurestream.stream.kind", self.kind)
            span.set_attribute("lurestream.stream.key", resource_id)
            try:
                resource = await self._load_cached(resource_id)
            except StoreUnavailable as exc:
                span.set_attribute("lurestream.outcome", "store_unavailable")
                raise ApiError(503, STORE_UNAVAILABLE, str(exc)) from None
            span.set_attribute("lurestream.outcome", "found" if resource is not None else "not_found")
        if resource is None:
            raise ApiError(404, self.not_found)
        user = self.identity.uuid
        if not self.limiter.try_acquire(user):
            raise ApiError(429, f"SSE connection limit ({self.limiter.max_per_user}) reached")
        if self._span is not None:
            self._span.set_attribute("lurestream.stream.key", resource_id)
        open_streams = self.metrics.streams_open.labels(self.kind)
        open_streams.inc()
        self.metrics.connects.labels(self.kind).inc()
        try:
            self.subscription = self.hub.subscribe(self.keys(resource))
            await self._stream(resource)
        finally:
            if self.subscription is not None:
                self.subscription.close()
            self.limiter.release(user)
            open_streams.dec()
            self.metrics.disconnects.labels(self.kind, self.end_reason).inc()

    async def _stream(self, resource: dict[str, Any]) -> None:
        sub = self.subscription
        assert sub is not None
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self._send(sse.KEEPALIVE)
            floor = await self._open(resource, sub)
            if floor is None:
                return
            self._iostream().max_write_buffer_size = WRITE_BUFFER_MAX  # safety net: one batch in flight at a time
            await self._forward(sub, floor)
        except (StreamClosedError, asyncio.TimeoutError):
            return  # client gone or not reading: nothing more can be written
        except StreamBufferFullError:
            self.end_reason = "lagging"
            self.hub.record_lagging()
            log.warning("write buffer full; closing %s", self._request_summary())
            self._iostream().close()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.end_reason = "error"
            log.exception("stream failed")
            try:
                await self._send(sse.ERROR_FRAME)
            except Exception:  # the error frame is best effort; the response ends either way
                pass

    def last_event_id(self) -> str | None:
        """The resume point: the ``Last-Event-ID`` header (what EventSource sends on its own
        reconnects, so the newest) or else ``?last_event_id=`` (for a rebuilt EventSource)."""
        header = self.request.headers.get("Last-Event-ID")
        if header is not None and header.strip():
            return header
        query = self.get_query_argument("last_event_id", None)
        return query if query is not None and query.strip() else None

    async def _open(self, resource: dict[str, Any], sub: Subscription) -> int | None:
        """Send what comes before live events: the replay of a resume, or the snapshot.

        Returns the sequence at or below which live items are duplicates, or None when the stream
        cannot go on (the snapshot read failed and an error frame was sent).
        """
        requested = self.last_event_id()
        if requested is not None:
            outcome = await self.hub.resume(sub, requested)
            if outcome.failed is None:
                after = int(requested.strip())
                head = sse.encode_frame(
                    "resumed", sse.dumps({"last_event_id": str(after), "replayed": len(outcome.items)})
                )
                if self._span is not None:
                    self._span.set_attribute("lurestream.resume", "resumed")
                await self._send(b"".join([head, *(frame for _, frame, _ in outcome.items)]))
                return max(after, sub.position or 0)
            log.info("resume from %r not possible (%s); sending a snapshot", requested[:32], outcome.failed)
        with self._child("lurestream.snapshot") as span:
            span.set_attribute("lurestream.stream.kind", self.kind)
            started = time.perf_counter()
            try:  # identical concurrent reads share one query (see snapshots.py)
                snap = await self.snapshots.read(sub.keys[0], sub, lambda: self.snapshot(resource))
            except StoreUnavailable as exc:
                span.set_attribute("lurestream.outcome", "store_unavailable")
                log.warning("snapshot failed: %s", exc)
                self.end_reason = "snapshot_failed"
                await self._send(sse.ERROR_FRAME)
                return None
            self.metrics.snapshot_seconds.labels(self.kind).observe(time.perf_counter() - started)
            span.set_attribute("lurestream.outcome", "ok")
        data = snap.data
        if requested is not None:
            data["resumed"] = False
            if self._span is not None:
                self._span.set_attribute("lurestream.resume", "snapshot")
        position = None if snap.position is None else str(snap.position)
        frame = sse.encode_frame("snapshot", sse.dumps(data), position)
        await self._send(b"".join([frame, *(f for _, f, _ in snap.gap)]) if snap.gap else frame)
        return 0

    async def _forward(self, sub: Subscription, floor: int) -> None:
        """Live frames until the subscription ends; a lagging or draining end gets a ``retry:`` hint."""
        keepalive = self.keepalive_seconds
        while True:
            batch = await sub.get_batch(keepalive)
            if batch is None:
                if sub.reason in (LAGGING, DRAINING):
                    self.end_reason = sub.reason
                    await self._send(sse.retry_frame(self._retry_hint()))
                return
            if not batch:
                position = self.hub.live_position
                await self._send(sse.keepalive_frame(None if position is None else max(position, floor)))
                continue
            if floor and batch[0][0] <= floor:  # only right after a resume: drop what the client has
                batch = [item for item in batch if item[0] > floor]
                if not batch:
                    continue
            # one write per wake-up, however many frames queued meanwhile
            await self._send(batch[0][1] if len(batch) == 1 else b"".join([frame for _, frame, _ in batch]))
            self.metrics.delivery_seconds.observe(max(time.time() - batch[0][2], 0.0))

    def _retry_hint(self) -> int:
        """Jittered, so a drain or a burst of lagging closes does not bring every client back at once."""
        base = int(self.settings.get("retry_ms", 3000))
        return int(base * random.uniform(0.5, 1.5))

    async def _send(self, chunk: bytes) -> None:
        """Write and flush; a flush that outlasts the send timeout closes the connection.

        Only one write is in flight per stream, so its memory is the queue plus ``unflushed`` bytes.
        """
        self.write(chunk)
        flushed = self.flush()
        if flushed.done():
            flushed.result()
            return
        sub = self.subscription
        if sub is not None:
            sub.unflushed = len(chunk)
        try:
            await asyncio.wait_for(flushed, self.send_timeout_seconds)
            if sub is not None:
                sub.unflushed = 0
        except asyncio.TimeoutError:
            self.end_reason = "send_timeout"
            self.hub.record_send_timeout()
            log.warning("send timeout after %.1fs; closing %s", self.send_timeout_seconds, self._request_summary())
            self._iostream().close()
            raise

    def _iostream(self) -> IOStream:
        """The connection's IOStream (HTTP/1.1 connections expose it as ``.stream``)."""
        return self.request.connection.stream  # type: ignore[union-attr,no-any-return]

    def on_connection_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
