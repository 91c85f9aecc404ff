"""POST /api/v1/auth/sse-ticket: trade a Bearer JWT for a single-use stream ticket (SPEC §5.3)."""

from __future__ import annotations

from typing import Any

from lurestream.handlers.base import STORE_UNAVAILABLE, ApiError, BaseHandler
from lurestream.store import StoreUnavailable


class TicketHandler(BaseHandler):
    auth_required = True  # Bearer header only: no ticket, no ?token=

    async def post(self) -> None:
        assert self.identity is not None
        try:
            ticket, ttl = await self.auth.mint_ticket(self.identity)
        except StoreUnavailable as exc:
            raise ApiError(503, STORE_UNAVAILABLE, str(exc)) from None
        self.set_header("Cache-Control", "no-store")
        self.write_json({"ticket": ticket, "expires_in": ttl})


def handlers(services: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/auth/sse-ticket", TicketHandler, services)]
