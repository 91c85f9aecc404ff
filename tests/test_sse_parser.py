"""The one SSE parser (``lurestream.sse.FrameParser``) against the encoders beside it.

``lurestream tail`` and the tests' clients read every frame with it, so it must give back exactly what the
encoders wrote — whatever the frames, however the bytes are cut into pieces on the way (TCP, HTTP chunks,
a proxy), and with any of the line ends the SSE spec allows. The spec's edge cases follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lurestream import sse
from lurestream.sse import Frame, FrameParser


@dataclass
class Expected:
    """What a frame must parse back to; ``body`` (when set) is what its data must decode to as JSON."""

    frame: Frame
    body: Any = None


def _no_breaks(text: str) -> str:
    """What the encoders do to an event name or an id: CR and LF removed (``sse._field``)."""
    return text.replace("\r", "").replace("\n", "")


# Text of every kind: control characters, NEL, LINE/PARAGRAPH SEPARATOR, non-ASCII, astral characters.
any_text = st.text(st.characters(codec="utf-8"), max_size=30)
ids = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30)  # NUL: see below
ascii_ids = st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=30)  # keepalive_frame's
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too: orjson refuses them, dumps takes over
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20),  # lone surrogates too
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def encoded_frames(draw: st.DrawFn) -> tuple[bytes, Expected]:
    """One frame as one of lurestream's encoders writes it, and what it must parse back to."""
    which = draw(st.sampled_from(["frame", "json frame", "event", "keepalive", "retry", "end", "error"]))
    event_id = draw(st.none() | ids)
    if which == "frame":  # any text: one data: line per line, as str.splitlines() cuts it
        event, data = draw(any_text), draw(any_text)
        expected = Frame(_no_breaks(event), "\n".join(data.splitlines() or [""]), _opt(event_id))
        return sse.encode_frame(event, data, event_id), Expected(expected)
    if which == "json frame":  # what the streams send: a snapshot, resumed, ...
        event, value = draw(any_text), draw(json_values)
        text = sse.dumps(value)
        return sse.encode_frame(event, text, event_id), Expected(Frame(_no_breaks(event), text, _opt(event_id)))
    if which == "event":  # a live bus event (orjson, raw UTF-8)
        event, topic, type_ = draw(any_text), draw(any_text), draw(any_text)
        ts = draw(st.floats(allow_nan=False, allow_infinity=False))
        payload = draw(st.dictionaries(any_text, json_values, max_size=5))
        body = {"topic": topic, "type": type_, "ts": ts, "payload": payload}
        encoded = sse.encode_event(event, topic, type_, ts, payload, event_id)
        return encoded, Expected(Frame(_no_breaks(event), None, _opt(event_id)), body)
    if which == "keepalive":  # its id is a stream position, <epoch>-<sequence>: ASCII (the encoder's contract)
        event_id = draw(st.none() | ascii_ids)
        expected = Frame(id=_opt(event_id), comments=["keepalive"])
        return sse.keepalive_frame(event_id), Expected(expected)
    if which == "retry":
        milliseconds = draw(st.integers(0, 10**12))
        return sse.retry_frame(milliseconds), Expected(Frame(retry=milliseconds))
    if which == "end":
        reason = draw(any_text)
        return sse.end_frame(reason), Expected(Frame("end", None), {"reason": reason})
    return sse.ERROR_FRAME, Expected(Frame("error", None), {"message": "Stream interrupted"})


def _opt(event_id: str | None) -> str | None:
    return None if event_id is None else _no_breaks(event_id)


def _check(parsed: list[Frame], expected: list[Expected]) -> None:
    assert len(parsed) == len(expected), (parsed, expected)
    for got, want in zip(parsed, expected, strict=True):
        if want.body is None:
            assert got == want.frame
        else:  # the data's exact text is the encoder's choice; its meaning and its shape are not
            assert (got.event, got.id, got.retry, got.comments) == (
                want.frame.event,
                want.frame.id,
                want.frame.retry,
                want.frame.comments,
            )
            assert got.data is not None and "\n" not in got.data and got.json() == want.body


def _feed(pieces: list[bytes]) -> list[Frame]:
    parser = FrameParser(errors="strict")
    return [frame for piece in pieces for frame in parser.feed(piece)]


def _cut(blob: bytes, data: st.DataObject) -> list[bytes]:
    """``blob`` in pieces cut anywhere: inside a UTF-8 character, between CR and LF, one byte each..."""
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(blob)), max_size=12))))
    if data.draw(st.booleans()):
        cuts = list(range(len(blob) + 1)) if len(blob) < 300 else cuts
    bounds = [0, *cuts, len(blob)]
    return [blob[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=400, deadline=None)
@given(st.lists(encoded_frames(), max_size=8), st.data())
def test_any_encoded_frames_cut_anywhere_parse_back_to_the_same_fields(frames, data):
    blob = b"".join(encoded for encoded, _ in frames)
    _check(_feed(_cut(blob, data)), [expected for _, expected in frames])


@settings(max_examples=300, deadline=None)
@given(st.lists(encoded_frames(), min_size=1, max_size=6), st.data())
def test_every_line_end_the_spec_allows_parses_the_same(frames, data):
    """The encoders end lines with LF; a proxy or another server may use CRLF or CR, even mixed. Every LF
    in an encoder's output is a line end (no field value holds a raw CR or LF), so each may be rewritten —
    except that a CR followed at once by an LF would read as one CRLF."""
    blob = b"".join(encoded for encoded, _ in frames)
    rewritten, previous_cr = bytearray(), False
    for index, byte in enumerate(blob):
        if byte != 0x0A:
            rewritten.append(byte)
            previous_cr = False
            continue
        adjacent = previous_cr and index > 0 and blob[index - 1] == 0x0A
        end = data.draw(st.sampled_from([b"\r", b"\r\n"] if adjacent else [b"\n", b"\r", b"\r\n"]))
        rewritten += end
        previous_cr = end == b"\r"
    _check(_feed(_cut(bytes(rewritten), data)), [expected for _, expected in frames])


# -- the spec's edge cases ---------------------------------------------------------------------------------
def test_comments_fields_without_a_colon_and_the_one_space_rule():
    frames = _feed([b": keepalive\n:no space\ndata\ndata:x\ndata:  two\nevent:name\nunknown: field\n\n"])
    assert frames == [Frame(event="name", data="\nx\n two", comments=["keepalive", "no space"])]


def test_a_frame_of_only_an_unknown_field_is_a_frame_with_nothing():
    assert _feed([b"foo: bar\n\n\n\n"]) == [Frame()]


def test_blank_lines_alone_make_no_frame():
    assert _feed([b"\n\n\r\n\r\r"]) == []


def test_an_id_holding_nul_is_ignored_as_the_spec_says():
    assert _feed([b"id: a\0b\ndata: x\n\n"]) == [Frame(data="x")]


@pytest.mark.parametrize("value", ["12a", "-5", "", " 5", "\u0661\u0662", "1.5"])
def test_a_retry_that_is_not_ascii_digits_is_ignored(value):
    assert _feed([f"retry: {value}\ndata: x\n\n".encode()]) == [Frame(data="x")]


def test_a_leading_bom_is_dropped_and_a_later_one_kept():
    bom = "\ufeff".encode()
    assert _feed([bom[:1], bom[1:] + b"data: a\n\ndata: " + bom + b"\n\n"]) == [Frame(data="a"), Frame(data="\ufeff")]


def test_a_cr_ending_one_piece_and_an_lf_starting_the_next_are_one_line_end():
    assert _feed([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [Frame(data="a\nb")]
    assert _feed([b"data: a\r", b"\r"]) == [Frame(data="a")], "a CR then a CR: a line end and a blank line"


def test_a_frame_cut_off_by_the_end_of_the_stream_is_never_returned():
    parser = FrameParser()
    assert parser.feed(b"event: x\ndata: y\n") == []
    assert parser.feed(b"data: z") == []


def test_bytes_that_are_not_utf8_are_replaced_or_refused():
    assert FrameParser().feed(b"data: \xff\xfe\n\n") == [Frame(data="\ufffd\ufffd")]
    with pytest.raises(UnicodeDecodeError):
        FrameParser(errors="strict").feed(b"data: \xff\n\n")


def test_frame_helpers_the_clients_rely_on():
    keepalive, event, unnamed = _feed([b': keepalive\nid: e-1\n\nevent: x\ndata: {"a": 1}\n\ndata: 2\n\n'])
    assert keepalive.is_keepalive and keepalive.id == "e-1" and not event.is_keepalive
    assert event.json() == {"a": 1} and event.name == "x" and unnamed.name == "message" and unnamed.json() == 2
    with pytest.raises(ValueError):
        keepalive.json()


def test_the_waiting_answer_parses_as_the_protocol_shows_it():
    """protocol §16: ``retry:`` then ``event: unavailable`` (what tail and the test clients wait on)."""
    body = b'retry: 2400\n\nevent: unavailable\ndata: {"status":503,"detail":"Store unavailable","retry_ms":2400}\n\n'
    hint, answer = _feed([body])
    assert hint == Frame(retry=2400)
    assert answer.event == "unavailable" and answer.json()["retry_ms"] == 2400 and answer.retry is None


def test_parsing_is_linear_in_the_number_of_frames():
    """The cluster tests push tens of thousands of frames through it: a frame costs the same at the end."""
    import time

    frame = sse.encode_event("observation", "attacker.observation.ja3", "t", 1.5, {"n": "x" * 200}, "abc-1")
    parser = FrameParser()
    start = time.perf_counter()
    assert len(parser.feed(frame * 2000)) == 2000
    small = time.perf_counter() - start
    start = time.perf_counter()
    assert len(parser.feed(frame * 20000)) == 20000
    assert time.perf_counter() - start < 30 * small + 0.5, "ten times the frames, far more than ten times the time"
