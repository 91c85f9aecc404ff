"""Snapshot reads are shared between streams opening together — one store query, no missed event."""

from __future__ import annotations

import asyncio
import json

import pytest
from harness import ATTACKER_A, VIEWER, Probe

from lurestream.hub import Hub
from lurestream.snapshots import SnapshotReads

A = ATTACKER_A["_id"]
KEY = ("attacker", A)
BODY = json.dumps({"payload": {"attacker_uuid": A}}).encode()


def _jetstream_like(hub: Hub) -> None:
    """As after connecting to an empty stream: position 0, replay memory from 0."""
    hub.position = 0
    hub.memory.start(0)


def test_a_later_stream_shares_the_read_and_gets_the_events_it_could_not_reflect():
    async def scenario():
        hub = Hub("")
        _jetstream_like(hub)
        reads = SnapshotReads(hub)
        gate = asyncio.Event()

        async def slow_load():
            await gate.wait()
            return {"observations": []}

        async def must_not_run():
            raise AssertionError("a second query was made")

        first = Probe(hub, [KEY])
        t1 = asyncio.ensure_future(reads.read(KEY, first, slow_load))
        await asyncio.sleep(0)
        assert hub.dispatch("attacker.scored", BODY, seq=1) == 1  # after the read began
        later = Probe(hub, [KEY])  # registers at position 1
        t2 = asyncio.ensure_future(reads.read(KEY, later, must_not_run))
        await asyncio.sleep(0)
        gate.set()
        one, two = await t1, await t2
        assert reads.queries == 1
        assert one.position == 0 and one.gap == []  # it receives seq 1 live
        assert two.position == 0 and [seq for seq, _, _ in two.gap] == [1], "the gap comes from memory"
        assert later.pending == 0, "and not live (it registered after seq 1)"
        one.data["resumed"] = False
        assert "resumed" not in two.data, "each stream gets its own copy"

    asyncio.run(scenario())


def test_without_replay_memory_only_streams_registered_before_the_read_share_it():
    async def scenario():
        hub = Hub("")
        reads = SnapshotReads(hub)
        calls = []

        async def load():
            calls.append(1)
            await asyncio.sleep(0.01)
            return {}

        early = [Probe(hub, [KEY]) for _ in range(3)]
        await asyncio.gather(*(reads.read(KEY, s, load) for s in early))
        assert len(calls) == 1, "registered before the read began: shared"
        late = Probe(hub, [KEY])
        await reads.read(KEY, late, load)
        assert len(calls) == 2, "registered after it began: without replay memory it needs its own read"

    asyncio.run(scenario())


def test_a_failed_read_is_not_shared_afterwards():
    async def scenario():
        hub = Hub("")
        reads = SnapshotReads(hub)

        async def broken():
            raise RuntimeError("store down")

        async def fine():
            return {"ok": True}

        s1 = Probe(hub, [KEY])
        with pytest.raises(RuntimeError):
            await reads.read(KEY, s1, broken)
        s2 = Probe(hub, [KEY])
        assert (await reads.read(KEY, s2, fine)).data == {"ok": True}

    asyncio.run(scenario())


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, sse_max_per_user=100)
async def test_a_burst_of_streams_on_one_attacker_costs_one_snapshot_query(ls):
    await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": 0})
    token = ls.token(VIEWER)
    clients = await asyncio.gather(*(ls.open(f"/api/v1/attackers/{A}/events", token=token) for _ in range(30)))
    snapshots = await asyncio.gather(*(c.start_stream() for c in clients))
    assert all(s.json()["attacker_uuid"] == A for s in snapshots)
    assert ls.services.snapshots.queries == 1, ls.services.snapshots.queries
    await ls.publish("attacker.scored", {"attacker_uuid": A, "n": 1})
    for client in clients:
        assert (await client.next_event()).json()["payload"]["n"] == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, sse_max_per_user=200)
async def test_a_storm_over_many_attackers_is_read_with_a_few_batched_queries(ls):
    """Streams on 40 different attackers opening together: their attacker documents and snapshots go
    to the store as a few $in queries, not one per attacker (batching.py)."""
    ids = [f"storm-{i}" for i in range(40)]
    ls.db.attackers.insert_many([{"_id": i, "ip": f"198.51.100.{n}"} for n, i in enumerate(ids)])
    ls.db.observations.insert_many(
        [{"attacker_uuid": i, "primitive": "ja3", "value": i, "confidence": 1.0, "ts": 1.0, "source": "s"} for i in ids]
    )
    reads = ls.services.reads
    token = ls.token(VIEWER)
    clients = await asyncio.gather(*(ls.open(f"/api/v1/attackers/{i}/events", token=token) for i in ids))
    snapshots = await asyncio.gather(*(c.start_stream() for c in clients))
    for attacker, snap in zip(ids, snapshots, strict=True):
        assert snap.json()["observations"][0]["value"] == attacker, "each stream gets its own attacker's state"
    assert reads.attackers.queries <= 10, f"{reads.attackers.queries} queries for 40 attackers"
    assert reads.observations.queries <= 10, f"{reads.observations.queries} queries for 40 snapshots"
