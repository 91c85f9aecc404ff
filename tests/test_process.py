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
from processes import lurestream_env, read_by_server, refusing
from sse_client import SSEClient

from lurestream.config import config_from
from lurestream.routing import SUBJECT_FAMILIES
from lurestream.store.mongo import INDEXES
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
STREAM = f"/api/v1/attackers/{A}/events"


def _token():
    return mint_token(config_from({"jwt_secret": SECRET}), VIEWER)


@pytest.fixture
def server(start_server, request):
    marker = request.node.get_closest_marker("server_settings")
    return start_server(**(marker.kwargs if marker else {}))


async def _http_get(reader, writer, path):
    """One request on a kept-alive connection: (status, body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
    return int(head.split()[1]), json.loads(await reader.readexactly(length))


async def _end_of(client, timeout):
    """Read a draining stream to its end: (the retry hint frame, when the response ended)."""
    hint = None
    while True:
        try:
            frame = await client.next_event(timeout)
        except EOFError:
            return hint, time.monotonic()
        if frame.retry is not None:
            hint = frame


@pytest.mark.gen_test(timeout=60)
@pytest.mark.server_settings(drain_seconds=2)
async def test_sigterm_drains_streams_over_the_window_and_exits_zero(server):
    clients = []
    for _ in range(4):
        client = await SSEClient.open(server.port, f"{STREAM}?token={_token()}")
        await client.start_stream()
        clients.append(client)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # kept alive across the signal
    assert (await _http_get(reader, writer, "/readyz"))[0] == 200
    server.signal(signal.SIGTERM)
    status, body = await _http_get(reader, writer, "/readyz")
    while status == 200:  # until the server has handled the signal (the kept-alive connection stays served)
        await asyncio.sleep(0.02)
        status, body = await _http_get(reader, writer, "/readyz")
    assert status == 503 and "draining" in json.dumps(body), body
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)  # the listener no longer accepts
    ends = await asyncio.gather(*(_end_of(c, 10) for c in clients))
    for hint, _ in ends:
        assert hint is not None and 1500 <= int(hint.retry) <= 4500, "each stream gets a jittered retry hint"
    times = sorted(t for _, t in ends)
    # 4 streams over a 2 s window close 0.5 s apart (1.5 s from first to last); a loaded machine only delays
    assert times[-1] - times[0] >= 0.7, f"closes are spread over the window, not all at once: {times}"
    writer.close()
    assert await asyncio.get_running_loop().run_in_executor(None, server.wait, 15) == 0
    assert "lurestream stopped" in server.log()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.server_settings(drain_seconds=120)
async def test_second_signal_closes_everything_at_once(server):
    clients = []
    for _ in range(3):
        client = await SSEClient.open(server.port, f"{STREAM}?token={_token()}")
        await client.start_stream()
        clients.append(client)
    server.signal(signal.SIGTERM)
    server.signal(signal.SIGTERM)  # the same request twice, at once (a process group's copy): still draining
    await refusing(server.port)  # the signal handled: the listener is closed
    ending = [asyncio.ensure_future(_end_of(c, 60)) for c in clients]
    done, _ = await asyncio.wait(ending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "the drain closes one stream at once (the next after 40 s)"
    await asyncio.sleep(0.8)  # on purpose: time for a drain cut short to show
    assert server.proc.poll() is None, "a duplicate signal within 0.5 s does not cut the drain short"
    assert sum(e.done() for e in ending) == 1, "the other two streams are still open"
    server.signal(signal.SIGINT)
    cut = time.monotonic()
    ends = await asyncio.gather(*ending)
    assert max(t for _, t in ends) - cut < 15, "a second signal does not wait for the 40 s step of the window"
    assert await asyncio.get_running_loop().run_in_executor(None, server.wait, 15) == 0


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
    finally:
        proc.stop()  # waits for the exit: every request's access line is written by then
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
        assert result.stdout.count("index ready:") == sum(len(specs) for specs in INDEXES.values())
    assert len(mongo.observations.index_information()) == 2


def test_init_db_reports_unreachable_store():
    from lurestream.localservices import free_port

    env = lurestream_env(mongo_uri=f"mongodb://127.0.0.1:{free_port()}", mongo_timeout_ms=300)
    result = subprocess.run(
        [sys.executable, "-m", "lurestream", "init-db"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "MongoDB unavailable" in result.stderr and "Traceback" not in result.stderr


def test_init_nats_creates_then_updates_the_stream(nats_service, js_stream, io_loop):
    def run(**settings):
        env = lurestream_env(nats_url=nats_service.url, jetstream=js_stream, **settings)
        return subprocess.run(
            [sys.executable, "-m", "lurestream", "init-nats"], capture_output=True, text=True, env=env, timeout=60
        )

    first = run(jetstream_max_age="2h", jetstream_max_msgs=1000)
    assert first.returncode == 0, first.stderr
    assert f"stream {js_stream} created" in first.stdout
    second = run(jetstream_max_age="1h", jetstream_max_bytes="10MB")
    assert second.returncode == 0 and f"stream {js_stream} updated" in second.stdout, second.stderr

    async def info():
        import nats

        nc = await nats.connect(nats_service.url)
        try:
            return await nc.jetstream().stream_info(js_stream)
        finally:
            await nc.close()

    cfg = io_loop.run_sync(info).config
    assert sorted(cfg.subjects) == sorted(SUBJECT_FAMILIES)
    assert cfg.max_age == 3600 and cfg.max_bytes == 10**7 and cfg.max_msgs == -1, "updated to the new limits"


def test_init_nats_needs_a_stream_name_and_reports_an_unreachable_server():
    from lurestream.localservices import free_port

    unnamed = subprocess.run(
        [sys.executable, "-m", "lurestream", "init-nats"], capture_output=True, text=True, env=lurestream_env()
    )
    assert unnamed.returncode == 2 and "LURESTREAM_JETSTREAM" in unnamed.stderr
    env = lurestream_env(nats_url=f"nats://127.0.0.1:{free_port()}", jetstream="S")
    down = subprocess.run(
        [sys.executable, "-m", "lurestream", "init-nats"], capture_output=True, text=True, env=env, timeout=60
    )
    assert down.returncode == 1 and "Traceback" not in down.stderr and "init-nats" in down.stderr


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
        assert all(len(c["subscriptions_list"]) == len(SUBJECT_FAMILIES) for c in conns), "one per family"
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


@pytest.mark.gen_test(timeout=60)
@pytest.mark.server_settings(drain_seconds=1)
async def test_a_request_in_its_handler_when_the_drain_begins_is_answered_not_dropped(server, mongo_service):
    """SIGTERM while a stream request waits for MongoDB and no stream is open yet: the drain waits for
    it (it used to end at once and close the store under it: a 500 and a dropped connection), and the
    stream that opens is drained at once with a retry hint."""
    if mongo_service.proc is None:
        pytest.skip("needs the MongoDB-wire server this session started (to pause it)")
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert (await _http_get(reader, writer, "/healthz"))[0] == 200  # accepted, and served: no store needed
    mongo_service.proc.send_signal(signal.SIGSTOP)
    try:
        writer.write(f"GET {STREAM}?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await read_by_server(writer.get_extra_info("socket"))
        await asyncio.sleep(0.3)  # read: from there on only CPU work until the user look-up waits for MongoDB
        server.signal(signal.SIGTERM)
        await refusing(server.port)  # the drain has begun (its listener closes first)
    finally:
        mongo_service.proc.send_signal(signal.SIGCONT)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    body = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        body += chunk
    assert b"retry: " in body and body.endswith(b"0\r\n\r\n"), body[-200:]
    writer.close()
    assert await asyncio.get_running_loop().run_in_executor(None, server.wait, 15) == 0
    assert "500 GET" not in server.log()
