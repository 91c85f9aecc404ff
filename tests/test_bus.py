"""The bus: one subscription set per process, reconnects, bus down or disabled (protocol §2, §6)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from harness import ATTACKER_A, ATTACKER_B, bus_up, standalone

from lurestream.eventids import sequence_of
from lurestream.localservices import free_port, nats_server
from lurestream.routing import SUBJECT_FAMILIES

A = ATTACKER_A["_id"]
B = ATTACKER_B["_id"]


def connz(monitor_port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz?subs=1&limit=1024", timeout=5) as r:
        return json.load(r)["connections"] or []


async def _open_twelve_streams(ls, nats_service):
    """Twelve streams of three users over two attackers and a topology; our hub's subscriptions."""
    if not nats_service.extra_ports.get("monitor"):
        pytest.skip("needs the fixture's own nats-server (monitoring port)")
    for i in range(12):
        user = [
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222",
            "55555555-5555-4555-8555-555555555555",
        ][i % 3]
        if i % 4 == 3:
            await ls.topology("topo-1", user=user)
        else:
            await ls.attacker(A if i % 2 else B, user=user)
    assert ls.hub.subscription_count == 12
    ours = [c for c in connz(nats_service.extra_ports["monitor"]) if c.get("name") == ls.hub.name]
    # earlier tests in this process closed their hubs; this hub holds the one connection with its name
    assert len(ours) == 1, ours
    return ours[0]["subscriptions_list"]


@pytest.mark.gen_test
async def test_one_subscription_set_per_process(ls, nats_service):
    assert sorted(await _open_twelve_streams(ls, nats_service)) == sorted(SUBJECT_FAMILIES)


@pytest.mark.gen_test
@pytest.mark.lurestream(jetstream=True)
async def test_one_ordered_consumer_per_process_with_jetstream(ls, nats_service):
    subs = await _open_twelve_streams(ls, nats_service)
    assert not set(subs) & set(SUBJECT_FAMILIES), "no plain family subscriptions beside the consumer"
    # the consumer's deliver inbox, nats.py's shared reply inbox, and the cap bucket's watcher (protocol §13)
    assert 1 <= len(subs) <= 3, subs
    info = await (await ls.bus()).jetstream().stream_info(ls.config.jetstream)
    assert info.state.consumer_count == 1, "one ordered consumer for the process, not one per stream"


@pytest.mark.gen_test
@pytest.mark.lurestream(nats_url="")
async def test_bus_disabled_streams_snapshot_then_keepalives_and_ready(ls):
    response = await ls.fetch("GET", "/readyz")
    assert response.code == 200
    assert json.loads(response.body) == {
        "store": "ok",
        "bus": "disabled",
        "events": "off",
        "cap": "local",
        "status": "ready",
    }
    client = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token())
    await client.start_stream()


@pytest.mark.gen_test
@pytest.mark.lurestream(nats_url="", keepalive_seconds=0.2)
async def test_bus_disabled_keepalives_follow_snapshot(ls):
    client = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token())
    await client.start_stream()
    assert (await client.next_frame(2)).is_keepalive
    assert (await client.next_frame(2)).is_keepalive


@pytest.mark.gen_test(timeout=60)
async def test_bus_down_at_start_then_up_forwards_without_reconnect(tmp_path, io_loop, mongo, mongo_service, db_name):
    """Serve with NATS unreachable; streams get snapshot + keepalives; once NATS is up, events flow."""
    port = free_port()
    svc = nats_server(str(tmp_path), port=port)
    try:
        async with standalone(svc.url, mongo_service.url, db_name, mongo, {"keepalive_seconds": 0.3}) as harness:
            response = await harness.fetch("GET", "/readyz")
            assert response.code == 503
            body = json.loads(response.body)
            assert body["bus"] == "disconnected" and "bus" in body["detail"]
            client = await harness.open(f"/api/v1/attackers/{A}/events", token=harness.token())
            await client.start_stream()
            assert (await client.next_frame(3)).is_keepalive
            svc.start()
            assert await bus_up(harness.hub, 15)
            assert (await harness.fetch("GET", "/readyz")).code == 200
            await harness.publish("attacker.observation.ja3", {"attacker_uuid": A, "after": "bus up"})
            frame = await client.next_event(5)
            assert frame.json()["payload"]["after"] == "bus up"
    finally:
        svc.stop()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("jetstream", ["", "LS_RESTART"], ids=["core", "jetstream"])
async def test_forwarding_resumes_after_nats_restart(tmp_path, io_loop, mongo, mongo_service, db_name, jetstream):
    """With JetStream, nats.py re-creates the ordered consumer (lost with the server's memory) from
    the next sequence, so ids go on where they stopped."""
    svc = nats_server(str(tmp_path)).start()
    try:
        async with standalone(svc.url, mongo_service.url, db_name, mongo, {"jetstream": jetstream}) as harness:
            hub = harness.hub
            assert await bus_up(hub, 10)
            client = await harness.open(f"/api/v1/attackers/{A}/events", token=harness.token())
            await client.start_stream()
            await harness.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": "before"})
            before = await client.next_event()
            assert before.json()["payload"]["n"] == "before"
            await harness.aclose()
            svc.stop()
            await harness.wait_for(lambda: hub.state == "disconnected", 10, "hub to notice NATS went away")
            assert (await harness.fetch("GET", "/readyz")).code == 503
            svc.start()
            assert await bus_up(hub, 20), "hub did not reconnect"
            # the client library restores the subscriptions; publish until the server has them
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                await harness.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": "after"})
                try:
                    frame = await client.next_event(0.5)
                    break
                except asyncio.TimeoutError:
                    assert asyncio.get_running_loop().time() < deadline, "no event after the restart"
            assert frame.json()["payload"]["n"] == "after"
            if jetstream:
                assert sequence_of(frame.id) > sequence_of(before.id), (before.id, frame.id)
            assert hub.metrics.value("lurestream_bus_reconnects_total") >= 1
            assert hub.subscription_count == 1, "the open stream kept its registration"
    finally:
        svc.stop()
