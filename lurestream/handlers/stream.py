"""The SSE endpoints: one request lifecycle for every kind of stream (protocol §2, §7, §14, §15).

Order, all before any byte of the 200: credentials (in ``prepare``) → the resource exists (404, kinds with
an id) → admission (the per-user cap, 429) → the connection leaves Tornado for the process's live writer
(``lifecycle.StreamOwner.open``), which registers the stream with its source and sends the headers and the
opening keepalive at once. The handler's last job is the opening content — a resume's replay, or else
the snapshot — read while live events already queue in the stream (registered first, so nothing falls
between); then the handler is gone: an open stream holds no handler, request, IOStream or coroutine.
Everything a stream holds is owned by its ``StreamLife`` and given back once, whatever ends it.

``LiveHandler`` is that lifecycle; ``StreamHandler`` serves every bus kind declared in ``kinds.py``; the
live log feed (``logfeed.py``) is the other ``LiveHandler``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from tornado.iostream import StreamClosedError

from lurestream import eventids, sse, tornado_internals
from lurestream.handlers.base import ApiError, BaseHandler
from lurestream.kinds import KINDS, Resource, StreamKind
from lurestream.lifecycle import CapReached, NoDescriptors, StreamLife
from lurestream.routing import EVERY, Key
from lurestream.services import Services
from lurestream.store import StoreUnavailable
from lurestream.writer import ERROR, SNAPSHOT_FAILED, LiveStream, Source

log = logging.getLogger("lurestream.stream")

SERVER_BUSY = "Server busy"


class LiveHandler(BaseHandler):
    """What every SSE endpoint shares: credentials, tracing, admission, the hand-off, waiting answers."""

    auth_required = True
    accept_ticket = True
    accept_session = True
    accept_query_token = True
    label = "stream"  # the metrics and tracing label of the stream kind
    resume_query = "last_event_id"  # the query parameter of a resume point (EventSource cannot send headers)
    _span: Span | None = None

    # -- tracing: one span per stream request, children for auth, existence and snapshot --------
    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        span = self.services.tracer.start_span(
            "lurestream.stream",
            kind=SpanKind.SERVER,
            attributes={"lurestream.stream.kind": self.label, "url.path": self.request.path},
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

    def _child(self, name: str, parent: Span | None = None) -> Any:
        parent = parent or self._span
        if parent is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self.services.tracer.start_as_current_span(name, context=trace.set_span_in_context(parent))

    def on_finish(self) -> None:
        """A refused request (401/403/404/429/503) ends its span here; a stream's span ends with it."""
        super().on_finish()
        span = self._span
        if span is not None:
            span.set_attribute("http.response.status_code", self.get_status())
            span.end()
            self._span = None

    # -- refusals that clear on their own ------------------------------------------------------------
    def write_api_error(self, status_code: int, error: ApiError | None) -> None:
        """A refusal that clears on its own (``retry_after``: the store unreachable, the slots of a process
        that died, a reconnect whose old slot is still counted), asked for by an SSE client, is answered
        200 with ``retry:`` and an ``unavailable`` frame, then the end of the response: a native
        EventSource treats any other status as final and would never reconnect (protocol §16, "Waiting
        instead of an error"). Everyone else gets the JSON error with ``Retry-After``."""
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

    # -- the lifecycle ---------------------------------------------------------------------------
    def last_event_id(self) -> str | None:
        """The resume point: the ``Last-Event-ID`` header (what EventSource sends on its own reconnects,
        so the newest) or else the query parameter (for a rebuilt EventSource)."""
        header = self.request.headers.get("Last-Event-ID")
        if header is not None and header.strip():
            return header
        query = self.get_query_argument(self.resume_query, None)
        return query if query is not None and query.strip() else None

    def admit(self) -> StreamLife:
        """The user's slot under the cap, or the 429 (a wait, when it clears on its own)."""
        assert self.identity is not None
        try:
            return self.services.streams.admit(self.identity.uuid, reconnecting=self.last_event_id() is not None)
        except CapReached as exc:
            raise ApiError(429, str(exc), retry_after=exc.wait) from None

    def go_live(self, life: StreamLife, source: Source, keys: list[Key], key_label: str) -> LiveStream | None:
        """Leave Tornado: the response head goes out with the opening keepalive, and the live writer owns
        the connection from here. None when the client has already gone (nothing to answer)."""
        assert self.identity is not None
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        chunked = self.request.version == "HTTP/1.1"
        lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in tornado_internals.response_headers(self))]
        lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        span = self._span
        if span is not None:
            span.set_attribute("lurestream.stream.key", key_label)
            span.set_attribute("http.response.status_code", 200)
        try:
            live = self.services.streams.open(
                life, self, source, keys, head, identity=self.identity, kind=self.label, chunked=chunked, span=span
            )
        except NoDescriptors as exc:  # still Tornado's request: a refusal that clears when descriptors free
            life.release()
            raise ApiError(503, SERVER_BUSY, f"cannot take the connection over: {exc}", retry_after=1.0) from None
        except StreamClosedError:  # the client left before its stream began
            life.release()
            if span is not None:
                span.set_attribute("lurestream.outcome", "client_gone")
                span.end()
                self._span = None
            return None
        except BaseException:
            life.release()
            raise
        self._span = None  # the stream's life ends it now
        live.span = span
        self.application.log_request(self)  # the access line: the response has begun
        return live

    async def get(self, *args: str) -> None:
        try:
            await self.serve(*args)
        finally:
            if tornado_internals.is_finished(self):  # handed to the writer (detached: no on_finish), or answered
                self.untrack()

    async def serve(self, *args: str) -> None:
        raise NotImplementedError


class StreamHandler(LiveHandler):
    """A stream of bus events of one kind (``kinds.py``): its resource, keys and snapshot are the kind's."""

    def initialize(self, services: Services, kind: StreamKind) -> None:  # type: ignore[override]
        super().initialize(services)
        self.kind = kind
        self.label = kind.name

    async def serve(self, *args: str) -> None:
        resource = await self._resource(args[0] if args else None)
        life = self.admit()
        live = self.go_live(life, self.services.hub, self.kind.keys(resource), str(resource["_id"]))
        if live is None:
            return
        try:
            await self._open(resource, live)
        except Exception:
            log.exception("stream failed while opening")
            live.end(ERROR, sse.ERROR_FRAME)

    async def _resource(self, resource_id: str | None) -> Resource:
        """The kind's resource: the id's document (404 when unknown, protocol §2), or a firehose's scope."""
        kind, config = self.kind, self.config
        if kind.load is None:
            scope = EVERY
            for name in kind.scope:  # ?decky=<uuid>: one decky's events only (protocol §14)
                value = self.get_query_argument(name, None)
                if value is not None:
                    if not value or len(value) > config.max_id_length:
                        raise ApiError(400, f"{name} must be 1 to {config.max_id_length} characters")
                    scope = value
            return {"_id": scope}
        assert resource_id is not None
        if len(resource_id) > config.max_id_length:  # no id is that long: unknown, without a query
            self.metrics.http_refused.labels("id_too_long").inc()
            raise ApiError(404, kind.not_found)
        load = kind.load
        with self._child("lurestream.load") as span:
            span.set_attribute("lurestream.stream.kind", kind.name)
            span.set_attribute("lurestream.stream.key", resource_id)
            try:  # a connect storm on one attacker reads it once: a 1 s per-process cache
                resource = await self.services.resources.get_or_load(
                    f"{kind.name}:{resource_id}", lambda: load(self.services.kind_reads, resource_id)
                )
            except StoreUnavailable:
                span.set_attribute("lurestream.outcome", "store_unavailable")
                raise
            span.set_attribute("lurestream.outcome", "found" if resource is not None else "not_found")
        if resource is None:
            raise ApiError(404, kind.not_found)
        return resource

    async def _open(self, resource: Resource, live: LiveStream) -> None:
        """The opening content: a resume's replay (protocol §7), or else the snapshot; then live."""
        hub, config = self.services.hub, self.config
        requested = self.last_event_id()
        if requested is not None:
            outcome = await hub.resume(live, requested, max_bytes=config.stream_buffer_bytes)
            if outcome.failed is None:
                after = eventids.parse_id(requested)
                assert after is not None  # a resume only succeeds for an id of this stream
                head = sse.encode_frame(
                    "resumed", sse.dumps({"last_event_id": requested.strip(), "replayed": len(outcome.items)})
                )
                if live.span is not None:
                    live.span.set_attribute("lurestream.resume", "resumed")
                live.go_live([head, *(item.frame for item in outcome.items)], max(after[1], live.position or 0))
                return
            log.info("resume from %r not possible (%s); sending a snapshot", requested[:32], outcome.failed)
        with self._child("lurestream.snapshot", live.span) as span:
            span.set_attribute("lurestream.stream.kind", self.kind.name)
            started = time.perf_counter()
            snapshot = self.kind.snapshot
            try:  # identical concurrent reads share one query (see snapshots.py)
                snap = await self.services.snapshots.read(
                    live.keys[0], live, lambda: snapshot(self.services.kind_reads, resource)
                )
            except StoreUnavailable as exc:
                span.set_attribute("lurestream.outcome", "store_unavailable")
                log.warning("snapshot failed: %s", exc)
                live.end(SNAPSHOT_FAILED, sse.ERROR_FRAME)
                return
            self.metrics.snapshot_seconds.labels(self.kind.name).observe(time.perf_counter() - started)
            span.set_attribute("lurestream.outcome", "ok")
        data = snap.data
        if requested is not None:
            data["resumed"] = False
            if live.span is not None:
                live.span.set_attribute("lurestream.resume", "snapshot")
        position = None if snap.position is None else eventids.format_id(live.epoch, snap.position)
        frame = sse.encode_frame("snapshot", sse.dumps(data), position)
        live.go_live([frame, *(item.frame for item in snap.gap)], 0)


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [(kind.path, StreamHandler, {"services": services, "kind": kind}) for kind in KINDS]
