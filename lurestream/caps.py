"""One per-user cap across every process and host (SPEC §13), on a JetStream key-value bucket.

Each process keeps its own streams' counts exactly (``ConnectionLimiter``) and publishes them to the
bucket; it watches the bucket and keeps a local view of everyone else's, so admission stays a local
decision — no round trip on the connect path:

    admitted  ⇔  own streams of the user + streams of the user on every *live* other process  <  the cap

Keys (bucket ``CAP_BUCKET``, history 1):
- ``p.<process>``: the process's heartbeat, put every ``lease / 3`` seconds;
- ``u.<process>.<user, base64url>``: how many streams that process holds for that user (deleted at 0).

A process is live while its heartbeat is younger than ``lease`` (``CAP_LEASE_SECONDS``), so the slots of
a process that dies (SIGKILL, a lost host) free within the lease everywhere, and its keys are purged by
whichever live process notices first. A process that stops cleanly deletes its keys itself.

Overshoot: a process admits against its latest view; a stream admitted elsewhere in the last moment
(its update still on the wire, about a millisecond) is not in it, so connects racing on several
processes can exceed the cap by one stream per other process. With the bus down or JetStream off the
cap is per process (``mode`` says which; ``/readyz`` reports it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import secrets
import socket
import time
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from lurestream.limits import ConnectionLimiter

log = logging.getLogger("lurestream.caps")

CLUSTER = "cluster"
LOCAL = "local"


def _process_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _age(created: Any) -> float:
    """Seconds since a bucket entry was stored (nats.py gives a datetime; 0 when unknown)."""
    if isinstance(created, datetime):
        return max(0.0, time.time() - created.timestamp())
    if isinstance(created, (int, float)) and created > 0:  # nanoseconds
        return max(0.0, time.time() - created / 1e9)
    return 0.0


def _user_key(user: str) -> str:
    return base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")


def _user_of(encoded: str) -> str:
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


class ClusterCap:
    """The per-user cap the handlers see: ``try_acquire``/``release``/``held`` like ``ConnectionLimiter``."""

    def __init__(
        self, local: ConnectionLimiter, bucket: str, lease_seconds: float, replicas: int = 1, process_id: str = ""
    ) -> None:
        self.local = local
        self.max_per_user = local.max_per_user
        self.bucket = bucket
        self.lease = lease_seconds
        self.replicas = replicas
        self.process = process_id or _process_id()
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._connected = False
        self._heard: dict[str, float] = {}  # process -> monotonic time its heartbeat was last fresh
        self._others: dict[str, dict[str, int]] = {}  # user -> {process: streams}
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: asyncio.Task[None] | None = None

    # -- what handlers and the writer call ---------------------------------------------------------------
    @property
    def mode(self) -> str:
        return CLUSTER if self._kv is not None and self._connected else LOCAL

    def others(self, user: str) -> int:
        """Streams of ``user`` on other live processes, as this process last heard."""
        if self.mode != CLUSTER:
            return 0
        by_process = self._others.get(user)
        if not by_process:
            return 0
        now = time.monotonic()
        return sum(n for process, n in by_process.items() if now - self._heard.get(process, -1e18) < self.lease)

    def try_acquire(self, user: str) -> bool:
        if self.local.held(user) + self.others(user) >= self.max_per_user:
            return False
        if not self.local.try_acquire(user):
            return False
        self._changed(user)
        return True

    def release(self, user: str) -> None:
        self.local.release(user)
        self._changed(user)

    def held(self, user: str | None = None) -> int:
        return self.local.held(user)

    # -- the bucket ------------------------------------------------------------------------------------
    async def start(self, js: JetStreamContext) -> None:
        """Open (or create) the bucket and start watching it and beating; called once the bus is up."""
        try:
            try:
                kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                kv = await js.create_key_value(
                    api.KeyValueConfig(bucket=self.bucket, history=1, replicas=self.replicas)
                )
            watcher = await kv.watchall()
        except Exception as exc:
            log.error("cap bucket %s unusable (%s): the per-user cap is per process", self.bucket, exc)
            return
        self._kv = kv
        self._watcher = watcher
        self._connected = True
        self._tasks = [
            asyncio.ensure_future(self._watch(watcher)),
            asyncio.ensure_future(self._beat()),
        ]
        self._dirty |= {user for user in self._users_held()}
        self._kick()
        log.info("per-user cap across processes on bucket %s (this process: %s)", self.bucket, self.process)

    async def started_with(self, js: JetStreamContext | None) -> None:
        """The hub's connect hook: start on the bus's JetStream (without JetStream the cap stays local)."""
        if js is not None and self._kv is None:
            await self.start(js)

    def bus_up(self, up: bool) -> None:
        """The hub's connection state: down means fall back to the local count (and republish when back)."""
        self._connected = up
        if up and self._kv is not None:
            self._dirty |= set(self._users_held())
            self._kick()

    async def close(self) -> None:
        """Stop, and remove this process's keys (a clean stop frees its slots at once everywhere)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watcher is not None:
            try:  # ends nats.py's consumer tasks (heartbeat and flow-control checks) with it
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:
                log.debug("stopping the cap watcher: %s", exc)
            self._watcher = None
        kv = self._kv
        self._kv = None
        if kv is None or not self._connected:
            return
        try:
            for user in self._users_held():
                await kv.purge(f"u.{self.process}.{_user_key(user)}")
            await kv.purge(f"p.{self.process}")
        except Exception as exc:
            log.debug("could not remove this process's cap keys: %s", exc)

    def _users_held(self) -> list[str]:
        return [user for user, _n in self.local._held.items()]

    def _changed(self, user: str) -> None:
        if self._kv is None:
            return
        self._dirty.add(user)
        self._kick()

    def _kick(self) -> None:
        if self._publishing is None or self._publishing.done():
            self._publishing = asyncio.ensure_future(self._publish())

    async def _publish(self) -> None:
        """Put the changed counts (the latest value of each; a change during a put is put again)."""
        while self._dirty and self._kv is not None and self._connected:
            user = self._dirty.pop()
            key = f"u.{self.process}.{_user_key(user)}"
            count = self.local.held(user)
            try:
                if count:
                    await self._kv.put(key, str(count).encode())
                else:
                    await self._kv.purge(key)
            except Exception as exc:
                self._dirty.add(user)
                log.warning("cap bucket update failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _beat(self) -> None:
        while True:
            if self._kv is not None and self._connected:
                try:
                    await self._kv.put(f"p.{self.process}", str(time.time()).encode())
                except Exception as exc:
                    log.debug("cap heartbeat failed: %s", exc)
                self._purge_dead()
            await asyncio.sleep(self.lease / 3)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the initial values are in
                continue
            try:
                self._apply(entry)
            except Exception as exc:  # a key another version wrote, or garbage: never stop watching
                log.warning("ignoring cap bucket entry %r: %s", entry.key, exc)

    def _apply(self, entry: KeyValue.Entry) -> None:
        kind, _, rest = entry.key.partition(".")
        deleted = entry.operation in ("DEL", "PURGE")
        if kind == "p":
            if deleted:
                self._heard.pop(rest, None)
            else:
                # age from the server's timestamp (an old heartbeat replayed at start-up is not fresh)
                self._heard[rest] = time.monotonic() - min(_age(entry.created), self.lease)
            return
        process, _, encoded = rest.partition(".")
        if kind != "u" or not encoded or process == self.process:
            return
        user = _user_of(encoded)
        by_process = self._others.setdefault(user, {})
        if deleted or not entry.value:
            by_process.pop(process, None)
        else:
            by_process[process] = max(0, int(entry.value))
        if not by_process:
            self._others.pop(user, None)

    def _purge_dead(self) -> None:
        """Forget (and purge from the bucket) processes silent for two leases: a killed process's keys."""
        now = time.monotonic()
        dead = {p for p, heard in self._heard.items() if now - heard > 2 * self.lease and p != self.process}
        if not dead:
            return
        for process in dead:
            self._heard.pop(process, None)
        keys = [f"p.{p}" for p in dead]
        for user, by_process in list(self._others.items()):
            for process in dead & set(by_process):
                by_process.pop(process)
                keys.append(f"u.{process}.{_user_key(user)}")
            if not by_process:
                self._others.pop(user)
        asyncio.ensure_future(self._purge(keys))

    async def _purge(self, keys: list[str]) -> None:
        kv = self._kv
        for key in keys:
            try:
                if kv is not None:
                    await kv.purge(key)
            except Exception as exc:
                log.debug("could not purge %s: %s", key, exc)
                return

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "bucket": self.bucket, "process": self.process}
