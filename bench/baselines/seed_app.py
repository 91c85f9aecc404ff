"""The seed's design, re-created for comparison (bench only): FastAPI + uvicorn, and for every SSE
connection three NATS subscriptions of its own whose callbacks decode and filter every message by
payload — the shape DECNET's original stream endpoint has. Auth, the 404 check and the snapshot
query are done as lurestream does them (same JWT, same MongoDB documents), so the comparison is of
the streaming design, not of skipped work.

    python bench/baselines/seed_app.py --port 8800   (env: LURESTREAM_JWT_SECRET, _NATS_URL, _MONGO_URI, _MONGO_DB)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import jwt
import nats
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pymongo import AsyncMongoClient

SECRET = os.environ["LURESTREAM_JWT_SECRET"]
app = FastAPI()
state: dict = {}


@app.on_event("startup")
async def startup() -> None:
    state["nc"] = await nats.connect(os.environ.get("LURESTREAM_NATS_URL", "nats://127.0.0.1:4222"))
    client = AsyncMongoClient(os.environ.get("LURESTREAM_MONGO_URI", "mongodb://127.0.0.1:27017"))
    state["db"] = client[os.environ.get("LURESTREAM_MONGO_DB", "decnet")]


async def authenticate(db: Any, token: str) -> dict:
    """The JWT, the user and the revocation look-ups as lurestream does them (also the DECNET log baseline's)."""
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="decnet-dashboard", issuer="decnet")
    except jwt.PyJWTError:
        raise HTTPException(401, "Could not validate credentials") from None
    user = await db.users.find_one({"_id": claims["uuid"]})
    if user is None or await db.revoked_tokens.find_one({"_id": claims["jti"]}):
        raise HTTPException(401, "Could not validate credentials")
    return user


@app.get("/api/v1/attackers/{attacker_uuid}/events")
async def attacker_events(attacker_uuid: str, request: Request, token: str = "") -> StreamingResponse:
    await authenticate(state["db"], token)
    attacker = await state["db"].attackers.find_one({"_id": attacker_uuid})
    if attacker is None:
        raise HTTPException(404, "Attacker not found")
    observations = await state["db"].observations.find({"attacker_uuid": attacker_uuid}).to_list(None)
    for o in observations:
        o.pop("_id", None)
    queue: asyncio.Queue = asyncio.Queue(maxsize=256)
    nc = state["nc"]

    async def on_message(msg) -> None:  # every connection decodes and filters every message
        body = json.loads(msg.data)
        payload = body.get("payload", {})
        if payload.get("attacker_uuid") == attacker_uuid or payload.get("attacker_ip") == attacker.get("ip"):
            event = "observation" if msg.subject.startswith("attacker.observation.") else msg.subject
            try:
                queue.put_nowait(f"event: {event}\ndata: {json.dumps(body)}\n\n")
            except asyncio.QueueFull:
                pass

    subs = [await nc.subscribe(s, cb=on_message) for s in ("attacker.>", "attribution.>", "decky.>")]

    async def stream():
        try:
            yield ": keepalive\n\n"
            snapshot = {"attacker_uuid": attacker_uuid, "observations": observations}
            yield f"event: snapshot\ndata: {json.dumps(snapshot, default=str)}\n\n"
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), 15)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
        finally:
            for sub in subs:
                await sub.unsubscribe()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8800)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)
