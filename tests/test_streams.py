"""The two streams end to end: frames, snapshots, event names, filters, keepalive (protocol §2-§4)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from harness import ATTACKER_A, ATTACKER_B, TOPOLOGY_1, TOPOLOGY_2

A = ATTACKER_A["_id"]
B = ATTACKER_B["_id"]


@pytest.mark.gen_test
async def test_headers_and_opening_frames(ls):
    client = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token())
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    await client.start_stream()
    assert client.raw.startswith(b": keepalive\n\nevent: snapshot\ndata: {")


@pytest.mark.gen_test
async def test_attacker_snapshot_latest_per_primitive_sorted(ls):
    ls.db.observations.insert_many(
        [
            {"attacker_uuid": A, "primitive": "ja3", "value": "old", "confidence": 0.5, "ts": 100.0, "source": "s1"},
            {"attacker_uuid": A, "primitive": "ja3", "value": "new", "confidence": 0.9, "ts": 300.0, "source": "s2"},
            {"attacker_uuid": A, "primitive": "ja3", "value": "mid", "confidence": 0.7, "ts": 200.0, "source": "s3"},
            {
                "attacker_uuid": A,
                "primitive": "http.user_agent",
                "value": {"ua": "curl"},
                "confidence": 0.4,
                "ts": 50.0,
                "source": "http",
            },
            {"attacker_uuid": A, "primitive": "asn", "value": 64500, "confidence": 1.0, "ts": 10.0, "source": "geo"},
            {
                "attacker_uuid": B,
                "primitive": "ja3",
                "value": "other-attacker",
                "confidence": 1.0,
                "ts": 999.0,
                "source": "x",
            },
        ]
    )
    client = await ls.attacker(A)
    assert client.snapshot.json() == {
        "attacker_uuid": A,
        "observations": [
            {"primitive": "asn", "value": 64500, "confidence": 1.0, "ts": 10.0, "source": "geo"},
            {"primitive": "http.user_agent", "value": {"ua": "curl"}, "confidence": 0.4, "ts": 50.0, "source": "http"},
            {"primitive": "ja3", "value": "new", "confidence": 0.9, "ts": 300.0, "source": "s2"},
        ],
    }


@pytest.mark.gen_test
async def test_attacker_snapshot_empty(ls):
    client = await ls.attacker(B)
    assert client.snapshot.json() == {"attacker_uuid": B, "observations": []}


@pytest.mark.gen_test
async def test_topology_snapshot_pending_then_applying_newest_first(ls):
    now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    t1 = TOPOLOGY_1["_id"]

    def mutation(mid, state, minutes, topology=t1):
        return {
            "_id": mid,
            "topology_id": topology,
            "op": "add_decky",
            "payload": {"n": mid, "nested": [1, 2]},
            "state": state,
            "requested_at": now + timedelta(minutes=minutes),
            "applied_at": None,
            "reason": None,
        }

    ls.db.topology_mutations.insert_many(
        [
            mutation("p-old", "pending", 1),
            mutation("p-new", "pending", 5),
            mutation("a-old", "applying", 2),
            mutation("a-new", "applying", 9),
            mutation("done", "applied", 10),
            mutation("failed", "failed", 11),
            mutation("other", "pending", 20, topology=TOPOLOGY_2["_id"]),
        ]
    )
    ls.db.topology_mutations.update_one({"_id": "done"}, {"$set": {"applied_at": now}})
    client = await ls.topology(t1)
    data = client.snapshot.json()
    assert data["topology_id"] == t1
    assert data["status"] == "active"
    assert [m["id"] for m in data["in_flight"]] == ["p-new", "p-old", "a-new", "a-old"]
    first = data["in_flight"][0]
    assert first == {
        "id": "p-new",
        "topology_id": t1,
        "op": "add_decky",
        "payload": {"n": "p-new", "nested": [1, 2]},
        "state": "pending",
        "requested_at": "2026-11-01T12:05:00+00:00",
        "applied_at": None,
        "reason": None,
    }


@pytest.mark.gen_test
async def test_topology_snapshot_empty_in_flight(ls):
    client = await ls.topology(TOPOLOGY_2["_id"])
    assert client.snapshot.json() == {"topology_id": "topo-2", "status": "deploying", "in_flight": []}


ATTACKER_CASES = [
    # subject, payload, expected event name (None = must not be forwarded to attacker A)
    ("attacker.observation.ja3", {"attacker_uuid": A, "value": "x"}, "observation"),
    ("attacker.observation.http.user_agent", {"attacker_uuid": A}, "observation"),
    ("attacker.fingerprint_rotated", {"attacker_uuid": A}, "fingerprint.rotated"),
    ("attacker.scored", {"attacker_uuid": A, "score": 7}, "attacker.scored"),
    ("attacker.scored", {"attacker_ip": ATTACKER_A["ip"], "score": 9}, "attacker.scored"),
    ("attribution.profile.state_changed", {"identity_uuid": "identity-1"}, "attribution.state_changed"),
    ("attribution.profile.multi_actor_suspected", {"identity_uuid": "identity-1"}, "attribution.multi_actor_suspected"),
    ("attacker.session.closed", {"attacker_uuid": A}, "attacker.session.closed"),
    ("attacker.custom", {"identity_uuid": "identity-1"}, "attacker.custom"),
    ("attribution.profile.merged", {"identity_uuid": "identity-1"}, "attribution.profile.merged"),
    ("attribution.other", {"attacker_uuid": A}, "attribution.other"),
]

NOT_FOR_A = [
    ("attacker.observation.ja3", {"attacker_uuid": B}),
    ("attacker.observation.ja3", {"attacker_ip": ATTACKER_A["ip"]}),  # observations match by uuid only
    ("attacker.observation.ja3", {}),
    ("attacker.fingerprint_rotated", {"identity_uuid": "identity-1"}),
    ("attacker.scored", {"attacker_uuid": B, "attacker_ip": ATTACKER_A["ip"]}),  # uuid present: ip ignored
    ("attacker.scored", {"attacker_ip": ATTACKER_B["ip"]}),
    ("attribution.profile.state_changed", {"identity_uuid": "identity-2"}),
    ("attribution.profile.state_changed", {"attacker_uuid": A}),  # attribution events go by identity
    ("attacker.custom", {"attacker_uuid": B, "identity_uuid": "identity-1"}),  # uuid wins over identity
    ("attacker.observation.ja3", {"attacker_uuid": A.upper()}),  # exact string equality
    ("attacker.observation.ja3", {"attacker_uuid": [A]}),
    ("topology.topo-1.status", {"attacker_uuid": A}),
]


@pytest.mark.gen_test
async def test_attacker_event_names_and_frame_shape(ls):
    client = await ls.attacker(A)
    for subject, payload, name in ATTACKER_CASES:
        await ls.publish(subject, payload, type_="kind-" + subject, ts=1700000000.25)
        frame = await client.next_event()
        assert frame.event == name, (subject, frame)
        assert frame.json() == {"topic": subject, "type": "kind-" + subject, "ts": 1700000000.25, "payload": payload}
        assert "\n" not in frame.data


@pytest.mark.gen_test
async def test_attacker_filters_never_leak(ls):
    client = await ls.attacker(A)
    for subject, payload in NOT_FOR_A:
        await ls.publish(subject, payload)
    await ls.publish("attacker.observation.marker", {"attacker_uuid": A, "marker": True})
    frame = await client.next_event()
    assert frame.json()["payload"] == {"attacker_uuid": A, "marker": True}, "a non-matching event leaked first"


@pytest.mark.gen_test
async def test_attacker_without_identity_ignores_identity_events(ls):
    ls.db.attackers.insert_one({"_id": "no-identity", "ip": "198.51.100.1", "identity_id": None})
    client = await ls.attacker("no-identity")
    await ls.publish("attribution.profile.state_changed", {"identity_uuid": None})
    await ls.publish("attribution.profile.state_changed", {})
    await ls.publish("attacker.scored", {"attacker_ip": "198.51.100.1"})
    frame = await client.next_event()
    assert frame.event == "attacker.scored"


@pytest.mark.gen_test
async def test_topology_event_names_and_filters(ls):
    client = await ls.topology("topo-1")
    await ls.publish("topology.topo-2.status", {"status": "failed"})  # other topology
    await ls.publish("decky.web-01.service_added", {"topology_id": "topo-2"})  # other topology
    await ls.publish("decky.web-01.service_added", {})  # no topology_id
    await ls.publish("topology.topo-1", {})  # no tail: nothing to name
    cases = [
        ("topology.topo-1.mutation.applied", {"mutation_id": "m1"}, "mutation.applied"),
        ("topology.topo-1.status", {"status": "degraded"}, "status"),
        ("decky.web-01.service_added", {"topology_id": "topo-1", "service": "ssh"}, "decky.service_added"),
        ("decky.db-02.health.changed", {"topology_id": "topo-1"}, "decky.health.changed"),
    ]
    for subject, payload, name in cases:
        await ls.publish(subject, payload)
        frame = await client.next_event()
        assert frame.event == name
        assert frame.json()["topic"] == subject
        assert frame.json()["payload"] == payload


@pytest.mark.gen_test
async def test_streams_of_other_kinds_do_not_cross(ls):
    attacker = await ls.attacker(A)
    topology = await ls.topology("topo-1")
    await ls.publish("topology.topo-1.status", {"attacker_uuid": A})
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "topology_id": "topo-1"})
    assert (await attacker.next_event()).event == "observation"
    assert (await topology.next_event()).event == "status"
    await attacker.expect_silence(0.3)
    await topology.expect_silence(0.1)


@pytest.mark.gen_test
async def test_many_streams_on_one_attacker_each_get_every_event_once(ls):
    users = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
    clients = [await ls.attacker(A, user=users[i % 2]) for i in range(6)]
    for i in range(5):
        await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": i})
    for client in clients:
        got = [(await client.next_event()).json()["payload"]["n"] for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
        await client.expect_silence(0.05)


@pytest.mark.gen_test
async def test_missing_envelope_fields_get_defaults(ls):
    client = await ls.attacker(A)
    await ls.publish("attacker.observation.ja3", raw=b'{"payload": {"attacker_uuid": "%s"}}' % A.encode())
    frame = await client.next_event()
    data = frame.json()
    assert data["type"] == ""
    assert isinstance(data["ts"], float) and abs(data["ts"] - __import__("time").time()) < 30
    # the topic comes from the subject, never from the body
    await ls.publish(
        "attacker.observation.tls", raw=b'{"topic": "forged.topic", "payload": {"attacker_uuid": "%s"}}' % A.encode()
    )
    assert (await client.next_event()).json()["topic"] == "attacker.observation.tls"


@pytest.mark.gen_test
async def test_malformed_bus_messages_skipped_without_harm(ls):
    client = await ls.attacker(A)
    before = ls.hub.metrics.value("lurestream_bus_malformed_total")
    for raw in (
        b"not json",
        b"[1, 2]",
        b'"str"',
        b'{"payload": [1]}',
        b'{"payload": "x"}',
        b"\xff\xfe",
        b'{"payload": {"attacker_uuid": "%s"}, "ts": "yesterday"}' % A.encode(),
        b"",
    ):
        await ls.publish("attacker.observation.ja3", raw=raw)
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "ok": True})
    frame = await client.next_event()
    assert frame.json()["payload"]["ok"] is True
    assert ls.hub.metrics.value("lurestream_bus_malformed_total") - before == 8


@pytest.mark.gen_test
async def test_payload_with_newlines_and_unicode_stays_one_data_line(ls):
    client = await ls.attacker(A)
    value = "line1\nline2\r\n\u2028 <img src=x onerror=alert(1)> \U0001f600 \ud800"
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "value": value})
    frame = await client.next_event()
    assert frame.json()["payload"]["value"] == value
    block = client.raw.split(b"event: observation\n", 1)[1]
    assert block.count(b"\n") == 2 and block.startswith(b"data: {")


@pytest.mark.gen_test
@pytest.mark.lurestream(keepalive_seconds=0.3)
async def test_keepalive_when_idle(ls):
    loop = asyncio.get_running_loop()
    start = loop.time()  # before the snapshot went out: a loaded machine can only add to the time measured
    client = await ls.attacker(A)
    frame = await client.next_frame(timeout=5)
    assert frame.is_keepalive
    assert 0.3 <= loop.time() - start < 5, "after the 0.3 s keepalive period, far sooner than the default 15 s"
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A})
    assert (await client.next_event()).event == "observation"
    assert (await client.next_frame(timeout=3)).is_keepalive


@pytest.mark.gen_test
async def test_event_published_during_snapshot_read_is_delivered(ls):
    """Registration precedes the snapshot read: an event published while the read is in flight arrives."""
    store = ls.services.store
    gate = asyncio.Event()
    entered = asyncio.Event()
    original = store.latest_observations_many

    async def held_snapshot(attacker_uuids):
        entered.set()
        await gate.wait()
        return await original(attacker_uuids)

    store.latest_observations_many = held_snapshot
    try:
        client = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token())
        await asyncio.wait_for(entered.wait(), 5)
        await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "during": "snapshot"})
        await ls.wait_for(lambda: ls.metric("lurestream_events_forwarded_total") == 1, what="the event held")
        gate.set()
        await client.start_stream()
        frame = await client.next_event()
        assert frame.json()["payload"]["during"] == "snapshot"
    finally:
        store.latest_observations_many = original


@pytest.mark.gen_test
async def test_client_disconnect_releases_slot_and_registration(ls):
    client = await ls.attacker(A)
    assert ls.hub.subscription_count == 1
    assert ls.services.limiter.held() == 1
    client.close()
    await ls.wait_for(
        lambda: ls.hub.subscription_count == 0 and ls.services.limiter.held() == 0,
        what="slot and registration released",
    )
