"""DECNET's log search language (protocol §15), parsed once per stream and evaluated in memory per row.

The live log feed tails the ``logs`` collection once per process and filters every new row for every
open stream, so a search is compiled once (``parse_search``) into a ``LogFilter`` whose ``matches`` does
only plain string work — ``==``, substring tests and a precomputed ``casefold`` — never a regular
expression built from user text (a pattern compiled from a search would let a viewer pick its backtracking
cost); a long word's substring test is an escaped literal (``_long_word``), which has no backtracking at all.
``LogRow`` prepares a row once for many filters: the casefolded text, the ``fields`` JSON and the
timestamp are each computed at most once per row, however many streams and terms need them.

DECNET's implementation is ``LogsMixin._apply_filters`` in ``decnet/web/db/sqlmodel_repo/logs.py``
(4nt11/DECNET; older copies in ``decnet/web/db/sqlite/repository.py``): ``shlex.split`` falling back to
``str.split`` on a ``ValueError``; a token holding ``:`` is ``key, val = token.split(":", 1)``; the key
looked up as written in ``{decky, service, event→event_type, attacker, attacker-ip, attacker_ip →
attacker_ip}``; any other key stripped with ``re.sub(r"[^a-zA-Z0-9_]", "", key)`` and, when something
is left, ``JSON_EXTRACT(fields, '$.key') = :val`` (MySQL: ``JSON_UNQUOTE(JSON_EXTRACT(...))``, which
is where "a number matches its JSON text" comes from); any other token ``LIKE '%token%'`` on
``raw_line``, ``decky``, ``service``, ``attacker_ip``; ``start_time``/``end_time`` as ``>=``/``<=``.

Semantics (each decision where protocol §15 is silent; the DECNET behaviour it follows is noted):

- Tokens: ``shlex.split`` (POSIX, no comments); on unbalanced quotes or a trailing backslash,
  ``str.split()`` (any Unicode whitespace), quotes kept as characters. Every term must match (AND).
- ``key:value`` splits on the first ``:`` (``a:b:c`` is key ``a``, value ``b:c``). A token with a
  ``:`` is never a bare word, even when quoted (``"GET /a:b"`` is key ``GET /a``) — as DECNET.
- Keys are case-sensitive, as in DECNET: ``decky``, ``service``, ``event``, ``attacker``,
  ``attacker-ip``, ``attacker_ip`` exactly; ``Decky:x`` is the ``fields`` key ``Decky``. ``event`` means
  the field ``event_type``; ``event_type:x`` is ``fields.event_type`` (as DECNET). ``attacker`` means
  ``attacker_ip`` (as DECNET).
- Equality is exact and case-sensitive (``decky:Web`` does not match ``web``), and the stored value must
  be a string: a missing field or a non-string never equals anything. An empty value (``decky:``)
  matches an empty string only (as DECNET's ``= ''``).
- Any other key is kept to ASCII ``[A-Za-z0-9_]`` (``x-forwarded.for`` → ``xforwardedfor``); a key left
  empty (``:x``, ``-:x``) drops the token. The key names a top-level member of ``fields`` (no paths).
- ``fields`` is a dict, or a string holding a JSON object; anything else (missing, a list, bytes,
  unparseable text, JSON that is not an object) matches no ``fields`` term. JSON text is parsed strictly
  (``NaN``/``Infinity`` make it unparseable, as RFC 8259), at most once per row, and not at all when
  longer than ``MAX_FIELDS_TEXT`` (64 Ki characters) or holding a number of more than 4300 digits
  (Python's own default bound), so a hostile row costs a bounded parse. Duplicate keys: the last wins.
- A ``fields`` value matches when its JSON text equals the value: a string is its text (``"22"``
  matches ``port:22``), an integer its decimal digits (``22`` matches ``port:22``, not ``port:022`` or
  ``port:22.0``), a float its shortest repr as Python's ``json`` writes it (``22.5``, ``1e+20``; a
  stored ``22.50`` is the float 22.5 and matches ``port:22.5``), ``true``/``false``/``null`` those words
  (``null`` needs the key present with a null value; a missing key matches nothing). An object or a
  list matches nothing.
- A bare word matches when its ``casefold()`` is a substring of the ``casefold()`` of ``raw_line``,
  ``decky``, ``service`` or ``attacker_ip`` (whichever are strings). ``%`` and ``_`` are literal (in
  DECNET's ``LIKE`` they were unescaped wildcards — an accident, not a feature). An empty word (``""``)
  is dropped: it would be a substring of everything.
- ``start_time``/``end_time``: ISO-8601 as ``datetime.fromisoformat`` reads it (Python 3.11: with
  ``T`` or a space, basic or extended form), ``Z`` accepted, no offset meaning UTC, a date alone meaning
  its midnight UTC; both inclusive. ``parse_time`` refuses anything else with a ``SearchError``, and an
  empty string too (the handler treats an empty parameter as absent, as DECNET's ``if start_time:``).
  A start after the end is allowed and matches nothing (DECNET returns nothing, not an error).
- A row's ``timestamp``: an aware datetime as is, a naive one as UTC, an ISO-8601 string read as
  ``parse_time`` reads it. With a bound set, a row whose timestamp is missing or unreadable matches
  nothing; with no bound the timestamp is never looked at.
- Limits (each a ``SearchError``, the handler's 400): a search longer than ``MAX_SEARCH_LENGTH`` (1024)
  characters, one holding more than ``MAX_SEARCH_TERMS`` (32) distinct terms (after dropping empty and
  repeated ones), text that is not valid Unicode (a lone surrogate). The term bound is what keeps a
  row's cost linear: at most 32 scans of each text field, each linear in the field's length whatever the
  row and the word hold (``_long_word``: CPython's ``in`` is not, for a word of 6–99 characters in a text
  under 30,000).
- Two searches with the same terms in any order, repeated, or with bare words differing only in case,
  and bounds naming the same instants, have the same ``LogFilter.key``. A bare word contained in another
  bare word is implied by it and dropped (``ssh sshd`` is ``sshd``).

``to_mongo`` (for the histogram and resume queries, run by MongoDB) expresses the same filter with
standard operators only; where MongoDB cannot say exactly the same thing, it approximates:

- MongoDB matches a value inside an array (``decky: ["a"]`` matches ``decky:a``) and compares numbers by
  value across types (``fields.port: 22.0`` matches ``port:22``); ``matches`` does neither.
- ``fields`` stored as JSON text is matched by a ``$regex`` over the text: ``"key"`` right after ``{`` or
  ``,``, any whitespace around the ``:``, then the value's JSON text (both ``\\u``-escaped and raw
  non-ASCII spellings of a string; a number, ``true``, ``false`` or ``null`` followed by ``,`` or
  ``}``). It also counts a key of a nested object, and text that is not JSON but holds such a piece
  after a ``{`` or ``,``; it misses other spellings (``22.50``, ``2.2e1``, ``\\/``, upper-case
  ``\\u00E9``); it does not apply the 64 Ki bound.
- Bare words use ``$regex`` on the escaped literal word with the ``i`` option: PCRE's simple case
  folding, so words whose ``casefold`` differs from their lower case (``ß``→``ss``, ``İ``) can count
  fewer rows than ``matches`` finds.
- Time bounds match BSON dates only (type bracketing): rows holding the timestamp as a string are not
  counted in a bounded query.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

MAX_SEARCH_LENGTH = 1024  # characters of search text; longer → SearchError (a URL allows 8 KiB, §11)
MAX_SEARCH_TERMS = 32  # distinct terms; bounds the scans of a row's text per filter
MAX_FIELDS_TEXT = 64 * 1024  # characters of `fields` JSON text parsed; longer matches no `fields.*` term
MAX_TIME_LENGTH = 64  # characters of an ISO-8601 time; no valid one is longer
SHORT_WORD = 8  # a bare word this short is tested with ``in``: at most this many comparisons per character
_MAX_INT_DIGITS = 4300  # Python's default int-to-str bound, applied whatever the interpreter's setting
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# Keys naming a top-level column (protocol §15, DECNET's `core_fields`), matched as written.
CORE_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "decky": "decky",
        "service": "service",
        "event": "event_type",
        "attacker": "attacker_ip",
        "attacker-ip": "attacker_ip",
        "attacker_ip": "attacker_ip",
    }
)
WORD_FIELDS = ("raw_line", "decky", "service", "attacker_ip")  # where a bare word is looked for
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "_")

# (core equalities, fields equalities, bare words, start, end); every part sorted, so it is canonical.
FilterKey = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...], str | None, str | None]


class SearchError(ValueError):
    """A search or time bound the feed refuses; the message is short and safe to show (a 400 body)."""


def _iso(value: str) -> datetime | None:
    """``value`` read as ISO-8601 in UTC, or None. Bounded and ASCII-only, so no odd digit can sneak in."""
    text = value.strip()
    if not text or len(text) > MAX_TIME_LENGTH or not text.isascii():
        return None
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def parse_time(value: str) -> datetime:
    """A ``start_time``/``end_time`` parameter as an aware UTC datetime (see the module docstring)."""
    parsed = _iso(value)
    if parsed is None:
        raise SearchError("time must be ISO-8601, e.g. 2024-05-01T12:00:00Z")
    return parsed


def _utc_bound(value: datetime | None) -> datetime | None:
    """A caller's datetime bound as aware UTC (naive means UTC), so keys compare instants."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise SearchError("time out of range") from None


def _bounded_int(digits: str) -> int:
    """``json.loads``' ``parse_int`` with Python's default digit bound, so a row cannot make it quadratic."""
    if len(digits) - digits.startswith("-") > _MAX_INT_DIGITS:
        raise ValueError("number too long")
    return int(digits)


def _no_constant(name: str) -> Any:
    """``json.loads``' ``parse_constant``: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _load_fields(value: Any) -> dict[str, Any] | None:
    """A row's ``fields`` as a dict, parsing JSON text (bounded, strict), or None if it is not one."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or len(value) > MAX_FIELDS_TEXT:
        return None
    try:
        loaded = json.loads(value, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting a RecursionError
        return None
    return loaded if isinstance(loaded, dict) else None


class LogRow:
    """One stored ``logs`` document, prepared lazily and at most once for any number of filters.

    Pass a ``LogRow`` (not the dict) to every stream's ``matches`` when a row is checked against many
    filters: the casefolded text, the parsed ``fields`` and the timestamp are then computed once per row,
    not once per stream. Anything that is not a mapping is treated as an empty row.
    """

    __slots__ = ("_doc", "_folded", "_fields", "_fields_done", "_time", "_time_done")

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._doc: Mapping[str, Any] = doc if isinstance(doc, Mapping) else {}
        self._folded: tuple[str, ...] | None = None
        self._fields: dict[str, Any] | None = None
        self._fields_done = False
        self._time: datetime | None = None
        self._time_done = False

    def text(self, name: str) -> str | None:
        """The field ``name`` if it is a string, else None (a non-string never equals a search value)."""
        value = self._doc.get(name)
        return value if isinstance(value, str) else None

    def folded(self) -> tuple[str, ...]:
        """The casefolded string values of ``WORD_FIELDS`` (those that are strings)."""
        if self._folded is None:
            self._folded = tuple(v.casefold() for v in (self.text(name) for name in WORD_FIELDS) if v is not None)
        return self._folded

    def fields(self) -> dict[str, Any] | None:
        """``fields`` as a dict (parsed from JSON text once), or None when it is not an object."""
        if not self._fields_done:
            self._fields = _load_fields(self._doc.get("fields"))
            self._fields_done = True
        return self._fields

    def timestamp(self) -> datetime | None:
        """``timestamp`` as an aware datetime (naive → UTC, ISO-8601 text parsed), or None."""
        if not self._time_done:
            self._time = self._read_time(self._doc.get("timestamp"))
            self._time_done = True
        return self._time

    @staticmethod
    def _read_time(value: Any) -> datetime | None:
        if isinstance(value, str):
            return _iso(value)
        if not isinstance(value, datetime):
            return None
        try:
            offset = value.utcoffset()
        except (ValueError, TypeError, OverflowError):  # a broken tzinfo: no usable instant
            return None
        return value.replace(tzinfo=timezone.utc) if offset is None else value


_MISSING: Any = object()


def _json_int(text: str) -> int | None:
    """``text`` as an int if it is exactly an integer's JSON text (``22``, ``-5``; not ``022``, ``-0``)."""
    digits = text[1:] if text.startswith("-") else text
    if not digits or len(digits) > _MAX_INT_DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    if (digits[0] == "0" and len(digits) > 1) or text == "-0":
        return None
    return int(text)


def _json_float(text: str) -> float | None:
    """``text`` as a float if it is exactly a finite float's repr (``22.5``, ``1e+20``; not ``22.50``)."""
    if not text or len(text) > 32 or not text.isascii():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and float.__repr__(value) == text else None


@dataclass(frozen=True, slots=True)
class _FieldTerm:
    """``key:text`` on ``fields``, with the number ``text`` spells worked out once, at parse time."""

    key: str
    text: str
    integer: int | None
    real: float | None

    @classmethod
    def of(cls, key: str, text: str) -> _FieldTerm:
        return cls(key, text, _json_int(text), _json_float(text))

    def matches(self, value: Any) -> bool:
        """Whether a stored value's JSON text is ``text``; comparing numbers, never rendering big ones."""
        if isinstance(value, str):
            return value == self.text
        if value is True or value is False or value is None:
            return self.text == ("true" if value is True else "false" if value is False else "null")
        if isinstance(value, int):
            return self.integer is not None and value == self.integer
        if isinstance(value, float):
            return self.real is not None and math.isfinite(value) and float.__repr__(value) == self.text
        return False

    def to_mongo(self) -> dict[str, Any]:
        """The object form by value, the JSON-text form by a ``$regex`` (see the module docstring)."""
        path = "fields." + self.key
        values: list[Any] = [self.text]
        literal = False  # is `text` also a bare JSON literal (a number, true, false, null)?
        if self.integer is not None:
            literal = True
            if _INT64_MIN <= self.integer <= _INT64_MAX:  # BSON has no bigger integer to hold
                values.append(self.integer)
        if self.real is not None:
            literal = True
            values.append(self.real)
        if self.text in ("true", "false"):
            literal = True
            values.append(self.text == "true")
        by_value: dict[str, Any] = {"$in": values} if len(values) > 1 else {"$eq": self.text}
        if self.text == "null":
            literal = True
            by_value = {"$in": [*values, None], "$exists": True}  # $in null alone also matches a missing key
        spellings = dict.fromkeys([json.dumps(self.text), json.dumps(self.text, ensure_ascii=False)])
        alternatives = [_literal_pattern(s) for s in spellings]
        if literal:
            alternatives.append(_literal_pattern(self.text) + r"\s*[,}]")
        pattern = r"[{,]\s*" + _literal_pattern(f'"{self.key}"') + r"\s*:\s*(?:" + "|".join(alternatives) + ")"
        return {"$or": [{path: by_value}, {"fields": {"$regex": pattern}}]}


def _literal_pattern(text: str) -> str:
    """A PCRE pattern for exactly ``text`` — for MongoDB to run, never us. ``re.escape`` leaves a NUL as
    is, and MongoDB refuses a pattern holding one, so it is spelled ``\\x00``."""
    return re.escape(text).replace("\x00", "\\x00")


def _tokens(text: str) -> list[str]:
    """DECNET's split: a shell line, or plain whitespace when the quotes do not balance."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


class LogFilter:
    """A compiled search plus time bounds: ``matches`` for rows in memory, ``to_mongo`` for MongoDB.

    Immutable; equal (and hashing equal) exactly when ``key`` is, so filters can key a shared cache.
    """

    __slots__ = ("_equals", "_fields", "_words", "_short", "_long", "_start", "_end", "_key")

    def __init__(
        self,
        equals: tuple[tuple[str, str], ...],
        fields: tuple[_FieldTerm, ...],
        words: tuple[str, ...],
        start: datetime | None,
        end: datetime | None,
    ) -> None:
        """Use ``parse_search``; this takes the already-normalised parts."""
        self._equals = equals
        self._fields = fields
        self._words = words
        # a short word is tested with ``in`` inline (the common case, no call); a long one with a linear
        # search (``_long_word``: ``in`` is not linear for it)
        self._short = tuple(word for word in words if len(word) <= SHORT_WORD)
        self._long = tuple(_long_word(word) for word in words if len(word) > SHORT_WORD)
        self._start = start
        self._end = end
        self._key: FilterKey = (
            equals,
            tuple((t.key, t.text) for t in fields),
            tuple(sorted(words)),
            None if start is None else start.isoformat(),
            None if end is None else end.isoformat(),
        )

    @property
    def key(self) -> FilterKey:
        """The canonical identity: normalised, sorted terms and the bounds' UTC instants."""
        return self._key

    @property
    def start(self) -> datetime | None:
        """The inclusive lower bound on ``timestamp`` (aware, UTC), if any."""
        return self._start

    @property
    def end(self) -> datetime | None:
        """The inclusive upper bound on ``timestamp`` (aware, UTC), if any."""
        return self._end

    @property
    def columns(self) -> tuple[str, ...]:
        """The row fields ``matches`` reads, besides ``timestamp`` (what a query must project)."""
        used = {name for name, _ in self._equals}
        if self._fields:
            used.add("fields")
        if self._words:
            used.update(WORD_FIELDS)
        return tuple(sorted(used))

    @property
    def matches_everything(self) -> bool:
        """No term and no bound: every row matches (the caller may skip ``matches``)."""
        return not (self._equals or self._fields or self._words or self._start or self._end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogFilter) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"LogFilter({self._key!r})"

    def matches(self, row: Mapping[str, Any] | LogRow) -> bool:
        """Whether ``row`` (a ``logs`` document, or a ``LogRow`` shared between filters) matches.

        Cheapest tests first (bounds, equalities, ``fields``), the text scans last. Never raises,
        whatever the row holds; costs at most one linear scan of each text field per bare word.
        """
        prepared = row if isinstance(row, LogRow) else LogRow(row)
        if self._start is not None or self._end is not None:
            when = prepared.timestamp()
            if when is None:
                return False
            if self._start is not None and when < self._start:
                return False
            if self._end is not None and when > self._end:
                return False
        for name, value in self._equals:
            if prepared.text(name) != value:
                return False
        if self._fields:
            fields = prepared.fields()
            if fields is None:
                return False
            for term in self._fields:
                if not term.matches(fields.get(term.key, _MISSING)):
                    return False
        if self._words:
            haystacks = prepared.folded()
            for word in self._short:
                if not any(word in haystack for haystack in haystacks):
                    return False
            for search in self._long:
                if not any(search(haystack) for haystack in haystacks):
                    return False
        return True

    def to_mongo(self) -> dict[str, Any]:
        """The filter as a MongoDB query document (``{}`` when it matches everything); a new dict each
        call. Standard operators only; its approximations are listed in the module docstring."""
        clauses: list[dict[str, Any]] = []
        if self._start is not None or self._end is not None:
            bounds: dict[str, Any] = {}
            if self._start is not None:
                bounds["$gte"] = self._start
            if self._end is not None:
                bounds["$lte"] = self._end
            clauses.append({"timestamp": bounds})
        clauses.extend({name: {"$eq": value}} for name, value in self._equals)
        clauses.extend(term.to_mongo() for term in self._fields)
        for word in self._words:
            pattern = _literal_pattern(word)
            clauses.append({"$or": [{name: {"$regex": pattern, "$options": "i"}} for name in WORD_FIELDS]})
        if not clauses:
            return {}
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _long_word(word: str) -> Callable[[str], object]:
    """A test of whether ``word`` (longer than ``SHORT_WORD``) occurs in a text, linear in the text's length
    whatever either holds.

    CPython's ``in`` (``fastsearch``) is a Horspool-like scan that, for a needle of 6 to 99 characters in
    a haystack under 30,000, may compare up to the needle's length at every position: O(n·m). Rows are
    the attackers' own text, so ``aaaa…`` against a search word ``aaa…ab`` made that 13 ms a row for ten
    99-character words — a few such rows a second and one viewer's search stalls every stream of the
    process. An escaped literal pattern has no backtracking, and CPython's ``re`` scans for a literal
    prefix with a KMP overlap table: O(n + m). Short words keep ``in`` (at most ``SHORT_WORD``
    comparisons per character, and faster on ordinary text).
    """
    return re.compile(re.escape(word)).search


def parse_search(
    text: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    max_length: int = MAX_SEARCH_LENGTH,
    max_terms: int = MAX_SEARCH_TERMS,
) -> LogFilter:
    """Compile a search (and optional inclusive time bounds, from ``parse_time``) into a ``LogFilter``.

    Raises ``SearchError`` for text over ``max_length`` characters, over ``max_terms`` distinct terms,
    or not valid Unicode. Empty or blank text matches every row (within the bounds).
    """
    if len(text) > max_length:
        raise SearchError(f"search is longer than {max_length} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SearchError("search is not valid text") from None
    equals: set[tuple[str, str]] = set()
    fields: dict[tuple[str, str], _FieldTerm] = {}
    words: set[str] = set()
    for token in _tokens(text):
        if ":" in token:
            key, value = token.split(":", 1)
            column = CORE_FIELDS.get(key)
            if column is not None:
                equals.add((column, value))
                continue
            safe = "".join(c for c in key if c in _KEY_CHARS)
            if safe and (safe, value) not in fields:
                fields[(safe, value)] = _FieldTerm.of(safe, value)
        elif token:
            words.add(token.casefold())
        if len(equals) + len(fields) + len(words) > max_terms:
            raise SearchError(f"search has more than {max_terms} terms")
    # A word inside another word is implied by it: keep only the longest (longest first, so every
    # word that could contain this one is already kept).
    kept: list[str] = []
    for word in sorted(words, key=lambda w: (-len(w), w)):
        if not any(word in longer for longer in kept):
            kept.append(word)
    return LogFilter(
        tuple(sorted(equals)),
        tuple(fields[k] for k in sorted(fields)),
        tuple(kept),
        _utc_bound(start),
        _utc_bound(end),
    )
