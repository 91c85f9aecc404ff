"""What a resume costs (SPEC §7): connect→replay-complete time for gaps of growing length, against a
fresh connect with a snapshot (the baseline) measured in the same run.

    python bench/resume_replay.py [--gaps 100,1000,10000] [--share 0.1] [--repeat 5] [--memory -1]

Starts its own nats-server (JetStream) and MongoDB-wire server and ``lurestream serve``; publishes the
largest gap of events (``--share`` of them for the watched attacker, the rest for others) and resumes
from ``<epoch>-<position - gap>`` for each gap (the epoch and position of a fresh connect's snapshot id).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time

import nats
from pymongo import MongoClient
from serving import SECRET, serve

from lurestream.config import config_from
from lurestream.eventids import format_id, parse_id
from lurestream.localservices import free_port, mongo_wire_server, nats_server
from lurestream.tokens import mint_token

ATTACKER = "a-watched"


async def connect_until(port: int, path: str, headers: str, done: object) -> tuple[float, str]:
    """Open a stream and read until ``done(text)``; returns (seconds, text)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\n{headers}\r\n".encode())
    text = ""
    try:
        while not done(text):  # type: ignore[operator]
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 30)
            except asyncio.TimeoutError:
                raise RuntimeError(f"stalled after: {text[:300]!r}") from None
            if not chunk:
                raise RuntimeError(f"stream ended early: {text[:300]}")
            text += chunk.decode("utf-8", "replace")
        return time.perf_counter() - started, text
    finally:
        writer.close()


def snapshot_complete(text: str) -> bool:
    return "\n\n" in text.partition("event: snapshot")[2]  # (the body is chunked: frames end "\n\n\r\n")


def replay_complete(text: str) -> bool:
    if "event: snapshot" in text:
        raise RuntimeError("got a snapshot instead of a resume: " + text[:300])
    marker = text.find('"replayed":')
    if marker < 0:
        return False
    wanted = int(text[marker + 11 :].split("}", 1)[0])
    return text.count("\n\n", marker) >= wanted + 1  # the resumed frame's end, then one per replayed frame


async def run(args: argparse.Namespace, port: int, nats_url: str, token: str) -> list[tuple[str, float, int]]:
    path = f"/api/v1/attackers/{ATTACKER}/events?token={token}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    largest = max(args.gaps)
    every = max(1, round(1 / args.share))
    for i in range(largest):
        uuid = ATTACKER if i % every == 0 else f"other-{i % 997}"
        body = {"type": "observation", "ts": time.time(), "payload": {"attacker_uuid": uuid, "n": i, "v": "x" * 80}}
        await js.publish("attacker.observation.ja3", json.dumps(body).encode())
    await nc.close()
    await asyncio.sleep(0.5)  # let the server's consumer catch up
    rows = []
    snaps = []
    for _ in range(args.repeat):
        seconds, text = await connect_until(port, path, "", snapshot_complete)
        snaps.append(seconds)
    snapshot_id = text.partition("event: snapshot")[0].rsplit("id: ", 1)[1].split("\n")[0]  # the snapshot's id
    parsed = parse_id(snapshot_id)
    if parsed is None:
        raise RuntimeError(f"the snapshot's id {snapshot_id!r} is not <epoch>-<sequence>")
    epoch, position = parsed
    rows.append(("fresh connect (snapshot)", statistics.median(snaps), 0))
    for gap in args.gaps:
        times = []
        resume_from = format_id(epoch, position - gap)  # an id of the same stream, `gap` messages back
        for _ in range(args.repeat):
            seconds, _text = await connect_until(port, path, f"Last-Event-ID: {resume_from}\r\n", replay_complete)
            times.append(seconds)
        rows.append((f"resume, gap {gap} messages", statistics.median(times), gap))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaps", default="100,1000,10000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--share", type=float, default=0.1, help="share of the gap for the watched attacker")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--memory",
        type=int,
        default=-1,
        help="LURESTREAM_REPLAY_MEMORY (-1: the default; 0: every resume reads JetStream)",
    )
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="lurestream-bench-")
    nats_svc, mongo_svc = nats_server(work).start(), mongo_wire_server(work).start()
    proc = None
    try:
        with MongoClient(mongo_svc.url) as client:
            client.b.users.insert_one({"_id": "u", "role": "viewer"})
            client.b.attackers.insert_one({"_id": ATTACKER, "ip": "10.0.0.1", "identity_id": None})
            client.b.observations.insert_many(
                [
                    {"attacker_uuid": ATTACKER, "primitive": f"p{i % 20}", "value": "v", "ts": float(i)}
                    for i in range(200)
                ]
            )
        token = mint_token(config_from({"jwt_secret": SECRET}), "u", ttl=3600)
        port = free_port()
        proc = serve(
            port,
            nats_svc.url,
            mongo_svc.url,
            "b",
            jetstream="bench",
            replay_max=max(args.gaps),
            replay_memory=args.memory,
        )
        time.sleep(1.0)
        rows = asyncio.run(run(args, port, nats_svc.url, token))
        base = rows[0][1]
        source = "JetStream reads" if args.memory == 0 else "the process's replay memory"
        print(
            f"Resume cost from {source}, median of {args.repeat} (python {sys.version.split()[0]}, "
            f"{args.share:.0%} of the gap"
        )
        print("for the watched attacker, snapshot of 20 primitives over 200 stored observations)\n")
        print("| connect | ms to replay complete | × fresh connect | messages scanned per ms |")
        print("|---|---|---|---|")
        for name, seconds, gap in rows:
            rate = f"{gap / (seconds * 1000):.0f}" if gap else "—"
            print(f"| {name} | {seconds * 1000:.1f} | {seconds / base:.2f} | {rate} |")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(15)
        nats_svc.stop()
        mongo_svc.stop()


if __name__ == "__main__":
    main()
