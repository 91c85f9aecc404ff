"""Store reads of different keys that arrive within a few milliseconds go out as one query.

A connect storm (a deploy, a network blip) opens thousands of streams over many attackers at once:
each needs the attacker's document and a snapshot. Identical reads are already shared (``snapshots``,
the 1 s resource cache); this coalesces *different* keys: the first request opens a short window, every
request for another key joins it, and when the window closes (or it holds ``max_keys``) one ``$in``
query answers them all. A request costs at most ``window`` seconds of extra latency; a storm costs a
few queries instead of one per attacker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from lurestream.store import Store

V = TypeVar("V")

FetchMany = Callable[[list[str]], Awaitable[dict[str, V]]]


class Coalescer(Generic[V]):
    """``get(key)`` for many keys at once, through ``fetch_many(keys) -> {key: value}``."""

    def __init__(
        self,
        fetch_many: FetchMany[V],
        window: float = 0.002,
        max_keys: int = 200,
        on_query: Callable[[int], None] | None = None,
    ) -> None:
        self.fetch_many = fetch_many
        self.window = window
        self.max_keys = max_keys
        self.on_query = on_query  # called with the batch size of each query made
        self.queries = 0
        self._waiting: dict[str, asyncio.Future[V | None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def get(self, key: str) -> V | None:
        """The value for ``key`` (None when the store has none); raises what the batch's query raised."""
        future = self._waiting.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._waiting[key] = loop.create_future()
            future.add_done_callback(_retrieved)
            if len(self._waiting) >= self.max_keys:
                self._send()
            elif self._timer is None:
                self._timer = loop.call_later(self.window, self._send)
        return await asyncio.shield(future)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        self.queries += 1
        if self.on_query is not None:
            self.on_query(len(waiting))
        asyncio.ensure_future(self._answer(waiting))

    async def _answer(self, waiting: dict[str, asyncio.Future[V | None]]) -> None:
        try:
            found = await self.fetch_many(list(waiting))
        except BaseException as exc:  # every waiter gets the failure (StoreUnavailable → its 503)
            for future in waiting.values():
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, future in waiting.items():
            if not future.done():
                future.set_result(found.get(key))


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen even when every requester has gone away (no "never retrieved" noise)."""
    if not future.cancelled():
        future.exception()


class StoreReads:
    """The connect path's store reads for one process, each coalesced (see the module docstring)."""

    def __init__(self, store: Store, on_snapshot_query: Callable[[int], None] | None = None) -> None:
        # through the store's attributes at call time, so a test can stand in for a method
        self.attackers: Coalescer[dict[str, Any]] = Coalescer(lambda keys: store.get_attackers(keys))
        self.topologies: Coalescer[dict[str, Any]] = Coalescer(lambda keys: store.get_topologies(keys))
        self.observations: Coalescer[list[dict[str, Any]]] = Coalescer(
            lambda keys: store.latest_observations_many(keys), on_query=on_snapshot_query
        )
        self.mutations: Coalescer[list[dict[str, Any]]] = Coalescer(
            lambda keys: store.in_flight_mutations_many(keys), on_query=on_snapshot_query
        )
