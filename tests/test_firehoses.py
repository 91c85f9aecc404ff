"""The identities, campaigns and orchestrator firehoses (protocol §14): no id in the path (no 404), a snapshot
of the 50 newest documents, event names as DECNET derives them, ids and resume, one cap across every kind,
and ``init-nats`` adding the new families to an existing stream. Real nats-server and MongoDB-wire server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import nats
import pytest
from harness import envelope

from lurestream.config import config_from
from lurestream.eventids import sequence_of
from lurestream.jetstream import ensure_stream
from lurestream.routing import SUBJECT_FAMILIES

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
IDENTITIES = "/api/v1/identities/events"
CAMPAIGNS = "/api/v1/campaigns/events"
ORCHESTRATOR = "/api/v1/orchestrator/events/stream"


async def firehose(ls, path: str, **query: str):
    client = await ls.open(path, token=ls.token(), query=query)
    client.snapshot = await client.start_stream()
    return client


@pytest.mark.gen_test(timeout=30)
async def test_the_identities_snapshot_is_the_50_newest_by_updated_at_ties_by_id(ls):
    docs = [{"_id": f"id-{n:03d}", "updated_at": T0 + timedelta(minutes=n // 2), "label": n} for n in range(60)]
    ls.db.identities.insert_many(docs)
    client = await firehose(ls, IDENTITIES)
    items = client.snapshot.json()["identities"]
    assert len(items) == 50
    expected = sorted(docs, key=lambda d: (-d["updated_at"].timestamp(), d["_id"]))[:50]
    assert [i["id"] for i in items] == [d["_id"] for d in expected], "newest first, ties by id ascending"
    assert "_id" not in items[0] and items[0]["updated_at"] == expected[0]["updated_at"].isoformat()


@pytest.mark.gen_test(timeout=30)
async def test_events_are_named_as_decnet_derives_them(ls):
    identities = await firehose(ls, IDENTITIES)
    campaigns = await firehose(ls, CAMPAIGNS)
    orchestrator = await firehose(ls, ORCHESTRATOR)
    assert campaigns.snapshot.json() == {"campaigns": []} and orchestrator.snapshot.json() == {"events": []}
    for subject in ("identity.formed", "identity.observation.linked", "identity.end", "campaign.identity.assigned"):
        await ls.publish(subject, {"n": subject})
    for kind in ("traffic", "file", "email"):
        await ls.publish(f"orchestrator.{kind}.decky-1", {"decky_uuid": "decky-1", "kind": kind})
    names = [(await identities.next_event()).event for _ in range(3)]
    assert names == ["formed", "observation.linked", "identity.end"], "the subject less `identity.`; ours prefixed"
    event = await campaigns.next_event()
    assert event.event == "identity.assigned"
    assert event.json() == {
        "topic": "campaign.identity.assigned",
        "type": "t",
        "ts": event.json()["ts"],
        "payload": {"n": "campaign.identity.assigned"},
    }
    assert [(await orchestrator.next_event()).event for _ in range(3)] == ["traffic", "file", "email"]


@pytest.mark.gen_test(timeout=30)
async def test_decky_keeps_only_that_deckys_orchestrator_events_and_snapshot(ls):
    ls.db.orchestrator_events.insert_many(
        [{"_id": f"e{n}", "ts": T0 + timedelta(seconds=n), "decky_uuid": f"d{n % 2}", "kind": "file"} for n in range(6)]
    )
    one = await firehose(ls, ORCHESTRATOR, decky="d1")
    every = await firehose(ls, ORCHESTRATOR)
    assert [e["id"] for e in one.snapshot.json()["events"]] == ["e5", "e3", "e1"]
    assert len(every.snapshot.json()["events"]) == 6
    await ls.publish("orchestrator.traffic.d0", {"n": 0})
    await ls.publish("orchestrator.traffic.d1", {"n": 1})
    assert (await one.next_event()).json()["payload"] == {"n": 1}
    assert [(await every.next_event()).json()["payload"]["n"] for _ in range(2)] == [0, 1]
    await one.expect_silence(0.3)
    long = await ls.fetch("GET", f"{ORCHESTRATOR}?decky={'x' * 200}&token={ls.token()}")
    assert long.code == 400 and "decky" in json.loads(long.body)["detail"]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_firehose_events_carry_ids_and_resume_exactly(ls):
    client = await firehose(ls, CAMPAIGNS)
    first = await ls.publish_stored("campaign.formed", {"n": 1})
    event = await client.next_event()
    assert sequence_of(event.id) == first
    client.close()
    missed = [await ls.publish_stored("campaign.identity.assigned", {"n": n}) for n in (2, 3)]
    await ls.publish_stored("identity.formed", {"n": 99})  # another firehose's: not replayed here
    again = await ls.open(CAMPAIGNS, token=ls.token(), headers={"Last-Event-ID": event.id})
    assert (await again.next_frame()).is_keepalive
    resumed = await again.next_event()
    assert resumed.event == "resumed" and resumed.json()["replayed"] == 2
    assert [sequence_of((await again.next_event()).id) for _ in range(2)] == missed


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(sse_max_per_user=3)
async def test_one_cap_across_every_kind(ls):
    await ls.attacker()
    await ls.topology()
    await firehose(ls, IDENTITIES)
    refused = await ls.open(ORCHESTRATOR, token=ls.token())
    assert refused.status == 429


@pytest.mark.gen_test(timeout=30)
async def test_firehoses_need_credentials_and_have_no_404(ls):
    assert (await ls.fetch("GET", IDENTITIES)).code == 401
    assert (await ls.fetch("GET", "/api/v1/identities/nope/events")).code == 404  # not a route at all


@pytest.mark.gen_test(timeout=60)
async def test_init_nats_adds_the_new_families_to_an_existing_stream(nats_service, js_stream):
    """The upgrade path: a stream created by an earlier release over the four original families."""
    nc = await nats.connect(nats_service.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=js_stream, subjects=["attacker.>", "attribution.>", "topology.>", "decky.>"])
        await js.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": "a"}))
        config = config_from({"nats_url": nats_service.url, "jetstream": js_stream, "dev_insecure": True})
        action, info = await ensure_stream(js, config)
        assert action == "updated"
        assert sorted(info.config.subjects or []) == sorted(SUBJECT_FAMILIES)
        assert info.state.messages == 1, "the stream's messages are kept"
        ack = await js.publish("identity.formed", envelope("identity.formed", {}))
        assert ack.stream == js_stream
    finally:
        await nc.close()
