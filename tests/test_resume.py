"""protocol §7 resume: event ids from JetStream, replay of exactly the missed events, and the explicit
``"resumed": false`` snapshot when a resume cannot be served. Real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import json

import pytest
from harness import ATTACKER_A, ATTACKER_B, VIEWER, Probe, failed_resumes, resumes
from sse_client import SSEClient

from lurestream.eventids import format_id, sequence_of

A = ATTACKER_A["_id"]
B = ATTACKER_B["_id"]
PATH_A = f"/api/v1/attackers/{A}/events"
SUBJECT = "attacker.scored"


def _payload(uuid: str, n: int) -> dict[str, object]:
    return {"attacker_uuid": uuid, "n": n}


async def _events(client: SSEClient, count: int, timeout: float = 10) -> list:
    return [await client.next_event(timeout) for _ in range(count)]


def _ns(frames: list) -> list[int]:
    return [f.json()["payload"]["n"] for f in frames]


async def _resume(ls, last_id: str, how: str) -> SSEClient:
    if how == "header":
        client = await ls.open(PATH_A, token=ls.token(), headers={"Last-Event-ID": last_id})
    else:
        client = await ls.open(PATH_A, query={"ticket": await ls.ticket(), "last_event_id": last_id})
    assert client.status == 200
    assert (await client.next_frame()).is_keepalive
    return client


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_snapshot_carries_the_position_and_events_carry_stream_sequences(ls):
    before = await ls.publish_stored(SUBJECT, _payload(A, 0))
    client = await ls.attacker(A)
    assert client.snapshot.id == ls.event_id(before), "the snapshot's id is the stream position at registration"
    assert "resumed" not in client.snapshot.json(), "a fresh connect is not a resume"
    seq = await ls.publish_stored(SUBJECT, _payload(A, 1))
    event = await client.next_event()
    assert event.id == ls.event_id(seq) and event.json()["payload"]["n"] == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_replays_exactly_the_missed_events_then_live(ls, how):
    client = await ls.attacker(A)
    await ls.publish_stored(SUBJECT, _payload(A, 0))
    last_id = (await client.next_event()).id
    client.close()
    await ls.wait_for(lambda: ls.hub.subscription_count == 0)
    missed = []
    for n in range(1, 6):
        missed.append(await ls.publish_stored(SUBJECT, _payload(A, n)))
        await ls.publish_stored(SUBJECT, _payload(B, 100 + n))  # another attacker's: not for this stream
        await ls.publish_stored("attacker.scored", {"attacker_uuid": "someone-else", "n": -1})

    again = await _resume(ls, last_id, how)
    resumed = await again.next_event()
    assert resumed.event == "resumed", resumed
    assert resumed.json() == {"last_event_id": last_id, "replayed": 5}
    replay = await _events(again, 5)
    assert _ns(replay) == [1, 2, 3, 4, 5], "exactly the missed events, in order"
    assert [sequence_of(f.id) for f in replay] == missed
    live = await ls.publish_stored(SUBJECT, _payload(A, 6))
    (event,) = await _events(again, 1)
    assert event.json()["payload"]["n"] == 6 and event.id == ls.event_id(live)
    await again.expect_silence(0.3)  # no duplicate of anything replayed
    assert resumes(ls.hub) == 1 and ls.hub.metrics.value("lurestream_resumed_events_total") == 5


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_resume_with_nothing_missed_replays_nothing(ls):
    client = await ls.attacker(A)
    seq = await ls.publish_stored(SUBJECT, _payload(A, 1))
    await client.next_event()
    client.close()
    again = await _resume(ls, ls.event_id(seq), "header")
    resumed = await again.next_event()
    assert resumed.event == "resumed" and resumed.json()["replayed"] == 0
    await ls.publish_stored(SUBJECT, _payload(A, 2))
    assert _ns(await _events(again, 1)) == [2]


@pytest.mark.gen_test(timeout=90)
@pytest.mark.lurestream(jetstream=True)
async def test_events_published_during_the_replay_are_neither_lost_nor_doubled(ls):
    client = await ls.attacker(A)
    await ls.publish_stored(SUBJECT, _payload(A, 0))
    last_id = (await client.next_event()).id
    client.close()
    nc = await ls.bus()
    js = nc.jetstream()
    for n in range(1, 301):  # a real gap to replay
        await nc.publish(SUBJECT, json.dumps({"payload": _payload(A, n)}).encode())
    await nc.flush()

    total = 600
    stop = asyncio.Event()

    async def publish_more() -> None:  # keeps publishing while the resume registers, replays, hands over
        for n in range(301, total + 1):
            await js.publish(SUBJECT, json.dumps({"payload": _payload(A, n)}).encode())
            if n % 10 == 0:
                await asyncio.sleep(0.002)
        stop.set()

    publisher = asyncio.ensure_future(publish_more())
    again = await _resume(ls, last_id, "query")
    resumed = await again.next_event()
    assert resumed.event == "resumed", resumed
    assert resumed.json()["replayed"] >= 300, "the gap came from the replay, the rest live"
    seen = []
    while len(seen) < total:
        seen.extend(_ns([await again.next_event(15)]))
    await publisher
    assert seen == list(range(1, total + 1)), "every event once, in order, across replay and live"
    await again.expect_silence(0.3)


@pytest.mark.gen_test(timeout=90)
@pytest.mark.lurestream(jetstream=True)
async def test_resume_on_another_server_process(ls, start_server):
    other = start_server(jetstream=ls.config.jetstream)
    try:
        client = await ls.attacker(A)
        await ls.publish_stored(SUBJECT, _payload(A, 0))
        last_id = (await client.next_event()).id
        client.close()
        for n in range(1, 4):
            await ls.publish_stored(SUBJECT, _payload(A, n))
            await ls.publish_stored(SUBJECT, _payload(B, -n))
        again = await SSEClient.open(
            other.port, f"{PATH_A}?token={ls.token(VIEWER)}", headers={"Last-Event-ID": last_id}
        )
        ls.clients.append(again)
        assert (await again.next_frame()).is_keepalive
        resumed = await again.next_event()
        assert resumed.event == "resumed" and resumed.json()["replayed"] == 3, (resumed, other.log()[-2000:])
        assert _ns(await _events(again, 3)) == [1, 2, 3]
        await ls.publish_stored(SUBJECT, _payload(A, 4))
        assert _ns(await _events(again, 1)) == [4], "then live, from the other process's own consumer"
    finally:
        assert other.stop() == 0


async def _expect_rebuild(client: SSEClient) -> dict:
    snapshot = await client.next_event()
    assert snapshot.event == "snapshot", snapshot
    data = snapshot.json()
    assert data["resumed"] is False, data
    assert data["attacker_uuid"] == A and isinstance(data["observations"], list)
    return data


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
@pytest.mark.parametrize(
    "last_id", ["abc", "-1", "12x", "1e3", "7", "{epoch}-99999999999", "{epoch}-1e3", "abcdefgh-1", "{epoch}--1"]
)
async def test_unusable_id_gives_a_snapshot_marked_not_resumed(ls, last_id):
    """Not an id, a bare sequence (no stream epoch: whose stream?), ahead of the stream, another stream's."""
    await ls.publish_stored(SUBJECT, _payload(A, 0))
    client = await _resume(ls, last_id.format(epoch=ls.hub.epoch), "header")
    await _expect_rebuild(client)
    seq = await ls.publish_stored(SUBJECT, _payload(A, 1))
    event = await client.next_event()
    assert event.id == ls.event_id(seq), "then live events as usual"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, jetstream_max_msgs=5)
async def test_id_older_than_the_retained_messages_gives_a_snapshot(ls):
    first = await ls.publish_stored(SUBJECT, _payload(A, 0))
    for n in range(1, 12):
        await ls.publish_stored(SUBJECT, _payload(A, n))
    client = await _resume(ls, ls.event_id(first), "query")
    await _expect_rebuild(client)
    assert failed_resumes(ls.hub) == {"not_retained": 1}


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, replay_max=3)
async def test_gap_beyond_replay_max_gives_a_snapshot(ls):
    first = await ls.publish_stored(SUBJECT, _payload(A, 0))
    for n in range(1, 6):
        await ls.publish_stored(SUBJECT, _payload(B, n))
    client = await _resume(ls, ls.event_id(first), "header")
    await _expect_rebuild(client)
    assert failed_resumes(ls.hub) == {"beyond_replay_max": 1}


@pytest.mark.gen_test(timeout=60)
async def test_without_jetstream_a_resume_gives_a_snapshot_and_frames_have_no_ids(ls):
    client = await _resume(ls, "5", "header")
    data = await _expect_rebuild(client)
    assert data["resumed"] is False
    await ls.publish(SUBJECT, _payload(A, 1))
    event = await client.next_event()
    assert event.id is None and event.json()["payload"]["n"] == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, keepalive_seconds=0.3)
async def test_idle_keepalive_advances_the_last_event_id(ls):
    client = await ls.attacker(A)
    seq = await ls.publish_stored(SUBJECT, _payload(B, 1))  # not for this stream, but moves the position
    frame = await client.next_frame(3)
    while frame.id != ls.event_id(seq):  # an earlier keepalive may still carry the previous position
        frame = await client.next_frame(3)
    assert frame.is_keepalive and frame.id == ls.event_id(seq), frame


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_client_ahead_of_this_process_gets_no_duplicate_when_it_catches_up(ls):
    """The id came from a process further along the stream than this one: this process resumes
    with nothing to replay, and drops the live events the client already has when they arrive."""
    seqs = [await ls.publish_stored(SUBJECT, _payload(A, n)) for n in (1, 2, 3)]
    ls.hub.position = seqs[0]  # as if this process had only dispatched the first of them so far
    client = await _resume(ls, ls.event_id(seqs[2]), "header")
    resumed = await client.next_event()
    assert resumed.event == "resumed" and resumed.json() == {"last_event_id": ls.event_id(seqs[2]), "replayed": 0}
    for n, seq in ((2, seqs[1]), (3, seqs[2])):  # ...and now they reach it live
        ls.hub.dispatch(SUBJECT, json.dumps({"payload": _payload(A, n)}).encode(), seq)
    later = await ls.publish_stored(SUBJECT, _payload(A, 4))
    event = await client.next_event()
    assert _ns([event]) == [4] and event.id == ls.event_id(later), "events the client already had are not sent again"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_ids_older_than_the_hubs_memory_are_replayed_from_jetstream(ls):
    ls.hub.memory.max_events = 3  # a short memory: the gap below is read back from the stream
    client = await ls.attacker(A)
    await ls.publish_stored(SUBJECT, _payload(A, 0))
    last_id = (await client.next_event()).id
    client.close()
    for n in range(1, 9):
        await ls.publish_stored(SUBJECT, _payload(A if n % 2 else B, n))
    again = await _resume(ls, last_id, "header")
    resumed = await again.next_event()
    assert resumed.json() == {"last_event_id": last_id, "replayed": 4}
    assert _ns(await _events(again, 4)) == [1, 3, 5, 7]
    assert ls.hub.metrics.value("lurestream_resumes_total", outcome="jetstream") == 1
    await ls.publish_stored(SUBJECT, _payload(A, 9))
    assert _ns(await _events(again, 1)) == [9]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_a_new_process_reads_recent_history_into_memory_without_sending_it_live(ls):
    """A process that starts after events were published (a rolling deploy) reads them for resumes
    only: streams opened on it do not receive them, and resumes from before its start need no
    JetStream read."""
    from lurestream.hub import Hub

    seqs = [await ls.publish_stored(SUBJECT, _payload(A, n)) for n in range(5)]
    late = Hub(ls.nats_url, jetstream=ls.config.jetstream, replay_max=100)
    opened = Probe(late, [("attacker", A)])  # registered before the hub even connects
    await late.start()
    try:
        await ls.wait_for(lambda: late.position == seqs[-1], what="the new hub to read the history")
        assert opened.pending == 0, "history is not sent live"
        fresh = Probe(late, [("attacker", A)])
        assert fresh.position == seqs[-1]
        outcome = await late.resume(fresh, format_id(late.epoch, seqs[1]))
        assert outcome.failed is None and [seq for seq, _, _ in outcome.items] == seqs[2:]
        assert late.metrics.value("lurestream_resumes_total", outcome="jetstream") == 0, "served from memory"
        live = await ls.publish_stored(SUBJECT, _payload(A, 5))
        await ls.wait_for(lambda: late.position == live)
        assert [seq for seq, _, _ in fresh.take()] == [live]
        assert [seq for seq, _, _ in opened.take()] == [live]
    finally:
        await late.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, stream_buffer_bytes="64KiB")
async def test_a_replay_larger_than_the_stream_buffer_is_a_snapshot_not_a_giant_write(ls):
    """protocol §11: a resume's replay counts against STREAM_BUFFER_BYTES; past it the client rebuilds from a
    snapshot (five non-reading resumes of 60 large events took a process from 613 MB to 1.6 GB)."""
    client = await ls.attacker(A)
    await ls.publish_stored(SUBJECT, _payload(A, 0))
    last_id = (await client.next_event()).id
    client.close()
    for n in range(1, 6):  # 5 × ~20 KB > 64 KiB
        await ls.publish_stored(SUBJECT, {**_payload(A, n), "pad": "x" * 20_000})
    again = await _resume(ls, last_id, "header")
    snapshot = await again.next_event()
    assert snapshot.event == "snapshot" and snapshot.json()["resumed"] is False
    assert failed_resumes(ls.hub) == {"beyond_stream_buffer": 1}
    small = await ls.publish_stored(SUBJECT, _payload(A, 6))
    event = await again.next_event()
    assert event.id == ls.event_id(small), "then live as usual"
