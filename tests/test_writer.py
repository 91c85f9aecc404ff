"""The live writer (writer.py) on real sockets: partial writes, stalls, peer closes, the sweep, lagging by
bytes, chunk framing as a strict HTTP/1.1 client reads it, and many streams on one key and on many.

Unit tests drive a ``LiveWriter`` over ``socket.socketpair()`` with a real (bus-less) ``Hub``; the end
to end ones go through the app (``ls``), whose leak guard checks every registration, slot and per-address
count is given back.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest
from harness import ATTACKER_A, envelope, until

from lurestream.hub import Hub
from lurestream.writer import CLIENT_CLOSED, LAGGING, SEND_TIMEOUT, LiveStream, LiveWriter

A = ATTACKER_A["_id"]
KEY = ("attacker", "u1")
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class Rig:
    """A writer, a bus-less hub, and what ended: one per scenario."""

    def __init__(self, **limits: Any) -> None:
        self.hub = Hub("")
        self.ended: list[tuple[LiveStream, str]] = []
        settings: dict[str, Any] = dict(
            keepalive_seconds=15.0, send_timeout_seconds=10.0, retry_ms=1000, max_bytes=8 << 20, queue_max=100_000
        )
        settings.update(limits)
        self.writer = LiveWriter(self.hub.metrics, **settings)
        self.writer.start()
        self.peers: list[socket.socket] = []

    def open(self, keys: list[tuple[str, str]] = [KEY], rcvbuf: int = 0) -> tuple[LiveStream, socket.socket]:  # noqa: B006
        ours, theirs = socket.socketpair()
        if rcvbuf:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        theirs.setblocking(False)
        self.peers.append(theirs)
        stream = self.writer.open(
            ours,
            self.hub,
            keys,
            HEAD,
            user="u",
            kind="attacker",
            on_end=lambda s: self.ended.append((s, s.reason or "")),
        )
        return stream, theirs

    def publish(self, n: int, pad: int = 0, seq: int = 0) -> int:
        body = envelope("attacker.observation.x", {"attacker_uuid": "u1", "n": n, "pad": "x" * pad})
        return self.hub.dispatch("attacker.observation.x", body, seq=seq)

    def close(self) -> None:
        self.writer.close()
        for peer in self.peers:
            peer.close()


async def read_all(peer: socket.socket, until: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
    """Read from ``peer`` until ``until(what was read)`` or EOF."""
    loop = asyncio.get_running_loop()
    got = b""
    deadline = loop.time() + timeout
    while not until(got):
        remaining = deadline - loop.time()
        assert remaining > 0, f"timed out; got {len(got)} bytes ending {got[-200:]!r}"
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), remaining)
        except asyncio.TimeoutError:
            continue
        if not chunk:
            break
        got += chunk
    return got


def h11_body(raw: bytes) -> tuple[bytes, bool]:
    """The response body as a strict HTTP/1.1 client decodes it, and whether the message ended."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(raw)
    body, ended = b"", False
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            return body, ended
        if isinstance(event, h11.Response):
            assert event.status_code == 200
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return body, True


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_partial_writes_wait_for_writability_and_lose_nothing():
    async def scenario() -> None:
        rig = Rig()
        stream, peer = rig.open(rcvbuf=4096)
        stream.go_live([b"event: snapshot\ndata: {}\n\n"], 0)
        for n in range(150):  # ~1.5 MB through a small window: many partial writes
            assert rig.publish(n, pad=10_000) == 1
        await until(lambda: stream.stalled_since, 10, "the first flush")  # the peer does not read yet: it stays
        assert stream.unsent is not None and stream.stalled_since, "the kernel took only part"
        raw = await read_all(peer, lambda got: got.count(b'"n":') >= 150)
        body, _ended = h11_body(raw)
        numbers = [int(part.split(b",")[0]) for part in body.split(b'"n":')[1:]]
        assert numbers == list(range(150)), "every frame, in order, exactly once"
        assert stream.stalled_since == 0 and stream.unsent is None, "drained: no longer waiting to write"
        rig.close()

    run(scenario)


def test_a_reader_stalled_mid_frame_is_closed_by_the_send_timeout_and_delays_no_one():
    async def scenario() -> None:
        rig = Rig(send_timeout_seconds=0.3)
        stalled, _stalled_peer = rig.open(rcvbuf=4096)  # never reads
        healthy, peer = rig.open()
        for s in (stalled, healthy):
            s.go_live([b": opened\n\n"], 0)
        for n in range(40):
            rig.publish(n, pad=20_000)  # the stalled socket takes a part of the first frame, then nothing
        got = await read_all(peer, lambda got: b'"n":39' in got)
        assert got.count(b'"n":') == 40
        await until(lambda: rig.ended, 10, "the stalled stream's end")
        assert rig.ended == [(stalled, SEND_TIMEOUT)]
        assert rig.hub.subscription_count == 1, "only the healthy stream is still registered"
        rig.close()

    run(scenario)


def test_a_peer_close_is_seen_without_a_write():
    """Nothing is written for an hour (no event, no keepalive): a close seen within seconds was seen by reading."""

    async def scenario() -> None:
        rig = Rig(keepalive_seconds=3600, send_timeout_seconds=3600)
        stream, peer = rig.open()
        stream.go_live([b": opened\n\n"], 0)
        await read_all(peer, lambda got: b"opened" in got)
        peer.close()
        await until(lambda: rig.ended, 10, "the stream's end")
        assert rig.ended == [(stream, CLIENT_CLOSED)]
        assert rig.hub.subscription_count == 0 and rig.writer.streams == set()
        rig.close()

    run(scenario)


def test_the_sweep_sends_keepalives_to_idle_streams_only():
    async def scenario() -> None:
        rig = Rig(keepalive_seconds=0.2)
        rig.hub.begin_epoch("abcdefgh", 42, 42)  # as with JetStream: keepalives carry the position (41)
        idle, idle_peer = rig.open()
        busy, busy_peer = rig.open(keys=[("attacker", "busy")])
        idle.go_live([b": opened\n\n"], 0)
        busy.go_live([b": opened\n\n"], 0)
        idle_body, _ = h11_body(await read_all(idle_peer, lambda got: got.count(b"keepalive") >= 4))
        assert b": keepalive\nid: abcdefgh-41\n\n" in idle_body, "the timer's sweeps keep an idle stream alive"

        # The rule each sweep applies, at moments of the test's choosing: a loaded machine can pause the loop
        # for longer than a keepalive period, so traffic paced by sleeps could not prove it.
        body = envelope("attacker.observation.x", {"attacker_uuid": "busy", "n": 0})
        assert rig.hub.dispatch("attacker.observation.x", body) == 1
        rig.writer.flush()  # the event is sent now (this is what each loop tick does)
        assert not busy.frames and busy.unsent is None
        sent = busy.last_sent
        rig.writer.sweep(sent + 0.15)
        assert not busy.frames, "a stream with traffic within the keepalive period needs no keepalive"
        rig.writer.sweep(sent + 0.25)
        assert busy.frames == [b": keepalive\nid: abcdefgh-41\n\n"], "idle for a period: its keepalive"
        busy_body, _ = h11_body(await read_all(busy_peer, lambda got: got.endswith(b"abcdefgh-41\n\n\r\n")))
        assert busy_body.split(b'"n":0', 1)[1].count(b"keepalive") == 1
        rig.close()

    run(scenario)


def test_lagging_is_by_bytes_and_the_stream_gets_its_queue_a_retry_hint_and_the_end():
    async def scenario() -> None:
        rig = Rig(max_bytes=100_000)
        stream, peer = rig.open(rcvbuf=4096)
        stream.go_live([b": opened\n\n"], 0)
        delivered = [rig.publish(n, pad=5_000) for n in range(100)]
        assert 0 in delivered, "past 100 KB queued the stream stopped receiving"
        assert rig.hub.subscription_count == 0 and stream.closing
        assert stream.unflushed <= 100_000 + 6_000, "never more than the bound plus the frame that tipped it"
        raw = await read_all(peer, lambda got: got.endswith(b"0\r\n\r\n"))
        body, ended = h11_body(raw)
        assert ended, "the chunked response is properly terminated"
        assert body.rstrip().endswith(b"retry: " + body.rsplit(b"retry: ", 1)[1].rstrip())
        await until(lambda: rig.ended, 10, "the lagging stream's end")
        assert rig.ended == [(stream, LAGGING)]
        rig.close()

    run(scenario)


def test_a_replay_longer_than_the_queue_bound_is_not_lagging():
    """A resume replays up to REPLAY_MAX events (bounded in bytes): a live event arriving before the first
    flush was counted against QUEUE_MAX with every replayed frame, and closed a healthy stream as
    lagging (seen as a flaky resume test under load)."""

    async def scenario() -> None:
        rig = Rig(queue_max=8)
        stream, peer = rig.open()
        replay = [f"id: {n}\ndata: {n}\n\n".encode() for n in range(1, 51)]
        stream.go_live([b"event: resumed\ndata: {}\n\n", *replay], 50)
        assert rig.publish(51, seq=51) == 1, "a live event right after a long replay is delivered"
        assert not stream.closing
        raw = await read_all(peer, lambda got: b'"n":51' in got)
        body, _ended = h11_body(raw)
        assert body.count(b"data: ") == 52 and b"retry:" not in body
        rig.close()

    run(scenario)


@pytest.mark.gen_test(timeout=60)
async def test_the_chunked_response_is_strict_http_and_ends_properly(ls):
    reader, writer = await asyncio.open_connection("127.0.0.1", ls.port)
    writer.write(f"GET /api/v1/attackers/{A}/events?token={ls.token()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = b""
    while b"event: snapshot" not in raw:
        raw += await asyncio.wait_for(reader.read(65536), 5)
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "value": "v"})
    while b"event: observation" not in raw:
        raw += await asyncio.wait_for(reader.read(65536), 5)
    ls.services.writer.drain_all()
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        raw += chunk
    body, ended = h11_body(raw)
    assert ended
    assert body.startswith(b": keepalive\n\nevent: snapshot\n")
    assert b"event: observation\n" in body and b"\nretry: " in body
    writer.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(sse_max_per_user=1000)
async def test_many_streams_on_one_key_and_on_many_keys(ls):
    ls.db.attackers.insert_many([{"_id": f"many-{i}", "ip": f"198.51.100.{i % 250}"} for i in range(60)])
    token = ls.token()
    one = await asyncio.gather(*(ls.open(f"/api/v1/attackers/{A}/events", token=token) for _ in range(60)))
    many = await asyncio.gather(*(ls.open(f"/api/v1/attackers/many-{i}/events", token=token) for i in range(60)))
    await asyncio.gather(*(c.start_stream() for c in (*one, *many)))
    await ls.publish("attacker.observation.x", {"attacker_uuid": A, "n": "shared"})
    for i in range(60):
        await ls.publish("attacker.observation.x", {"attacker_uuid": f"many-{i}", "n": i})
    for client in one:
        assert (await client.next_event(5)).json()["payload"]["n"] == "shared"
    for i, client in enumerate(many):
        assert (await client.next_event(5)).json()["payload"]["n"] == i
        await client.expect_silence(0.01)
    assert ls.hub.subscription_count == 120 and ls.hub.routing_keys == 1 + 60 * 2 + 2  # uuid + ip each; A's ip, id
