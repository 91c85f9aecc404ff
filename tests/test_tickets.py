"""Stream tickets: minted with a Bearer JWT, hashed at rest, single use, redeemable on any process (protocol §5.3)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest
from harness import ADMIN, ATTACKER_A, VIEWER
from processes import ServerProcess
from sse_client import SSEClient

A = ATTACKER_A["_id"]
STREAM = f"/api/v1/attackers/{A}/events"


@pytest.mark.gen_test
async def test_mint_shape_and_hashed_at_rest(ls):
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=ls.token(ADMIN))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == {"ticket", "expires_in"}
    assert body["expires_in"] == 60
    ticket = body["ticket"]
    assert len(ticket) == 43 and all(c.isalnum() or c in "-_" for c in ticket)
    docs = list(ls.db.sse_tickets.find())
    assert len(docs) == 1
    doc = docs[0]
    assert doc["_id"] == hashlib.sha256(ticket.encode()).hexdigest()
    assert doc["uuid"] == ADMIN and doc["role"] == "admin"
    assert ticket not in json.dumps(doc, default=str)
    expires = doc["expires_at"]
    if isinstance(expires, str):  # nx-27017 may hand dates back as strings
        expires = datetime.fromisoformat(expires)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    assert 50 < (expires - datetime.now(timezone.utc)).total_seconds() <= 61


@pytest.mark.gen_test
@pytest.mark.lurestream(ticket_ttl_seconds=5)
async def test_ttl_setting_is_reported(ls):
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=ls.token())
    assert json.loads(response.body)["expires_in"] == 5


@pytest.mark.gen_test
async def test_ticket_is_single_use(ls):
    ticket = await ls.ticket()
    client = await ls.open(STREAM, query={"ticket": ticket})
    await client.start_stream()
    again = await ls.open(STREAM, query={"ticket": ticket})
    assert again.status == 401
    assert again.headers["www-authenticate"] == "Bearer"
    assert await again.json() == {"detail": "Invalid or expired ticket"}
    unknown = await ls.open(STREAM, query={"ticket": "x" * 43})
    assert unknown.status == 401


@pytest.mark.gen_test
async def test_ticket_only_from_bearer_header_and_not_a_credential_for_minting(ls):
    # ?token= does not mint
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket?token=" + ls.token())
    assert response.code == 401
    # a ticket cannot mint another ticket
    ticket = await ls.ticket()
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket?ticket=" + ticket)
    assert response.code == 401


@pytest.mark.gen_test
async def test_ticket_checked_before_query_token(ls):
    """protocol §5.1 order: a bad ticket is a 401 even when a good ?token= is also present."""
    client = await ls.open(STREAM, query={"ticket": "bogus", "token": ls.token()})
    assert client.status == 401


@pytest.mark.gen_test
async def test_ticket_counts_against_cap_of_its_user(ls):
    ticket = await ls.ticket(VIEWER)
    client = await ls.open(STREAM, query={"ticket": ticket})
    await client.start_stream()
    assert ls.services.limiter.held(VIEWER) == 1


@pytest.mark.gen_test
async def test_ticket_minted_here_is_redeemed_by_a_second_process(ls, tmp_path, mongo_service, nats_service):
    other = ServerProcess(
        str(tmp_path / "second.log"),
        nats_url=nats_service.url,
        mongo_uri=mongo_service.url,
        mongo_db=ls.config.mongo_db,
        jwt_secret=ls.config.jwt_secret,
    ).start()
    try:
        ticket = await ls.ticket()
        client = await SSEClient.open(other.port, f"{STREAM}?ticket={ticket}")
        try:
            snapshot = await client.start_stream()
            assert snapshot.json()["attacker_uuid"] == A
            await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "via": "second process"})
            frame = await client.next_event()
            assert frame.json()["payload"]["via"] == "second process"
        finally:
            client.close()
        # and it is used up for this process too
        again = await ls.open(STREAM, query={"ticket": ticket})
        assert again.status == 401
    finally:
        assert other.stop() == 0
