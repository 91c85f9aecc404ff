"""Hostile input (protocol §11) beyond the HTTP edge: bus messages, parameters, tokens, caches, mint rate,
methods and headers, start-up and bus-down logging. Each test is one item of the issue that found it.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from harness import ATTACKER_A, SECRET, VIEWER, envelope
from processes import lurestream_env

from lurestream import sse
from lurestream.cache import TTLCache
from lurestream.envelope import MAX_DEPTH, MalformedMessage, decode_envelope
from lurestream.limits import MintRate
from lurestream.localservices import free_port

A = ATTACKER_A["_id"]


# -- bus messages: strict JSON out, bounded work in ------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"ts": NaN, "payload": {}}',
        b'{"ts": Infinity, "payload": {}}',
        b'{"ts": 1e999, "payload": {}}',
        b'{"ts": 1, "payload": {"x": -Infinity}}',
        b'{"ts": 1, "payload": {"x": 1e400}}',
        b'{"ts": ' + b"9" * 400 + b', "payload": {}}',  # an int too large for a float
        b'{"ts": 1, "payload": {"x": ' + b"9" * 5000 + b"}}",  # past Python's integer digit limit
        b'{"payload": {"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}",  # raised RecursionError before
        b'{"payload": {"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}}",  # depth 65 with the envelope
        '{"payload": {"s": "\u00e9"}}'.encode("utf-16"),  # JSON, but not UTF-8
    ],
)
def test_non_strict_or_unbounded_bus_bodies_are_malformed(body):
    with pytest.raises(MalformedMessage):
        decode_envelope("attacker.observation.x", body)


def test_limits_of_the_decoder_are_exact():
    deepest_ok = b'{"payload": {"a": ' + b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2) + b"}}"
    assert decode_envelope("s", deepest_ok).payload
    assert decode_envelope("s", b'{"payload": {"pad": "' + b"x" * 1000 + b'"}}', max_bytes=1030)
    with pytest.raises(MalformedMessage):
        decode_envelope("s", b'{"payload": {"pad": "' + b"x" * 1000 + b'"}}', max_bytes=1000)


@pytest.mark.parametrize(
    "value",
    [
        -(2**63) - 1,  # 19 digits, the first integer past 64 bits below zero
        2**64,  # 20 digits
        10**40,
        "\ud800 hidden from a dashboard if a lone surrogate made the body malformed",
        "é ☃ \U0001f600 \u2028 \u2029 \x85 \x0b \x0c \x1c",  # what str.splitlines() breaks on, beyond CR/LF
    ],
)
def test_values_a_fast_parser_would_change_are_forwarded_exactly(value):
    """orjson reads integers past 64 bits as floats and refuses escaped lone surrogates; the decoder
    reads those bodies exactly instead, and the frame carries the same value."""
    body = json.dumps({"ts": 1, "payload": {"attacker_uuid": "a", "v": value}}).encode()
    env = decode_envelope("attacker.observation.x", body)
    assert env.payload["v"] == value and type(env.payload["v"]) is type(value)
    frame = sse.encode_event("observation", env.topic, env.type, env.ts, env.payload, "abcdefgh-7")
    data = frame.decode("utf-8").split("\ndata: ", 1)[1].removesuffix("\n\n")
    assert len(data.splitlines()) == 1, "one line under any line splitter, not only SSE's"
    assert json.loads(data)["payload"]["v"] == value


def test_stored_nan_is_sent_as_null_not_as_non_json():
    text = sse.dumps({"confidence": float("nan"), "v": [float("inf"), 1.5], "ok": 2.0})
    assert json.loads(text) == {"confidence": None, "v": [None, 1.5], "ok": 2.0}
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.gen_test(timeout=60)
async def test_non_json_numbers_never_reach_a_dashboard(ls):
    client = await ls.attacker(A)
    before = ls.hub.metrics.value("lurestream_bus_malformed_total")
    subject = "attacker.observation.ja3"
    for raw in (
        b'{"ts": NaN, "payload": {"attacker_uuid": "%s"}}',
        b'{"ts": 1, "payload": {"attacker_uuid": "%s", "v": Infinity}}',
    ):
        await ls.publish(subject, raw=raw.replace(b"%s", A.encode()))
    deep = b'{"payload": {"attacker_uuid": "' + A.encode() + b'", "a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    await ls.publish(subject, raw=deep)
    await ls.publish(subject, {"attacker_uuid": A, "value": "after"})
    frame = await client.next_event(5)
    assert frame.json()["payload"]["value"] == "after", "only the strict message is forwarded"
    assert ls.hub.metrics.value("lurestream_bus_malformed_total") - before == 3
    hist = ls.services.metrics.delivery_seconds
    total = next(s.value for m in hist.collect() for s in m.samples if s.name.endswith("_sum"))
    assert math.isfinite(total), "a NaN ts made the latency histogram's sum NaN for good"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_message_bytes="4KiB")
async def test_oversized_bus_messages_are_malformed(ls):
    client = await ls.attacker(A)
    before = ls.hub.metrics.value("lurestream_bus_malformed_total")
    await ls.publish("attacker.observation.x", {"attacker_uuid": A, "pad": "x" * 5000})
    await ls.publish("attacker.observation.x", {"attacker_uuid": A, "pad": "small"})
    assert (await client.next_event(5)).json()["payload"]["pad"] == "small"
    assert ls.hub.metrics.value("lurestream_bus_malformed_total") - before == 1


def test_replay_memory_is_bounded_in_bytes():
    from lurestream.hub import Hub

    hub = Hub("", replay_max=10_000, replay_memory_bytes=100_000)
    hub.position = 0
    hub.memory.start(0)
    body = envelope("attacker.observation.x", {"attacker_uuid": "u", "pad": "x" * 9000})
    for seq in range(1, 201):
        hub.dispatch("attacker.observation.x", body, seq=seq)
    assert hub.memory.bytes <= 100_000 and len(hub.memory) < 12, "200 × 9 KB events kept within 100 KB"
    assert hub.memory.floor == 200 - len(hub.memory), "what was dropped is no longer claimed for resumes"


# -- parameters, tokens, static names: 4xx, never 500 ------------------------------------------------
@pytest.mark.gen_test
async def test_bad_parameters_and_paths_are_4xx_json(ls):
    token = ls.token()
    for limit in ("%C2%B2", "1" * 4400, "0x10", "-5", "5.0"):
        response = await ls.fetch("GET", f"/api/v1/attackers?limit={limit}", bearer=token)
        assert response.code == 400, (limit, response.code)
    for path in ("/static/dashboard.js%00.png", "/static/../setup.py", "/static/nope.js", "/static/a%2Fb.js"):
        response = await ls.fetch("GET", path)
        assert response.code == 404, (path, response.code)
        assert json.loads(response.body) == {"detail": "Not Found"}
        assert response.headers["Content-Type"] == "application/json"


@pytest.mark.gen_test
async def test_a_signed_token_with_a_string_or_infinite_exp_is_401_every_time(ls):
    for claims in ({"exp": str(int(time.time()) + 3600)}, {"iat": "0"}, {"exp": True}):
        token = ls.token(**claims)
        for _ in range(2):  # the second use came from the verified-token cache and was a 500
            response = await ls.fetch("GET", "/api/v1/attackers", bearer=token)
            assert response.code == 401, (claims, response.code)


@pytest.mark.gen_test
async def test_overlong_ids_are_404_without_a_store_query(ls):
    calls = []
    original = ls.services.store.get_attackers

    async def counted(uuids):
        calls.append(uuids)
        return await original(uuids)

    ls.services.store.get_attackers = counted
    response = await ls.fetch("GET", f"/api/v1/attackers/{'x' * 129}/events", bearer=ls.token())
    assert response.code == 404 and json.loads(response.body) == {"detail": "Attacker not found"}
    assert calls == []
    unauthenticated = await ls.fetch("GET", f"/api/v1/attackers/{'x' * 129}/events")
    assert unauthenticated.code == 401, "still auth first"
    assert len(ls.services.resources) == 0


# -- caches and rates: bounded memory ---------------------------------------------------------------
class Clock:
    """A ``time`` module whose ``monotonic()`` moves only when the test says: time-based rules tested
    without sleeping, and without a loaded machine's pauses moving the clock mid-test."""

    def __init__(self) -> None:
        self.now = 1000.0
        for name in dir(time):
            if not name.startswith("_"):
                setattr(self, name, getattr(time, name))
        self.monotonic = lambda: self.now


def test_caches_drop_expired_entries_on_purge(monkeypatch):
    import lurestream.cache

    clock = Clock()
    monkeypatch.setattr(lurestream.cache, "time", clock)
    cache: TTLCache[int] = TTLCache(0.05)
    for i in range(1000):
        cache.set(f"k{i}", i)
    assert cache.purge() == 0 and len(cache) == 1000
    clock.now += 0.049
    assert cache.purge() == 0, "not before the TTL"
    clock.now += 0.002
    cache.set("fresh", 1)
    assert cache.purge() == 1000 and len(cache) == 1


@pytest.mark.gen_test(timeout=30)
async def test_housekeeping_purges_caches_without_the_same_key_asked_again(ls):
    token = ls.token()
    for i in range(50):  # distinct unknown ids: each a cached "not found"
        assert (await ls.fetch("GET", f"/api/v1/attackers/nope-{i}/events", bearer=token)).code == 404
    assert len(ls.services.resources) >= 50
    await ls.wait_for(lambda: len(ls.services.resources) == 0, timeout=5, what="the 1 s resource cache purged")


def test_mint_rate_is_a_token_bucket_per_user():
    rate = MintRate(3, 60.0)
    assert [rate.take("u", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.take("u", now=0.0) == pytest.approx(20.0), "one mint back every 20 s"
    assert rate.take("v", now=0.0) == 0.0, "another user is not affected"
    assert rate.take("u", now=20.0) == 0.0
    assert rate.purge(now=500.0) == 2 and len(rate) == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(mint_rate="5/60s")
async def test_ticket_minting_is_rate_limited_per_user(ls):
    from harness import SECOND_VIEWER

    token = ls.token()
    codes = [(await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)).code for _ in range(5)]
    assert codes == [200] * 5
    refused = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)
    assert refused.code == 429 and json.loads(refused.body) == {"detail": "Too many ticket requests"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 12
    assert ls.db.sse_tickets.count_documents({}) == 5, "a refused mint costs no store write"
    other = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=ls.token(SECOND_VIEWER))
    assert other.code == 200


# -- methods and headers ------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_head_on_probes_and_405_with_allow(ls):
    for path in ("/healthz", "/readyz", "/metrics"):
        response = await ls.fetch("HEAD", path)
        assert response.code == 200 and response.body == b"", path
    for method, path, allow in (
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("DELETE", f"/api/v1/attackers/{A}/events", "GET, OPTIONS"),
        ("GET", "/api/v1/auth/sse-ticket", "POST, OPTIONS"),
        ("PUT", "/api/v1/attackers", "GET, OPTIONS"),
    ):
        response = await ls.fetch(method, path, body=b"" if method in ("POST", "PUT") else None)
        assert response.code == 405, (method, path)
        assert response.headers["Allow"] == allow, (method, path, response.headers.get("Allow"))
        assert json.loads(response.body)["detail"]


@pytest.mark.gen_test
async def test_every_json_response_says_nosniff(ls):
    for method, path in (("GET", "/healthz"), ("GET", "/nope"), ("GET", "/api/v1/attackers"), ("POST", "/healthz")):
        response = await ls.fetch(method, path, body=b"" if method == "POST" else None)
        assert response.headers["X-Content-Type-Options"] == "nosniff", (method, path)


@pytest.mark.gen_test
@pytest.mark.lurestream(cors_origins="https://ops.example")
async def test_with_cors_every_response_varies_on_origin(ls):
    for origin in ("https://ops.example", "https://evil.example", None):
        headers = {"Origin": origin} if origin else {}
        response = await ls.fetch("GET", "/healthz", headers=headers)
        assert response.headers.get("Vary") == "Origin", origin
        expected = origin if origin == "https://ops.example" else None
        assert response.headers.get("Access-Control-Allow-Origin") == expected


@pytest.mark.gen_test(timeout=30)
async def test_store_down_503_within_the_mongo_timeout(nats_service):
    """PyMongo's own server selection overshot to about twice the timeout after the first request; 1.6 times
    it still catches that, with room for a loaded machine."""
    from harness import standalone

    dead = f"mongodb://127.0.0.1:{free_port()}"
    timeout = 1.0
    async with standalone("", dead, "d", settings={"mongo_timeout_ms": int(timeout * 1000)}) as ls:
        for _ in range(3):
            started = time.monotonic()
            response = await ls.fetch("GET", f"/api/v1/attackers/{A}/events", bearer=ls.token())
            took = time.monotonic() - started
            assert response.code == 503 and took < 1.6 * timeout, took


# -- start-up and the bus -----------------------------------------------------------------------------
def test_a_busy_port_is_one_line_and_exit_1(nats_service, mongo_service):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = lurestream_env(port=port, jwt_secret=SECRET, nats_url=nats_service.url, mongo_uri=mongo_service.url)
        for processes in ("1", "2"):
            result = subprocess.run(
                [sys.executable, "-m", "lurestream", "serve", "--processes", processes],
                capture_output=True,
                text=True,
                env=env,
                timeout=30,
            )
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            assert f"lurestream: cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.gen_test(timeout=60)
async def test_a_bus_that_stays_down_is_logged_rarely_and_ttl_indexes_are_checked(start_server):
    server = start_server(wait_ready=False, nats_url=f"nats://127.0.0.1:{free_port()}")
    deadline = time.monotonic() + 30
    while "MongoDB collection sse_sessions has no TTL index" not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        await asyncio.sleep(0.1)
    assert "MongoDB collection sse_tickets has no TTL index" in server.log()
    await asyncio.sleep(6)  # on purpose: nats.py reports a failed attempt about every second; a few must pass
    log = server.log()
    assert log.count("NATS unreachable") + log.count("NATS error") <= 1, log[-2000:]


@pytest.mark.gen_test(timeout=60)
async def test_percent_encoded_credential_names_are_masked_in_the_log(start_server):
    """A ticket logged verbatim under ``?%74icket=`` was redeemed from the log."""
    from lurestream.config import config_from
    from lurestream.tokens import mint_token

    server = start_server()
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    base = f"http://127.0.0.1:{server.port}"

    def call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(
        None, lambda: call(f"{base}/api/v1/auth/sse-ticket", "POST", {"Authorization": f"Bearer {token}"})
    )
    ticket = json.loads(body)["ticket"]
    path = f"/api/v1/topologies/nope/events?%74icket={urllib.parse.quote(ticket)}&t%6Fken={token}"
    assert (await loop.run_in_executor(None, call, base + path))[0] == 404, "Tornado honoured the encoded ticket"
    deadline = time.monotonic() + 10
    while "404 GET /api/v1/topologies/nope/events" not in server.log():  # written just after the reply went out
        assert time.monotonic() < deadline, server.log()[-2000:]
        await asyncio.sleep(0.02)
    log = server.log()
    assert ticket not in log and token not in log and token[:40] not in log
    assert "%74icket=***" in log


def test_log_floods_are_bounded_and_summarised(monkeypatch):
    import logging

    import lurestream.logs
    from lurestream.logs import FloodFilter

    clock = Clock()
    monkeypatch.setattr(lurestream.logs, "time", clock)
    flood = FloodFilter(rate=10, burst=5)

    def record(status: int, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("tornado.access", level, "x", 1, "%d %s", (status, "GET /"), None)

    passed = [flood.filter(record(429)) for _ in range(1000)]
    assert sum(passed) <= 6, "a burst, then nothing while the flood lasts"
    assert flood.filter(record(404)), "another kind of line is not hidden by the flood"
    assert flood.filter(record(500, logging.ERROR)), "errors always pass"
    clock.now += 0.05
    assert not flood.filter(record(429)), "half a token back: still suppressed"
    clock.now += 0.1
    summary = record(429)
    assert flood.filter(summary) and "similar lines suppressed" in summary.getMessage()


@pytest.mark.gen_test
async def test_a_refused_request_is_one_access_line_with_its_reason(ls, caplog):
    caplog.set_level("INFO")
    await ls.fetch("GET", f"/api/v1/attackers/{A}/events", bearer="garbage.token.here")
    lines = [r for r in caplog.records if r.name.startswith("tornado.")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith("401 GET") and "auth refused: invalid token" in lines[0].getMessage()


@pytest.mark.gen_test
@pytest.mark.lurestream(cors_origins="https://ops.example.org")
async def test_a_cors_preflight_allows_the_methods_the_path_has(ls):
    """The preflight said `GET, POST, OPTIONS` everywhere: a dashboard on another origin could not sign out
    (DELETE /api/v1/auth/sse-session)."""
    headers = {"Origin": "https://ops.example.org", "Access-Control-Request-Method": "DELETE"}
    session = await ls.fetch("OPTIONS", "/api/v1/auth/sse-session", headers=headers)
    assert session.code == 204
    assert session.headers["Access-Control-Allow-Methods"] == "POST, DELETE, OPTIONS"
    stream = await ls.fetch("OPTIONS", "/api/v1/identities/events", headers=headers)
    assert stream.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"


@pytest.mark.gen_test
async def test_the_page_s_files_ignore_byte_ranges(ls):
    """A Range header got a 206, or for an unsatisfiable one a text/plain 416 — not JSON (protocol §1)."""
    whole = await ls.fetch("GET", "/static/dashboard.css")
    for value in ("bytes=0-9", "bytes=999999-"):
        ranged = await ls.fetch("GET", "/static/dashboard.css", headers={"Range": value})
        assert ranged.code == 200 and ranged.body == whole.body, value
