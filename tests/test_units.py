"""Pure units: frame encoding, routing, the hub's fan-out, envelope decoding, limits."""

from __future__ import annotations

import pytest
from harness import Probe

from lurestream import sse
from lurestream.hub import Hub, MalformedMessage, decode_envelope
from lurestream.limits import ConnectionLimiter
from lurestream.routing import Route, attacker_keys, route


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


def test_hub_routes_in_one_lookup_and_encodes_once():
    hub = Hub("")
    a = Probe(hub, [("attacker", "u1"), ("ip", "1.1.1.1")])
    b = Probe(hub, [("attacker", "u1")])
    c = Probe(hub, [("attacker", "u2")])
    assert hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "u1"}}') == 2
    (fa,), (fb,) = a.items, b.items
    assert fa[1] is fb[1], "one frame object shared by every subscriber"
    assert c.pending == 0
    assert hub.dispatch("attacker.scored", b'{"payload": {"attacker_ip": "1.1.1.1"}}') == 1
    assert hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "nobody"}}') == 0
    assert hub.metrics.value("lurestream_events_unrouted_total") == 1
    hub.unregister(c)
    hub.unregister(c)
    assert hub.dispatch("attacker.observation.x", b'{"payload": {"attacker_uuid": "u2"}}') == 0, "unregistered"
    for s in (a, b):
        hub.unregister(s)
    assert hub.subscription_count == 0 and hub.routing_keys == 0


def test_hub_stamps_stream_sequence_and_skips_redeliveries():
    hub = Hub("")
    hub.begin_epoch("abcdefgh", 1, 1)
    sub = Probe(hub, [("attacker", "u1")])
    body = b'{"payload": {"attacker_uuid": "u1"}}'
    assert hub.dispatch("attacker.scored", body, seq=7) == 1
    assert hub.position == 7
    assert hub.dispatch("attacker.scored", body, seq=7) == 0, "a re-delivered sequence is not sent twice"
    ((seq, frame, _ts),) = sub.items
    assert seq == 7 and frame.startswith(b"id: abcdefgh-7\nevent: attacker.scored\n")
    assert Probe(hub, [("attacker", "u2")]).position == 7, "a stream records where it registered"


def test_limiter():
    lim = ConnectionLimiter(2)
    assert lim.try_acquire("u") and lim.try_acquire("u") and not lim.try_acquire("u")
    assert lim.try_acquire("v")
    lim.release("u")
    assert lim.held("u") == 1 and lim.held() == 2
    lim.release("u")
    lim.release("v")
    assert lim.held() == 0


def test_throttled_log_writes_one_line_per_interval_and_counts_the_rest(caplog):
    """The hub's and the NATS client's repeated warnings share one throttle (issue #17)."""
    import logging

    from lurestream.logs import Throttled

    now = [0.0]
    throttled = Throttled(logging.getLogger("lurestream.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "lurestream.test"):
        for _ in range(5):
            throttled.warning("bus down: %s", "x")
        now[0] = 10.0
        throttled.warning("bus down: %s", "y")
    assert [r.getMessage() for r in caplog.records] == ["bus down: x", "bus down: y (4 similar lines suppressed)"]
