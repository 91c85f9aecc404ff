"""``lurestream`` as a real process: shutdown, logs without credentials, init-db, several workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from harness import ATTACKER_A, SECRET, VIEWER
from processes import ServerProcess, lurestream_env
from sse_client import SSEClient

from lurestream.config import config_from
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
STREAM = f"/api/v1/attackers/{A}/events"


def _token():
    return mint_token(config_from({"jwt_secret": SECRET}), VIEWER)


@pytest.fixture
def start_server(tmp_path, nats_service, mongo_service, mongo, db_name):
    """Start ``lurestream serve`` on the test's services and database, with extra settings."""
    started = []

    def start(**settings):
        proc = ServerProcess(
            str(tmp_path / f"server{len(started)}.log"),
            nats_url=nats_service.url,
            mongo_uri=mongo_service.url,
            mongo_db=db_name,
            jwt_secret=SECRET,
            **settings,
        )
        started.append(proc)
        proc.start()
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def server(start_server, request):
    marker = request.node.get_closest_marker("server_settings")
    return start_server(**(marker.kwargs if marker else {}))


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_closes_streams_and_exits_zero(server):
    client = await SSEClient.open(server.port, f"{STREAM}?token={_token()}")
    await client.start_stream()
    server.signal(signal.SIGTERM)
    with pytest.raises(EOFError):
        await client.next_event(10)  # the response ends cleanly (terminating chunk)
    client.close()
    assert await asyncio.get_running_loop().run_in_executor(None, server.wait, 15) == 0
    assert "lurestream stopped" in server.log()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_credentials_never_in_logs(start_server, log_format):
    proc = start_server(log_level="debug", log_format=log_format, sse_max_per_user=1)
    token = _token()
    secrets_seen = [token]
    try:
        # a stream with ?token=, a bad token, a ticket, a reused ticket, a Bearer header, a 404 and a 429
        c = await SSEClient.open(proc.port, f"{STREAM}?token={token}")
        await c.start_stream()
        over = await SSEClient.open(proc.port, f"{STREAM}?token={token}")
        assert over.status == 429
        over.close()
        c.close()
        bad = "eyJhbGciOiJIUzI1NiJ9.eyJmb28iOiJiYXIifQ.c2lnbmF0dXJlLXRoYXQtaXMtd3Jvbmc"
        secrets_seen.append(bad)
        c = await SSEClient.open(proc.port, f"{STREAM}?token={bad}")
        assert c.status == 401
        c.close()
        req = urllib.request.Request(
            f"http://127.0.0.1:{proc.port}/api/v1/auth/sse-ticket",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        ticket = json.load(urllib.request.urlopen(req, timeout=5))["ticket"]
        secrets_seen.append(ticket)
        for _ in range(2):
            c = await SSEClient.open(proc.port, f"{STREAM}?ticket={ticket}&token={token}")
            c.close()
        c = await SSEClient.open(
            proc.port, "/api/v1/attackers/missing/events", headers={"Authorization": f"Bearer {token}"}
        )
        assert c.status == 404
        c.close()
        await asyncio.sleep(0.3)
    finally:
        proc.stop()
    log = proc.log()
    assert "/api/v1/attackers" in log, "the access log should show the requests"
    assert "token=***" in log and "ticket=***" in log
    assert "429" in log and "401" in log and "404" in log
    for secret in secrets_seen:
        assert secret not in log
        assert secret[:40] not in log
    if log_format == "json":
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        access = [e for e in lines if e["logger"] == "tornado.access"]
        assert access and {"time", "level", "logger", "message", "method", "path", "status", "duration_ms"} <= set(
            access[0]
        )
        assert any(e.get("user_uuid") == VIEWER for e in access)


def test_init_db_command(mongo_service, mongo, db_name):
    env = lurestream_env(mongo_uri=mongo_service.url, mongo_db=db_name)
    for _ in range(2):  # idempotent
        result = subprocess.run(
            [sys.executable, "-m", "lurestream", "init-db"], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("index ready:") == 3
    assert len(mongo.observations.index_information()) == 2


def test_init_db_reports_unreachable_store():
    from lurestream.localservices import free_port

    env = lurestream_env(mongo_uri=f"mongodb://127.0.0.1:{free_port()}", mongo_timeout_ms=300)
    result = subprocess.run(
        [sys.executable, "-m", "lurestream", "init-db"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "MongoDB unavailable" in result.stderr and "Traceback" not in result.stderr


def _worker_pids(parent: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.gen_test(timeout=90)
@pytest.mark.server_settings(processes=2)
async def test_workers_share_the_port_and_a_killed_worker_is_replaced(server, nats_service):
    loop = asyncio.get_running_loop()
    parent = server.proc.pid
    deadline = time.monotonic() + 20
    while len(_worker_pids(parent)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    workers = _worker_pids(parent)
    assert len(workers) == 2
    if nats_service.extra_ports.get("monitor"):

        def ours():
            with urllib.request.urlopen(
                f"http://127.0.0.1:{nats_service.extra_ports['monitor']}/connz?subs=1", timeout=5
            ) as r:
                return [
                    c
                    for c in json.load(r)["connections"] or []
                    if c.get("name", "").endswith(tuple(f":{pid}" for pid in _worker_pids(parent)))
                    and c.get("subscriptions_list")
                ]

        deadline = time.monotonic() + 20
        while len(await loop.run_in_executor(None, ours)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        conns = await loop.run_in_executor(None, ours)
        assert len(conns) == 2, "each worker holds its own NATS connection"
        assert all(len(c["subscriptions_list"]) == 4 for c in conns)
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _worker_pids(parent)
        if len(now) == 2 and victim not in now:
            break
        await asyncio.sleep(0.1)
    assert len(_worker_pids(parent)) == 2 and victim not in _worker_pids(parent)
    await loop.run_in_executor(None, server.wait_ready)
    client = await SSEClient.open(server.port, f"{STREAM}?token={_token()}")
    await client.start_stream()
    client.close()
    server.signal(signal.SIGTERM)
    assert await loop.run_in_executor(None, server.wait, 20) == 0
