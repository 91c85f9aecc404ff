"""A lurestream cluster on one machine, for tests/cluster (pytest fixtures) and bench/cluster.py.

Nothing here imports pytest: the bench starts the same cluster.

The topology:
- **NATS**: three nats-server nodes ``n1``..``n3`` with JetStream, one ``cluster`` name (``lurestream``),
  routes to all three, each its own client, route and monitoring port (``-m``: ``/connz`` tells which
  node a lurestream host's connection is on) and its own store directory. ``lurestream init-nats``
  creates the stream with ``LURESTREAM_JETSTREAM_REPLICAS=3``, so every message is on all three nodes
  and any one of them may die.
- **MongoDB**: one MongoDB-wire server (nx-27017).
- **lurestream hosts**: separate ``lurestream serve`` processes, host ``h<i>`` bound to ``127.0.0.<i+2>``
  (127.0.0.2, .3, .4), all on the *same port*, as real hosts behind a load balancer are. Each gets all
  three NATS client URLs in ``LURESTREAM_NATS_URL``.

**Why 127.0.0.x addresses rather than network namespaces with veth pairs.** The failures under test
are process failures — a NATS node SIGKILLed, a host SIGKILLed, SIGTERMed (drain) or SIGSTOPped — and
for those an address per host already gives everything a namespace would: a host of its own to
connect to and be refused by (a dead host's address answers RST while the others serve), the same
port on every host, distinct client→host connections, and a paused host that still completes TCP
handshakes in its kernel but never answers (the silent-peer case a pulled cable also produces, which
the clients must detect by silence). Namespaces would add link failures (packets dropped rather than
refused) at a price: root or CAP_NET_ADMIN and iproute2 on every developer and CI machine, kernel
objects (namespaces, veths, routes) that outlive a crashed test run because they are not tied to a
process, and ``ip netns exec`` around every process. On loopback, every process we start dies with
its parent (PR_SET_PDEATHSIG) and there is nothing else to clean up. The whole 127.0.0.0/8 routes to
loopback on Linux, so no set-up is needed either.

Also here: the :class:`Publisher` (JetStream publishes with a ``Nats-Msg-Id`` and retries, so a NATS
node's death neither loses nor doubles a publish, and every stored sequence is known), the stream
read-back that is the truth the clients are checked against, and :class:`Follower` — an SSE client
that reconnects on its own with ``Last-Event-ID`` to whichever host answers, honours ``retry:``,
treats three keepalive periods of silence as a dead connection, and records every event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nats
from nats.js import api
from pymongo import MongoClient

from lurestream.config import config_from
from lurestream.envelope import encode_envelope
from lurestream.eventids import sequence_of
from lurestream.localservices import (
    LocalService,
    ServiceError,
    mongo_uri,
    mongo_wire_server,
    nats_server_binary,
    nats_server_version,
)
from lurestream.sse import FrameParser
from lurestream.tokens import mint_token

SECRET = "lurestream-cluster-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
CLUSTER_NAME = "lurestream"
SUBJECT = "attacker.scored"
EVENT_PATH = "/api/v1/attackers/{}/events"


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL us when our parent dies (PR_SET_PDEATHSIG, as
    lurestream.localservices does with SIGTERM). SIGKILL, because a host may be paused (SIGSTOP) or
    draining for a long while when the test or the bench dies: neither outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the fixtures' clean-up still stops everything
        pass


def host_address(index: int) -> str:
    """The address of lurestream host ``index`` (0-based): 127.0.0.2, 127.0.0.3, ..."""
    return f"127.0.0.{index + 2}"


def free_port_on(addresses: Iterable[str]) -> int:
    """A port free on every one of ``addresses`` (the hosts all listen on the same port)."""
    addresses = list(addresses)
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise ServiceError(f"no port free on all of {addresses}")


def wait_address(address: str, port: int, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode} before listening on {address}:{port}")
        try:
            with socket.create_connection((address, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"{what} did not listen on {address}:{port} within {timeout:.0f}s")


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{labels}': value}`` (comments dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            pass
    return values


# -- NATS ---------------------------------------------------------------------------------------------


class NatsNode(LocalService):
    """One node of the NATS cluster: a config file (cluster, routes, JetStream store) plus ``-m``."""

    @property
    def server_name(self) -> str:
        return self.name.removeprefix("nats-")

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a goodbye to its clients or its peers."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @property
    def monitor(self) -> int:
        return self.extra_ports["monitor"]

    def connz(self) -> list[dict[str, Any]]:
        status, body = http_get(f"http://127.0.0.1:{self.monitor}/connz?limit=4096")
        if status != 200:
            raise ServiceError(f"{self.name} /connz answered {status}")
        return list(json.loads(body).get("connections") or [])

    def jsz(self) -> dict[str, Any]:
        return dict(json.loads(http_get(f"http://127.0.0.1:{self.monitor}/jsz?streams=1")[1]))


def nats_cluster_config(name: str, port: int, cluster_port: int, store_dir: str, routes: list[int]) -> str:
    """The node's configuration file: the example in docs/operations.md, with local ports."""
    route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{store_dir}" }}\n'
        f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{route_urls}]\n}}\n"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class NatsCluster:
    """Three JetStream nodes routed to each other (see the module docstring)."""

    def __init__(self, workdir: str, size: int = 3) -> None:
        self.workdir = workdir
        self.size = size
        self.nodes: list[NatsNode] = []
        self._configure()

    def _configure(self) -> None:
        """Ports and a configuration file per node (again with new ports if one was taken meanwhile)."""
        ports = free_ports(3 * self.size)
        routes = ports[self.size : 2 * self.size]
        self.nodes = []
        for i in range(self.size):
            port, cluster, monitor = ports[i], ports[self.size + i], ports[2 * self.size + i]
            name = f"n{i + 1}"
            home = os.path.join(self.workdir, f"nats-{name}")
            os.makedirs(home, exist_ok=True)
            conf = os.path.join(home, f"{name}.conf")
            with open(conf, "w") as fh:
                fh.write(nats_cluster_config(name, port, cluster, os.path.join(home, "store"), routes))
            argv = [nats_server_binary(), "-c", conf, "-m", str(monitor)]
            self.nodes.append(NatsNode(f"nats-{name}", "nats", argv, port, home, {"monitor": monitor}))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """``LURESTREAM_NATS_URL``: every node's client URL, comma-separated."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for attempt in range(3):
            try:
                for node in self.nodes:
                    node.start(timeout)
                break
            except ServiceError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                self._configure()  # a port was taken between choosing it and binding it: choose again
        self.wait_meta_leader(timeout)
        return self

    def wait_meta_leader(self, timeout: float = 30.0) -> str:
        """Wait until the JetStream meta group has a leader seen by every running node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            for node in self.running():
                try:
                    leaders.add((node.jsz().get("meta_cluster") or {}).get("leader"))
                except (OSError, ValueError):
                    leaders.add(None)
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                return str(leaders.pop())
            time.sleep(0.1)
        raise ServiceError("the NATS cluster elected no JetStream meta leader")

    async def make_leader(self, server: str, streams: Iterable[str], timeout: float = 30.0) -> None:
        """Move the leader of each of ``streams`` to node ``server``, making that node the costliest one to
        lose: a step-down with a preferred successor (nats-server 2.11+), or — on older servers, which
        ignore or refuse the preference (Debian's 2.9) — plain step-downs until the election lands there.
        (The meta leader cannot be moved from the global account: that takes the system account.)"""
        version = nats_server_version(nats_server_binary()) or (0, 0, 0)
        preferred = json.dumps({"placement": {"preferred": server}}).encode() if version >= (2, 11, 0) else b""
        nc = await nats.connect(servers=[n.url for n in self.running()], name="cluster-admin", error_cb=_quiet)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            for stream in streams:
                while True:
                    if time.monotonic() > deadline:
                        raise ServiceError(f"could not move the leader of {stream} to {server}")
                    leader = None
                    try:
                        info = await js.stream_info(stream)
                        leader = info.cluster.leader if info.cluster is not None else None
                        if leader == server:
                            break
                        if leader:
                            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", preferred, timeout=2)
                    except Exception:
                        pass
                    await self._new_leader(js, stream, leader, min(5.0, max(deadline - time.monotonic(), 0.1)))
        finally:
            await nc.close()

    @staticmethod
    async def _new_leader(js: Any, stream: str, old: str | None, timeout: float) -> None:
        """Until ``stream`` has a leader other than ``old`` (an election after a step-down takes a moment)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader and info.cluster.leader != old:
                    return
            await asyncio.sleep(0.2)

    def meta_leader(self) -> str | None:
        for node in self.running():
            with contextlib.suppress(OSError, ValueError):
                return (node.jsz().get("meta_cluster") or {}).get("leader")
        return None

    def running(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def node_of(self, connection_name: str, timeout: float = 10.0) -> NatsNode:
        """The node holding the client connection named ``connection_name`` (from each node's /connz)."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.running():
                try:
                    if any(c.get("name") == connection_name for c in node.connz()):
                        return node
                except (OSError, ServiceError, ValueError):
                    continue
            if time.monotonic() > deadline:
                raise ServiceError(f"no NATS node holds a connection named {connection_name!r}")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- lurestream hosts ---------------------------------------------------------------------------------


class Host:
    """One lurestream host: ``python -m lurestream serve`` bound to its own address."""

    def __init__(self, name: str, address: str, port: int, log_path: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.log_path = log_path
        self.settings = dict(settings, host=address, port=port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"<{self.name} {self.address}:{self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def base(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def nats_connection_name(self) -> str:
        """The name lurestream's hub gives its NATS connection (shown in /connz)."""
        return f"lurestream:{socket.gethostname()}:{self.pid}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LURESTREAM_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for key, value in self.settings.items():
            env["LURESTREAM_" + key.upper()] = str(value)
        return env

    def spawn(self) -> Host:
        """Start the process (returns at once; see :meth:`wait_listening`)."""
        with open(self.log_path, "ab") as log:
            log.write(f"---- {self.name} start #{self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lurestream", "serve"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.starts += 1
        return self

    def wait_listening(self, timeout: float = 30.0) -> Host:
        assert self.proc is not None
        wait_address(self.address, self.port, timeout, self.proc, self.name)
        return self

    def ready(self) -> tuple[int, dict[str, Any]]:
        try:
            status, body = http_get(f"{self.base}/readyz", timeout=2)
            return status, json.loads(body)
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}

    def wait_ready(self, timeout: float = 30.0, cap: str = "cluster") -> Host:
        """Until /readyz is 200 with the bus connected and (by default) the cluster-wide cap on."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            status, body = self.ready()
            if status == 200 and (not cap or body.get("cap") == cap):
                return self
            time.sleep(0.1)
        raise ServiceError(f"{self.name} not ready within {timeout:.0f}s ({body}):\n{self.tail()}")

    def start(self, timeout: float = 30.0) -> Host:
        return self.spawn().wait_listening(timeout).wait_ready(timeout)

    async def start_async(self, timeout: float = 30.0) -> Host:
        """:meth:`start` from a coroutine: spawned from the calling thread (the parent-death signal
        belongs to the thread that forks, and an executor's threads end before the run does), waited
        for in a thread."""
        self.spawn()
        await asyncio.to_thread(self.wait_listening, timeout)
        await asyncio.to_thread(self.wait_ready, timeout)
        return self

    def metrics(self) -> dict[str, float]:
        status, body = http_get(f"{self.base}/metrics")
        if status != 200:
            raise ServiceError(f"{self.name} /metrics answered {status}")
        return parse_metrics(body.decode())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGCONT (in case it is paused), SIGTERM, a second SIGTERM after 0.6 s if it is still draining
        (it then closes its streams at once), and SIGKILL if it has not exited within ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(0.6)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # beyond lurestream's 0.5 s window for one signal delivered twice
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "".join(self.log().splitlines(keepends=True)[-lines:])


# -- the whole cluster --------------------------------------------------------------------------------


@dataclass
class Seed:
    users: list[str]
    attackers: list[str]


class Cluster:
    """NATS cluster + MongoDB-wire server + ``hosts`` lurestream hosts; :meth:`close` stops them all."""

    def __init__(
        self, workdir: str, hosts: int = 3, stream: str | None = None, mongo_options: str = "", **settings: Any
    ) -> None:
        self.workdir = workdir
        self.mongo_options = mongo_options  # appended to the hosts' MongoDB URI: "?maxConnecting=8"
        self.stream = stream or "LS_" + uuid.uuid4().hex[:10]
        self.db = "cluster_" + uuid.uuid4().hex[:8]
        self.nats = NatsCluster(workdir)
        self.mongo = mongo_wire_server(os.path.join(workdir, "mongo") + os.sep)
        os.makedirs(self.mongo.workdir, exist_ok=True)
        self.host_count = hosts
        self.settings = settings
        self.hosts: list[Host] = []
        self.seed_data = Seed([], [])
        self.config = config_from({"jwt_secret": SECRET})

    def start(self, users: int = 10, attackers: int = 20, timeout: float = 40.0) -> Cluster:
        try:
            self.nats.start()
            self.mongo.start()
            self.seed(users, attackers)
            self.init_stream()
            self.start_hosts(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def host_settings(self) -> dict[str, Any]:
        settings = dict(
            nats_url=self.nats.url,
            mongo_uri=mongo_uri(self.mongo.url, self.mongo_options),
            mongo_db=self.db,
            jwt_secret=SECRET,
            jetstream=self.stream,
            jetstream_replicas=3,
            cap_bucket=f"caps_{self.stream}",
        )
        settings.update(self.settings)
        return settings

    def seed(self, users: int, attackers: int) -> None:
        self.seed_data = Seed([f"user-{i}" for i in range(users)], [f"a-{i}" for i in range(attackers)])
        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo.url, serverSelectionTimeoutMS=5000)
        with client:
            db = client[self.db]
            db.users.insert_many(
                [{"_id": u, "role": "viewer", "must_change_password": False} for u in self.seed_data.users]
            )
            db.attackers.insert_many(
                [
                    {"_id": a, "ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "identity_id": None}
                    for i, a in enumerate(self.seed_data.attackers)
                ]
            )

    def init_stream(self) -> None:
        """``lurestream init-nats``: the stream with replicas 3, as an operator creates it."""
        env = Host("init", "127.0.0.1", 0, os.devnull, self.host_settings()).env()
        out = subprocess.run(
            [sys.executable, "-m", "lurestream", "init-nats"], env=env, capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise ServiceError(f"lurestream init-nats failed: {out.stdout}{out.stderr}")

    def start_hosts(self, timeout: float = 40.0) -> None:
        addresses = [host_address(i) for i in range(self.host_count)]
        port = free_port_on(addresses)
        settings = self.host_settings()
        for i, address in enumerate(addresses):
            log = os.path.join(self.workdir, f"h{i + 1}.log")
            self.hosts.append(Host(f"h{i + 1}", address, port, log, settings))
        for host in self.hosts:
            host.spawn()
        for host in self.hosts:
            host.wait_listening(timeout).wait_ready(timeout)

    def token(self, user: str, ttl: float = 3600) -> str:
        return mint_token(self.config, user, ttl=ttl)

    def endpoints(self) -> list[tuple[str, int]]:
        return [(h.address, h.port) for h in self.hosts]

    def nats_node_of(self, host: Host) -> NatsNode:
        return self.nats.node_of(host.nats_connection_name)

    def close(self) -> None:
        for host in self.hosts:
            host.stop(timeout=10)
        self.mongo.stop()
        self.nats.stop()


# -- publishing and the truth -------------------------------------------------------------------------


async def _quiet(exc: Exception) -> None:
    return None


def envelope(subject: str, msg_id: str, payload: dict[str, Any]) -> bytes:
    return encode_envelope(subject, payload, "scored", event_id=msg_id)


class Publisher:
    """Publishes ``attacker.scored`` events through JetStream at a steady rate.

    Every publish carries a ``Nats-Msg-Id``; when its ack does not come (the node it went through died,
    the stream is electing a leader) it is sent again with the same id until acknowledged — the stream
    stores it once and answers the retry with the first sequence — so nothing is lost or doubled and
    ``acked`` maps every event number to its stream sequence. Event ``n`` goes to
    ``attackers[n % len(attackers)]``; its payload carries ``n``.
    """

    def __init__(
        self, urls: list[str], attackers: list[str], rate: float, give_up: float = 60.0, concurrency: int = 1
    ) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.attackers = attackers
        self.rate = rate
        self.give_up = give_up
        self.run_id = uuid.uuid4().hex[:8]
        self.acked: dict[int, int] = {}
        self.retries: Counter[str] = Counter()
        self.duplicates = 0  # retries the stream recognised (an ack had been lost)
        self.sent = 0
        self.stalls: list[tuple[float, float]] = []  # (wall start, seconds) of publishes that needed retries
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def connect(self) -> None:
        self._nc = await nats.connect(
            servers=self.urls,
            name="cluster-publisher",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            error_cb=_quiet,
            ping_interval=1,  # a paused node is left in seconds, as a lurestream host leaves it
            max_outstanding_pings=2,
        )

    async def publish(self, n: int) -> int:
        attacker = self.attackers[n % len(self.attackers)]
        msg_id = f"{self.run_id}-{n}"
        data = envelope(SUBJECT, msg_id, {"attacker_uuid": attacker, "n": n})
        js = self._nc.jetstream()
        started = time.monotonic()
        wall = time.time()
        tries = 0
        while True:
            try:
                ack = await js.publish(SUBJECT, data, timeout=1.0, headers={"Nats-Msg-Id": msg_id})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # timeouts, no responders, no leader yet, reconnecting: all retried
                tries += 1
                self.retries[type(exc).__name__] += 1
                if time.monotonic() - started > self.give_up:
                    raise RuntimeError(f"publish {n} not acknowledged within {self.give_up}s: {exc!r}") from exc
                await asyncio.sleep(0.05)
                continue
            if ack.duplicate:
                self.duplicates += 1
            if tries:
                self.stalls.append((wall, time.monotonic() - started))
            self.acked[n] = int(ack.seq)
            return int(ack.seq)

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """``concurrency`` publishers share the schedule (one at a time keeps up with ~1 ack round trip)."""
        loop = asyncio.get_running_loop()
        clock = {"t0": loop.time(), "base": self.sent}

        async def worker() -> None:
            while not self._stop.is_set():
                n = self.sent
                self.sent += 1
                due = clock["t0"] + (n - clock["base"]) / self.rate
                now = loop.time()
                if now - due > 1.0:  # fell behind (an outage): carry on at the rate, no burst
                    clock["t0"], clock["base"] = now, n
                elif due > now:
                    await asyncio.sleep(due - now)
                await self.publish(n)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def stop(self) -> None:
        """Stop after the publish in flight is acknowledged."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def last_seq(self) -> int:
        return max(self.acked.values(), default=0)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None


@dataclass
class Stored:
    seq: int
    attacker: str
    n: int
    ts: float = 0.0  # the envelope's ts: when it was published


async def read_stream(urls: list[str], stream: str, timeout: float = 30.0) -> list[Stored]:
    """Every message the stream holds, read back with a consumer of our own: the truth the clients'
    event ids are checked against (independent of lurestream's own JetStream code). Retried as a whole
    while the cluster is still settling (a leader election after a node's death)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _read_stream_once(urls, stream, deadline)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _read_stream_once(urls: list[str], stream: str, deadline: float) -> list[Stored]:
    nc = await nats.connect(servers=urls, name="cluster-truth", connect_timeout=2, error_cb=_quiet)
    try:
        js = nc.jetstream()
        last = int((await js.stream_info(stream)).state.last_seq)
        stored: list[Stored] = []
        if not last:
            return stored
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,
        )
        psub = await js.pull_subscribe("", stream=stream, config=config)
        try:
            seq = 0
            while seq < last:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"read {seq} of {last} messages of {stream}")
                try:
                    msgs = await psub.fetch(min(1000, last - seq), timeout=5)
                except asyncio.TimeoutError:
                    continue
                for msg in msgs:
                    seq = int(msg.metadata.sequence.stream)
                    body = json.loads(msg.data) if msg.data else {}
                    payload = body.get("payload") or {}
                    attacker, n = str(payload.get("attacker_uuid", "")), int(payload.get("n", -1))
                    stored.append(Stored(seq, attacker, n, float(body.get("ts") or 0.0)))
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        return stored
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


# -- SSE clients --------------------------------------------------------------------------------------


@dataclass
class Session:
    """One 200 response a follower got: where, when, how it opened and how it ended."""

    host: str
    started: float  # wall clock
    opening: str = ""  # snapshot, resumed, rebuilt (a snapshot with "resumed": false)
    replayed: int = 0
    ended: float = 0.0
    end: str = ""  # eof (the server ended it), silence, error: ..., stopped
    retry_hint: int | None = None
    events: int = 0


class Follower:
    """One SSE client that follows an attacker's stream across hosts (see the module docstring).

    Reconnect policy: after a stream ended, wait the ``retry:`` hint (EventSource's rule; not after a
    silent connection) and connect to another host, picked at random as a load balancer would; when a
    host refuses (connection refused, reset, no response head in
    time, 429/503), go on to the next at once, backing off only once every host has refused in a row.
    """

    def __init__(
        self,
        name: str,
        attacker: str,
        token: str,
        endpoints: list[tuple[str, int]],
        keepalive_seconds: float,
        first: int = 0,
        retry_ms: int = 1000,
        connect_timeout: float = 2.0,
    ) -> None:
        self.name = name
        self.attacker = attacker
        self.token = token
        self.endpoints = endpoints
        self.index = first % len(endpoints)
        self.dead_after = 3 * keepalive_seconds
        self.retry_ms = retry_ms
        self.connect_timeout = connect_timeout
        self.last_id: str | None = None
        self.first_position: int | None = None  # the id of the very first snapshot
        self.events: list[tuple[int, float, int]] = []  # (seq, wall arrival, session index)
        self.sessions: list[Session] = []
        self.refusals: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._rng = random.Random(name)
        self.task: asyncio.Task[None] | None = None

    # -- what the tests read --------------------------------------------------------------------------
    @property
    def connects(self) -> int:
        return len(self.sessions)

    @property
    def position(self) -> int:
        seq = sequence_of(self.last_id)
        return -1 if seq is None else seq

    @property
    def live(self) -> bool:
        return bool(self.sessions) and not self.sessions[-1].ended

    @property
    def host(self) -> str | None:
        return self.sessions[-1].host if self.live else None

    # -- running ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        refused_in_a_row = 0
        while not self._stop.is_set():
            address, port = self.endpoints[self.index]
            try:
                ended = await self._session(address, port)
            except asyncio.CancelledError:
                raise
            except Waited as exc:  # told to retry (a refusal that clears on its own): as EventSource does
                self.refusals[f"wait_{exc.status}"] += 1
                await self._sleep(exc.retry_ms / 1000)
                continue
            except Exception as exc:  # refused, reset, timeout, 429/503: the next host, at once
                self.refusals[_reason(exc)] += 1
                refused_in_a_row += 1
                self.index = (self.index + 1) % len(self.endpoints)
                if refused_in_a_row >= len(self.endpoints):
                    await self._sleep(min(0.1 * 2 ** (refused_in_a_row - len(self.endpoints)), 1.0))
                continue
            refused_in_a_row = 0
            # like a load balancer: any other host (the one that ended the stream may be going away)
            self.index = (self.index + self._rng.randrange(1, len(self.endpoints))) % len(self.endpoints)
            if ended == "eof":  # the server closed it, after a retry: hint when it drains or sheds us
                await self._sleep(self.retry_ms / 1000)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _session(self, address: str, port: int) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), self.connect_timeout)
        self._writer = writer
        session: Session | None = None
        try:
            lines = [
                f"GET {EVENT_PATH.format(self.attacker)}?token={self.token} HTTP/1.1",
                f"Host: {address}:{port}",
                "Accept: text/event-stream",
            ]
            if self.last_id is not None:
                lines.append(f"Last-Event-ID: {self.last_id}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.connect_timeout)
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                raise Refused(status)
            length = _content_length(head)
            if length is not None:  # the "retry later" answer: `retry:` and `event: unavailable`, then the end
                body = await asyncio.wait_for(reader.readexactly(length), self.connect_timeout)
                hint, answer = FrameParser(errors="strict").feed(body)
                assert hint.retry is not None and answer.event == "unavailable", body
                raise Waited(int(answer.json()["status"]), hint.retry)
            session = Session(f"{address}:{port}", time.time())
            self.sessions.append(session)
            await self._read_stream(reader, session, len(self.sessions) - 1)
            return session.end
        except Exception as exc:
            if session is not None:
                session.end = session.end or _reason(exc)
                if not session.ended:
                    session.ended = time.time()
                return session.end
            raise
        finally:
            if session is not None and self._stop.is_set() and not session.ended:
                session.ended, session.end = time.time(), "stopped"
            writer.close()
            self._writer = None

    async def _read_stream(self, reader: asyncio.StreamReader, session: Session, index: int) -> None:
        parser = FrameParser(errors="strict")
        replay_left = 0
        while True:
            try:
                chunk = await asyncio.wait_for(_read_chunk(reader), self.dead_after)
            except asyncio.TimeoutError:
                session.ended, session.end = time.time(), "silence"
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                chunk = None
            if chunk is None:
                session.ended, session.end = time.time(), "stopped" if self._stop.is_set() else "eof"
                return
            for frame in parser.feed(chunk):
                event, data, event_id, retry = frame.name, frame.data, frame.id, frame.retry
                if retry is not None:
                    self.retry_ms = retry
                    session.retry_hint = retry
                if event_id is not None:
                    self.last_id = event_id
                if data is None:
                    continue  # a keepalive (its id, if any, was kept above)
                if event == "snapshot":
                    body = json.loads(data)
                    if self.first_position is None and event_id is not None:
                        self.first_position = sequence_of(event_id)
                        session.opening = "snapshot"
                    elif body.get("resumed") is False:
                        session.opening = "rebuilt"
                        self.errors.append(f"session {index} on {session.host}: snapshot with resumed false")
                    else:
                        session.opening = "snapshot"
                        self.errors.append(f"session {index} on {session.host}: a second snapshot without resume")
                elif event == "resumed":
                    session.opening = "resumed"
                    session.replayed = replay_left = int(json.loads(data)["replayed"])
                elif event in ("error", "end"):
                    self.errors.append(f"session {index} on {session.host}: event {event} {data}")
                else:
                    seq = sequence_of(event_id)
                    if seq is None:
                        self.errors.append(f"session {index}: event without an id: {frame!r}")
                        continue
                    self.events.append((seq, time.time(), index))
                    session.events += 1
                    if replay_left:
                        replay_left -= 1


class Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class Waited(Exception):
    """The server's 200 "retry later" answer (a refusal that clears on its own): what status, how long."""

    def __init__(self, status: int, retry_ms: int) -> None:
        super().__init__(f"wait {status} for {retry_ms} ms")
        self.status = status
        self.retry_ms = retry_ms


def _content_length(head: bytes) -> int | None:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value.strip())
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return f"http_{exc.status}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
        return "reset"
    return f"error: {exc!r}"


async def _read_chunk(reader: asyncio.StreamReader) -> bytes | None:
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";")[0].strip(), 16)
    if size == 0:
        return None
    data = await reader.readexactly(size + 2)
    return data[:-2]


class Followers:
    """``count`` followers: follower ``i`` watches ``attackers[i % len]`` as user ``first_user + i // per_user``
    and starts on host ``i % hosts`` (or all on host ``start_on``)."""

    def __init__(
        self,
        cluster: Cluster,
        count: int,
        keepalive_seconds: float,
        per_user: int = 5,
        attackers: list[str] | None = None,
        first_user: int = 0,
        start_on: int | None = None,
        prefix: str = "f",
    ) -> None:
        attackers = attackers or cluster.seed_data.attackers
        users = cluster.seed_data.users[first_user:]
        endpoints = cluster.endpoints()
        needed = (count + per_user - 1) // per_user
        if needed > len(users):
            raise ValueError(f"{count} followers need {needed} users from user {first_user}; {len(users)} left")
        tokens = [cluster.token(u) for u in users[:needed]]
        self.all = [
            Follower(
                f"{prefix}{i}",
                attackers[i % len(attackers)],
                tokens[i // per_user],
                endpoints,
                keepalive_seconds,
                first=i if start_on is None else start_on,
            )
            for i in range(count)
        ]

    def __iter__(self) -> Any:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def start(self) -> None:
        for follower in self.all:
            follower.start()

    async def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def wait_live(self, timeout: float = 30.0) -> None:
        await self.wait(lambda: all(f.live and f.first_position is not None for f in self.all), timeout, "live")

    async def wait_position(self, seq: int, timeout: float = 30.0) -> None:
        """Until every follower's last event id (events and keepalives) is at ``seq`` or beyond."""
        await self.wait(
            lambda: all(f.position >= seq for f in self.all),
            timeout,
            f"every follower to reach id {seq} (behind: "
            + ", ".join(f"{f.name}@{f.position}" for f in self.all if f.position < seq)[:500]
            + ")",
        )

    async def stop(self) -> None:
        await asyncio.gather(*(f.stop() for f in self.all))

    def on(self, endpoint: str) -> list[Follower]:
        return [f for f in self.all if f.host == endpoint]


# -- checking and reporting ---------------------------------------------------------------------------


def exactness(followers: Iterable[Follower], truth: list[Stored]) -> list[str]:
    """Zero loss, zero duplicates: every stored sequence routed to a follower's attacker after its
    first snapshot arrived exactly once, in increasing order, and nothing else did. Returns problems."""
    by_attacker: dict[str, list[int]] = defaultdict(list)
    for item in truth:
        by_attacker[item.attacker].append(item.seq)
    problems = []
    for f in followers:
        if f.first_position is None:
            problems.append(f"{f.name}: never opened")
            continue
        expected = [seq for seq in by_attacker[f.attacker] if seq > f.first_position]
        got = [seq for seq, _, _ in f.events]
        counts = Counter(got)
        duplicates = sorted(seq for seq, c in counts.items() if c > 1)
        missing = sorted(set(expected) - set(counts))
        unexpected = sorted(set(counts) - set(expected))
        disorder = [(a, b) for a, b in zip(got, got[1:], strict=False) if b <= a]
        detail = []
        if missing:
            detail.append(f"missing {len(missing)}: {missing[:10]}")
        if duplicates:
            detail.append(f"duplicated {len(duplicates)}: {duplicates[:10]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)}: {unexpected[:10]}")
        if disorder:
            detail.append(f"out of order: {disorder[:5]}")
        detail.extend(f.errors[:5])
        if detail:
            sessions = "; ".join(
                f"#{i} {s.host} {s.opening or '-'}({s.replayed}) {s.started:.2f}-{s.ended:.2f} {s.end} ev={s.events}"
                for i, s in enumerate(f.sessions)
            )
            problems.append(f"{f.name} ({f.attacker}, from id {f.first_position}): {'; '.join(detail)} [{sessions}]")
    return problems


def reconnect_times(followers: Iterable[Follower]) -> list[float]:
    """Wall-clock starts of every stream after each follower's first."""
    return sorted(s.started for f in followers for s in f.sessions[1:])


def peak_per_second(times: list[float], window: float = 1.0) -> int:
    """The most events in any sliding window of ``window`` seconds."""
    peak, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return peak


def truth_problems(publisher: Publisher, truth: list[Stored]) -> list[str]:
    """The stream holds every acknowledged publish once, at the sequence its ack gave."""
    at = {item.seq: item for item in truth}
    stored = Counter(item.n for item in truth if item.n >= 0)
    problems = [f"event {n} stored {c} times" for n, c in stored.items() if c > 1]
    for n, seq in publisher.acked.items():
        item = at.get(seq)
        if item is None or item.n != n:
            problems.append(f"event {n} acknowledged at {seq} but the stream has {item} there")
    return problems


__all__ = [
    "Cluster",
    "Follower",
    "Followers",
    "Host",
    "NatsCluster",
    "Publisher",
    "SECRET",
    "Stored",
    "die_with_parent",
    "exactness",
    "peak_per_second",
    "read_stream",
    "reconnect_times",
    "truth_problems",
]
