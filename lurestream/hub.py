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
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from lurestream import jetstream, sse
from lurestream.envelope import DEFAULT_MAX_BYTES, Envelope, MalformedMessage, decode_envelope
from lurestream.metrics import Metrics
from lurestream.redact import redact
from lurestream.routing import SUBJECT_FAMILIES, Key, Route, route
from lurestream.subscription import DRAINING, Item, Subscription

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


# why a resume could not be served (the stream then gets a snapshot with "resumed": false)
RESUME_DISABLED = "jetstream_off"
RESUME_INVALID = "invalid_id"
RESUME_AHEAD = "ahead_of_stream"
RESUME_EXPIRED = "not_retained"
RESUME_TOO_FAR = "beyond_replay_max"
RESUME_UNAVAILABLE = "bus_unavailable"


@dataclass
class Resume:
    """A resume's outcome: the replayed items (oldest first), or why it could not be served."""

    items: list[Item]
    failed: str | None = None


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
    """Owns the process's NATS connection and the routing table ``key -> {Subscription}``."""

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
        # Recent routed events: every one with a sequence in (_recent_floor, position] is here.
        self._recent: deque[tuple[int, Key, Item]] = deque()
        self._recent_floor: int | None = None
        # how many routed events are kept for resumes: replay_max, or fewer if the stream keeps fewer
        self.recent_max = replay_max if replay_memory < 0 else min(replay_memory, replay_max)
        self.recent_max_bytes = replay_memory_bytes
        self._recent_bytes = 0
        self._live_from = 0  # the first sequence streams receive; earlier ones only fill _recent
        self._caught_up = asyncio.Event()
        self._js: JetStreamContext | None = None
        self._consumer: JetStreamContext.PushSubscription | None = None
        # the connection name shows in NATS monitoring: which host and process holds it
        self.name = name or f"lurestream:{socket.gethostname()}:{os.getpid()}"
        self.reconnect_wait = reconnect_wait
        self.stats = HubStats()
        self.metrics = metrics
        self._routes: dict[Key, set[Subscription]] = {}
        self._subscriptions = 0
        self.serial = 0  # counts registrations: orders them against snapshot reads (see snapshots.py)
        self._nc: NATS | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        self._malformed_log = _RateLimitedLog()
        self._bus_log = _RateLimitedLog(60.0)  # SPEC §11: a bus that stays down is logged once a minute

    # -- streams -------------------------------------------------------------------------------
    def subscribe(self, keys: Iterable[Key]) -> Subscription:
        """Register a stream for its keys; ``close()`` on the result unregisters it."""
        sub = Subscription(keys, self.queue_max, on_close=self._unregister, on_overflow=self._overflowed)
        sub.position = self.live_position
        self.serial += 1
        sub.serial = self.serial
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

    def record_lagging(self) -> None:
        """Count a stream closed for falling behind (a full queue here, or a full write buffer in its handler)."""
        self.stats.lagging += 1
        if self.metrics is not None:
            self.metrics.lagging.inc()

    def record_send_timeout(self) -> None:
        self.stats.send_timeouts += 1
        if self.metrics is not None:
            self.metrics.send_timeouts.inc()

    def _overflowed(self, sub: Subscription) -> None:
        self.record_lagging()
        log.warning("stream for %s is lagging (%d frames queued); closing it so it resumes", sub.keys[0], sub.maxsize)

    @property
    def subscription_count(self) -> int:
        """Open stream registrations (the leak guard checks this returns to 0)."""
        return self._subscriptions

    @property
    def live_position(self) -> int | None:
        """The stream position a stream registering now starts after (None without JetStream)."""
        if self.position is None:
            return None
        return max(self.position, self._live_from - 1)

    @property
    def routing_keys(self) -> int:
        return len(self._routes)

    def open_subscriptions(self) -> list[Subscription]:
        return list({s for subs in self._routes.values() for s in subs})

    def close_all(self, reason: str = DRAINING) -> None:
        """End every stream's subscription (shutdown): each handler wakes, sends what is queued and a
        ``retry:`` hint, and ends its response."""
        for sub in self.open_subscriptions():
            sub.end(reason)

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
            self._remember(seq, target.key, item)
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
        if metrics is not None:
            metrics.events_forwarded.inc(delivered)
        return delivered

    def _remember(self, seq: int, key: Key, item: Item) -> None:
        """Keep a routed event for resumes, within ``recent_max`` events and ``recent_max_bytes`` bytes
        (SPEC §11: 200 messages of 900 KB must not cost every process 345 MB)."""
        recent = self._recent
        recent.append((seq, key, item))
        self._recent_bytes += len(item[1])
        while recent and (len(recent) > self.recent_max or self._recent_bytes > self.recent_max_bytes):
            old_seq, _key, old = recent.popleft()
            self._recent_bytes -= len(old[1])
            self._recent_floor = old_seq

    async def _message_cb(self, msg: Msg) -> None:
        self.dispatch(msg.subject, msg.data)

    async def _stream_message_cb(self, msg: Msg) -> None:
        try:
            seq = int(msg.metadata.sequence.stream)
        except Exception:  # not a JetStream delivery: nothing to stamp, nothing to resume from
            seq = 0
        self.dispatch(msg.subject, msg.data, seq)

    # -- resume --------------------------------------------------------------------------------
    async def resume(self, sub: Subscription, last_event_id: str) -> Resume:
        """The retained events after ``last_event_id`` up to ``sub.position`` that ``sub`` wants.

        Events after ``sub.position`` reach ``sub`` live (it registered at that position), so the
        replayed range and the live range meet without a gap; the caller drops live items whose
        sequence is at or below the returned floor to avoid any duplicate.
        """
        if self._js is None or sub.position is None or not self.jetstream:
            return self._resume_failed(RESUME_DISABLED)
        raw = last_event_id.strip()
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            return self._resume_failed(RESUME_INVALID)
        if not self._caught_up.is_set():  # just started: the replay memory is still filling
            try:
                await asyncio.wait_for(self._caught_up.wait(), 10)
            except asyncio.TimeoutError:
                return self._resume_failed(RESUME_UNAVAILABLE)
        after, until = int(raw), sub.position
        if after > until:  # the client saw more than this process has yet: live covers it (floor = after)
            try:
                state = await jetstream.stream_state(self._js, self.jetstream)
            except Exception as exc:
                log.warning("resume: cannot read stream %s: %s", self.jetstream, exc)
                return self._resume_failed(RESUME_UNAVAILABLE)
            return self._resume_failed(RESUME_AHEAD) if after > state.last_seq else self._resumed(Resume([]))
        if until - after > self.replay_max:
            return self._resume_failed(RESUME_TOO_FAR)
        if after == until:
            return self._resumed(Resume([]))
        wanted = set(sub.keys)
        if self._recent_floor is not None and after >= self._recent_floor:
            return self._resumed(Resume(self._recent_items(after, until, wanted)))
        items: list[Item] = []
        try:
            state = await jetstream.stream_state(self._js, self.jetstream)
            if after + 1 < state.first_seq:
                return self._resume_failed(RESUME_EXPIRED)
            async for msg in jetstream.scan(self._js, self.jetstream, after + 1, until):
                item = self._replay_item(msg, wanted)
                if item is not None:
                    items.append(item)
        except Exception as exc:
            log.warning("resume: reading stream %s failed: %s", self.jetstream, exc)
            return self._resume_failed(RESUME_UNAVAILABLE)
        self.stats.resumed_from_stream += 1
        return self._resumed(Resume(items), "jetstream")

    def recent_between(self, after: int, until: int, keys: Iterable[Key]) -> list[Item] | None:
        """From memory, the items for ``keys`` with ``after < seq <= until``; None if memory does not
        reach back to ``after``."""
        if self._recent_floor is None or after < self._recent_floor or until < after:
            return None
        return self._recent_items(after, until, set(keys))

    def _recent_items(self, after: int, until: int, wanted: set[Key]) -> list[Item]:
        """From memory: the items with ``after < seq <= until`` for ``wanted`` keys, oldest first."""
        found = []
        for seq, key, item in reversed(self._recent):
            if seq <= after:
                break
            if seq <= until and key in wanted:
                found.append(item)
        found.reverse()
        return found

    def _replay_item(self, msg: Msg, wanted: set[Key]) -> Item | None:
        try:
            env = decode_envelope(msg.subject, msg.data, max_bytes=self.max_message_bytes)
        except MalformedMessage:
            return None
        target = route(msg.subject, env.payload)
        if target is None or target.key not in wanted:
            return None
        return _item(target, env, int(msg.metadata.sequence.stream))

    def _resumed(self, outcome: Resume, source: str = "memory") -> Resume:
        self.stats.resumed += 1
        self.stats.replayed += len(outcome.items)
        if self.metrics is not None:
            self.metrics.resumes.labels(source).inc()
        return outcome

    def _resume_failed(self, reason: str) -> Resume:
        self.stats.resume_failed[reason] = self.stats.resume_failed.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.resumes.labels(reason).inc()
        return Resume([], failed=reason)

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
            return

    def _set_connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.bus_connected.set(1 if up else 0)

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
                self.recent_max = min(self.recent_max, state.max_msgs)
            # Start up to that many messages back: those only fill the replay memory (see dispatch).
            start = max(state.first_seq, state.last_seq - self.recent_max + 1, 1)
            self.position = self._recent_floor = start - 1
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
            self.position = self._recent_floor = None
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
        """Stop connecting, close every stream, and close the NATS connection."""
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self.close_all()
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
