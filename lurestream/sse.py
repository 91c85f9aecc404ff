"""SSE frames: the encoding (pure) — the bytes every stream writes — and the one parser lurestream's clients
read them with (:class:`FrameParser`).

Invariants: a frame is UTF-8, ends with a blank line, and a field value can never break the frame —
line breaks in event names or ids are removed, and multi-line data becomes one ``data:`` line per line.
Frames are built once and the same ``bytes`` object is shared by every connection that receives it.
"""

from __future__ import annotations

import base64
import codecs
import json
import math
import re
from dataclasses import dataclass, field
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


# -- reading: the client side --------------------------------------------------------------------------
@dataclass
class Frame:
    """One frame as it was on the wire: the fields of the lines between two blank lines.

    Unlike an EventSource, which dispatches *events*, this keeps every frame, so a client can see a
    keepalive comment, an id-only frame and a bare ``retry:`` hint. ``event`` and ``data`` are None when
    the frame had no such field (an EventSource dispatches nothing for a frame without ``data``); ``id``
    is this frame's own ``id:``, not carried over from earlier frames.
    """

    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None  # milliseconds: only a value of ASCII digits counts, as in the SSE spec
    comments: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The event type an EventSource would dispatch it as (``message`` when no name was given)."""
        return self.event or "message"

    @property
    def is_keepalive(self) -> bool:
        """lurestream's idle comment (``: keepalive``, perhaps with an ``id:``): nothing to dispatch."""
        return self.event is None and self.data is None and "keepalive" in self.comments

    def json(self) -> Any:
        if self.data is None:
            raise ValueError(f"frame has no data: {self}")
        return json.loads(self.data)


_LINE_END = re.compile(r"\r\n?|\n")


class FrameParser:
    """Incremental SSE parser (the WHATWG "event stream interpretation"): feed it bytes as they arrive,
    in pieces of any size, and get back the frames they complete.

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r`` at the end of one piece and a ``\\n`` at the
    start of the next are one line end); UTF-8 characters may be split across pieces; one leading BOM is
    dropped; ``field: value`` loses one space after the colon; a line without a colon is a field with an
    empty value; an ``id`` holding NUL and a ``retry`` that is not all ASCII digits are ignored; several
    ``data`` lines join with ``\\n``. A frame cut off by the end of the stream is never returned (the spec
    discards it). Bytes that are not UTF-8 become U+FFFD, as in a browser (``errors="replace"``), or
    raise UnicodeDecodeError (``errors="strict"``: the tests, for which such bytes are a server's bug).

    lurestream's clients all read with this one parser — ``lurestream tail``, the test clients — so what
    the tests accept is what the tool shows, and both agree with the encoders above (the property tests
    in tests/test_sse_parser.py feed it every kind of frame they write, cut at every point).
    """

    def __init__(self, errors: str = "replace") -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
        self._partial = ""  # an unterminated line
        self._after_cr = False  # the last piece ended with \r: a \n starting the next one is its pair
        self._started = False  # text seen (so a BOM can only be the very first character)
        self._frame: Frame | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Frame]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._after_cr:
            self._after_cr = False
            if text.startswith("\n"):
                text = text[1:]
        buffer = self._partial + text
        frames: list[Frame] = []
        if "\r" not in buffer:  # what lurestream sends: split at once
            lines = buffer.split("\n")
            self._partial = lines.pop()
        else:
            lines, start = [], 0
            for end in _LINE_END.finditer(buffer):
                lines.append(buffer[start : end.start()])
                start = end.end()
            self._partial = buffer[start:]
            self._after_cr = not self._partial and buffer.endswith("\r")
        for line in lines:
            self._line(line, frames)
        return frames

    def _line(self, line: str, frames: list[Frame]) -> None:
        if not line:  # a blank line ends the frame, if one was begun
            if self._frame is not None:
                if self._data:
                    self._frame.data = "\n".join(self._data)
                    self._data = []
                frames.append(self._frame)
                self._frame = None
            return
        frame = self._frame
        if frame is None:
            frame = self._frame = Frame()
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if not name:
            frame.comments.append(value)
        elif name == "data":
            self._data.append(value)
        elif name == "event":
            frame.event = value
        elif name == "id":
            if "\0" not in value:
                frame.id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                frame.retry = int(value)
