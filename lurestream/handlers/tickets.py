"""POST /api/v1/auth/sse-ticket: trade a Bearer JWT for a single-use stream ticket (protocol §5.3)."""

from __future__ import annotations

from typing import Any

from lurestream.handlers.base import ApiError, BaseHandler
from lurestream.limits import MintRate
from lurestream.metrics import Metrics
from lurestream.services import Services

TOO_MANY_MINTS = "Too many ticket requests"


def check_mint_rate(mint_rate: MintRate, metrics: Metrics, user: str) -> None:
    """protocol §11: at most MINT_RATE tickets and sessions per user per process; 429 with Retry-After."""
    wait = mint_rate.take(user)
    if wait:
        metrics.http_refused.labels("mint_rate").inc()
        raise ApiError(429, TOO_MANY_MINTS, headers={"Retry-After": MintRate.retry_after(wait)})


class TicketHandler(BaseHandler):
    auth_required = True  # Bearer header only: no ticket, no ?token=
    fresh_credentials = True  # a JWT revoked a moment ago mints nothing (protocol §16)

    async def post(self) -> None:
        assert self.identity is not None
        check_mint_rate(self.services.mint_rate, self.metrics, self.identity.uuid)
        ticket, ttl = await self.auth.mint_ticket(self.identity)
        self.set_header("Cache-Control", "no-store")
        self.write_json({"ticket": ticket, "expires_in": ttl})


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/auth/sse-ticket", TicketHandler, {"services": services})]
