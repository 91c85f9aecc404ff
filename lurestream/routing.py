"""Which streams want a bus message, and under which SSE event name (protocol §3, §4, §14). Pure functions.

A message maps to one routing key — ``("attacker", uuid)``, ``("ip", ip)``, ``("identity", identity_id)``,
``("topology", id)``, or a firehose's ``("identities", "*")`` / ``("campaigns", "*")`` /
``("orchestrator", "*")`` — and an orchestrator event with a decky also to ``("orchestrator", <decky>)``
(streams with ``?decky=``). A stream registers under keys of one kind only, so the hub finds its
subscribers with one or two dict look-ups and no stream ever receives a message twice. Keys only ever hold
strings: comparison is exact string equality, and a payload value of another type matches nothing. A key
that is present but ``null`` counts as absent (producers that serialise a model often send
``"attacker_uuid": null``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

ATTACKER = "attacker"
IP = "ip"
IDENTITY = "identity"
TOPOLOGY = "topology"
IDENTITIES = "identities"  # the firehoses (protocol §14): every event of their family, or of one decky
CAMPAIGNS = "campaigns"
ORCHESTRATOR = "orchestrator"
EVERY = "*"

Key = tuple[str, str]

SUBJECT_FAMILIES = (
    "attacker.>",
    "attribution.>",
    "topology.>",
    "decky.>",
    "identity.>",
    "campaign.>",
    "orchestrator.>",
)

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
    also: Key | None = None  # a second key (an orchestrator event's decky), never of the same kind


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
    if family == "identity":
        return Route((IDENTITIES, EVERY), _named(family, rest))
    if family == "campaign":
        return Route((CAMPAIGNS, EVERY), _named(family, rest))
    if family == "orchestrator":  # orchestrator.<kind>.<decky uuid>[.…]: the event name is <kind>
        kind, _, after = rest.partition(".")
        if not kind:
            return None
        decky = after.partition(".")[0]
        decky = "" if decky == EVERY else decky
        return Route((ORCHESTRATOR, EVERY), _named(family, kind), (ORCHESTRATOR, decky) if decky else None)
    return None


def _named(family: str, name: str) -> str:
    """A firehose's event name: the subject less its family (protocol §14), prefixed when it would be one
    of the stream's own frame names (§16)."""
    return f"{family}.{name}" if name in RESERVED_NAMES else name


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


def firehose_key(kind: str, scope: str = EVERY) -> Key:
    """The one key a firehose stream registers under: every event of its family, or (the orchestrator
    stream's ``?decky=``) one decky's."""
    return (kind, scope)
