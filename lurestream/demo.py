"""``lurestream demo``: everything on one machine, for a first look.

Starts a local nats-server (JetStream on) and a local MongoDB-wire server on free ports, seeds a small
realistic data set, runs a simulated DECNET publisher a few events per second, runs the server, and
prints ready-to-paste ``curl -N`` commands with a valid token, and the exact command that starts a second
``lurestream serve`` beside it on the same NATS and MongoDB-wire. Ctrl-C stops every child cleanly.

The JWT secret is ``LURESTREAM_JWT_SECRET`` when the environment sets it (so tokens minted elsewhere, and
a second server, verify against the demo's), else a random one printed for the second server's use.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from lurestream.config import Config, config_from
from lurestream.envelope import encode_envelope
from lurestream.localservices import ServiceError, free_port, mongo_wire_server, nats_server
from lurestream.logs import setup_logging
from lurestream.tokens import mint_token

VIEWER_UUID = "5b1c3e2a-7d4f-4c61-9a8e-0f2b6d9c1a01"
ADMIN_UUID = "5b1c3e2a-7d4f-4c61-9a8e-0f2b6d9c1a02"
TOPOLOGY_ID = "topo-dmz-01"
ATTACKERS: list[dict[str, Any]] = [
    {"_id": "a1f0c9de-3b7a-4e0e-8d51-6c2f4b9e7a10", "ip": "203.0.113.45", "identity_id": "id-ember-owl"},
    {"_id": "b27e4d11-9c3f-4a8b-b6e2-1d5a7f0c3b22", "ip": "198.51.100.7", "identity_id": "id-ember-owl"},
    {"_id": "c3d8a2f5-1e6b-47c9-a0d4-8b9e2c7f5d33", "ip": "192.0.2.199", "identity_id": None},
]
PRIMITIVES: dict[str, list[Any]] = {
    "ja3": ["771,4865-4866-4867,0-23-65281", "771,49195-49199,0-11-10-35", "769,47-53-5-10,0-10-11"],
    "http.user_agent": ["curl/8.5.0", "python-requests/2.32", "Mozilla/5.0 (X11; Linux x86_64)", "masscan/1.3"],
    "ssh.client_version": ["SSH-2.0-OpenSSH_9.6", "SSH-2.0-libssh_0.10.6", "SSH-2.0-Go"],
    "tcp.os_guess": ["Linux 5.x", "Windows 10", "FreeBSD 14"],
    "keystroke.cadence_ms": [112, 87, 143, 65],
    "timezone": ["UTC+03:00", "UTC+08:00", "UTC-05:00"],
}
DECKIES = ["web-01", "db-02", "ssh-jump"]


def seed(client: Any, db_name: str) -> None:
    """A small realistic data set (synchronous PyMongo: the demo seeds before the server starts)."""
    db = client[db_name]
    now = datetime.now(timezone.utc)
    from lurestream.store.mongo import INDEXES

    for collection, specs in INDEXES.items():  # what `lurestream init-db` creates, TTL indexes included
        for keys, options in specs:
            db[collection].create_index(keys, **options)
    db.users.insert_many(
        [
            {"_id": VIEWER_UUID, "username": "analyst", "role": "viewer", "must_change_password": False},
            {"_id": ADMIN_UUID, "username": "admin", "role": "admin", "must_change_password": False},
        ]
    )
    db.attackers.insert_many(ATTACKERS)
    rng = random.Random(7)
    observations = []
    t0 = time.time() - 3600
    for attacker in ATTACKERS:
        for primitive, values in PRIMITIVES.items():
            for _ in range(rng.randint(2, 5)):
                observations.append(
                    {
                        "attacker_uuid": attacker["_id"],
                        "primitive": primitive,
                        "value": rng.choice(values),
                        "confidence": round(rng.uniform(0.4, 0.99), 2),
                        "ts": t0 + rng.uniform(0, 3500),
                        "source": rng.choice(["sniffer", "ssh-honeypot", "http-decky"]),
                    }
                )
    db.observations.insert_many(observations)
    db.topologies.insert_one({"_id": TOPOLOGY_ID, "status": "active", "name": "DMZ decoys"})
    db.topology_mutations.insert_many(
        [
            {
                "_id": "mut-0001",
                "topology_id": TOPOLOGY_ID,
                "op": "add_decky",
                "payload": {"name": "web-01"},
                "state": "applied",
                "requested_at": now - timedelta(minutes=30),
                "applied_at": now - timedelta(minutes=29),
                "reason": None,
            },
            {
                "_id": "mut-0002",
                "topology_id": TOPOLOGY_ID,
                "op": "add_service",
                "payload": {"decky": "db-02", "service": "mysql"},
                "state": "applying",
                "requested_at": now - timedelta(minutes=2),
                "applied_at": None,
                "reason": None,
            },
            {
                "_id": "mut-0003",
                "topology_id": TOPOLOGY_ID,
                "op": "rotate_banner",
                "payload": {"decky": "ssh-jump", "banner": "SSH-2.0-OpenSSH_8.9"},
                "state": "pending",
                "requested_at": now - timedelta(seconds=40),
                "applied_at": None,
                "reason": None,
            },
        ]
    )


def envelope(topic: str, type_: str, payload: dict[str, Any]) -> bytes:
    return encode_envelope(topic, payload, type_)


def simulated_event(rng: random.Random) -> tuple[str, bytes]:
    """One plausible DECNET event: observations most often, then scores, rotations, topology changes."""
    attacker = rng.choice(ATTACKERS)
    kind = rng.choices(["obs", "score", "rotate", "attrib", "mutation", "decky"], [8, 2, 1, 1, 2, 1])[0]
    if kind == "obs":
        primitive = rng.choice(list(PRIMITIVES))
        subject = f"attacker.observation.{primitive}"
        return subject, envelope(
            subject,
            "observation",
            {
                "attacker_uuid": attacker["_id"],
                "primitive": primitive,
                "value": rng.choice(PRIMITIVES[primitive]),
                "confidence": round(rng.uniform(0.4, 0.99), 2),
                "source": "sniffer",
            },
        )
    if kind == "score":  # DECNET's scorer stamps only the ip
        return "attacker.scored", envelope(
            "attacker.scored", "score", {"attacker_ip": attacker["ip"], "score": round(rng.uniform(0, 100), 1)}
        )
    if kind == "rotate":
        return "attacker.fingerprint_rotated", envelope(
            "attacker.fingerprint_rotated",
            "rotation",
            {
                "attacker_uuid": attacker["_id"],
                "primitive": "ja3",
                "old": rng.choice(PRIMITIVES["ja3"]),
                "new": rng.choice(PRIMITIVES["ja3"]),
            },
        )
    if kind == "attrib":
        return "attribution.profile.state_changed", envelope(
            "attribution.profile.state_changed",
            "state",
            {"identity_uuid": "id-ember-owl", "state": rng.choice(["tentative", "confirmed", "contested"])},
        )
    if kind == "mutation":
        subject = f"topology.{TOPOLOGY_ID}.mutation.{rng.choice(['requested', 'applying', 'applied'])}"
        return subject, envelope(
            subject,
            "mutation",
            {"topology_id": TOPOLOGY_ID, "mutation_id": f"mut-{rng.randint(4, 999):04d}", "op": "add_service"},
        )
    decky = rng.choice(DECKIES)
    subject = f"decky.{decky}.service_added"
    return subject, envelope(
        subject,
        "decky",
        {"topology_id": TOPOLOGY_ID, "decky": decky, "service": rng.choice(["http", "smb", "rdp", "telnet"])},
    )


async def publish_forever(nats_url: str, rate: float) -> None:
    import nats

    nc = await nats.connect(nats_url, name="lurestream-demo-publisher")
    rng = random.Random()
    try:
        while True:
            subject, body = simulated_event(rng)
            await nc.publish(subject, body)
            await asyncio.sleep(rng.expovariate(rate))
    finally:
        await nc.close()


def _serve_command() -> str:
    """How to run ``lurestream serve`` with the interpreter the demo runs on (whatever the shell's PATH)."""
    script = os.path.join(os.path.dirname(sys.executable), "lurestream")
    if os.access(script, os.X_OK):
        return f"{shlex.quote(script)} serve"
    return f"{shlex.quote(sys.executable)} -m lurestream serve"


def _port_beside(port: int) -> int:
    """The demo's port + 1 when it is free now (easy to remember), else any free port."""
    if 0 < port < 65535:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port + 1
            except OSError:
                pass
    return free_port()


def second_server(config: Config, port: int, secret_from_env: bool) -> list[str]:
    """The exact environment and command of a second server beside the demo: same NATS (JetStream stream
    included, so ids and resumes agree), same database, same JWT secret, another port."""
    # a secret the user supplied is never echoed; a random demo secret has to be, or nothing can share it
    secret = '"$LURESTREAM_JWT_SECRET"' if secret_from_env else shlex.quote(config.jwt_secret)
    env = [
        f"LURESTREAM_NATS_URL={shlex.quote(config.nats_url)}",
        f"LURESTREAM_MONGO_URI={shlex.quote(config.mongo_uri)}",
        f"LURESTREAM_MONGO_DB={shlex.quote(config.mongo_db)}",
        f"LURESTREAM_JETSTREAM={shlex.quote(config.jetstream)}",
        f"LURESTREAM_JWT_SECRET={secret}",
        f"LURESTREAM_PORT={_port_beside(port)}",
        "LURESTREAM_DRAIN_SECONDS=1",  # like the demo: Ctrl-C need not wait 30 s
    ]
    secret_note = (
        "as set in your environment"
        if secret_from_env
        else "here the demo's random one; set LURESTREAM_JWT_SECRET before `lurestream demo` to choose it"
    )
    return [
        "Start a second server beside this one: same NATS, MongoDB-wire and JWT secret",
        f"({secret_note}), another port; the dashboard link and tokens work on both:",
        "  " + " ".join(env) + " " + _serve_command(),
    ]


def banner(config: Config, port: int, secret_from_env: bool = False) -> str:
    token = mint_token(config, VIEWER_UUID, ttl=24 * 3600)
    base = f"http://127.0.0.1:{port}/api/v1"
    attacker = f"{base}/attackers/{ATTACKERS[0]['_id']}/events?token={token}"
    return "\n".join(
        [
            "",
            "lurestream demo is running (Ctrl-C stops everything).",
            f"  NATS {config.nats_url}   MongoDB-wire {config.mongo_uri}   database {config.mongo_db}",
            "",
            "Open the live dashboard (signed in as the demo viewer; the token stays in the URL fragment):",
            f"  http://127.0.0.1:{port}/#token={token}",
            "",
            "Watch one attacker:",
            f"  curl -N '{attacker}'",
            "Watch the topology:",
            f"  curl -N '{base}/topologies/{TOPOLOGY_ID}/events?token={token}'",
            "Or trade the token for a single-use ticket first:",
            f"  curl -s -X POST -H 'Authorization: Bearer {token}' {base}/auth/sse-ticket",
            f"Events carry ids (JetStream stream {config.jetstream!r}): stop a curl, then resume where it left off:",
            f"  curl -N -H 'Last-Event-ID: <the last id: seen>' '{attacker}'",
            "",
            *second_server(config, port, secret_from_env),
            "",
        ]
    )


def run_demo(port: int = 8700, rate: float = 3.0, duration: float = 0) -> int:
    """Run the whole demo in the foreground; returns the exit status."""
    from pymongo import MongoClient

    from lurestream.listening import StartupError, listen
    from lurestream.server import serve

    secret_from_env = bool(os.environ.get("LURESTREAM_JWT_SECRET"))
    secret = os.environ["LURESTREAM_JWT_SECRET"] if secret_from_env else secrets.token_urlsafe(48)
    config_from({"jwt_secret": secret})  # a secret too weak stops the demo here, before anything starts
    try:  # bind first: a busy port is the commonest failure, so say so before starting anything
        sockets = listen("127.0.0.1", port, reuse_port=False)
    except StartupError as exc:
        print(f"lurestream demo: {exc}; try --port 0 for any free port")
        return 1
    port = sockets[0].getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="lurestream-demo-")
    nats_svc = nats_server(workdir)
    mongo_svc = mongo_wire_server(workdir)
    try:
        nats_svc.start()
        mongo_svc.start()
        client: MongoClient[dict[str, Any]]
        with MongoClient(mongo_svc.url, serverSelectionTimeoutMS=5000) as client:
            seed(client, "decnet")
        config = config_from(
            {
                "port": port,
                "nats_url": nats_svc.url,
                "mongo_uri": mongo_svc.url,
                "mongo_db": "decnet",
                "jwt_secret": secret,
                "keepalive_seconds": 15,
                "jetstream": "lurestream",  # event ids and resume; the hub creates the stream
                "drain_seconds": 1,  # Ctrl-C should not wait the production default of 30 s
            }
        )
        setup_logging(config.log_level, config.log_format)

        async def main() -> None:
            ready = asyncio.Event()
            server = asyncio.create_task(serve(config, sockets=sockets, ready=ready))
            await ready.wait()
            publisher = asyncio.create_task(publish_forever(config.nats_url, rate))
            print(banner(config, port, secret_from_env), flush=True)
            if duration:
                done, _ = await asyncio.wait({server}, timeout=duration)
                if not done:
                    import os
                    import signal

                    os.kill(os.getpid(), signal.SIGTERM)
            await server
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass
        return 0
    except ServiceError as exc:
        print(f"lurestream demo: {exc}")
        return 1
    finally:
        nats_svc.stop()
        mongo_svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
