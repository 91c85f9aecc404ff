"""Identical snapshot reads share one store query, without a stream ever missing an event.

A connect storm (a deploy, a network blip) opens many streams on the same attacker at once; each
needs the same snapshot. A read in flight (however long it takes: under load, starting more reads
would only slow every one of them), or finished less than ``max_age`` ago, is shared:
- by every stream that registered with the hub *before* the read began — events after their
  registration reach them live, so the read cannot be too old for them;
- with JetStream, also by streams that registered later: they get the shared snapshot, stamped with
  the stream position at which the read began, followed by the events between that position and
  their own registration from the hub's replay memory — exactly what the read could not reflect.
Any other stream starts a new read. A failed read is not shared afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lurestream.hub import Hub, Subscriber
from lurestream.metrics import Metrics
from lurestream.replay import Item
from lurestream.routing import Key


@dataclass
class _Read:
    future: asyncio.Future[dict[str, Any]]
    serial: int  # the hub's registration counter when the read began
    position: int | None  # the hub's live position when the read began
    epoch: str  # the stream that position belongs to (a re-created stream's positions start again)


@dataclass
class Snapshot:
    data: dict[str, Any]
    position: int | None  # the stream position the data reflects (the snapshot frame's id)
    gap: list[Item]  # events between that position and the stream's registration


class SnapshotReads:
    def __init__(
        self, hub: Hub, max_age: float = 1.0, metrics: Metrics | None = None, max_gap_bytes: int = 2**20
    ) -> None:
        self.hub = hub
        self.max_gap_bytes = max_gap_bytes
        self.metrics = metrics
        self.max_age = max_age
        self.queries = 0  # store reads actually made (for tests and benchmarks)
        self._reads: dict[Key, _Read] = {}

    async def read(self, key: Key, sub: Subscriber, load: Callable[[], Awaitable[dict[str, Any]]]) -> Snapshot:
        shared = self._reads.get(key)  # in flight, or done less than max_age ago (then forgotten)
        if shared is not None:
            if shared.serial >= sub.serial:
                return Snapshot(dict(await asyncio.shield(shared.future)), sub.position, [])
            if shared.position is not None and sub.position is not None and shared.epoch == sub.epoch:
                gap = self.hub.recent_between(shared.position, sub.position, sub.keys)
                # a gap counts against the stream's byte bound like a replay (protocol §11): past it, read anew
                if gap is not None and sum(len(frame) for _, frame, _ in gap) <= self.max_gap_bytes:
                    return Snapshot(dict(await asyncio.shield(shared.future)), shared.position, gap)
        read = _Read(asyncio.ensure_future(load()), self.hub.serial, self.hub.live_position, self.hub.epoch)
        self.queries += 1  # snapshot reads started (each may share a store query with others: batching.py)
        self._reads[key] = read
        read.future.add_done_callback(lambda f: self._finished(key, read))
        return Snapshot(dict(await asyncio.shield(read.future)), sub.position, [])

    def _finished(self, key: Key, read: _Read) -> None:
        if read.future.cancelled() or read.future.exception() is not None:
            self._forget(key, read)  # never share a failure with later streams
        else:
            asyncio.get_running_loop().call_later(self.max_age, self._forget, key, read)

    def _forget(self, key: Key, read: _Read) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
