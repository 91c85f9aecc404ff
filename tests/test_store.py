"""The MongoDB store, with both drivers (protocol §3, §4, §8, §10), plus MongoDB-down behaviour."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from harness import ATTACKER_A, VIEWER, bus_up, standalone

from lurestream.localservices import free_port
from lurestream.store import StoreUnavailable
from lurestream.store.mongo import INDEXES, MongoStore

A = ATTACKER_A["_id"]


@pytest.fixture(params=["pymongo", "motor"])
def store(request, mongo_service, mongo, db_name, io_loop):
    s = MongoStore(mongo_service.url, db_name, driver=request.param, timeout_ms=2000)
    yield s
    io_loop.run_sync(s.close)


@pytest.mark.gen_test
async def test_users_and_revocations(store, mongo):
    users = await store.look_up_users([VIEWER, "nobody"])
    user = users[VIEWER]
    assert user["_id"] == VIEWER and user["role"] == "viewer"
    assert "nobody" not in users
    mongo.revoked_tokens.insert_one({"_id": "j1", "expires_at": datetime.now(timezone.utc)})
    assert await store.look_up_revoked(["j1", "j2"]) == {"j1"}


@pytest.mark.gen_test
async def test_tickets_are_taken_once(store, mongo):
    expires = datetime.now(timezone.utc) + timedelta(seconds=60)
    await store.insert_ticket("h" * 64, VIEWER, "viewer", expires)
    first, second = await asyncio.gather(store.take_ticket("h" * 64), store.take_ticket("h" * 64))
    assert [d is None for d in (first, second)].count(True) == 1, "exactly one concurrent redemption wins"
    doc = first or second
    assert doc["uuid"] == VIEWER and doc["role"] == "viewer"
    assert mongo.sse_tickets.count_documents({}) == 0


@pytest.mark.gen_test
async def test_attacker_and_topology_lookups(store):
    attackers = await store.get_attackers([A, "missing"])
    assert attackers == {A: {"_id": A, "ip": ATTACKER_A["ip"], "identity_id": ATTACKER_A["identity_id"]}}
    topologies = await store.get_topologies(["topo-1", "missing"])
    assert list(topologies) == ["topo-1"] and topologies["topo-1"]["status"] == "active"


@pytest.mark.gen_test
@pytest.mark.parametrize("scan_limit", [2000, 4], ids=["find-sorted", "group-fallback"])
async def test_latest_observations(store, mongo, monkeypatch, scan_limit):
    """Both query shapes (a sorted find, and $group past SCAN_LIMIT rows) give the same answer."""
    monkeypatch.setattr("lurestream.store.mongo.SCAN_LIMIT", scan_limit)
    rows = [
        {
            "attacker_uuid": A,
            "primitive": p,
            "value": f"{p}-{ts}",
            "confidence": 0.5,
            "ts": float(ts),
            "source": "s",
            "extra_field": "not in snapshot",
        }
        for p in ("b", "a", "c")
        for ts in (3, 1, 2)
    ]
    rows.append({"attacker_uuid": "other", "primitive": "a", "value": "x", "confidence": 1, "ts": 99.0, "source": "s"})
    mongo.observations.insert_many(rows)
    got = (await store.latest_observations_many([A]))[A]
    assert [o["primitive"] for o in got] == ["a", "b", "c"]
    assert all(o["ts"] == 3.0 and o["value"] == f"{o['primitive']}-3" for o in got)
    assert set(got[0]) == {"primitive", "value", "confidence", "ts", "source"}
    assert await store.latest_observations_many(["nobody"]) == {"nobody": []}


@pytest.mark.gen_test
@pytest.mark.parametrize("scan_limit", [2000, 2], ids=["find-sorted", "group-fallback"])
async def test_batched_reads_answer_each_key_as_its_own_read_would(store, mongo, monkeypatch, scan_limit):
    """The connect path reads several attackers with one $in query (batching.py): same answers."""
    monkeypatch.setattr("lurestream.store.mongo.SCAN_LIMIT", scan_limit)
    mongo.attackers.insert_one({"_id": "third", "ip": "192.0.2.3"})
    mongo.observations.insert_many(
        [
            {
                "attacker_uuid": u,
                "primitive": p,
                "value": f"{u}-{p}-{ts}",
                "confidence": 1,
                "ts": float(ts),
                "source": "s",
            }
            for u in (A, "third")
            for p in ("z", "a")
            for ts in (1, 5, 3)
        ]
    )
    uuids = [A, "third", "missing"]
    found = await store.get_attackers(uuids)
    assert set(found) == {A, "third"} and found[A]["ip"] == ATTACKER_A["ip"]
    many = await store.latest_observations_many(uuids)
    for uuid in uuids:
        assert many[uuid] == (await store.latest_observations_many([uuid]))[uuid]
    assert [(o["primitive"], o["ts"]) for o in many["third"]] == [("a", 5.0), ("z", 5.0)]
    assert many["missing"] == []
    assert set(await store.get_topologies(["topo-1", "topo-2", "nope"])) == {"topo-1", "topo-2"}
    mutations = await store.in_flight_mutations_many(["topo-1", "nope"])
    assert mutations == {"topo-1": (await store.in_flight_mutations_many(["topo-1"]))["topo-1"], "nope": []}


@pytest.mark.gen_test
async def test_in_flight_mutations_json_ready(store, mongo):
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    mongo.topology_mutations.insert_many(
        [
            {
                "_id": "m1",
                "topology_id": "topo-1",
                "op": "x",
                "payload": {"k": 1},
                "state": "applying",
                "requested_at": t,
                "applied_at": None,
                "reason": None,
            },
            {
                "_id": "m2",
                "topology_id": "topo-1",
                "op": "y",
                "payload": {},
                "state": "pending",
                "requested_at": t - timedelta(hours=1),
                "applied_at": None,
                "reason": "because",
            },
            {
                "_id": "m3",
                "topology_id": "topo-1",
                "op": "z",
                "payload": {},
                "state": "applied",
                "requested_at": t,
                "applied_at": t,
                "reason": None,
            },
        ]
    )
    items = (await store.in_flight_mutations_many(["topo-1"]))["topo-1"]
    assert [i["id"] for i in items] == ["m2", "m1"]
    assert "_id" not in items[0]
    from lurestream.sse import dumps

    encoded = json.loads(dumps(items))
    assert encoded[1]["requested_at"] == "2026-01-02T03:04:05+00:00"
    assert encoded[0]["reason"] == "because"


@pytest.mark.gen_test
async def test_missing_ttl_indexes_are_reported(store, mongo):
    assert await store.missing_ttl_indexes() == ["sse_tickets", "sse_sessions"], "a fresh database has none"


@pytest.mark.gen_test
async def test_init_indexes_is_idempotent(store, mongo):
    first = await store.init_indexes()
    second = await store.init_indexes()
    assert first == second and len(first) == sum(len(specs) for specs in INDEXES.values())
    assert await store.missing_ttl_indexes() == []
    keys = [list(spec["key"]) for spec in mongo.observations.index_information().values()]
    assert any(k[:2] == [("attacker_uuid", 1), ("primitive", 1)] and k[2][0] == "ts" for k in keys), keys
    assert any(
        list(spec["key"])[0][0] == "topology_id" for spec in mongo.topology_mutations.index_information().values()
    )
    assert any(list(spec["key"]) == [("expires_at", 1)] for spec in mongo.sse_tickets.index_information().values())


@pytest.mark.gen_test
async def test_the_tail_starts_at_the_greatest_log_id_not_the_greatest_text(store, mongo):
    """The MongoDB-wire test server sorted an unfiltered ``_id`` as text: with ids 1..3000 the tail
    started at 999, and a restart sent rows 1000 and up again as live (found by the dashboard work)."""
    assert await store.last_log_id() == 0
    mongo.logs.insert_many([{"_id": n, "raw_line": "x"} for n in range(1, 3001)])
    assert await store.last_log_id() == 3000
    assert [r["_id"] for r in await store.logs_after(990, 20)] == list(range(991, 1011))


@pytest.mark.gen_test
@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_unreachable_store_fails_fast(driver):
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}", "x", driver=driver, timeout_ms=300)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get_attackers([A])
    assert time.monotonic() - start < 3
    await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_readiness_probes_during_a_mongodb_outage_log_no_traceback(private_mongo, nats_service, caplog):
    """Each /readyz probe during an outage left a 45-line 'exception was never retrieved' traceback: its
    deadline cancelled the ping's wrapper and the ping itself failed later, unobserved."""
    import gc

    svc = private_mongo
    async with standalone(nats_service.url, svc.url, "d", settings={"mongo_timeout_ms": 2000}) as ls:
        assert await bus_up(ls.hub, 10)
        svc.stop()
        codes = [(await ls.fetch("GET", "/readyz")).code]
        while codes[-1] != 503 or len(codes) < 3:  # down within ~1 s (protocol §1), and probed on
            assert len(codes) < 50, codes
            await asyncio.sleep(0.1)
            codes.append((await ls.fetch("GET", "/readyz")).code)
        await asyncio.sleep(3)  # on purpose: every abandoned ping fails by now (the 2 s selection timeout)
        gc.collect()
        await asyncio.sleep(0.1)
    logged = "\n".join(f"{r.levelname} {r.getMessage()}" for r in caplog.records)
    assert "never retrieved" not in logged and "Traceback" not in caplog.text, logged


@pytest.mark.gen_test(timeout=60)
async def test_mongo_down_new_streams_503_open_streams_keep_forwarding(private_mongo, nats_service):
    """A MongoDB-wire server of the test's own, stopped mid-test: open streams go on, new ones get a quick 503."""
    svc = private_mongo
    async with standalone(nats_service.url, svc.url, "d", settings={"mongo_timeout_ms": 400}) as ls:
        assert await bus_up(ls.hub, 10)
        client = await ls.attacker(A)
        svc.stop()
        start = time.monotonic()
        refused = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token())
        assert time.monotonic() - start < 3
        # an EventSource is told to retry (a 503 would stop it for good); anyone else gets the 503
        assert (await refused.unavailable())["status"] == 503
        plain = await ls.fetch("GET", f"/api/v1/attackers/{A}/events?token={ls.token()}")
        assert plain.code == 503 and json.loads(plain.body) == {"detail": "Store unavailable"}
        assert plain.headers["Retry-After"] == "3"
        ticket = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=ls.token())
        assert ticket.code == 503
        ready = await ls.fetch("GET", "/readyz")
        assert ready.code == 503
        body = json.loads(ready.body)
        assert body["store"] == "down" and "store" in body["detail"]
        await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "while": "mongo down"})
        assert (await client.next_event()).json()["payload"]["while"] == "mongo down"
