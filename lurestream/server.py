"""Wiring and process lifetime: ``make_app`` builds the Application, ``serve`` owns start-up and shutdown.

``serve`` connects MongoDB (lazily: the driver connects on first use), starts the hub (which never
waits for NATS), listens, waits for SIGTERM/SIGINT, then stops accepting, closes every stream so
slots and registrations are released, and closes the hub and the store — in reverse order of start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time
from dataclasses import dataclass
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from lurestream.auth import Authenticator
from lurestream.config import Config
from lurestream.handlers import all_handlers
from lurestream.handlers.base import NotFoundHandler
from lurestream.hub import Hub
from lurestream.limits import ConnectionLimiter
from lurestream.logs import access_log_function
from lurestream.redact import redact
from lurestream.store import Store
from lurestream.store.mongo import MongoStore

log = logging.getLogger("lurestream.server")


@dataclass
class Services:
    """Everything one process owns; handlers receive these through ``initialize()``."""

    config: Config
    store: Store
    hub: Hub
    auth: Authenticator
    limiter: ConnectionLimiter

    @classmethod
    def build(cls, config: Config, store: Store | None = None, hub: Hub | None = None) -> Services:
        the_store: Store = store or MongoStore(
            config.mongo_uri, config.mongo_db, config.mongo_driver, config.mongo_timeout_ms
        )
        the_hub = hub or Hub(config.nats_url, config.queue_max)
        return cls(
            config, the_store, the_hub, Authenticator(config, the_store), ConnectionLimiter(config.sse_max_per_user)
        )


def make_app(services: Services, **settings: Any) -> tornado.web.Application:
    """The Tornado Application for one process; ``settings`` may override tunables (tests do)."""
    config = services.config
    route_services = dict(
        config=config, auth=services.auth, store=services.store, hub=services.hub, limiter=services.limiter
    )
    app_settings: dict[str, Any] = dict(
        keepalive_seconds=config.keepalive_seconds,
        send_timeout_seconds=config.send_timeout_seconds,
        cors_origins=config.cors_origins,
        log_function=access_log_function,
        default_handler_class=NotFoundHandler,
        compress_response=False,
        xsrf_cookies=False,
        draining=False,
    )
    app_settings.update(settings)
    return tornado.web.Application(all_handlers(route_services), **app_settings)


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
    services = Services.build(config)
    await services.hub.start()
    app = make_app(services)
    server = HTTPServer(app, xheaders=config.trust_proxy_headers)
    if sockets is None:
        sockets = bind_sockets(config.port, config.host, reuse_port=False)
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down: closing %d streams", services.hub.subscription_count)
        app.settings["draining"] = True
        server.stop()
        started = time.monotonic()
        services.hub.close_all()
        while services.limiter.held() and time.monotonic() - started < 5:
            await asyncio.sleep(0.01)
        await server.close_all_connections()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await services.hub.close()
        await services.store.close()
    log.info("lurestream stopped")
