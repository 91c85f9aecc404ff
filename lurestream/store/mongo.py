"""MongoStore: the Store protocol on MongoDB, through PyMongo's AsyncMongoClient (default) or motor.

Only standard query features are used (find, find_one, find_one_and_delete, aggregate with
$match/$sort/$group/$first), so the same code runs on MongoDB and on MongoDB-wire servers.
Connection failures and timeouts become :class:`StoreUnavailable` after at most ``timeout_ms``.
The server writes nowhere but ``sse_tickets`` and ``sse_sessions`` (protocol §8, §12).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import ConnectionFailure

from lurestream.store import StoreUnavailable

T = TypeVar("T")
P = ParamSpec("P")

OBSERVATION_FIELDS = ("primitive", "value", "confidence", "ts", "source")
IN_FLIGHT_STATES = ("pending", "applying")
SCAN_LIMIT = 2000  # observations read per snapshot before falling back to the $group aggregation

INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "observations": [([("attacker_uuid", ASCENDING), ("primitive", ASCENDING), ("ts", DESCENDING)], {})],
    "topology_mutations": [([("topology_id", ASCENDING), ("state", ASCENDING), ("requested_at", DESCENDING)], {})],
    # the dashboard's firehoses and live log feed (protocol §14, §15): their snapshots' and queries' sort keys
    "identities": [([("updated_at", DESCENDING)], {})],
    "campaigns": [([("updated_at", DESCENDING)], {})],
    "orchestrator_events": [([("ts", DESCENDING)], {}), ([("decky_uuid", ASCENDING), ("ts", DESCENDING)], {})],
    "logs": [([("timestamp", ASCENDING)], {})],
    "attackers": [([("last_seen", DESCENDING)], {})],  # the picker: most recently active first
    # TTL for clean-up only: redemption checks expires_at itself (TTL monitors run about once a minute).
    "sse_tickets": [([("expires_at", ASCENDING)], {"expireAfterSeconds": 0})],
    "sse_sessions": [([("expires_at", ASCENDING)], {"expireAfterSeconds": 0})],
}
TTL_COLLECTIONS = ("sse_tickets", "sse_sessions")


def _unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn the driver's connection failures and timeouts into StoreUnavailable."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except ConnectionFailure as exc:
            raise StoreUnavailable(f"MongoDB unavailable: {exc.__class__.__name__}") from exc

    return wrapper


def _quick(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A look-up by ``_id`` on the connect path: StoreUnavailable once ``timeout_ms`` has passed.

    PyMongo waits for a server in steps of half a second, so its own server-selection timeout can
    overshoot by up to 0.5 s (a 500 ms setting gave 503s after ~1 s); this deadline is exact (not
    ``asyncio.wait_for``, which would wait for the cancelled call). Only for quick look-ups: a snapshot
    read under load may rightly take longer (the socket timeout bounds it).
    """
    inner = _unavailable(fn)

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store = args[0]
        assert isinstance(store, MongoStore)
        task = asyncio.ensure_future(inner(*args, **kwargs))
        try:
            done, _pending = await asyncio.wait({task}, timeout=store.timeout_ms / 1000)
        except asyncio.CancelledError:  # the caller gave up first (e.g. /readyz's own deadline): the call
            _abandon(store, task)  # finishes on its own; its failure must not surface as a stray traceback
            raise
        if done:
            return task.result()
        # Answer now, but let the call finish on its own (its socket timeout bounds it): cancelling it
        # makes PyMongo close the connection, and a process that falls behind under load would lose its
        # pool that way and fall further behind (seen with 3 workers opening 50,000 streams).
        _abandon(store, task)
        raise StoreUnavailable(f"MongoDB did not answer within {store.timeout_ms} ms")

    return wrapper


def _abandon(store: MongoStore, task: asyncio.Future[Any]) -> None:
    """Leave a call to finish by itself (its socket timeout bounds it), its outcome retrieved quietly."""
    store.abandoned.add(task)
    task.add_done_callback(store.abandoned.discard)
    task.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome (so asyncio does not log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


def make_client(uri: str, driver: str, timeout_ms: int) -> Any:
    """A tz-aware async client for the chosen driver, failing fast when the server is away."""
    options: dict[str, Any] = dict(
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 5, 10_000),
        appname="lurestream",
    )
    if driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(uri, **options)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(uri, **options)


class MongoStore:
    """The Store on one MongoDB database."""

    def __init__(self, uri: str, db_name: str, driver: str = "pymongo", timeout_ms: int = 2000) -> None:
        self.driver = driver
        self.timeout_ms = timeout_ms
        self.abandoned: set[asyncio.Future[Any]] = set()  # calls answered 503 early, finishing on their own
        self.client = make_client(uri, driver, timeout_ms)
        self.db = self.client[db_name]

    async def _to_list(self, cursor: Any) -> list[dict[str, Any]]:
        return list(await cursor.to_list(length=None))

    async def _aggregate(self, collection: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cursor = self.db[collection].aggregate(pipeline)
        if self.driver != "motor":  # PyMongo's async aggregate is a coroutine returning the cursor
            cursor = await cursor
        return await self._to_list(cursor)

    @_quick
    async def ping(self) -> None:
        await self.client.admin.command("ping")

    @_quick
    async def insert_ticket(
        self, ticket_hash: str, uuid: str, role: str, expires_at: datetime, credential: dict[str, Any] | None = None
    ) -> None:
        doc = {"_id": ticket_hash, "uuid": uuid, "role": role, "expires_at": expires_at, **(credential or {})}
        await self.db.sse_tickets.insert_one(doc)

    @_quick
    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.db.sse_tickets.find_one_and_delete({"_id": ticket_hash})
        return doc

    @_quick
    async def insert_session(
        self, session_hash: str, uuid: str, credential: dict[str, Any], expires_at: datetime
    ) -> None:
        doc = {"_id": session_hash, "uuid": uuid, "expires_at": expires_at, **credential}
        await self.db.sse_sessions.insert_one(doc)

    @_quick
    async def get_session(self, session_hash: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.db.sse_sessions.find_one({"_id": session_hash})
        return doc

    @_quick
    async def delete_session(self, session_hash: str) -> None:
        await self.db.sse_sessions.delete_one({"_id": session_hash})

    @_unavailable
    async def get_users(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        cursor = self.db.users.find(
            {"_id": {"$in": uuids}}, {"role": 1, "must_change_password": 1, "tokens_valid_from": 1}
        )
        return {doc["_id"]: doc for doc in await self._to_list(cursor)}

    @_quick
    async def look_up_users(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """``get_users`` on the connect path: StoreUnavailable after ``timeout_ms`` (a quick 503)."""
        return await self.get_users(uuids)

    @_unavailable
    async def sessions_among(self, session_hashes: list[str]) -> set[str]:
        cursor = self.db.sse_sessions.find({"_id": {"$in": session_hashes}}, {"_id": 1})
        return {doc["_id"] for doc in await self._to_list(cursor)}

    @_unavailable
    async def revoked_among(self, jtis: list[str]) -> set[str]:
        cursor = self.db.revoked_tokens.find({"_id": {"$in": jtis}}, {"_id": 1})
        return {doc["_id"] for doc in await self._to_list(cursor)}

    @_quick
    async def look_up_revoked(self, jtis: list[str]) -> set[str]:
        """``revoked_among`` on the connect path: StoreUnavailable after ``timeout_ms`` (a quick 503)."""
        return await self.revoked_among(jtis)

    @_unavailable
    async def list_topologies(self, limit: int) -> list[dict[str, Any]]:
        cursor = self.db.topologies.find({}, {"status": 1}).sort("_id", 1).limit(limit)
        return await self._to_list(cursor)

    @_quick
    async def get_attackers(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        cursor = self.db.attackers.find({"_id": {"$in": uuids}}, {"ip": 1, "identity_id": 1})
        return {doc["_id"]: doc for doc in await self._to_list(cursor)}

    @_quick
    async def get_topologies(self, topology_ids: list[str]) -> dict[str, dict[str, Any]]:
        cursor = self.db.topologies.find({"_id": {"$in": topology_ids}}, {"status": 1})
        return {doc["_id"]: doc for doc in await self._to_list(cursor)}

    @_unavailable
    async def latest_observations_many(self, uuids: list[str]) -> dict[str, list[dict[str, Any]]]:
        # A find sorted like the (attacker_uuid, primitive, ts desc) index, first row per primitive kept:
        # an index scan on MongoDB, and ~20x cheaper than $group on the MongoDB-wire server (bench:
        # 10.6 ms vs 207 ms at 9,000 observations). Attackers with a long history would make it read
        # too much, so past SCAN_LIMIT rows per attacker the $group aggregation (index-backed too)
        # answers for each of them.
        cap = SCAN_LIMIT * len(uuids)
        cursor = (
            self.db.observations.find(
                {"attacker_uuid": {"$in": uuids}}, {f: 1 for f in (*OBSERVATION_FIELDS, "attacker_uuid")}
            )
            .sort([("attacker_uuid", 1), ("primitive", 1), ("ts", DESCENDING)])
            .limit(cap + 1)
        )
        docs = await self._to_list(cursor)
        if len(docs) > cap:
            return {uuid: await self._latest_by_group(uuid) for uuid in uuids}
        latest: dict[str, dict[Any, dict[str, Any]]] = {uuid: {} for uuid in uuids}
        for doc in docs:
            per_attacker = latest.get(doc.get("attacker_uuid"))  # type: ignore[arg-type]
            if per_attacker is not None:
                per_attacker.setdefault(doc.get("primitive"), doc)
        return {
            uuid: [{f: doc.get(f) for f in OBSERVATION_FIELDS} for doc in rows.values()]
            for uuid, rows in latest.items()
        }

    async def _latest_by_group(self, attacker_uuid: str) -> list[dict[str, Any]]:
        # $sort on the index then $group/$first; the final $sort fixes the order ($group's is undefined)
        pipeline: list[dict[str, Any]] = [
            {"$match": {"attacker_uuid": attacker_uuid}},
            {"$sort": {"primitive": 1, "ts": -1}},
            {"$group": {"_id": "$primitive", "doc": {"$first": "$$ROOT"}}},
            {"$sort": {"_id": 1}},
        ]
        rows = await self._aggregate("observations", pipeline)
        return [{f: row["doc"].get(f) for f in OBSERVATION_FIELDS} for row in rows]

    @_unavailable
    async def in_flight_mutations_many(self, topology_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        cursor = self.db.topology_mutations.find(
            {"topology_id": {"$in": topology_ids}, "state": {"$in": list(IN_FLIGHT_STATES)}}
        ).sort([("requested_at", DESCENDING)])
        docs = await self._to_list(cursor)
        found: dict[str, list[dict[str, Any]]] = {topology_id: [] for topology_id in topology_ids}
        for state in IN_FLIGHT_STATES:  # pending (newest first), then applying (newest first)
            for doc in docs:
                rows = found.get(doc.get("topology_id"))  # type: ignore[arg-type]
                if rows is not None and doc.get("state") == state:
                    rows.append(_with_id(doc))
        return found

    @_unavailable
    async def newest(
        self, collection: str, sort_field: str, limit: int, where: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        cursor = self.db[collection].find(where or {}).sort([(sort_field, DESCENDING), ("_id", ASCENDING)]).limit(limit)
        return [_with_id(doc) for doc in await self._to_list(cursor)]

    # -- the live log feed (protocol §15): one tail, stats and histograms per process, never per viewer ---
    @_unavailable
    async def last_log_id(self) -> int:
        # The range keeps the sort among numbers: MongoDB orders a stray text ``_id`` after every number
        # (its answer would be 0: the tail would start at the beginning), and the MongoDB-wire test
        # server sorts an unfiltered ``_id`` as text (999 above 3000).
        where = {"_id": {"$gte": 0}}
        docs = await self._to_list(self.db.logs.find(where, {"_id": 1}).sort("_id", DESCENDING).limit(1))
        return int(docs[0]["_id"]) if docs and isinstance(docs[0].get("_id"), int) else 0

    @_unavailable
    async def logs_after(self, after: int, limit: int, until: int | None = None) -> list[dict[str, Any]]:
        where: dict[str, Any] = {"$gt": after} if until is None else {"$gt": after, "$lte": until}
        cursor = self.db.logs.find({"_id": where}).sort("_id", ASCENDING).limit(limit)
        return await self._to_list(cursor)

    @_unavailable
    async def log_stats(self) -> dict[str, int]:
        total = await self.db.logs.estimated_document_count()  # the collection's count, not a scan
        distinct = await self._aggregate("logs", [{"$group": {"_id": "$attacker_ip"}}, {"$count": "n"}])
        running = await self.db.deckies.count_documents({"state": "running"})
        deployed = await self.db.deckies.count_documents({})
        return {
            "total_logs": int(total),
            "unique_attackers": int(distinct[0]["n"]) if distinct else 0,
            "active_deckies": int(running),
            "deployed_deckies": int(deployed),
        }

    @_unavailable
    async def log_timestamps(self, where: dict[str, Any], fields: list[str], limit: int) -> list[dict[str, Any]]:
        cursor = self.db.logs.find(where, {name: 1 for name in ("timestamp", *fields)}).limit(limit)
        return await self._to_list(cursor)

    @_unavailable
    async def init_indexes(self) -> list[str]:
        names = []
        for collection, specs in INDEXES.items():
            for keys, options in specs:
                names.append(f"{collection}.{await self.db[collection].create_index(keys, **options)}")
        return names

    @_unavailable
    async def missing_ttl_indexes(self) -> list[str]:
        missing = []
        for collection in TTL_COLLECTIONS:
            info = await self.db[collection].index_information()
            if not any("expireAfterSeconds" in index for index in info.values()):
                missing.append(collection)
        return missing

    async def close(self) -> None:
        for task in list(self.abandoned):  # at shutdown a cancelled call may close its connection
            task.cancel()
        await asyncio.gather(*self.abandoned, return_exceptions=True)
        result = self.client.close()
        if result is not None:  # PyMongo's async close is a coroutine; motor's is not
            await result

    @_unavailable
    async def search_attackers(self, q: str, limit: int) -> list[dict[str, Any]]:
        # The caller's text as a literal: every character but a letter or digit backslash-escaped (always a
        # literal in PCRE), so no text can be a pattern with a backtracking cost. Sorted like the
        # attackers (last_seen desc) index, so a common match stops after ``limit`` documents.
        where: dict[str, Any] = {}
        if q:
            literal = {"$regex": "".join(c if c.isalnum() else "\\" + c for c in q), "$options": "i"}
            where = {"$or": [{"ip": literal}, {"_id": literal}]}
        fields = {"ip": 1, "identity_id": 1, "score": 1, "last_seen": 1}
        cursor = self.db.attackers.find(where, fields).sort([("last_seen", DESCENDING), ("_id", ASCENDING)])
        return await self._to_list(cursor.limit(limit))


def _with_id(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as a snapshot item: ``_id`` renamed ``id``, first (protocol §4, §14)."""
    item: dict[str, Any] = {"id": doc["_id"]}
    item.update((k, v) for k, v in doc.items() if k != "_id")
    return item
