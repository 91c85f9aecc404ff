"""Test helpers around one running app: tokens, streams, publishing, plain HTTP calls, data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import urllib.parse
from typing import Any

import nats
from sse_client import SSEClient
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from lurestream.config import config_from
from lurestream.envelope import encode_envelope
from lurestream.eventids import format_id
from lurestream.server import Services, make_app
from lurestream.tokens import mint_token

SECRET = "lurestream-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ"

VIEWER = "11111111-1111-4111-8111-111111111111"
ADMIN = "22222222-2222-4222-8222-222222222222"
AUDITOR = "33333333-3333-4333-8333-333333333333"  # a role that may not stream
MUST_CHANGE = "44444444-4444-4444-8444-444444444444"
SECOND_VIEWER = "55555555-5555-4555-8555-555555555555"

USERS = {
    VIEWER: {"_id": VIEWER, "role": "viewer", "must_change_password": False},
    ADMIN: {"_id": ADMIN, "role": "admin", "must_change_password": False},
    AUDITOR: {"_id": AUDITOR, "role": "auditor", "must_change_password": False},
    MUST_CHANGE: {"_id": MUST_CHANGE, "role": "viewer", "must_change_password": True},
    SECOND_VIEWER: {"_id": SECOND_VIEWER, "role": "viewer", "must_change_password": False},
}

ATTACKER_A = {"_id": "aaaaaaaa-0000-4000-8000-00000000000a", "ip": "203.0.113.10", "identity_id": "identity-1"}
ATTACKER_B = {"_id": "bbbbbbbb-0000-4000-8000-00000000000b", "ip": "203.0.113.20", "identity_id": "identity-2"}
TOPOLOGY_1 = {"_id": "topo-1", "status": "active"}
TOPOLOGY_2 = {"_id": "topo-2", "status": "deploying"}


async def bus_up(hub: Any, timeout: float) -> bool:
    """Wait until ``hub`` is connected to NATS (or ``timeout`` passes); whether it is."""
    from lurestream.hub import BUS_CONNECTED

    deadline = asyncio.get_running_loop().time() + timeout
    while hub.state != BUS_CONNECTED and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return bool(hub.state == BUS_CONNECTED)


async def until(predicate: Any, timeout: float = 10.0, what: str = "condition", every: float = 0.01) -> None:
    """Wait until ``predicate()`` is true, checking every ``every`` seconds; an AssertionError naming ``what``
    once ``timeout`` has passed. The one way the tests wait: on what can be observed, never a guessed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


def envelope(subject: str, payload: Any = None, type_: str = "t", ts: float | None = None, **extra: Any) -> bytes:
    """A bus body (``lurestream.envelope.encode_envelope``; ``extra`` may replace any field, or break it)."""
    return encode_envelope(subject, payload, type_, ts, event_id="e1", **extra)


def failed_resumes(hub: Any) -> dict[str, float]:
    """Resumes the hub refused, by reason (``lurestream_resumes_total`` less its two successes)."""
    outcomes = hub.metrics.by_label("lurestream_resumes_total", "outcome")
    return {k: v for k, v in outcomes.items() if k not in ("memory", "jetstream")}


def resumes(hub: Any) -> float:
    """Resumes the hub served (from memory or from JetStream)."""
    count = hub.metrics.value
    return float(
        count("lurestream_resumes_total", outcome="memory") + count("lurestream_resumes_total", outcome="jetstream")
    )


class Probe:
    """A stand-in stream for hub-level tests: registers like a live stream and records what it gets."""

    def __init__(self, hub: Any, keys: list[tuple[str, str]]) -> None:
        self.keys = tuple(keys)
        self.position: int | None = None
        self.epoch = ""
        self.serial = 0
        self.floor = 0
        self.items: list[tuple[int, bytes, float]] = []
        hub.register(self)

    @property
    def pending(self) -> int:
        return len(self.items)

    def put_nowait(self, item: tuple[int, bytes, float]) -> bool:
        self.items.append(item)
        return True

    def take(self) -> list[tuple[int, bytes, float]]:
        items, self.items = self.items, []
        return items


class Harness:
    def __init__(self, services: Services, port: int, mongo: Any, nats_url: str) -> None:
        self.services = services
        self.config = services.config
        self.hub = services.hub
        self.port = port
        self.db = mongo
        self.nats_url = nats_url
        self.clients: list[SSEClient] = []
        self._nc: Any = None
        self._http = AsyncHTTPClient()

    # -- credentials ---------------------------------------------------------------------------
    def token(self, user: str = VIEWER, **overrides: Any) -> str:
        return mint_token(self.config, user, **overrides)

    def expiring_token(self, seconds: float = 1.5, user: str = VIEWER) -> tuple[str, int]:
        """A token valid for ``seconds`` to ``seconds`` + 1 from now (``exp`` is whole seconds: ``ttl=2`` may
        leave barely more than 1 s), and its ``exp``."""
        exp = math.ceil(time.time() + seconds)
        return mint_token(self.config, user, exp=exp), exp

    async def ticket(self, user: str = VIEWER) -> str:
        response = await self.fetch("POST", "/api/v1/auth/sse-ticket", bearer=self.token(user))
        assert response.code == 200, response.body
        return str(json.loads(response.body)["ticket"])

    # -- streams -------------------------------------------------------------------------------
    async def open(
        self,
        path: str,
        token: str | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> SSEClient:
        params = dict(query or {})
        if token is not None:
            params["token"] = token
        if params:
            path += "?" + urllib.parse.urlencode(params)
        client = await SSEClient.open(self.port, path, headers=headers)
        self.clients.append(client)
        return client

    async def attacker(self, attacker_uuid: str = ATTACKER_A["_id"], user: str = VIEWER) -> SSEClient:
        """An open attacker stream, its snapshot already read (the client's ``snapshot``)."""
        client = await self.open(f"/api/v1/attackers/{attacker_uuid}/events", token=self.token(user))
        client.snapshot = await client.start_stream()  # type: ignore[attr-defined]
        return client

    async def topology(self, topology_id: str = TOPOLOGY_1["_id"], user: str = VIEWER) -> SSEClient:
        client = await self.open(f"/api/v1/topologies/{topology_id}/events", token=self.token(user))
        client.snapshot = await client.start_stream()  # type: ignore[attr-defined]
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    async def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        await until(predicate, timeout, what)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the app's metrics, read through prometheus-client (0 when it has none yet)."""
        return self.services.metrics.value(name, **labels)

    # -- the bus -------------------------------------------------------------------------------
    async def bus(self) -> Any:
        """The test's own NATS connection (a publisher), opened on first use."""
        if self._nc is None:
            self._nc = await nats.connect(self.nats_url, name="lurestream-test-publisher")
        return self._nc

    async def publish(self, subject: str, payload: Any = None, raw: bytes | None = None, **kw: Any) -> None:
        await self.bus()
        await self._nc.publish(subject, raw if raw is not None else envelope(subject, payload, **kw))
        await self._nc.flush()

    async def publish_stored(self, subject: str, payload: Any = None, **kw: Any) -> int:
        """Publish through JetStream and wait until the hub has dispatched it; returns its stream sequence."""
        ack = await (await self.bus()).jetstream().publish(subject, envelope(subject, payload, **kw))
        await self.wait_for(lambda: (self.hub.position or 0) >= ack.seq, what=f"hub to dispatch seq {ack.seq}")
        return int(ack.seq)

    def event_id(self, seq: int) -> str:
        """The id a frame carries for stream sequence ``seq`` of the hub's current stream (``eventids``)."""
        return format_id(self.hub.epoch, seq)

    async def aclose(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    # -- plain HTTP ----------------------------------------------------------------------------
    async def fetch(
        self,
        method: str,
        path: str,
        bearer: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> HTTPResponse:
        hdrs = dict(headers or {})
        if bearer is not None:
            hdrs["Authorization"] = f"Bearer {bearer}"
        if method == "POST" and body is None:
            body = b""
        return await self._http.fetch(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            headers=hdrs,
            body=body,
            raise_error=False,
            request_timeout=10,
        )


@contextlib.asynccontextmanager
async def standalone(
    nats_url: str,
    mongo_uri: str,
    db_name: str,
    mongo: Any = None,
    settings: dict[str, Any] | None = None,
    **app_settings: Any,
) -> Any:
    """An app of the test's own (outside the ``ls`` fixture), for tests that stop or restart a service;
    it ends with the same leak guard."""
    from tornado.testing import bind_unused_port

    from lurestream.server import make_server

    config = config_from(
        {"nats_url": nats_url, "mongo_uri": mongo_uri, "mongo_db": db_name, "jwt_secret": SECRET, **(settings or {})}
    )
    services = Services.build(config)
    services.hub.reconnect_wait = 0.2
    await services.start()
    sock, http_port = bind_unused_port()
    server = make_server(make_app(services, **app_settings), services)
    server.add_socket(sock)
    harness = Harness(services, http_port, mongo, nats_url)
    try:
        yield harness
        harness.close_clients()
        await harness.wait_for(
            lambda: services.hub.subscription_count == 0 and services.limiter.held() == 0,
            what="leak guard: registrations and slots released",
        )
    finally:
        harness.close_clients()
        await harness.aclose()
        server.stop()
        await server.close_all_connections()
        await services.close()
