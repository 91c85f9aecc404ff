"""Per-user connection slots (SPEC §5.4): an object the Application owns, one per process.

A slot is taken before the 200 and given back when the stream ends for any reason; ``held`` lets the
tests' leak guard check nothing stays taken.
"""

from __future__ import annotations


class ConnectionLimiter:
    """At most ``max_per_user`` concurrent streams per user uuid in this process."""

    def __init__(self, max_per_user: int) -> None:
        self.max_per_user = max_per_user
        self._held: dict[str, int] = {}

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
