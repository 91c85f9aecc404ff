"""Hub routing cost, in process: lurestream's keyed routing against the seed's per-connection filter.

The seed (DECNET) gave every connection its own subscriptions and filtered every event in every
connection; lurestream decodes once, looks the key up once, encodes once and enqueues to the matches.
Both run here in the same invocation on the same events, and the figure that matters is the ratio.

    python bench/hub_fanout.py [--streams 5000] [--keys 500] [--events 20000]
    python bench/hub_fanout.py --compare /tmp/oldmain --rounds 3   # this checkout ÷ another, interleaved

``--compare PATH`` runs the lurestream figures (not the seed's) alternately against the ``lurestream`` package
of another checkout (``PYTHONPATH=PATH``) and this one, ``--rounds`` times each, in fresh processes, and
prints each round's figures and the ratio this ÷ that per figure (the median over the rounds last).
The script speaks both the API of fdedff4 (``Hub(queue_max=…)``, ``LiveWriter(hub, …)``,
``open(sock, keys, …)``) and the current one (``LiveWriter(metrics, …)``, ``open(sock, source, keys, …)``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

from lurestream import sse
from lurestream.hub import Hub, decode_envelope
from lurestream.routing import route
from lurestream.writer import LiveWriter


def make_events(keys: int, count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(1)
    return [
        (
            "attacker.observation.ja3",
            json.dumps(
                {
                    "v": 1,
                    "id": str(i),
                    "type": "observation",
                    "ts": time.time(),
                    "payload": {"attacker_uuid": f"attacker-{rng.randrange(keys)}", "value": "x" * 80},
                }
            ).encode(),
        )
        for i in range(count)
    ]


def bench_lurestream(streams: int, keys: int, events: list[tuple[str, bytes]], send: bool) -> tuple[float, int]:
    """Decode, route, encode once and queue into live streams over socket pairs; with ``send``, also
    flush after each event (one chunk per stream, a real send each), draining the peers as needed."""

    async def run() -> tuple[float, int]:
        hub = Hub("", queue_max=10**9) if "queue_max" in inspect.signature(Hub).parameters else Hub("")
        owner = hub if "hub" in inspect.signature(LiveWriter).parameters else hub.metrics
        writer = LiveWriter(
            owner, keepalive_seconds=15, send_timeout_seconds=10, retry_ms=1000, max_bytes=1 << 40, queue_max=10**9
        )
        with_source = "source" in inspect.signature(LiveWriter.open).parameters
        pairs = [socket.socketpair() for _ in range(streams)]
        for i, (ours, theirs) in enumerate(pairs):
            theirs.setblocking(False)
            stream_keys = [("attacker", f"attacker-{i % keys}")]
            if with_source:
                stream = writer.open(ours, hub, stream_keys, b"", user="u", kind="attacker")
            else:
                stream = writer.open(ours, stream_keys, b"", user="u", kind="attacker")
            stream.go_live([], 0)
        writer.flush()
        elapsed, delivered = 0.0, 0
        for start_at in range(0, len(events), 50):  # drain the peers every 50 events (not timed)
            start = time.perf_counter()
            for subject, data in events[start_at : start_at + 50]:
                delivered += hub.dispatch(subject, data)
                if send:
                    writer.flush()
            elapsed += time.perf_counter() - start
            for _ours, theirs in pairs:
                try:
                    while theirs.recv(1 << 16):
                        pass
                except BlockingIOError:
                    pass
        writer.close()
        for _ours, theirs in pairs:
            theirs.close()
        return elapsed, delivered

    return asyncio.run(run())


def bench_seed(streams: int, keys: int, events: list[tuple[str, bytes]]) -> tuple[float, int]:
    """The seed's shape: each connection decodes, filters and encodes every event on its own."""
    wanted = [f"attacker-{i % keys}" for i in range(streams)]
    queues: list[list[bytes]] = [[] for _ in range(streams)]
    start = time.perf_counter()
    delivered = 0
    for subject, data in events:
        for i in range(streams):
            env = decode_envelope(subject, data)
            if env.payload.get("attacker_uuid") == wanted[i]:
                target = route(subject, env.payload)
                assert target is not None
                queues[i].append(sse.encode_event(target.event, env.topic, env.type, env.ts, env.payload))
                delivered += 1
    return time.perf_counter() - start, delivered


FIGURES = (
    ("queue_us_per_event", "route + queue: µs per event"),
    ("send_us_per_event", "route + queue + send: µs per event"),
)


def compare(args: argparse.Namespace) -> None:
    """This checkout against ``args.compare``'s, alternately in fresh processes (see the module docstring)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, os.path.abspath(__file__), "--json", "--streams", str(args.streams)]
    argv += ["--keys", str(args.keys), "--events", str(args.events), "--send-events", str(args.send_events)]
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for rnd in range(args.rounds):
        for which, path in (("old", args.compare), ("new", here)):
            env = dict(os.environ, PYTHONPATH=path)
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            runs[which].append(figures)
            print(f"round {rnd + 1} {which} ({figures['lurestream']}): {json.dumps(figures)}", file=sys.stderr)
    print(
        f"streams={args.streams} keys={args.keys} events={args.events} send-events={args.send_events}; "
        f"old = {runs['old'][0]['lurestream']}, new = {runs['new'][0]['lurestream']}"
    )
    print(
        "| figure | "
        + " | ".join(f"round {r + 1} old / new" for r in range(args.rounds))
        + " | new ÷ old per round | median |"
    )
    print("|---" * (args.rounds + 3) + "|")
    for key, title in FIGURES:
        pairs = [(o[key], n[key]) for o, n in zip(runs["old"], runs["new"], strict=True)]
        ratios = [n / o for o, n in pairs]
        cells = " | ".join(f"{o:.2f} / {n:.2f}" for o, n in pairs)
        print(f"| {title} | {cells} | {', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--seed-events", type=int, default=200, help="events for the (slow) seed baseline")
    parser.add_argument("--send-events", type=int, default=2000, help="events for the route + queue + send run")
    parser.add_argument("--compare", metavar="PATH", help="another checkout: its lurestream against this one's")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: alternate runs of each")
    parser.add_argument("--json", action="store_true", help="lurestream's figures only, as one JSON line")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    events = make_events(args.keys, args.events)
    if args.json:
        queued, queued_n = bench_lurestream(args.streams, args.keys, events, send=False)
        sent, sent_n = bench_lurestream(args.streams, args.keys, events[: args.send_events], send=True)
        import lurestream

        figures = {
            "lurestream": os.path.dirname(os.path.dirname(os.path.abspath(lurestream.__file__))),
            "queue_us_per_event": queued / len(events) * 1e6,
            "queue_deliveries": queued_n,
            "send_us_per_event": sent / args.send_events * 1e6,
            "send_deliveries": sent_n,
        }
        print(json.dumps(figures))
        return
    queued, queued_n = bench_lurestream(args.streams, args.keys, events, send=False)
    sent, sent_n = bench_lurestream(args.streams, args.keys, events[: args.send_events], send=True)
    seed, seed_n = bench_seed(args.streams, args.keys, events[: args.seed_events])
    print(f"streams={args.streams} keys={args.keys}")
    print("| design | events | deliveries | µs per event | µs per delivery |")
    print("|---|---|---|---|---|")
    rows = [
        ("lurestream hub: route + queue", queued, len(events), queued_n),
        ("lurestream hub + writer: route + queue + send", sent, args.send_events, sent_n),
        ("seed (filter per connection)", seed, args.seed_events, seed_n),
    ]
    for name, seconds, n_events, n_deliveries in rows:
        per_event = seconds / n_events * 1e6
        per_delivery = seconds / max(n_deliveries, 1) * 1e6
        print(f"| {name} | {n_events} | {n_deliveries} | {per_event:.1f} | {per_delivery:.2f} |")
    print(
        f"\nper event, the seed's design costs {(seed / args.seed_events) / (queued / len(events)):.0f}x "
        "lurestream's hub (route + queue)"
    )


if __name__ == "__main__":
    main()
