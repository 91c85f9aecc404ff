"""Every exit path of a stream releases its slot and registration: error, stalled reader, shutdown."""

from __future__ import annotations

import asyncio
import socket

import pytest
from harness import ATTACKER_A, VIEWER, standalone

A = ATTACKER_A["_id"]


@pytest.mark.gen_test(timeout=60)
async def test_snapshot_failure_sends_error_frame_and_ends(private_mongo, nats_service):
    """MongoDB dies between the existence check and the snapshot read: error frame, end, slot back."""
    svc = private_mongo
    async with standalone(nats_service.url, svc.url, "d", settings={"mongo_timeout_ms": 300}) as ls:
        store = ls.services.store
        original = store.latest_observations_many
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held(attacker_uuids):
            entered.set()
            await gate.wait()
            return await original(attacker_uuids)

        store.latest_observations_many = held
        client = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token())
        await asyncio.wait_for(entered.wait(), 5)
        svc.stop()
        gate.set()
        assert client.status == 200
        assert (await client.next_frame()).is_keepalive
        frame = await client.next_frame(10)
        assert frame.event == "error"
        assert frame.json() == {"message": "Stream interrupted"}
        with pytest.raises(EOFError):
            await client.next_frame(5)
        await ls.wait_for(lambda: ls.services.limiter.held() == 0 and ls.hub.subscription_count == 0)


@pytest.mark.gen_test
async def test_shutdown_ends_streams_and_releases_slots(ls):
    clients = [await ls.attacker(A), await ls.topology("topo-1")]
    assert ls.services.limiter.held() == 2
    ls.services.writer.drain_all()  # what serve()'s drain does, stream by stream
    for client in clients:
        hint = await client.next_event(5)
        assert hint.retry is not None and hint.event is None and hint.data is None, hint
        assert 1500 <= int(hint.retry) <= 4500, "the default 3000 ms hint, jittered by ±50%"
        with pytest.raises(EOFError):
            await client.next_event(5)
    await ls.wait_for(lambda: ls.services.limiter.held() == 0 and ls.hub.subscription_count == 0)


@pytest.mark.gen_test(timeout=90)
@pytest.mark.lurestream(send_timeout_seconds=10, queue_max=16)
async def test_lagging_reader_gets_its_queue_and_a_retry_hint_then_is_closed(ls):
    """protocol §7: a full queue is never thinned silently. The stalled stream stops receiving, gets what
    was queued plus a ``retry:`` hint, and is closed; memory stays within the queue and one write;
    a reader of the same attacker gets every event on time meanwhile."""
    stalled = socket.create_connection(("127.0.0.1", ls.port))  # default buffers: it simply never reads
    stalled.sendall(f"GET /api/v1/attackers/{A}/events?token={ls.token()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await ls.wait_for(lambda: ls.hub.subscription_count == 1, what="stalled stream registered")
    healthy = await ls.attacker(A)
    blob = "x" * 60_000
    worst_pending = worst_ending = worst_unflushed = 0
    slowest = 0.0
    loop = asyncio.get_running_loop()
    try:
        for i in range(300):  # ~18 MB: far more than the stalled socket's kernel buffers hold
            sent = loop.time()
            await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": i, "blob": blob})
            frame = await healthy.next_event(8)
            slowest = max(slowest, loop.time() - sent)
            assert frame.json()["payload"]["n"] == i
            for sub in list(ls.services.writer.streams):
                if sub.closing:  # lagging: what was queued, the frame that tipped it, and the retry hint
                    worst_ending = max(worst_ending, sub.pending)
                else:
                    worst_pending = max(worst_pending, sub.pending)
                worst_unflushed = max(worst_unflushed, sub.unflushed)
        await ls.wait_for(
            lambda: ls.hub.metrics.value("lurestream_lagging_closes_total") == 1,
            10,
            "the stalled stream marked lagging",
        )
        assert ls.hub.subscription_count == 1, "the lagging stream no longer receives"
        assert worst_pending <= 16, worst_pending
        assert worst_ending <= 16 + 2, worst_ending
        bound = ls.config.stream_buffer_bytes + 61_000  # protocol §11: queued + unsent, plus the frame that tips it
        assert worst_unflushed <= bound, f"bytes held for the stalled stream: {worst_unflushed}"
        # waiting on the stalled stream would show as delays toward its 10 s send timeout; half of it is far
        # beyond what a loaded machine adds
        assert slowest < 5.0, f"the healthy stream was delayed {slowest:.2f}s"
        stalled.setblocking(False)
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):  # read on: the queued frames, the hint, the end
            chunk = await asyncio.wait_for(loop.sock_recv(stalled, 1 << 20), 10)
            assert chunk, "connection closed before the response ended"
            tail = (tail + chunk)[-4096:]
        assert b"retry: " in tail, tail[-300:]
        await ls.wait_for(lambda: ls.services.limiter.held() == 1, 10, "the lagging stream's slot released")
    finally:
        stalled.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(send_timeout_seconds=0.5, queue_max=100000)
async def test_stalled_reader_is_closed_and_does_not_delay_others(ls):
    """A client that stops reading: its flush times out and it is closed; a reader of the same attacker
    keeps receiving every event."""
    stalled = socket.create_connection(("127.0.0.1", ls.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /api/v1/attackers/{A}/events?token={ls.token()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await ls.wait_for(lambda: ls.hub.subscription_count == 1, what="stalled stream registered")
    healthy = await ls.attacker(A)
    blob = "x" * 100_000
    try:
        for i in range(80):  # ~8 MB: more than the kernel buffers of the stalled socket hold
            await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": i, "blob": blob})
            frame = await healthy.next_event(5)
            assert frame.json()["payload"]["n"] == i
        await ls.wait_for(lambda: ls.hub.subscription_count == 1, 10, "the stalled stream stopped receiving")
        await ls.wait_for(lambda: ls.services.limiter.held() == 1, 5, "and was closed by the send timeout")
        assert ls.hub.metrics.value("lurestream_send_timeouts_total") == 1
    finally:
        stalled.close()


@pytest.mark.gen_test
@pytest.mark.lurestream(mongo_driver="motor")
async def test_streams_work_on_motor(ls):
    ls.db.observations.insert_one(
        {"attacker_uuid": A, "primitive": "ja3", "value": "v", "confidence": 1.0, "ts": 1.0, "source": "s"}
    )
    client = await ls.attacker(A)
    assert client.snapshot.json()["observations"][0]["value"] == "v"
    ticket = await ls.ticket()
    second = await ls.open(f"/api/v1/attackers/{A}/events", query={"ticket": ticket})
    await second.start_stream()
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A})
    assert (await client.next_event()).event == "observation"
    assert (await second.next_event()).event == "observation"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(max_connections_per_ip=5)
async def test_a_client_gone_before_its_stream_begins_costs_nothing(ls, caplog):
    """The client hangs up while the attacker is being looked up: no traceback, no slot, no count."""
    store = ls.services.store
    original, entered, gate = store.get_attackers, asyncio.Event(), asyncio.Event()

    async def held(uuids):
        entered.set()
        await gate.wait()
        return await original(uuids)

    store.get_attackers = held
    _reader, writer = await asyncio.open_connection("127.0.0.1", ls.port)
    writer.write(f"GET /api/v1/attackers/{A}/events?token={ls.token()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await asyncio.wait_for(entered.wait(), 5)
    writer.close()
    await ls.wait_for(lambda: ls.services.connections.total == 0, what="the server to see the client gone")
    gate.set()
    # the handler goes on: slot, hand-off to the writer (the socket is gone), and leaves
    await ls.wait_for(lambda: ls.services.requests.count == 0, what="the handler to finish")
    await ls.wait_for(lambda: ls.services.connections.total == 0, what="the address count released")
    await ls.wait_for(lambda: ls.services.limiter.held() == 0 and ls.hub.subscription_count == 0)
    assert not [r for r in caplog.records if "Uncaught exception" in r.getMessage()]
    store.get_attackers = original


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("where", ["handing_off", "opening"])
async def test_a_stream_that_fails_gives_its_slot_back_once(ls, monkeypatch, where):
    """protocol §2: one owner gives back what a stream took, once. An exception after the stream left
    Tornado released the slot twice, so a user with one healthy stream counted none and could open more."""
    import tornado.web

    healthy = await ls.attacker()

    def broken(*args, **kwargs):
        raise RuntimeError(f"a failure while {where}")

    async def broken_read(*args, **kwargs):
        broken()

    if where == "handing_off":  # right after the writer took the stream over
        monkeypatch.setattr(tornado.web.Application, "log_request", broken)
    else:  # while it reads its snapshot
        monkeypatch.setattr(ls.services.snapshots, "read", broken_read)
    failing = await ls.open(f"/api/v1/attackers/{ATTACKER_A['_id']}/events", token=ls.token())
    assert (await failing.next_frame()).is_keepalive
    monkeypatch.undo()
    failing.close()
    await ls.wait_for(lambda: ls.services.limiter.held(VIEWER) == 1, what="the failed stream's slot given back")
    await asyncio.sleep(0.3)  # on purpose: time for a second release to show
    assert ls.services.limiter.held(VIEWER) == 1, "exactly once: the healthy stream still holds its slot"
    healthy.close()


@pytest.mark.gen_test(timeout=60)
async def test_closing_ends_the_store_watch_even_when_its_cancellation_is_lost(ls):
    """A ping that turns the cancellation into a store error (as a driver may): the store watch caught it
    as an outage, pinged again and ran on for ever, and shutdown waited for it. It ends on close's flag."""
    from lurestream.store import StoreUnavailable

    services, entered = ls.services, asyncio.Event()
    real_ping = services.store.ping

    async def loses_the_cancellation() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a ping that answers only when cancelled
        except asyncio.CancelledError:
            raise StoreUnavailable("cancelled mid-ping") from None

    services.store.ping = loses_the_cancellation  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(entered.wait(), 10)  # the next ping, within half a second
        await asyncio.wait_for(services.close(), 10)
    finally:
        services.store.ping = real_ping  # type: ignore[method-assign]
