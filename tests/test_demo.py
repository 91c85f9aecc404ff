"""The README's first command: ``lurestream demo`` serves live events to the curl command it prints."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from processes import lurestream_env
from sse_client import SSEClient


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
                assert snapshot.id is not None and snapshot.id.isdigit(), "the demo runs with JetStream: ids"
                events = []
                while len(events) < 2:
                    frame = await client.next_event(20)
                    assert frame.id is not None and int(frame.id) > int(snapshot.id)
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
