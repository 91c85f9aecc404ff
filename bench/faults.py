"""The fault table (SPEC §16): each fault on a fresh cluster under steady publishing, every client's events
accounted for, recovery time, and what /readyz said.

    python bench/faults.py [--only nats-down,deletion,...] [--streams 5000] [--quick] [--output bench/RESULTS.md]

Each scenario starts the cluster of tests/cluster (clusterkit.py: 3 NATS nodes with JetStream, stream
replicas 3 — one NATS server for ``wipe-single``; one MongoDB-wire server; 3 lurestream hosts on
127.0.0.2-4), opens ``--streams`` SSE streams with bench/cluster_loadgen.c (5 per user — the cap — each
user's five on one host; they reconnect like EventSource: ``Last-Event-ID`` sent back verbatim, ``retry:``,
another host when one ends the stream or refuses, the "retry later" answer waited), publishes ``--rate``
events/s round-robin over ``--attackers`` attackers through JetStream (a ``Nats-Msg-Id`` per event, retried
until stored: clusterkit.Publisher) for ``--warm`` s, injects the fault, publishes ``--after`` s more after
it clears, stops publishing and waits (at most ``--grace`` s) until every stream has seen the stream's last
id, then reads the stream back (the truth) and checks every client against it. Scenarios:

- ``nats-down``: every NATS node SIGKILLed (``--nats-down-signal stop``: SIGSTOPped), ``--nats-down`` s (20),
  then started again on the same stores (continued);
- ``deletion``: the JetStream stream deleted and at once re-created (``lurestream.jetstream.ensure_stream``,
  what ``lurestream init-nats`` runs) while events flow;
- ``wipe``: the stream leader's NATS node SIGKILLed, its JetStream store directory removed, the node started
  again (R3: it resyncs from the others); ``wipe-single``: the same on a single NATS server (R1): the
  stream is gone and the hosts re-create it;
- in ``deletion`` and ``wipe-single`` some clients are away across the re-creation: just before the fault a
  third of the streams is closed by the load generator (a network blip) and reconnects ``--blip-ms``' first
  delay (4 s) later with its old id; another third ``--second-blip`` s (0.3) after the fault, back after the
  second delay (0.5 s), racing the hosts' notice of the new stream;
- ``pause``: the NATS node holding h1's connection SIGSTOPped ``--pause`` s (30), then continued;
- ``mongo``: h1 SIGTERMed (drain ``--drain`` s): its streams reconnect to h2/h3 (a reconnect storm) and
  ``--mongo-kill-after`` s after the SIGTERM MongoDB is SIGKILLed; it is started again (same files)
  ``--mongo-down`` s later, and h1 after it;
- ``sigkill``: h1 SIGKILLed, not restarted; its users were at their cap (5) on it, so their reconnects
  wait out the dead process's slots (``CAP_LEASE_SECONDS``, 10);
- ``fds``: h1's open-files limit lowered (``prlimit``) to its open descriptors + ``--fd-headroom``, then idle
  connections opened to it (re-opened as it times them out) until accept() fails, for ``--fd-seconds`` s;
  then they are closed. A fresh stream is tried on h1 every second throughout.

Per client stream and event (the JetStream sequence of an event of that client's attacker, after its first
snapshot; after a re-creation the new stream's events all count, and the old stream's up to the deletion):
**delivered** once or more; **duplicated** more than once; **announced** not delivered but inside a gap the
client was told about — from the id it sent to the position of a ``snapshot`` with ``"resumed": false``
that answered it; **lost silently** neither; **stale** an event of an older stream epoch after one of a
newer, a replayed event of another epoch than the id resumed from, or ``resumed`` answered (by a host whose
current epoch we know from its log) to an id of another epoch. **Recovery**: from the moment the fault
clears (the fault itself for the one-shot ones: deletion, wipes, SIGKILL) until every client has received an
event published after that moment (so it includes up to ``attackers / rate`` s of publishing spacing).
**/readyz**: every host polled every 0.2 s (1 s timeout) from before the fault to the end; the states other
than ``200 ready`` with the bus connected, events ``ok`` and cap ``cluster``, per host and for how long.

Prints Markdown; ``--output FILE`` replaces (or appends) the section "## Faults (SPEC §16)" in FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
sys.path.insert(0, HERE)

import nats  # noqa: E402
from cluster import END, EVENT, OPENING, RECORD, REFUSED, SESSION, build_loadgen  # noqa: E402
from clusterkit import Cluster, Host, NatsNode, Publisher, Stored, die_with_parent, free_ports, read_stream  # noqa: E402

from lurestream import eventids  # noqa: E402
from lurestream.config import config_from  # noqa: E402
from lurestream.jetstream import ensure_stream  # noqa: E402
from lurestream.localservices import nats_server_binary, wait_port  # noqa: E402

SCENARIOS = ["nats-down", "deletion", "wipe", "wipe-single", "pause", "mongo", "sigkill", "fds"]
LABELS = {
    "nats-down": "whole NATS cluster down {nats_down:g} s ({nats_down_signal})",
    "deletion": "stream deleted and re-created",
    "wipe": "store wiped: the stream leader's node (R3)",
    "wipe-single": "store wiped: single NATS server (R1)",
    "pause": "NATS node of h1 paused {pause:g} s",
    "mongo": "MongoDB killed in a reconnect storm, {mongo_down:g} s",
    "sigkill": "host h1 SIGKILLed",
    "fds": "descriptors exhausted on h1, {fd_seconds:g} s",
}
NORMAL = "200"  # ready, the bus connected, events ok, the cap cluster-wide
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) (\S+): (.*)$")
RECREATED = re.compile(r"JetStream stream \S+ was re-created \(epoch (\w+), was (\w*)\)")


def log_time(date: str, millis: str) -> float:
    return time.mktime(time.strptime(date, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def spawn(service: Any) -> None:
    """Start a LocalService's process from this thread without waiting for its port (what
    ``LocalService.start`` does before ``wait_port``): a NATS node or MongoDB started again mid-run."""
    with open(service.log_path, "ab") as log:
        service.proc = subprocess.Popen(
            service.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
            cwd=service.workdir,
        )


async def wait_service(service: Any, timeout: float = 30.0) -> None:
    await asyncio.to_thread(wait_port, service.port, timeout, service.proc, service.name)


class NatsSingle:
    """One NATS server with JetStream (no cluster): what ``wipe-single`` runs on, in NatsCluster's shape."""

    def __init__(self, workdir: str) -> None:
        port, monitor = free_ports(2)
        home = os.path.join(workdir, "nats-s1")
        os.makedirs(home, exist_ok=True)
        conf = os.path.join(home, "s1.conf")
        with open(conf, "w") as fh:
            fh.write(f'server_name: s1\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: "{home}/store" }}\n')
        argv = [nats_server_binary(), "-c", conf, "-m", str(monitor)]
        self.nodes = [NatsNode("nats-s1", "nats", argv, port, home, {"monitor": monitor})]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> NatsSingle:
        for node in self.nodes:
            node.start(timeout)
        return self

    def running(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- the load generator ---------------------------------------------------------------------------------


class Loadgen:
    """bench/cluster_loadgen.c as a child: READY awaited, IDS and EPOCH lines read, records at the end."""

    def __init__(
        self, binary: str, cluster: Cluster, paths: list[str], work: str, ramp: float, keepalive: float, blip_ms: str
    ) -> None:
        path_file = os.path.join(work, "paths.txt")
        with open(path_file, "w") as fh:
            fh.write("\n".join(paths) + "\n")
        self.records_path = os.path.join(work, "records.bin")
        hosts = ",".join(h.address for h in cluster.hosts)
        argv = [binary, hosts, str(cluster.hosts[0].port), path_file, str(len(paths)), self.records_path]
        argv += [str(ramp), str(keepalive), "512", "5", blip_ms]  # each user's 5 streams start on one host
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent
        )
        self.ready = threading.Event()
        self.last_status = ""
        self.ids: tuple[int, int, int] = (0, -1, 0)  # streaming, lowest seq on the newest epoch, streams behind
        self.ids_at = 0.0
        self.blips: list[str] = []
        threading.Thread(target=self._watch, daemon=True).start()

    def blip(self) -> None:
        """Drop the next third of the streams on the client's side (see cluster_loadgen.c)."""
        self.proc.send_signal(signal.SIGUSR2)

    def _watch(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip()
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith("STATUS"):
                self.last_status = line
                continue
            elif line.startswith("BLIP"):
                self.blips.append(line)
            elif line.startswith("IDS"):
                fields = dict(part.split("=") for part in line.split()[1:])
                self.ids = (int(fields["streaming"]), int(fields["min"]), int(fields["behind"]))
                self.ids_at = time.time()
                continue
            print(f"  loadgen: {line}", file=sys.stderr, flush=True)

    async def caught_up(self, count: int, seq: int, timeout: float) -> float | None:
        """Until every stream is open and its last id is on the newest epoch at ``seq`` or beyond; the
        seconds it took, or None if not within ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            asked = time.time()
            self.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.5)
            if self.ids_at < asked:
                continue
            streaming, lowest, behind = self.ids
            if streaming == count and not behind and lowest >= seq:
                return time.monotonic() - t0
        return None

    def finish(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def records(self) -> list[tuple[int, int, int, int, int, int, float, float]]:
        with open(self.records_path, "rb") as fh:
            return list(RECORD.iter_unpack(fh.read()))


# -- /readyz, polled ---------------------------------------------------------------------------------------


def ready_state(address: str, port: int, timeout: float) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/readyz", timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "no answer (timeout)"
        return f"no answer ({type(reason).__name__})"
    except TimeoutError:
        return "no answer (timeout)"
    except OSError as exc:
        return f"no answer ({type(exc).__name__})"
    try:
        body = json.loads(raw)
    except ValueError:
        return f"{status} (not JSON)"
    extras = []
    if body.get("store") != "ok":
        extras.append(f"store {body.get('store')}")
    if body.get("bus") != "connected":
        extras.append(f"bus {body.get('bus')}")
    if body.get("cap") != "cluster":
        extras.append(f"cap {body.get('cap')}")
    if status == 200:
        if body.get("events") != "ok":
            extras.append(f"events {body.get('events')}")
        return (
            "200"
            + (f" ({', '.join(extras)})" if extras else "")
            + ("" if body.get("status") == "ready" else " not ready?")
        )
    detail = str(body.get("detail")).removeprefix("not ready: ").removesuffix(" unavailable")
    extras = [e for e in extras if e.split()[0] not in detail]  # what the detail names already
    return f"{status} {detail}" + (f" ({', '.join(extras)})" if extras else "")


class ReadyPoller:
    """/readyz of every host every ``interval`` s, one thread per host; ``timeline`` per host name."""

    def __init__(self, hosts: list[Host], interval: float = 0.2, timeout: float = 2.5) -> None:
        self.hosts = hosts
        self.interval = interval
        self.timeout = timeout
        self.samples: dict[str, list[tuple[float, str]]] = {h.name: [] for h in hosts}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(h,), daemon=True) for h in hosts]

    def start(self) -> ReadyPoller:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _run(self, host: Host) -> None:
        while not self._stop.is_set():
            t = time.time()
            self.samples[host.name].append((t, ready_state(host.address, host.port, self.timeout)))
            self._stop.wait(max(0.0, t + self.interval - time.time()))

    def segments(self, end: float) -> dict[str, list[tuple[float, float, str]]]:
        """Per host: (from, to, state) with consecutive equal samples merged."""
        out: dict[str, list[tuple[float, float, str]]] = {}
        for name, samples in self.samples.items():
            segs: list[tuple[float, float, str]] = []
            for i, (t, state) in enumerate(samples):
                nxt = samples[i + 1][0] if i + 1 < len(samples) else end
                if segs and segs[-1][2] == state:
                    segs[-1] = (segs[-1][0], nxt, state)
                else:
                    segs.append((t, nxt, state))
            out[name] = segs
        return out


def readyz_summary(segments: dict[str, list[tuple[float, float, str]]], origin: float) -> tuple[str, list[str]]:
    """The table's cell (every state but the normal one, with each host's total time in it) and a
    timeline per host for the notes (times from ``origin``, the fault)."""
    totals: dict[str, dict[str, float]] = defaultdict(dict)
    for name, segs in segments.items():
        for start, end, state in segs:
            if state != NORMAL:
                totals[state][name] = totals[state].get(name, 0.0) + (end - start)
    cell = []
    for state, hosts in totals.items():
        cell.append(f"{state}: " + ", ".join(f"{h} {s:.1f} s" for h, s in sorted(hosts.items())))
    timelines = []
    for name, segs in segments.items():
        parts = [f"{start - origin:+.1f} s {state}" for start, _end, state in segs]
        timelines.append(f"{name}: " + " → ".join(parts))
    return ("; ".join(cell) or f"{NORMAL}, every host, throughout"), timelines


# -- a scenario's run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    label: str
    args: argparse.Namespace
    cluster: Cluster
    attackers: list[str]
    streams: int
    work: str
    probe_tokens: list[str] = field(default_factory=list)
    epochs: list[str] = field(default_factory=list)  # stream epochs in creation order
    old_truth: dict[str, list[Stored]] = field(default_factory=dict)  # epoch -> events, streams since gone
    truth: list[Stored] = field(default_factory=list)  # the stream at the end
    fault_start: float = 0.0
    fault_clear: float = 0.0
    publish_end: float = 0.0
    caught_up: float | None = None
    notes: list[str] = field(default_factory=list)
    publisher: dict[str, Any] = field(default_factory=dict)
    loadgen: dict[str, Any] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)
    ready: ReadyPoller | None = None
    acked: dict[int, int] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)
    loadgen_proc: Any = None
    at_end: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def note(self, text: str) -> None:
        print(f"  [{self.name}] {text}", file=sys.stderr, flush=True)
        self.notes.append(text)


async def admin(run: Run) -> Any:
    return await nats.connect(
        servers=run.cluster.nats.urls,
        name="faults-admin",
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        error_cb=_quiet,
    )


async def _quiet(exc: Exception) -> None:
    return None


async def stream_info(run: Run, timeout: float = 30.0) -> Any:
    """The stream's info (retried while the cluster settles), or None if it does not exist by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await asyncio.wait_for(admin(run), 5)
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.5)
            continue
        try:
            return await nc.jetstream().stream_info(run.cluster.stream)
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
    run.note(f"stream info unavailable after {timeout:.0f} s: {last!r}")
    return None


def epoch_of(run: Run, info: Any) -> str:
    return eventids.stream_epoch(run.cluster.stream, info.created)


async def old_stream_truth(run: Run) -> tuple[str, list[Stored]]:
    """The stream as it is now (before it goes away): its epoch and events."""
    info = await stream_info(run)
    events = await read_stream(run.cluster.nats.urls, run.cluster.stream, timeout=60)
    return epoch_of(run, info), events


async def scenario(run: Run, binary: str, fault: Callable[[Run, Publisher], Awaitable[None]]) -> None:
    args = run.args
    cluster = run.cluster
    users = cluster.seed_data.users
    tokens = [cluster.token(u, ttl=6 * 3600) for u in users[: (run.streams + 4) // 5]]
    run.probe_tokens = [cluster.token(u, ttl=6 * 3600) for u in users[(run.streams + 4) // 5 :]]
    paths = [
        f"/api/v1/attackers/{run.attackers[i % len(run.attackers)]}/events?token={tokens[i // 5]}"
        for i in range(run.streams)
    ]
    info = await stream_info(run)
    run.epochs.append(epoch_of(run, info))
    loadgen = Loadgen(binary, cluster, paths, run.work, args.ramp, args.keepalive, args.blip_ms)
    run.loadgen_proc = loadgen
    try:
        timeout = run.streams / max(args.ramp, 1) + 60
        if not await asyncio.to_thread(loadgen.ready.wait, timeout):
            raise SystemExit(f"the load generator did not open every stream in {timeout:.0f} s: {loadgen.last_status}")
        await asyncio.sleep(1)
        pub = Publisher(cluster.nats.urls, run.attackers, args.rate, give_up=120, concurrency=args.publishers)
        await pub.connect()
        pub.start()
        run.ready = ReadyPoller(cluster.hosts).start()
        for host in cluster.hosts:
            run.log_offsets[host.name] = os.path.getsize(host.log_path)
        await asyncio.sleep(args.warm)
        run.fault_start = run.fault_clear = time.time()
        print(f"[{run.name}] fault", file=sys.stderr, flush=True)
        await fault(run, pub)
        print(f"[{run.name}] fault cleared; publishing {args.after:g} s more", file=sys.stderr, flush=True)
        await asyncio.sleep(max(0.0, run.fault_clear + args.after - time.time()))
        await pub.stop()
        run.publish_end = time.time()
        run.acked = dict(pub.acked)
        run.publisher = {
            "acked": len(pub.acked),
            "retries": dict(pub.retries),
            "recognised duplicates": pub.duplicates,
            "publishes that needed retries": len(pub.stalls),
            "longest publish s": round(max((s for _, s in pub.stalls), default=0.0), 1),
        }
        await pub.close()
        info = await stream_info(run)
        last = int(info.state.last_seq) if info is not None else 0
        if info is not None and epoch_of(run, info) not in run.epochs:
            run.epochs.append(epoch_of(run, info))
        run.caught_up = await loadgen.caught_up(run.streams, last, args.grace)
        for hook in run.at_end:
            await hook()
        run.ready.stop()
        if info is not None:
            run.truth = await read_stream(cluster.nats.urls, cluster.stream, timeout=120)
        run.loadgen = await asyncio.to_thread(loadgen.finish)
        if loadgen.blips:
            run.note("blips: " + "; ".join(loadgen.blips))
        run.records = loadgen.records()
    finally:
        if run.ready is not None:
            run.ready.stop()
        if loadgen.proc.poll() is None:
            loadgen.proc.kill()


# -- the faults -----------------------------------------------------------------------------------------------


async def fault_nats_down(run: Run, pub: Publisher) -> None:
    nodes = run.cluster.nats.nodes
    stop = run.args.nats_down_signal == "stop"
    run.fault_start = time.time()
    for node in nodes:
        assert node.proc is not None
        if stop:
            node.proc.send_signal(signal.SIGSTOP)
        else:
            node.proc.kill()
    for node in nodes:
        if not stop:
            await asyncio.to_thread(node.proc.wait, 10)
    await asyncio.sleep(max(0.0, run.fault_start + run.args.nats_down - time.time()))
    for node in nodes:
        if stop:
            node.proc.send_signal(signal.SIGCONT)
        else:
            spawn(node)
    run.fault_clear = time.time()
    if not stop:
        for node in nodes:
            await wait_service(node)
    run.note(
        f"all {len(nodes)} NATS nodes {'SIGSTOPped' if stop else 'SIGKILLed'} for "
        f"{run.fault_clear - run.fault_start:.1f} s"
    )


async def fault_deletion(run: Run, pub: Publisher) -> None:
    epoch, events = await old_stream_truth(run)
    run.old_truth[epoch] = events
    nc = await admin(run)
    try:
        js = nc.jetstream()
        run.loadgen_proc.blip()  # a third of the clients away across the re-creation
        await asyncio.sleep(0.05)
        run.fault_start = run.fault_clear = time.time()
        await js.delete_stream(run.cluster.stream)
        deleted = time.time()
        config = config_from(run.cluster.host_settings())
        outcome, info = await ensure_stream(js, config)
        created = time.time()
    finally:
        await nc.close()
    run.epochs.append(epoch_of(run, info))
    await asyncio.sleep(max(0.0, run.fault_start + run.args.second_blip - time.time()))
    run.loadgen_proc.blip()  # another third, racing the hosts' notice of the new stream
    run.note(
        f"stream deleted ({(deleted - run.fault_start) * 1000:.0f} ms), then ensure_stream: {outcome} "
        f"{(created - deleted) * 1000:.0f} ms later (epoch {epoch} → {epoch_of(run, info)}); "
        f"{len(events):,} events read from the old stream just before"
    )


def stream_leader(run: Run, info: Any) -> NatsNode:
    leader = info.cluster.leader if info is not None and info.cluster is not None else None
    for node in run.cluster.nats.nodes:
        if node.server_name == leader:
            return node
    return run.cluster.nats.nodes[0]


async def node_stream_states(run: Run) -> str:
    parts = []
    for node in run.cluster.nats.nodes:
        try:
            jsz = await asyncio.to_thread(node.jsz)
        except Exception as exc:
            parts.append(f"{node.server_name}: {type(exc).__name__}")
            continue
        streams = [
            s
            for acc in jsz.get("account_details") or []
            for s in acc.get("stream_detail") or []
            if s.get("name") == run.cluster.stream
        ]
        if not streams:
            parts.append(f"{node.server_name}: no replica")
            continue
        state = streams[0].get("state") or {}
        cluster = streams[0].get("cluster") or {}
        parts.append(
            f"{node.server_name}: {state.get('messages')} messages, "
            f"seq {state.get('first_seq')}–{state.get('last_seq')}"
            + (" (leader)" if cluster.get("leader") == node.server_name else "")
        )
    return "; ".join(parts)


async def fault_wipe(run: Run, pub: Publisher) -> None:
    single = isinstance(run.cluster.nats, NatsSingle)
    info = await stream_info(run)
    node = run.cluster.nats.nodes[0] if single else stream_leader(run, info)
    if single:
        epoch, events = await old_stream_truth(run)
        run.old_truth[epoch] = events
    store = os.path.join(node.workdir, "store")
    assert node.proc is not None
    if single:
        run.loadgen_proc.blip()  # a third of the clients away across the re-creation
        await asyncio.sleep(0.05)
    run.fault_start = run.fault_clear = time.time()
    node.proc.kill()
    await asyncio.to_thread(node.proc.wait, 10)
    shutil.rmtree(store, ignore_errors=True)
    spawn(node)
    restarted = time.time()
    await wait_service(node)
    run.note(
        f"{node.server_name} ({'the only server' if single else 'stream leader'}) SIGKILLed, {store} removed, started "
        f"again {restarted - run.fault_start:.1f} s later"
    )
    if single:
        created = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and created is None:
            nc = await admin(run)
            try:
                created = await nc.jetstream().stream_info(run.cluster.stream)
            except Exception:
                await asyncio.sleep(0.2)
            finally:
                await nc.close()
        if created is None:
            config = config_from(run.cluster.host_settings())
            nc = await admin(run)
            try:
                _outcome, created = await ensure_stream(nc.jetstream(), config)
            finally:
                await nc.close()
            run.note("no host re-created the stream within 20 s: ensure_stream (init-nats) did")
        else:
            run.note(
                f"the stream existed again {time.time() - restarted:.1f} s after the restart (re-created by a host)"
            )
        run.epochs.append(epoch_of(run, created))
        await asyncio.sleep(max(0.0, run.fault_start + run.args.second_blip - time.time()))
        run.loadgen_proc.blip()  # another third, racing the hosts' notice of the new stream
    else:
        await asyncio.sleep(3)
        run.note(f"the stream's replicas 3 s after the restart: {await node_stream_states(run)}")

        async def replicas_at_end() -> None:
            run.note(f"the stream's replicas at the end: {await node_stream_states(run)}")

        run.at_end.append(replicas_at_end)


async def fault_pause(run: Run, pub: Publisher) -> None:
    h1 = run.cluster.hosts[0]
    node = await asyncio.to_thread(run.cluster.nats_node_of, h1)
    info = await stream_info(run)
    roles = []
    if info is not None and info.cluster is not None and info.cluster.leader == node.server_name:
        roles.append("stream leader")
    with contextlib.suppress(Exception):
        if await asyncio.to_thread(run.cluster.nats.meta_leader) == node.server_name:
            roles.append("meta leader")
    assert node.proc is not None
    run.fault_start = time.time()
    node.proc.send_signal(signal.SIGSTOP)
    moved = None
    others = [n for n in run.cluster.nats.nodes if n is not node]
    while time.time() < run.fault_start + run.args.pause:
        if moved is None:
            for other in others:
                try:
                    conns = await asyncio.to_thread(other.connz)
                except Exception:
                    continue
                if any(c.get("name") == h1.nats_connection_name for c in conns):
                    moved = (time.time() - run.fault_start, other.server_name)
                    break
        await asyncio.sleep(0.5)
    node.proc.send_signal(signal.SIGCONT)
    run.fault_clear = time.time()
    run.note(
        f"{node.server_name} ({', '.join(roles) or 'a follower'}) held h1's connection; SIGSTOPped "
        f"{run.fault_clear - run.fault_start:.1f} s; h1's connection "
        + (
            f"was on {moved[1]} {moved[0]:.1f} s after the pause began"
            if moved
            else "did not leave it during the pause"
        )
    )


async def fault_mongo(run: Run, pub: Publisher) -> None:
    args = run.args
    h1 = run.cluster.hosts[0]
    mongo = run.cluster.mongo
    run.fault_start = time.time()
    h1.signal(signal.SIGTERM)
    await asyncio.sleep(args.mongo_kill_after)
    assert mongo.proc is not None
    mongo.proc.kill()
    killed = time.time()
    await asyncio.to_thread(mongo.proc.wait, 10)
    await asyncio.sleep(max(0.0, killed + args.mongo_down - time.time()))
    spawn(mongo)
    run.fault_clear = time.time()
    await wait_service(mongo)
    status = await asyncio.to_thread(h1.wait, 30)
    await h1.start_async(60)
    run.note(
        f"h1 SIGTERMed (drain {args.drain:g} s); MongoDB SIGKILLed {killed - run.fault_start:.1f} s later and started "
        f"again after {run.fault_clear - killed:.1f} s; h1 exited {status}, ready again "
        f"{time.time() - run.fault_clear:.1f} s after MongoDB"
    )


async def fault_sigkill(run: Run, pub: Publisher) -> None:
    h1 = run.cluster.hosts[0]
    run.fault_start = run.fault_clear = time.time()
    await asyncio.to_thread(h1.kill)
    run.note(f"h1 SIGKILLed (pid {h1.pid}); not restarted")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def probe_stream(run: Run, host: Host, token: str, timeout: float = 3.0) -> str:
    """A fresh stream on ``host``: "ok" once its snapshot arrived, else why not."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.address, host.port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"connect: {type(exc).__name__}"
    try:
        request = (
            f"GET /api/v1/attackers/{run.attackers[0]}/events?token={token} HTTP/1.1\r\nHost: {host.address}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        writer.write(request.encode())
        seen = b""
        deadline = time.monotonic() + timeout
        while b"event: snapshot" not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return "no answer (timeout)" if not seen else "no snapshot (timeout)"
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                first = seen.split(b"\r\n", 1)[0].decode(errors="replace")
                return f"closed: {first}" if seen else "closed"
            seen += chunk
        return "ok"
    except asyncio.TimeoutError:
        return "no answer (timeout)"
    except OSError as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def fault_fds(run: Run, pub: Publisher) -> None:
    args = run.args
    h1 = run.cluster.hosts[0]
    assert h1.pid is not None
    before = open_fds(h1.pid)
    limit = before + args.fd_headroom
    subprocess.run(["prlimit", "--pid", str(h1.pid), f"--nofile={limit}:{limit}"], check=True)
    stop = asyncio.Event()
    counts: Counter[str] = Counter()
    held: set[asyncio.StreamWriter] = set()
    probes: list[tuple[float, str]] = []

    async def hoard() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(h1.address, h1.port), 2)
            except (OSError, asyncio.TimeoutError):
                counts["connect failed"] += 1
                await asyncio.sleep(0.2)
                continue
            counts["opened"] += 1
            held.add(writer)
            try:
                stopping = asyncio.ensure_future(stop.wait())
                reading = asyncio.ensure_future(reader.read(4096))
                await asyncio.wait({stopping, reading}, return_when=asyncio.FIRST_COMPLETED)
                if reading.done() and not stop.is_set():
                    data = reading.result() if not reading.exception() else b""
                    counts[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"] += 1
                for task in (stopping, reading):
                    task.cancel()
            except OSError:
                counts["reset"] += 1
            finally:
                held.discard(writer)
                writer.close()

    async def probe() -> None:
        n = 0
        while True:
            t = time.time()
            token = run.probe_tokens[n % len(run.probe_tokens)]
            n += 1
            probes.append((t, await probe_stream(run, h1, token)))
            await asyncio.sleep(max(0.0, t + 1.0 - time.time()))

    prober = asyncio.ensure_future(probe())
    run.fault_start = time.time()
    hoarders = [asyncio.ensure_future(hoard()) for _ in range(args.fd_headroom + args.fd_extra)]
    peak = before
    while time.time() < run.fault_start + args.fd_seconds:
        await asyncio.sleep(0.5)
        peak = max(peak, open_fds(h1.pid))
    stop.set()
    for writer in list(held):
        writer.close()
    run.fault_clear = time.time()
    await asyncio.gather(*hoarders, return_exceptions=True)
    while time.time() < run.fault_clear + 20:
        if any(t >= run.fault_clear and outcome == "ok" for t, outcome in probes):
            break
        await asyncio.sleep(0.2)
    prober.cancel()
    await asyncio.gather(prober, return_exceptions=True)
    during = Counter(o for t, o in probes if run.fault_start <= t < run.fault_clear)
    first_ok = next((t for t, o in probes if t >= run.fault_clear and o == "ok"), None)
    run.note(
        f"h1 had {before} descriptors open; limit set to {limit}:{limit}; {args.fd_headroom + args.fd_extra} idle "
        f"connections held (re-opened when closed) for {run.fault_clear - run.fault_start:.1f} s: "
        f"{dict(counts)}; h1's descriptors peaked at {peak}; fresh streams on h1 during: {dict(during)}; the first "
        + (
            f"fresh stream after: {first_ok - run.fault_clear:.1f} s after the connections were closed"
            if first_ok
            else "fresh stream after: none within 20 s"
        )
    )


FAULTS: dict[str, Callable[[Run, Publisher], Awaitable[None]]] = {
    "nats-down": fault_nats_down,
    "deletion": fault_deletion,
    "wipe": fault_wipe,
    "wipe-single": fault_wipe,
    "pause": fault_pause,
    "mongo": fault_mongo,
    "sigkill": fault_sigkill,
    "fds": fault_fds,
}


# -- the accounting -----------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    label: str
    streams: int
    published: int
    expected: int = 0
    delivered: int = 0
    duplicated: int = 0
    announced: int = 0
    lost: int = 0
    stale: int = 0
    recovery: str = ""
    readyz: str = ""
    notes: list[str] = field(default_factory=list)


def host_epochs(run: Run) -> dict[int, list[tuple[float, str]]]:
    """Per host index: (from, epoch) as its log says (the epoch at the start, then each re-creation noticed)."""
    out: dict[int, list[tuple[float, str]]] = {}
    for index, host in enumerate(run.cluster.hosts):
        timeline = [(0.0, run.epochs[0])]
        for line in host_log_lines(run, host):
            m = LOG_LINE.match(line)
            if m and (r := RECREATED.search(m.group(5))):
                timeline.append((log_time(m.group(1), m.group(2)), r.group(1)))
        out[index] = timeline
    return out


def host_log_lines(run: Run, host: Host) -> list[str]:
    try:
        with open(host.log_path, errors="replace") as fh:
            fh.seek(run.log_offsets.get(host.name, 0))
            return fh.read().splitlines()
    except OSError:
        return []


def log_summary(run: Run, top: int = 6) -> list[str]:
    """The hosts' distinct warnings and errors during the scenario (numbers masked), most frequent first."""
    seen: Counter[str] = Counter()
    example: dict[str, str] = {}
    hosts: dict[str, set[str]] = defaultdict(set)
    for host in run.cluster.hosts:
        for line in host_log_lines(run, host):
            m = LOG_LINE.match(line)
            if not m or m.group(3) not in ("WARNING", "ERROR", "CRITICAL"):
                if line.startswith("Traceback") or line.startswith("----"):
                    continue
                continue
            text = f"{m.group(3)} {m.group(4)}: {m.group(5)}"
            key = re.sub(r"\d+(\.\d+)?", "N", text)[:160]
            seen[key] += 1
            example.setdefault(key, text[:300])
            hosts[key].add(host.name)
    return [f"`{example[k]}` (×{n}, {', '.join(sorted(hosts[k]))})" for k, n in seen.most_common(top)]


def analyse(run: Run) -> Row:
    args = run.args
    row = Row(run.name, run.label, run.streams, 0)
    summary_epochs: list[str] = list(run.loadgen.get("epochs", []))
    known = list(run.epochs)
    for e in summary_epochs:
        if e not in known:
            known.append(e)
            row.notes.append(f"clients saw epoch {e}, which the bench never saw the stream have")
    rank_of = {i + 1: known.index(e) for i, e in enumerate(summary_epochs)}

    # the truth per (epoch rank, attacker): the stream at the end, and the streams gone before it
    truth: dict[str, list[Stored]] = dict(run.old_truth)
    final_epoch = run.epochs[-1]
    truth[final_epoch] = run.truth
    final_ns = {item.n for item in run.truth}
    for epoch, events in run.old_truth.items():  # published after the read, before the stream went away
        have = {item.seq for item in events}
        seqs = sorted(seq for n, seq in run.acked.items() if n not in final_ns and seq not in have)
        by_seq = {seq: n for n, seq in run.acked.items() if n not in final_ns}
        for seq in seqs:
            n = by_seq[seq]
            events.append(Stored(seq, run.attackers[n % len(run.attackers)], n, 0.0))
        if seqs:
            row.notes.append(f"{len(seqs)} events of the old stream (epoch {epoch}) known from their acks only")
    row.published = sum(len(v) for v in truth.values())
    stored_ns = Counter(item.n for events in truth.values() for item in events)
    missing_acked = [n for n in run.acked if n not in stored_ns]
    if missing_acked:
        row.notes.append(f"**{len(missing_acked)} acknowledged publishes are in no stream** (e.g. {missing_acked[:5]})")
    by_key: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for epoch, events in truth.items():
        rank = known.index(epoch) if epoch in known else len(known)
        for item in events:
            by_key[(rank, item.attacker)].append((item.seq, item.ts))
    timelines = host_epochs(run)

    def host_epoch_at(host: int, t: float) -> str:
        current = run.epochs[0]
        for since, epoch in timelines.get(host, []):
            if since <= t + 0.05:
                current = epoch
        return current

    per_conn: dict[int, list[Any]] = defaultdict(list)
    for rec in run.records:
        per_conn[rec[4]].append(rec)
    waits: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    openings: Counter[str] = Counter()
    unexpected = never_opened = not_reached = not_recovered = late_resumes = late_unnoticed = 0
    recoveries: list[tuple[float, int]] = []
    silences: list[tuple[float, int]] = []
    lost_examples: list[str] = []
    stale_examples: list[str] = []
    back_after: list[float] = []  # sigkill: h1's streams, their first 200 after the fault
    window_end = run.publish_end
    for conn in range(run.streams):
        recs = per_conn.get(conn, [])
        attacker = run.attackers[conn % len(run.attackers)]
        start: tuple[int, int] | None = None
        top: tuple[int, int] = (-1, -1)
        sent: tuple[int, int] | None = None
        sent_epoch = ""
        resumed_from: tuple[int, int] | None = None
        gaps: list[tuple[tuple[int, int], tuple[int, int]]] = []
        got: Counter[tuple[int, int]] = Counter()
        connected = False
        first_after: float | None = None
        arrivals: list[float] = []
        first_host: int | None = None
        session_after: float | None = None
        for kind, flags, host, eidx, _conn, seq, t1, t2 in recs:
            pos = (rank_of.get(eidx, -1), seq) if eidx else None
            if kind == SESSION:
                connected = True
                sent = pos
                sent_epoch = summary_epochs[eidx - 1] if eidx else ""
                resumed_from = None
                if first_host is None:
                    first_host = host
                elif session_after is None and t2 >= run.fault_start:
                    session_after = t2
            elif kind == OPENING:
                if flags == 0:
                    openings["first snapshot"] += 1
                    start = pos
                    if pos is not None:
                        top = max(top, pos)
                elif flags == 2:
                    openings["snapshot resumed:false"] += 1
                    if pos is not None:
                        gaps.append((sent or start or (-1, -1), pos))
                        top = max(top, pos)
                elif flags == 1:
                    openings["resumed"] += 1
                    resumed_from = sent
                    serving = host_epoch_at(host, t1)
                    if sent_epoch and len(run.epochs) > 1 and sent_epoch != run.epochs[-1] and t1 >= run.fault_start:
                        late_resumes += 1  # an old stream's id resumed after it went away: by whom, on what?
                        if sent_epoch == serving:
                            late_unnoticed += 1
                    if sent_epoch and sent_epoch != serving:
                        row.stale += 1
                        if len(stale_examples) < 5:
                            stale_examples.append(
                                f"stream {conn}: resumed from {sent_epoch}-{sent[1] if sent else '?'} by h{host + 1} "
                                f"serving epoch {serving}"
                            )
                elif flags == 3:
                    openings["other snapshot (no resumed:false)"] += 1
                else:
                    openings["error/end frame"] += 1
            elif kind == EVENT:
                if pos is None:
                    unexpected += 1
                    continue
                if pos[0] < top[0] or (flags & 1 and resumed_from is not None and pos[0] != resumed_from[0]):
                    row.stale += 1
                    if len(stale_examples) < 5:
                        stale_examples.append(
                            f"stream {conn}: event {known[pos[0]]}-{pos[1]} after {known[top[0]]}-{top[1]}"
                        )
                top = max(top, pos)
                got[pos] += 1
                arrivals.append(t2)
                if first_after is None and t1 >= run.fault_clear:
                    first_after = t2
            elif kind == END:
                connected = False
            elif kind == REFUSED:
                if flags == 3:
                    waits[f"wait_{seq}"] += 1
                else:
                    refusals[f"HTTP {seq}" if flags == 2 else "timeout" if flags == 1 else "refused/reset"] += 1
        if start is None:
            never_opened += 1
            continue
        if first_host == 0 and session_after is not None:
            back_after.append(session_after - run.fault_start)
        expected = 0
        seen: set[tuple[int, int]] = set()
        lost_here: list[str] = []
        for rank in range(len(known)):
            for seq, _ts in by_key.get((rank, attacker), []):
                pos = (rank, seq)
                if pos <= start:
                    continue
                expected += 1
                seen.add(pos)
                copies = got.get(pos, 0)
                if copies:
                    row.delivered += 1
                    if copies > 1:
                        row.duplicated += 1
                elif any(lo < pos <= hi for lo, hi in gaps):
                    row.announced += 1
                elif not connected and pos > top:
                    not_reached += 1
                else:
                    row.lost += 1
                    lost_here.append(f"{known[rank]}-{seq}")
        row.expected += expected
        unexpected += sum(1 for pos in got if pos not in seen)
        if lost_here and len(lost_examples) < 8:
            lost_examples.append(f"stream {conn} ({attacker}): {len(lost_here)} lost, e.g. {lost_here[:4]}")
        if first_after is None:
            not_recovered += 1
        else:
            recoveries.append((first_after - run.fault_clear, conn))
        marks = [run.fault_start] + [t for t in arrivals if run.fault_start <= t <= window_end] + [window_end]
        silences.append((max(b - a for a, b in zip(marks, marks[1:], strict=False)), conn))
    worst = max(recoveries, default=(float("nan"), -1))
    longest = max(silences, default=(float("nan"), -1))
    spacing = len(run.attackers) / args.rate
    row.recovery = (
        f"{worst[0]:.1f} s"
        + (f" (**{not_recovered} streams never**)" if not_recovered else "")
        + f"; longest silence {longest[0]:.1f} s"
    )
    origin = run.fault_start
    assert run.ready is not None
    cell, timelines_ready = readyz_summary(run.ready.segments(window_end + 30), origin)
    row.readyz = cell
    notes = row.notes
    notes.append(
        f"fault at +0.0 s, cleared at +{run.fault_clear - origin:.1f} s, publishing ended at "
        f"+{run.publish_end - origin:.1f} s; every stream caught up "
        + (
            f"{run.caught_up:.1f} s after publishing ended"
            if run.caught_up is not None
            else f"**not within {args.grace:g} s** of publishing ending"
        )
    )
    notes.extend(run.notes)
    median = sorted(r for r, _ in recoveries)[len(recoveries) // 2] if recoveries else float("nan")
    notes.append(
        f"recovery per stream: median {median:.1f} s, worst {worst[0]:.1f} s (stream {worst[1]}); publishing spacing "
        f"per attacker {spacing:.2f} s; longest silence {longest[0]:.1f} s (stream {longest[1]})"
    )
    if back_after and run.name in ("sigkill", "mongo"):
        back_after.sort()
        notes.append(
            f"h1's {len(back_after)} streams: first 200 after the fault, "
            f"median {back_after[len(back_after) // 2]:.1f} s, "
            f"worst {back_after[-1]:.1f} s"
        )
    notes.append(
        f"deliveries expected {row.expected:,}: delivered {row.delivered:,}, announced {row.announced:,}, lost "
        f"{row.lost:,}, duplicated {row.duplicated:,}, not reached by a stream not back at the end {not_reached:,}; "
        f"events not for the stream (unknown to the truth) {unexpected:,}; streams never opened {never_opened}"
    )
    notes.append(
        f"openings {dict(openings)}; retry-later answers {dict(waits) or 'none'}; refusals {dict(refusals) or 'none'}; "
        f"load generator { ({k: v for k, v in run.loadgen.items() if k not in ('epochs', 'records', 'waits')}) }"
    )
    if late_resumes:
        notes.append(
            f"`resumed` answered to {late_resumes} ids of the old stream after it was gone: {late_unnoticed} by a host "
            "that had not yet noticed the re-creation (its log), from its replay memory of the old stream — counted "
            "stale only when the host had noticed"
        )
    notes.append(f"publisher: {run.publisher}")
    if lost_examples:
        notes.append("LOST SILENTLY: " + "; ".join(lost_examples))
    if stale_examples:
        notes.append("STALE: " + "; ".join(stale_examples))
    notes.append("/readyz timeline: " + " | ".join(timelines_ready))
    logs = log_summary(run)
    if logs:
        notes.append("hosts' warnings/errors (most frequent): " + "; ".join(logs))
    return row


# -- running a scenario end to end ----------------------------------------------------------------------------


def run_one(name: str, args: argparse.Namespace, binary: str) -> Row:
    work = tempfile.mkdtemp(prefix=f"lurestream-faults-{name}-")
    print(f"[{name}] work directory {work}", file=sys.stderr, flush=True)
    single = name == "wipe-single"
    settings: dict[str, Any] = dict(
        keepalive_seconds=args.keepalive,
        drain_seconds=args.drain,
        retry_ms=args.retry_ms,
        sse_max_per_user=5,
        log_level="warning",
    )
    if single:
        settings["jetstream_replicas"] = 1
    cluster = Cluster(work, hosts=3, mongo_options=args.mongo_options, **settings)
    if single:
        cluster.nats = NatsSingle(work)  # type: ignore[assignment]
    if name == "mongo":  # files, so that MongoDB started again has the users and attackers
        data = os.path.join(work, "mongo-data")
        os.makedirs(data, exist_ok=True)
        cluster.mongo.argv[cluster.mongo.argv.index("--data-dir") + 1] = data
    attackers = min(args.attackers, max(1, args.streams // 5))
    label = LABELS[name].format(**vars(args))
    try:
        cluster.start(users=(args.streams + 4) // 5 + 5, attackers=attackers, timeout=90)
        run = Run(name, label, args, cluster, cluster.seed_data.attackers, args.streams, work)
        t0 = time.monotonic()
        asyncio.run(scenario(run, binary, FAULTS[name]))
        row = analyse(run)
        row.notes.insert(0, f"scenario took {time.monotonic() - t0:.0f} s (cluster start-up not counted)")
        return row
    finally:
        for node in cluster.nats.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
        cluster.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def table(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    lines = [
        "## Faults (SPEC §16)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}; lurestream at {git_commit()}. Each fault on a "
        "fresh cluster on this machine: 3 NATS nodes (JetStream R3; one server for the single-node wipe), one "
        "MongoDB-wire server, 3 lurestream hosts (127.0.0.2-4), the C load generator and the publisher. "
        f"{args.streams:,} streams per fault over {min(args.attackers, max(1, args.streams // 5))} attackers, 5 per "
        f"user (the cap), each user's five on one host; {args.rate:g} events/s round-robin over the attackers, "
        f"published through JetStream with retries; keepalive {args.keepalive:g} s, `retry:` {args.retry_ms} ms, "
        f"drain {args.drain:g} s, CAP_LEASE_SECONDS 10.",
        "",
        "| fault | streams | events published | delivered | duplicated | announced | lost silently | stale | "
        "recovery after the fault cleared | what /readyz said (not `200 ready`, per host, total) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.streams:,} | {r.published:,} | {r.delivered:,} of {r.expected:,} | {r.duplicated:,} | "
            f"{r.announced:,} | **{r.lost:,}** | **{r.stale:,}** | {r.recovery} | {r.readyz} |"
        )
    lines += [
        "",
        "Per client stream and event (the JetStream sequence of an event of the client's attacker after its first "
        "snapshot; after a re-creation the new stream's events all count, and the old one's up to its deletion): "
        "**delivered** at least once; **duplicated** more than once; **announced** not delivered but inside a gap "
        'the client was told of (from the id it sent to the position of the `"resumed": false` snapshot that '
        "answered); **lost silently** neither; **stale** an event of an older stream epoch after one of a newer, a "
        "replayed event of another epoch than the id resumed from, or `resumed` answered to an id of an epoch the "
        "host was no longer serving (its log says when it noticed a re-creation). **Recovery**: from the moment the "
        "fault cleared (the fault itself for one-shot faults: deletion, wipes, SIGKILL) until every stream had "
        "received an event published after it (this includes up to attackers ÷ rate seconds of publishing "
        "spacing); **longest silence**: the longest time any stream went without an event from the fault to the "
        "end of publishing. **/readyz** polled on every host every 0.2 s (1 s timeout).",
        "",
    ]
    for r in rows:
        lines.append(f"**{r.label}**")
        lines.append("")
        lines.extend(f"- {n}" for n in r.notes)
        lines.append("")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if head.returncode != 0:
            return os.environ.get("LURESTREAM_BENCH_COMMIT", "an unknown commit (not a git checkout)")
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "lurestream"], capture_output=True, text=True
        ).stdout.strip()
        return head.stdout.strip() + (" + uncommitted changes in lurestream/" if dirty else "")
    except OSError:
        return "unknown"


def write_section(path: str, section: str) -> None:
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    heading = "## Faults (SPEC §16)"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        after = text.find("\n## ", start + len(heading))
        rest = text[after + 1 :] if after >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    with open(path, "w") as fh:
        fh.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="300 streams, 60 attackers, 100 events/s")
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--attackers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200, help="events published per second")
    parser.add_argument("--publishers", type=int, default=8, help="publishes in flight")
    parser.add_argument("--ramp", type=float, default=1000, help="new streams per second while opening them")
    parser.add_argument("--warm", type=float, default=5, help="seconds of publishing before the fault")
    parser.add_argument("--after", type=float, default=15, help="seconds of publishing after the fault clears")
    parser.add_argument("--grace", type=float, default=30, help="at most this long for every stream to catch up")
    parser.add_argument("--keepalive", type=float, default=5, help="LURESTREAM_KEEPALIVE_SECONDS")
    parser.add_argument("--retry-ms", type=int, default=3000, help="LURESTREAM_RETRY_MS")
    parser.add_argument("--drain", type=float, default=2, help="LURESTREAM_DRAIN_SECONDS (the mongo fault's SIGTERM)")
    parser.add_argument("--mongo-options", default="?maxConnecting=16&minPoolSize=16")
    parser.add_argument("--nats-down", type=float, default=20, help="seconds the NATS cluster is down")
    parser.add_argument("--nats-down-signal", choices=("kill", "stop"), default="kill")
    parser.add_argument("--pause", type=float, default=30, help="seconds h1's NATS node is paused")
    parser.add_argument("--mongo-down", type=float, default=10, help="seconds MongoDB is down")
    parser.add_argument("--mongo-kill-after", type=float, default=1.0, help="seconds after h1's SIGTERM")
    parser.add_argument("--fd-seconds", type=float, default=15, help="seconds the descriptors are held exhausted")
    parser.add_argument("--fd-headroom", type=int, default=100, help="descriptors h1 may open beyond those it has")
    parser.add_argument("--fd-extra", type=int, default=200, help="idle connections beyond the headroom")
    parser.add_argument(
        "--blip-ms",
        default="4000,500",
        help="deletion and wipe-single: a third of the streams is dropped by the client just before the fault and "
        "reconnects after the first delay; another third --second-blip s after it, back after the second",
    )
    parser.add_argument("--second-blip", type=float, default=0.3, help="seconds after the fault")
    parser.add_argument("--output", help="replace (or append) the section '## Faults (SPEC §16)' in this file")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's work directory (logs, records)")
    args = parser.parse_args()
    given = set(sys.argv[1:])
    if args.quick:
        for flag, attr, value in (
            ("--streams", "streams", 300),
            ("--attackers", "attackers", 60),
            ("--rate", "rate", 100),
        ):
            if not any(a == flag or a.startswith(flag + "=") for a in given):
                setattr(args, attr, value)
    wanted = []
    for name in (s.strip() for s in args.only.split(",") if s.strip()):
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")
        wanted.append(name)
    command = "python bench/faults.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    tools = tempfile.mkdtemp(prefix="lurestream-faults-")
    binary = build_loadgen(tools)
    rows = []
    try:
        for name in wanted:
            try:
                rows.append(run_one(name, args, binary))
            except Exception as exc:  # one fault's failure must not lose the others' rows
                import traceback

                traceback.print_exc()
                failed = Row(name, LABELS[name].format(**vars(args)), args.streams, 0)
                failed.recovery = failed.readyz = "—"
                failed.notes.append(f"**the bench failed**: {type(exc).__name__}: {exc}")
                rows.append(failed)
    finally:
        shutil.rmtree(tools, ignore_errors=True)
        if rows:
            report = table(rows, args, command.strip())
            print(report)
            if args.output:
                write_section(args.output, report)


if __name__ == "__main__":
    main()
