"""Every reverse-proxy recipe of docs/operations.md ("Behind a reverse proxy": nginx, HAProxy, Caddy), run
in front of two real ``lurestream serve`` processes (real NATS/JetStream and MongoDB-wire), with the
clients a dashboard uses: native ``EventSource``s in headless Chromium (over HTTP/2 and TLS, on a session
cookie) and npm ``eventsource`` clients (HTTP/1.1, a Bearer header, each from an address of its own).

Both kinds treat any answer but a 200 ``text/event-stream`` as final (readyState CLOSED, never another
reconnect). So while no server can answer, a recipe must answer a stream request with a 200 stream that
says "reconnect in 2 s" (``event: unavailable``), and must send a request on to a server that is up while
another is down or restarting. The scenario: steady state, one server drained (SIGTERM), the other killed
(SIGKILL) so none is left, both restarted — and through it all no client is ever CLOSED and every event
published reaches every client of its stream once, or falls in a gap the client was told about (a
snapshot with ``"resumed": false``).

The configurations run are the docs' own blocks (``proxies.py`` holds them as templates;
``test_the_docs_show_the_configurations_the_tests_run`` keeps the docs equal to them).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import shutil
import signal
import time
import uuid
from typing import Any

import pytest
from browser import CHROMEDRIVER, CHROMIUM
from harness import ATTACKER_A, ATTACKER_B, SECOND_VIEWER, SECRET, VIEWER
from proxies import (
    RECIPES,
    STREAM_PATHS,
    STREAMS,
    UNAVAILABLE,
    UNAVAILABLE_BODY,
    ChromiumClients,
    Client,
    NodeClient,
    Proxy,
    Publisher,
    chromium_driver,
    docs_blocks,
    find_binary,
    https_get,
    make_certificate,
    node_clients_dir,
    sequence,
    wait_until,
)

from lurestream.config import config_from
from lurestream.localservices import free_port
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
B = ATTACKER_B["_id"]
EVENTS = ("snapshot", "resumed", "observation", "unavailable", "end")
# Quick drains and reconnect hints, 1 s keepalives; behind a proxy: its headers trusted, and a per-address
# cap small enough that the clients behind the proxy (6 streams) and its health checks would hit it if
# either were counted under the proxy's address.
SETTINGS = dict(
    drain_seconds=2,
    retry_ms=500,
    keepalive_seconds=1,
    trust_proxy_headers="true",
    max_connections_per_ip=3,
)
CHROMIUM_STREAMS = [A, B, A]  # from 127.0.0.1: exactly the per-address cap
NODE_STREAMS = [(B, "127.0.0.2"), (A, "127.0.0.3"), (B, "127.0.0.4")]
FORGER = "127.0.0.9"  # a client that sends its own X-Real-IP and X-Forwarded-For
RATE = 20.0  # events a second, alternating between the two attackers

MINT_SESSION = """
const [token, done] = [arguments[0], arguments[arguments.length - 1]];
fetch('/api/v1/auth/sse-session', {method: 'POST', headers: {Authorization: `Bearer ${token}`}})
  .then((r) => done(r.status), (e) => done(String(e)));
"""


@pytest.mark.parametrize("name", RECIPES)
def test_the_docs_show_the_configurations_the_tests_run(name: str) -> None:
    recipe = RECIPES[name]
    assert docs_blocks(recipe.heading) == recipe.docs_text(), (
        f"docs/operations.md's {recipe.heading} example must be tests/proxies.py's template rendered with "
        "its docs values (the tests run the template)"
    )


def test_the_stream_pattern_takes_every_stream_path_and_nothing_else() -> None:
    assert all(re.fullmatch(STREAMS, p) for p in STREAM_PATHS)
    others = [
        "/api/v1/attackers",
        "/api/v1/topologies",
        "/api/v1/auth/sse-session",
        "/api/v1/auth/sse-ticket",
        "/",
        "/static/app.js",
        "/api/v1/attackers/a-1",
        "/api/v1/attackers/a-1/events/x",
        "/healthz",
    ]
    assert [p for p in others if re.fullmatch(STREAMS, p)] == []


def _require(binary: str) -> None:
    missing = [
        what
        for what, found in (
            (binary, find_binary(binary)),
            ("node", shutil.which("node")),
            ("npm", shutil.which("npm")),
            ("chromium", CHROMIUM),
            ("chromedriver", CHROMEDRIVER),
        )
        if not found
    ]
    if missing:
        pytest.skip(
            f"not installed here: {', '.join(missing)} (.ci/run installs them: apt-get install nginx haproxy "
            "caddy chromium chromium-driver nodejs npm)"
        )


def _disorder(client: Client) -> list[tuple[int, int]]:
    """(an event's sequence, the next one's) wherever the next is not greater: a duplicate or disorder."""
    seqs = client.sequences()
    return [(a, b) for a, b in zip(seqs, seqs[1:], strict=False) if b <= a]


def _missed(client: Client, published: list[Any]) -> list[int]:
    """Events of the client's attacker that it neither got nor was told it missed: not delivered, and not
    before a snapshot (its first, or one with ``"resumed": false``) that followed the last id it had."""
    got = set(client.sequences())
    covered: list[tuple[int, int]] = []
    last = 0
    for frame in client.frames:
        position = sequence(frame.id) if frame.id else None
        if frame.type == "snapshot" and position is not None:
            first = not covered
            if first or json.loads(frame.data).get("resumed") is False:
                covered.append((0 if first else last, position))
        if position is not None and frame.type in ("snapshot", "observation"):
            last = position
    return [
        p.seq
        for p in published
        if p.attacker == client.attacker and p.seq not in got and not any(lo < p.seq <= hi for lo, hi in covered)
    ]


def _probes(servers: list[Any], port: int) -> int:
    """How many health checks (``GET /readyz``) the process on ``port`` has logged."""
    return next(s for s in servers if s.port == port).log().count(" GET /readyz ")


def _refusals(servers: list[Any]) -> list[str]:
    """Every refusal (4xx/5xx) of a stream in the servers' logs."""
    return [
        x for s in servers for x in s.log().splitlines() if re.search(r"access: [45]\d\d GET /api/v1/\S*/events", x)
    ]


def _warnings(servers: list[Any]) -> list[str]:
    """The servers' own warnings and errors (not the access log's)."""
    return [x for s in servers for x in s.log().splitlines() if re.search(r" (WARNING|ERROR) lurestream\.", x)]


def _forwarded_address_line(proxy: Proxy, servers: list[Any]) -> str:
    """Send a request through the proxy with a forged X-Real-IP and X-Forwarded-For; the access-log line
    of a server for it."""
    marker = uuid.uuid4().hex
    forged = {"X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6"}
    status, _, _ = https_get(f"{proxy.url}/api/v1/no-such-{marker}", proxy.cert, forged, source=FORGER)
    assert status == 404

    def line() -> str:
        return next((x for s in servers for x in s.log().splitlines() if marker in x), "")

    wait_until(line, "the access-log line of the forged request", 5)
    return line()


@pytest.mark.parametrize("name", RECIPES)
def test_clients_through_the_proxy_ride_out_a_drain_and_a_kill(
    name: str, tmp_path: Any, start_server: Any, js_stream: str, nats_service: Any, mongo: Any
) -> None:
    recipe = RECIPES[name]
    _require(recipe.binary)
    node_dir = node_clients_dir()
    cert = make_certificate(tmp_path / "tls")
    settings = dict(jetstream=js_stream, **SETTINGS)
    servers = [start_server(wait_ready=False, **settings) for _ in range(2)]
    for server in servers:
        server.wait_ready()
    ports = [s.port for s in servers]
    live = list(servers)  # the processes serving each port now
    every = list(servers)  # every process started
    config = config_from({"jwt_secret": SECRET})
    timings: dict[str, float] = {}
    started = time.monotonic()

    with contextlib.ExitStack() as stack:
        proxy = Proxy(recipe, tmp_path / name, free_port(), ports, cert).start()
        stack.callback(proxy.stop)
        wait_until(lambda: https_get(f"{proxy.url}/healthz", cert)[0] == 200, f"{name} to answer", 10)

        browser_clients = [Client(f"chromium-{i}", a) for i, a in enumerate(CHROMIUM_STREAMS)]
        node_clients = [Client(f"npm-{i}", a) for i, (a, _) in enumerate(NODE_STREAMS)]
        clients = browser_clients + node_clients
        driver = chromium_driver()
        stack.callback(driver.quit)
        chromium = ChromiumClients(driver, browser_clients)
        driver.get(f"{proxy.url}/healthz")
        assert driver.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        assert driver.execute_async_script(MINT_SESSION, mint_token(config, VIEWER)) == 204
        chromium.open([f"/api/v1/attackers/{a}/events" for a in CHROMIUM_STREAMS], EVENTS)
        token = mint_token(config, SECOND_VIEWER)
        for client, (attacker, address) in zip(node_clients, NODE_STREAMS, strict=True):
            url = f"{proxy.url}/api/v1/attackers/{attacker}/events"
            node = NodeClient(client, node_dir, url, address, token, cert.cert, EVENTS)
            stack.callback(node.stop)
        publisher = Publisher(nats_service.url, [A, B], RATE).start()
        stack.callback(publisher.stop)

        def state() -> str:
            logs = "\n".join(f"--- server on {s.port} ---\n" + "\n".join(s.log().splitlines()[-25:]) for s in live)
            return "\n".join(c.summary() for c in clients) + f"\n--- {name} ---\n{proxy.log()}\n{logs}"

        def all_past(seq: int) -> bool:
            """Every client has an event of its attacker published after ``seq``."""
            return all(max(c.sequences(), default=0) > seq for c in clients)

        def checks_stay_up(up: list[int]) -> None:
            """Three more of the proxy's health checks reach each server in ``up`` (lurestream logs each),
            and none fails."""
            if recipe.name == "nginx":
                return  # open-source nginx has no active health checks
            since = proxy.log_size()
            probes = {p: _probes(live, p) for p in up}
            wait_until(
                lambda: all(_probes(live, p) >= n + 3 for p, n in probes.items()),
                f"3 health checks on each of {up}",
                10,
                state,
                chromium.collect,
            )
            failed = {p: proxy.failed_checks(p, since) for p in up}
            assert failed == {p: [] for p in up}, f"{failed}\n{state()}"
            if recipe.name == "haproxy":
                assert {p: proxy.backend_states()[p] for p in up} == {p: "UP" for p in up}

        def settle(what: str, timeout: float) -> float:
            mark = publisher.last()
            return wait_until(lambda: all_past(mark + 2), what, timeout, state, chromium.collect)

        # steady state: every client has its snapshot and live events
        timings["connected"] = settle("every client to stream live events", 20)
        assert [c.name for c in clients if not c.of("snapshot")] == []

        # a client's own X-Real-IP / X-Forwarded-For never reach the log: the proxy's word does
        line = _forwarded_address_line(proxy, servers)
        assert f"({FORGER})" in line and "6.6.6.6" not in line, line

        # one server drains: its clients move to the other, told nothing but retry:
        servers[0].signal(signal.SIGTERM)
        assert servers[0].wait(SETTINGS["drain_seconds"] + 10) == 0
        timings["drained"] = settle("every client to stream from the second server", 15)
        assert [c.summary() for c in clients if c.of("unavailable")] == [], "a server was up all along"
        # every stream on one server, 3 of them for 127.0.0.1 (the cap): the health checks, from the proxy's
        # 127.0.0.1 too, are not counted (a 429 would take the server out of the pool)
        checks_stay_up(ports[1:])

        # the other is killed: no server at all; every client is told to come back, and stays
        servers[1].signal(signal.SIGKILL)
        servers[1].wait(10)
        killed = time.monotonic()
        wait_until(
            lambda: all(c.of("unavailable", killed) for c in clients),
            "every client to get `unavailable`",
            15,
            state,
            chromium.collect,
        )
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            streams = list(pool.map(lambda p: https_get(proxy.url + p, cert), STREAM_PATHS))
            listing = pool.submit(https_get, f"{proxy.url}/api/v1/attackers", cert).result()
        for path, (status, headers, body) in zip(STREAM_PATHS, streams, strict=True):
            assert (status, headers["content-type"].split(";")[0], body.decode()) == (
                200,
                "text/event-stream",
                UNAVAILABLE_BODY,
            ), path
        assert listing[0] in (502, 503, 504), "a JSON endpoint keeps its real error"
        assert all(json.loads(f.data) == UNAVAILABLE for c in clients for f in c.of("unavailable"))

        # the drained server comes back: every client resumes on it (the killed server's share of the per-user
        # cap frees within LURESTREAM_CAP_LEASE_SECONDS)
        live[0] = start_server(port=ports[0], **settings)
        every.append(live[0])
        timings["back on one"] = settle("every client to stream from the restarted server", 20)
        live[1] = start_server(port=ports[1], **settings)
        every.append(live[1])
        timings["back on both"] = settle("every client to stream with both servers back", 15)
        checks_stay_up(ports)

        published = publisher.stop()
        last = {a: max(p.seq for p in published if p.attacker == a) for a in (A, B)}
        wait_until(
            lambda: all(max(c.sequences(), default=0) >= last[c.attacker] for c in clients),
            "every client to get the last event of its stream",
            15,
            state,
            chromium.collect,
        )
        chromium.collect()

        assert [c.summary() for c in clients if c.closed] == [], (
            "no client may ever be CLOSED; the servers refused:\n" + "\n".join(_refusals(every))
        )
        assert {c.name: _disorder(c) for c in clients if _disorder(c)} == {}, (
            "duplicates or disorder\n" + "\n".join(c.summary() for c in clients) + "\n" + "\n".join(_warnings(every))
        )
        assert {c.name: _missed(c, published) for c in clients if _missed(c, published)} == {}, state()
        resumes = sum(len(c.of("resumed")) for c in clients)
        rebuilt = sum(1 for c in clients for f in c.of("snapshot") if json.loads(f.data).get("resumed") is False)
        print(
            f"\n{name}: {len(published)} events, {len(clients)} clients, {resumes} resumes, {rebuilt} rebuilt from "
            f"a snapshot, {sum(len(c.of('unavailable')) for c in clients)} `unavailable` answers; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
            + f"; {time.monotonic() - started:.1f}s in all"
        )
