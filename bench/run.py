"""Scale benchmarks, side by side: lurestream, the seed's design (bench/baselines/seed_app.py) and nchan.

    python bench/run.py [--servers lurestream,seed,nchan] [--scenarios idle,storm,sparse,broadcast] [--quick]

Starts its own nats-server and MongoDB-wire server, seeds users and attackers, builds the C load
generator (bench/loadgen.c) with the system compiler, and for each server runs:
- idle: N streams held open → server RSS per stream;
- storm: N streams over 100 attackers opened as fast as possible → streams/s, p99 connect→headers,
  snapshot queries per attacker (lurestream);
- sparse: S streams over 500 attackers, the publisher at R events/s spread over them → delivery p50/p99,
  server CPU per delivery;
- broadcast: S streams on one attacker, R events/s → deliveries/s, p99, server CPU per delivery.
Latency is measured from the envelope's ``ts`` (set by the publisher) to the load generator reading the
frame, on one host. Writes Markdown to stdout and to bench/RESULTS.md (with the command and machine).
nchan (Debian's nginx-light + libnginx-mod-nchan) is fed over its HTTP publisher endpoint, since it has
no NATS input; it runs when /usr/sbin/nginx and the nchan module are installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import nats
from pymongo import MongoClient

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from serving import SECRET, serve  # noqa: E402

from lurestream.config import config_from  # noqa: E402
from lurestream.localservices import free_port, mongo_wire_server, nats_server, wait_port  # noqa: E402
from lurestream.tokens import mint_token  # noqa: E402

ATTACKERS = 1000
PER_LOADGEN = 15000  # connections per load generator process (each has ~20,000 open files)
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    publish: str  # "nats" or "http"
    extra: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        return [self.proc.pid, *children]

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as fh:
                    total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except OSError:
                pass
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM if self.name != "nchan" else signal.SIGQUIT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- services, data, servers -----------------------------------------------------------------------
def seed(mongo_url: str, users: int) -> list[str]:
    with MongoClient(mongo_url) as client:
        db = client.bench
        db.users.insert_many([{"_id": f"user-{i}", "role": "viewer"} for i in range(users)])
        db.attackers.insert_many([{"_id": f"a-{i}", "ip": f"10.{i // 250}.{i % 250}.1"} for i in range(ATTACKERS)])
        db.observations.insert_many(
            [
                {"attacker_uuid": f"a-{i}", "primitive": p, "value": "v", "confidence": 0.9, "ts": time.time()}
                for i in range(ATTACKERS)
                for p in ("ja3", "http.user_agent", "ssh.client_version")
            ]
        )
    config = config_from({"jwt_secret": SECRET})
    return [mint_token(config, f"user-{i}", ttl=6 * 3600) for i in range(users)]


def start_lurestream(nats_url: str, mongo_url: str, processes: int, work: str) -> Server:
    port = free_port()
    proc = serve(
        port,
        nats_url,
        mongo_url,
        "bench",
        open(os.path.join(work, "lurestream.log"), "ab"),
        sse_max_per_user=1000,
        processes=processes,
        queue_max=1024,
        jetstream="bench",  # ids, resume, and snapshot reads shared across a storm
        drain_seconds=0,
    )
    time.sleep(1.5)
    return Server("lurestream" if processes == 1 else f"lurestream ×{processes}", port, proc, "nats")


def start_seed(nats_url: str, mongo_url: str, work: str) -> Server:
    port = free_port()
    env = dict(
        os.environ,
        LURESTREAM_NATS_URL=nats_url,
        LURESTREAM_MONGO_URI=mongo_url,
        LURESTREAM_MONGO_DB="bench",
        LURESTREAM_JWT_SECRET=SECRET,
    )
    log = open(os.path.join(work, "seed.log"), "ab")
    script = os.path.join(HERE, "baselines", "seed_app.py")
    proc = subprocess.Popen([sys.executable, script, "--port", str(port)], env=env, stdout=log, stderr=log)
    wait_port(port, 30, proc)
    time.sleep(1.0)
    return Server("seed design", port, proc, "nats")


def nchan_available() -> bool:
    return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")) and os.path.exists(NCHAN_MODULE)


def start_nchan(work: str) -> Server:
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(f"""
load_module {NCHAN_MODULE};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
daemon off;
events {{ worker_connections 19900; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  nchan_max_reserved_memory 256M;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ /api/v1/attackers/([^/]+)/events {{ nchan_subscriber eventsource; nchan_channel_id $1;
      nchan_subscriber_first_message newest; nchan_message_buffer_length 16; }}
    location ~ /pub/(.+) {{ nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 16; }}
  }}
}}
""")
    proc = subprocess.Popen(
        ["/usr/sbin/nginx", "-c", conf, "-p", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, 20, proc)
    return Server("nchan (nginx, C)", port, proc, "http")


# -- load -------------------------------------------------------------------------------------------
def build_loadgen(work: str) -> str:
    out = os.path.join(work, "loadgen")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "loadgen.c"), "-lm"], check=True)
    return out


def paths_for(streams: int, attackers: list[str], tokens: list[str]) -> list[str]:
    return [
        f"/api/v1/attackers/{attackers[i % len(attackers)]}/events?token={tokens[i % len(tokens)]}"
        for i in range(streams)
    ]


class Load:
    """COUNT streams over one or more load generator processes."""

    def __init__(self, loadgen: str, port: int, paths: list[str], hold: float, work: str, ramp: float = 0) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for n, start in enumerate(range(0, len(paths), PER_LOADGEN)):
            chunk = paths[start : start + PER_LOADGEN]
            path_file = os.path.join(work, f"paths-{n}.txt")
            with open(path_file, "w") as fh:
                fh.write("\n".join(chunk) + "\n")
            argv = [loadgen, "127.0.0.1", str(port), path_file, str(len(chunk)), str(hold), str(ramp)]
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))

    def reset(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGUSR1)

    def results(self) -> dict[str, float]:
        parts = [json.loads(p.communicate(timeout=600)[0]) for p in self.procs]
        merged: dict[str, float] = {}
        for key in parts[0]:
            values = [p[key] for p in parts]
            if key.endswith(("_ms", "connect_seconds")):
                merged[key] = max(values)  # conservative: the worst generator's percentile
            else:
                merged[key] = sum(values)
        return merged

    def wait_up(self, server: Server, expected: int, timeout: float) -> None:
        time.sleep(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and established(server.port) < expected:
            time.sleep(0.25)


def established(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


async def publish(server: Server, nats_url: str, attackers: list[str], rate: float, seconds: float) -> int:
    """Publish ``rate`` events/s (each for a random attacker of ``attackers``) for ``seconds``."""
    sent = 0
    tick = 0.01
    per_tick = rate * tick
    carry = 0.0
    nc = await nats.connect(nats_url) if server.publish == "nats" else None
    http = None
    if server.publish == "http":
        from tornado.httpclient import AsyncHTTPClient

        AsyncHTTPClient.configure(None, max_clients=64)
        http = AsyncHTTPClient()
    start = time.monotonic()
    pending: list[Any] = []
    while time.monotonic() - start < seconds:
        carry += per_tick
        batch, carry = int(carry), carry - int(carry)
        for _ in range(batch):
            uuid = random.choice(attackers)
            body = json.dumps(
                {
                    "v": 1,
                    "id": "b",
                    "topic": "attacker.scored",
                    "type": "score",
                    "ts": time.time(),
                    "payload": {"attacker_uuid": uuid, "score": 1.0},
                }
            ).encode()
            if nc is not None:
                await nc.publish("attacker.scored", body)
            else:
                pending.append(
                    http.fetch(
                        f"http://127.0.0.1:{server.port}/pub/{uuid}", method="POST", body=body, raise_error=False
                    )
                )
            sent += 1
        if nc is not None:
            await nc.flush()
        elif len(pending) > 256:
            await asyncio.gather(*pending)
            pending = []
        next_tick = start + (sent / rate if rate else seconds)
        await asyncio.sleep(max(next_tick - time.monotonic(), 0))
    if pending:
        await asyncio.gather(*pending)
    if nc is not None:
        await nc.close()
    return sent


# -- scenarios ----------------------------------------------------------------------------------------
def scenario_idle(server: Server, loadgen: str, tokens: list[str], args: argparse.Namespace, work: str) -> dict:
    attackers = [f"a-{i}" for i in range(ATTACKERS)]
    before = server.rss_kb()
    load = Load(loadgen, server.port, paths_for(args.idle_streams, attackers, tokens), args.idle_hold, work, ramp=3000)
    load.wait_up(server, args.idle_streams, 120)
    time.sleep(2)
    after = server.rss_kb()
    up = established(server.port)
    res = load.results()
    return {
        "streams": int(res["up"]),
        "established": up,
        "kb_per_stream": (after - before) / max(res["up"], 1),
        "rss_mb": after / 1024,
        "failed": int(res["failed"] + res["non200"]),
    }


def scenario_storm(server: Server, loadgen: str, tokens: list[str], args: argparse.Namespace, work: str) -> dict:
    attackers = [f"a-{i}" for i in range(100)]
    queries_before = snapshot_queries(server)
    cpu = server.cpu_seconds()
    load = Load(loadgen, server.port, paths_for(args.storm_streams, attackers, tokens), 1, work, ramp=0)
    res = load.results()
    queries = snapshot_queries(server)
    return {
        "streams": int(res["up"]),
        "seconds": res["connect_seconds"],
        "per_second": res["up"] / max(res["connect_seconds"], 1e-9),
        "p99_ms": res["headers_p99_ms"],
        "failed": int(res["failed"] + res["non200"]),
        "queries_per_attacker": None if queries is None else (queries - (queries_before or 0)) / len(attackers),
        "cpu_ms_per_connect": (server.cpu_seconds() - cpu) * 1000 / max(res["up"], 1),
    }


def scenario_fanout(
    server: Server,
    loadgen: str,
    tokens: list[str],
    args: argparse.Namespace,
    work: str,
    nats_url: str,
    streams: int,
    attackers: list[str],
    rate: float,
) -> dict:
    load = Load(loadgen, server.port, paths_for(streams, attackers, tokens), args.duration + 3, work, ramp=3000)
    load.wait_up(server, streams, 120)
    time.sleep(1)
    load.reset()
    cpu = server.cpu_seconds()
    started = time.monotonic()
    sent = asyncio.run(publish(server, nats_url, attackers, rate, args.duration))
    elapsed = time.monotonic() - started
    cpu = server.cpu_seconds() - cpu
    res = load.results()
    deliveries = res["events"]
    expected = sent * streams / len(attackers)
    return {
        "streams": int(res["up"]),
        "events_per_s": sent / elapsed,
        "deliveries_per_s": deliveries / elapsed,
        "delivered_share": deliveries / max(expected, 1),
        "p50_ms": res["latency_p50_ms"],
        "p99_ms": res["latency_p99_ms"],
        "cpu_us_per_delivery": cpu * 1e6 / max(deliveries, 1),
        "loadgen_cpu_s": res["cpu_seconds"],
    }


def snapshot_queries(server: Server) -> float | None:
    if not server.name.startswith("lurestream"):
        return None
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("lurestream_snapshot_queries_total "):
                return float(line.split()[1])
    return 0.0


# -- report -------------------------------------------------------------------------------------------
def table(title: str, rows: list[tuple[str, dict]], columns: list[tuple[str, str, str]], ratio: str | None) -> str:
    out = [
        f"### {title}",
        "",
        "| server | " + " | ".join(c[1] for c in columns) + (" | vs seed | vs nchan |" if ratio else " |"),
    ]
    out.append("|---" * (len(columns) + 1 + (2 if ratio else 0)) + "|")
    by_name = dict(rows)
    for name, r in rows:
        cells = [fmt(r.get(c[0]), c[2]) for c in columns]
        if ratio:
            cells.append(ratio_cell(r, by_name.get("seed design"), ratio))
            cells.append(ratio_cell(r, by_name.get("nchan (nginx, C)"), ratio))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    return format(value, spec)


def ratio_cell(row: dict, base: dict | None, key: str) -> str:
    if base is None or row is base or not base.get(key) or row.get(key) is None:
        return "—"
    return f"{row[key] / base[key]:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="lurestream,seed,nchan")
    parser.add_argument("--scenarios", default="idle,storm,sparse,broadcast")
    parser.add_argument("--processes", type=int, default=1, help="LURESTREAM_PROCESSES for lurestream")
    parser.add_argument("--idle-streams", type=int, default=10000)
    parser.add_argument("--idle-hold", type=float, default=8)
    parser.add_argument("--storm-streams", type=int, default=10000)
    parser.add_argument("--sparse-streams", type=int, default=5000)
    parser.add_argument("--sparse-rate", type=float, default=3000)
    parser.add_argument("--broadcast-streams", type=int, default=5000)
    parser.add_argument("--broadcast-rate", type=float, default=10)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument(
        "--seed-rate-factor",
        type=float,
        default=1.0,
        help="publish rate for the seed design relative to the others (it collapses at full rate)",
    )
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    work = tempfile.mkdtemp(prefix="lurestream-bench-")
    nats_svc, mongo_svc = nats_server(work).start(), mongo_wire_server(work).start()
    results: dict[str, list[tuple[str, dict]]] = {s: [] for s in scenarios}
    try:
        tokens = seed(mongo_svc.url, 200)
        loadgen = build_loadgen(work)
        for name in servers:
            if name == "nchan" and not nchan_available():
                print("nchan: not installed (apt-get install nginx-light libnginx-mod-nchan); skipped", file=sys.stderr)
                continue
            for scenario in scenarios:
                server = (
                    start_lurestream(nats_svc.url, mongo_svc.url, args.processes, work)
                    if name == "lurestream"
                    else start_seed(nats_svc.url, mongo_svc.url, work)
                    if name == "seed"
                    else start_nchan(work)
                )
                print(f"{server.name}: {scenario} ...", file=sys.stderr, flush=True)
                factor = args.seed_rate_factor if name == "seed" else 1.0
                try:
                    if scenario == "idle":
                        row = scenario_idle(server, loadgen, tokens, args, work)
                    elif scenario == "storm":
                        row = scenario_storm(server, loadgen, tokens, args, work)
                    elif scenario == "sparse":
                        row = scenario_fanout(
                            server,
                            loadgen,
                            tokens,
                            args,
                            work,
                            nats_svc.url,
                            args.sparse_streams,
                            [f"a-{i}" for i in range(500)],
                            args.sparse_rate * factor,
                        )
                    else:
                        row = scenario_fanout(
                            server,
                            loadgen,
                            tokens,
                            args,
                            work,
                            nats_svc.url,
                            args.broadcast_streams,
                            ["a-0"],
                            args.broadcast_rate * factor,
                        )
                finally:
                    server.stop()
                print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
                results[scenario].append((server.name, row))
                time.sleep(1)
    finally:
        nats_svc.stop()
        mongo_svc.stop()
    report(results, args)


def report(results: dict[str, list[tuple[str, dict]]], args: argparse.Namespace) -> None:
    parts = [
        "# Scale results",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}. All servers, the load generators, the "
        "publisher, nats-server and the MongoDB-wire server share this machine.",
        "",
        "Command: `python bench/run.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]
    if "idle" in results:
        parts.append(
            table(
                f"Idle: {args.idle_streams} streams held",
                results["idle"],
                [
                    ("streams", "streams up", "d"),
                    ("rss_mb", "RSS MB", ".0f"),
                    ("kb_per_stream", "KB per stream", ".1f"),
                ],
                "kb_per_stream",
            )
        )
    if "storm" in results:
        parts.append(
            table(
                f"Connect storm: {args.storm_streams} streams over 100 attackers, at once",
                results["storm"],
                [
                    ("streams", "streams up", "d"),
                    ("seconds", "s to all up", ".2f"),
                    ("per_second", "streams/s", ".0f"),
                    ("p99_ms", "p99 connect→headers ms", ".0f"),
                    ("cpu_ms_per_connect", "server CPU ms/connect", ".2f"),
                    ("queries_per_attacker", "snapshot queries/attacker", ".2f"),
                ],
                "per_second",
            )
        )
    if "sparse" in results:
        parts.append(
            table(
                f"Sparse fan-out: {args.sparse_streams} streams over 500 attackers, "
                f"{args.sparse_rate:.0f} events/s for {args.duration:.0f} s",
                results["sparse"],
                [
                    ("events_per_s", "events/s", ".0f"),
                    ("deliveries_per_s", "deliveries/s", ".0f"),
                    ("delivered_share", "delivered", ".1%"),
                    ("p50_ms", "p50 ms", ".1f"),
                    ("p99_ms", "p99 ms", ".1f"),
                    ("cpu_us_per_delivery", "server CPU µs/delivery", ".1f"),
                ],
                "cpu_us_per_delivery",
            )
        )
    if "broadcast" in results:
        parts.append(
            table(
                f"Broadcast: {args.broadcast_streams} streams on one attacker, "
                f"{args.broadcast_rate:.0f} events/s for {args.duration:.0f} s",
                results["broadcast"],
                [
                    ("deliveries_per_s", "deliveries/s", ".0f"),
                    ("delivered_share", "delivered", ".1%"),
                    ("p50_ms", "p50 ms", ".1f"),
                    ("p99_ms", "p99 ms", ".1f"),
                    ("cpu_us_per_delivery", "server CPU µs/delivery", ".1f"),
                    ("loadgen_cpu_s", "load generator CPU s", ".1f"),
                ],
                "cpu_us_per_delivery",
            )
        )
    text = "\n".join(parts)
    print(text)
    with open(args.output, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
