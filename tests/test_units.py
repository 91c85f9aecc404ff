"""Pure units: frame encoding, routing, the subscription queue, envelope decoding, limits."""

from __future__ import annotations

import asyncio

import pytest

from lurestream import sse
from lurestream.hub import Hub, MalformedMessage, decode_envelope
from lurestream.limits import ConnectionLimiter
from lurestream.routing import Route, attacker_keys, route
from lurestream.subscription import DRAINING, LAGGING, Subscription


def test_encode_frame_is_safe():
    assert sse.encode_frame("snapshot", '{"a":1}') == b'event: snapshot\ndata: {"a":1}\n\n'
    assert (
        sse.encode_frame("x\nevent: evil", "a\nb", event_id="1\n2")
        == b"id: 12\nevent: xevent: evil\ndata: a\ndata: b\n\n"
    )
    assert sse.encode_frame("e", "") == b"event: e\ndata: \n\n"


def test_dumps_is_one_ascii_line():
    text = sse.dumps({"v": "a\nb\u2028\ud800\U0001f600"})
    assert "\n" not in text and text.isascii()


@pytest.mark.parametrize(
    "subject,payload,expected",
    [
        ("attacker.observation.ja3", {"attacker_uuid": "u"}, Route(("attacker", "u"), "observation")),
        ("attacker.scored", {"attacker_ip": "1.2.3.4"}, Route(("ip", "1.2.3.4"), "attacker.scored")),
        (
            "attacker.scored",
            {"attacker_uuid": None, "attacker_ip": "1.2.3.4"},
            Route(("ip", "1.2.3.4"), "attacker.scored"),
        ),
        ("attacker.scored", {"attacker_uuid": "", "attacker_ip": "1.2.3.4"}, None),
        ("attacker.custom", {"attacker_uuid": None, "identity_uuid": "i"}, Route(("identity", "i"), "attacker.custom")),
        (
            "attribution.profile.state_changed",
            {"identity_uuid": "i"},
            Route(("identity", "i"), "attribution.state_changed"),
        ),
        ("topology.t1.mutation.applied", {}, Route(("topology", "t1"), "mutation.applied")),
        ("decky.d1.service_added", {"topology_id": "t1"}, Route(("topology", "t1"), "decky.service_added")),
        ("decky.d1", {"topology_id": "t1"}, None),
        ("topology", {}, None),
        ("other.thing", {"attacker_uuid": "u"}, None),
        ("attacker.observation.ja3", {"attacker_uuid": ""}, None),
        ("attacker.observation.ja3", {"attacker_uuid": 5}, None),
    ],
)
def test_route(subject, payload, expected):
    assert route(subject, payload) == expected


def test_attacker_keys_skip_missing_values():
    assert attacker_keys({"_id": "u", "ip": None, "identity_id": ""}) == [("attacker", "u")]
    assert attacker_keys({"_id": "u", "ip": "1.1.1.1", "identity_id": "i"}) == [
        ("attacker", "u"),
        ("ip", "1.1.1.1"),
        ("identity", "i"),
    ]


def test_decode_envelope():
    env = decode_envelope("attacker.x", b'{"topic": "lie", "type": "t", "ts": 5, "payload": {"a": 1}}')
    assert (env.topic, env.type, env.ts, env.payload) == ("attacker.x", "t", 5.0, {"a": 1})
    env = decode_envelope("attacker.x", b"{}", now=42.0)
    assert (env.type, env.ts, env.payload) == ("", 42.0, {})
    for bad in (b"[]", b"nope", b'{"payload": 1}', b'{"ts": "x"}', b'{"ts": true}', b'{"type": 3}'):
        with pytest.raises(MalformedMessage):
            decode_envelope("s", bad)


def test_subscription_overflow_ends_it_as_lagging_keeping_what_is_queued():
    async def scenario():
        overflowed, closed = [], []
        sub = Subscription([("attacker", "u")], 2, on_overflow=overflowed.append, on_close=closed.append)
        assert sub.put_nowait((1, b"1")) and sub.put_nowait((2, b"2"))
        assert not sub.put_nowait((3, b"3")) and not sub.put_nowait((4, b"4"))
        assert sub.closed and sub.reason == LAGGING
        assert overflowed == [sub] and closed == [sub], "reported and unregistered once"
        assert await sub.get_batch(1) == [(1, b"1"), (2, b"2")], "the reader still gets what was queued"
        assert await sub.get_batch(1) is None

    asyncio.run(scenario())


def test_subscription_end_keeps_frames_close_discards_them():
    async def scenario():
        sub = Subscription([("a", "b")], 10)
        sub.put_nowait((0, b"x"))
        sub.end(DRAINING)
        sub.close()
        assert sub.reason == DRAINING, "the first reason sticks"
        assert await sub.get_batch(1) is None, "close() discarded the queue: nothing is left to read"

    asyncio.run(scenario())


def test_subscription_get_batch_timeout_close():
    async def scenario():
        closed = []
        sub = Subscription([("a", "b")], 10, on_close=closed.append)
        assert await sub.get_batch(0.01) == []
        sub.put_nowait((0, b"x"))
        sub.put_nowait((0, b"y"))
        assert await sub.get_batch(1) == [(0, b"x"), (0, b"y")]
        waiter = asyncio.ensure_future(sub.get_batch(10))
        await asyncio.sleep(0.01)
        sub.close()
        sub.close()
        assert await asyncio.wait_for(waiter, 1) is None
        assert closed == [sub]
        assert not sub.put_nowait((0, b"z"))

    asyncio.run(scenario())


def test_hub_routes_in_one_lookup_and_encodes_once():
    hub = Hub("", queue_max=4)
    a = hub.subscribe([("attacker", "u1"), ("ip", "1.1.1.1")])
    b = hub.subscribe([("attacker", "u1")])
    c = hub.subscribe([("attacker", "u2")])
    assert hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "u1"}}') == 2
    (fa,), (fb,) = a._frames, b._frames
    assert fa is fb, "one frame object shared by every subscriber"
    assert c.pending == 0
    assert hub.dispatch("attacker.scored", b'{"payload": {"attacker_ip": "1.1.1.1"}}') == 1
    assert hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "nobody"}}') == 0
    assert hub.stats.unrouted == 1
    for _ in range(5):
        hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "u2"}}')
    assert c.closed and c.reason == LAGGING and c.pending == 4 and hub.stats.lagging == 1
    assert hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "u2"}}') == 0, "unregistered"
    for s in (a, b, c):
        s.close()
    assert hub.subscription_count == 0 and hub.routing_keys == 0


def test_hub_stamps_stream_sequence_and_skips_redeliveries():
    hub = Hub("", queue_max=8)
    sub = hub.subscribe([("attacker", "u1")])
    body = b'{"payload": {"attacker_uuid": "u1"}}'
    assert hub.dispatch("attacker.scored", body, seq=7) == 1
    assert hub.position == 7
    assert hub.dispatch("attacker.scored", body, seq=7) == 0, "a re-delivered sequence is not sent twice"
    ((seq, frame, _ts),) = sub._frames
    assert seq == 7 and frame.startswith(b"id: 7\nevent: attacker.scored\n")
    assert hub.subscribe([("attacker", "u2")]).position == 7, "a subscription records where it registered"


def test_limiter():
    lim = ConnectionLimiter(2)
    assert lim.try_acquire("u") and lim.try_acquire("u") and not lim.try_acquire("u")
    assert lim.try_acquire("v")
    lim.release("u")
    assert lim.held("u") == 1 and lim.held() == 2
    lim.release("u")
    lim.release("v")
    assert lim.held() == 0
