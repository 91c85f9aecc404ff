"""Auth, the role gate, the cap and their order, all before the 200 (protocol §2, §5)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import ADMIN, ATTACKER_A, AUDITOR, MUST_CHANGE, SECOND_VIEWER, SECRET, VIEWER

A = ATTACKER_A["_id"]
STREAM = f"/api/v1/attackers/{A}/events"
BAD = {"detail": "Could not validate credentials"}


def claims(**overrides):
    now = int(time.time())
    base = {
        "uuid": VIEWER,
        "iss": "decnet",
        "aud": "decnet-dashboard",
        "typ": "access",
        "iat": now,
        "exp": now + 600,
        "jti": "jti-" + str(now),
    }
    for k, v in overrides.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


def _ec_token():
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims(), key, algorithm="ES256")


BAD_TOKENS = {
    "garbage": lambda: "not-a-jwt",
    "three-garbage-parts": lambda: "eyJhbGciOi.JIUzI1NiJ9.xxx",
    "expired": lambda: jwt.encode(claims(exp=int(time.time()) - 10, iat=int(time.time()) - 100), SECRET),
    "wrong-iss": lambda: jwt.encode(claims(iss="someone-else"), SECRET),
    "wrong-aud": lambda: jwt.encode(claims(aud="other-app"), SECRET),
    "wrong-typ": lambda: jwt.encode(claims(typ="refresh"), SECRET),
    "missing-typ": lambda: jwt.encode(claims(typ=None), SECRET),
    "missing-jti": lambda: jwt.encode(claims(jti=None), SECRET),
    "missing-iat": lambda: jwt.encode(claims(iat=None), SECRET),
    "missing-exp": lambda: jwt.encode(claims(exp=None), SECRET),
    "missing-uuid": lambda: jwt.encode(claims(uuid=None), SECRET),
    "non-string-uuid": lambda: jwt.encode(claims(uuid=12345), SECRET),
    "wrong-key": lambda: jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789"),
    "alg-none": lambda: jwt.encode(claims(), None, algorithm="none"),
    "alg-hs512-not-configured": lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
    "alg-es256-not-configured": _ec_token,
    "unknown-user": lambda: jwt.encode(claims(uuid="99999999-9999-4999-8999-999999999999"), SECRET),
}


async def assert_401(response_or_client, body=BAD):
    if hasattr(response_or_client, "code"):
        assert response_or_client.code == 401
        assert response_or_client.headers["WWW-Authenticate"] == "Bearer"
        assert response_or_client.headers["Content-Type"].startswith("application/json")
        assert json.loads(response_or_client.body) == body
    else:
        assert response_or_client.status == 401
        assert response_or_client.headers["www-authenticate"] == "Bearer"
        assert await response_or_client.json() == body


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_kinds_are_401_on_query_and_header(ls, kind):
    token = BAD_TOKENS[kind]()
    await assert_401(await ls.open(STREAM, token=token))
    await assert_401(await ls.fetch("GET", STREAM, bearer=token))
    await assert_401(await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=token))


@pytest.mark.gen_test
async def test_revoked_jti_is_401(ls):
    token = ls.token(jti="revoked-jti-1")
    ls.db.revoked_tokens.insert_one({"_id": "revoked-jti-1", "expires_at": datetime.now(timezone.utc)})
    await assert_401(await ls.open(STREAM, token=token))


@pytest.mark.gen_test(timeout=60)
async def test_a_storm_of_different_users_is_checked_with_a_few_batched_look_ups(ls):
    """40 users connecting together (one with a revoked token, one unknown): their user and revocation
    look-ups go to the store as a few $in queries, not one per user, and each still gets its own verdict."""
    users = [f"99999999-0000-4000-8000-{n:012d}" for n in range(40)]
    ls.db.users.insert_many([{"_id": u, "role": "viewer", "must_change_password": False} for u in users])
    ls.db.revoked_tokens.insert_one({"_id": "storm-jti-3", "expires_at": datetime.now(timezone.utc)})
    tokens = [ls.token(u, jti=f"storm-jti-{n}") for n, u in enumerate(users)]
    tokens.append(ls.token("99999999-0000-4000-8000-999999999999", jti="storm-jti-unknown-user"))
    clients = await asyncio.gather(*(ls.open(STREAM, token=t) for t in tokens))
    codes = [c.status for c in clients]
    assert codes[3] == 401 and codes[-1] == 401, codes
    assert codes[:3] + codes[4:-1] == [200] * 39, codes
    auth = ls.services.auth
    assert auth.user_reads.queries <= 10, f"{auth.user_reads.queries} user queries for 41 users"
    assert auth.revocation_reads.queries <= 10, f"{auth.revocation_reads.queries} revocation queries for 40 jtis"


@pytest.mark.gen_test
async def test_token_issued_before_tokens_valid_from_is_401(ls):
    now = time.time()
    ls.db.users.update_one({"_id": VIEWER}, {"$set": {"tokens_valid_from": datetime.fromtimestamp(now, timezone.utc)}})
    await assert_401(await ls.open(STREAM, token=ls.token(iat=int(now) - 60)))
    # iat equal to floor(tokens_valid_from) is still valid
    client = await ls.open(STREAM, token=ls.token(iat=int(now)))
    await client.start_stream()


@pytest.mark.gen_test
async def test_no_credentials_is_401_not_authenticated(ls):
    await assert_401(await ls.open(STREAM), {"detail": "Not authenticated"})
    await assert_401(await ls.fetch("POST", "/api/v1/auth/sse-ticket"), {"detail": "Not authenticated"})


@pytest.mark.gen_test
async def test_malformed_authorization_header_is_401(ls):
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", ls.token()):
        client = await ls.open(STREAM, headers={"Authorization": header})
        await assert_401(client)


@pytest.mark.gen_test
async def test_bearer_header_wins_over_query_token(ls):
    # a bad header is not rescued by a good query token
    client = await ls.open(STREAM, token=ls.token(), headers={"Authorization": "Bearer garbage"})
    await assert_401(client)
    client = await ls.open(STREAM, token="garbage", headers={"Authorization": f"Bearer {ls.token()}"})
    await client.start_stream()


@pytest.mark.gen_test
async def test_must_change_password_is_403(ls):
    client = await ls.open(STREAM, token=ls.token(MUST_CHANGE))
    assert client.status == 403
    assert await client.json() == {"detail": "Password change required before accessing this resource"}


@pytest.mark.gen_test
async def test_role_not_allowed_is_403_and_admin_is_allowed(ls):
    client = await ls.open(STREAM, token=ls.token(AUDITOR))
    assert client.status == 403
    assert await client.json() == {"detail": "Insufficient permissions"}
    response = await ls.fetch("POST", "/api/v1/auth/sse-ticket", bearer=ls.token(AUDITOR))
    assert response.code == 403
    admin = await ls.open(STREAM, token=ls.token(ADMIN))
    await admin.start_stream()


@pytest.mark.gen_test
async def test_unknown_ids_are_404_for_authorised_callers_only(ls):
    for path, detail in (
        ("/api/v1/attackers/nope/events", "Attacker not found"),
        ("/api/v1/topologies/nope/events", "Topology not found"),
    ):
        client = await ls.open(path, token=ls.token())
        assert client.status == 404
        assert client.headers["content-type"].startswith("application/json")
        assert await client.json() == {"detail": detail}
        # no credentials, bad credentials, forbidden role: never a 404
        await assert_401(await ls.open(path), {"detail": "Not authenticated"})
        await assert_401(await ls.open(path, token="garbage"))
        forbidden = await ls.open(path, token=ls.token(AUDITOR))
        assert forbidden.status == 403


@pytest.mark.gen_test
@pytest.mark.lurestream(sse_max_per_user=2)
async def test_cap_is_a_real_429_before_any_stream_byte(ls):
    first = await ls.attacker(A)
    second = await ls.topology("topo-1")  # the cap spans both stream kinds
    third = await ls.open(STREAM, token=ls.token())
    assert third.status == 429
    assert third.headers["content-type"].startswith("application/json")
    assert await third.json() == {"detail": "SSE connection limit (2) reached"}
    # another user is not affected
    other = await ls.attacker(A, user=SECOND_VIEWER)
    assert other.status == 200
    # order: auth before 404 before 429
    assert (await ls.open("/api/v1/attackers/nope/events", token=ls.token())).status == 404
    await assert_401(await ls.open(STREAM, token="garbage"))
    # release on disconnect, then a new stream fits
    first.close()
    await ls.wait_for(lambda: ls.services.limiter.held(VIEWER) == 1, what="slot released")
    fourth = await ls.attacker(A)
    assert fourth.status == 200
    second.close()


@pytest.mark.gen_test
@pytest.mark.lurestream(allow_query_token=False)
async def test_query_token_can_be_disabled(ls):
    await assert_401(await ls.open(STREAM, token=ls.token()), {"detail": "Not authenticated"})
    client = await ls.open(STREAM, headers={"Authorization": f"Bearer {ls.token()}"})
    await client.start_stream()


@pytest.mark.gen_test
@pytest.mark.lurestream(jwt_algorithms="HS256,HS512")
async def test_configured_algorithms_are_accepted(ls):
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    client = await ls.open(STREAM, token=token)
    await client.start_stream()


@pytest.fixture
def ec_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "pub.pem"
    path.write_bytes(pem)
    return key, str(path)


def test_public_key_algorithms(ec_key, mongo_service, nats_service, io_loop, mongo, db_name):
    """RS/ES tokens verify against LURESTREAM_JWT_PUBLIC_KEY_FILE; HS tokens are then refused."""
    from lurestream.auth import Authenticator, AuthError
    from lurestream.config import config_from
    from lurestream.store.mongo import MongoStore

    key, path = ec_key
    config = config_from(
        {"jwt_algorithms": "ES256", "jwt_public_key_file": path, "mongo_uri": mongo_service.url, "mongo_db": db_name}
    )
    store = MongoStore(config.mongo_uri, config.mongo_db)
    auth = Authenticator(config, store)
    good = jwt.encode(claims(), key, algorithm="ES256")
    identity = io_loop.run_sync(lambda: auth.authenticate_token(good))
    assert identity.uuid == VIEWER and identity.role == "viewer"
    hs = jwt.encode(claims(), "x" * 40, algorithm="HS256")
    with pytest.raises(AuthError) as err:
        io_loop.run_sync(lambda: auth.authenticate_token(hs))
    assert err.value.status == 401
    io_loop.run_sync(store.close)


@pytest.mark.gen_test
async def test_expired_ticket_and_role_rebinding(ls):
    from lurestream.auth import hash_ticket

    ls.db.sse_tickets.insert_one(
        {
            "_id": hash_ticket("expired-ticket"),
            "uuid": VIEWER,
            "role": "viewer",
            "expires_at": datetime.now(timezone.utc) - timedelta(seconds=1),
        }
    )
    client = await ls.open(STREAM, query={"ticket": "expired-ticket"})
    await assert_401(client, {"detail": "Invalid or expired ticket"})
    assert ls.db.sse_tickets.count_documents({}) == 0, "a failed redemption still uses the ticket up"
    ls.db.sse_tickets.insert_one(
        {
            "_id": hash_ticket("auditor-ticket"),
            "uuid": AUDITOR,
            "role": "auditor",
            "expires_at": datetime.now(timezone.utc) + timedelta(seconds=60),
        }
    )
    client = await ls.open(STREAM, query={"ticket": "auditor-ticket"})
    assert client.status == 403
    assert await client.json() == {"detail": "Insufficient permissions"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(auth_cache_seconds=0.5)
async def test_revocation_takes_effect_within_the_auth_cache_lifetime(ls):
    token = ls.token()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    first = await ls.open(f"/api/v1/attackers/{ATTACKER_A['_id']}/events", token=token)
    assert first.status == 200
    first.close()
    ls.db.revoked_tokens.insert_one({"_id": jti})
    await asyncio.sleep(0.6)  # on purpose: past the 0.5 s the look-up is cached (longer only helps)
    again = await ls.open(f"/api/v1/attackers/{ATTACKER_A['_id']}/events", token=token)
    assert again.status == 401, "refused once the cached look-up expired"


@pytest.mark.gen_test(timeout=30)
async def test_a_remembered_token_still_expires_on_time(ls):
    token, exp = ls.expiring_token(1)  # `ttl=1.5` was whole seconds: valid for anything from 0 to 1 s
    first = await ls.open(f"/api/v1/attackers/{ATTACKER_A['_id']}/events", token=token)
    assert first.status == 200
    first.close()
    await asyncio.sleep(exp - time.time() + 0.1)  # on purpose: until the token has expired
    again = await ls.open(f"/api/v1/attackers/{ATTACKER_A['_id']}/events", token=token)
    assert again.status == 401, "verified once, but expired now: refused"
