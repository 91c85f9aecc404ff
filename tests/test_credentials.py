"""Credentials for the whole life of a stream, and browser sessions (protocol §12).

A stream ends with ``event: end`` / ``{"reason": ...}`` and no ``retry:`` hint when its credential's
``exp`` passes (``expired``), when its jti is revoked, its user's ``tokens_valid_from`` moves past it or the
user is deleted (``revoked``), or when the user may no longer stream (``forbidden``) — whichever way it was
opened: Bearer/``?token=``, a ticket, or a session cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from harness import ADMIN, ATTACKER_A, SECOND_VIEWER, VIEWER

A = ATTACKER_A["_id"]
STREAM = f"/api/v1/attackers/{A}/events"
SWEEP_SECONDS = 0.3
SWEEP = pytest.mark.lurestream(auth_sweep_seconds=SWEEP_SECONDS, auth_cache_seconds=0)


async def end_of(client, timeout: float = 10.0):
    """The stream's ``end`` frame, after which the response ends without a retry hint."""
    frame = await client.next_event(timeout)
    assert frame.event == "end", frame
    with pytest.raises(EOFError):
        while True:
            extra = await client.next_event(5)
            assert extra.retry is None, "no retry hint after an end"
    return frame.json()["reason"]


def disconnects(ls, reason: str) -> float:
    return ls.metric("lurestream_stream_disconnects_total", kind="attacker", reason=reason)


async def sweeps_until_ended(ls, user: str) -> int:
    """How many credential sweeps completed from now until every stream of ``user`` is ending: counted, not
    timed, so that a loaded machine cannot change it (and within 20 sweep periods at most)."""
    sweep = ls.services.writer.checks[0]
    before = sweep.passes
    await ls.wait_for(
        lambda: not [s for s in ls.services.writer.streams if s.user == user and not s.closing],
        20 * SWEEP_SECONDS,
        f"the streams of {user} to end",
    )
    return int(sweep.passes - before)


async def session_cookie(ls, token: str) -> str:
    response = await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=token)
    assert response.code == 204, response.body
    return response.headers["Set-Cookie"].split(";", 1)[0]


# -- expiry ------------------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=30)
async def test_a_stream_ends_when_its_token_expires(ls):
    token, exp = ls.expiring_token()
    client = await ls.open(STREAM, token=token)
    await client.start_stream()
    assert await end_of(client, 10) == "expired"
    assert time.time() >= exp, "not before exp"
    assert time.time() - exp < 6, "checked every second: within seconds of exp, not at the next keepalive (15 s)"
    await ls.wait_for(lambda: ls.services.limiter.held() == 0)
    assert disconnects(ls, "expired") == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_ticket_opened_stream_inherits_the_tokens_expiry(ls):
    token, exp = ls.expiring_token()
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)
    ticket = json.loads(response.body)["ticket"]
    doc = ls.db.sse_tickets.find_one()
    assert doc["jti"] and doc["exp"] == exp, "the ticket records the JWT"
    client = await ls.open(STREAM, query={"ticket": ticket})
    await client.start_stream()
    assert await end_of(client, 10) == "expired"


# -- revocation and roles, by the sweep ------------------------------------------------------------------
async def _opened_three_ways(ls, user: str, token: str):
    """The same credential used as ?token=, as a ticket and as a session cookie."""
    by_token = await ls.open(STREAM, token=token)
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)
    by_ticket = await ls.open(STREAM, query={"ticket": json.loads(response.body)["ticket"]})
    by_session = await ls.open(STREAM, headers={"Cookie": await session_cookie(ls, token)})
    clients = [by_token, by_ticket, by_session]
    for client in clients:
        await client.start_stream()
    return clients


@pytest.mark.gen_test(timeout=30)
@SWEEP
async def test_revoking_the_jti_ends_every_stream_it_opened(ls):
    import jwt

    token = ls.token()
    clients = await _opened_three_ways(ls, VIEWER, token)
    other = await ls.attacker(A, user=SECOND_VIEWER)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    ls.db.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc)})
    # the sweep under way may have read before the insert; the next one sees it
    assert await sweeps_until_ended(ls, VIEWER) <= 2, "ended by the first sweep after the revocation"
    assert [await end_of(c) for c in clients] == ["revoked"] * 3
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": 1})
    assert (await other.next_event()).json()["payload"]["n"] == 1, "another user's stream goes on"
    assert disconnects(ls, "revoked") == 3


@pytest.mark.gen_test(timeout=30)
@SWEEP
async def test_tokens_valid_from_or_a_deleted_user_revokes(ls):
    first = await ls.attacker(A, user=VIEWER)
    second = await ls.attacker(A, user=ADMIN)
    ls.db.users.update_one(
        {"_id": VIEWER}, {"$set": {"tokens_valid_from": datetime.now(timezone.utc) + timedelta(seconds=5)}}
    )
    ls.db.users.delete_one({"_id": ADMIN})
    assert await end_of(first) == "revoked"
    assert await end_of(second) == "revoked"


@pytest.mark.gen_test(timeout=30)
@SWEEP
async def test_a_role_change_or_a_required_password_change_forbids(ls):
    first = await ls.attacker(A, user=VIEWER)
    response = await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=ls.token(SECOND_VIEWER))
    by_session = await ls.open(STREAM, headers={"Cookie": response.headers["Set-Cookie"].split(";", 1)[0]})
    await by_session.start_stream()
    ls.db.users.update_one({"_id": VIEWER}, {"$set": {"role": "guest"}})
    ls.db.users.update_one({"_id": SECOND_VIEWER}, {"$set": {"must_change_password": True}})
    assert await end_of(first) == "forbidden"
    assert await end_of(by_session) == "forbidden"
    assert disconnects(ls, "forbidden") == 2


@pytest.mark.gen_test(timeout=60)
@SWEEP
@pytest.mark.lurestream(sse_max_per_user=50)
async def test_the_sweeps_queries_do_not_grow_with_the_number_of_streams(ls):
    sweep = ls.services.writer.checks[0]

    async def queries_per_pass(streams: int) -> float:
        clients = [await ls.attacker(A, user=VIEWER) for _ in range(streams)]
        passes, queries = sweep.passes, sweep.queries
        await ls.wait_for(lambda: sweep.passes >= passes + 3, 10, "three sweeps")
        per_pass = (sweep.queries - queries) / (sweep.passes - passes)
        for client in clients:
            client.close()
        await ls.wait_for(lambda: ls.services.limiter.held() == 0)
        return per_pass

    few, many = await queries_per_pass(2), await queries_per_pass(30)
    assert few == many == 2, "one users query and one revocations query per pass, whatever the count"


# -- sessions ---------------------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=30)
async def test_a_session_cookie_is_httponly_strict_scoped_and_stored_hashed(ls):
    token = ls.token(ttl=1800)
    response = await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=token)
    assert response.code == 204 and response.body == b""
    value, *attributes = [part.strip() for part in response.headers["Set-Cookie"].split(";")]
    name, _, secret = value.partition("=")
    assert name == "lurestream_session" and len(secret) == 43
    lowered = {a.split("=")[0].lower(): (a.split("=", 1)[1] if "=" in a else True) for a in attributes}
    assert lowered["httponly"] is True and lowered["secure"] is True
    assert lowered["samesite"] == "Strict" and lowered["path"] == "/api/v1/"
    assert 1790 <= int(lowered["max-age"]) <= 1800, "until the JWT's exp"
    doc = ls.db.sse_sessions.find_one()
    assert doc["_id"] == hashlib.sha256(secret.encode()).hexdigest() and secret not in json.dumps(doc, default=str)
    assert doc["uuid"] == VIEWER and doc["jti"]
    for _ in range(3):  # many connects, unlike a ticket
        client = await ls.open(STREAM, headers={"Cookie": value})
        await client.start_stream()
        client.close()
    listing = await ls.fetch("GET", "/api/v1/attackers", headers={"Cookie": value})
    assert listing.code == 200, "the picker lists take the session too"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(session_max_seconds=600, cookie_secure=False)
async def test_session_lifetime_is_capped_and_secure_can_be_turned_off(ls):
    response = await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=ls.token(ttl=7200))
    cookie = response.headers["Set-Cookie"]
    assert "Max-Age=600" in cookie and "Secure" not in cookie


@pytest.mark.gen_test(timeout=30)
async def test_a_session_authorises_only_streams_and_lists(ls):
    cookie = await session_cookie(ls, ls.token())
    for method, path in (("POST", "/api/v1/auth/sse-ticket"), ("POST", "/api/v1/auth/sse-session")):
        response = await ls.fetch(method, path, headers={"Cookie": cookie})
        assert response.code == 401, (path, response.code)
    assert ls.db.sse_tickets.count_documents({}) == 0 and ls.db.sse_sessions.count_documents({}) == 1


@pytest.mark.gen_test(timeout=30)
async def test_delete_ends_the_session_and_clears_the_cookie(ls):
    cookie = await session_cookie(ls, ls.token())
    response = await ls.fetch("DELETE", "/api/v1/auth/sse-session", headers={"Cookie": cookie})
    assert response.code == 204
    cleared = response.headers["Set-Cookie"]
    assert cleared.startswith('lurestream_session="";') and "Path=/api/v1/" in cleared
    assert f" {time.gmtime().tm_year - 1} " in cleared.split("expires=")[1], f"an expiry in the past: {cleared}"
    assert ls.db.sse_sessions.count_documents({}) == 0
    refused = await ls.fetch("GET", STREAM, headers={"Cookie": cookie})
    assert refused.code == 401 and json.loads(refused.body) == {"detail": "Invalid or expired session"}
    assert (await ls.fetch("DELETE", "/api/v1/auth/sse-session")).code == 204, "idempotent, without a cookie too"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(auth_cache_seconds=0)
async def test_a_session_of_a_revoked_or_expired_jwt_is_refused(ls):
    import jwt

    token = ls.token()
    cookie = await session_cookie(ls, token)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    ls.db.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc)})
    assert (await ls.fetch("GET", STREAM, headers={"Cookie": cookie})).code == 401
    token, exp = ls.expiring_token()
    short = await session_cookie(ls, token)
    await asyncio.sleep(exp - time.time() + 0.1)  # on purpose: until the JWT has expired
    response = await ls.fetch("GET", STREAM, headers={"Cookie": short})
    assert response.code == 401 and json.loads(response.body)["detail"] == "Invalid or expired session"


@pytest.mark.gen_test(timeout=30)
async def test_a_session_opened_stream_ends_when_the_session_expires(ls):
    cookie = await session_cookie(ls, ls.expiring_token()[0])
    client = await ls.open(STREAM, headers={"Cookie": cookie})
    await client.start_stream()
    assert await end_of(client, 10) == "expired"


@pytest.mark.gen_test(timeout=30)
async def test_credential_order_bearer_ticket_session_query_token(ls):
    cookie = await session_cookie(ls, ls.token(SECOND_VIEWER))
    # a bad Bearer header alone decides, whatever else is sent
    response = await ls.fetch(
        "GET", STREAM + f"?token={ls.token()}", headers={"Cookie": cookie, "Authorization": "Bearer x"}
    )
    assert response.code == 401
    # a bad ticket beats a good session; a good session beats a bad ?token=
    response = await ls.fetch("GET", STREAM + "?ticket=nope", headers={"Cookie": cookie})
    assert response.code == 401 and json.loads(response.body)["detail"] == "Invalid or expired ticket"
    client = await ls.open(STREAM, query={"token": "garbage"}, headers={"Cookie": cookie})
    await client.start_stream()
    assert ls.services.limiter.held(SECOND_VIEWER) == 1, "the session's user holds the slot"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(mint_rate="2/60s")
async def test_sessions_count_against_the_mint_rate(ls):
    token = ls.token()
    assert (await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)).code == 200
    assert (await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=token)).code == 204
    refused = await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=token)
    assert refused.code == 429 and "Retry-After" in refused.headers


@pytest.mark.gen_test(timeout=30)
@SWEEP
async def test_signing_out_a_session_ends_every_stream_it_opened(ls):
    """DELETE in one tab ends the session's streams in the others (they would go on until a reconnect)."""
    cookie = await session_cookie(ls, ls.token())
    tabs = [await ls.open(STREAM, headers={"Cookie": cookie}) for _ in range(2)]
    for tab in tabs:
        await tab.start_stream()
    other = await ls.open(STREAM, headers={"Cookie": await session_cookie(ls, ls.token())})
    await other.start_stream()
    assert (await ls.fetch("DELETE", "/api/v1/auth/sse-session", headers={"Cookie": cookie})).code == 204
    assert [await end_of(tab) for tab in tabs] == ["revoked", "revoked"]
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "n": 1})
    assert (await other.next_event()).json()["payload"]["n"] == 1, "another session of the same user goes on"


# -- protocol §16: a ticket never outlives its credential; an ended credential is refused at once --------------
def _jti(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(auth_cache_seconds=0)  # the check itself; cached look-ups are ≤ AUTH_CACHE_SECONDS old
@pytest.mark.parametrize("change", ["revoked", "deleted", "demoted", "password", "tokens_valid_from"])
async def test_a_ticket_is_refused_once_its_credential_no_longer_holds(ls, change):
    """A ticket opened a stream 55 s after its jti was revoked and its user deleted (role and password
    checks skipped too): redeeming it skipped every check a JWT gets."""
    token = ls.token()
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)
    ticket = json.loads(response.body)["ticket"]
    if change == "revoked":
        ls.db.revoked_tokens.insert_one({"_id": _jti(token), "expires_at": datetime.now(timezone.utc)})
    elif change == "deleted":
        ls.db.users.delete_one({"_id": VIEWER})
    elif change == "demoted":
        ls.db.users.update_one({"_id": VIEWER}, {"$set": {"role": "guest"}})
    elif change == "password":
        ls.db.users.update_one({"_id": VIEWER}, {"$set": {"must_change_password": True}})
    else:
        later = datetime.now(timezone.utc) + timedelta(seconds=5)
        ls.db.users.update_one({"_id": VIEWER}, {"$set": {"tokens_valid_from": later}})
    refused = await ls.open(STREAM, query={"ticket": ticket})
    expected = 403 if change in ("demoted", "password") else 401
    assert refused.status == expected, (change, refused.status)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(auth_cache_seconds=10)
async def test_a_revoked_jwt_mints_nothing_inside_the_auth_cache(ls):
    """The revocation was cached for 10 s: a revoked JWT minted 3 more tickets meanwhile."""
    token = ls.token()
    client = await ls.open(STREAM, token=token)  # caches the user and "not revoked"
    await client.start_stream()
    ls.db.revoked_tokens.insert_one({"_id": _jti(token), "expires_at": datetime.now(timezone.utc)})
    ticket = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token)
    session = await ls.fetch("POST", "/api/v1/auth/sse-session", bearer=token)
    assert (ticket.code, session.code) == (401, 401)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(auth_sweep_seconds=0.3, auth_cache_seconds=10)
async def test_once_a_stream_ended_for_a_credential_the_process_refuses_it_at_once(ls):
    """Right after `event: end` `revoked`, the same credential opened a new stream on that process (its
    cached 'not revoked' had seconds to live)."""
    token = ls.token()
    client = await ls.open(STREAM, token=token)
    await client.start_stream()
    ls.db.revoked_tokens.insert_one({"_id": _jti(token), "expires_at": datetime.now(timezone.utc)})
    assert await end_of(client) == "revoked"
    again = await ls.open(STREAM, token=token)
    assert again.status == 401
    demoted = await ls.attacker(A, user=SECOND_VIEWER)
    ls.db.users.update_one({"_id": SECOND_VIEWER}, {"$set": {"role": "guest"}})
    assert await end_of(demoted) == "forbidden"
    assert (await ls.open(STREAM, token=ls.token(SECOND_VIEWER))).status == 403


@pytest.mark.gen_test(timeout=30)
async def test_a_ticket_that_is_not_utf8_never_reaches_the_log(ls, caplog):
    """`?ticket=<43 characters>%ff` logged 40 of its 43 characters (Tornado's 400 quoted the value)."""
    ticket = await ls.ticket()
    refused = await ls.open(f"{STREAM}?ticket={ticket}%ff")
    assert refused.status == 400
    assert await refused.json() == {"detail": "Invalid unicode in ticket"}
    assert ticket[:8] not in caplog.text, caplog.text
