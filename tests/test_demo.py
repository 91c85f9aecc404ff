"""The README's first command: ``lurestream demo`` serves live events to the curl command it prints."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from harness import SECRET
from processes import lurestream_env, wait_ready
from sse_client import SSEClient

from lurestream.config import config_from
from lurestream.demo import ATTACKERS, VIEWER_UUID
from lurestream.eventids import sequence_of
from lurestream.tokens import mint_token


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _alive(pid: int) -> bool:
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(out) and not out.startswith("Z")


def test_demo_serves_live_events_and_ctrl_c_stops_everything():
    proc = subprocess.Popen(
        [sys.executable, "-m", "lurestream", "demo", "--port", "0", "--rate", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=lurestream_env(),
    )
    urls: dict[str, str] = {}
    output = []
    try:
        deadline = time.monotonic() + 60
        while len(urls) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.search(r"curl -N '(http://[^']+)'", line)
            if match:
                urls["attacker" if "/attackers/" in match.group(1) else "topology"] = match.group(1)
        assert len(urls) == 2, "demo did not print both curl commands:\n" + "".join(output)
        (dashboard,) = [m.group(0) for line in output if (m := re.search(r"http://\S+/#token=\S+", line))]
        with urllib.request.urlopen(dashboard.split("#", 1)[0], timeout=10) as page:
            assert page.status == 200 and b"dashboard.js" in page.read(), "the printed dashboard link serves the page"
        services = _children(proc.pid)
        assert len(services) >= 2, "nats-server and the MongoDB-wire server run as children"

        async def watch(url: str) -> list[str]:
            parts = urllib.parse.urlsplit(url)
            client = await SSEClient.open(parts.port, f"{parts.path}?{parts.query}")
            try:
                snapshot = await client.start_stream()
                assert snapshot.json()
                assert sequence_of(snapshot.id) is not None, "the demo runs with JetStream: ids"
                events = []
                while len(events) < 2:
                    frame = await client.next_event(20)
                    assert (sequence_of(frame.id) or 0) > (sequence_of(snapshot.id) or 0)
                    events.append(frame.event)
                return events
            finally:
                client.close()

        attacker_events = asyncio.run(watch(urls["attacker"]))
        assert all(e for e in attacker_events)
        topology_events = asyncio.run(watch(urls["topology"]))
        assert all(e for e in topology_events)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        time.sleep(0.5)
        assert not [p for p in services if _alive(p)], "a demo child outlived Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until(proc: subprocess.Popen[str], output: list[str], pattern: str, timeout: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            break
        output.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"the demo never printed {pattern!r}:\n" + "".join(output))


async def _two_events(port: int, path: str) -> list[str]:
    """A stream's snapshot id and two event ids after it."""
    client = await SSEClient.open(port, path)
    try:
        snapshot = await client.start_stream()
        ids = [snapshot.id]
        while len(ids) < 3:
            ids.append((await client.next_event(20)).id)
        return ids
    finally:
        client.close()


def test_demo_takes_the_jwt_secret_from_the_environment_and_prints_a_second_server_that_shares_it(tmp_path):
    env = lurestream_env(jwt_secret=SECRET)
    demo = subprocess.Popen(
        [sys.executable, "-m", "lurestream", "demo", "--port", "0", "--rate", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    second = None
    output: list[str] = []
    try:
        link = _read_until(demo, output, r"http://127\.0\.0\.1:(\d+)/#token=(\S+)")
        demo_port, demo_token = int(link.group(1)), link.group(2)
        _read_until(demo, output, r"^Start a second server")
        command = _read_until(demo, output, r"^  (LURESTREAM_\S+=.* serve)$").group(1)
        assert SECRET not in "".join(output), "a secret from the environment is never echoed"
        assert 'LURESTREAM_JWT_SECRET="$LURESTREAM_JWT_SECRET"' in command
        port = int(re.search(r"LURESTREAM_PORT=(\d+)", command).group(1))
        assert port != demo_port  # the demo's port + 1 when that is free

        # run it exactly as printed, from a shell that has the secret (as the user's has)
        log = tmp_path / "second.log"
        with open(log, "wb") as sink:
            second = subprocess.Popen(
                ["bash", "-c", command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        wait_ready(port, 30, second, log.read_text)

        attacker = f"/api/v1/attackers/{ATTACKERS[0]['_id']}/events"
        ours = mint_token(config_from({"jwt_secret": SECRET}), VIEWER_UUID)
        on_second = asyncio.run(_two_events(port, f"{attacker}?token={demo_token}"))
        on_demo = asyncio.run(_two_events(demo_port, f"{attacker}?token={ours}"))
        for ids in (on_second, on_demo):  # the demo's publisher reaches both, with JetStream ids
            seqs = [sequence_of(i) for i in ids]
            assert None not in seqs and seqs[2] > seqs[1] > seqs[0], ids
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        if second is not None and second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)  # bash and the server it runs
            second.wait()
        if demo.poll() is None:
            demo.kill()
            demo.wait()
