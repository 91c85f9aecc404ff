"""Process lifetime: ``make_app`` builds the Application on the process's ``Services`` (services.py),
``serve`` owns start-up and shutdown.

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
from typing import Any

import tornado.web

from lurestream.config import Config
from lurestream.edge import EdgeLimits, EdgeServer
from lurestream.handlers import all_handlers
from lurestream.handlers.base import NotFoundHandler
from lurestream.listening import listen
from lurestream.logs import access_log_function
from lurestream.redact import redact
from lurestream.services import Services
from lurestream.store import Store

log = logging.getLogger("lurestream.server")


def make_app(services: Services, **settings: Any) -> tornado.web.Application:
    """The Tornado Application for one process; ``settings`` may override tunables (tests do)."""
    config = services.config
    app_settings: dict[str, Any] = dict(
        cors_origins=config.cors_origins,
        log_function=access_log_function,
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        compress_response=False,
        xsrf_cookies=False,
        draining=False,
    )
    app_settings.update(settings)
    return tornado.web.Application(all_handlers(services), **app_settings)


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
        writer.drain_all()
        end = loop.time() + 1.0
        while limiter.held() and loop.time() < end:  # let the retry hints go out
            await asyncio.sleep(0.01)
