"""Scale benchmarks, side by side: lurestream, the seed's design (bench/baselines/seed_app.py) and nchan.

    python bench/run.py [--servers lurestream,seed,nchan] [--scenarios idle,storm,sparse,broadcast] [--quick]
    python bench/run.py --servers lurestream --scenarios sparse --profile /tmp/prof   # + py-spy profiles
    python bench/run.py --servers lurestream --processes 3 --scenarios idle --idle-streams 50000

Starts its own nats-server and MongoDB-wire server, seeds users and attackers, builds the C load
generator (bench/loadgen.c) with the system compiler, and for each server runs:
- idle: N streams held open → server RSS per stream (summed over the worker processes);
- storm: N streams over 100 attackers opened as fast as possible → streams/s, p99 connect→headers,
  server CPU per connect, snapshot queries per attacker (lurestream);
- sparse: S streams over 500 attackers, the publisher at R events/s spread over them → delivery p50/p99,
  server CPU per delivery;
- broadcast: S streams on one attacker, R events/s → deliveries/s, p99, server CPU per delivery.
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
from dataclasses import dataclass, field
from typing import Any

import nats
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
        if self.name.startswith("lurestream") and self.extra.get("processes", 1) > 1:
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
    name = "lurestream" if processes == 1 else f"lurestream ×{processes}"
    return Server(name, port, proc, "nats", extra={"processes": processes})


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
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.offsets: list[int] = []
        self.ready: list[threading.Event] = []
        self.drained: list[threading.Event] = []
        self.logs: list[list[str]] = []
        count = -(-len(paths) // PER_LOADGEN)  # as few generators as the limit allows, evenly loaded
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
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    server: Server, nats_url: str, attackers: list[str], rate: float, seconds: float
) -> tuple[int, dict[str, int]]:
    """Publish ``rate`` events/s (each for a random attacker of ``attackers``) for ``seconds``; returns the
    number sent and how many went to each attacker."""
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
)


def scrape(server: Server) -> dict[str, dict[str, float]] | None:
    """lurestream's ``/metrics`` (every worker's values, with several processes): for each metric of
    COUNTERS, its value by the label that matters (``reason``, ``family``…; "" when unlabelled)."""
    if not server.name.startswith("lurestream"):
        return None
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=20) as r:
            text = r.read().decode()
    except OSError as exc:
        print(f"  /metrics: {exc}", file=sys.stderr)
        return None
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? ([0-9.eE+-]+|NaN)$", line)
        if not m or m.group(1) not in COUNTERS:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        label = labels.get("reason") or labels.get("family") or labels.get("kind") or ""
        values = out.setdefault(m.group(1), {})
        values[label] = values.get(label, 0.0) + float(m.group(3))
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
    load = Load(
        loadgen,
        server.port,
        paths_for(args.idle_streams, attackers, tokens),
        600,  # stopped once measured
        work,
        args.ramp,
        not args.no_sources,
        args.retry_refused,
    )
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
    load = Load(
        loadgen,
        server.port,
        paths_for(args.storm_streams, attackers, tokens),
        1,
        work,
        0,
        not args.no_sources,
        args.retry_refused,
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
) -> dict:
    paths = paths_for(streams, attackers, tokens)
    hold = args.duration + args.grace + 600  # stopped at the end of the grace
    load = Load(loadgen, server.port, paths, hold, work, args.ramp, not args.no_sources, args.retry_refused)
    try:
        load.wait_ready(streams / max(args.ramp, 1) + 120)
        time.sleep(1)
        load.reset()
        prof.start(server, scenario)
        cpu = server.cpu_seconds()
        started = time.monotonic()
        sent, per_attacker = asyncio.run(publish(server, nats_url, attackers, rate, args.duration))
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
    parser.add_argument("--output", help="also write the Markdown to this file")
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if "idle" in scenarios:  # each stream is a socket in some worker; the kernel spreads them evenly
        spread = 1.03 if args.processes > 1 else 1.0
        ensure_open_files(int(args.idle_streams / max(args.processes, 1) * spread) + 100)
    prof = Profiler(args.profile, args.profile_rate, blocking=args.profile_blocking)
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
                commit = git_commit() if name == "lurestream" else None
                server = (
                    start_lurestream(nats_svc.url, mongo_uri(mongo_svc.url, args.mongo_options), args.processes, work)
                    if name == "lurestream"
                    else start_seed(nats_svc.url, mongo_svc.url, work)
                    if name == "seed"
                    else start_nchan(work)
                )
                print(f"{server.name}: {scenario} ..." + (f" (commit {commit})" if commit else ""), file=sys.stderr)
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
                    else:
                        rate = args.broadcast_rate * factor
                        row = scenario_fanout(*common, scenario, nats_svc.url, args.broadcast_streams, ["a-0"], rate)
                    time.sleep(1)  # the load generators' closes reach the server's counters
                    if commit:
                        row["commit"] = commit
                    row["server"] = counters_row(scrape(server))
                    row["cpu_s"] = {"server": server.cpu_seconds()}  # over its life: this scenario
                    row["cpu_s"].update({k: tree_cpu(svc) - services_cpu[k] for k, svc in services.items()})
                finally:
                    prof.stop()
                    server.stop()
                print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
                results[scenario].append((server.name, row))
                time.sleep(1)
    finally:
        nats_svc.stop()
        mongo_svc.stop()
    report(results, args)


def tree_cpu(service: Any) -> float:
    """CPU seconds used so far by a local service's process and its children."""
    proc = getattr(service, "proc", None)
    if proc is None:
        return 0.0
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
    return cpu_of(proc.pid) + sum(cpu_of(int(p)) for p in out.stdout.split())


def git_commit() -> str:
    """The commit the server runs (``+`` when lurestream/ has changes not committed); read-only git calls."""
    root = os.path.dirname(HERE)
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
        (fanout_note if {"sparse", "broadcast"} & set(results) else "")
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
