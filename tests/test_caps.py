"""One per-user cap across processes (protocol §13): two real ``lurestream serve`` processes on one NATS
(JetStream) share a user's slots through the cap bucket; a killed process's slots free within the lease.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import pytest
from harness import ATTACKER_A, SECRET, VIEWER, until
from sse_client import SSEClient

from lurestream.caps import ClusterCap
from lurestream.config import config_from
from lurestream.limits import ConnectionLimiter
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
STREAM = f"/api/v1/attackers/{A}/events"


def _ready(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return json.loads(response.read())


def _streams_open(port: int) -> float:
    """The streams a server process holds (its ``lurestream_streams_open`` gauge)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lurestream_streams_open" and sample.labels.get("kind") == "attacker":
                return float(sample.value)
    return 0.0


async def _refused_at_the_cap(port: int, token: str, holds: int, cap: int = 5, timeout: float = 10.0) -> None:
    """Open one stream past the cap on ``port`` until it is refused with a 429. A process that has not heard
    the other's counts yet admits it: that stream is closed, and the next try waits until the process holds
    its own ``holds`` streams again (so a refusal can only come from the other's counts)."""
    deadline = time.monotonic() + timeout
    while True:
        client = await _open(port, token)
        if client.status == 429:
            assert json.loads(await client.body()) == {"detail": f"SSE connection limit ({cap}) reached"}
            client.close()
            return
        client.close()
        assert time.monotonic() < deadline, f"a stream past the cap still admitted on {port} after {timeout} s"
        while _streams_open(port) != holds:
            assert time.monotonic() < deadline, f"{port} still holds {_streams_open(port)} streams"
            await asyncio.sleep(0.05)


async def _admitted(port: int, token: str, timeout: float = 10.0) -> SSEClient:
    """A stream opened on ``port``, trying until the process admits it (it may not have heard yet that a
    slot freed elsewhere)."""
    deadline = time.monotonic() + timeout
    while True:
        client = await _open(port, token)
        if client.status == 200 and client.waited is None:  # type: ignore[attr-defined]
            return client
        client.close()
        assert time.monotonic() < deadline, f"still refused on {port} after {timeout} s: {client.status}"
        await asyncio.sleep(0.1)  # paces the retries


async def _heartbeat_of(nc, bucket: str, pid: int) -> str:
    """The cap bucket key of the heartbeat of the server process ``pid``."""
    kv = await nc.jetstream().key_value(bucket)
    (key,) = [k for k in await kv.keys() if k.startswith("p.") and f"-{pid}-" in k]
    return key


async def _just_after_a_heartbeat(nc, bucket: str, key: str, timeout: float = 10.0) -> None:
    """Return as soon as the heartbeat ``key`` is put again (the process beats every lease / 3)."""
    kv = await nc.jetstream().key_value(bucket)
    revision = (await kv.get(key)).revision
    deadline = time.monotonic() + timeout
    while (await kv.get(key)).revision == revision:
        assert time.monotonic() < deadline, f"no heartbeat on {key} for {timeout} s"
        await asyncio.sleep(0.01)


async def _open(port: int, token: str) -> SSEClient:
    client = await SSEClient.open(port, f"{STREAM}?token={token}")
    client.waited = await client.unavailable()  # type: ignore[attr-defined]
    if client.status == 200 and client.waited is None:  # type: ignore[attr-defined]
        await client.start_stream()
    return client


@pytest.mark.gen_test(timeout=120)
async def test_the_cap_holds_across_processes_and_a_killed_process_frees_its_slots(
    start_server, js_stream, nats_service
):
    import nats as nats_client

    lease = 3
    bucket = f"caps_{js_stream}"
    settings = dict(jetstream=js_stream, cap_bucket=bucket, cap_lease_seconds=lease, sse_max_per_user=5)
    one, two = start_server(**settings), start_server(**settings)
    # a process starts on its local cap and says "cluster" once it has joined the bucket (protocol §13)
    both = (one.port, two.port)
    await until(lambda: all(_ready(port)["cap"] == "cluster" for port in both), 30, "the cluster cap")
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    held = [await _open(one.port, token) for _ in range(3)] + [await _open(two.port, token) for _ in range(2)]
    assert [c.status for c in held] == [200] * 5
    # the 6th is refused whichever process it lands on (once each has heard the other's counts)
    await _refused_at_the_cap(one.port, token, holds=3)
    await _refused_at_the_cap(two.port, token, holds=2)
    held.pop().close()  # one stream on `two` ends: a slot frees everywhere
    held.append(await _admitted(one.port, token))

    # `one` holds 4 of the 5; killed without a goodbye, its slots free once its lease runs out
    nc = await nats_client.connect(nats_service.url)
    try:
        beat = await _heartbeat_of(nc, bucket, one.proc.pid)
        await _just_after_a_heartbeat(nc, bucket, beat)  # its slots count in full for lease / 2 from here
        one.signal(signal.SIGKILL)
    finally:
        await nc.close()
    killed = time.monotonic()
    one.wait()
    first = await _open(two.port, token)
    if time.monotonic() - killed < lease / 2 - 0.2:  # answered while `one`'s last heartbeat was certainly fresh
        assert first.status == 429, "while its heartbeat is fresh, its slots count in full"
    else:  # a machine too loaded to ask in time: refused still, finally or for now
        assert first.status == 429 or first.waited, (first.status, first.waited)  # type: ignore[attr-defined]
    first.close()
    opened, waits = [], []
    while len(opened) < 4:
        assert time.monotonic() - killed < 3 * lease, "freed within CAP_LEASE_SECONDS (with room for a loaded box)"
        client = await _open(two.port, token)
        if client.status == 200 and client.waited is None:  # type: ignore[attr-defined]
            opened.append(client)
            continue
        if client.status == 200:  # its heartbeat is late: the refusal will clear by itself, so retry
            waits.append(client.waited)  # type: ignore[attr-defined]
            assert waits[-1]["status"] == 429 and 0 < waits[-1]["retry_ms"] <= lease * 1250, waits[-1]
        else:
            assert client.status == 429
        client.close()
        await asyncio.sleep(0.25)  # paces the retries
    assert waits, "once its heartbeat is late, a native EventSource is told to retry, not refused for good"
    for client in held + opened:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_clean_stop_frees_its_slots_at_once(start_server, js_stream):
    settings = dict(jetstream=js_stream, cap_bucket=f"caps_{js_stream}", cap_lease_seconds=30, sse_max_per_user=2)
    one, two = start_server(**settings, drain_seconds=0), start_server(**settings)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    held = [await _open(one.port, token) for _ in range(2)]
    await _refused_at_the_cap(two.port, token, holds=0, cap=2)
    one.signal(signal.SIGTERM)
    assert one.wait() == 0
    # admitted within seconds, while the 30 s lease would hold the slots: a clean stop removed its keys
    fresh = [await _admitted(two.port, token) for _ in range(2)]
    assert [c.status for c in fresh] == [200, 200]
    for client in held + fresh:
        client.close()


def test_without_a_bus_the_cap_is_per_process():
    cap = ClusterCap(ConnectionLimiter(2), "b", 30)
    assert cap.mode == "local"
    assert cap.try_acquire("u") and cap.try_acquire("u") and not cap.try_acquire("u")
    cap.release("u")
    assert cap.held("u") == 1 and cap.held() == 1


@pytest.mark.gen_test(timeout=120)
async def test_a_deleted_cap_bucket_is_recreated_and_repopulated(start_server, js_stream, nats_service):
    """Deleted under running processes, the bucket was never re-created: a user opened 15 streams with a
    cap of 5 while /readyz said "cap": "cluster"."""
    import nats as nats_client

    bucket = f"caps_{js_stream}"
    settings = dict(jetstream=js_stream, cap_bucket=bucket, cap_lease_seconds=3, sse_max_per_user=5)
    one, two = start_server(**settings), start_server(**settings)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    held = [await _open(one.port, token) for _ in range(3)] + [await _open(two.port, token) for _ in range(2)]
    assert [c.status for c in held] == [200] * 5
    nc = await nats_client.connect(nats_service.url)
    try:
        await nc.jetstream().delete_key_value(bucket)
        deadline = time.monotonic() + 3 + 1  # CAP_LEASE_SECONDS, plus a heartbeat's slack
        while not (
            await _bucket_holds(nc, bucket, 5) and all(_ready(p)["cap"] == "cluster" for p in (one.port, two.port))
        ):
            assert time.monotonic() < deadline, "re-created and repopulated within CAP_LEASE_SECONDS"
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    # the cap holds again across the processes, once each has heard the other's republished counts
    await _refused_at_the_cap(one.port, token, holds=3)
    await _refused_at_the_cap(two.port, token, holds=2)
    for client in held:
        client.close()


async def _bucket_holds(nc, bucket: str, streams: int) -> bool:
    """Whether the bucket exists and its per-process counts add up to ``streams``."""
    try:
        kv = await nc.jetstream().key_value(bucket)
        keys = await kv.keys()
    except Exception:
        return False
    counts = [int((await kv.get(k)).value or 0) for k in keys if k.startswith("u.")]
    return sum(counts) == streams


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(sse_max_per_user=1)
async def test_a_reconnect_at_the_cap_is_told_to_wait_a_first_connect_is_refused(ls):
    """A reconnect's old slot may still be counted (its close not yet seen, or on a process that died): a
    429 would stop a native EventSource for good, so it is told to retry; a new connect gets the 429."""
    held = await ls.attacker(A)
    first = await ls.open(STREAM, token=ls.token())
    assert first.status == 429 and await first.json() == {"detail": "SSE connection limit (1) reached"}
    reconnect = await ls.open(STREAM, token=ls.token(), headers={"Last-Event-ID": "abcdefgh-1"})
    waited = await reconnect.unavailable()
    assert waited is not None and waited["status"] == 429 and 1000 <= waited["retry_ms"] <= 2500, waited
    held.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True, cap_lease_seconds=3)
async def test_closing_ends_the_heartbeat_even_when_its_cancellation_is_lost(ls):
    """nats.py's requests wait with ``asyncio.wait_for``, which on Python ≤ 3.11 drops a cancellation that
    arrives with the reply (gh-86296): the heartbeat loop ran on, and shutdown waited for ever (a loaded
    suite run, 20 s in ``Services.close``). A put that swallows the cancellation: close still returns."""
    cap = ls.services.limiter
    assert isinstance(cap, ClusterCap)
    await until(lambda: cap._kv is not None, 10, "the cap bucket")
    kv, entered = cap._kv, asyncio.Event()
    assert kv is not None
    real_put = kv.put

    async def loses_the_cancellation(*args: object, **kwargs: object) -> int:
        entered.set()
        try:
            await asyncio.Event().wait()  # a reply that lands just as the cancellation does
        except asyncio.CancelledError:
            return 0
        return await real_put(*args, **kwargs)  # type: ignore[arg-type]

    kv.put = loses_the_cancellation  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(entered.wait(), 10)  # the next heartbeat, within lease / 3
        await asyncio.wait_for(cap.close(), 10)
    finally:
        kv.put = real_put  # type: ignore[method-assign]
