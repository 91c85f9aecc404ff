"""GET /api/v1/attackers and /api/v1/topologies: short lists for the dashboard's pickers.

Same credentials and role gate as the streams (Bearer, the session cookie or ``?token=``; tickets are for
streams only).
``?limit=`` (1–200, default 50). Values are returned as stored; the page escapes everything it shows.

The attacker list is the picker of a large network: most recently active first (``last_seen`` descending,
attackers never seen last, ties by uuid), each with its ``score`` and ``last_seen``, and ``?q=`` keeps the
attackers whose ip or uuid contains the text (case-insensitive; a prefix is a substring too). ``q`` is at
most 64 characters of what ips and uuids are made of — letters, digits, ``.``, ``:``, ``-``, ``_`` — else
400; it is matched as a literal, never as a pattern.
"""

from __future__ import annotations

import math
import string
from datetime import datetime, timezone
from typing import Any

from lurestream import sse
from lurestream.handlers.base import ApiError, BaseHandler
from lurestream.services import Services

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_QUERY_LENGTH = 64
QUERY_PUNCTUATION = ".:-_"  # with letters and digits, what ips and uuids are made of
QUERY_CHARACTERS = frozenset(string.ascii_letters + string.digits + QUERY_PUNCTUATION)


class DirectoryHandler(BaseHandler):
    auth_required = True
    accept_session = True
    accept_query_token = True

    def _limit(self) -> int:
        raw = self.get_query_argument("limit", str(DEFAULT_LIMIT))
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


def _score(value: Any) -> float | int | None:
    """A stored score as a JSON number; anything else (text, a bool, NaN) as null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _seen(value: Any) -> str | None:
    """``last_seen`` as ISO-8601 with its offset: a BSON date, or ISO-8601 text as some writers (and
    MongoDB-wire servers, for a ``$set`` date) store it, read as UTC when it names no offset; else null."""
    if isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        try:
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)).isoformat()
    return None


class AttackerListHandler(DirectoryHandler):
    def _query(self) -> str:
        q = (self.get_query_argument("q", "") or "").strip()
        if len(q) > MAX_QUERY_LENGTH or not QUERY_CHARACTERS.issuperset(q):
            raise ApiError(
                400,
                f"q must be at most {MAX_QUERY_LENGTH} characters of an ip or attacker id "
                f"(letters, digits, {', '.join(repr(c) for c in QUERY_PUNCTUATION)})",
            )
        return q

    async def list(self, limit: int) -> list[dict[str, Any]]:
        docs = await self.store.search_attackers(self._query(), limit)
        return [
            {
                "uuid": d["_id"],
                "ip": d.get("ip"),
                "identity_id": d.get("identity_id"),
                "score": _score(d.get("score")),
                "last_seen": _seen(d.get("last_seen")),
            }
            for d in docs
        ]


class TopologyListHandler(DirectoryHandler):
    async def list(self, limit: int) -> list[dict[str, Any]]:
        docs = await self.store.list_topologies(limit)
        return [{"id": d["_id"], "status": d.get("status")} for d in docs]


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (r"/api/v1/attackers", AttackerListHandler, {"services": services}),
        (r"/api/v1/topologies", TopologyListHandler, {"services": services}),
    ]
