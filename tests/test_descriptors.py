"""Out of file descriptors (protocol §16): no busy loop, no log flood, open streams go on, accepts resume.

The server runs as a real process whose descriptor limit the test lowers once it has started (``serve``
raises its soft limit to the hard one at start-up, so both are lowered, from outside, with prlimit(2)).
Idle connections then fill the table until ``accept()`` fails with EMFILE while more wait in the backlog.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time

import nats
import pytest
from harness import ATTACKER_A, SECRET, VIEWER, envelope
from sse_client import SSEClient

from lurestream.config import config_from
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
LIMIT = 200
WAITING = 30  # connections left in the backlog once the table is full
WINDOW = 3.0  # seconds over which CPU use and log growth are measured


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat, after the parenthesised name)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _log_size(path: str) -> tuple[int, int]:
    """(lines, bytes) of the server's log so far."""
    with open(path, "rb") as fh:
        data = fh.read()
    return data.count(b"\n"), len(data)


async def _answered(sock: socket.socket, within: float) -> bytes:
    """What the server sends on ``sock`` within ``within`` seconds (b"" when nothing)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), within)
    except asyncio.TimeoutError:
        return b""


async def _get(port: int, path: str) -> bytes:
    """A whole ``Connection: close`` response on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=90)
async def test_out_of_descriptors_the_server_pauses_accepting_without_spinning(start_server, nats_service):
    # the header timeout is long, so the idle connections hold their descriptors for the whole test
    server = start_server(header_timeout_seconds=120, log_level="info")
    pid = server.proc.pid
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    stream = await SSEClient.open(server.port, f"/api/v1/attackers/{A}/events?token={token}")
    await stream.start_stream()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    assert _descriptors(pid) < LIMIT - 50, "the server already holds most of the table"

    idle: list[socket.socket] = []
    probe: socket.socket | None = None
    try:
        for _ in range(LIMIT - _descriptors(pid) + WAITING):  # more than the table holds: the rest wait
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        deadline = time.monotonic() + 10
        while _descriptors(pid) < LIMIT - 1:  # accept() took descriptors until EMFILE
            assert time.monotonic() < deadline, f"the server holds only {_descriptors(pid)} descriptors"
            await asyncio.sleep(0.05)
        probe = socket.create_connection(("127.0.0.1", server.port))  # waits in the backlog behind the rest
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _answered(probe, 0.5) == b"", "the table is full: this connect cannot have been accepted"

        lines_before, bytes_before = _log_size(server.log_path)
        cpu_before, started = _cpu_seconds(pid), time.monotonic()
        nc = await nats.connect(nats_service.url)
        try:
            await asyncio.sleep(WINDOW / 2)
            await nc.publish("attacker.observation.ja3", envelope("attacker.observation.ja3", {"attacker_uuid": A}))
            await nc.flush()
            frame = await stream.next_event(5)
        finally:
            await nc.close()
        await asyncio.sleep(max(0.0, started + WINDOW - time.monotonic()))
        cpu = (_cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
        lines_after, bytes_after = _log_size(server.log_path)
        lines, logged = lines_after - lines_before, bytes_after - bytes_before
        print(f"out of descriptors for {WINDOW:.0f}s: CPU {cpu:.1%} of a core, {lines} log lines ({logged} bytes)")
        assert frame.event == "observation", "an open stream is served throughout"
        assert cpu < 0.30, f"the accept loop spins: {cpu:.0%} of a core"
        assert lines <= 5, f"{lines} log lines ({logged} bytes) in {WINDOW}s:\n" + server.log()[-3000:]
        assert "not accepting connections for now (EMFILE" in server.log(), "the pause is logged, with its cause"

        for sock in idle[: LIMIT // 2]:  # descriptors free: the waiting connects are accepted and answered
            sock.close()
        reply = await _answered(probe, 5)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        metrics = await _get(server.port, "/metrics")
        assert metrics.startswith(b"HTTP/1.1 200 "), metrics[:200]
        deferred = [line for line in metrics.split(b"\n") if b'refused_total{reason="out_of_descriptors"}' in line]
        assert deferred and float(deferred[0].split()[-1]) >= 1, "the deferred accepts are counted"
        deadline = time.monotonic() + 10  # at most one line a second: the last one may wait that long
        while "accepting connections again" not in server.log():
            assert time.monotonic() < deadline, "the end of the shortage is logged"
            await asyncio.sleep(0.05)
    finally:
        stream.close()
        for sock in idle:
            sock.close()
        if probe is not None:
            probe.close()


@pytest.mark.gen_test(timeout=30)
async def test_stop_still_stops_accepting(ls, http_server):
    """The accept loop is ours (``EdgeServer.add_sockets``), but Tornado's ``stop()`` must still end it:
    that is how a drain stops taking new clients."""
    status = await _get(ls.port, "/healthz")
    assert status.startswith(b"HTTP/1.1 200 ")
    http_server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", ls.port)
