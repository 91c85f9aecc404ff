"""The per-topology stream (protocol §4): keyed by the topology id."""

from __future__ import annotations

from typing import Any

from lurestream.handlers.stream import StreamHandler
from lurestream.routing import Key, topology_keys


class TopologyEventsHandler(StreamHandler):
    kind = "topology"
    not_found = "Topology not found"

    async def load(self, resource_id: str) -> dict[str, Any] | None:
        return await self.reads.topologies.get(resource_id)

    def keys(self, resource: dict[str, Any]) -> list[Key]:
        return topology_keys(resource)

    async def snapshot(self, resource: dict[str, Any]) -> dict[str, Any]:
        in_flight = await self.reads.mutations.get(resource["_id"]) or []
        return {"topology_id": resource["_id"], "status": resource.get("status"), "in_flight": in_flight}


def handlers(services: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/topologies/([^/]+)/events", TopologyEventsHandler, services)]
