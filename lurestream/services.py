"""Everything one server process owns, built once and passed to the handlers (never imported by them).

``Services.build`` wires the process: the store, the hub (its NATS connection and JetStream consumer), the
per-user cap (cluster-wide on JetStream, protocol §13), the live writer, the owner of every stream's life,
auth, caches and counters. ``start`` and ``close`` run what works in the background, in order and in
reverse order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer
from tornado.ioloop import PeriodicCallback

from lurestream.auth import Authenticator
from lurestream.batching import StoreReads
from lurestream.cache import TTLCache
from lurestream.caps import ClusterCap
from lurestream.config import Config
from lurestream.credentials import CredentialSweep
from lurestream.edge import ConnectionCounter
from lurestream.hub import Hub
from lurestream.jetstream import stream_config
from lurestream.kinds import Reads
from lurestream.lifecycle import StreamOwner
from lurestream.limits import ConnectionLimiter, MintRate, RequestCounter, Slots
from lurestream.logfeed import LogFeed, LogFeedSettings
from lurestream.metrics import Metrics
from lurestream.snapshots import SnapshotReads
from lurestream.store import Store, StoreUnavailable
from lurestream.store.mongo import MongoStore
from lurestream.writer import LiveWriter

HOUSEKEEPING_SECONDS = 1.0
STORE_PING_SECONDS = 0.5  # readiness knows the store's state this fresh, and never waits for it
STORE_SLOW_SECONDS = 1.0  # a ping unanswered this long: the store counts as down until it answers


@dataclass
class Services:
    """Everything one process owns; every handler reaches these through ``BaseHandler``'s properties."""

    config: Config
    store: Store
    hub: Hub
    auth: Authenticator
    limiter: Slots
    metrics: Metrics
    tracer: Tracer
    snapshots: SnapshotReads
    resources: TTLCache[dict[str, Any] | None]
    connections: ConnectionCounter
    mint_rate: MintRate
    writer: LiveWriter
    reads: StoreReads
    requests: RequestCounter
    streams: StreamOwner
    logs: LogFeed
    _housekeeping: PeriodicCallback | None = None
    _store_watch: asyncio.Task[None] | None = None
    _store_up: bool = False
    _ping_since: float = 0.0  # when the ping in flight began (0: none in flight)
    _closing: bool = False  # set by close(): the store watch ends at its next turn, cancelled or not

    @classmethod
    def build(
        cls, config: Config, store: Store | None = None, hub: Hub | None = None, tracer: Tracer | None = None
    ) -> Services:
        """``tracer`` defaults to OpenTelemetry's global one: a no-op until the deployment configures an SDK."""
        the_store: Store = store or MongoStore(
            config.mongo_uri, config.mongo_db, config.mongo_driver, config.mongo_timeout_ms
        )
        metrics = Metrics()
        the_hub = hub or Hub(
            config.nats_url,
            jetstream=config.jetstream,
            stream_config=stream_config(config) if config.jetstream else None,
            replay_max=config.replay_max,
            replay_memory=config.replay_memory,
            metrics=metrics,
            max_message_bytes=config.max_message_bytes,
            replay_memory_bytes=config.replay_memory_bytes,
            max_frame_bytes=config.stream_buffer_bytes,
            nats_options=config,
        )
        limiter: Slots = ConnectionLimiter(config.sse_max_per_user)
        if config.jetstream and config.cap_bucket and config.nats_url:
            limiter = cap = ClusterCap(
                ConnectionLimiter(config.sse_max_per_user),
                config.cap_bucket,
                config.cap_lease_seconds,
                config.jetstream_replicas,
            )
            the_hub.on_connected.append(cap.started_with)
            the_hub.on_bus_state.append(cap.bus_up)
        connections = ConnectionCounter(config.max_connections_per_ip)
        writer = LiveWriter(
            metrics,
            keepalive_seconds=config.keepalive_seconds,
            send_timeout_seconds=config.send_timeout_seconds,
            retry_ms=config.retry_ms,
            max_bytes=config.stream_buffer_bytes,
            queue_max=config.queue_max,
        )
        the_hub.on_delivered = writer.note_delivered
        the_hub.on_epoch.append(lambda: writer.epoch_changed(the_hub, the_hub.epoch))
        auth = Authenticator(config, the_store)
        writer.checks.append(
            CredentialSweep(writer, the_store, config.stream_roles, config.auth_sweep_seconds, auth=auth)
        )
        return cls(
            config,
            the_store,
            the_hub,
            auth,
            limiter,
            metrics,
            tracer or trace.get_tracer("lurestream"),
            SnapshotReads(the_hub, metrics=metrics, max_gap_bytes=config.stream_buffer_bytes),
            TTLCache(1.0),  # the documents streams open on (attackers, topologies), read when a stream opens
            connections,
            MintRate(*config.mint_rate),
            writer,
            StoreReads(the_store, on_snapshot_query=lambda _keys: metrics.snapshot_queries.inc()),
            RequestCounter(),
            StreamOwner(limiter, connections, writer, metrics),
            LogFeed(
                the_store,
                metrics,
                LogFeedSettings(
                    batch=config.log_batch,
                    poll_seconds=config.log_poll_seconds,
                    stats_seconds=config.log_stats_seconds,
                    histogram_minutes=config.log_histogram_minutes,
                    replay_max=config.log_replay_max,
                    histogram_filters=config.log_histogram_filters,
                    max_frame_bytes=config.stream_buffer_bytes,
                ),
            ),
        )

    @property
    def kind_reads(self) -> Reads:
        """What a stream kind reads its resource and snapshot with (``kinds.py``)."""
        return Reads(self.reads, self.store)

    async def start(self) -> None:
        """Start what runs in the background: the hub's bus connection, the store's health and the
        housekeeping sweep."""
        await self.hub.start()
        self.writer.start()
        first = asyncio.Event()
        self._store_watch = asyncio.ensure_future(self._watch_store(first))
        try:  # readiness is right from the first request; a store that does not answer does not hold us
            await asyncio.wait_for(first.wait(), STORE_SLOW_SECONDS)
        except asyncio.TimeoutError:
            pass
        self.logs.start()
        self._housekeeping = PeriodicCallback(self.housekeep, HOUSEKEEPING_SECONDS * 1000)
        self._housekeeping.start()

    @property
    def store_up(self) -> bool:
        """Whether MongoDB answered its last ping and is not slow to answer the current one (readiness,
        protocol §1): known at once, so ``/readyz`` answers without waiting for the store (a probe with a
        1 s timeout saw nothing during an outage, while the ping waited for ``MONGO_TIMEOUT_MS``)."""
        slow = self._ping_since and time.monotonic() - self._ping_since > STORE_SLOW_SECONDS
        return self._store_up and not slow

    async def _watch_store(self, first: asyncio.Event) -> None:
        while not self._closing:
            self._ping_since = time.monotonic()
            try:
                await self.store.ping()
                self._store_up = True
            except StoreUnavailable:
                self._store_up = False
            finally:
                self._ping_since = 0.0
            first.set()
            await asyncio.sleep(STORE_PING_SECONDS)

    def housekeep(self) -> None:
        """Once a second: drop expired cache entries and idle rate buckets (protocol §11: bounded memory
        does not wait for the same key to be asked again)."""
        for cache in (*self.auth.caches(), self.resources):
            cache.purge()
        self.mint_rate.purge()

    async def close(self) -> None:
        """Stop in reverse order of start: housekeeping, the hub (every stream ends), the store. Each
        background loop ends on a flag as well as its cancellation: a cancellation can be lost on its way
        (a driver that turns it into an error, Python ≤ 3.11's ``asyncio.wait_for``, gh-86296), and a
        loop that runs on holds shutdown for ever."""
        self._closing = True
        if self._housekeeping is not None:
            self._housekeeping.stop()
            self._housekeeping = None
        if self._store_watch is not None:
            self._store_watch.cancel()
            await asyncio.gather(self._store_watch, return_exceptions=True)
            self._store_watch = None
        self.writer.close()
        await self.logs.close()
        if isinstance(self.limiter, ClusterCap):
            await self.limiter.close()
        await self.hub.close()
        await self.store.close()
