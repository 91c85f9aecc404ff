"""Decoding a bus message (SPEC §6, §11): the one place bus bytes become Python values. Pure.

Whatever a publisher sends, :func:`decode_envelope` either returns an :class:`Envelope` whose every
value re-encodes as strict JSON (RFC 8259: no NaN or Infinity, finite numbers) or raises
:class:`MalformedMessage` — never anything else, so one bad message cannot escape the hub's
malformed-message path. Bounded in work: a body over ``max_bytes`` is refused before parsing, nesting
deeper than ``MAX_DEPTH`` is refused (Python's parser would raise ``RecursionError`` at ~100,000
levels, after doing the work), and integers past Python's digit limit are refused by the parser.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 2**20


class MalformedMessage(ValueError):
    """A bus body that breaks SPEC §6 or §11; the message is skipped, counted and logged (rate-limited)."""


@dataclass(frozen=True)
class Envelope:
    topic: str
    type: str
    ts: float
    payload: dict[str, Any]


def _no_constants(name: str) -> Any:
    raise MalformedMessage(f"{name} is not JSON (RFC 8259)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise MalformedMessage(f"number {text[:32]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)


def decode_envelope(
    subject: str, data: bytes, now: float | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Envelope:
    """Parse a bus body; the topic always comes from the subject, never from the body."""
    if len(data) > max_bytes:
        raise MalformedMessage(f"{len(data)} bytes, over the {max_bytes}-byte bound")
    body = _parse(data)
    if not isinstance(body, dict):
        raise MalformedMessage(f"not a JSON object but {type(body).__name__}")
    payload = body.get("payload", {})
    if not isinstance(payload, dict):
        raise MalformedMessage(f"payload is {type(payload).__name__}, not an object")
    type_ = body.get("type", "")
    if not isinstance(type_, str):
        raise MalformedMessage(f"type is {type(type_).__name__}, not a string")
    ts = body.get("ts")
    if ts is None:
        ts = time.time() if now is None else now
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise MalformedMessage(f"ts is {type(ts).__name__}, not a number")
    try:
        stamp = float(ts)
    except OverflowError:  # an integer too large for a float
        raise MalformedMessage("ts is out of range") from None
    if not math.isfinite(stamp):
        raise MalformedMessage("ts is not finite")
    return Envelope(subject, type_, stamp, payload)


def _parse(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
        body = _decoder.decode(text)
    except MalformedMessage:
        raise
    except (ValueError, UnicodeDecodeError) as exc:  # includes integers past Python's digit limit
        raise MalformedMessage(f"not JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise MalformedMessage(f"nested deeper than {MAX_DEPTH} levels") from None
    # Nesting is only possible with brackets: few of them (the usual case) settles it at C speed.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise MalformedMessage(f"nested deeper than {MAX_DEPTH} levels")
    return body


def _depth(value: Any) -> int:
    """Nesting depth of a parsed value, without recursion (a walk over its containers)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
