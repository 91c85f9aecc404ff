"""Credentials for the whole life of a stream (protocol §12): the revocation and role sweep.

Expiry is checked by the live writer's sweep (each stream knows its credential's ``exp``). Everything
else can change in MongoDB while a stream is open — a ``jti`` revoked, ``tokens_valid_from`` moved, the
user deleted, the role changed, a password change required, a session signed out (``DELETE``) — so
every ``interval`` seconds this sweep reads, for the distinct users, jtis and sessions that have open
streams, the user documents, which jtis are revoked and which sessions still exist: one ``$in`` query
each per ``BATCH``, never one per stream. Streams whose credential no longer holds get ``event: end``
with the reason (``revoked`` or ``forbidden``) and are closed.

When the store cannot answer, open streams go on (protocol §2: they keep forwarding); the sweep tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from lurestream.auth import Authenticator, password_change_required, user_refusal
from lurestream.store import Store, StoreUnavailable
from lurestream.writer import FORBIDDEN, REVOKED, LiveStream, LiveWriter

log = logging.getLogger("lurestream.credentials")

BATCH = 1000  # users or jtis per query


class CredentialSweep:
    """Registered in the writer's sweep; starts one check every ``interval`` seconds, never two at once."""

    def __init__(
        self,
        writer: LiveWriter,
        store: Store,
        stream_roles: tuple[str, ...],
        interval: float,
        auth: Authenticator | None = None,
    ) -> None:
        self.writer = writer
        self.store = store
        self.auth = auth  # told what each pass read, so a credential just ended is refused at once
        self.stream_roles = stream_roles
        self.interval = interval
        self.queries = 0  # store queries made (tests check they do not grow with the number of streams)
        self.passes = 0
        self._next = time.monotonic() + interval
        self._running: asyncio.Task[None] | None = None

    def __call__(self, _now: float) -> None:
        if self.interval <= 0 or self._running is not None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        self._running = asyncio.ensure_future(self._run())
        self._running.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is not None:
            log.error("credential sweep failed", exc_info=task.exception())

    async def _run(self) -> None:
        streams = [s for s in self.writer.streams if not s.closing and s.user]
        if not streams:
            return
        try:
            users, revoked, sessions = await self.read(
                sorted({s.user for s in streams}),
                sorted({s.jti for s in streams if s.jti}),
                sorted({s.session for s in streams if s.session}),
            )
        except StoreUnavailable as exc:
            log.warning("credential sweep skipped: %s", exc)
            return
        self.passes += 1
        if self.auth is not None:
            self.auth.learn({uuid: users.get(uuid) for uuid in {s.user for s in streams}}, revoked)
        for stream in streams:
            reason = self.verdict(stream, users.get(stream.user), revoked)
            if reason is None and stream.session and stream.session not in sessions:
                reason = REVOKED  # its session was signed out
            if reason is not None and not stream.closing:
                log.info("ending a %s stream of user %s: %s", stream.kind, stream.user, reason)
                self.writer.end_credential(stream, reason)

    async def read(
        self, users: list[str], jtis: list[str], sessions: list[str]
    ) -> tuple[dict[str, dict[str, Any]], set[str], set[str]]:
        found: dict[str, dict[str, Any]] = {}
        revoked: set[str] = set()
        alive: set[str] = set()
        for start in range(0, len(users), BATCH):
            self.queries += 1
            found.update(await self.store.get_users(users[start : start + BATCH]))
        for start in range(0, len(jtis), BATCH):
            self.queries += 1
            revoked |= await self.store.revoked_among(jtis[start : start + BATCH])
        for start in range(0, len(sessions), BATCH):
            self.queries += 1
            alive |= await self.store.sessions_among(sessions[start : start + BATCH])
        return found, revoked, alive

    def verdict(self, stream: LiveStream, user: dict[str, Any] | None, revoked: set[str]) -> str | None:
        """``revoked``, ``forbidden`` or None (the credential still holds)."""
        if stream.jti in revoked or user_refusal(user, stream.iat) is not None:
            return REVOKED
        assert user is not None
        if password_change_required(user) or str(user.get("role") or "") not in self.stream_roles:
            return FORBIDDEN
        return None
