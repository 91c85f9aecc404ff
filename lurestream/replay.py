"""Resume (protocol §7): the process's memory of recent routed events, and the bounded JetStream scan.

A stream that reconnects with a last event id L registers with the hub first, at position P, and is
sent the events L+1…P it wants; later ones reach it live, so the two ranges meet without a gap or a
duplicate (the stream drops live items ≤ max(L, P)).

A resume is exact or it is refused (protocol §16): ``resumed`` is only ever the answer when every event of
the stream's keys in L+1…P was read. An id of another epoch (a re-created stream), a JetStream read that
times out, fails, or stops short of P (a slow-consumer cut, a stall), and a replay past the stream's
byte bound — counted as it is read, not after — all give the ``"resumed": false`` snapshot instead.

The memory holds the last ``max_events`` routed events — the same shared frame bytes the streams got
— within ``max_bytes`` (protocol §11), with the invariant: every routed event with a sequence in
(``floor``, hub position] is here. At start-up the hub reads that much history into the memory only,
so a freshly started process (a rolling deploy's reconnect target) resumes from memory too. Older ids
are read back from JetStream with a short-lived pull consumer, at most ``replay_max`` messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from lurestream import eventids, jetstream
from lurestream.metrics import Metrics
from lurestream.routing import Key

log = logging.getLogger("lurestream.replay")


class Item(NamedTuple):
    """A routed event as every stream that wants it gets it: encoded once, shared."""

    seq: int  # the JetStream stream sequence (0 without JetStream)
    frame: bytes  # the SSE frame, ``id:`` included
    ts: float  # the envelope's ts (the delivery latency is measured from it)


# why a resume could not be served (the stream then gets a snapshot with "resumed": false)
RESUME_DISABLED = "jetstream_off"
RESUME_INVALID = "invalid_id"
RESUME_AHEAD = "ahead_of_stream"
RESUME_EXPIRED = "not_retained"
RESUME_TOO_FAR = "beyond_replay_max"
RESUME_TOO_BIG = "beyond_stream_buffer"
RESUME_UNAVAILABLE = "bus_unavailable"
RESUME_OTHER_STREAM = "other_stream"  # the id belongs to a deleted or re-created stream (another epoch)
RESUME_INCOMPLETE = "incomplete_read"  # JetStream did not deliver the whole range (timeout, slow consumer)


@dataclass
class Resume:
    """A resume's outcome: the replayed items (oldest first), or why it could not be served."""

    items: list[Item]
    failed: str | None = None


class ReplayMemory:
    """Recent routed events, bounded in count and bytes; see the module docstring for the invariant.

    Kept twice over (references, not copies): in arrival order, to drop the oldest, and per routing
    key, so a resume looks only at the events of its stream's keys — its cost is what it replays, not
    how many events the whole network produced since (a rolling deploy's reconnects scanned the lot).
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.floor: int | None = None  # None: the memory covers nothing (JetStream off or not started)
        self.bytes = 0
        self._events: deque[tuple[int, Key, Key | None, Item]] = deque()
        self._by_key: dict[Key, deque[tuple[int, Item]]] = {}

    def __len__(self) -> int:
        return len(self._events)

    def start(self, floor: int | None) -> None:
        """Begin covering sequences after ``floor`` (forgetting anything older)."""
        self._events.clear()
        self._by_key.clear()
        self.bytes = 0
        self.floor = floor

    def remember(self, seq: int, key: Key, item: Item, also: Key | None = None) -> None:
        """Keep ``item`` (sequence ``seq``) for resumes of streams under ``key`` (and ``also``)."""
        events = self._events
        events.append((seq, key, also, item))
        for k in (key, also):
            if k is not None:
                by_key = self._by_key.get(k)
                if by_key is None:
                    by_key = self._by_key[k] = deque()
                by_key.append((seq, item))
        self.bytes += len(item[1])
        while events and (len(events) > self.max_events or self.bytes > self.max_bytes):
            old_seq, old_key, old_also, old = events.popleft()
            self.bytes -= len(old[1])
            self.floor = old_seq
            for k in (old_key, old_also):
                if k is not None:
                    oldest = self._by_key[k]
                    oldest.popleft()  # the same event: they are all in sequence order
                    if not oldest:
                        del self._by_key[k]

    def covers(self, after: int) -> bool:
        return self.floor is not None and after >= self.floor

    def between(self, after: int, until: int, keys: Iterable[Key]) -> list[Item] | None:
        """The items for ``keys`` with ``after < seq <= until``, oldest first; None if the memory does
        not reach back to ``after``."""
        if not self.covers(after) or until < after:
            return None
        found: list[tuple[int, Item]] = []
        for key in set(keys):
            for seq, item in reversed(self._by_key.get(key, ())):
                if seq <= after:
                    break
                if seq <= until:
                    found.append((seq, item))
        found.sort(key=lambda pair: pair[0])
        return [item for _seq, item in found]


class Replayer:
    """Serves resumes for one hub: from its memory, else from its JetStream stream."""

    def __init__(
        self,
        memory: ReplayMemory,
        replay_max: int,
        decode_item: Callable[[Msg, set[Key]], Item | None],
        metrics: Metrics,
    ) -> None:
        self.memory = memory
        self.replay_max = replay_max
        self.decode_item = decode_item  # a retained message as the item a wanting stream would get
        self.metrics = metrics  # lurestream_resumes_total{outcome}, lurestream_resumed_events_total
        self.filters: list[str] | None = None  # the hub's consumer filter, for the scans

    async def resume(
        self,
        position: int | None,
        keys: Iterable[Key],
        last_event_id: str,
        js: JetStreamContext | None,
        stream: str,
        caught_up: asyncio.Event,
        epoch: str = "",
        max_bytes: int = 0,
    ) -> Resume:
        """The retained events after ``last_event_id`` up to ``position`` (where the stream registered)
        for ``keys``, all of them, or a failure; ``max_bytes`` (0: no bound) bounds the replay's frames."""
        if js is None or position is None or not stream:
            return self.failed(RESUME_DISABLED)
        parsed = eventids.parse_id(last_event_id)
        if parsed is None:
            return self.failed(RESUME_INVALID)
        if parsed[0] != epoch:
            return self.failed(RESUME_OTHER_STREAM)
        if not caught_up.is_set():  # just started: the memory is still filling
            try:
                await asyncio.wait_for(caught_up.wait(), 10)
            except asyncio.TimeoutError:
                return self.failed(RESUME_UNAVAILABLE)
        after, until = parsed[1], position
        if after > until:  # the client saw more than this process has yet: live covers it (floor = after)
            try:
                state = await jetstream.stream_state(js, stream)
            except Exception as exc:
                log.warning("resume: cannot read stream %s: %s", stream, exc)
                return self.failed(RESUME_UNAVAILABLE)
            if state.epoch != epoch:
                return self.failed(RESUME_OTHER_STREAM)
            return self.failed(RESUME_AHEAD) if after > state.last_seq else self.resumed(Resume([]))
        if until - after > self.replay_max:
            return self.failed(RESUME_TOO_FAR)
        if after == until:
            return self.resumed(Resume([]))
        remembered = self.memory.between(after, until, keys)
        if remembered is not None:
            if max_bytes and sum(len(item[1]) for item in remembered) > max_bytes:
                return self.failed(RESUME_TOO_BIG)
            return self.resumed(Resume(remembered))
        return await self._from_stream(js, stream, epoch, after, until, set(keys), max_bytes)

    async def _from_stream(
        self, js: JetStreamContext, stream: str, epoch: str, after: int, until: int, wanted: set[Key], max_bytes: int
    ) -> Resume:
        """Read ``after``+1…``until`` back from JetStream; any doubt about completeness is a failure."""
        items: list[Item] = []
        size = 0
        try:
            state = await jetstream.stream_state(js, stream)
            if state.epoch != epoch:  # re-created since this process last looked: not the client's stream
                return self.failed(RESUME_OTHER_STREAM)
            if after + 1 < state.first_seq:
                return self.failed(RESUME_EXPIRED)
            scan = jetstream.Scan(js, stream, after + 1, until, filters=self.filters)
            async for msg in scan:
                item = self.decode_item(msg, wanted)
                if item is None:
                    continue
                items.append(item)
                size += len(item[1])
                if max_bytes and size > max_bytes:  # bounded as it is read (protocol §16), not after
                    return self.failed(RESUME_TOO_BIG)
            if not scan.complete:
                log.warning("resume: JetStream delivered %s only up to %d of %d", stream, scan.reached, until)
                return self.failed(RESUME_INCOMPLETE)
        except Exception as exc:
            log.warning("resume: reading stream %s failed: %s", stream, exc)
            return self.failed(RESUME_UNAVAILABLE)
        return self.resumed(Resume(items), "jetstream")

    def resumed(self, outcome: Resume, source: str = "memory") -> Resume:
        self.metrics.resumes.labels(source).inc()
        self.metrics.resumed_events.inc(len(outcome.items))
        return outcome

    def failed(self, reason: str) -> Resume:
        self.metrics.resumes.labels(reason).inc()
        return Resume([], failed=reason)
