"""StreamHandler: the one SSE lifecycle every stream shares (protocol §2, §7).

Order, all before any byte of the 200: auth (in ``prepare``) → the resource exists (404) → a per-user
slot (429). Then the connection leaves Tornado: the handler detaches it and hands the socket to the
process's live writer (``writer.py``), which registers the stream with the hub, sends the headers and
the opening keepalive at once, and from then on owns every byte the stream gets. The handler's last
job is the opening content — the replay of a resume (protocol §7), or else the snapshot — which it reads
while live events already queue in the stream (registered first, so nothing falls between), and then
the handler is gone: an open stream holds no handler, request, IOStream or coroutine.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from tornado.iostream import StreamClosedError

from lurestream import eventids, sse, tornado_internals
from lurestream.batching import StoreReads
from lurestream.cache import TTLCache
from lurestream.edge import GuardedStream
from lurestream.handlers.base import ApiError, BaseHandler
from lurestream.hub import Hub
from lurestream.limits import Slots
from lurestream.metrics import Metrics
from lurestream.routing import Key
from lurestream.snapshots import SnapshotReads
from lurestream.store import Store, StoreUnavailable
from lurestream.writer import ERROR, SNAPSHOT_FAILED, LiveStream, LiveWriter

log = logging.getLogger("lurestream.stream")


class StreamHandler(BaseHandler):
    """Subclasses say what the stream is about: ``load``, ``keys`` and ``snapshot``."""

    auth_required = True
    accept_ticket = True
    accept_session = True
    accept_query_token = True
    not_found = "Not found"
    kind = "stream"  # the metrics and tracing label: attacker or topology

    hub: Hub
    store: Store
    limiter: Slots
    metrics: Metrics
    tracer: Tracer
    snapshots: SnapshotReads
    resources: TTLCache[dict[str, Any] | None]
    writer: LiveWriter
    reads: StoreReads
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

    # -- tracing: one span per stream request, children for auth, existence and snapshot --------
    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        span = self.tracer.start_span(
            "lurestream.stream",
            kind=SpanKind.SERVER,
            attributes={"lurestream.stream.kind": self.kind, "url.path": self.request.path},
        )
        # without a tracing SDK the span records nothing: skip the per-step spans too (a connect storm
        # paid for three no-op context managers a connect)
        self._span = span if span.is_recording() else None
        with self._child("lurestream.auth") as span:
            try:
                await super().prepare()
            except ApiError as exc:
                span.set_attribute("lurestream.outcome", f"refused_{exc.status_code}")
                raise
            span.set_attribute("lurestream.outcome", "ok")

    # -- refusals that clear on their own ------------------------------------------------------------
    def write_api_error(self, status_code: int, error: ApiError | None) -> None:
        """A refusal that clears on its own (``retry_after``: the store unreachable, the slots of a process
        that died, a reconnect whose old slot is still counted), asked for by an SSE client, is answered
        200 with ``retry:`` and an ``unavailable`` frame, then the end of the response: a native
        EventSource treats any other status as final and would never reconnect (docs/protocol.md,
        "Waiting instead of an error"). Everyone else gets the JSON error with ``Retry-After``."""
        if (
            error is None
            or error.retry_after is None
            or "text/event-stream" not in self.request.headers.get("Accept", "")
        ):
            super().write_api_error(status_code, error)
            return
        retry_ms = int(error.retry_after * 1000 * random.uniform(0.75, 1.25))  # spread the reconnects
        self.set_status(200)
        for name in ("Retry-After", "WWW-Authenticate"):
            self.clear_header(name)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        data = {"status": status_code, "detail": error.detail, "retry_ms": retry_ms}
        self.finish(sse.retry_frame(retry_ms) + sse.encode_frame("unavailable", sse.dumps(data)))

    def _child(self, name: str, parent: Span | None = None) -> Any:
        parent = parent or self._span
        if parent is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self.tracer.start_as_current_span(name, context=trace.set_span_in_context(parent))

    def on_finish(self) -> None:
        """A refused request (401/403/404/429/503) ends its span here; a stream's span ends with it."""
        super().on_finish()
        span = self._span
        if span is not None:
            span.set_attribute("http.response.status_code", self.get_status())
            span.end()
            self._span = None

    # -- the lifecycle ---------------------------------------------------------------------------
    async def get(self, resource_id: str) -> None:
        try:
            await self._get(resource_id)
        finally:
            if tornado_internals.is_finished(self):  # handed to the writer (detached: no on_finish), or answered
                self.untrack()

    async def _get(self, resource_id: str) -> None:
        assert self.identity is not None
        if len(resource_id) > self.config.max_id_length:  # no id is that long: unknown, without a query
            self.metrics.http_refused.labels("id_too_long").inc()
            raise ApiError(404, self.not_found)
        with self._child("lurestream.load") as span:
            span.set_attribute("lurestream.stream.kind", self.kind)
            span.set_attribute("lurestream.stream.key", resource_id)
            try:
                resource = await self._load_cached(resource_id)
            except StoreUnavailable:
                span.set_attribute("lurestream.outcome", "store_unavailable")
                raise
            span.set_attribute("lurestream.outcome", "found" if resource is not None else "not_found")
        if resource is None:
            raise ApiError(404, self.not_found)
        user = self.identity.uuid
        if not self.limiter.try_acquire(user):
            wait = self.limiter.wait_hint(user, reconnecting=self.last_event_id() is not None)
            self.metrics.http_refused.labels("user_cap" if wait is None else "user_cap_wait").inc()
            raise ApiError(429, f"SSE connection limit ({self.limiter.max_per_user}) reached", retry_after=wait)
        try:
            live = self._hand_off(resource)
        except StreamClosedError:  # the client left before its stream began: nothing to answer
            self.limiter.release(user)
            if self._span is not None:
                self._span.set_attribute("lurestream.outcome", "client_gone")
                self._span.end()
                self._span = None
            return
        except BaseException:
            self.limiter.release(user)
            raise
        try:
            await self._open(resource, live)
        except Exception:
            log.exception("stream failed while opening")
            live.end(ERROR, sse.ERROR_FRAME)

    def _hand_off(self, resource: dict[str, Any]) -> LiveStream:
        """Leave Tornado: the response head goes out with the opening keepalive, and the live writer
        owns the connection from here (its slot, its per-address count, its span and metrics too)."""
        assert self.identity is not None
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        chunked = self.request.version == "HTTP/1.1"
        lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in tornado_internals.response_headers(self))]
        lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self._span is not None:
            self._span.set_attribute("lurestream.stream.key", str(resource["_id"]))
            self._span.set_attribute("http.response.status_code", 200)
        stream = self.detach()
        address = ""
        if isinstance(stream, GuardedStream):
            sock, address = stream.hand_off(), stream.address
        else:  # not behind the edge (cannot happen with make_server): still a socket of our own
            if stream.closed():
                raise StreamClosedError()
            sock = stream.socket.dup()
            stream.close()
        live = self.writer.open(
            sock, self.keys(resource), head, user=self.identity.uuid, kind=self.kind, address=address, chunked=chunked
        )
        self.application.log_request(self)  # the access line: the response has begun
        live.span, self._span = self._span, None
        identity = self.identity
        live.jti, live.iat, live.expires = identity.jti, identity.iat, identity.exp  # checked for its whole life
        live.session = identity.session
        self.metrics.streams_open.labels(self.kind).inc()
        self.metrics.connects.labels(self.kind).inc()
        return live

    def last_event_id(self) -> str | None:
        """The resume point: the ``Last-Event-ID`` header (what EventSource sends on its own
        reconnects, so the newest) or else ``?last_event_id=`` (for a rebuilt EventSource)."""
        header = self.request.headers.get("Last-Event-ID")
        if header is not None and header.strip():
            return header
        query = self.get_query_argument("last_event_id", None)
        return query if query is not None and query.strip() else None

    async def _open(self, resource: dict[str, Any], live: LiveStream) -> None:
        """The opening content: a resume's replay (protocol §7), or else the snapshot; then live."""
        requested = self.last_event_id()
        if requested is not None:
            outcome = await self.hub.resume(live, requested, max_bytes=self.config.stream_buffer_bytes)
            if outcome.failed is None:
                after = eventids.parse_id(requested)
                assert after is not None  # a resume only succeeds for an id of this stream
                head = sse.encode_frame(
                    "resumed", sse.dumps({"last_event_id": requested.strip(), "replayed": len(outcome.items)})
                )
                if live.span is not None:
                    live.span.set_attribute("lurestream.resume", "resumed")
                live.go_live([head, *(frame for _, frame, _ in outcome.items)], max(after[1], live.position or 0))
                return
            log.info("resume from %r not possible (%s); sending a snapshot", requested[:32], outcome.failed)
        with self._child("lurestream.snapshot", live.span) as span:
            span.set_attribute("lurestream.stream.kind", self.kind)
            started = time.perf_counter()
            try:  # identical concurrent reads share one query (see snapshots.py)
                snap = await self.snapshots.read(live.keys[0], live, lambda: self.snapshot(resource))
            except StoreUnavailable as exc:
                span.set_attribute("lurestream.outcome", "store_unavailable")
                log.warning("snapshot failed: %s", exc)
                live.end(SNAPSHOT_FAILED, sse.ERROR_FRAME)
                return
            self.metrics.snapshot_seconds.labels(self.kind).observe(time.perf_counter() - started)
            span.set_attribute("lurestream.outcome", "ok")
        data = snap.data
        if requested is not None:
            data["resumed"] = False
            if live.span is not None:
                live.span.set_attribute("lurestream.resume", "snapshot")
        position = None if snap.position is None else eventids.format_id(live.epoch, snap.position)
        frame = sse.encode_frame("snapshot", sse.dumps(data), position)
        live.go_live([frame, *(f for _, f, _ in snap.gap)], 0)
