"""DECNET's live log feed, re-created for comparison (bench only): FastAPI + uvicorn, and for every viewer of
GET /api/v1/stream a loop of its own that polls the database once a second — the rows after its last id
that match its search, at most 50 — and sends each poll's rows as one SSE frame, plus the aggregates every
10 s: the stats (count of logs, distinct attackers, the deckies' two counts) and the viewer's histogram.
It is the shape of DECNET's ``stream_events`` (decnet/web/router/stream/api_stream_events.py) and of its
repository's ``get_logs_after_id`` / ``get_stats_summary`` / ``get_log_histogram``, on MongoDB.

Auth is the seed baseline's (same JWT, same user and revocation look-ups, ``?token=``). The search is
DECNET's language translated to a MongoDB query by ``lurestream.logsearch`` (``LogFilter.to_mongo``: the
same translation lurestream's histogram and resume queries use), so both servers select the same rows.
The histogram is bucketed here, as lurestream does, since the MongoDB-wire test server cannot bucket dates.

Frames are DECNET's: ``event: message`` and ``{"type": "logs"|"stats"|"histogram", "data": ...}`` in
``json.dumps``'s default spacing, no ``id:``. Differences from DECNET, both in its favour here: the first
stats and histogram go out when the stream opens (as lurestream sends them; DECNET waits 10 polls), and
the aggregates run every 10 s even while rows arrive (one DECNET version re-reads them after every poll
that found rows).

``GET /bench/queries`` answers the queries sent so far, by kind (for the bench; not DECNET's).

    python bench/baselines/decnet_logs_app.py --port 8801   (env: LURESTREAM_JWT_SECRET, _MONGO_URI, _MONGO_DB)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lurestream.logsearch import SearchError, parse_search, parse_time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seed_app import authenticate  # noqa: E402  (the same auth as the seed baseline)

POLL_SECONDS = 1
POLL_LIMIT = 50
STATS_INTERVAL = 10  # polls between the aggregates
HISTOGRAM_MINUTES = 15
app = FastAPI()
state: dict[str, Any] = {}
queries = {"max_id": 0, "poll": 0, "stats": 0, "histogram": 0}


@app.on_event("startup")
async def startup() -> None:
    client = AsyncMongoClient(os.environ.get("LURESTREAM_MONGO_URI", "mongodb://127.0.0.1:27017"))
    state["db"] = client[os.environ.get("LURESTREAM_MONGO_DB", "decnet")]


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": doc.get("_id")}
    row.update((k, v.isoformat() if isinstance(v, datetime) else v) for k, v in doc.items() if k != "_id")
    return row


async def get_max_log_id() -> int:
    queries["max_id"] += 1
    docs = await state["db"].logs.find({"_id": {"$gte": 0}}, {"_id": 1}).sort("_id", DESCENDING).limit(1).to_list(1)
    return int(docs[0]["_id"]) if docs else 0


async def get_logs_after_id(last_id: int, where: dict[str, Any]) -> list[dict[str, Any]]:
    queries["poll"] += 1
    query = {"$and": [{"_id": {"$gt": last_id}}, where]} if where else {"_id": {"$gt": last_id}}
    cursor = state["db"].logs.find(query).sort("_id", ASCENDING).limit(POLL_LIMIT)
    return [_row(doc) for doc in await cursor.to_list(POLL_LIMIT)]


async def get_stats_summary() -> dict[str, int]:
    queries["stats"] += 1
    db = state["db"]
    total = await db.logs.count_documents({})  # DECNET: SELECT count(*) FROM logs
    distinct = await (await db.logs.aggregate([{"$group": {"_id": "$attacker_ip"}}, {"$count": "n"}])).to_list(1)
    running = await db.deckies.count_documents({"state": "running"})
    deployed = await db.deckies.count_documents({})
    return {
        "total_logs": total,
        "unique_attackers": distinct[0]["n"] if distinct else 0,
        "active_deckies": running,
        "deployed_deckies": deployed,
    }


async def get_log_histogram(log_filter: Any) -> list[dict[str, Any]]:
    queries["histogram"] += 1
    docs = await state["db"].logs.find(log_filter.to_mongo(), {"timestamp": 1}).to_list(None)
    width = timedelta(minutes=HISTOGRAM_MINUTES)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    counts: dict[datetime, int] = {}
    for doc in docs:
        when = doc.get("timestamp")
        if not isinstance(when, datetime):
            continue
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        start = epoch + ((when - epoch) // width) * width
        counts[start] = counts.get(start, 0) + 1
    return [{"time": start.isoformat(), "count": n} for start, n in sorted(counts.items())]


def frame(kind: str, data: Any) -> str:
    return f"event: message\ndata: {json.dumps({'type': kind, 'data': data})}\n\n"


@app.get("/bench/queries")
async def bench_queries() -> JSONResponse:
    return JSONResponse(queries)


@app.get("/api/v1/stream")
async def stream_events(
    request: Request,
    token: str = "",
    search: str | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
    lastEventId: int = 0,  # noqa: N803 (DECNET's name)
) -> StreamingResponse:
    await authenticate(state["db"], token)
    try:
        log_filter = parse_search(
            search or "",
            start=parse_time(start_time) if start_time else None,
            end=parse_time(end_time) if end_time else None,
        )
    except SearchError as exc:
        raise HTTPException(400, str(exc)) from None
    where = log_filter.to_mongo()

    async def event_generator():
        last_id = lastEventId
        loops_since_stats = STATS_INTERVAL  # the first aggregates at once (see the module docstring)
        yield ": keepalive\n\n"
        if last_id == 0:
            last_id = await get_max_log_id()
        while True:
            if await request.is_disconnected():
                break
            new_logs = await get_logs_after_id(last_id, where)
            if new_logs:
                last_id = max(entry["id"] for entry in new_logs)
                yield frame("logs", new_logs)
            if loops_since_stats >= STATS_INTERVAL:
                yield frame("stats", await get_stats_summary())
                yield frame("histogram", await get_log_histogram(log_filter))
                loops_since_stats = 0
            loops_since_stats += 1
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(event_generator(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8801)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)
