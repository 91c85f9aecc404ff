"""Properties of the bus-to-frame path (protocol §6, §11), for any input Hypothesis can build.

Whatever bytes a publisher sends, the hub either forwards a frame that a strict SSE parser and a strict
JSON parser read back to exactly the envelope's values, or counts the message malformed — the decoder
never raises anything else, routing never raises, and encoding never produces non-JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lurestream import sse
from lurestream.envelope import MalformedMessage, decode_envelope
from lurestream.hub import Hub
from lurestream.routing import attacker_keys, route

SUBJECTS = st.one_of(
    st.sampled_from(
        [
            "attacker.observation.ja3",
            "attacker.scored",
            "attacker.fingerprint_rotated",
            "attribution.profile.state_changed",
            "attribution.profile.multi_actor_suspected",
            "topology.t1.status",
            "topology.t1.mutation.applied",
            "decky.web.service_added",
            "attacker",
            "topology.",
            "decky.x",
            "other.thing",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
JSON_VALUES = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
PAYLOADS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {},
        optional={
            "attacker_uuid": st.one_of(st.text(max_size=10), _scalars),
            "attacker_ip": st.one_of(st.text(max_size=10), _scalars),
            "identity_uuid": st.one_of(st.text(max_size=10), _scalars),
            "topology_id": st.one_of(st.text(max_size=10), _scalars),
            "x": JSON_VALUES,
        },
    ),
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "v": _scalars,
        "id": _scalars,
        "topic": _scalars,
        "type": st.one_of(st.text(), _scalars),
        "ts": _scalars,
        "payload": PAYLOADS,
    },
)


def _nested(depth: int) -> bytes:
    return b'{"payload": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


BODIES = st.one_of(
    st.binary(max_size=300),
    ENVELOPES.map(lambda e: json.dumps(e, allow_nan=True).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.integers(min_value=1, max_value=300).map(_nested),
)


def strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-JSON constant {name} in a frame")

    return json.loads(text, parse_constant=refuse)


def strict_sse(frame: bytes) -> dict[str, str]:
    """Parse one frame as the SSE spec reads it, refusing anything a browser could split differently."""
    text = frame.decode("utf-8")  # a frame is UTF-8 or it is broken
    assert "\r" not in text and "\x00" not in text
    assert text.endswith("\n\n") and "\n\n" not in text[:-2], "exactly one frame"
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in text[:-2].split("\n"):
        name, sep, value = line.partition(": ")
        assert sep and name in ("id", "event", "data"), f"unexpected line {line!r}"
        if name == "data":
            data.append(value)
        else:
            assert name not in fields
            fields[name] = value
    fields["data"] = "\n".join(data)
    return fields


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(subject=SUBJECTS, body=BODIES, seq=st.integers(min_value=0, max_value=2**53))
def test_a_bus_message_becomes_a_strict_frame_or_is_malformed(subject: str, body: bytes, seq: int) -> None:
    try:
        env = decode_envelope(subject, body, now=1.5)
    except MalformedMessage:
        return
    assert math.isfinite(env.ts)
    target = route(subject, env.payload)  # never raises
    if target is None:
        return
    frame = sse.encode_event(target.event, env.topic, env.type, env.ts, env.payload, f"e-{seq}" if seq else None)
    fields = strict_sse(frame)
    assert fields["event"] == target.event.replace("\r", "").replace("\n", "")
    if seq:
        assert fields["id"] == f"e-{seq}"
    back = strict_json(fields["data"])
    assert back == {"topic": subject, "type": env.type, "ts": env.ts, "payload": env.payload}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=SUBJECTS, payload=PAYLOADS)
def test_routing_never_raises(subject: str, payload: Any) -> None:
    assume(isinstance(payload, dict))
    found = route(subject, payload)
    if found is not None:
        kind, value = found.key
        assert isinstance(value, str) and value, "only non-empty strings are keys"


@settings(max_examples=200, deadline=None)
@given(doc=st.fixed_dictionaries({"_id": st.text(min_size=1)}, optional={"ip": _scalars, "identity_id": _scalars}))
def test_attacker_keys_never_raise(doc: dict[str, Any]) -> None:
    keys = attacker_keys(doc)
    assert keys[0] == ("attacker", doc["_id"]) and all(isinstance(v, str) and v for _k, v in keys)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=SUBJECTS, body=BODIES)
def test_the_hub_never_raises_on_a_bus_message(subject: str, body: bytes) -> None:
    hub = Hub("")
    before = hub.metrics.value("lurestream_bus_malformed_total")
    hub.dispatch(subject, body)
    try:
        decode_envelope(subject, body)
    except MalformedMessage:
        assert hub.metrics.value("lurestream_bus_malformed_total") == before + 1, "a malformed message is counted"


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_dumps_is_always_strict_single_line_ascii(value: Any) -> None:
    text = sse.dumps(value)
    assert text.isascii() and "\n" not in text and "\r" not in text
    strict_json(text)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 50)), max_size=120),
    max_events=st.integers(0, 60),
    max_bytes=st.integers(0, 2000),
    query=st.tuples(st.integers(0, 130), st.integers(0, 130), st.sets(st.integers(0, 5), max_size=3)),
)
def test_the_replay_memory_answers_like_a_scan_of_what_it_kept(events, max_events, max_bytes, query) -> None:
    """The per-key index gives exactly what scanning the kept events would, and the floor moves with
    every event let go (bounded by count and by bytes)."""
    from lurestream.replay import ReplayMemory

    memory = ReplayMemory(max_events, max_bytes)
    memory.start(0)
    kept: list[tuple[int, tuple[str, str], tuple[int, bytes, float]]] = []
    for seq, (key_n, size) in enumerate(events, start=1):
        key, item = ("k", str(key_n)), (seq, b"x" * size, 0.0)
        memory.remember(seq, key, item)
        kept.append((seq, key, item))
        while kept and (len(kept) > max_events or sum(len(i[1]) for _, _, i in kept) > max_bytes):
            kept.pop(0)
    assert len(memory) == len(kept) and memory.bytes == sum(len(i[1]) for _, _, i in kept)
    after, until, key_ns = query
    keys = [("k", str(n)) for n in key_ns]
    got = memory.between(after, until, keys)
    floor = memory.floor or 0
    if after < floor or until < after:
        assert got is None
    else:
        assert got == [item for seq, key, item in kept if after < seq <= until and key in keys]
