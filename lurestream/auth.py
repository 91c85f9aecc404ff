"""Who is asking: JWT validation, the role gate, and stream tickets (protocol §5).

Every JWT failure is the same 401 so a caller learns nothing about why; the reason goes to the debug
log (never the token). Tickets are stored as their sha256 only and redeemed with one atomic
``find_one_and_delete``, so a ticket minted on one process or host is redeemable on any other, once.
Browser sessions (protocol §12) are stored the same way and used for many connects until they expire.

An :class:`Identity` carries the credential's ``jti``, ``iat`` and ``exp`` (a ticket or a session records
those of the JWT it was minted from), so an open stream can be checked for its whole life (protocol §12).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt

from lurestream.batching import Coalescer
from lurestream.cache import MISSING, TTLCache
from lurestream.config import Config
from lurestream.store import Store

log = logging.getLogger("lurestream.auth")

INVALID_CREDENTIALS = "Could not validate credentials"
NOT_AUTHENTICATED = "Not authenticated"
PASSWORD_CHANGE = "Password change required before accessing this resource"
INSUFFICIENT = "Insufficient permissions"
INVALID_TICKET = "Invalid or expired ticket"
INVALID_SESSION = "Invalid or expired session"
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
    """Who is asking, and with what: the user, their role, and the credential's jti/iat/exp."""

    uuid: str
    role: str
    jti: str = ""
    iat: float = 0.0
    exp: float = 0.0  # epoch seconds the credential (or the session) expires; 0: unknown
    session: str = ""  # the session's hash when opened with a session cookie (its end ends the stream)


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
        # protocol §5: user and revocation look-ups may be cached (≤ 10 s); a connect storm then costs
        # one look-up per user, not one per stream
        self._users: TTLCache[dict[str, Any] | None] = TTLCache(config.auth_cache_seconds)
        self._revocations: TTLCache[bool] = TTLCache(config.auth_cache_seconds)
        self._verified: TTLCache[dict[str, Any]] = TTLCache(config.auth_cache_seconds, max_entries=20_000)
        # the look-ups behind those caches: a storm's different users (and jtis) arriving within a few
        # milliseconds go out as one ``$in`` query each, not one query per user (batching.py)
        self.user_reads: Coalescer[dict[str, Any]] = Coalescer(lambda uuids: store.look_up_users(uuids))
        self.revocation_reads: Coalescer[bool] = Coalescer(_revoked_flags(store))

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

    async def authenticate_token(self, token: str, fresh: bool = False) -> Identity:
        """Full JWT validation (protocol §5.2) including the user, revocation and role checks; ``fresh``
        reads the user and the revocation from the store, not the cache (minting: a credential revoked
        a moment ago must not mint more, protocol §16)."""
        claims = self._decode(token)
        return await self.check_user(
            claims["uuid"], claims["jti"], float(claims["iat"]), float(claims["exp"]), fresh=fresh
        )

    async def check_user(self, uuid: str, jti: str, iat: float, exp: float, fresh: bool = False) -> Identity:
        """The checks after a valid signature (or a stored session or ticket): the user exists, the
        credential is not older than ``tokens_valid_from`` nor revoked, no password change pending, a
        streaming role."""
        if fresh:
            user = await self.user_reads.get(uuid)
            self._users.set(uuid, user)
        else:
            user = await self._users.get_or_load(uuid, lambda: self.user_reads.get(uuid))
        reason = user_refusal(user, iat)
        if reason is not None:
            raise AuthError(401, INVALID_CREDENTIALS, reason)
        assert user is not None
        if jti:
            if fresh:
                revoked = await self._is_revoked(jti)
                self._revocations.set(jti, revoked)
            else:
                revoked = await self._revocations.get_or_load(jti, lambda: self._is_revoked(jti))
            if revoked:
                raise AuthError(401, INVALID_CREDENTIALS, "token revoked")
        if password_change_required(user):
            raise AuthError(403, PASSWORD_CHANGE)
        identity = Identity(uuid, str(user.get("role") or ""), jti, iat, exp)
        self.check_role(identity)
        return identity

    async def _is_revoked(self, jti: str) -> bool:
        return bool(await self.revocation_reads.get(jti))

    def learn(self, users: dict[str, dict[str, Any] | None], revoked: set[str]) -> None:
        """Fresh facts read by the open-stream sweep (protocol §16): once it ends a stream for a revoked,
        deleted or demoted credential, this process's next connect with that credential is refused at
        once, not after the cache's remaining lifetime."""
        for uuid, user in users.items():
            self._users.set(uuid, user)
        for jti in revoked:
            self._revocations.set(jti, True)

    def check_role(self, identity: Identity) -> None:
        if identity.role not in self.config.stream_roles:
            raise AuthError(403, INSUFFICIENT, f"role {identity.role!r} may not stream")

    async def mint_ticket(self, identity: Identity) -> tuple[str, int]:
        """A fresh single-use ticket bound to the identity; only its hash is stored."""
        ticket = secrets.token_urlsafe(32)
        ttl = self.config.ticket_ttl_seconds
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=ttl)
        await self.store.insert_ticket(
            hash_ticket(ticket),
            identity.uuid,
            identity.role,
            expires_at,
            credential={"jti": identity.jti, "iat": identity.iat, "exp": identity.exp},
        )
        return ticket, ttl

    async def redeem_ticket(self, ticket: str) -> Identity:
        """Use a ticket up (whatever the outcome), check its expiry and the role bound at mint time, then
        check the credential behind it as a JWT is checked (protocol §16): its user still exists, may still
        stream, has no password change pending, and the JWT it was minted from is neither revoked nor
        older than ``tokens_valid_from`` — a ticket must not outlive its credential."""
        doc = _unexpired(await self.store.take_ticket(hash_ticket(ticket)), INVALID_TICKET, "unknown or reused ticket")
        jti, iat, exp = _credential(doc.get("jti"), doc.get("iat"), doc.get("exp"))
        self.check_role(Identity(str(doc.get("uuid")), str(doc.get("role") or "")))
        return await self.check_user(str(doc.get("uuid")), jti, iat, exp)

    # -- browser sessions (protocol §12) ----------------------------------------------------------------
    async def mint_session(self, identity: Identity) -> tuple[str, int]:
        """A session bound to the JWT it was minted from: (the cookie value, its max-age in seconds).

        It lives until the JWT's ``exp``, at most ``SESSION_MAX_SECONDS``; only its hash is stored.
        """
        now = time.time()
        max_age = int(min(identity.exp - now, self.config.session_max_seconds))
        if max_age < 1:
            raise AuthError(401, INVALID_CREDENTIALS, "token expires too soon for a session")
        secret = secrets.token_urlsafe(32)
        expires_at = datetime.fromtimestamp(now + max_age, timezone.utc)
        await self.store.insert_session(
            hash_ticket(secret), identity.uuid, {"jti": identity.jti, "iat": identity.iat}, expires_at
        )
        return secret, max_age

    async def authenticate_session(self, secret: str) -> Identity:
        """A session cookie: it exists and has not expired; then the same user checks as a JWT."""
        doc = _unexpired(await self.store.get_session(hash_ticket(secret)), INVALID_SESSION, "unknown session")
        jti, iat, _exp = _credential(doc.get("jti"), doc.get("iat"), None)
        identity = await self.check_user(str(doc.get("uuid")), jti, iat, doc["expires_at"])
        return dataclasses.replace(identity, session=hash_ticket(secret))

    async def end_session(self, secret: str) -> None:
        await self.store.delete_session(hash_ticket(secret))


def user_refusal(user: dict[str, Any] | None, iat: float) -> str | None:
    """Why a credential issued at ``iat`` is no longer good for ``user`` (deleted, or older than the
    user's ``tokens_valid_from``), or None. Shared by connect-time auth and the open-stream sweep."""
    if user is None:
        return "unknown user"
    raw_valid_from = user.get("tokens_valid_from")
    if raw_valid_from is None:
        return None
    valid_from = _epoch(raw_valid_from)
    if valid_from is None:  # unreadable: fail closed
        return "unreadable tokens_valid_from"
    if iat < math.floor(valid_from):
        return "token issued before tokens_valid_from"
    return None


def password_change_required(user: dict[str, Any]) -> bool:
    """``must_change_password`` is set: ``true``, or ``1`` (how some MongoDB-wire servers store a ``$set`` boolean)."""
    flag = user.get("must_change_password")
    return flag is True or (type(flag) is int and flag == 1)


def _revoked_flags(store: Store) -> Callable[[list[str]], Awaitable[dict[str, bool]]]:
    """The revocation look-up in the shape a Coalescer wants: ``{jti: True}`` for each revoked one."""

    async def fetch(jtis: list[str]) -> dict[str, bool]:
        return dict.fromkeys(await store.look_up_revoked(jtis), True)

    return fetch


def _unexpired(doc: dict[str, Any] | None, detail: str, unknown: str) -> dict[str, Any]:
    """A stored ticket or session that exists and has not expired, its ``expires_at`` as epoch seconds;
    else the 401 with ``detail`` (the reason says which: ``unknown``, or ``expired`` + its kind)."""
    if doc is None:
        raise AuthError(401, detail, unknown)
    expires = _epoch(doc.get("expires_at"))
    if expires is None or expires <= time.time():
        raise AuthError(401, detail, "expired " + unknown.rsplit(" ", 1)[-1])
    return {**doc, "expires_at": expires}


def _credential(jti: Any, iat: Any, exp: Any) -> tuple[str, float, float]:
    """A stored credential's (jti, iat, exp), tolerating documents written before they were recorded."""
    number = (int, float)
    return (
        jti if isinstance(jti, str) else "",
        float(iat) if isinstance(iat, number) and not isinstance(iat, bool) else 0.0,
        float(exp) if isinstance(exp, number) and not isinstance(exp, bool) else 0.0,
    )
