"""StreamHandler: the one SSE lifecycle every stream shares (SPEC §2).

Order, all before any byte of the 200: auth (in ``prepare``) → the resource exists (404) → a per-user
slot (429). Then: register with the hub for the stream's keys, put the headers and a keepalive on the
wire, read and send the snapshot, and forward queued frames until the client leaves. Registering
before the snapshot read means no event published after the snapshot can be missed.

One writer: only ``get()`` writes the response. ``on_connection_close`` just closes the subscription,
which wakes the loop; the slot and the registration are released in ``finally`` because
``on_connection_close`` does not run when the server itself closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.iostream import StreamClosedError

from lurestream import sse
from lurestream.handlers.base import STORE_UNAVAILABLE, ApiError, BaseHandler
from lurestream.hub import Hub
from lurestream.limits import ConnectionLimiter
from lurestream.routing import Key
from lurestream.store import Store, StoreUnavailable
from lurestream.subscription import Subscription

log = logging.getLogger("lurestream.stream")


class StreamHandler(BaseHandler):
    """Subclasses say what the stream is about: ``load``, ``keys`` and ``snapshot``."""

    auth_required = True
    accept_ticket = True
    accept_query_token = True
    not_found = "Not found"

    hub: Hub
    store: Store
    limiter: ConnectionLimiter
    subscription: Subscription | None = None

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

    # -- tunables (Application settings, like WebSocketHandler.ping_interval) --------------------
    @property
    def keepalive_seconds(self) -> float:
        return float(self.settings.get("keepalive_seconds", 15.0))

    @property
    def send_timeout_seconds(self) -> float:
        return float(self.settings.get("send_timeout_seconds", 10.0))

    # -- the lifecycle ---------------------------------------------------------------------------
    async def get(self, resource_id: str) -> None:
        assert self.identity is not None
        try:
            resource = await self.load(resource_id)
        except StoreUnavailable as exc:
            raise ApiError(503, STORE_UNAVAILABLE, str(exc)) from None
        if resource is None:
            raise ApiError(404, self.not_found)
        user = self.identity.uuid
        if not self.limiter.try_acquire(user):
            raise ApiError(429, f"SSE connection limit ({self.limiter.max_per_user}) reached")
        try:
            self.subscription = self.hub.subscribe(self.keys(resource))
            await self._stream(resource)
        finally:
            if self.subscription is not None:
                self.subscription.close()
            self.limiter.release(user)

    async def _stream(self, resource: dict[str, Any]) -> None:
        sub = self.subscription
        assert sub is not None
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self._send(sse.KEEPALIVE)
            try:
                data = await self.snapshot(resource)
            except StoreUnavailable as exc:
                log.warning("snapshot failed: %s", exc)
                await self._send(sse.ERROR_FRAME)
                return
            await self._send(sse.encode_frame("snapshot", sse.dumps(data)))
            keepalive = self.keepalive_seconds
            while True:
                frames = await sub.get_batch(keepalive)
                if frames is None:
                    return
                if not frames:
                    await self._send(sse.KEEPALIVE)
                else:  # one write per wake-up, however many frames queued meanwhile
                    await self._send(frames[0] if len(frames) == 1 else b"".join(frames))
        except (StreamClosedError, asyncio.TimeoutError):
            return  # client gone or not reading: nothing more can be written
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream failed")
            try:
                await self._send(sse.ERROR_FRAME)
            except Exception:  # the error frame is best effort; the response ends either way
                pass

    async def _send(self, chunk: bytes) -> None:
        """Write and flush; a flush that outlasts the send timeout closes the connection."""
        self.write(chunk)
        flushed = self.flush()
        if flushed.done():
            flushed.result()
            return
        try:
            await asyncio.wait_for(flushed, self.send_timeout_seconds)
        except asyncio.TimeoutError:
            log.warning("send timeout after %.1fs; closing %s", self.send_timeout_seconds, self._request_summary())
            self.request.connection.stream.close()  # type: ignore[union-attr]
            raise

    def on_connection_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
