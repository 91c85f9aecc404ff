"""The README's first command: ``lurestream demo`` — its curl commands, its second server, its data: what the
simulated DECNET publishes it has written to MongoDB first, so a fresh snapshot agrees with the live events —
and its dashboard in Chromium, filling with live data (which is how docs/dashboard.png is made:
``LURESTREAM_SCREENSHOT=docs/dashboard.png pytest tests/test_demo.py -k chromium``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from browser import needs_chromium, new_driver, wait
from harness import SECRET
from processes import lurestream_env, wait_ready
from pymongo import MongoClient
from sse_client import SSEClient

from lurestream.config import config_from
from lurestream.demo import ATTACKERS, BACKGROUND_ATTACKERS, DECKIES, VIEWER_UUID
from lurestream.eventids import sequence_of
from lurestream.tokens import mint_token

FIREHOSES = {
    "identities": ("/api/v1/identities/events", "updated_at"),
    "campaigns": ("/api/v1/campaigns/events", "updated_at"),
    "events": ("/api/v1/orchestrator/events/stream", "ts"),
}


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _alive(pid: int) -> bool:
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(out) and not out.startswith("Z")


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


class Demo:
    """A running ``lurestream demo`` and what its banner says: ``port``, ``token``, ``mongo_uri``, ``curls``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.output: list[str] = []
        link = _read_until(proc, self.output, r"http://127\.0\.0\.1:(\d+)/#token=(\S+)")
        self.link = link.group(0)
        self.port, self.token = int(link.group(1)), link.group(2)
        self.command = _read_until(proc, self.output, r"^  (LURESTREAM_\S+=.* serve)$").group(1)
        banner = "".join(self.output)
        self.mongo_uri = re.search(r"MongoDB-wire (\S+)", banner).group(1)  # type: ignore[union-attr]
        self.curls = re.findall(r"curl -N '(http://[^']+)'", banner)

    def db(self) -> Any:
        return MongoClient(self.mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000).decnet


@contextmanager
def demo(*args: str, **settings: Any) -> Iterator[Demo]:
    """``lurestream demo --port 0 *args``; on the way out, Ctrl-C and its exit status 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lurestream", "demo", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=lurestream_env(**settings),
    )
    try:
        yield Demo(proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_serves_live_events_and_ctrl_c_stops_everything():
    with demo("--rate", "20") as running:
        urls = {("attacker" if "/attackers/" in u else "topology"): u for u in running.curls if "/events?" in u}
        assert set(urls) == {"attacker", "topology"}, "the demo prints both curl commands:\n" + "".join(running.output)
        with urllib.request.urlopen(running.link.split("#", 1)[0], timeout=10) as page:
            assert page.status == 200 and b"dashboard.js" in page.read(), "the printed dashboard link serves the page"
        services = _children(running.proc.pid)
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

        assert all(asyncio.run(watch(urls["attacker"])))
        assert all(asyncio.run(watch(urls["topology"])))
    deadline = time.monotonic() + 10
    while [p for p in services if _alive(p)]:  # the demo has exited: its children go with it
        assert time.monotonic() < deadline, "a demo child outlived Ctrl-C"
        time.sleep(0.05)


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
    second = None
    with demo("--rate", "20", jwt_secret=SECRET) as running:
        try:
            assert SECRET not in "".join(running.output), "a secret from the environment is never echoed"
            assert 'LURESTREAM_JWT_SECRET="$LURESTREAM_JWT_SECRET"' in running.command
            assert "LURESTREAM_SSE_MAX_PER_USER=10" in running.command, "room for a second tab there too"
            port = int(re.search(r"LURESTREAM_PORT=(\d+)", running.command).group(1))  # type: ignore[union-attr]
            assert port != running.port  # the demo's port + 1 when that is free

            # run it exactly as printed, from a shell that has the secret (as the user's has)
            log = tmp_path / "second.log"
            with open(log, "wb") as sink:
                second = subprocess.Popen(
                    ["bash", "-c", running.command],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    start_new_session=True,
                )
            wait_ready(port, 30, second, log.read_text)

            attacker = f"/api/v1/attackers/{ATTACKERS[0]['_id']}/events"
            ours = mint_token(config_from({"jwt_secret": SECRET}), VIEWER_UUID)
            on_second = asyncio.run(_two_events(port, f"{attacker}?token={running.token}"))
            on_demo = asyncio.run(_two_events(running.port, f"{attacker}?token={ours}"))
            for ids in (on_second, on_demo):  # the demo's publisher reaches both, with JetStream ids
                seqs = [sequence_of(i) for i in ids]
                assert None not in seqs and seqs[2] > seqs[1] > seqs[0], ids
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()
        finally:
            if second is not None and second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)  # bash and the server it runs
                second.wait()


async def _firehose(port: int, path: str, token: str) -> tuple[SSEClient, dict[str, Any]]:
    client = await SSEClient.open(port, f"{path}?token={token}")
    return client, (await client.start_stream()).json()


async def _live(port: int, token: str, seconds: float) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """What the demo sends for ``seconds`` (and on, up to 30 s, until each firehose sent 3 events and the log
    feed 40 rows: a loaded machine may slow the demo down): the firehoses' live payloads, the feed's rows."""
    clients = {key: (await _firehose(port, path, token))[0] for key, (path, _) in FIREHOSES.items()}
    feed = await SSEClient.open(port, f"/api/v1/stream?token={token}")
    payloads: dict[str, list[dict[str, Any]]] = {key: [] for key in FIREHOSES}
    rows: list[dict[str, Any]] = []
    started = time.monotonic()

    def reading() -> float:
        """Seconds left to read (0: done)."""
        enough = len(rows) >= 40 and all(len(p) >= 3 for p in payloads.values())
        deadline = started + (seconds if enough else 30)
        return max(0.0, deadline - time.monotonic())

    async def read(key: str, client: SSEClient) -> None:
        while left := reading():
            try:
                frame = await client.next_event(left)
            except asyncio.TimeoutError:
                return
            body = frame.json()
            if key == "logs":
                if body["type"] == "logs":
                    rows.extend(body["data"])
            else:
                payloads[key].append(body["payload"])

    try:
        await asyncio.gather(*(read(k, c) for k, c in clients.items()), read("logs", feed))
    finally:
        for client in (*clients.values(), feed):
            client.close()
    return payloads, rows


def test_the_demo_writes_what_it_publishes_so_a_fresh_snapshot_agrees_with_the_live_events():
    with demo("--rate", "40", jwt_secret=SECRET) as running:
        token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER_UUID)
        payloads, rows = asyncio.run(_live(running.port, token, 4))

        async def snapshots() -> dict[str, Any]:
            found = {}
            for key, (path, _) in FIREHOSES.items():
                client, found[key] = await _firehose(running.port, path, token)
                client.close()
            return found

        fresh = asyncio.run(snapshots())

        for key, (_, time_field) in FIREHOSES.items():
            assert len(payloads[key]) >= 3, f"the demo publishes {key} ({payloads[key]})"
            snapshot = {item["id"]: item for item in fresh[key][key]}
            latest = {p["id"]: p for p in payloads[key]}  # the last event of each document
            same = 0
            for doc_id, payload in latest.items():
                if doc_id not in snapshot:  # past the 50 newest: only the orchestrator's many events
                    assert key == "events" and payloads[key].index(payload) < len(payloads[key]) - 40, doc_id
                    continue
                stored = snapshot[doc_id]
                stored_at, sent_at = (datetime.fromisoformat(d[time_field]) for d in (stored, payload))
                assert stored_at >= sent_at, (stored, payload)
                if stored_at == sent_at:
                    assert stored == payload, "the snapshot says what the event said"
                    same += 1
            assert same >= min(len(latest), 3), f"{key}: most documents unchanged since their event"

        # the rows the live log feed sent are the rows in `logs`
        assert len(rows) >= 40, "a few rows a second (40 events a second here)"
        db = running.db()
        stored_rows = {d["_id"]: d for d in db.logs.find({"_id": {"$in": [r["id"] for r in rows]}})}
        for row in rows:
            doc = stored_rows[row["id"]]
            for key in ("raw_line", "attacker_ip", "decky", "service", "event_type"):
                assert row[key] == doc[key], (row, doc)
        assert {r["decky"] for r in rows} <= {d["name"] for d in DECKIES}
        assert db.logs.count_documents({}) > 1000, "hours of history behind the live rows (the histogram's past)"

        # attackers carry last_seen (dates, moved by the live rows) and scores: the picker's order
        assert db.attackers.count_documents({}) == len(ATTACKERS) + BACKGROUND_ATTACKERS
        request = urllib.request.Request(
            f"http://127.0.0.1:{running.port}/api/v1/attackers?limit=5", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            items = json.loads(response.read())["items"]
        seen = [datetime.fromisoformat(i["last_seen"]) for i in items]
        assert seen == sorted(seen, reverse=True), "most recently active first"
        assert seen[0] > datetime.now(timezone.utc) - timedelta(seconds=30), "moved by the live rows"
        assert all(isinstance(i["score"], (int, float)) for i in items)
        db.client.close()


@needs_chromium
def test_the_demo_dashboard_in_chromium_fills_with_live_data(tmp_path):
    """The printed link in a real browser: the tiles count, the histogram has hours of bars, rows stream into the
    log, each firehose panel gets live events, and a log row's attacker opens that attacker's live stream. The
    screenshot is saved to ``$LURESTREAM_SCREENSHOT`` when set (that is docs/dashboard.png)."""
    from selenium.webdriver.common.by import By

    def count(driver: Any, selector: str) -> int:
        return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector))

    def text(driver: Any, element_id: str) -> str:
        return str(driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id))

    with demo("--rate", "6") as running:
        driver = new_driver()
        try:
            driver.set_window_size(1440, 1000)
            driver.execute_cdp_cmd(  # the room's dark theme, as on a wall display
                "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
            )
            driver.get(running.link)
            wait(driver, lambda d: text(d, "state") == "live", "every stream live")
            wait(driver, lambda d: count(d, "#histogram rect.bar") >= 24, "hours of history in the histogram")
            wait(driver, lambda d: text(d, "tiles").split()[0] not in ("–", "0"), "the stats")
            for panel in ("identities", "campaigns", "orchestrator"):
                wait(driver, lambda d, p=panel: count(d, f"#{p}-feed li.fresh") >= 1, f"a live {panel} event", 30)
            wait(driver, lambda d: count(d, "#logs tbody tr") >= 30, "rows streaming into the log", 30)
            # one of the attackers the simulation follows (they have observations) opened from its log row
            followed = ", ".join(f'#logs button.attacker[data-ip="{a["ip"]}"]' for a in ATTACKERS)
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, followed), "a followed attacker in the log", 30)
            driver.find_elements(By.CSS_SELECTOR, followed)[0].click()
            wait(driver, lambda d: text(d, "view-state") == "live", "the attacker's stream")
            wait(driver, lambda d: count(d, "#observations tbody tr") >= 1, "its observations", 30)
            wait(driver, lambda d: count(d, "#feed li") >= 4, "its live events as rows", 30)
            driver.find_element(By.ID, "attacker-search").clear()  # the picker: the whole network again
            driver.find_element(By.ID, "attacker-search").send_keys(" ")
            wait(driver, lambda d: count(d, "#attacker-results tbody tr") >= 10, "the most recently active attackers")
            severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == [], "no CSP violation, no failed request, no exception"
            driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
            time.sleep(1)  # on purpose, for the picture: the last rows' highlight fades
            target = os.environ.get("LURESTREAM_SCREENSHOT") or str(tmp_path / "dashboard.png")
            _full_page_screenshot(driver, target)
            assert os.path.getsize(target) > 50_000
        finally:
            driver.quit()


def _full_page_screenshot(driver: Any, path: str) -> None:
    """The whole page at its own size (the viewport's width, the document's height), as a PNG."""
    import base64

    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    width = int(driver.execute_script("return document.documentElement.clientWidth"))
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    with open(path, "wb") as fh:
        fh.write(base64.b64decode(shot["data"]))
