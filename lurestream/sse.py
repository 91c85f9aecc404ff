"""SSE frame encoding (pure): the bytes every stream writes.

Invariants: a frame is UTF-8, ends with a blank line, and a field value can never break the frame —
line breaks in event names or ids are removed, and multi-line data becomes one ``data:`` line per line.
Frames are built once and the same ``bytes`` object is shared by every connection that receives it.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import date, datetime
from typing import Any

import orjson

KEEPALIVE = b": keepalive\n\n"
ERROR_FRAME = b'event: error\ndata: {"message":"Stream interrupted"}\n\n'


def _field(value: str) -> str:
    if "\r" in value or "\n" in value:
        return value.replace("\r", "").replace("\n", "")
    return value


def _json_default(value: Any) -> Any:
    """Stored values that JSON lacks: datetimes as ISO-8601, bytes as base64, the rest (ObjectId,
    Decimal128, UUID) as their string form."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def dumps(data: Any) -> str:
    """Compact one-line ASCII JSON: control characters and lone surrogates are escaped, so no raw
    newline can break a frame and the bytes are always valid UTF-8.

    Strict JSON (RFC 8259): browsers' ``JSON.parse`` throws on ``NaN``/``Infinity``, and a dashboard
    that cannot parse a frame reconnects in a loop. Bus messages never carry them (the decoder refuses
    them); a stored document may (MongoDB keeps IEEE doubles), so those values become ``null``.
    """
    try:
        return _encoder.encode(data)
    except ValueError:
        return _encoder.encode(_finite(data))


# One encoder for the process (json.dumps builds a new one per call when given options: ~2 µs an event).
_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (the rare path of :func:`dumps`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_frame(event: str, data: str, event_id: str | None = None) -> bytes:
    """Encode one SSE frame from an event name and an already-serialised data string."""
    parts = []
    if event_id is not None:
        parts.append(f"id: {_field(event_id)}\n")
    parts.append(f"event: {_field(event)}\n")
    for line in data.splitlines() or [""]:
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


# what orjson writes raw that some line splitters read as a line break: NEL, LINE and PARAGRAPH SEPARATOR
_LINE_BREAKS_BEYOND_LF = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def encode_event(
    event: str, topic: str, type_: str, ts: float, payload: dict[str, Any], event_id: str | None = None
) -> bytes:
    """The frame of a live bus event (protocol §2.3); ``event_id`` (JetStream, ``eventids``) becomes its ``id:``.

    The hot path of every bus message, encoded by orjson (~10× the standard library): one line of UTF-8
    (it escapes every control character, so no CR or LF can break the frame), built directly. NEL, LS and
    PS, which orjson leaves as they are, are escaped too: SSE splits lines on CR and LF only, but line
    splitters in other languages (Python's ``str.splitlines``) also break on those. A payload orjson
    refuses (an integer past 64 bits, a lone surrogate: only possible when the decoder's exact path read
    it) goes through :func:`dumps` instead. orjson writes NaN/Infinity as ``null``, as ``dumps`` does; the
    decoder never lets them in.
    """
    body = {"topic": topic, "type": type_, "ts": ts, "payload": payload}
    try:
        data = orjson.dumps(body)
    except orjson.JSONEncodeError:
        data = dumps(body).encode()
    else:
        for raw, escaped in _LINE_BREAKS_BEYOND_LF:
            if raw in data:  # only inside strings: JSON's own syntax is ASCII
                data = data.replace(raw, escaped)
    head = (
        f"event: {_field(event)}\ndata: "
        if event_id is None
        else f"id: {_field(event_id)}\nevent: {_field(event)}\ndata: "
    )
    return b"".join((head.encode(), data, b"\n\n"))


def end_frame(reason: str) -> bytes:
    """The last frame of a stream whose credential no longer holds (protocol §12): no retry hint follows."""
    return encode_frame("end", dumps({"reason": reason}))


def retry_frame(milliseconds: int) -> bytes:
    """A reconnect hint: sets the client's reconnection delay and dispatches nothing."""
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def keepalive_frame(event_id: str | None) -> bytes:
    """The idle comment; with JetStream it also carries the id of the stream position so a quiet stream's
    EventSource advances its Last-Event-ID (an id-only frame updates it without dispatching)."""
    return KEEPALIVE if event_id is None else f": keepalive\nid: {_field(event_id)}\n\n".encode("ascii")
