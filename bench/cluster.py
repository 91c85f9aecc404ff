"""A rolling restart of a lurestream cluster under load: zero loss, zero duplicates, and what it costs.

    python bench/cluster.py [--streams 15000] [--rate 300] [--drain 90] [--output FILE]

Starts the cluster of tests/cluster (clusterkit.py: a 3-node NATS cluster with JetStream, stream
replicas 3; one MongoDB-wire server; 3 lurestream hosts × 1 process on 127.0.0.2-4, one port), then:
1. ``--streams`` SSE streams from bench/cluster_loadgen.c (built with the system C compiler), over
   ``--attackers`` attackers, 5 per user (the per-user cap, counted across hosts), each starting on
   host ``i % 3`` and reconnecting on its own like EventSource: ``Last-Event-ID`` (the last id received,
   ``<epoch>-<sequence>``, sent back verbatim), the ``retry:`` hint, another host when one ends the stream
   or refuses, and the "retry later" answer (a 200 with ``event: unavailable``: wait its ``retry:``, counted
   as ``wait_<status>``);
2. steady publishing through JetStream (``--rate`` events/s spread over the attackers, each publish
   retried with its ``Nats-Msg-Id`` until stored once) for ``--warm`` seconds;
3. a rolling restart: each host in turn gets SIGTERM, drains over ``--drain`` seconds, exits and is
   started again on the same address (readiness awaited before the next);
4. ``--after`` seconds more of steady publishing, a few seconds for deliveries in flight, then the
   stream is read back (the truth) and every stream's event ids are checked against it: delivered %,
   duplicates, streams that had to rebuild from a snapshot.

Latency is the arrival at the load generator minus the envelope's ``ts`` (the publisher's clock, same
machine), per event by when it was published: before, during (first SIGTERM → the last host's exit
plus the longest ``retry:`` hint, when its streams are back) or after the restart; during the restart
the replayed events (delivered by a resume, after the reconnect) are shown apart from the live ones.
Reconnects per second: 200 responses after each stream's first, in a sliding one-second window.
Server CPU and RSS are read from /proc over the steady window before the restart. Prints Markdown;
``--output`` writes it to a file too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))

from clusterkit import Cluster, Host, Publisher, die_with_parent, peak_per_second, read_stream  # noqa: E402

# bench/cluster_loadgen.c's records: type, flags, host, epoch (0: no id; else 1 + its index in the summary's
# "epochs"), conn, seq (an id's sequence: the part after its last '-'), t1, t2
RECORD = struct.Struct("<BBBBIqdd")
EVENT, SESSION, OPENING, END, REFUSED = 1, 2, 3, 4, 5
OPENINGS = {0: "snapshot", 1: "resumed", 2: "rebuilt", 3: "other", 4: "error/end"}
Record = tuple[int, int, int, int, int, int, float, float]


def build_loadgen(work: str) -> str:
    out = os.path.join(work, "cluster_loadgen")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "cluster_loadgen.c")], check=True)
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Loadgen:
    """The C load generator as a child process; its STATUS lines are echoed, READY awaited."""

    def __init__(self, binary: str, cluster: Cluster, paths: list[str], work: str, ramp: float, keepalive: float):
        path_file = os.path.join(work, "paths.txt")
        with open(path_file, "w") as fh:
            fh.write("\n".join(paths) + "\n")
        self.records = os.path.join(work, "records.bin")
        hosts = ",".join(h.address for h in cluster.hosts)
        argv = [binary, hosts, str(cluster.hosts[0].port), path_file, str(len(paths)), self.records]
        argv += [str(ramp), str(keepalive), "512"]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent
        )
        self.ready = threading.Event()
        self.last_status = ""
        # streams open, the lowest last id's sequence over the streams on the newest epoch, streams not on it
        self.ids: tuple[int, int, int] = (0, -1, 0)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip()
            if line.startswith("READY"):
                self.ready.set()
            if line.startswith("STATUS"):
                self.last_status = line
            if line.startswith("IDS"):
                fields = dict(part.split("=") for part in line.split()[1:])
                self.ids = (int(fields["streaming"]), int(fields["min"]), int(fields["behind"]))
                continue
            print(f"  loadgen: {line}", file=sys.stderr, flush=True)

    async def caught_up(self, count: int, seq: int, timeout: float) -> float:
        """Wait until every stream is open and has seen the stream up to ``seq``; the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.5)
            streaming, lowest, behind = self.ids
            if streaming == count and not behind and lowest >= seq:
                break
        return time.monotonic() - t0

    def finish(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def read_records(self) -> list[Record]:
        with open(self.records, "rb") as fh:
            data = fh.read()
        return list(RECORD.iter_unpack(data))


@dataclass
class Restart:
    host: str
    address: str
    sigterm: float
    exited: float = 0.0
    ready: float = 0.0
    status: int | None = None


@dataclass
class Run:
    args: argparse.Namespace
    streams: int
    attackers: list[str]
    restarts: list[Restart] = field(default_factory=list)
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    other_cpu: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # window -> group -> cores
    counters: Counter[str] = field(default_factory=Counter)  # summed over every host process's /metrics
    publisher: dict[str, Any] = field(default_factory=dict)
    loadgen: dict[str, Any] = field(default_factory=dict)
    caught_up: float = 0.0  # seconds from the last publish until every stream had seen it


async def measure_hosts(hosts: list[Host], seconds: float) -> dict[str, dict[str, float]]:
    before = {h.name: cpu_seconds(h.pid or 0) for h in hosts}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    took = time.monotonic() - t0
    return {
        h.name: {"cores": (cpu_seconds(h.pid or 0) - before[h.name]) / took, "rss_kb": rss_kb(h.pid or 0)}
        for h in hosts
    }


class Sampler:
    """CPU cores of groups of processes, sampled every ``interval`` s from /proc in a thread (host
    processes come and go in a rolling restart: each pid's last sample is kept after it exits)."""

    def __init__(self, groups: dict[str, Any], interval: float = 1.0) -> None:
        self.groups = groups  # name -> callable returning the group's current pids
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []  # (wall, cumulative CPU s per group)
        self._last: dict[int, float] = {}
        self._total: dict[str, float] = dict.fromkeys(groups, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            for name, pids in self.groups.items():
                for pid in pids():
                    used = cpu_seconds(pid)
                    if used:
                        # a process already running at the first sample: count from here; a new one: all of it
                        self._total[name] += used - self._last.get(pid, used if first else 0.0)
                        self._last[pid] = used
            first = False
            self.samples.append((time.time(), dict(self._total)))
            self._stop.wait(self.interval)

    def cores(self, start: float, end: float) -> dict[str, tuple[float, float]]:
        """Per group over [start, end]: (mean cores, the busiest sampling interval's cores)."""
        inside = [(t, c) for t, c in self.samples if start <= t <= end]
        if len(inside) < 2:
            return {}
        result = {}
        for name in self.groups:
            mean = (inside[-1][1][name] - inside[0][1][name]) / (inside[-1][0] - inside[0][0])
            peak = max((b[1][name] - a[1][name]) / (b[0] - a[0]) for a, b in zip(inside, inside[1:], strict=False))
            result[name] = (mean, peak)
        return result


COUNTED = ("lurestream_resumes_total", "lurestream_stream_disconnects_total", "lurestream_http_refused_total")


async def scrape(host: Host, run: Run) -> None:
    """Add the host process's counters (resumes by outcome, disconnects by reason) to the run's."""
    try:
        metrics = await asyncio.to_thread(host.metrics)
    except Exception as exc:
        print(f"could not scrape {host.name}: {exc}", file=sys.stderr)
        return
    for name, value in metrics.items():
        if name.startswith(COUNTED) and value:
            run.counters[name] += int(value)


async def scenario(cluster: Cluster, loadgen: Loadgen, run: Run) -> list[Any]:
    args = run.args
    timeout = run.streams / max(args.ramp, 1) + 120
    if not await asyncio.to_thread(loadgen.ready.wait, timeout):
        raise SystemExit(f"the load generator did not open every stream within {timeout:.0f}s: {loadgen.last_status}")
    await asyncio.sleep(2)
    pub = Publisher(cluster.nats.urls, run.attackers, args.rate, concurrency=args.publishers)
    await pub.connect()
    pub.start()
    sampler = Sampler(
        {
            "lurestream hosts": lambda: [h.pid for h in cluster.hosts if h.pid and h.alive()],
            "NATS (3 nodes)": lambda: [n.proc.pid for n in cluster.nats.nodes if n.proc is not None],
            "MongoDB-wire": lambda: [cluster.mongo.proc.pid] if cluster.mongo.proc is not None else [],
            "load generator": lambda: [loadgen.proc.pid],
            "publisher + bench": lambda: [os.getpid()],
        }
    ).start()
    started = time.time()
    print(f"publishing {args.rate:g}/s; steady for {args.warm:g}s", file=sys.stderr, flush=True)
    await asyncio.sleep(2)
    run.cpu = await measure_hosts(cluster.hosts, max(args.warm - 2, 1))
    run.windows["before"] = (started, time.time())
    for host in cluster.hosts:
        print(f"rolling restart: SIGTERM {host.name}", file=sys.stderr, flush=True)
        await scrape(host, run)
        restart = Restart(host.name, host.address, time.time())
        host.signal(signal.SIGTERM)
        restart.status = await asyncio.to_thread(host.wait, args.drain + 60)
        restart.exited = time.time()
        await host.start_async(60)
        restart.ready = time.time()
        run.restarts.append(restart)
    # the restart is over when the last host's streams are back: its exit plus the longest retry: hint
    back = max(run.restarts[-1].ready, run.restarts[-1].exited + 1.5 * args.retry_ms / 1000 + 1)
    run.windows["during"] = (run.restarts[0].sigterm, back)
    await asyncio.sleep(max(back - time.time(), 0))
    print(f"restart done; steady for {args.after:g}s", file=sys.stderr, flush=True)
    await asyncio.sleep(args.after)
    await pub.stop()
    run.windows["after"] = (back, time.time())
    run.publisher = {
        "acked": len(pub.acked),
        "retries": dict(pub.retries),
        "duplicates": pub.duplicates,
        "stalls": len(pub.stalls),
    }
    await pub.close()
    # every stream back and caught up (keepalives carry ids: at most a keepalive period), or --grace at most
    run.caught_up = await loadgen.caught_up(run.streams, max(pub.acked.values(), default=0), args.grace)
    for host in cluster.hosts:
        await scrape(host, run)
    run.loadgen = await asyncio.to_thread(loadgen.finish)
    sampler.stop()
    for name in ("before", "during", "after"):
        run.other_cpu[name] = sampler.cores(*run.windows[name])
    return await read_stream(cluster.nats.urls, cluster.stream, timeout=120)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * (len(values) - 1) + 0.5))]


@dataclass
class Stream:
    """One load-generator stream, rebuilt from its records (in the order they were written)."""

    first: int = -1  # the id of its first snapshot
    events: list[tuple[int, float, float, bool]] = field(default_factory=list)  # seq, ts, arrival, replayed
    sessions: list[tuple[int, int, float]] = field(default_factory=list)  # host, Last-Event-ID sent, head at
    rebuilt: list[tuple[int, int]] = field(default_factory=list)  # (sent id, snapshot id]: announced gaps
    connected: bool = False  # a stream open when the run ended


def streams_from(records: list[Record]) -> tuple[dict[int, Stream], Counter]:
    streams: dict[int, Stream] = defaultdict(Stream)
    refusals: Counter[str] = Counter()
    for kind, flags, host, _epoch, conn, seq, t1, t2 in records:
        s = streams[conn]
        if kind == EVENT:
            s.events.append((seq, t1, t2, bool(flags & 1)))
        elif kind == SESSION:
            s.sessions.append((host, seq, t2))
            s.connected = True
        elif kind == OPENING:
            if flags == 0 and s.first < 0:
                s.first = seq
            elif flags == 2:
                s.rebuilt.append((s.sessions[-1][1] if s.sessions else -1, seq))
        elif kind == END:
            s.connected = False
        elif kind == REFUSED:
            why = {3: f"wait_{seq}", 2: f"HTTP {seq}", 1: "timeout"}.get(flags, "refused/reset")
            refusals[why] += 1
    return streams, refusals


def analyse(run: Run, truth: list[Any], records: list[Record]) -> str:
    by_attacker: dict[str, list[Any]] = defaultdict(list)
    for item in truth:
        by_attacker[item.attacker].append(item)
    streams, refusals = streams_from(records)
    windows = run.windows

    def phase(ts: float) -> str:
        for name in ("before", "during", "after"):
            lo, hi = windows[name]
            if lo <= ts < hi:
                return name
        return "before" if ts < windows["before"][0] else "after"

    expected: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    outcome: Counter[str] = Counter()  # why an expected event did not arrive
    duplicates = unexpected = never_opened = 0
    lost_streams: list[str] = []
    latency: dict[str, list[float]] = defaultdict(list)
    for conn in range(run.streams):
        s = streams.get(conn)
        if s is None or s.first < 0:
            never_opened += 1
            continue
        attacker = run.attackers[conn % len(run.attackers)]
        wanted = {item.seq: item for item in by_attacker[attacker] if item.seq > s.first}
        seen: set[int] = set()
        previous = s.first
        for seq, ts, arrival, replayed in s.events:
            if seq in seen:
                duplicates += 1
                continue
            if seq <= previous:
                outcome["out of order"] += 1
            previous = max(previous, seq)
            seen.add(seq)
            item = wanted.get(seq)
            if item is None:
                unexpected += 1
                continue
            name = phase(item.ts)
            delivered[name] += 1
            latency[name].append(arrival - ts)
            if name == "during":
                latency["during, replayed" if replayed else "during, live"].append(arrival - ts)
        last_seen = max(seen, default=s.first)
        lost = []
        for seq, item in wanted.items():
            expected[phase(item.ts)] += 1
            if seq in seen:
                continue
            if any(after < seq <= snap for after, snap in s.rebuilt):
                outcome["in an announced rebuild gap"] += 1
            elif not s.connected and seq > last_seen:
                outcome["stream not back when the run ended"] += 1
            else:
                outcome["LOST"] += 1
                lost.append(seq)
        if lost:
            lost_streams.append(f"stream {conn} ({attacker}): {lost[:5]} sessions {s.sessions[-4:]}")

    def row(label: str, names: list[str], window: tuple[float, float] | None) -> str:
        lat = [x for n in names for x in latency[n]]
        p50, p99 = percentile(lat, 0.5) * 1e3, percentile(lat, 0.99) * 1e3
        worst = max(lat, default=float("nan")) * 1e3
        if window is None:
            return f"| {label} | | | | {p50:.0f} | {p99:.0f} | {worst:.0f} |"
        exp = sum(expected[n] for n in names)
        got = sum(delivered[n] for n in names)
        pct = f"{100 * got / exp:.3f}" if exp else "—"
        return f"| {label} | {window[1] - window[0]:.0f} | {exp:,} | {pct} | {p50:.0f} | {p99:.0f} | {worst:.0f} |"

    later = []
    for s in streams.values():
        later.extend(t for _host, _sent, t in s.sessions[1:])
    later.sort()
    ends = sorted((host, t1) for kind, flags, host, _e, _conn, _seq, t1, _t2 in records if kind == END and flags == 0)
    drain_rows = []
    for index, restart in enumerate(run.restarts):
        drops = [t for host, t in ends if host == index and restart.sigterm <= t <= restart.exited + 0.5]
        during = [t for t in later if restart.sigterm <= t <= restart.exited + 1.5 * run.args.retry_ms / 1000]
        spread = drops[-1] - drops[0] if drops else 0.0
        drain_rows.append(
            f"| {restart.host} | {len(drops):,} | {spread:.1f} | {peak_per_second(drops)} | "
            f"{restart.exited - restart.sigterm:.1f} | {restart.status} | {restart.ready - restart.exited:.1f} | "
            f"{peak_per_second(during)} |"
        )
    args = run.args
    total_expected, total_delivered = sum(expected.values()), sum(delivered.values())
    lines = [
        f"`python bench/cluster.py --streams {run.streams} --attackers {len(run.attackers)} --rate {args.rate:g} "
        f"--drain {args.drain:g} --warm {args.warm:g} --after {args.after:g}"
        + (f" --mongo-options '{args.mongo_options}'" if args.mongo_options else "")
        + "`",
        "",
        f"3 hosts × 1 process (127.0.0.2-4), 3-node NATS cluster (JetStream R3), one MongoDB-wire server, the "
        f"load generator and the publisher, all on this machine ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}). {run.streams:,} streams over "
        f"{len(run.attackers):,} attackers, 5 per user (cap 5 across hosts); {args.rate:g} events/s; drain "
        f"{args.drain:g} s, `retry:` {args.retry_ms} ms ±50 %, keepalive {args.keepalive:g} s; MongoDB URI options "
        f"{args.mongo_options or 'none'}.",
        "",
        "| events published | window s | deliveries expected | delivered % | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        row("before the restart (steady)", ["before"], windows["before"]),
        row("during the rolling restart", ["during"], windows["during"]),
        row("— of those, live on an open stream", ["during, live"], None),
        row("— of those, replayed by a resume", ["during, replayed"], None),
        row("after the restart (steady)", ["after"], windows["after"]),
        row("**whole run**", ["before", "during", "after"], (windows["before"][0], windows["after"][1])),
        "",
        f"Delivered {total_delivered:,} of {total_expected:,} "
        f"({100 * total_delivered / max(total_expected, 1):.3f} %); **duplicates {duplicates}**; not delivered: "
        f"{dict(outcome) or 'none'}; events not for the stream {unexpected}; streams never opened {never_opened}. "
        f"Reconnects {len(later):,}, **peak {peak_per_second(later)}/s** (sliding 1 s); refusals on the way: "
        f"{dict(refusals) or 'none'}. Publisher: {run.publisher}. Every stream open and caught up "
        f"{run.caught_up:.1f} s after the last publish.",
        "",
        "| host | streams drained | closed over s | closes peak/s | SIGTERM → exit s | exit status | exit → ready s "
        "| reconnects peak/s, its drain + retry |",
        "|---|---|---|---|---|---|---|---|",
        *drain_rows,
        "",
        "| host (steady, before the restart) | streams | CPU cores | RSS MB | deliveries/s | µs CPU per delivery |",
        "|---|---|---|---|---|---|",
    ]
    window = windows["before"]
    span = window[1] - window[0]
    nhosts = len(run.restarts)
    for index, restart in enumerate(run.restarts):
        cpu = run.cpu.get(restart.host, {})
        arrivals = sum(
            1
            for conn, s in streams.items()
            if conn % nhosts == index
            for _seq, _ts, arrival, _r in s.events
            if window[0] <= arrival < window[1]
        )
        rate = arrivals / span if span else 0
        per_delivery = cpu.get("cores", 0) / rate * 1e6 if rate else float("nan")
        lines.append(
            f"| {restart.host} | {run.streams / nhosts:,.0f} | {cpu.get('cores', 0):.2f} | "
            f"{cpu.get('rss_kb', 0) / 1024:.0f} | {rate:,.0f} | {per_delivery:.0f} |"
        )
    lines.append("")
    lines.append("| CPU cores: mean (busiest second) | " + " | ".join(run.other_cpu.get("before", {})) + " |")
    lines.append("|---" * (1 + len(run.other_cpu.get("before", {}))) + "|")
    for name, label in (("before", "before the restart"), ("during", "during it"), ("after", "after it")):
        cells = " | ".join(f"{mean:.2f} ({peak:.2f})" for mean, peak in run.other_cpu.get(name, {}).values())
        lines.append(f"| {label} | {cells} |")
    lines.append("")
    counters = ", ".join(f"{k.removeprefix('lurestream_')} {v}" for k, v in sorted(run.counters.items()))
    lines.append(f"Host counters (every host process, summed): {counters}.")
    if lost_streams:
        lines.append("")
        lines.append("LOST on resumed streams (a bug):")
        lines.extend(f"- {line}" for line in lost_streams[:20])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=15000)
    parser.add_argument("--attackers", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300, help="events published per second")
    parser.add_argument("--publishers", type=int, default=8, help="publishes in flight")
    parser.add_argument("--drain", type=float, default=90, help="LURESTREAM_DRAIN_SECONDS of each host")
    parser.add_argument("--retry-ms", type=int, default=3000, help="LURESTREAM_RETRY_MS")
    parser.add_argument("--keepalive", type=float, default=15, help="LURESTREAM_KEEPALIVE_SECONDS")
    parser.add_argument("--warm", type=float, default=20, help="steady seconds before the restart")
    parser.add_argument("--after", type=float, default=20, help="steady seconds after it")
    parser.add_argument(
        "--grace", type=float, default=60, help="at the end, wait at most this long for every stream to catch up"
    )
    parser.add_argument("--ramp", type=float, default=300, help="new streams per second while opening them")
    parser.add_argument(
        "--mongo-options",
        default="?maxConnecting=16&minPoolSize=16",
        help="appended to the hosts' MongoDB URI, e.g. '?maxConnecting=16&minPoolSize=16' (PyMongo's pool)",
    )
    parser.add_argument("--output", help="also write the Markdown here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, records)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="lurestream-cluster-bench-")
    print(f"work directory {work}", file=sys.stderr)
    cluster = Cluster(
        work,
        hosts=3,
        mongo_options=args.mongo_options,
        keepalive_seconds=args.keepalive,
        drain_seconds=args.drain,
        retry_ms=args.retry_ms,
        sse_max_per_user=5,
        log_level="warning",
    )
    users = (args.streams + 4) // 5
    loadgen = None
    try:
        cluster.start(users=users, attackers=args.attackers, timeout=60)
        binary = build_loadgen(work)
        attackers = cluster.seed_data.attackers
        tokens = [cluster.token(u, ttl=6 * 3600) for u in cluster.seed_data.users]
        paths = [
            f"/api/v1/attackers/{attackers[i % len(attackers)]}/events?token={tokens[i // 5]}"
            for i in range(args.streams)
        ]
        run = Run(args, args.streams, attackers)
        loadgen = Loadgen(binary, cluster, paths, work, args.ramp, args.keepalive)
        truth = asyncio.run(scenario(cluster, loadgen, run))
        report = analyse(run, truth, loadgen.read_records())
        print(report)
        if args.output:
            with open(args.output, "w") as fh:
                fh.write(report + "\n")
    finally:
        if loadgen is not None and loadgen.proc.poll() is None:
            loadgen.proc.kill()
        cluster.close()
        if not args.keep:
            subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
