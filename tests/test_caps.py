"""One per-user cap across processes (SPEC §13): two real ``lurestream serve`` processes on one NATS
(JetStream) share a user's slots through the cap bucket; a killed process's slots free within the lease.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import pytest
from harness import ATTACKER_A, SECRET, VIEWER
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


async def _open(port: int, token: str) -> SSEClient:
    client = await SSEClient.open(port, f"{STREAM}?token={token}")
    if client.status == 200:
        await client.start_stream()
    return client


@pytest.mark.gen_test(timeout=120)
async def test_the_cap_holds_across_processes_and_a_killed_process_frees_its_slots(start_server, js_stream):
    settings = dict(jetstream=js_stream, cap_bucket=f"caps_{js_stream}", cap_lease_seconds=3, sse_max_per_user=5)
    one, two = start_server(**settings), start_server(**settings)
    assert _ready(one.port)["cap"] == "cluster" and _ready(two.port)["cap"] == "cluster"
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    held = [await _open(one.port, token) for _ in range(3)] + [await _open(two.port, token) for _ in range(2)]
    assert [c.status for c in held] == [200] * 5
    await asyncio.sleep(0.5)  # each process hears the other's counts
    for port in (one.port, two.port):  # the 6th is refused whichever process it lands on
        refused = await _open(port, token)
        assert refused.status == 429, port
        assert json.loads(await refused.body()) == {"detail": "SSE connection limit (5) reached"}
        refused.close()
    held.pop().close()  # one stream on `two` ends: a slot frees everywhere
    await asyncio.sleep(0.5)
    again = await _open(one.port, token)
    assert again.status == 200
    held.append(again)

    # `one` holds 4 of the 5; killed without a goodbye, its slots free once its lease runs out
    one.signal(signal.SIGKILL)
    one.wait()
    killed = time.monotonic()
    assert (await _open(two.port, token)).status == 429, "until the lease runs out, the slots stay counted"
    opened = []
    while len(opened) < 4:
        assert time.monotonic() - killed < 3 + 3, "freed within CAP_LEASE_SECONDS (plus a heartbeat)"
        client = await _open(two.port, token)
        if client.status == 200:
            opened.append(client)
        else:
            client.close()
            await asyncio.sleep(0.25)
    for client in held + opened:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_clean_stop_frees_its_slots_at_once(start_server, js_stream):
    settings = dict(jetstream=js_stream, cap_bucket=f"caps_{js_stream}", cap_lease_seconds=30, sse_max_per_user=2)
    one, two = start_server(**settings, drain_seconds=0), start_server(**settings)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    held = [await _open(one.port, token) for _ in range(2)]
    await asyncio.sleep(0.5)
    assert (await _open(two.port, token)).status == 429
    one.signal(signal.SIGTERM)
    assert one.wait() == 0
    await asyncio.sleep(0.5)
    fresh = [await _open(two.port, token) for _ in range(2)]
    assert [c.status for c in fresh] == [200, 200], "a 30 s lease, but a clean stop removed its keys"
    for client in held + fresh:
        client.close()


def test_without_a_bus_the_cap_is_per_process():
    cap = ClusterCap(ConnectionLimiter(2), "b", 30)
    assert cap.mode == "local"
    assert cap.try_acquire("u") and cap.try_acquire("u") and not cap.try_acquire("u")
    cap.release("u")
    assert cap.held("u") == 1 and cap.held() == 1
