"""One per-user cap across every process and host (protocol §13), on a JetStream key-value bucket.

Each process keeps its own streams' counts exactly (``ConnectionLimiter``) and publishes them to the
bucket; it watches the bucket and keeps a local view of everyone else's, so admission stays a local
decision — no round trip on the connect path:

    admitted  ⇔  own streams of the user + streams of the user on every *live* other process  <  the cap

Keys (bucket ``CAP_BUCKET``, history 1):
- ``p.<process>``: the process's heartbeat, put every ``lease / 3`` seconds;
- ``u.<process>.<user, base64url>``: how many streams that process holds for that user (deleted at 0).

A process is live while its heartbeat is younger than ``lease`` (``CAP_LEASE_SECONDS``, 10 s), so the
slots of a process that dies (SIGKILL, a lost host) free within the lease everywhere, and its keys are
purged by whichever live process notices first. A process that stops cleanly deletes its keys itself.

A refusal that will clear on its own is not final (protocol §16, docs/protocol.md "Waiting instead of an error"):
when the user is at the cap only because of a process whose heartbeat is late (likely dead: its slots
free within the lease), or the request is a *reconnect* (``Last-Event-ID``: its own old slot may still
be counted — on a process that died, or a connection whose close is not yet seen), ``wait_hint`` says
how long to wait, and the client is told to retry instead of getting a 429 a native EventSource would
never retry.

The bucket is the processes' own (protocol §13): deleted or re-created under them, it is noticed at the next
heartbeat (its stream's creation time changed, or it is gone), created again if missing, watched anew and
repopulated with this process's counts; until then ``mode`` is ``local``.

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
from nats.js.errors import BucketNotFoundError, NotFoundError
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


def _stream_of(bucket: str) -> str:
    return f"KV_{bucket}"  # the JetStream stream behind a key-value bucket


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
        self._js: JetStreamContext | None = None
        self._created: Any = None  # the bucket stream's creation time: a new one means a re-created bucket
        self._watcher: KeyValue.KeyWatcher | None = None
        self._watching: asyncio.Task[None] | None = None
        self._connected = False
        self._heard: dict[str, float] = {}  # process -> monotonic time its heartbeat was last fresh
        self._others: dict[str, dict[str, int]] = {}  # user -> {process: streams}
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False  # set by close(): the heartbeat ends at its next turn, cancelled or not
        self._publishing: asyncio.Task[None] | None = None

    # -- what handlers and the writer call ---------------------------------------------------------------
    @property
    def mode(self) -> str:
        return CLUSTER if self._kv is not None and self._connected else LOCAL

    def others(self, user: str, heard_within: float | None = None) -> int:
        """Streams of ``user`` on other live processes, as this process last heard (only processes heard
        within ``heard_within`` seconds, when given)."""
        if self.mode != CLUSTER:
            return 0
        by_process = self._others.get(user)
        if not by_process:
            return 0
        now = time.monotonic()
        within = self.lease if heard_within is None else min(heard_within, self.lease)
        return sum(n for process, n in by_process.items() if now - self._heard.get(process, -1e18) < within)

    def wait_hint(self, user: str, reconnecting: bool) -> float | None:
        """After a refusal: seconds after which it may clear on its own, or None when it is final.

        Late processes (no heartbeat for a beat and a half: ``lease / 2``) are likely dead; if the user is
        at the cap only with their slots, those free when their lease runs out. A reconnect's old slot may
        be one of those counted (see the module docstring).
        """
        beat = self.lease / 3
        confirmed = self.local.held(user) + self.others(user, heard_within=1.5 * beat)
        if confirmed < self.max_per_user:  # at the cap only with the slots of late processes
            return self._until_lease_end(user)
        if reconnecting:
            return max(beat, 1.0)
        return None

    def _until_lease_end(self, user: str) -> float:
        """Seconds until the oldest heartbeat among the user's other processes passes the lease."""
        now = time.monotonic()
        ages = [now - self._heard.get(process, now) for process in self._others.get(user, {})]
        return max(1.0, min(self.lease, self.lease - max(ages, default=0.0)))

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
        """Open (or create) the bucket, watch it and start beating; called once the bus is up."""
        self._js = js
        if not await self._open_bucket():
            log.error("cap bucket %s unusable: the per-user cap is per process until it is", self.bucket)
        self._tasks = [asyncio.ensure_future(self._beat())]
        log.info("per-user cap across processes on bucket %s (this process: %s)", self.bucket, self.process)

    async def _open_bucket(self) -> bool:
        """(Re)open the bucket — creating it when missing — watch it from its start and republish this
        process's counts; False (and ``local`` mode) when it cannot be used now."""
        await self._stop_watching()
        self._kv = None
        js = self._js
        if js is None:
            return False
        try:
            try:
                kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                kv = await js.create_key_value(
                    api.KeyValueConfig(bucket=self.bucket, history=1, replicas=self.replicas)
                )
            self._created = (await js.stream_info(_stream_of(self.bucket))).created
            watcher = await kv.watchall()
        except Exception as exc:
            log.warning("cap bucket %s unusable (%s); the cap is per process meanwhile", self.bucket, exc)
            return False
        self._heard.clear()  # the watch replays every key's current value
        self._others.clear()
        self._watcher = watcher
        self._watching = asyncio.ensure_future(self._watch(watcher))
        self._kv = kv
        self._dirty |= set(self._users_held())
        self._kick()
        return True

    async def _stop_watching(self) -> None:
        task, self._watching = self._watching, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:  # ends nats.py's consumer tasks (heartbeat and flow-control checks) with it
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception as exc:
                log.debug("stopping the cap watcher: %s", exc)

    async def _bucket_changed(self) -> bool:
        """Whether the bucket was deleted or re-created since it was opened (its stream's creation time)."""
        assert self._js is not None
        try:
            info = await self._js.stream_info(_stream_of(self.bucket))
        except NotFoundError:
            return True
        return bool(info.created != self._created)

    async def started_with(self, js: JetStreamContext | None) -> None:
        """The hub's connect hook: start on the bus's JetStream (without JetStream the cap stays local)."""
        if js is not None and self._js is None:
            await self.start(js)

    def bus_up(self, up: bool) -> None:
        """The hub's connection state: down means fall back to the local count (and republish when back)."""
        self._connected = up
        if up and self._kv is not None:
            self._dirty |= set(self._users_held())
            self._kick()

    async def close(self) -> None:
        """Stop, and remove this process's keys (a clean stop frees its slots at once everywhere). The
        heartbeat ends on a flag too: nats.py's requests wait with ``asyncio.wait_for``, which on Python ≤
        3.11 can drop a cancellation that arrives with the reply (gh-86296) — the loop then ran on for
        ever and held ``Services.close`` (a loaded suite run, 20 s)."""
        self._closing = True
        tasks = [*self._tasks, *([self._publishing] if self._publishing is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_watching()
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
        return self.local.users()

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
        """Every ``lease / 3``: check the bucket is still the one watched (re-open it if not), put the
        heartbeat, purge the dead."""
        while not self._closing:
            if self._js is not None and self._connected:
                try:
                    if self._kv is None or await self._bucket_changed():
                        if self._kv is not None:
                            log.warning("cap bucket %s was deleted or re-created; opening it anew", self.bucket)
                        await self._open_bucket()
                    if self._kv is not None:
                        await self._kv.put(f"p.{self.process}", str(time.time()).encode())
                        self._purge_dead()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("cap heartbeat failed: %s", exc)
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
        else:  # no process holds more than the cap (plus overshoot): a bigger value cannot lock a user out
            by_process[process] = max(0, min(int(entry.value), self.max_per_user))
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
