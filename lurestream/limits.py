"""Per-user limits, objects the Application owns (one per process): connection slots (protocol §5.4) and
the ticket/session mint rate (protocol §11).

A slot is taken before the 200 and given back when the stream ends for any reason; ``held`` lets the
tests' leak guard check nothing stays taken.
"""

from __future__ import annotations

import math
import time
from typing import Protocol


class Slots(Protocol):
    """The per-user cap handlers and the writer see: this process's (``ConnectionLimiter``) or the
    cluster's (``caps.ClusterCap``)."""

    max_per_user: int

    @property
    def mode(self) -> str: ...

    def try_acquire(self, uuid: str) -> bool: ...

    def release(self, uuid: str) -> None: ...

    def held(self, uuid: str | None = None) -> int: ...

    def wait_hint(self, uuid: str, reconnecting: bool) -> float | None:
        """After ``try_acquire`` refused: seconds after which the refusal may clear on its own (the client
        is told to retry then), or None when it is final (a 429)."""
        ...


class ConnectionLimiter:
    """At most ``max_per_user`` concurrent streams per user uuid in this process."""

    def __init__(self, max_per_user: int) -> None:
        self.max_per_user = max_per_user
        self._held: dict[str, int] = {}

    @property
    def mode(self) -> str:
        return "local"  # counts this process's streams only

    def try_acquire(self, uuid: str) -> bool:
        count = self._held.get(uuid, 0)
        if count >= self.max_per_user:
            return False
        self._held[uuid] = count + 1
        return True

    def release(self, uuid: str) -> None:
        count = self._held.get(uuid, 0) - 1
        if count > 0:
            self._held[uuid] = count
        else:
            self._held.pop(uuid, None)

    def held(self, uuid: str | None = None) -> int:
        """Slots held by one user, or by everyone when ``uuid`` is None."""
        if uuid is None:
            return sum(self._held.values())
        return self._held.get(uuid, 0)

    def users(self) -> list[str]:
        """The users holding a slot now."""
        return list(self._held)

    def wait_hint(self, uuid: str, reconnecting: bool) -> float | None:
        """A reconnect at the cap may be counted against its own old stream, whose close this process
        has not seen yet (a half-open connection ends at the next keepalive or send timeout): retry soon.
        A first connect at the cap is refused for good."""
        return 2.0 if reconnecting else None


class MintRate:
    """At most ``count`` mints per user in any ``window`` seconds (a token bucket per user).

    A bucket refills continuously, so a user who waits gets mints back steadily rather than all at
    the end of a window. Full buckets are forgotten by ``purge()`` (housekeeping), so memory follows
    the users minting right now, not every user ever seen.
    """

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.per_second = count / window
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)

    def take(self, user: str, now: float | None = None) -> float:
        """0 when a mint is allowed (and counted), else the seconds until the next one is."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(user, (float(self.count), now))
        tokens = min(float(self.count), tokens + (now - at) * self.per_second)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return (1.0 - tokens) / self.per_second
        self._buckets[user] = (tokens - 1.0, now)
        return 0.0

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))

    def purge(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        full = [u for u, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.per_second >= self.count]
        for user in full:
            del self._buckets[user]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)


class RequestCounter:
    """Requests inside a handler right now: a drain waits for them before the store and bus close."""

    def __init__(self) -> None:
        self.count = 0
