"""A small per-process TTL cache (SPEC §5: user and revocation look-ups may be cached ≤ 10 s).

Bounded: when full, the oldest entries go first. Time comes from ``time.monotonic``.
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

    def __len__(self) -> int:
        return len(self._data)
