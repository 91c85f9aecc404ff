"""Wiring and process lifetime: ``make_app`` builds the Application, ``serve`` owns start-up and shutdown.

``serve`` connects MongoDB (lazily: the driver connects on first use), starts the hub (which never
waits for NATS), listens, and waits for SIGTERM/SIGINT. Then it drains (protocol §7): readiness fails at
once, the listener stops, open streams are closed spread over ``LURESTREAM_DRAIN_SECONDS`` with a
``retry:`` hint (a second signal closes them at once), and the hub and the store are closed — in
reverse order of start.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import signal
import time
from dataclasses import dataclass, fields
from typing import Any

import tornado.web
from opentelemetry import trace
from opentelemetry.trace import Tracer
from tornado.ioloop import PeriodicCallback

from lurestream.auth import Authenticator
from lurestream.batching import StoreReads
from lurestream.cache import TTLCache
from lurestream.caps import ClusterCap
from lurestream.config import Config
from lurestream.credentials import CredentialSweep
from lurestream.edge import ConnectionCounter, EdgeLimits, EdgeServer
from lurestream.handlers import all_handlers
from lurestream.handlers.base import NotFoundHandler
from lurestream.hub import Hub
from lurestream.jetstream import stream_config
from lurestream.limits import ConnectionLimiter, MintRate, RequestCounter, Slots
from lurestream.listening import listen
from lurestream.logs import access_log_function
from lurestream.metrics import Metrics
from lurestream.redact import redact
from lurestream.snapshots import SnapshotReads
from lurestream.store import Store
from lurestream.store.mongo import MongoStore
from lurestream.writer import LiveStream, LiveWriter

log = logging.getLogger("lurestream.server")

HOUSEKEEPING_SECONDS = 1.0


@dataclass
class Services:
    """Everything one process owns; handlers receive these through ``initialize()``."""

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
    _housekeeping: PeriodicCallback | None = None

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
            config.queue_max,
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
            the_hub,
            keepalive_seconds=config.keepalive_seconds,
            send_timeout_seconds=config.send_timeout_seconds,
            retry_ms=config.retry_ms,
            max_bytes=config.stream_buffer_bytes,
            queue_max=config.queue_max,
            on_finish=lambda stream: _stream_finished(stream, limiter, connections, metrics),
            on_lagging=lambda stream: _stream_lagging(stream, the_hub),
            on_send_timeout=lambda stream: the_hub.record_send_timeout(),
            on_flushed=metrics.delivery_seconds.observe,
        )
        the_hub.on_delivered = writer.note_delivered
        the_hub.on_epoch.append(writer.epoch_changed)
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
            TTLCache(1.0),  # attacker / topology documents, read when a stream opens
            connections,
            MintRate(*config.mint_rate),
            writer,
            StoreReads(the_store, on_snapshot_query=lambda _keys: metrics.snapshot_queries.inc()),
            RequestCounter(),
        )

    async def start(self) -> None:
        """Start what runs in the background: the hub's bus connection and the housekeeping sweep."""
        await self.hub.start()
        self.writer.start()
        self._housekeeping = PeriodicCallback(self.housekeep, HOUSEKEEPING_SECONDS * 1000)
        self._housekeeping.start()

    def housekeep(self) -> None:
        """Once a second: drop expired cache entries and idle rate buckets (protocol §11: bounded memory
        does not wait for the same key to be asked again)."""
        for cache in (*self.auth.caches(), self.resources):
            cache.purge()
        self.mint_rate.purge()

    async def close(self) -> None:
        """Stop in reverse order of start: housekeeping, the hub (every stream ends), the store."""
        if self._housekeeping is not None:
            self._housekeeping.stop()
            self._housekeeping = None
        self.writer.close()
        if isinstance(self.limiter, ClusterCap):
            await self.limiter.close()
        await self.hub.close()
        await self.store.close()


def _stream_finished(stream: LiveStream, limiter: Slots, connections: ConnectionCounter, metrics: Metrics) -> None:
    """Everything a stream held, given back when it ends for any reason."""
    limiter.release(stream.user)
    if stream.address:
        connections.release(stream.address)
    reason = stream.reason or "client_closed"
    metrics.streams_open.labels(stream.kind).dec()
    metrics.disconnects.labels(stream.kind, reason).inc()
    span = stream.span
    if span is not None:
        stream.span = None
        span.add_event("stream.end", {"reason": reason})
        span.end()


def _stream_lagging(stream: LiveStream, hub: Hub) -> None:
    hub.record_lagging()
    log.warning("a %s stream is lagging (%d bytes queued); closing it so it resumes", stream.kind, stream.unflushed)


def make_app(services: Services, **settings: Any) -> tornado.web.Application:
    """The Tornado Application for one process; ``settings`` may override tunables (tests do)."""
    config = services.config
    # every service the process owns, for the handlers' initialize() (passed in, never imported)
    route_services = {f.name: getattr(services, f.name) for f in fields(services) if not f.name.startswith("_")}
    app_settings: dict[str, Any] = dict(
        cors_origins=config.cors_origins,
        log_function=access_log_function,
        default_handler_class=NotFoundHandler,
        compress_response=False,
        xsrf_cookies=False,
        draining=False,
    )
    app_settings.update(settings)
    return tornado.web.Application(all_handlers(route_services), **app_settings)


def edge_limits(config: Config) -> EdgeLimits:
    return EdgeLimits(
        max_header_bytes=config.max_header_bytes,
        max_url_bytes=config.max_url_bytes,
        max_body_bytes=config.max_body_bytes,
        header_timeout=config.header_timeout_seconds,
        idle_timeout=config.idle_timeout_seconds,
        max_connections_per_ip=config.max_connections_per_ip,
    )


def make_server(app: tornado.web.Application, services: Services) -> EdgeServer:
    """The HTTP server for ``app``, with the edge bounds of protocol §11 (used by ``serve`` and the tests)."""
    config = services.config
    refused = services.metrics.http_refused
    return EdgeServer(
        app,
        xheaders=config.trust_proxy_headers,
        limits=edge_limits(config),
        connections=services.connections,
        on_refusal=lambda reason: refused.labels(reason).inc(),
        cors_origins=config.cors_origins,
    )


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit (each stream is a socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


async def serve(config: Config, sockets: list[Any] | None = None, ready: asyncio.Event | None = None) -> None:
    """Run one server process until SIGTERM/SIGINT, then shut down cleanly."""
    if config.jwt_secret_ephemeral:
        log.warning(
            "LURESTREAM_DEV_INSECURE: no LURESTREAM_JWT_SECRET set, using a random one; "
            "no token minted elsewhere will be accepted"
        )
    elif config.dev_insecure:
        log.warning("LURESTREAM_DEV_INSECURE is on: the JWT secret is not checked for strength")
    soft, _hard = raise_fd_limit()
    log.info("open-files limit %d (about %d streams)", soft, max(soft - 64, 0))
    if sockets is None:  # first: a busy port is the commonest start-up failure; say so before connecting
        sockets = listen(config.host, config.port, reuse_port=False)
    services = Services.build(config)
    await services.start()
    app = make_app(services)
    server = make_server(app, services)
    server.add_sockets(sockets)
    ports = sorted({s.getsockname()[1] for s in sockets})
    log.info(
        "lurestream listening on http://%s:%s (bus %s, store %s/%s via %s)",
        config.host,
        ",".join(map(str, ports)),
        redact(config.nats_url) or "disabled",
        redact(config.mongo_uri),
        config.mongo_db,
        config.mongo_driver,
    )
    asyncio.ensure_future(warn_missing_ttl_indexes(services.store))
    signals = Signals()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.received)
    if ready is not None:
        ready.set()
    try:
        await signals.first.wait()
        app.settings["draining"] = True  # /readyz answers 503 from now on
        server.stop()
        await drain(services, config.drain_seconds, signals.second)
        await server.close_all_connections()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await services.close()
    log.info("lurestream stopped")


async def warn_missing_ttl_indexes(store: Store) -> None:
    """protocol §11: expired tickets and sessions pile up without their TTL index; say so at start-up."""
    try:
        missing = await store.missing_ttl_indexes()
    except Exception as exc:  # the store may be down at start-up; readiness reports that
        log.debug("could not check TTL indexes: %s", exc)
        return
    for collection in missing:
        log.warning(
            "MongoDB collection %s has no TTL index on expires_at: expired entries are never removed; "
            "run `lurestream init-db`",
            collection,
        )


class Signals:
    """The first stop signal starts a drain; a second one cuts it short.

    A second signal within ``GROUP_WINDOW`` seconds of the first is the same request arriving twice —
    a terminal's Ctrl-C or systemd's default ``KillMode=control-group`` signal every process of the
    group, and the supervisor forwards its own copy to each worker — so it does not cut the drain short.
    """

    GROUP_WINDOW = 0.5

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        self._first_at = 0.0

    def received(self) -> None:
        now = time.monotonic()
        if not self.first.is_set():
            self._first_at = now
            self.first.set()
        elif now - self._first_at >= self.GROUP_WINDOW:
            self.second.set()


async def drain(services: Services, seconds: float, cut_short: asyncio.Event) -> None:
    """Close open streams spread evenly over ``seconds`` (each gets a jittered ``retry:`` hint), so the
    reconnects land on the other servers gradually; return once every slot is released."""
    writer, limiter, requests = services.writer, services.limiter, services.requests
    writer.draining = True  # a stream whose request is still in its handler is drained as it opens
    streams = [s for s in writer.streams if not s.closing]
    random.shuffle(streams)
    log.info("draining: closing %d streams over %.0fs (a second signal closes them at once)", len(streams), seconds)
    loop = asyncio.get_running_loop()
    step = seconds / len(streams) if streams else 0.0
    timers = [loop.call_later(i * step, writer.drain, stream) for i, stream in enumerate(streams)]
    deadline = loop.time() + seconds + 5.0
    cut = asyncio.ensure_future(cut_short.wait())
    try:
        # until every stream is gone and no request is still in its handler (a request that had not
        # reached its stream when the signal came would otherwise lose its store under it: a 500)
        while (limiter.held() or requests.count) and loop.time() < deadline and not cut.done():
            await asyncio.wait([cut], timeout=0.05)
        if cut.done():
            log.info("second signal: closing %d streams now", len(writer.streams))
    finally:
        cut.cancel()
        for timer in timers:
            timer.cancel()
        for stream in list(writer.streams):
            writer.drain(stream)
        end = loop.time() + 1.0
        while limiter.held() and loop.time() < end:  # let the retry hints go out
            await asyncio.sleep(0.01)
