"""One cluster, failures on purpose (protocol §7, §13): a NATS node, a host killed, a rolling restart, a
paused host — and not one event lost or doubled on any client.

Every test runs a whole cluster (clusterkit.py: 3 NATS nodes with JetStream R3, 3 lurestream hosts on
127.0.0.2-4, one MongoDB-wire server), a publisher that retries through JetStream until each event is
stored once, and followers — SSE clients that reconnect by themselves with ``Last-Event-ID`` to whichever
host answers. The check is always the same (``exactness``): read the stream back, and for every client
every stored sequence of its attacker after its first snapshot arrived exactly once, in order.
Summaries go to stdout (``pytest -s`` or ``-rP`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter

import pytest
from clusterkit import (
    Cluster,
    Followers,
    Publisher,
    exactness,
    peak_per_second,
    read_stream,
    reconnect_times,
    truth_problems,
)
from processes import read_by_server, refusing

pytestmark = pytest.mark.slow


def _endpoint(host) -> str:
    return f"{host.address}:{host.port}"


async def _finish(cluster: Cluster, pub: Publisher, *groups: Followers) -> None:
    """Stop publishing, let every client reach the last stored id, and check the whole run."""
    await pub.stop()
    for group in groups:
        await group.wait_position(pub.last_seq, timeout=30)
    truth = await read_stream(cluster.nats.urls, cluster.stream)
    assert not truth_problems(pub, truth), truth_problems(pub, truth)
    assert len(truth) >= len(pub.acked) >= 100, f"{len(truth)} stored, {len(pub.acked)} acknowledged"
    for group in groups:
        problems = exactness(group, truth)
        assert not problems, "\n".join(problems[:20])


async def _flowing(group: Followers, events: int = 3) -> None:
    """Until every client has live events in hand (mid-stream, before a fault): counted, not slept for."""
    await group.wait(lambda: all(len(f.events) >= events for f in group), 30, f"{events} events on every client")


async def _published_on(pub: Publisher, group: Followers, seconds: float = 2) -> None:
    """Until ``seconds`` worth of events more were stored (publishing goes on after a fault)."""
    target = len(pub.acked) + int(seconds * pub.rate)
    await group.wait(lambda: len(pub.acked) >= target, 30, f"{seconds} s of events more")


def _counters(hosts, *prefixes: str) -> dict[str, float]:
    """The hosts' metrics whose names start with one of ``prefixes``, summed over the live hosts."""
    total: Counter[str] = Counter()
    for host in hosts:
        if host.alive():
            for name, value in host.metrics().items():
                if name.startswith(prefixes) and value:
                    total[name] += value
    return dict(total)


def _refusals(group: Followers) -> dict[str, int]:
    total: Counter[str] = Counter()
    for f in group:
        total.update(f.refusals)
    return dict(total)


@pytest.mark.gen_test(timeout=120)
async def test_killing_the_nats_node_of_a_host_loses_nothing_and_reconnects_no_stream(cluster, followers, publisher):
    group = followers(45)
    pub = await publisher(rate=40)
    await group.wait_live()
    await _flowing(group)
    host = cluster.hosts[0]
    node = await asyncio.to_thread(cluster.nats_node_of, host)
    # the worst node to lose: it also leads the event stream and the cap bucket (and the meta group, by chance)
    await cluster.nats.make_leader(node.server_name, [cluster.stream, f"KV_{cluster.host_settings()['cap_bucket']}"])
    meta = await asyncio.to_thread(cluster.nats.meta_leader)
    before = {f.name: f.connects for f in group}
    assert set(before.values()) == {1}
    delivered = sum(len(f.events) for f in group)

    published = len(pub.acked)
    seen: list[tuple[float, int, dict]] = []
    watch = asyncio.ensure_future(_watch_ready(host, seen))
    node.kill()  # SIGKILL, mid-stream, while publishing
    killed = time.time()
    # through the fail-over (a new stream leader, the host's new connection) and 3 s beyond
    await group.wait(lambda: len(pub.acked) >= published + 8 * pub.rate, 40, "publishing to go on")
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    moved_to = await asyncio.to_thread(cluster.nats_node_of, host)
    assert moved_to is not node, f"{host.name} is still on {node.name}"
    await _finish(cluster, pub, group)

    assert {f.name: f.connects for f in group} == before, "no client reconnected"
    assert sum(len(f.events) for f in group) > delivered
    gaps = [max((b - a for a, b in _arrivals_around(f, killed)), default=0.0) for f in group]
    metrics = await asyncio.to_thread(host.metrics)
    assert metrics["lurestream_bus_connected"] == 1.0
    log = host.log()
    assert "NATS reconnected" in log
    not_ready = sorted({f"{status} {body.get('bus')}/{body.get('cap')}" for _, status, body in seen if status != 200})
    print(
        f"\n{host.name} /readyz while its node was gone: {not_ready or 'always 200'}; "
        f"{len([1 for _, status, _ in seen if status != 200])} of {len(seen)} polls (every 0.2 s) not ready"
    )
    print(
        f"\nkilled {node.name} (held {host.name}'s connection, led the stream and the cap bucket; "
        f"meta leader {meta}), "
        f"{host.name} moved to {moved_to.name}; "
        f"publish retries {dict(pub.retries)}, stalls {[round(s, 2) for _, s in pub.stalls]}; "
        f"longest silence between events on a client around the kill {max(gaps):.2f}s; "
        f"{sum(len(f.events) for f in group)} events to {len(group)} clients, none lost or doubled"
    )


@pytest.mark.gen_test(timeout=150)
async def test_pausing_the_nats_node_of_a_host_is_left_within_10_seconds(cluster, followers, publisher):
    """protocol §16: SIGSTOP the node a host uses — its streams got nothing for the whole 30 s (nats.py pinged
    every 120 s), while JetStream itself re-elected in 7.4 s. The host must move to another node within 10 s
    and its streams go on, with nothing lost and no client reconnecting."""
    group = followers(30)
    pub = await publisher(rate=40)
    await group.wait_live()
    await _flowing(group)
    host = cluster.hosts[0]
    node = await asyncio.to_thread(cluster.nats_node_of, host)
    on_host = group.on(_endpoint(host))
    assert on_host, "some clients stream from the host whose node is paused"
    before = {f.name: f.connects for f in group}
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    paused = time.time()
    try:
        left = None
        while left is None:  # the host's connection shows up on another node
            elapsed = time.time() - paused
            assert elapsed < 10, f"{host.name} still on the paused {node.name} after {elapsed:.1f}s"
            for other in (n for n in cluster.nats.nodes if n is not node):
                with contextlib.suppress(Exception):
                    names = {c.get("name") for c in await asyncio.to_thread(other.connz)}
                    if host.nats_connection_name in names:
                        moved_to, left = other, time.time() - paused
            await asyncio.sleep(0.2)
        published = len(pub.acked)
        await group.wait(lambda: len(pub.acked) >= published + 8 * pub.rate, 60, "publishing to go on")
        gaps = [max((b - a for a, b in _arrivals_around(f, paused)), default=0.0) for f in on_host]
        # JetStream re-elects what the paused node led (seconds, outside lurestream); the streams then go on
        assert max(gaps) < 15, f"the host's streams were blind for {max(gaps):.1f}s"
    finally:
        node.proc.send_signal(signal.SIGCONT)
    await _finish(cluster, pub, group)
    assert {f.name: f.connects for f in group} == before, "no client reconnected"
    print(
        f"\nSIGSTOP {node.name} (held {host.name}'s connection): {host.name} moved to {moved_to.name} after "
        f"{left:.1f}s; longest silence on its {len(on_host)} clients {max(gaps):.2f}s; publish stalls "
        f"{[round(s, 2) for _, s in pub.stalls]}"
    )


async def _watch_ready(host, seen: list[tuple[float, int, dict]]) -> None:
    """Poll the host's /readyz every 0.2 s (into ``seen``) until cancelled."""
    while True:
        status, body = await asyncio.to_thread(host.ready)
        seen.append((time.time(), status, body))
        await asyncio.sleep(0.2)


def _arrivals_around(follower, at: float) -> list[tuple[float, float]]:
    times = [t for _, t, _ in follower.events if at - 5 < t < at + 15]
    return list(zip(times, times[1:], strict=False))


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_host_s_clients_resume_exactly_on_the_others(cluster, followers, publisher):
    group = followers(45)
    pub = await publisher(rate=40)
    await group.wait_live()
    await _flowing(group)
    victim = cluster.hosts[0]
    gone = _endpoint(victim)
    moving = group.on(gone)
    staying = {f.name: f.connects for f in group if f not in moving}
    assert len(moving) >= 10

    victim.kill()
    killed = time.time()
    await group.wait(
        lambda: all(f.live and f.host != gone for f in moving), 30, "the killed host's clients to resume elsewhere"
    )
    back = max(f.sessions[-1].started for f in moving) - killed
    await _published_on(pub, group)
    await _finish(cluster, pub, group)

    for f in moving:
        assert [s.opening for s in f.sessions[1:]] == ["resumed"] * (f.connects - 1), f.sessions
    assert {f.name: f.connects for f in group if f not in moving} == staying, "the other hosts' clients stayed"
    print(
        f"\nSIGKILL {victim.name}: its {len(moving)} clients resumed on the others within {back:.1f}s "
        f"(refusals on the way: {_refusals(group)}; a user at the cap waits for the dead host's lease, "
        f"{cluster.settings['cap_lease_seconds']}s); replayed {sum(s.replayed for f in moving for s in f.sessions)}; "
        f"the others' metrics: {await asyncio.to_thread(_counters, cluster.hosts, 'lurestream_resumes_total')}"
    )


@pytest.mark.gen_test(timeout=120)
@pytest.mark.cluster(cap_lease_seconds=10)
async def test_users_at_their_cap_on_a_killed_host_are_back_within_the_lease(cluster, followers, publisher):
    """protocol §13/§16: 5,000 streams on a SIGKILLed host got 16,698 × 429 and nobody streamed for 24 s (a 30 s
    lease); a native EventSource stops for good on a 429. Now the lease is 10 s and a reconnect at the cap
    is told to wait (200, retry:, `unavailable`), never a final 429: every user is back within ~10 s."""
    group = followers(25, start_on=0)  # 5 users × 5 streams, all on host 0: each user at the cap there
    pub = await publisher(rate=40)
    await group.wait_live()
    await _flowing(group)
    victim = cluster.hosts[0]
    assert all(f.host == _endpoint(victim) for f in group)
    victim.kill()
    killed = time.time()
    await group.wait(lambda: all(f.live and f.host != _endpoint(victim) for f in group), 30, "every user back")
    back = max(f.sessions[-1].started for f in group) - killed
    await _published_on(pub, group, 1)
    await _finish(cluster, pub, group)
    refusals = _refusals(group)
    assert "http_429" not in refusals, f"a reconnect got a final 429 (a native EventSource would stop): {refusals}"
    # within the lease and a few heartbeats (room for a loaded machine), not the 24 s of the issue
    assert back < 1.5 * 10, f"users back {back:.1f}s after the kill (lease 10 s)"
    for f in group:
        assert [s.opening for s in f.sessions[1:]] == ["resumed"], f.sessions
    print(f"\nSIGKILL {victim.name} with 5 users at their cap: all back after {back:.1f}s; refusals {refusals}")


@pytest.mark.gen_test(timeout=150)
async def test_a_rolling_restart_moves_every_client_without_a_gap(cluster, followers, publisher):
    drain = float(cluster.settings["drain_seconds"])
    group = followers(60)
    pub = await publisher(rate=40)
    await group.wait_live()
    await _flowing(group)
    windows = []
    for host in cluster.hosts:
        began = time.time()
        host.signal(signal.SIGTERM)
        status, body = await asyncio.to_thread(host.ready)  # the listener is closed at once: refused
        assert status in (0, 503), (status, body)
        assert await asyncio.to_thread(host.wait, 30) == 0
        windows.append((host.name, _endpoint(host), began, time.time()))
        await host.start_async()  # again, on the same address and port
    await _published_on(pub, group)
    await _finish(cluster, pub, group)

    lines = []
    for name, endpoint, began, ended in windows:
        drained = [s for f in group for s in f.sessions if s.host == endpoint and s.started < began <= s.ended]
        # a stream cannot outlive its process (`ended` is after its exit): the 2 s are the clients' own lag
        late = [s for s in drained if s.ended > ended + 2 or s.end != "eof" or s.retry_hint is None]
        assert not late, f"{name}: streams not closed by the drain with a retry: hint: {late}"
        drops = sorted(s.ended for s in drained)
        spread = drops[-1] - drops[0] if drops else 0.0
        peak = peak_per_second(drops)
        assert spread >= 0.5 * drain, f"{name}: {len(drops)} streams closed within {spread:.2f}s of a {drain}s drain"
        assert peak <= max(3, 0.6 * len(drops)), f"{name}: {peak} of {len(drops)} streams closed within one second"
        lines.append(
            f"{name}: {len(drops)} streams closed over {spread:.2f}s (peak {peak}/s), exit 0 after {ended - began:.1f}s"
        )
    reconnects = reconnect_times(group)
    assert len(reconnects) >= len(group)
    for f in group:
        # a reconnect that reached a host just as it began draining is drained at once, before its opening
        # frame: a `retry:` and the end, nothing delivered (EventSource reconnects; a 503 would stop it)
        drained_at_once = [s for s in f.sessions[1:] if not s.opening]
        assert all(s.events == 0 and s.retry_hint is not None for s in drained_at_once), f.sessions
        assert all(s.opening == "resumed" for s in f.sessions[1:] if s.opening), f.sessions
    resumes = await asyncio.to_thread(_counters, cluster.hosts, "lurestream_resumes_total")
    print(
        f"\nrolling restart, drain {drain}s: " + "; ".join(lines) + f"; {len(reconnects)} reconnects, peak "
        f"{peak_per_second(reconnects)}/s; refusals {_refusals(group)}; publish stalls {len(pub.stalls)}; "
        f"metrics of the restarted hosts: {resumes}"
    )


@pytest.mark.gen_test(timeout=120)
async def test_a_paused_host_loses_nothing(cluster, followers, publisher):
    send_timeout = float(cluster.settings["send_timeout_seconds"])
    group = followers(45)
    pub = await publisher(rate=40)
    await group.wait_live()
    await _flowing(group)
    victim = cluster.hosts[0]
    paused = _endpoint(victim)
    moving = group.on(paused)
    assert len(moving) >= 10

    victim.signal(signal.SIGSTOP)
    await asyncio.sleep(max(5.0, send_timeout + 3))  # on purpose: longer than the send timeout and 3 keepalives
    victim.signal(signal.SIGCONT)
    await group.wait(
        lambda: all(f.live and f.host != paused for f in moving), 30, "the paused host's clients to resume elsewhere"
    )
    await asyncio.to_thread(victim.wait_ready, 20)
    late = followers(5, first_user=10, start_on=0, prefix="late")  # new streams on the host that was paused
    await late.wait_live()
    assert {f.sessions[0].host for f in late} == {paused}
    await _published_on(pub, group)
    await _finish(cluster, pub, group, late)

    for f in moving:
        assert f.sessions[0].end == "silence" and f.sessions[1].opening == "resumed", f.sessions
    metrics = await asyncio.to_thread(victim.metrics)
    open_streams = metrics.get('lurestream_streams_open{kind="attacker"}')
    assert open_streams == len(late), f"{open_streams} open on {victim.name}: the abandoned streams were not closed"
    closed = {k: v for k, v in metrics.items() if k.startswith("lurestream_stream_disconnects_total")}
    print(
        f"\nSIGSTOP {victim.name} for longer than the send timeout ({send_timeout}s): its {len(moving)} clients "
        f"moved after 3 silent keepalive periods and resumed; after SIGCONT it closed the abandoned streams "
        f"({closed}) and serves again; refusals {_refusals(group)}"
    )


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_opening_as_the_drain_begins_is_closed_within_the_drain(cluster, followers):
    """protocol §7: after SIGTERM the open streams are closed over DRAIN_SECONDS, then the process exits. A
    request already in its handler when the signal comes (here: waiting for its user's look-up, MongoDB
    being paused for a moment) opens its stream after the drain has listed the streams to close: it
    must still be closed within the window (or refused), not kept until the drain's safety deadline."""
    drain = float(cluster.settings["drain_seconds"])
    host, mongo = cluster.hosts[0], cluster.mongo.proc
    assert mongo is not None
    token = cluster.token(cluster.seed_data.users[-1])  # a user this host has not looked up yet
    path = f"/api/v1/attackers/{cluster.seed_data.attackers[0]}/events?token={token}"
    settled = followers(3, first_user=0, start_on=0)  # streams open on the host when the drain begins
    await settled.wait_live()
    mongo.send_signal(signal.SIGSTOP)
    try:
        reader, writer = await asyncio.open_connection(host.address, host.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host.address}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        await read_by_server(writer.get_extra_info("socket"))
        await asyncio.sleep(0.3)  # read: from there on only CPU work until it waits in its handler for MongoDB
        began = time.monotonic()
        host.signal(signal.SIGTERM)
        await refusing(host.port, host.address)  # the drain has begun (its listener closes first)
    finally:
        mongo.send_signal(signal.SIGCONT)  # the look-up answers: the stream opens 0.3 s into the drain
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    body = b""
    if status == 200:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 30):
                body += chunk
    ended = time.monotonic() - began
    writer.close()
    code = await asyncio.to_thread(host.wait, 30)
    exited = time.monotonic() - began
    print(
        f"\nstream opened 0.3 s into a {drain:g} s drain: HTTP {status}, "
        f"ended after {ended:.1f} s, the process exited after {exited:.1f} s"
    )
    assert status in (200, 503), head
    # the bug kept it until the drain's safety deadline (drain + 5 s); the bounds leave a loaded machine room
    if status == 200:
        assert b"retry:" in body, body[-300:]
        assert ended <= drain + 3.0, f"the stream was closed {ended:.1f}s after SIGTERM, drain is {drain:g}s"
    assert code == 0
    assert exited <= drain + 4.0, f"the process exited {exited:.1f}s after SIGTERM, drain is {drain:g}s"
