"""The HTTP edge (protocol §11): oversized heads, URLs and bodies, slow and idle clients, per-address caps.

Every refusal is a JSON ``{"detail": ...}`` reply the client can read (a lingering close, not a reset),
costs no store query and is counted in ``/metrics``; none of it can stall the process — a stream of
another user keeps receiving throughout (checked where it matters).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from harness import ATTACKER_A

A = ATTACKER_A["_id"]


async def raw_exchange(
    port: int, data: bytes, timeout: float = 10.0, then_wait: bool = True
) -> tuple[int, dict[str, str], bytes, float]:
    """Send ``data`` on a fresh connection and read one response: status, headers, body, seconds taken."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        return int(status_line.split()[1]), headers, body, time.monotonic() - started
    finally:
        writer.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def assert_closed(reader: asyncio.StreamReader, within: float) -> None:
    """The server closes the connection within ``within`` seconds (what it sends first is ignored)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"connection still open after {within}s"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except ConnectionResetError:
            return
        if not chunk:
            return


def refused(ls, reason: str) -> float:
    return ls.metric("lurestream_http_refused_total", reason=reason)


@pytest.mark.gen_test(timeout=60)
async def test_oversized_headers_get_431(ls):
    status, headers, body, _t = await raw_exchange(ls.port, get("/healthz", "X-Big: " + "a" * 100_000 + "\r\n"))
    assert status == 431, "an oversized head was answered with a bare close before"
    assert json.loads(body) == {"detail": "Request header fields too large"}
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert refused(ls, "header_too_large") == 1


@pytest.mark.gen_test(timeout=60)
async def test_long_urls_get_414_at_once_and_never_stall_other_streams(ls):
    """The 40 KB URL that froze the process for 32 s of CPU: a 414 for a few milliseconds of it, and a live
    stream of another client keeps receiving meanwhile. The server runs in this process, so the CPU time the
    process spends on the three requests bounds the server's work whatever else loads the machine."""
    watcher = await ls.attacker(A)
    for url in ("/healthz?" + "a" * 40_000, f"/api/v1/attackers/{'x' * 60_000}/events", "/healthz?" + "b" * 9_000):
        cpu = time.process_time()
        status, _h, body, _t = await raw_exchange(ls.port, get(url))
        cpu = time.process_time() - cpu
        assert status == 414 and json.loads(body) == {"detail": "URI too long"}, (url[:20], status)
        assert cpu < 0.5, f"a 414 cost {cpu:.2f} s of CPU"
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "value": "v"})
    assert (await watcher.next_event(5)).event == "observation"
    assert refused(ls, "uri_too_long") == 3


@pytest.mark.gen_test(timeout=60)
async def test_a_long_url_is_414_even_when_a_header_is_also_malformed(ls):
    """Found by schemathesis: a 9 KB query with a NUL in a cookie got Tornado's 400 (its parser refuses
    the header first); the URL bound is the answer whatever else is wrong with the head."""
    for extra in ("Cookie: lurestream_session=x\x00y\r\n", "Bad header line\r\n"):
        status, _h, body, _t = await raw_exchange(ls.port, get("/api/v1/topologies?limit=" + "a" * 9_000, extra))
        assert status == 414 and json.loads(body) == {"detail": "URI too long"}, (extra, status)
    status, _h, _b, _t = await raw_exchange(ls.port, get("/healthz?q=" + "a" * 100, "Bad header line\r\n"))
    assert status == 400, "a short URL with a malformed head is still a 400"


@pytest.mark.gen_test(timeout=60)
async def test_a_huge_declared_body_gets_413_before_any_of_it_is_read(ls):
    """The client sends 1,000 of the 90 MB it declares, then waits: a reply at all proves the server
    answered on the head alone, before (and without) reading the body."""
    for method, path in (("POST", "/api/v1/auth/sse-ticket"), ("GET", "/healthz")):
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 90000000\r\n\r\n".encode()
        status, _h, body, _t = await raw_exchange(ls.port, head + b"x" * 1000)
        assert status == 413, (path, status)
        assert json.loads(body)["detail"].startswith("Request body too large")
    head = b"POST /api/v1/auth/sse-ticket HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n"
    assert (await raw_exchange(ls.port, head))[0] == 413, "the bound is 4 KiB"
    ok = b"POST /api/v1/auth/sse-ticket HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    assert (await raw_exchange(ls.port, ok))[0] == 401, "a small body passes the edge (then needs credentials)"


@pytest.mark.gen_test(timeout=60)
async def test_chunked_or_malformed_bodies_and_heads_get_json_4xx(ls):
    chunked = b"POST /api/v1/auth/sse-ticket HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _h, body, _t = await raw_exchange(ls.port, chunked)
    assert status == 411 and "Content-Length" in json.loads(body)["detail"]
    for length in ("12abc", "-1", "1, 2", "9" * 40):
        head = f"POST /api/v1/auth/sse-ticket HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        status, headers, body, _t = await raw_exchange(ls.port, head)
        assert status == 400 and headers["content-type"] == "application/json", length
    status, headers, body, _t = await raw_exchange(ls.port, b"GARBAGE\r\n\r\n")
    assert status == 400 and json.loads(body)["detail"].startswith("Bad request"), "was a bare 400 with no body"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(header_timeout_seconds=0.5, idle_timeout_seconds=30)
async def test_slow_or_silent_clients_are_closed_after_the_header_timeout(ls):
    """Closed well before the 30 s idle timeout: it can only be the 0.5 s header timeout (the bound is wide
    so that a loaded machine cannot fail it)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", ls.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a slowloris: never finishes
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408 "), head
    await assert_closed(reader, 10)
    assert time.monotonic() - started < 10, "the header timeout, not the 30 s idle one"
    writer.close()
    started = time.monotonic()
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", ls.port)  # sends nothing at all
    await assert_closed(silent_reader, 10)
    assert time.monotonic() - started < 10, "the header timeout, not the 30 s idle one"
    silent.close()
    assert refused(ls, "header_timeout") == 2


async def served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One GET /healthz on a kept-alive connection, its response read whole."""
    writer.write(get("/healthz"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    await asyncio.wait_for(reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])), 10)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(header_timeout_seconds=0.5, idle_timeout_seconds=3)
async def test_kept_alive_connections_may_idle_longer_than_the_header_timeout_then_close(ls):
    """The two timeouts differ six-fold, so which one closed the connection shows whatever the load."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ls.port)
    await served(reader, writer)
    await asyncio.sleep(1)  # idle twice the header timeout (well within the idle one) on purpose
    sent = time.monotonic()  # the server's idle wait begins after this request's response
    await served(reader, writer)
    await assert_closed(reader, 15)  # then idle past the idle timeout: closed
    idled = time.monotonic() - sent
    assert 1 < idled < 15, f"closed {idled:.1f} s after the last request: the 3 s idle timeout, not the header one"
    writer.close()
    assert refused(ls, "idle_timeout") == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(header_timeout_seconds=0.5, idle_timeout_seconds=60)
async def test_a_begun_head_on_a_kept_alive_connection_must_finish_within_the_header_timeout(ls):
    """Closed within seconds while the idle timeout is a minute: a begun head gets the header timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ls.port)
    await served(reader, writer)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")  # a second request begins and stalls
    await assert_closed(reader, 10)
    assert time.monotonic() - started < 10, "a begun head gets the header timeout, not the idle timeout"
    writer.close()
    assert refused(ls, "header_timeout") == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_connections_per_ip=3)
async def test_connections_per_address_are_capped_and_released(ls):
    """A connection counts from its first request head that is not a probe (the probes are in
    test_edge_addresses), once for its whole kept-alive life, until it closes."""
    held = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", ls.port)
        for _ in range(2):  # kept alive: a second request does not count the connection again
            writer.write(get("/api/v1/topologies"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 401 "), head
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        held.append((reader, writer))
    assert ls.services.connections.count("127.0.0.1") == 3
    status, headers, body, _t = await raw_exchange(ls.port, get("/api/v1/topologies"))
    assert status == 429 and json.loads(body) == {"detail": "Too many connections from this address"}
    assert headers["retry-after"] == "1"
    assert refused(ls, "connections_per_ip") == 1
    held.pop()[1].close()
    await ls.wait_for(lambda: ls.services.connections.count("127.0.0.1") == 2)
    assert (await raw_exchange(ls.port, get("/api/v1/topologies")))[0] == 401
    for _reader, writer in held:
        writer.close()
    await ls.wait_for(lambda: ls.services.connections.total == 0, what="every connection uncounted")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_connections_per_ip=2)
async def test_an_open_stream_keeps_its_connection_counted_until_it_ends(ls):
    stream = await ls.attacker(A)
    assert ls.services.connections.count("127.0.0.1") == 1
    stream.close()
    await ls.wait_for(lambda: ls.services.connections.count("127.0.0.1") == 0, what="the stream's count released")
