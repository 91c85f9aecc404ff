"""The per-process fan-out: one NATS connection, one subscription per subject family, O(1) routing.

Invariants:
- One NATS connection and ``len(SUBJECT_FAMILIES)`` subscriptions per process, whatever the number of
  open streams; nats.py restores them itself after a reconnect, so open streams resume on their own.
- Each message is decoded once, routed with one dict look-up (see ``routing``), encoded once, and the
  same ``(sequence, bytes)`` item is ``put_nowait`` into each matching stream's bounded queue. The hub
  never waits on a stream: a full queue ends that stream as lagging (counted in the metrics), logged once.
- With JetStream (``jetstream=<stream>``) the process consumes the stream with one ordered consumer
  (``consumer.StreamConsumer``) instead of the family subscriptions; frames then carry
  ``id: <epoch>-<stream sequence>`` (``eventids``), ``position`` is the last sequence dispatched in the
  current ``epoch``, and ``resume`` replays a range for one reconnecting stream. A re-created stream
  begins a new epoch: positions restart, the replay memory is emptied, and ``on_epoch`` hooks run.
- Resumes are served from memory when they can: the hub keeps the last ``replay_max`` routed events
  (the same shared items) and, at start-up, first reads that many retained messages into this memory
  only — so a process that has just started (a rolling deploy) resumes the streams drained from the
  old ones without a JetStream read each. Older ids fall back to a bounded JetStream scan.
- A malformed message — its body (``envelope``), a subject that is not UTF-8, or a frame that would not fit
  one stream's byte bound — is counted, logged (rate-limited) and skipped; it cannot harm a stream.
- Start-up never waits for NATS: if the first connect fails, a background task keeps trying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from lurestream import eventids, natsclient, sse
from lurestream.consumer import StreamConsumer
from lurestream.envelope import DEFAULT_MAX_BYTES, Envelope, MalformedMessage, decode_envelope
from lurestream.logs import Throttled
from lurestream.metrics import Metrics
from lurestream.natsclient import GuardedClient
from lurestream.redact import redact
from lurestream.replay import RESUME_OTHER_STREAM, Item, Replayer, ReplayMemory, Resume
from lurestream.routing import SUBJECT_FAMILIES, Key, Route, route

log = logging.getLogger("lurestream.hub")

BUS_DISABLED = "disabled"
BUS_CONNECTED = "connected"
BUS_DISCONNECTED = "disconnected"


class Subscriber(Protocol):
    """What the hub routes to: a stream in its live phase (``writer.LiveStream``)."""

    keys: tuple[Key, ...]
    position: int | None
    epoch: str
    serial: int
    floor: int  # live events at or below this sequence are ones it already has (after a resume)

    def put_nowait(self, item: Item) -> bool: ...


def _item(target: Route, env: Envelope, seq: int, epoch: str) -> Item:
    """The queue item of a routed event, encoded once: ``seq`` (0 without JetStream) becomes its ``id:``."""
    event_id = eventids.format_id(epoch, seq) if seq else None
    return Item(seq, sse.encode_event(target.event, env.topic, env.type, env.ts, env.payload, event_id), env.ts)


def _utf8(subject: str) -> bool:
    """Whether a subject as the client decoded it was valid UTF-8 (``natsclient`` keeps bad bytes as
    lone surrogates rather than failing)."""
    if subject.isascii():
        return True
    try:
        subject.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Hub:
    """Owns the process's NATS connection and the routing table ``key -> {stream}``."""

    def __init__(
        self,
        nats_url: str,
        name: str | None = None,
        reconnect_wait: float = 1.0,
        jetstream: str = "",
        stream_config: api.StreamConfig | None = None,
        replay_max: int = 10000,
        replay_memory: int = -1,
        metrics: Metrics | None = None,
        max_message_bytes: int = DEFAULT_MAX_BYTES,
        replay_memory_bytes: int = 64 * 2**20,
        max_frame_bytes: int = 2**20,
        nats_options: Any = None,
    ) -> None:
        """``max_frame_bytes``: an event whose frame is larger could never fit one stream's buffer
        (``STREAM_BUFFER_BYTES``): it is malformed, not a reason to close every stream it reaches.
        ``nats_options``: the config holding the NATS credentials (``natsclient.auth_options``)."""
        self.nats_url = nats_url
        self.nats_options = nats_options
        self.max_message_bytes = max_message_bytes
        self.max_frame_bytes = max_frame_bytes
        self.jetstream = jetstream
        self.stream_config = stream_config  # creates the stream when it is missing
        self.replay_max = replay_max
        self.position: int | None = None  # last stream sequence dispatched (JetStream only)
        self.epoch = ""  # the JetStream stream's identity (eventids), "" until known
        self.filters: list[str] | None = None  # the consumer's subject filter (None: the whole stream)
        # how many routed events are kept for resumes: replay_max, or fewer if the stream keeps fewer
        self.memory = ReplayMemory(
            replay_max if replay_memory < 0 else min(replay_memory, replay_max), replay_memory_bytes
        )
        self.metrics = metrics or Metrics()  # the process's counts; a hub of its own (tests) keeps its own
        self.replayer = Replayer(self.memory, replay_max, self._replay_item, self.metrics)
        self._live_from = 0  # the first sequence streams receive; earlier ones only fill the memory
        self._caught_up = asyncio.Event()
        self._js: JetStreamContext | None = None
        self.consumer: StreamConsumer | None = None
        self._plain: list[Any] = []  # the family subscriptions, while JetStream is off or unusable
        # the connection name shows in NATS monitoring: which host and process holds it
        self.name = name or f"lurestream:{socket.gethostname()}:{os.getpid()}"
        self.reconnect_wait = reconnect_wait
        self._routes: dict[Key, set[Subscriber]] = {}
        self._registered: set[Subscriber] = set()
        self.serial = 0  # counts registrations: orders them against snapshot reads (see snapshots.py)
        self.on_delivered: Callable[[float], None] | None = None  # an event's ts, once per delivered event
        # told when the bus comes up (with its JetStream context, or None) and when it goes down or back
        self.on_connected: list[Callable[[JetStreamContext | None], Awaitable[None]]] = []
        self.on_bus_state: list[Callable[[bool], None]] = []
        self.on_epoch: list[Callable[[], None]] = []  # the stream was re-created: positions restarted
        self._nc: GuardedClient | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        self._malformed_log = Throttled(log)
        self._bus_log = Throttled(log, 60.0)  # protocol §11: a bus that stays down is logged once a minute

    # -- streams -------------------------------------------------------------------------------
    def register(self, stream: Subscriber) -> None:
        """Route the events of ``stream.keys`` to it from now on; it records where it registered."""
        stream.position = self.live_position
        stream.epoch = self.epoch
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

    def keepalive_id(self, stream: Subscriber) -> str | None:
        """The id an idle keepalive of ``stream`` carries: the position it has seen up to (JetStream only)."""
        position = self.live_position
        if position is None:
            return None
        return eventids.format_id(self.epoch, max(position, stream.floor))

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

    def begin_epoch(self, epoch: str, start: int, live_from: int) -> None:
        """Count the sequences of a stream (epoch ``epoch``) from ``start``: those before ``live_from``
        only fill the replay memory (a process's start-up), the rest reach streams. A new epoch empties
        the memory and tells ``on_epoch`` (open streams' positions refer to the old stream)."""
        changed = bool(self.epoch) and epoch != self.epoch
        self.epoch = epoch
        self.position = start - 1
        self.memory.start(start - 1)
        self._live_from = live_from
        if start >= live_from:
            self._caught_up.set()
        else:
            self._caught_up.clear()
        if changed:
            for hook in self.on_epoch:
                hook()

    def end_epoch(self) -> None:
        """JetStream cannot be used: live events without ids (every connect gets a snapshot)."""
        self.position = None
        self.memory.start(None)
        self._live_from = 0

    @property
    def routing_keys(self) -> int:
        return len(self._routes)

    # -- routing -------------------------------------------------------------------------------
    def dispatch(self, subject: str, data: bytes, seq: int = 0) -> int:
        """Decode, route and enqueue one bus message; returns the number of streams it reached.

        ``seq`` is the JetStream stream sequence (0 without JetStream); it becomes the frame's ``id:``
        and the event is remembered for resumes. Sequences before ``_live_from`` (the start-up
        catch-up) are only remembered.
        """
        metrics = self.metrics
        metrics.bus_message(subject)
        if seq:
            if self.position is not None and seq <= self.position:
                return 0  # already dispatched (a consumer reset re-delivered it)
            self.position = seq
            if seq + 1 >= self._live_from:
                self._caught_up.set()
        try:
            if not _utf8(subject):
                raise MalformedMessage("subject is not UTF-8")
            env = decode_envelope(subject, data, max_bytes=self.max_message_bytes)
        except MalformedMessage as exc:
            return self._malformed(subject, exc)
        target = route(subject, env.payload)
        if target is None:
            metrics.events_unrouted.inc()
            return 0
        subs = self._routes.get(target.key)
        also = None if target.also is None else self._routes.get(target.also)
        if seq or subs or also:
            item = _item(target, env, seq, self.epoch)
            if len(item[1]) > self.max_frame_bytes:  # protocol §16: could never fit a stream's buffer
                return self._malformed(subject, MalformedMessage(f"frame of {len(item[1])} bytes, over the bound"))
            if seq:
                self.memory.remember(seq, target.key, item, target.also)
                if seq < self._live_from:
                    return 0
        if not subs and not also:
            metrics.events_unrouted.inc()
            return 0
        delivered = 0
        for targets in (subs, also):
            if targets:
                for sub in tuple(targets):  # a copy: a lagging stream unregisters itself while we iterate
                    if sub.put_nowait(item):
                        delivered += 1
        if delivered:
            metrics.events_forwarded.inc(delivered)
            if self.on_delivered is not None:
                self.on_delivered(env.ts)
        return delivered

    def _malformed(self, subject: str, exc: MalformedMessage) -> int:
        self.metrics.bus_malformed.inc()
        self._malformed_log.warning("skipping malformed message on %r: %s", subject[:128], exc)
        return 0

    async def _message_cb(self, msg: Msg) -> None:
        self.dispatch(msg.subject, msg.data)

    # -- resume (see replay.py) -------------------------------------------------------------------
    async def resume(self, stream: Subscriber, last_event_id: str, max_bytes: int = 0) -> Resume:
        """The retained events after ``last_event_id`` up to where ``stream`` registered, for its keys
        (at most ``max_bytes`` of frames: a longer replay is refused)."""
        if stream.epoch != self.epoch:  # the stream was re-created while this one opened
            return self.replayer.failed(RESUME_OTHER_STREAM)
        return await self.replayer.resume(
            stream.position,
            stream.keys,
            last_event_id,
            self._js,
            self.jetstream,
            self._caught_up,
            self.epoch,
            max_bytes,
        )

    def recent_between(self, after: int, until: int, keys: Iterable[Key]) -> list[Item] | None:
        return self.memory.between(after, until, keys)

    def _replay_item(self, msg: Msg, wanted: set[Key]) -> Item | None:
        try:
            env = decode_envelope(msg.subject, msg.data, max_bytes=self.max_message_bytes)
        except MalformedMessage:
            return None
        target = route(msg.subject, env.payload)
        if target is None or (target.key not in wanted and target.also not in wanted):
            return None
        item = _item(target, env, int(msg.metadata.sequence.stream), self.epoch)
        return None if len(item[1]) > self.max_frame_bytes else item

    # -- the bus -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if not self.nats_url:
            return BUS_DISABLED
        if self._nc is not None and self._nc.is_connected:
            return BUS_CONNECTED
        return BUS_DISCONNECTED

    def problems(self) -> list[str]:
        """What keeps the process from delivering every event now (readiness, protocol §16); [] when none.

        ``bus``: disconnected, or connected with nats.py's read loop gone (it would receive nothing);
        ``events``: the JetStream stream missing or unusable, or the consumer silent (``consumer``).
        """
        if not self.nats_url:
            return []
        nc = self._nc
        if nc is None or not nc.is_connected:
            return ["bus"]
        if not nc.read_loop_alive:
            return ["bus (read loop down)"]
        if self.jetstream and self.consumer is not None and (self.consumer.problem or self.consumer.store_problem):
            return [f"events ({self.consumer.problem or self.consumer.store_problem})"]
        if self.jetstream and self.consumer is None:
            return ["events (jetstream not started)"]
        return []

    @property
    def events_state(self) -> str:
        """``/readyz``'s ``events``: ``ok``, ``off`` (no JetStream: no ids), or what is wrong with the stream."""
        if not self.jetstream or not self.nats_url:
            return "off"
        if self.consumer is None:
            return "not started"
        return self.consumer.problem or self.consumer.store_problem or "ok"

    async def start(self) -> None:
        """Begin connecting in the background; returns at once (serving never waits for the bus)."""
        if self.nats_url and self._connector is None:
            self._connector = asyncio.create_task(self._connect_loop(), name="lurestream-nats-connect")

    async def _connect_loop(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                nc = await natsclient.connect(
                    self.nats_url,
                    self.name,
                    self.nats_options,
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
            nc.on_skipped = lambda _what: self.metrics.bus_malformed.inc()
            url = nc.connected_url
            where = f"{url.hostname}:{url.port}" if url is not None else redact(self.nats_url)
            consumer = StreamConsumer(self, self.jetstream, self.stream_config) if self.jetstream else None
            self.consumer = consumer
            if consumer is not None:
                consumer.on_open = self._consumer_opened
            if consumer is not None and await consumer.start(nc):
                self._js = consumer.js
                log.info(
                    "NATS connected to %s as %r; consuming JetStream stream %s (epoch %s), live from sequence %d "
                    "(%d earlier messages read for resumes)",
                    where,
                    self.name,
                    self.jetstream,
                    self.epoch,
                    self._live_from,
                    self._live_from - 1 - (self.position or 0),
                )
            else:  # no JetStream (or not yet: the consumer keeps trying): live events without ids
                self.end_epoch()
                self._plain = [await nc.subscribe(subject, cb=self._message_cb) for subject in SUBJECT_FAMILIES]
                log.info("NATS connected to %s as %r; subscribed to %s", where, self.name, ", ".join(SUBJECT_FAMILIES))
            self._nc = nc
            self._set_connected(True)
            for hook in self.on_connected:
                await hook(self._js)
            await self._watch_read_loop(nc)
            return

    async def _watch_read_loop(self, nc: GuardedClient) -> None:
        """Once a second: a connection whose read loop has died is reconnected (protocol §16). Readiness says
        so meanwhile (``problems``)."""
        while not self._closing:
            await asyncio.sleep(1.0)
            if nc.is_connected and not nc.read_loop_alive:
                await nc.recover()

    async def _consumer_opened(self) -> None:
        """JetStream became usable after the bus came up without it: events now come with ids, from the
        consumer alone (the plain subscriptions would deliver each event a second time)."""
        plain, self._plain = self._plain, []
        for sub in plain:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribing %s: %s", sub.subject, exc)
        assert self.consumer is not None
        self._js = self.consumer.js
        log.info("JetStream stream %s usable: events carry ids again (epoch %s)", self.jetstream, self.epoch)
        for hook in self.on_connected:
            await hook(self._js)

    def _set_connected(self, up: bool) -> None:
        self.metrics.bus_connected.set(1 if up else 0)
        for hook in self.on_bus_state:
            hook(up)

    async def _error_cb(self, exc: Exception) -> None:
        self._bus_log.warning("NATS error: %s", exc)

    async def _disconnected_cb(self) -> None:
        self._set_connected(False)
        if not self._closing:
            self._bus_log.warning("NATS disconnected; reconnecting in the background")

    async def _reconnected_cb(self) -> None:
        self.metrics.bus_reconnects.inc()
        self._set_connected(True)
        if self.consumer is not None:  # its server-side consumer may have gone with the old server
            self.consumer.reconnected()
        log.info("NATS reconnected; subscriptions restored")

    async def close(self) -> None:
        """Stop connecting and close the NATS connection (the writer closes the streams)."""
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.close()
            self.consumer = None
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as exc:  # closing a half-dead connection must not break shutdown
                log.debug("error closing NATS: %s", exc)
            self._nc = None
