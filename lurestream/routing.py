"""Which streams want a bus message, and under which SSE event name (protocol §3, §4). Pure functions.

A message maps to at most one routing key — ``("attacker", uuid)``, ``("ip", ip)``,
``("identity", identity_id)`` or ``("topology", id)`` — so the hub finds its subscribers with one dict
look-up and no stream ever receives a message twice. Keys only ever hold strings: comparison is exact
string equality, and a payload value of another type matches nothing. A key that is present but
``null`` counts as absent (producers that serialise a model often send ``"attacker_uuid": null``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

ATTACKER = "attacker"
IP = "ip"
IDENTITY = "identity"
TOPOLOGY = "topology"

Key = tuple[str, str]

SUBJECT_FAMILIES = ("attacker.>", "attribution.>", "topology.>", "decky.>")

_ATTACKER_NAMES = {
    "attacker.fingerprint_rotated": "fingerprint.rotated",
    "attacker.scored": "attacker.scored",
    "attribution.profile.state_changed": "attribution.state_changed",
    "attribution.profile.multi_actor_suspected": "attribution.multi_actor_suspected",
}
_IDENTITY_ONLY = ("attribution.profile.state_changed", "attribution.profile.multi_actor_suspected")


# The frame names a stream sends itself (protocol §16): a bus subject deriving one of them is sent under its
# family's prefix (topology.<id>.end arrives as "topology.end"), or it would end or wipe dashboards.
RESERVED_NAMES = frozenset({"snapshot", "resumed", "end", "error", "unavailable"})


class Route(NamedTuple):
    key: Key
    event: str


def _key(kind: str, value: Any) -> Key | None:
    return (kind, value) if isinstance(value, str) and value else None


def route(subject: str, payload: dict[str, Any]) -> Route | None:
    """The routing key and event name of a message, or None when no stream can want it."""
    family, _, rest = subject.partition(".")
    if not rest:
        return None
    if family in ("attacker", "attribution"):
        key = _attacker_key(subject, payload)
        if key is None:
            return None
        if subject.startswith("attacker.observation."):
            return Route(key, "observation")
        return Route(key, _ATTACKER_NAMES.get(subject, subject))
    if family == "topology":
        topology_id, _, tail = rest.partition(".")
        if not topology_id or not tail:
            return None
        return Route((TOPOLOGY, topology_id), "topology." + tail if tail in RESERVED_NAMES else tail)
    if family == "decky":
        _name, _, tail = rest.partition(".")
        key = _key(TOPOLOGY, payload.get("topology_id"))
        if key is None or not tail:
            return None
        return Route(key, "decky." + tail)
    return None


def _attacker_key(subject: str, payload: dict[str, Any]) -> Key | None:
    if subject.startswith("attacker.observation.") or subject == "attacker.fingerprint_rotated":
        return _key(ATTACKER, payload.get("attacker_uuid"))
    if subject == "attacker.scored":
        # fix: DECNET's scorer stamps only the ip; fall back to it when the uuid is absent.
        if payload.get("attacker_uuid") is not None:
            return _key(ATTACKER, payload["attacker_uuid"])
        return _key(IP, payload.get("attacker_ip"))
    if subject in _IDENTITY_ONLY:
        return _key(IDENTITY, payload.get("identity_uuid"))
    if payload.get("attacker_uuid") is not None:
        return _key(ATTACKER, payload["attacker_uuid"])
    return _key(IDENTITY, payload.get("identity_uuid"))


def attacker_keys(attacker: dict[str, Any]) -> list[Key]:
    """The keys an attacker stream registers under: its uuid, its ip, its identity."""
    keys = [(ATTACKER, str(attacker["_id"]))]
    for kind, value in ((IP, attacker.get("ip")), (IDENTITY, attacker.get("identity_id"))):
        key = _key(kind, value)
        if key is not None:
            keys.append(key)
    return keys


def topology_keys(topology: dict[str, Any]) -> list[Key]:
    return [(TOPOLOGY, str(topology["_id"]))]
