"""POST / DELETE /api/v1/auth/sse-session: browser sessions for native EventSource (protocol §12).

A native ``EventSource`` cannot send headers, and a ticket is single-use, so it could not reconnect by
itself without a long-lived JWT in its URL. ``POST`` (with a Bearer JWT, like tickets) sets an HttpOnly,
SameSite=Strict cookie scoped to ``/api/v1/`` that the browser sends on every connect and reconnect;
it lives until the JWT's ``exp`` (at most ``SESSION_MAX_SECONDS``) unless ``DELETE`` ends it first.
Only the session's SHA-256 is stored. The cookie authorises streams and the picker lists, never a mint.
"""

from __future__ import annotations

from typing import Any

from lurestream.auth import AuthError
from lurestream.handlers.base import SESSION_COOKIE, ApiError, BaseHandler
from lurestream.handlers.tickets import check_mint_rate
from lurestream.services import Services

COOKIE_PATH = "/api/v1/"


class SessionHandler(BaseHandler):
    fresh_credentials = True  # a JWT revoked a moment ago mints nothing (protocol §16)
    # POST needs a Bearer JWT (no ticket, no cookie, no ?token=); DELETE needs only the cookie it ends
    auth_methods = frozenset({"POST"})

    async def prepare(self) -> None:
        self.auth_required = self.request.method in self.auth_methods
        await super().prepare()

    async def post(self) -> None:
        assert self.identity is not None
        check_mint_rate(self.services.mint_rate, self.metrics, self.identity.uuid)
        try:
            secret, max_age = await self.auth.mint_session(self.identity)
        except AuthError as exc:  # the JWT expires within the second
            raise ApiError(exc.status, exc.detail, exc.reason) from None
        self._set_session_cookie(secret, max_age)
        self.set_header("Cache-Control", "no-store")
        self.set_status(204)

    async def delete(self) -> None:
        secret = self.get_cookie(SESSION_COOKIE)
        if secret:
            await self.auth.end_session(secret)
        # cleared in the browser whether or not it was known (an expiry in the past, same name and path)
        self.clear_cookie(
            SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=self.config.cookie_secure
        )
        self.set_header("Cache-Control", "no-store")
        self.set_status(204)

    def _set_session_cookie(self, value: str, max_age: int) -> None:
        self.set_cookie(
            SESSION_COOKIE,
            value,
            path=COOKIE_PATH,
            max_age=max_age,
            httponly=True,
            samesite="Strict",
            secure=self.config.cookie_secure,
        )


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/auth/sse-session", SessionHandler, {"services": services})]
