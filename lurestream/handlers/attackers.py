"""The per-attacker stream (protocol §3): keyed by the attacker's uuid, ip and identity."""

from __future__ import annotations

from typing import Any

from lurestream.handlers.stream import StreamHandler
from lurestream.routing import Key, attacker_keys


class AttackerEventsHandler(StreamHandler):
    kind = "attacker"
    not_found = "Attacker not found"

    async def load(self, resource_id: str) -> dict[str, Any] | None:
        return await self.reads.attackers.get(resource_id)

    def keys(self, resource: dict[str, Any]) -> list[Key]:
        # ip and identity_id are read once, when the stream opens (protocol §3).
        return attacker_keys(resource)

    async def snapshot(self, resource: dict[str, Any]) -> dict[str, Any]:
        observations = await self.reads.observations.get(resource["_id"]) or []
        return {"attacker_uuid": resource["_id"], "observations": observations}


def handlers(services: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/attackers/([^/]+)/events", AttackerEventsHandler, services)]
