"""The README's Python client, run exactly as written against real servers.

The ```python block under "#### Python" is read from README.md and exec'd; its ``follow()`` runs in a thread
against lurestream (real NATS/JetStream and MongoDB-wire): through a server restart (a drain's ``retry:``,
refused connects, the resume), a store outage (the waiting answer) and a revocation (``event: end``). The one
thing the test adds is a request hook on the httpx client the block builds, to see when it connects and with
which ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import pathlib
import queue
import re
import threading
import time
import types
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import nats
import pytest
from harness import ATTACKER_A, SECRET, VIEWER, bus_up, envelope, standalone
from pymongo import MongoClient

from lurestream.config import config_from
from lurestream.eventids import sequence_of
from lurestream.tokens import mint_token

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
A = ATTACKER_A["_id"]
PATH = f"/api/v1/attackers/{A}/events"


def _block() -> str:
    found = re.search(r"^#### Python\n.*?^```python\n(.*?)^```", README, re.S | re.M)
    assert found, 'the README has a "#### Python" subsection with a ```python block'
    return found[1]


class Run:
    """``follow()`` from the README in a thread of its own: the events it passes on, the requests it makes
    (wall time, ``Last-Event-ID``), and what it returns."""

    def __init__(self, base_url: str, token: str, path: str) -> None:
        namespace: dict[str, Any] = {"__name__": "readme_python"}
        exec(compile(_block(), "README.md (#### Python)", "exec"), namespace)
        self.requests: list[tuple[float, str | None]] = []
        self.seen: list[tuple[str, Any]] = []
        self.result: str | None = None
        self.error: BaseException | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        real = namespace["httpx"]
        record = self._request

        class Client(real.Client):  # type: ignore[misc, name-defined]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, event_hooks={"request": [record]}, **kwargs)

        namespace["httpx"] = types.SimpleNamespace(**{**vars(real), "Client": Client})
        self.thread = threading.Thread(target=self._run, args=(namespace["follow"], base_url, token, path))
        self.thread.daemon = True  # a failed test must not hang the run on a client that never stops
        self.thread.start()

    def _request(self, request: Any) -> None:
        self.requests.append((time.monotonic(), request.headers.get("last-event-id")))

    def _on_event(self, name: str, data: Any) -> None:
        self.seen.append((name, data))
        self._events.put((name, data))

    def _run(self, follow: Any, base_url: str, token: str, path: str) -> None:
        try:
            self.result = follow(base_url, token, path, self._on_event)
        except BaseException as exc:  # the README's code failed: the test says how
            self.error = exc

    def next(self, timeout: float = 15.0) -> tuple[str, Any]:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s; the client {self._state()}") from None

    def stopped(self, timeout: float = 20.0) -> str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"follow() did not return; it {self._state()}"
        assert self.error is None, f"follow() raised {self.error!r}"
        return self.result

    def _state(self) -> str:
        if self.error is not None:
            return f"raised {self.error!r}"
        return f"made {len(self.requests)} requests and passed on {[name for name, _ in self.seen]}"


def _revoke(db: Any, token: str) -> None:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    db.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc) + timedelta(hours=1)})


def test_the_readme_block_is_the_one_run_here():
    block = _block()
    assert "def follow(base_url, token, path, on_event):" in block and "from httpx_sse import connect_sse" in block


def test_the_readme_python_client_resumes_across_a_restart_and_stops_on_end(
    start_server, js_stream, nats_service, mongo, io_loop
):
    settings = dict(
        jetstream=js_stream,
        drain_seconds=0,  # the restart: a retry: hint at once, then the end of the response
        retry_ms=300,
        keepalive_seconds=0.5,  # idle keepalives carry an id: httpx-sse yields them as empty events
        auth_sweep_seconds=0.5,
        auth_cache_seconds=0,
    )
    server = start_server(**settings)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)

    async def publish(n: int) -> int:
        nc = await nats.connect(nats_service.url)
        try:
            subject = "attacker.observation.ja3"
            ack = await nc.jetstream().publish(subject, envelope(subject, {"attacker_uuid": A, "n": n}))
            return int(ack.seq)
        finally:
            await nc.close()

    run = Run(f"http://127.0.0.1:{server.port}", token, PATH)
    name, snapshot = run.next()
    assert name == "snapshot" and snapshot["attacker_uuid"] == A and snapshot["observations"] == []
    time.sleep(1.5)  # on purpose: three keepalives or so, each an id-only frame the client must skip
    first = io_loop.run_sync(lambda: publish(1))
    name, event = run.next()
    assert name == "observation" and event["payload"] == {"attacker_uuid": A, "n": 1}
    assert len(run.requests) == 1 and run.requests[0][1] is None, "one connect so far, without an id"

    assert server.stop() == 0
    io_loop.run_sync(lambda: publish(2))  # stored while no server is up
    server = start_server(port=server.port, **settings)
    name, resumed = run.next(30)
    assert name == "resumed" and resumed["replayed"] == 1, (name, resumed)
    name, event = run.next()
    assert name == "observation" and event["payload"]["n"] == 2
    ids = [last_id for _, last_id in run.requests[1:]]
    assert ids and all(sequence_of(i) == first for i in ids), f"every reconnect resumes from event 1: {ids}"

    _revoke(mongo, token)
    assert run.stopped() == "signed out: revoked"
    assert [name for name, _ in run.seen] == ["snapshot", "observation", "resumed", "observation"], run.seen


@pytest.mark.gen_test(timeout=90)
async def test_the_readme_python_client_waits_as_the_server_asks(private_mongo, nats_service):
    """The store down: 200 + ``retry:`` + ``event: unavailable`` (protocol §16). The client waits the hint —
    not less, and not its own 3 s default — passes nothing on, and follows once the store is back."""
    settings = {"retry_ms": 500, "mongo_timeout_ms": 300, "auth_cache_seconds": 0, "auth_sweep_seconds": 0.5}
    async with standalone(nats_service.url, private_mongo.url, "d", settings=settings) as ls:
        assert await bus_up(ls.hub, 10)
        token = ls.token()
        private_mongo.stop()
        run = Run(f"http://127.0.0.1:{ls.port}", token, PATH)
        await ls.wait_for(lambda: len(run.requests) >= 2, 10, "a second connect")
        gap = run.requests[1][0] - run.requests[0][0]
        # the first answer comes after the 0.3 s MongoDB timeout: the client's own 3 s would make it 3.3 s
        assert 0.375 <= gap < 3.2, f"the hint is 500 ms ± 25 %, the client's default 3 s: waited {gap:.2f}s"
        assert run.seen == [] and run.thread.is_alive(), run.seen

        private_mongo.start()
        with MongoClient(private_mongo.url) as client:  # its data lived in memory: put it back
            client.d.users.insert_one({"_id": VIEWER, "role": "viewer", "must_change_password": False})
            client.d.attackers.insert_one(dict(ATTACKER_A))
            loop = asyncio.get_running_loop()
            name, _ = await loop.run_in_executor(None, run.next, 30)
            assert name == "snapshot", run.seen
            _revoke(client.d, token)
            assert await loop.run_in_executor(None, run.stopped) == "signed out: revoked"
        assert [name for name, _ in run.seen] == ["snapshot"], "the `unavailable` answers were not passed on"
