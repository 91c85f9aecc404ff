"""Who is asking: JWT validation, the role gate, and stream tickets (SPEC §5).

Every JWT failure is the same 401 so a caller learns nothing about why; the reason goes to the debug
log (never the token). Tickets are stored as their sha256 only and redeemed with one atomic
``find_one_and_delete``, so a ticket minted on one process or host is redeemable on any other, once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt

from lurestream.cache import MISSING, TTLCache
from lurestream.config import Config
from lurestream.store import Store

log = logging.getLogger("lurestream.auth")

INVALID_CREDENTIALS = "Could not validate credentials"
NOT_AUTHENTICATED = "Not authenticated"
PASSWORD_CHANGE = "Password change required before accessing this resource"
INSUFFICIENT = "Insufficient permissions"
INVALID_TICKET = "Invalid or expired ticket"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "uuid", "jti")


class AuthError(Exception):
    """A request that may not pass: ``status`` is 401 or 403, ``detail`` the JSON body's message."""

    def __init__(self, status: int, detail: str, reason: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason or detail


@dataclass(frozen=True)
class Identity:
    uuid: str
    role: str


def hash_ticket(ticket: str) -> str:
    return hashlib.sha256(ticket.encode("utf-8")).hexdigest()


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch of a stored date (a BSON date, a number, or an ISO-8601 string —
    some MongoDB-wire servers store ``$set`` dates as strings)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:  # stored dates are UTC
            value = value.replace(tzinfo=timezone.utc)
        return float(value.timestamp())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class Authenticator:
    """Validates credentials against the config's keys and the store's users, revocations and tickets."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        # SPEC §5: user and revocation look-ups may be cached (≤ 10 s); a connect storm then costs
        # one look-up per user, not one per stream
        self._users: TTLCache[dict[str, Any] | None] = TTLCache(config.auth_cache_seconds)
        self._revocations: TTLCache[bool] = TTLCache(config.auth_cache_seconds)
        self._verified: TTLCache[dict[str, Any]] = TTLCache(config.auth_cache_seconds, max_entries=20_000)

    def caches(self) -> tuple[TTLCache[Any], ...]:
        """The look-up caches, for the process's housekeeping to purge."""
        return (self._users, self._revocations, self._verified)

    def _key_for(self, alg: str) -> str:
        return self.config.jwt_secret if alg.startswith("HS") else self.config.jwt_public_key

    def _decode(self, token: str) -> dict[str, Any]:
        # A dashboard reconnects with the same JWT; verifying it is the costliest step of a connect
        # (pyjwt checks every base64 character), so a verified token is remembered for the auth cache
        # lifetime — its expiry is still checked on every use.
        known = self._verified.get(token)
        if known is not MISSING and known["exp"] > time.time():
            return known
        claims = self._verify(token)
        self._verified.set(token, claims)
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        cfg = self.config
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            if alg not in cfg.jwt_algorithms:  # refuses "none" and anything not configured
                raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} not accepted")
            claims = jwt.decode(
                token,
                self._key_for(alg),
                algorithms=[alg],
                audience=cfg.jwt_audience,
                issuer=cfg.jwt_issuer,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(401, INVALID_CREDENTIALS, f"invalid token: {exc.__class__.__name__}") from None
        for claim in ("exp", "iat", "nbf"):  # pyjwt accepts "123" strings; a number is what we compare
            value = claims.get(claim)
            if claim in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise AuthError(401, INVALID_CREDENTIALS, f"claim {claim} is not a number")
            if isinstance(value, float) and not math.isfinite(value):
                raise AuthError(401, INVALID_CREDENTIALS, f"claim {claim} is not a finite number")
        if claims.get("typ") != cfg.jwt_type:
            raise AuthError(401, INVALID_CREDENTIALS, "wrong token type")
        for claim in ("uuid", "jti"):
            if not isinstance(claims.get(claim), str) or not claims[claim]:
                raise AuthError(401, INVALID_CREDENTIALS, f"claim {claim} is not a string")
        return claims

    async def authenticate_token(self, token: str) -> Identity:
        """Full JWT validation (SPEC §5.2) including the user, revocation and role checks."""
        claims = self._decode(token)
        user = await self._users.get_or_load(claims["uuid"], lambda: self.store.get_user(claims["uuid"]))
        if user is None:
            raise AuthError(401, INVALID_CREDENTIALS, "unknown user")
        raw_valid_from = user.get("tokens_valid_from")
        valid_from = _epoch(raw_valid_from)
        if raw_valid_from is not None and valid_from is None:  # unreadable: fail closed
            raise AuthError(401, INVALID_CREDENTIALS, "unreadable tokens_valid_from")
        iat = claims["iat"]
        if valid_from is not None and (not isinstance(iat, (int, float)) or iat < math.floor(valid_from)):
            raise AuthError(401, INVALID_CREDENTIALS, "token issued before tokens_valid_from")
        if await self._revocations.get_or_load(claims["jti"], lambda: self.store.is_revoked(claims["jti"])):
            raise AuthError(401, INVALID_CREDENTIALS, "token revoked")
        if user.get("must_change_password") is True:
            raise AuthError(403, PASSWORD_CHANGE)
        identity = Identity(claims["uuid"], str(user.get("role") or ""))
        self.check_role(identity)
        return identity

    def check_role(self, identity: Identity) -> None:
        if identity.role not in self.config.stream_roles:
            raise AuthError(403, INSUFFICIENT, f"role {identity.role!r} may not stream")

    async def mint_ticket(self, identity: Identity) -> tuple[str, int]:
        """A fresh single-use ticket bound to the identity; only its hash is stored."""
        ticket = secrets.token_urlsafe(32)
        ttl = self.config.ticket_ttl_seconds
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=ttl)
        await self.store.insert_ticket(hash_ticket(ticket), identity.uuid, identity.role, expires_at)
        return ticket, ttl

    async def redeem_ticket(self, ticket: str) -> Identity:
        """Use a ticket up (whatever the outcome), then check its expiry and role."""
        doc = await self.store.take_ticket(hash_ticket(ticket))
        if doc is None:
            raise AuthError(401, INVALID_TICKET, "unknown or reused ticket")
        expires = _epoch(doc.get("expires_at"))
        if expires is None or expires <= datetime.now(timezone.utc).timestamp():
            raise AuthError(401, INVALID_TICKET, "expired ticket")
        identity = Identity(str(doc.get("uuid")), str(doc.get("role") or ""))
        self.check_role(identity)
        return identity
