"""The store as the rest of the code sees it: a Protocol, so handlers and auth never touch a driver.

Every method raises :class:`StoreUnavailable` when the database cannot answer in time; handlers turn
that into a quick 503, never a hang.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol


class StoreUnavailable(RuntimeError):
    """The database did not answer (down, unreachable, timed out)."""


class Store(Protocol):
    async def ping(self) -> None: ...

    async def insert_ticket(
        self, ticket_hash: str, uuid: str, role: str, expires_at: datetime, credential: dict[str, Any] | None = None
    ) -> None:
        """Store a ticket's hash with its user, role and expiry, and the minting JWT's jti/iat/exp."""
        ...

    async def insert_session(
        self, session_hash: str, uuid: str, credential: dict[str, Any], expires_at: datetime
    ) -> None: ...

    async def get_session(self, session_hash: str) -> dict[str, Any] | None: ...

    async def delete_session(self, session_hash: str) -> None: ...

    async def get_users(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """Several users at once (the open-stream credential sweep, protocol §12)."""
        ...

    async def look_up_users(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """``get_users`` for the connect path (the coalesced look-ups of a connect storm): it answers,
        or raises StoreUnavailable, within the connect path's timeout."""
        ...

    async def look_up_revoked(self, jtis: list[str]) -> set[str]:
        """``revoked_among`` for the connect path, within its timeout (see ``look_up_users``)."""
        ...

    async def sessions_among(self, session_hashes: list[str]) -> set[str]:
        """Which of these sessions still exist (a signed-out session ends its streams, protocol §12)."""
        ...

    async def revoked_among(self, jtis: list[str]) -> set[str]:
        """Which of ``jtis`` are in ``revoked_tokens``."""
        ...

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None:
        """Atomically remove and return the ticket document (every redemption attempt uses it up)."""
        ...

    async def get_attackers(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """The attackers of ``uuids`` that exist, by uuid (one query for many: connect storms)."""
        ...

    async def get_topologies(self, topology_ids: list[str]) -> dict[str, dict[str, Any]]: ...

    async def list_topologies(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` topologies (``_id``, ``status``), for pickers; by id."""
        ...

    async def latest_observations_many(self, uuids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per attacker, per primitive, the observation with the greatest ``ts``, sorted by primitive
        (protocol §3); several attackers in one query (connect storms)."""
        ...

    async def in_flight_mutations_many(self, topology_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per topology, pending (newest first) then applying (newest first) mutations, JSON-ready (protocol §4)."""
        ...

    async def newest(
        self, collection: str, sort_field: str, limit: int, where: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The ``limit`` newest documents of ``collection`` by ``sort_field`` (descending, ties by ``_id``),
        matching ``where``, each with ``_id`` renamed ``id`` (the firehoses' snapshots, protocol §14)."""
        ...

    async def last_log_id(self) -> int:
        """The greatest ``_id`` of ``logs`` (0 when empty): where the live log feed's tail starts."""
        ...

    async def logs_after(self, after: int, limit: int, until: int | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` ``logs`` rows with ``after < _id`` (``<= until``), in id order."""
        ...

    async def log_stats(self) -> dict[str, int]:
        """``total_logs``, ``unique_attackers``, ``active_deckies``, ``deployed_deckies`` (protocol §15)."""
        ...

    async def log_timestamps(self, where: dict[str, Any], fields: list[str], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rows matching ``where``, with ``timestamp`` and ``fields`` only (a histogram)."""
        ...

    async def init_indexes(self) -> list[str]: ...

    async def missing_ttl_indexes(self) -> list[str]:
        """Collections the server writes (tickets, sessions) that lack their clean-up TTL index."""
        ...

    async def close(self) -> None: ...

    async def search_attackers(self, q: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` attackers (``_id``, ``ip``, ``identity_id``, ``score``, ``last_seen``) whose ip or
        uuid contains ``q`` as a literal, case-insensitively (every attacker when ``q`` is empty), most
        recently seen first: ``last_seen`` descending, attackers without one last, ties by ``_id``."""
        ...


__all__ = ["Store", "StoreUnavailable"]
