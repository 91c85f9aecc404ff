"""A stream's bounded inbox of encoded frames, filled by the hub and drained by one handler.

Modelled on nats.py's ``Subscription``: ``put_nowait`` never blocks the producer, ``get_batch`` is the
one reader's wait, ``close()`` is idempotent and wakes the reader, and ``pending``/``dropped`` expose
what is buffered and what overflowed. A plain deque plus one future keeps an idle subscription small:
no task, no timer and no ``asyncio.Queue`` (with its two waiter deques) per stream.

A stream is never silently thinned (SPEC §7): the first frame that finds the queue full ends the
subscription as ``lagging`` — it stops receiving, keeps what is queued for the reader to send, and the
handler then closes the response with a ``retry:`` hint so the client reconnects and resumes.
Items are ``(sequence, frame, ts)`` built once by the hub and shared by every subscriber: the
JetStream stream sequence (0 without JetStream), the encoded frame, and the envelope's ``ts``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from lurestream.routing import Key

Item = tuple[int, bytes, float]

CLOSED = "closed"  # the client went away, or the server closed the response
LAGGING = "lagging"  # the queue overflowed
DRAINING = "draining"  # the server is shutting down


class Subscription:
    """Frames queued for one stream; at most ``maxsize`` of them."""

    __slots__ = (
        "keys",
        "maxsize",
        "dropped",
        "closed",
        "reason",
        "position",
        "serial",
        "unflushed",
        "_frames",
        "_waiter",
        "_on_close",
        "_on_overflow",
    )

    def __init__(
        self,
        keys: Iterable[Key],
        maxsize: int,
        on_close: Callable[[Subscription], None] | None = None,
        on_overflow: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.keys: tuple[Key, ...] = tuple(keys)
        self.maxsize = maxsize
        self.dropped = 0
        self.closed = False
        self.reason: str | None = None
        self.position: int | None = None  # the hub's stream sequence when this subscription registered
        self.serial = 0  # the hub's registration counter when this subscription registered
        self.unflushed = 0  # bytes its handler has written and the connection has not yet flushed
        self._frames: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_close = on_close
        self._on_overflow = on_overflow

    @property
    def pending(self) -> int:
        return len(self._frames)

    def put_nowait(self, item: Item) -> bool:
        """Queue an item; False when closed, or when full (the subscription then ends as lagging)."""
        if self.closed:
            return False
        if len(self._frames) >= self.maxsize:
            self.dropped += 1
            self.end(LAGGING)
            if self._on_overflow is not None:
                self._on_overflow(self)
            return False
        self._frames.append(item)
        self._wake()
        return True

    async def get_batch(self, timeout: float) -> list[Item] | None:
        """Everything queued, waiting up to ``timeout`` for the first frame.

        Returns ``[]`` on timeout (nothing is lost: frames stay queued until taken) and ``None`` once
        the subscription is closed and drained.
        """
        if not self._frames and not self.closed:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._frames:
            frames = list(self._frames)
            self._frames.clear()
            return frames
        return None if self.closed else []

    def end(self, reason: str) -> None:
        """Stop receiving and unregister, keeping what is queued for the reader; the first reason sticks."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if self._on_close is not None:
            self._on_close(self)
        self._wake()

    def close(self) -> None:
        """End and discard what is queued (nobody will read it). Safe to call many times."""
        self.end(CLOSED)
        self._frames.clear()

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
