"""GET /api/v1/attackers and /api/v1/topologies: short lists for the dashboard's pickers.

Same credentials and role gate as the streams (Bearer, the session cookie or ``?token=``; tickets are for
streams only).
``?limit=`` (1–200, default 50). Values are returned as stored; the page escapes everything it shows.
"""

from __future__ import annotations

from typing import Any

from lurestream import sse
from lurestream.handlers.base import ApiError, BaseHandler
from lurestream.services import Services

MAX_LIMIT = 200


class DirectoryHandler(BaseHandler):
    auth_required = True
    accept_session = True
    accept_query_token = True

    def _limit(self) -> int:
        raw = self.get_query_argument("limit", "50")
        # ASCII digits only ("²".isdigit() is true) and short, so int() can neither raise nor work hard
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= MAX_LIMIT:
            raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
        return int(raw)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def get(self) -> None:
        limit = self._limit()
        items = await self.list(limit)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        self.finish(sse.dumps({"items": items}))


class AttackerListHandler(DirectoryHandler):
    async def list(self, limit: int) -> list[dict[str, Any]]:
        docs = await self.store.list_attackers(limit)
        return [{"uuid": d["_id"], "ip": d.get("ip"), "identity_id": d.get("identity_id")} for d in docs]


class TopologyListHandler(DirectoryHandler):
    async def list(self, limit: int) -> list[dict[str, Any]]:
        docs = await self.store.list_topologies(limit)
        return [{"id": d["_id"], "status": d.get("status")} for d in docs]


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (r"/api/v1/attackers", AttackerListHandler, {"services": services}),
        (r"/api/v1/topologies", TopologyListHandler, {"services": services}),
    ]
