"""Event ids: which retained stream an id belongs to, and where in it (docs/protocol.md, "Event ids").

An id is ``<epoch>-<sequence>``: the JetStream stream sequence of the event (or of the position a
snapshot or keepalive reflects), prefixed by the stream's *epoch* — 8 characters derived from the
stream's name and creation time. Every process and host that consumes the same stream derives the same
epoch, so any of them resumes any client; a stream deleted and re-created (or lost with its store and
re-created) starts its sequences at 1 again under a new epoch, so an id of the old stream can never be
taken for a position in the new one: it is refused (the client gets the snapshot with
``"resumed": false``) instead of silently skipping or replaying the wrong events.

Pure functions; the tests, the bench and the cluster kit parse ids with :func:`parse_id` too.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

EPOCH_LENGTH = 8
MAX_SEQUENCE_DIGITS = 19  # a JetStream sequence is a uint64
_EPOCH_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def stream_epoch(name: str, created: datetime | str | None) -> str:
    """The epoch of the stream ``name`` created at ``created`` (8 lowercase base32 characters)."""
    stamp = created.isoformat() if isinstance(created, datetime) else str(created or "")
    digest = hashlib.sha256(f"{name}\n{stamp}".encode()).digest()
    return base64.b32encode(digest).decode("ascii")[:EPOCH_LENGTH].lower()


def format_id(epoch: str, sequence: int) -> str:
    return f"{epoch}-{sequence}"


def parse_id(text: str) -> tuple[str, int] | None:
    """``(epoch, sequence)`` of an id this server wrote, or None for anything else (never raises;
    linear in the text, which a client controls)."""
    text = text.strip()
    if len(text) > EPOCH_LENGTH + 1 + MAX_SEQUENCE_DIGITS or text[EPOCH_LENGTH : EPOCH_LENGTH + 1] != "-":
        return None
    epoch, digits = text[:EPOCH_LENGTH], text[EPOCH_LENGTH + 1 :]
    if not set(epoch) <= _EPOCH_ALPHABET or not (digits.isascii() and digits.isdigit()):
        return None
    return epoch, int(digits)


def sequence_of(text: str | None) -> int | None:
    """The sequence of an id (for tests and tools that compare ids of one stream), or None."""
    parsed = None if text is None else parse_id(text)
    return None if parsed is None else parsed[1]
