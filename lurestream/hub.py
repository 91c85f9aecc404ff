"""The per-process fan-out: one NATS connection, one subscription per subject family, O(1) routing.

Invariants:
- One NATS connection and ``len(SUBJECT_FAMILIES)`` subscriptions per process, whatever the number of
  open streams; nats.py restores them itself after a reconnect, so open streams resume on their own.
- Each message is decoded once, routed with one dict look-up (see ``routing``), encoded once, and the
  same ``(sequence, bytes)`` item is ``put_nowait`` into each matching stream's bounded queue. The hub
  never waits on a stream: a full queue ends that stream as lagging (``stats.lagging``), logged once.
- With JetStream (``jetstream=<stream>``) the process consumes the stream with one ordered consumer
  instead of the family subscriptions; frames then carry ``id: <stream sequence>``, ``position`` is
  the last sequence dispatched, and ``resume`` replays a range for one reconnecting stream.
- Resumes are served from memory when they can: the hub keeps the last ``replay_max`` routed events
  (the same shared items) and, at start-up, first reads that many retained messages into this memory
  only — so a process that has just started (a rolling deploy) resumes the streams drained from the
  old ones without a JetStream read each. Older ids fall back to a bounded JetStream scan.
- A malformed message is counted, logged (rate-limited) and skipped; it cannot harm a stream.
- Start-up never waits for NATS: if the first connect fails, a background task keeps trying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from lurestream import jetstream, sse
from lurestream.envelope import DEFAULT_MAX_BYTES, Envelope, MalformedMessage, decode_envelope
from lurestream.metrics import Metrics
from lurestream.redact import redact
from lurestream.replay import Item, Replayer, ReplayMemory, Resume
from lurestream.routing import SUBJECT_FAMILIES, Key, Route, route

log = logging.getLogger("lurestream.hub")

BUS_DISABLED = "disabled"
BUS_CONNECTED = "connected"
BUS_DISCONNECTED = "disconnected"


@dataclass
class HubStats:
    """Counters a test, a log line or (later) /metrics can read."""

    received: int = 0
    malformed: int = 0
    unrouted: int = 0
    deliveries: int = 0
    lagging: int = 0
    send_timeouts: int = 0
    reconnects: int = 0
    resumed: int = 0
    resumed_from_stream: int = 0  # of those, the ones older than memory, read from JetStream
    replayed: int = 0
    resume_failed: dict[str, int] = field(default_factory=dict)


class Subscriber(Protocol):
    """What the hub routes to: a stream in its live phase (``writer.LiveStream``)."""

    keys: tuple[Key, ...]
    position: int | None
    serial: int

    def put_nowait(self, item: Item) -> bool: ...


def _item(target: Route, env: Envelope, seq: int) -> Item:
    """The queue item of a routed event, encoded once: ``seq`` (0 without JetStream) becomes its ``id:``."""
    return seq, sse.encode_event(target.event, env.topic, env.type, env.ts, env.payload, seq or None), env.ts


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
    """Owns the process's NATS connection and the routing table ``key -> {stream}``."""

    def __init__(
        self,
        nats_url: str,
        queue_max: int,
        name: str | None = None,
        reconnect_wait: float = 1.0,
        jetstream: str = "",
        stream_config: api.StreamConfig | None = None,
        replay_max: int = 10000,
        replay_memory: int = -1,
        metrics: Metrics | None = None,
        max_message_bytes: int = DEFAULT_MAX_BYTES,
        replay_memory_bytes: int = 64 * 2**20,
    ) -> None:
        self.nats_url = nats_url
        self.max_message_bytes = max_message_bytes
        self.queue_max = queue_max
        self.jetstream = jetstream
        self.stream_config = stream_config  # creates the stream when it is missing
        self.replay_max = replay_max
        self.position: int | None = None  # last stream sequence dispatched (JetStream only)
        # how many routed events are kept for resumes: replay_max, or fewer if the stream keeps fewer
        self.memory = ReplayMemory(
            replay_max if replay_memory < 0 else min(replay_memory, replay_max), replay_memory_bytes
        )
        self.stats = HubStats()
        self.replayer = Replayer(self.memory, replay_max, self._replay_item, metrics, self.stats)
        self._live_from = 0  # the first sequence streams receive; earlier ones only fill the memory
        self._caught_up = asyncio.Event()
        self._js: JetStreamContext | None = None
        self._consumer: JetStreamContext.PushSubscription | None = None
        # the connection name shows in NATS monitoring: which host and process holds it
        self.name = name or f"lurestream:{socket.gethostname()}:{os.getpid()}"
        self.reconnect_wait = reconnect_wait
        self.metrics = metrics
        self._routes: dict[Key, set[Subscriber]] = {}
        self._registered: set[Subscriber] = set()
        self.serial = 0  # counts registrations: orders them against snapshot reads (see snapshots.py)
        self.on_delivered: Callable[[float], None] | None = None  # an event's ts, once per delivered event
        # told when the bus comes up (with its JetStream context, or None) and when it goes down or back
        self.on_connected: list[Callable[[JetStreamContext | None], Awaitable[None]]] = []
        self.on_bus_state: list[Callable[[bool], None]] = []
        self._nc: NATS | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        self._malformed_log = _RateLimitedLog()
        self._bus_log = _RateLimitedLog(60.0)  # SPEC §11: a bus that stays down is logged once a minute

    # -- streams -------------------------------------------------------------------------------
    def register(self, stream: Subscriber) -> None:
        """Route the events of ``stream.keys`` to it from now on; it records where it registered."""
        stream.position = self.live_position
        self.serial += 1
        stream.serial = self.serial
        for key in stream.keys:
            self._routes.setdefault(key, set()).add(stream)
        self._registered.add(stream)

    def unregister(self, stream: Subscriber) -> None:
        """Stop routing to ``stream`` (idempotent)."""
        if stream not in self._registered:
            return
        self._registered.discard(stream)
        for key in stream.keys:
            subs = self._routes.get(key)
            if subs is not None:
                subs.discard(stream)
                if not subs:
                    del self._routes[key]

    def record_lagging(self) -> None:
        """Count a stream closed for falling behind."""
        self.stats.lagging += 1
        if self.metrics is not None:
            self.metrics.lagging.inc()

    def record_send_timeout(self) -> None:
        self.stats.send_timeouts += 1
        if self.metrics is not None:
            self.metrics.send_timeouts.inc()

    @property
    def subscription_count(self) -> int:
        """Open stream registrations (the leak guard checks this returns to 0)."""
        return len(self._registered)

    @property
    def live_position(self) -> int | None:
        """The stream position a stream registering now starts after (None without JetStream)."""
        if self.position is None:
            return None
        return max(self.position, self._live_from - 1)

    @property
    def routing_keys(self) -> int:
        return len(self._routes)

    def open_subscriptions(self) -> list[Subscriber]:
        return list(self._registered)

    # -- routing -------------------------------------------------------------------------------
    def dispatch(self, subject: str, data: bytes, seq: int = 0) -> int:
        """Decode, route and enqueue one bus message; returns the number of streams it reached.

        ``seq`` is the JetStream stream sequence (0 without JetStream); it becomes the frame's ``id:``
        and the event is remembered for resumes. Sequences before ``_live_from`` (the start-up
        catch-up) are only remembered.
        """
        self.stats.received += 1
        metrics = self.metrics
        if metrics is not None:
            metrics.bus_message(subject)
        if seq:
            if self.position is not None and seq <= self.position:
                return 0  # already dispatched (a consumer reset re-delivered it)
            self.position = seq
            if seq + 1 >= self._live_from:
                self._caught_up.set()
        try:
            env = decode_envelope(subject, data, max_bytes=self.max_message_bytes)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            if metrics is not None:
                metrics.bus_malformed.inc()
            self._malformed_log.warning("skipping malformed message on %s: %s", subject, exc)
            return 0
        target = route(subject, env.payload)
        subs = None if target is None else self._routes.get(target.key)
        if seq and target is not None:
            item = _item(target, env, seq)
            self.memory.remember(seq, target.key, item)
            if seq < self._live_from:
                return 0
        if not subs or target is None:
            self.stats.unrouted += 1
            if metrics is not None:
                metrics.events_unrouted.inc()
            return 0
        if not seq:
            item = _item(target, env, 0)
        delivered = 0
        for sub in tuple(subs):  # a copy: a lagging stream unregisters itself while we iterate
            if sub.put_nowait(item):
                delivered += 1
        self.stats.deliveries += delivered
        if delivered:
            if metrics is not None:
                metrics.events_forwarded.inc(delivered)
            if self.on_delivered is not None:
                self.on_delivered(env.ts)
        return delivered

    async def _message_cb(self, msg: Msg) -> None:
        self.dispatch(msg.subject, msg.data)

    async def _stream_message_cb(self, msg: Msg) -> None:
        try:
            seq = int(msg.metadata.sequence.stream)
        except Exception:  # not a JetStream delivery: nothing to stamp, nothing to resume from
            seq = 0
        self.dispatch(msg.subject, msg.data, seq)

    # -- resume (see replay.py) -------------------------------------------------------------------
    async def resume(self, stream: Subscriber, last_event_id: str) -> Resume:
        """The retained events after ``last_event_id`` up to where ``stream`` registered, for its keys."""
        return await self.replayer.resume(
            stream.position, stream.keys, last_event_id, self._js, self.jetstream, self._caught_up
        )

    def resume_refused(self, reason: str) -> Resume:
        """Count a resume the caller gives up on (e.g. ``RESUME_TOO_BIG``) like the others."""
        return self.replayer.failed(reason)

    def recent_between(self, after: int, until: int, keys: Iterable[Key]) -> list[Item] | None:
        return self.memory.between(after, until, keys)

    def _replay_item(self, msg: Msg, wanted: set[Key]) -> Item | None:
        try:
            env = decode_envelope(msg.subject, msg.data, max_bytes=self.max_message_bytes)
        except MalformedMessage:
            return None
        target = route(msg.subject, env.payload)
        if target is None or target.key not in wanted:
            return None
        return _item(target, env, int(msg.metadata.sequence.stream))

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
                self._bus_log.warning(
                    "NATS unreachable at %s (%s); retrying in the background", redact(self.nats_url), exc
                )
                await asyncio.sleep(min(self.reconnect_wait * attempt, 5.0))
                continue
            url = nc.connected_url
            where = f"{url.hostname}:{url.port}" if url is not None else redact(self.nats_url)
            if not (self.jetstream and await self._consume_stream(nc)):
                for subject in SUBJECT_FAMILIES:
                    await nc.subscribe(subject, cb=self._message_cb)
                log.info("NATS connected to %s as %r; subscribed to %s", where, self.name, ", ".join(SUBJECT_FAMILIES))
            else:
                log.info(
                    "NATS connected to %s as %r; consuming JetStream stream %s, live from sequence %d "
                    "(%d earlier messages read for resumes)",
                    where,
                    self.name,
                    self.jetstream,
                    self._live_from,
                    self._live_from - 1 - (self.position or 0),
                )
            self._nc = nc
            self._set_connected(True)
            for hook in self.on_connected:
                await hook(self._js)
            return

    def _set_connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.bus_connected.set(1 if up else 0)
        for hook in self.on_bus_state:
            hook(up)

    async def _consume_stream(self, nc: NATS) -> bool:
        """One ordered consumer over the stream, from just after its last message; False on failure
        (the hub then falls back to plain subscriptions: live events without ids or resume)."""
        js = nc.jetstream()
        try:
            try:
                state = await jetstream.stream_state(js, self.jetstream)
            except NotFoundError:
                if self.stream_config is None:
                    raise
                await js.add_stream(self.stream_config)
                log.info("created JetStream stream %s over %s", self.jetstream, ", ".join(SUBJECT_FAMILIES))
                state = await jetstream.stream_state(js, self.jetstream)
            if state.max_msgs > 0:
                self.memory.max_events = min(self.memory.max_events, state.max_msgs)
            # Start up to that many messages back: those only fill the replay memory (see dispatch).
            start = max(state.first_seq, state.last_seq - self.memory.max_events + 1, 1)
            self.position = start - 1
            self.memory.start(start - 1)
            self._live_from = state.last_seq + 1
            if start > state.last_seq:
                self._caught_up.set()
            self._consumer = await js.subscribe(
                "",
                stream=self.jetstream,
                cb=self._stream_message_cb,
                ordered_consumer=True,
                idle_heartbeat=1.0,  # a consumer lost with a NATS restart is re-created within ~2 s
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    filter_subjects=list(SUBJECT_FAMILIES),
                ),
            )
        except Exception as exc:
            self.position = None
            self.memory.start(None)
            self._live_from = 0
            log.error(
                "JetStream stream %r unusable (%s): serving live events without ids or resume; "
                "run `lurestream init-nats` and restart",
                self.jetstream,
                exc,
            )
            return False
        self._js = js
        return True

    async def _error_cb(self, exc: Exception) -> None:
        self._bus_log.warning("NATS error: %s", exc)

    async def _disconnected_cb(self) -> None:
        self._set_connected(False)
        if not self._closing:
            self._bus_log.warning("NATS disconnected; reconnecting in the background")

    async def _reconnected_cb(self) -> None:
        self.stats.reconnects += 1
        self._set_connected(True)
        log.info("NATS reconnected; subscriptions restored")

    async def close(self) -> None:
        """Stop connecting and close the NATS connection (the writer closes the streams)."""
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        if self._consumer is not None:
            try:  # cancels nats.py's heartbeat and flow-control tasks of the ordered consumer
                await self._consumer.unsubscribe()
            except Exception as exc:
                log.debug("error closing the JetStream consumer: %s", exc)
            self._consumer = None
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as exc:  # closing a half-dead connection must not break shutdown
                log.debug("error closing NATS: %s", exc)
            self._nc = None
