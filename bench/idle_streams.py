"""Server memory per idle stream: lurestream (real auth, MongoDB-wire, NATS) against a bare Tornado
handler that holds the same number of open chunked responses and does nothing else (the floor).

    python bench/idle_streams.py [--streams 2000]

Starts its own nats-server, MongoDB-wire server and servers; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time

from pymongo import MongoClient
from serving import SECRET, serve

from lurestream.config import config_from
from lurestream.localservices import free_port, mongo_wire_server, nats_server, wait_port
from lurestream.tokens import mint_token

BARE = r"""
import asyncio, sys, tornado.web
class H(tornado.web.RequestHandler):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        self.write(": keepalive\n\n"); await self.flush()
        await asyncio.Event().wait()
async def main():
    tornado.web.Application([(r"/s", H)]).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()
asyncio.run(main())
"""


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(port: int, paths: list[str]) -> list[asyncio.StreamWriter]:
    writers = []
    for i in range(0, len(paths), 200):  # in batches, so the listen backlog never overflows
        batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in paths[i : i + 200]))
        for (reader, writer), path in zip(batch, paths[i : i + 200], strict=True):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
            writers.append((reader, writer))
        await asyncio.gather(*(r.readuntil(b"keepalive\n\n") for r, _ in batch))
    return [w for _, w in writers]


def measure(pid: int, port: int, paths: list[str]) -> tuple[int, int]:
    time.sleep(0.5)
    before = rss_kb(pid)

    async def run() -> int:
        writers = await hold(port, paths)
        await asyncio.sleep(1.0)
        after = rss_kb(pid)
        for w in writers:
            w.close()
        return after

    return before, asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--attackers", type=int, default=100)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="lurestream-bench-")
    nats_svc, mongo_svc = nats_server(work).start(), mongo_wire_server(work).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        users = [f"user-{i}" for i in range(args.streams // 5 + 1)]
        with MongoClient(mongo_svc.url) as client:
            client.b.users.insert_many([{"_id": u, "role": "viewer"} for u in users])
            client.b.attackers.insert_many(
                [
                    {"_id": f"a-{i}", "ip": f"10.0.{i // 250}.{i % 250}", "identity_id": None}
                    for i in range(args.attackers)
                ]
            )
        config = config_from({"jwt_secret": SECRET})
        tokens = {u: mint_token(config, u) for u in users}
        paths = [
            f"/api/v1/attackers/a-{i % args.attackers}/events?token={tokens[users[i // 5]]}"
            for i in range(args.streams)
        ]
        port = free_port()
        ours = serve(port, nats_svc.url, mongo_svc.url, "b")
        procs.append(ours)
        ours_before, ours_after = measure(ours.pid, port, paths)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)])
        procs.append(bare)
        wait_port(bare_port, 20, bare)
        bare_before, bare_after = measure(bare.pid, bare_port, ["/s"] * args.streams)
        per_ours = (ours_after - ours_before) / args.streams
        per_bare = (bare_after - bare_before) / args.streams
        print(f"{args.streams} idle streams, server RSS growth (python {sys.version.split()[0]})")
        print("| server | RSS before (KB) | RSS after (KB) | KB per idle stream |")
        print("|---|---|---|---|")
        print(f"| lurestream | {ours_before} | {ours_after} | {per_ours:.1f} |")
        print(f"| bare Tornado handler (floor) | {bare_before} | {bare_after} | {per_bare:.1f} |")
        print(f"\nlurestream holds {per_ours / per_bare:.2f}x the floor per idle stream")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        nats_svc.stop()
        mongo_svc.stop()


if __name__ == "__main__":
    main()
