"""docs/operations.md, "NATS: credentials and permissions", run: a real nats-server started with the docs'
configuration (``nats-server -c``; only its port and store directory are the test's, see ``natsperms``) and
a real lurestream connecting through its ``LURESTREAM_NATS_*`` settings.

- lurestream, as its user, creates the stream and the cap bucket, consumes the stream (past the flow-control
  window), serves a resume from JetStream, counts the cap in the bucket and updates the stream as
  ``init-nats`` does — and nats-server refuses it nothing.
- DECNET's producer user publishes its families through JetStream, a decoy user ``decky.<its name>.>``; each
  is refused everything else: another decoy's subjects, the cap bucket (a forged count is refused and
  changes no admission), the JetStream API (deleting or purging the stream or the bucket), and reading
  lurestream's deliveries.
- The other forms: a token, TLS with a CA and client certificates, an NKey (skipped without ``nkeys``).
- ``init-nats`` connects with the credentials too, and the TLS settings refuse a server that offers no TLS
  (nats.py alone would send the password in the clear to a server, or a man in the middle, that does not
  ask for TLS).
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import nats.errors
import pytest
from harness import ATTACKER_A, SECOND_VIEWER, SECRET, TOPOLOGY_1, VIEWER, Harness, bus_up, envelope, standalone
from nats.js import api
from nats.js.kv import KeyValue
from natsperms import (
    BUCKET,
    DOCS_TLS_FILES,
    PASSWORDS,
    STREAM,
    Connection,
    NatsServer,
    Pki,
    connect_as,
    docs_block,
    environment_with,
    make_nkey,
    make_pki,
    render,
    server_environment,
)

from lurestream import natsclient
from lurestream.config import Config, config_from
from lurestream.jetstream import connect_once, ensure_stream
from lurestream.routing import SUBJECT_FAMILIES

A = ATTACKER_A["_id"]
PATH_A = f"/api/v1/attackers/{A}/events"
MAIN = "# /etc/nats/nats.conf: who may do what"
TLS = "# /etc/nats/nats.conf, continued: TLS"
TOKEN = "# /etc/nats/nats.conf, the token form"
NKEY = "    {nkey: "
TEST_TOKEN = "lurestream-test-token-0123456789"
REFUSED_WAIT = 0.5  # a refused request is dropped by the server: its client waits this long for nothing
EVENT_FAMILIES = [f[: -len(".>")] for f in SUBJECT_FAMILIES if f != "decky.>"]  # DECNET's, not the decoys'


# -- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture
def start_nats(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., NatsServer]]:
    """Start nats-server with a configuration (docs blocks), its passwords and token in its environment."""
    for variable, value in server_environment(TEST_TOKEN).items():
        monkeypatch.setenv(variable, value)
    started: list[NatsServer] = []

    def start(config: str, scheme: str = "nats") -> NatsServer:
        server = NatsServer.start(tmp_path / f"nats{len(started)}", config, scheme)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def nats_perm(start_nats: Callable[..., NatsServer]) -> NatsServer:
    """nats-server with the docs' configuration."""
    return start_nats(docs_block(MAIN))


@pytest.fixture
def connect(io_loop: Any) -> Iterator[Callable[..., Awaitable[Connection]]]:
    """``await connect(url, user, **options)``: a connection as one of the docs' users, closed after the test."""
    opened: list[Connection] = []

    async def open_one(url: str, user: str, **options: Any) -> Connection:
        conn = await connect_as(url, user, **options)
        opened.append(conn)
        return conn

    yield open_one

    async def close_all() -> None:
        for conn in opened:
            if not conn.nc.is_closed:
                await conn.close()

    io_loop.run_sync(close_all)


def lurestream_settings(**extra: Any) -> dict[str, Any]:
    """lurestream as the docs' ``lurestream`` user on the docs' stream and bucket; resumes always read
    JetStream (no replay memory), so they run the pull consumer the permissions must allow."""
    settings = dict(
        nats_user="lurestream",
        nats_password=PASSWORDS["lurestream"][1],
        jetstream=STREAM,
        cap_bucket=BUCKET,
        replay_memory=0,
    )
    settings.update(extra)
    return settings


async def wait_ready(ls: Harness, events: str = "ok", cap: str = "cluster", timeout: float = 15.0) -> dict[str, Any]:
    """``/readyz`` once it is 200 with these ``events`` and ``cap``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await ls.fetch("GET", "/readyz")
        body: dict[str, Any] = json.loads(response.body)
        if response.code == 200 and body.get("events") == events and body.get("cap") == cap:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"/readyz: {response.code} {body}"
        await asyncio.sleep(0.05)


def user_key(user: str) -> str:
    """How the cap bucket names a user in ``u.<process>.<user>`` (base64url, unpadded)."""
    return base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")


def bucket_as(conn: Connection) -> KeyValue:
    """The cap bucket as ``conn``'s user would use it (nats.py's own ``kv.put``/``kv.purge``), without the
    stream look-up ``js.key_value`` makes first (a publisher is refused that too)."""
    js = conn.nc.jetstream(timeout=REFUSED_WAIT)
    return KeyValue(name=BUCKET, stream=f"KV_{BUCKET}", pre=f"$KV.{BUCKET}.", js=js, direct=True)


def lurestream_config(url: str, **extra: Any) -> Config:
    return config_from(lurestream_settings(nats_url=url, jwt_secret=SECRET, **extra))


async def make_stream(url: str) -> None:
    """The stream, created as lurestream creates it (``init-nats``), with lurestream's credentials."""
    config = lurestream_config(url)
    nc = await connect_once(url, "test init-nats", config=config)
    try:
        await ensure_stream(nc.jetstream(), config)
    finally:
        await nc.close()


async def refused_publish(server: NatsServer, conn: Connection, subject: str, data: bytes = b"{}") -> None:
    """``conn`` publishes ``subject`` through JetStream (a request for the stream's ack) and is refused:
    no answer, nats.py reports the violation, nats-server logs it."""
    with pytest.raises(nats.errors.TimeoutError):
        await conn.nc.jetstream(timeout=REFUSED_WAIT).publish(subject, data)
    await conn.wait_refused("publish", subject)
    await server.wait_violation(conn.user, "Publish", subject)


async def refused_request(server: NatsServer, conn: Connection, subject: str) -> None:
    """A JetStream API request ``conn`` may not make: dropped (no answer), reported and logged."""
    with pytest.raises(nats.errors.TimeoutError):
        await conn.nc.request(subject, b"{}", timeout=REFUSED_WAIT)
    await conn.wait_refused("publish", subject)
    await server.wait_violation(conn.user, "Publish", subject)


async def stream_state(url: str, name: str = STREAM) -> api.StreamState:
    conn = await connect_as(url, "lurestream")
    try:
        return (await conn.nc.jetstream().stream_info(name)).state
    finally:
        await conn.close()


# -- lurestream under its permissions --------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_lurestream_runs_under_the_documented_permissions(nats_perm, connect, mongo_service, mongo, db_name):
    url = nats_perm.url
    async with standalone(url, mongo_service.url, db_name, mongo, lurestream_settings()) as ls:
        ready = await wait_ready(ls)
        assert ready["bus"] == "connected" and ready["status"] == "ready", ready
        state = await stream_state(url)  # lurestream created it: nobody else may
        assert state.messages == 0
        producer = await connect(url, "decnet")
        js = producer.nc.jetstream()

        client = await ls.attacker(A)
        ack = await js.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": A, "n": 0}))
        assert ack.stream == STREAM
        first = await client.next_event()
        assert first.id == ls.event_id(ack.seq) and first.json()["payload"]["n"] == 0, first
        client.close()
        await ls.wait_for(lambda: ls.hub.subscription_count == 0, what="the stream to close")

        for n in (1, 2, 3):  # missed: served from JetStream by a resume's pull consumer
            await js.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": A, "n": n}))
        again = await ls.open(PATH_A, token=ls.token(), headers={"Last-Event-ID": first.id or ""})
        assert again.status == 200 and (await again.next_frame()).is_keepalive
        resumed = await again.next_event()
        assert resumed.event == "resumed" and resumed.json() == {"last_event_id": first.id, "replayed": 3}, resumed
        assert [(await again.next_event()).json()["payload"]["n"] for _ in range(3)] == [1, 2, 3]
        again.close()

        decoy = await connect(url, "decky-web-01")
        payload = {"topology_id": TOPOLOGY_1["_id"], "decky": "web-01", "service": "http"}
        decky_ack = await decoy.nc.jetstream().publish(
            "decky.web-01.service_added", envelope("decky.web-01.service_added", payload)
        )
        assert decky_ack.stream == STREAM

        # ~6 MB: well past the ordered consumer's first flow-control window (about 2 MB), answered on $JS.FC
        pad = "x" * 100_000
        for _ in range(64):
            last = await js.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": "z", "pad": pad}))
        await ls.wait_for(lambda: (ls.hub.position or 0) >= last.seq, timeout=20, what=f"the consumer at {last.seq}")

        # the cap bucket's watch, past its flow-control window too: ~3 MB of entries the cap ignores, then a count
        own = await connect(url, "lurestream")
        kv = await own.nc.jetstream().key_value(BUCKET)
        for i in range(30):
            await kv.put(f"pad.{i}", bytes(100_000))
        await kv.put("p.elsewhere", str(time.time()).encode())
        await kv.put(f"u.elsewhere.{user_key(VIEWER)}", b"2")
        cap: Any = ls.services.limiter
        await ls.wait_for(lambda: cap.others(VIEWER) == 2, timeout=10, what="the cap to count the other process")

        # what `lurestream init-nats` does to an existing stream, as lurestream's user
        config = lurestream_config(url, jetstream_max_msgs=100_000)
        nc = await connect_once(url, "test init-nats", config=config)
        try:
            action, info = await ensure_stream(nc.jetstream(), config)
        finally:
            await nc.close()
        assert action == "updated" and info.config.max_msgs == 100_000

        # every periodic call has run by now: the stream's check (2 s), the cap's heartbeat, the write probe
        deadline = time.monotonic() + 15
        while nats_perm.streams().get(f"{STREAM}_probe", 0) < 1:
            assert time.monotonic() < deadline, f"no write probe stored: {nats_perm.streams()}"
            await asyncio.sleep(0.1)
        ready = await wait_ready(ls)  # still all fine, and nothing refused to anybody
        assert ready["status"] == "ready"
        for conn in (producer, decoy, own):
            assert conn.refusals() == [], conn.errors
    assert nats_perm.violations() == []


@pytest.mark.gen_test(timeout=60)
async def test_without_jetstream_lurestream_subscribes_to_its_families(
    nats_perm, connect, mongo_service, mongo, db_name
):
    """JetStream off (or the stream unusable): lurestream subscribes to the families themselves."""
    url = nats_perm.url
    settings = lurestream_settings(jetstream="")
    async with standalone(url, mongo_service.url, db_name, mongo, settings) as ls:
        await wait_ready(ls, events="off", cap="local")
        assert await bus_up(ls.hub, 10)
        client = await ls.attacker(A)
        producer = await connect(url, "decnet")
        await producer.nc.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": A, "n": 7}))
        assert (await client.next_event()).json()["payload"]["n"] == 7
    assert nats_perm.violations() == []


# -- publishers: their own subjects, nothing else ---------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    ("user", "allowed", "refused"),
    [
        ("decnet", [f"{family}.test" for family in EVENT_FAMILIES], ["decky.web-01.x", "decky.x"]),
        ("decky-web-01", ["decky.web-01.service_added"], ["decky.db-02.service_added", "decky.x", "attacker.x"]),
        ("decky-db-02", ["decky.db-02.service_added"], ["decky.web-01.service_added", "topology.topo-1"]),
        ("lurestream", [], [f"{family}.test" for family in EVENT_FAMILIES] + ["decky.web-01.x"]),
    ],
)
async def test_each_user_publishes_only_its_own_subjects(nats_perm, connect, user, allowed, refused):
    await make_stream(nats_perm.url)
    conn = await connect(nats_perm.url, user)
    js = conn.nc.jetstream()
    for subject in allowed:
        ack = await js.publish(subject, envelope(subject, {}))
        assert ack.stream == STREAM, subject
    await asyncio.gather(*(refused_publish(nats_perm, conn, subject, envelope(subject, {})) for subject in refused))
    state = await stream_state(nats_perm.url)
    assert state.messages == len(allowed), "only the allowed publishes were stored"


@pytest.mark.gen_test(timeout=60)
async def test_a_publisher_gets_its_acks_on_its_own_inbox_prefix_only(nats_perm, connect):
    """With nats.py's default inbox prefix a publisher's reply subscription (``_INBOX.<id>.*``) is refused:
    the stream stores its message, but its ack never comes (each retry a duplicate to dedupe)."""
    await make_stream(nats_perm.url)
    plain = await connect(nats_perm.url, "decnet", inbox_prefix="_INBOX")
    with pytest.raises(nats.errors.TimeoutError):
        await plain.nc.jetstream(timeout=REFUSED_WAIT).publish("attacker.scored", envelope("attacker.scored", {}))
    refusals = [r for r in plain.refusals() if 'for subscription to "_inbox.' in r.lower()]
    assert refusals, plain.errors
    assert (await stream_state(nats_perm.url)).messages == 1, "stored all the same"
    own = await connect(nats_perm.url, "decnet")  # inbox prefix _INBOX_decnet
    ack = await own.nc.jetstream().publish("attacker.scored", envelope("attacker.scored", {}))
    assert ack.seq == 2 and own.refusals() == []


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("forger", ["decnet", "decky-web-01"])
async def test_a_publishers_forged_cap_entry_is_refused(nats_perm, connect, mongo_service, mongo, db_name, forger):
    """A count for the viewer, under a made-up process with a fresh heartbeat, would hold the viewer at a cap
    of 1 on every process. Written by a publisher it is refused; the same entries written with lurestream's
    credentials (for another viewer) do count — so the refusal is what stops the forgery."""
    url = nats_perm.url
    async with standalone(url, mongo_service.url, db_name, mongo, lurestream_settings(sse_max_per_user=1)) as ls:
        await wait_ready(ls)
        cap: Any = ls.services.limiter
        bad = await connect(url, forger)
        forged = bucket_as(bad)
        for key, value in (("p.forged", str(time.time()).encode()), (f"u.forged.{user_key(VIEWER)}", b"1")):
            with pytest.raises(nats.errors.TimeoutError):
                await forged.put(key, value)
            await bad.wait_refused("publish", f"$KV.{BUCKET}.{key}")
            await nats_perm.wait_violation(forger, "Publish", f"$KV.{BUCKET}.{key}")
        with pytest.raises(nats.errors.TimeoutError):  # nor may it delete anybody's count
            await forged.purge(f"u.{cap.process}.{user_key(VIEWER)}")
        await bad.wait_refused("publish", f"$KV.{BUCKET}.u.{cap.process}.{user_key(VIEWER)}")

        own = await connect(url, "lurestream")
        kv = await own.nc.jetstream().key_value(BUCKET)
        await kv.put("p.forged", str(time.time()).encode())
        await kv.put(f"u.forged.{user_key(SECOND_VIEWER)}", b"1")
        # the process watches the bucket in order: had the refused entries been stored, it had them by now
        await ls.wait_for(lambda: cap.others(SECOND_VIEWER) == 1, what="the process to count lurestream's entry")
        assert cap.others(VIEWER) == 0
        keys = await kv.keys()
        assert f"u.forged.{user_key(SECOND_VIEWER)}" in keys and f"u.forged.{user_key(VIEWER)}" not in keys, keys

        viewer = await ls.attacker(A, user=VIEWER)  # the forged count did not lock the viewer out
        assert viewer.snapshot.event == "snapshot"
        held = await ls.open(PATH_A, token=ls.token(SECOND_VIEWER))
        assert held.status == 429 and json.loads(await held.body()) == {"detail": "SSE connection limit (1) reached"}


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("user", ["decnet", "decky-web-01", "lurestream"])
async def test_nobody_may_delete_or_purge_the_stream_or_the_cap_bucket(nats_perm, connect, user):
    url = nats_perm.url
    await make_stream(url)
    owner = await connect(url, "lurestream")
    js = owner.nc.jetstream()
    kv = await js.create_key_value(api.KeyValueConfig(bucket=BUCKET, history=1))
    await kv.put("p.someone", b"1")
    consumer = api.ConsumerConfig(name="resume-1", ack_policy=api.AckPolicy.NONE, inactive_threshold=60.0)
    await js.pull_subscribe("", stream=STREAM, config=consumer)
    producer = await connect(url, "decnet")
    await producer.nc.jetstream().publish("attacker.scored", envelope("attacker.scored", {}))

    conn = await connect(url, user)
    requests = [
        f"$JS.API.STREAM.DELETE.{STREAM}",
        f"$JS.API.STREAM.PURGE.{STREAM}",
        f"$JS.API.CONSUMER.DELETE.{STREAM}.resume-1",
        f"$JS.API.STREAM.MSG.DELETE.{STREAM}",
        f"$JS.API.STREAM.DELETE.KV_{BUCKET}",
        f"$JS.API.STREAM.PURGE.KV_{BUCKET}",
        f"$JS.API.STREAM.UPDATE.KV_{BUCKET}",
    ]
    if user != "lurestream":  # lurestream updates its stream (init-nats); a publisher may not (its retention)
        requests += [f"$JS.API.STREAM.UPDATE.{STREAM}", f"$JS.API.STREAM.INFO.{STREAM}"]
    await asyncio.gather(*(refused_request(nats_perm, conn, subject) for subject in requests))

    info = await js.stream_info(STREAM)
    assert info.state.messages == 1 and info.state.consumer_count == 1, info.state
    assert await kv.keys() == ["p.someone"]  # (lurestream reads the bucket by watching it: no get)


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("spy", ["decnet", "decky-web-01"])
async def test_a_publisher_cannot_read_lurestreams_deliveries(nats_perm, connect, mongo_service, mongo, db_name, spy):
    """Every delivery of lurestream's consumers goes to an ``_INBOX.`` subject: lurestream's user, which
    may subscribe there, sees the event; a publisher is refused that and every other way to read it."""
    url = nats_perm.url
    async with standalone(url, mongo_service.url, db_name, mongo, lurestream_settings()) as ls:
        await wait_ready(ls)
        seen: dict[str, list[bytes]] = {"spy": [], "control": []}

        def collect(who: str) -> Any:
            async def cb(msg: Any) -> None:
                seen[who].append(msg.data)

            return cb

        spying = await connect(url, spy)
        for subject in ("_INBOX.>", "_INBOX.*", "attacker.>", "decky.>", f"$KV.{BUCKET}.>", "$JS.>", ">"):
            await spying.nc.subscribe(subject, cb=collect("spy"))
            await spying.wait_refused("subscription", subject)
            await nats_perm.wait_violation(spy, "Subscription", subject)
        control = await connect(url, "lurestream")
        await control.nc.subscribe("_INBOX.>", cb=collect("control"))
        await control.nc.flush()

        producer = await connect(url, "decnet")
        marker = envelope("attacker.scored", {"attacker_uuid": A, "marker": spy})
        ack = await producer.nc.jetstream().publish("attacker.scored", marker)
        await ls.wait_for(lambda: (ls.hub.position or 0) >= ack.seq, what="lurestream to receive the event")
        await ls.wait_for(lambda: marker in seen["control"], what="the control to see the delivery")
        await spying.nc.flush()  # anything routed to the spy before the event reached lurestream is in by now
        assert seen["spy"] == []


# -- the other ways to authenticate ------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_token(start_nats, mongo_service, mongo, db_name):
    server = start_nats(docs_block(TOKEN))
    settings = dict(nats_token=TEST_TOKEN, jetstream=STREAM, cap_bucket=BUCKET)
    async with standalone(server.url, mongo_service.url, db_name, mongo, settings) as ls:
        await wait_ready(ls)
        # and whoever holds the token may write the cap bucket: a token carries no permissions
        anyone = Connection(await nats.connect(server.url, token=TEST_TOKEN, allow_reconnect=False), "anyone", [])
        try:
            assert await bucket_as(anyone).put(f"u.forged.{user_key(VIEWER)}", b"5") > 0
        finally:
            await anyone.close()
    for credentials in ({"token": "not-the-token"}, {}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, **credentials)


@pytest.mark.gen_test(timeout=60)
async def test_a_wrong_or_missing_password_is_refused(nats_perm):
    for credentials in ({"user": "lurestream", "password": "wrong"}, {"user": "decnet"}, {}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(nats_perm.url, allow_reconnect=False, max_reconnect_attempts=0, **credentials)


def tls_config(pki: Pki) -> str:
    """The docs' file with the docs' TLS block, its files the test's."""
    files = {docs_path: str(getattr(pki, field)) for docs_path, field in DOCS_TLS_FILES.items()}
    return docs_block(MAIN) + "\n" + render(docs_block(TLS), files)


@pytest.mark.gen_test(timeout=90)
async def test_tls_with_a_ca_and_client_certificates(tmp_path, start_nats, connect, mongo_service, mongo, db_name):
    pki = make_pki(tmp_path / "pki")
    server = start_nats(tls_config(pki), scheme="tls")
    settings = lurestream_settings(
        nats_tls_ca_file=str(pki.ca), nats_tls_cert_file=str(pki.client_cert), nats_tls_key_file=str(pki.client_key)
    )
    async with standalone(server.url, mongo_service.url, db_name, mongo, settings) as ls:
        await wait_ready(ls)
        client = await ls.attacker(A)
        tls = natsclient.tls_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        producer = await connect(server.url, "decnet", tls=tls)
        ack = await producer.nc.jetstream().publish(
            "attacker.scored", envelope("attacker.scored", {"attacker_uuid": A})
        )
        assert (await client.next_event()).id == ls.event_id(ack.seq)
    assert server.violations() == []

    def handshake_errors() -> list[str]:
        return re.findall(r"TLS handshake error: (.*)", server.log())

    # refused by the server: no client certificate, or one another CA signed
    no_certificate = natsclient.tls_context(str(pki.ca), "", "")
    other_ca = natsclient.tls_context(str(pki.ca), str(pki.other_client_cert), str(pki.other_client_key))
    for context, reason in ((no_certificate, "didn't provide a certificate"), (other_ca, "unknown authority")):
        before = len(handshake_errors())
        with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
            await connect_as(server.url, "decnet", tls=context, connect_timeout=2, max_reconnect_attempts=0)
        deadline = time.monotonic() + 15
        while not any(reason in e for e in handshake_errors()[before:]):
            assert time.monotonic() < deadline, f"no TLS handshake error about {reason!r}:\n{server.log()}"
            await asyncio.sleep(0.02)
    # refused by the client: a server whose certificate the CA it was given did not sign
    distrustful = natsclient.tls_context(str(pki.other_ca), str(pki.client_cert), str(pki.client_key))
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect_as(server.url, "decnet", tls=distrustful, connect_timeout=2, max_reconnect_attempts=0)


@pytest.mark.gen_test(timeout=60)
async def test_an_nkey(tmp_path, start_nats, mongo_service, mongo, db_name):
    pytest.importorskip(
        "nkeys",
        reason="nats.py signs with the `nkeys` package (LURESTREAM_NATS_NKEY_SEED_FILE, _CREDS_FILE); it is not "
        "installed here, and not a lurestream dependency",
    )
    public, seed = make_nkey()
    seed_file = tmp_path / "lurestream.nk"
    seed_file.write_text(seed + "\n")
    seed_file.chmod(0o600)
    entry = docs_block(NKEY)
    docs_key = re.search(r"nkey: (U[A-Z2-7]{55})", entry)
    assert docs_key, entry
    config = docs_block(MAIN)
    password_entry = re.search(r"^ *\{user: lurestream, .*\n", config, re.M)
    assert password_entry, "the docs' file has no entry for the lurestream user"
    config = config.replace(password_entry.group(0), render(entry, {docs_key.group(1): public}))
    server = start_nats(config)
    settings = lurestream_settings(nats_user="", nats_password="", nats_nkey_seed_file=str(seed_file))
    async with standalone(server.url, mongo_service.url, db_name, mongo, settings) as ls:
        await wait_ready(ls)
    assert server.violations() == []


# -- the commands and TLS --------------------------------------------------------------------------------


def test_init_nats_connects_with_the_nats_credentials(nats_perm):
    env = environment_with(
        {
            "LURESTREAM_NATS_URL": nats_perm.url,
            "LURESTREAM_NATS_USER": "lurestream",
            "LURESTREAM_NATS_PASSWORD": PASSWORDS["lurestream"][1],
            "LURESTREAM_JETSTREAM": STREAM,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "lurestream", "init-nats"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0 and f"stream {STREAM} created" in done.stdout, done.stderr


@pytest.mark.gen_test(timeout=30)
async def test_tls_settings_refuse_a_server_without_tls(tmp_path, nats_perm):
    pki = make_pki(tmp_path / "pki")
    config = lurestream_config(f"tls://127.0.0.1:{nats_perm.service.port}", nats_tls_ca_file=str(pki.ca))
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
        nc = await connect_once(config.nats_url, "test", timeout=2, config=config)
        await nc.close()
