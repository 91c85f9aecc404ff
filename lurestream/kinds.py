"""The kinds of stream lurestream serves over the bus, as declarations (protocol §3, §4, §14).

A kind is data: its path, whether the path names a resource (and so can 404, after auth), the routing keys
its streams register under, and its snapshot. Event naming is the routing of its subject families
(``routing.route``); the lifecycle — admission, opening, the live phase, release — is the same for every
kind (``handlers/stream.py``, ``lifecycle.py``). Adding a kind is a declaration here and its routing.
The live log feed (protocol §15) is the one stream with another source; it is in ``logfeed.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lurestream.batching import StoreReads
from lurestream.routing import (
    CAMPAIGNS,
    EVERY,
    IDENTITIES,
    ORCHESTRATOR,
    Key,
    attacker_keys,
    firehose_key,
    topology_keys,
)
from lurestream.store import Store

Resource = dict[str, Any]
SNAPSHOT_SIZE = 50  # the firehoses' snapshots: the newest documents (protocol §14)


@dataclass(frozen=True)
class Reads:
    """What a kind reads its resource and snapshot with: the coalesced connect-path reads and the store."""

    reads: StoreReads
    store: Store


@dataclass(frozen=True)
class StreamKind:
    """One kind of stream. ``load`` is None for a kind with no id in its path (a firehose): no 404, and its
    resource is ``scope``'s answer to the query string (``?decky=``), or ``{"_id": "*"}``."""

    name: str  # the metrics and tracing label
    path: str  # the route: one group captures the id, when the kind has one
    keys: Callable[[Resource], list[Key]]
    snapshot: Callable[[Reads, Resource], Awaitable[dict[str, Any]]]
    load: Callable[[Reads, str], Awaitable[Resource | None]] | None = None
    not_found: str = "Not found"
    scope: tuple[str, ...] = ()  # query parameters that narrow a firehose to one id (at most one)
    events: tuple[str, ...] = field(default=())  # its fixed event names (the OpenAPI document lists them)

    @property
    def has_id(self) -> bool:
        return self.load is not None


async def _attacker(r: Reads, uuid: str) -> Resource | None:
    return await r.reads.attackers.get(uuid)


async def _attacker_snapshot(r: Reads, attacker: Resource) -> dict[str, Any]:
    observations = await r.reads.observations.get(attacker["_id"]) or []
    return {"attacker_uuid": attacker["_id"], "observations": observations}


async def _topology(r: Reads, topology_id: str) -> Resource | None:
    return await r.reads.topologies.get(topology_id)


async def _topology_snapshot(r: Reads, topology: Resource) -> dict[str, Any]:
    in_flight = await r.reads.mutations.get(topology["_id"]) or []
    return {"topology_id": topology["_id"], "status": topology.get("status"), "in_flight": in_flight}


def _newest(collection: str, sort_field: str, data_key: str, where_field: str = "") -> Callable[..., Any]:
    """A firehose's snapshot: the ``SNAPSHOT_SIZE`` newest documents of ``collection`` (by ``sort_field``,
    descending, ties by ``_id``), only those whose ``where_field`` is the stream's scope when it has one."""

    async def snapshot(r: Reads, scope: Resource) -> dict[str, Any]:
        where = {where_field: scope["_id"]} if where_field and scope["_id"] != EVERY else None
        return {data_key: await r.store.newest(collection, sort_field, SNAPSHOT_SIZE, where)}

    return snapshot


def _firehose(kind: str) -> Callable[[Resource], list[Key]]:
    return lambda scope: [firehose_key(kind, scope["_id"])]


ATTACKER = StreamKind(
    name="attacker",
    path=r"/api/v1/attackers/([^/]+)/events",
    keys=attacker_keys,  # ip and identity_id are read once, when the stream opens (protocol §3)
    snapshot=_attacker_snapshot,
    load=_attacker,
    not_found="Attacker not found",
    events=(
        "observation",
        "fingerprint.rotated",
        "attacker.scored",
        "attribution.state_changed",
        "attribution.multi_actor_suspected",
    ),
)
TOPOLOGY = StreamKind(
    name="topology",
    path=r"/api/v1/topologies/([^/]+)/events",
    keys=topology_keys,
    snapshot=_topology_snapshot,
    load=_topology,
    not_found="Topology not found",
)
IDENTITY_FIREHOSE = StreamKind(
    name="identities",
    path=r"/api/v1/identities/events",
    keys=_firehose(IDENTITIES),
    snapshot=_newest("identities", "updated_at", "identities"),
    events=("formed", "observation.linked", "merged", "unmerged", "campaign.assigned"),
)
CAMPAIGN_FIREHOSE = StreamKind(
    name="campaigns",
    path=r"/api/v1/campaigns/events",
    keys=_firehose(CAMPAIGNS),
    snapshot=_newest("campaigns", "updated_at", "campaigns"),
    events=("formed", "identity.assigned"),
)
ORCHESTRATOR_FIREHOSE = StreamKind(
    name="orchestrator",
    path=r"/api/v1/orchestrator/events/stream",
    keys=_firehose(ORCHESTRATOR),
    snapshot=_newest("orchestrator_events", "ts", "events", where_field="decky_uuid"),
    scope=("decky",),
    events=("traffic", "file", "email"),
)

KINDS = (ATTACKER, TOPOLOGY, IDENTITY_FIREHOSE, CAMPAIGN_FIREHOSE, ORCHESTRATOR_FIREHOSE)
