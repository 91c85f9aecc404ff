"""The per-address connection cap (protocol §11 ``MAX_CONNECTIONS_PER_IP``) counts clients, never probes.

It is decided at a connection's first request head that is not a probe: a load balancer's health checks
from its one address are always answered (a 429 there marked every backend DOWN), and behind a trusted
proxy (``TRUST_PROXY_HEADERS``) each client is counted under the address the proxy reports — the last
``X-Forwarded-For`` hop, which a client cannot choose, before ``X-Real-IP``, which it can send itself.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from harness import ATTACKER_A

A = ATTACKER_A["_id"]
PROXY = "127.0.0.1"  # every test client connects from here: the proxy's address when headers are trusted
NOT_A_PROBE = "/api/v1/topologies"  # answered 401 without credentials, on a kept-alive connection


class Conn:
    """One kept-alive HTTP/1.1 connection: send requests on it, read each response whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict]:
        lines = [f"{method} {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        got = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines if line)}
        if method != "HEAD" and "content-length" in got:
            got["body"] = (await asyncio.wait_for(self.reader.readexactly(int(got["content-length"])), 10)).decode()
        return int(status_line.split()[1]), got

    def close(self) -> None:
        self.writer.close()


async def held(port: int, path: str = NOT_A_PROBE, headers: dict[str, str] | None = None) -> tuple[int, Conn]:
    """A new connection that has sent one request and stays open: (the response status, the connection)."""
    conn = await Conn.open(port)
    status, _ = await conn.request(path, headers)
    return status, conn


async def status_of(port: int, path: str = NOT_A_PROBE, headers: dict[str, str] | None = None) -> int:
    """The status of one request on a connection of its own, closed afterwards."""
    status, conn = await held(port, path, headers)
    conn.close()
    return status


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def refused(ls, reason: str) -> float:
    return ls.metric("lurestream_http_refused_total", reason=reason)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_connections_per_ip=1)
async def test_probes_from_one_address_are_never_counted_nor_refused(ls):
    """HAProxy checks ``/readyz`` from its one address: a 429 there marked every backend DOWN."""
    connections = ls.services.connections
    status, counted = await held(ls.port)
    assert status == 401 and connections.count(PROXY) == 1
    probes = []
    for path, method in [(p, m) for p in ("/healthz", "/readyz", "/metrics") for m in ("GET", "HEAD")] * 2:
        conn = await Conn.open(ls.port)
        probes.append(conn)
        for _ in range(2):  # kept alive, probing again
            status, headers = await conn.request(path, method=method)
            assert status == 200, (path, method, status, headers)
    silent = [await asyncio.open_connection("127.0.0.1", ls.port) for _ in range(3)]  # no head yet: not counted
    await asyncio.sleep(0.1)  # on purpose: time for the server to accept them, to show they are not counted
    assert connections.count(PROXY) == 1 and connections.total == 1
    assert refused(ls, "connections_per_ip") == 0

    status, headers = await probes[0].request(NOT_A_PROBE)  # a probing connection asks for more: now it counts
    assert status == 429 and json.loads(headers["body"]) == {"detail": "Too many connections from this address"}
    assert headers["retry-after"] == "1"
    counted.close()
    await ls.wait_for(lambda: connections.count(PROXY) == 0, what="the count released")
    assert (await probes[1].request(NOT_A_PROBE))[0] == 401
    assert connections.count(PROXY) == 1
    for conn in probes:
        conn.close()
    for _reader, writer in silent:
        writer.close()
    await ls.wait_for(lambda: connections.total == 0, what="every connection uncounted")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_connections_per_ip=1, trust_proxy_headers=True)
async def test_behind_a_trusted_proxy_each_client_is_counted_by_its_forwarded_address(ls):
    connections = ls.services.connections
    status, client_a = await held(ls.port, headers=xff("198.51.100.1"))
    assert status == 401
    status, client_b = await held(ls.port, headers=xff("203.0.113.9, 198.51.100.2"))  # the last hop is the proxy's
    assert status == 401, "another client behind the same proxy is not refused"
    assert connections.count("198.51.100.1") == 1 and connections.count("198.51.100.2") == 1
    assert connections.count(PROXY) == 0, "the proxy's own address counts nothing"

    assert await status_of(ls.port, headers=xff("198.51.100.1")) == 429, "one client beyond the cap is refused"
    # a client's own X-Real-IP, passed through by a proxy that only appends X-Forwarded-For, is not believed
    assert await status_of(ls.port, headers={"X-Real-IP": "198.51.100.77", **xff("198.51.100.1")}) == 429
    assert connections.count("198.51.100.77") == 0
    # a proxy that sets only X-Real-IP is believed; so is a forwarded IPv6 address, in one canonical form
    status, client_c = await held(ls.port, headers={"X-Real-IP": "198.51.100.3"})
    assert status == 401 and connections.count("198.51.100.3") == 1
    status, client_d = await held(ls.port, headers=xff("2001:DB8:0:0::1"))
    assert status == 401 and connections.count("2001:db8::1") == 1
    assert await status_of(ls.port, headers=xff("2001:db8::1")) == 429
    assert await status_of(ls.port, headers=xff("::ffff:198.51.100.1")) == 429, "an IPv4-mapped address is its IPv4"
    # no usable address reported: counted under the peer's
    status, direct = await held(ls.port, headers=xff("not-an-address"))
    assert status == 401 and connections.count(PROXY) == 1
    for path in ("/healthz", "/readyz", "/metrics"):  # the proxy's health checks, from its own address
        assert await status_of(ls.port, path) == 200
    assert refused(ls, "connections_per_ip") == 4

    # a proxy reusing a kept-alive backend connection for another client: the count moves, never doubles
    assert (await client_b.request(NOT_A_PROBE, xff("198.51.100.4")))[0] == 401
    assert connections.count("198.51.100.2") == 0 and connections.count("198.51.100.4") == 1
    assert (await client_b.request(NOT_A_PROBE, xff("198.51.100.4")))[0] == 401
    assert connections.count("198.51.100.4") == 1, "a kept-alive connection counts once"
    status, headers = await client_b.request(NOT_A_PROBE, xff("198.51.100.1"))  # that client holds the cap
    assert status == 429 and headers["connection"] == "close"
    await ls.wait_for(lambda: connections.count("198.51.100.4") == 0, what="the refused connection uncounted")

    for conn in (client_a, client_b, client_c, client_d, direct):
        conn.close()
    await ls.wait_for(lambda: connections.total == 0, what="every connection uncounted")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_connections_per_ip=1)
async def test_forwarded_addresses_are_ignored_unless_proxy_headers_are_trusted(ls):
    status, first = await held(ls.port, headers=xff("198.51.100.1"))
    assert status == 401 and ls.services.connections.count(PROXY) == 1
    assert await status_of(ls.port, headers=xff("198.51.100.2")) == 429
    assert await status_of(ls.port, headers={"X-Real-IP": "198.51.100.3"}) == 429
    first.close()
    await ls.wait_for(lambda: ls.services.connections.total == 0, what="every connection uncounted")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(max_connections_per_ip=1, trust_proxy_headers=True)
async def test_a_forwarded_clients_stream_keeps_its_count_until_it_ends(ls):
    """The count taken at the head follows the socket into the live writer, under the client's address."""
    headers = xff("198.51.100.1")
    stream = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token(), headers=headers)
    await stream.start_stream()
    assert ls.services.connections.count("198.51.100.1") == 1 and ls.services.connections.count(PROXY) == 0
    assert await status_of(ls.port, headers=headers) == 429
    second = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token(), headers=xff("198.51.100.2"))
    await second.start_stream()
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "value": "v"})
    assert (await stream.next_event(5)).event == "observation"
    stream.close()
    second.close()
    await ls.wait_for(lambda: ls.services.connections.total == 0, what="the streams' counts released")
