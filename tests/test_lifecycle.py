"""Every exit path of a stream releases its slot and registration: error, stalled reader, shutdown."""

from __future__ import annotations

import asyncio
import socket

import pytest
from harness import ATTACKER_A, standalone

A = ATTACKER_A["_id"]


@pytest.mark.gen_test(timeout=60)
async def test_snapshot_failure_sends_error_frame_and_ends(private_mongo, nats_service):
    """MongoDB dies between the existence check and the snapshot read: error frame, end, slot back."""
    svc = private_mongo
    async with standalone(nats_service.url, svc.url, "d", settings={"mongo_timeout_ms": 300}) as ls:
        store = ls.services.store
        original = store.latest_observations
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held(attacker_uuid):
            entered.set()
            await gate.wait()
            return await original(attacker_uuid)

        store.latest_observations = held
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
    ls.hub.close_all()  # what serve() does on SIGTERM
    for client in clients:
        with pytest.raises(EOFError):
            await client.next_event(5)
    await ls.wait_for(lambda: ls.services.limiter.held() == 0 and ls.hub.subscription_count == 0)


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
        await ls.wait_for(lambda: ls.hub.subscription_count == 1, 10, "stalled stream closed by the send timeout")
        assert ls.services.limiter.held() == 1
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
