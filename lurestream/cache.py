"""A small per-process TTL cache (protocol §5: user and revocation look-ups may be cached ≤ 10 s).

Bounded: when full, the oldest entries go first, and expired entries are dropped by ``purge()``, which
the process's housekeeping calls every second (protocol §11) — not only when the same key is asked again,
or a flood of distinct keys would stay in memory. Entries are kept in expiry order (one TTL per
cache, refreshed entries move to the end), so a purge touches only what has expired.
Time comes from ``time.monotonic``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")
MISSING: Any = object()


class TTLCache(Generic[V]):
    def __init__(self, ttl: float, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V:
        """The cached value, or ``MISSING`` (also when caching is off or the entry expired)."""
        found = self._data.get(key)
        if found is None:
            return MISSING  # type: ignore[no-any-return]
        expires, value = found
        if time.monotonic() >= expires:
            del self._data[key]
            return MISSING  # type: ignore[no-any-return]
        return value

    def set(self, key: str, value: V) -> None:
        if self.ttl <= 0:
            return
        self._data[key] = (time.monotonic() + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def get_or_load(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or ``await load()`` remembered for the TTL (None results included)."""
        value = self.get(key)
        if value is MISSING:
            value = await load()
            self.set(key, value)
        return value

    def purge(self) -> int:
        """Drop every expired entry; returns how many went."""
        now = time.monotonic()
        data = self._data
        dropped = 0
        while data:
            expires, _value = next(iter(data.values()))
            if expires > now:
                break
            data.popitem(last=False)
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._data)
