"""The per-process fan-out: one NATS connection, one subscription per subject family, O(1) routing.

Invariants:
- One NATS connection and ``len(SUBJECT_FAMILIES)`` subscriptions per process, whatever the number of
  open streams; nats.py restores them itself after a reconnect, so open streams resume on their own.
- Each message is decoded once, routed with one dict look-up (see ``routing``), encoded once, and the
  same ``bytes`` is ``put_nowait`` into each matching stream's bounded queue. The hub never waits on a
  stream: a full queue is counted (``stats.overflows``) and logged once per stream.
- A malformed message is counted, logged (rate-limited) and skipped; it cannot harm a stream.
- Start-up never waits for NATS: if the first connect fails, a background task keeps trying.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from lurestream import sse
from lurestream.redact import redact
from lurestream.routing import SUBJECT_FAMILIES, Key, route
from lurestream.subscription import Subscription

log = logging.getLogger("lurestream.hub")

BUS_DISABLED = "disabled"
BUS_CONNECTED = "connected"
BUS_DISCONNECTED = "disconnected"


class MalformedMessage(ValueError):
    """A bus body that breaks SPEC §6; the message is skipped."""


@dataclass
class HubStats:
    """Counters a test, a log line or (later) /metrics can read."""

    received: int = 0
    malformed: int = 0
    unrouted: int = 0
    deliveries: int = 0
    overflows: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class Envelope:
    topic: str
    type: str
    ts: float
    payload: dict[str, Any]


def decode_envelope(subject: str, data: bytes, now: float | None = None) -> Envelope:
    """Parse a bus body (SPEC §6); the topic always comes from the subject, never from the body."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedMessage(f"not a JSON object but {type(body).__name__}")
    payload = body.get("payload", {})
    if not isinstance(payload, dict):
        raise MalformedMessage(f"payload is {type(payload).__name__}, not an object")
    type_ = body.get("type", "")
    if not isinstance(type_, str):
        raise MalformedMessage(f"type is {type(type_).__name__}, not a string")
    ts = body.get("ts")
    if ts is None:
        ts = time.time() if now is None else now
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise MalformedMessage(f"ts is {type(ts).__name__}, not a number")
    return Envelope(subject, type_, float(ts), payload)


class _RateLimitedLog:
    """Log at most one line per ``interval`` seconds and say how many were suppressed."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        log.warning(msg, *args)


class Hub:
    """Owns the process's NATS connection and the routing table ``key -> {Subscription}``."""

    def __init__(self, nats_url: str, queue_max: int, name: str | None = None, reconnect_wait: float = 1.0) -> None:
        self.nats_url = nats_url
        self.queue_max = queue_max
        # the connection name shows in NATS monitoring: which host and process holds it
        self.name = name or f"lurestream:{socket.gethostname()}:{os.getpid()}"
        self.reconnect_wait = reconnect_wait
        self.stats = HubStats()
        self._routes: dict[Key, set[Subscription]] = {}
        self._subscriptions = 0
        self._nc: NATS | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        self._malformed_log = _RateLimitedLog()

    # -- streams -------------------------------------------------------------------------------
    def subscribe(self, keys: Iterable[Key]) -> Subscription:
        """Register a stream for its keys; ``close()`` on the result unregisters it."""
        sub = Subscription(keys, self.queue_max, on_close=self._unregister, on_overflow=self._overflowed)
        for key in sub.keys:
            self._routes.setdefault(key, set()).add(sub)
        self._subscriptions += 1
        return sub

    def _unregister(self, sub: Subscription) -> None:
        for key in sub.keys:
            subs = self._routes.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._routes[key]
        self._subscriptions -= 1

    def _overflowed(self, sub: Subscription) -> None:
        log.warning("stream queue full (%d frames) for %s; dropping events for it", sub.maxsize, sub.keys[0])

    @property
    def subscription_count(self) -> int:
        """Open stream registrations (the leak guard checks this returns to 0)."""
        return self._subscriptions

    @property
    def routing_keys(self) -> int:
        return len(self._routes)

    def close_all(self) -> None:
        """Close every stream's subscription (shutdown): each handler wakes and ends its response."""
        for sub in {s for subs in self._routes.values() for s in subs}:
            sub.close()

    # -- routing -------------------------------------------------------------------------------
    def dispatch(self, subject: str, data: bytes) -> int:
        """Decode, route and enqueue one bus message; returns the number of streams it reached."""
        self.stats.received += 1
        try:
            env = decode_envelope(subject, data)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            self._malformed_log.warning("skipping malformed message on %s: %s", subject, exc)
            return 0
        target = route(subject, env.payload)
        if target is None or not (subs := self._routes.get(target.key)):
            self.stats.unrouted += 1
            return 0
        frame = sse.encode_event(target.event, env.topic, env.type, env.ts, env.payload)
        delivered = 0
        for sub in subs:
            if sub.put_nowait(frame):
                delivered += 1
            else:
                self.stats.overflows += 1
        self.stats.deliveries += delivered
        return delivered

    async def _message_cb(self, msg: Msg) -> None:
        self.dispatch(msg.subject, msg.data)

    # -- the bus -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if not self.nats_url:
            return BUS_DISABLED
        if self._nc is not None and self._nc.is_connected:
            return BUS_CONNECTED
        return BUS_DISCONNECTED

    async def start(self) -> None:
        """Begin connecting in the background; returns at once (serving never waits for the bus)."""
        if self.nats_url and self._connector is None:
            self._connector = asyncio.create_task(self._connect_loop(), name="lurestream-nats-connect")

    async def wait_connected(self, timeout: float) -> bool:
        """For start-up logs and tests: wait until the bus is up (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while self.state != BUS_CONNECTED and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.state == BUS_CONNECTED

    async def _connect_loop(self) -> None:
        servers = [u.strip() for u in self.nats_url.split(",") if u.strip()]
        attempt = 0
        while not self._closing:
            try:
                nc = await nats.connect(
                    servers=servers,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,
                    connect_timeout=2,
                    error_cb=self._error_cb,
                    disconnected_cb=self._disconnected_cb,
                    reconnected_cb=self._reconnected_cb,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nats.py raises a variety (NoServersError, OSError, TimeoutError)
                attempt += 1
                if attempt == 1 or attempt % 30 == 0:
                    log.warning("NATS unreachable at %s (%s); retrying in the background", redact(self.nats_url), exc)
                await asyncio.sleep(min(self.reconnect_wait * attempt, 5.0))
                continue
            for subject in SUBJECT_FAMILIES:
                await nc.subscribe(subject, cb=self._message_cb)
            self._nc = nc
            url = nc.connected_url
            where = f"{url.hostname}:{url.port}" if url is not None else redact(self.nats_url)
            log.info("NATS connected to %s as %r; subscribed to %s", where, self.name, ", ".join(SUBJECT_FAMILIES))
            return

    async def _error_cb(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def _disconnected_cb(self) -> None:
        if not self._closing:
            log.warning("NATS disconnected; reconnecting in the background")

    async def _reconnected_cb(self) -> None:
        self.stats.reconnects += 1
        log.info("NATS reconnected; subscriptions restored")

    async def close(self) -> None:
        """Stop connecting, close every stream, and close the NATS connection."""
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self.close_all()
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as exc:  # closing a half-dead connection must not break shutdown
                log.debug("error closing NATS: %s", exc)
            self._nc = None
