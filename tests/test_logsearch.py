"""DECNET's log search language (protocol §15): the documented rules by example, then properties.

The main property checks ``LogFilter.matches`` against ``reference_matches`` below: a plain reading of the
rules in straightforward loops, sharing no code with the module, over random rows (every shape the
``logs`` collection can hold, and some it should not) and random search texts (every kind of token,
quoted, unbalanced, unicode, derived from the row so that both answers come up). The others: ``matches``
never raises; equal keys mean equal filters; the work on a 64 KB row with a search at the bound is
linear; and ``to_mongo`` selects in a real MongoDB-wire server what ``matches`` selects in memory.
"""

from __future__ import annotations

import json
import math
import random
import shlex
import string
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import bson
import pytest
from costs import FLOOR_SECONDS, LINEAR_AT_MOST, SCALE, assert_linear, best_costs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lurestream import logsearch
from lurestream.logsearch import (
    MAX_FIELDS_TEXT,
    MAX_SEARCH_LENGTH,
    MAX_SEARCH_TERMS,
    LogFilter,
    LogRow,
    SearchError,
    parse_search,
    parse_time,
)

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# --------------------------------------------------------------------------------------------- reference

REF_CORE = {
    "decky": "decky",
    "service": "service",
    "event": "event_type",
    "attacker": "attacker_ip",
    "attacker-ip": "attacker_ip",
    "attacker_ip": "attacker_ip",
}
REF_TEXT_FIELDS = ["raw_line", "decky", "service", "attacker_ip"]
REF_KEY_CHARACTERS = string.ascii_letters + string.digits + "_"


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def reference_fields(row: dict[str, Any]) -> dict[str, Any] | None:
    value = row.get("fields")
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and len(value) <= 64 * 1024:
        try:
            loaded = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return None
        if isinstance(loaded, dict):
            return loaded
    return None


def reference_json_text(value: Any) -> str | None:
    """What a stored scalar "is" as JSON text; None for what has no such text here."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return json.dumps(value)
    return None


def reference_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64 or not text.isascii() or text == "":
            return None
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed
    return None


def reference_matches(
    search: str, row: dict[str, Any], start: datetime | None = None, end: datetime | None = None
) -> bool:
    if start is not None or end is not None:
        when = reference_time(row.get("timestamp"))
        if when is None:
            return False
        if start is not None and when < start:
            return False
        if end is not None and when > end:
            return False
    try:
        tokens = shlex.split(search)
    except ValueError:
        tokens = search.split()
    for token in tokens:
        if ":" in token:
            position = token.index(":")
            key = token[:position]
            value = token[position + 1 :]
            if key in REF_CORE:
                stored = row.get(REF_CORE[key])
                if not isinstance(stored, str) or stored != value:
                    return False
                continue
            clean = ""
            for character in key:
                if character in REF_KEY_CHARACTERS:
                    clean += character
            if clean == "":
                continue
            fields = reference_fields(row)
            if fields is None or clean not in fields:
                return False
            if reference_json_text(fields[clean]) != value:
                return False
        else:
            if token == "":
                continue
            found = False
            for name in REF_TEXT_FIELDS:
                stored = row.get(name)
                if isinstance(stored, str) and token.casefold() in stored.casefold():
                    found = True
            if not found:
                return False
    return True


# --------------------------------------------------------------------------------------------- strategies

POOL = [
    "a", "A", "ab", "ssh", "SSH", "sshd", "22", "022", "-5", "1.5", "1e+20", "true", "false", "null",
    "x y", "é", "É", "ß", "SS", "İ", "ﬁ", "Σ", ":", "'", '"', "\\", " ", "\t", "\u00a0", "%", "_", "-",
    ".", "\x00", "web-1", "10.0.0.1", "{", "}", "#", "😀", "*", "(", "$", "22.0", "ẞ", "Straße", "STRASSE",
]  # fmt: skip
KEYS = ["port", "user", "Port", "decky", "event_type", "p_1", "a", "0", "ok"]
ODD_KEYS = ["p.o-r!t", "-", "", "Ä", "port!", "Decky", "EVENT", "attacker.ip", "event_type"]
CORE_KEYS = list(REF_CORE)

pieces = st.lists(st.sampled_from(POOL), max_size=4).map("".join)
texts = st.one_of(pieces, st.text(max_size=8))
scalars = st.one_of(
    texts,
    st.integers(-1000, 100_000),
    st.sampled_from([2**70, -(2**63), 0, 22]),
    st.floats(),
    st.sampled_from([22.0, 22.5, 1e20, -0.0, math.nan, math.inf]),
    st.booleans(),
    st.none(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=2))
field_dicts = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)


@st.composite
def field_texts(draw: st.DrawFn) -> str:
    """``fields`` as JSON text, spelled as different writers spell it."""
    value = draw(field_dicts)
    compact = draw(st.booleans())
    return json.dumps(value, ensure_ascii=draw(st.booleans()), separators=(",", ":") if compact else (", ", ": "))


fields_values = st.one_of(
    field_dicts,
    field_texts(),
    st.sampled_from(['{"port": NaN}', '{"port": 1e999}', "[1, 2]", "22", "null", "{", '{"port": 22,}', "", "x"]),
    st.text(max_size=12),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.binary(max_size=4),
)
junk = st.one_of(st.none(), st.integers(), st.floats(), st.lists(texts, max_size=2), st.dictionaries(texts, texts))
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    lambda d: timezone(timedelta(minutes=round(d.total_seconds() / 60)))
)
moments = st.datetimes(min_value=datetime(2024, 4, 30), max_value=datetime(2024, 5, 3))
aware_moments = st.builds(lambda m, tz: m.replace(tzinfo=tz), moments, offsets)
timestamps = st.one_of(
    aware_moments,
    moments,
    aware_moments.map(lambda m: m.isoformat()),
    aware_moments.map(lambda m: m.astimezone(UTC).isoformat().replace("+00:00", "Z")),
    aware_moments.map(lambda m: m.astimezone(UTC).isoformat().replace("+00:00", "z")),
    moments.map(lambda m: m.isoformat(sep=" ")),
    st.sampled_from(["", "yesterday", "2024-05-01", "2024-13-01T00:00:00", "２０２４-05-01", "1714564800"]),
    st.integers(),
    st.dates(),
)
rows = st.fixed_dictionaries(
    {"_id": st.integers(1, 10**9)},
    optional={
        "timestamp": timestamps,
        "decky": st.one_of(texts, texts, junk),
        "service": st.one_of(texts, texts, junk),
        "event_type": st.one_of(texts, texts, junk),
        "attacker_ip": st.one_of(texts, texts, junk),
        "raw_line": st.one_of(texts, st.text(max_size=40), junk),
        "fields": st.one_of(field_dicts, field_texts(), fields_values),
    },
)
# Rows as the collector writes them: every column a string, `fields` a non-empty object or its text.
full_field_dicts = st.dictionaries(st.sampled_from(KEYS), scalars, min_size=1, max_size=4)
full_rows = st.fixed_dictionaries(
    {
        "_id": st.integers(1, 10**9),
        "timestamp": timestamps,
        **{name: texts for name in ("decky", "service", "event_type", "attacker_ip", "raw_line")},
        "fields": st.one_of(
            full_field_dicts,
            full_field_dicts.map(json.dumps),
            full_field_dicts.map(lambda d: json.dumps(d, ensure_ascii=False, separators=(",", ":"))),
        ),
    }
)


def _flip_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))


def _likely(draw: st.DrawFn) -> bool:
    """True three times in four: most tokens are taken from the row, so that matches come up."""
    return draw(st.integers(0, 3)) > 0


def _matching_terms(row: dict[str, Any]) -> list[str]:
    """Every ``key:value`` term that ``row`` seems to satisfy, its ``fields`` text read leniently (NaN
    accepted), so that the strict reading is tested too."""
    terms = [f"{key}:{row[column]}" for key, column in REF_CORE.items() if isinstance(row.get(column), str)]
    fields = row.get("fields")
    if isinstance(fields, str):
        try:
            fields = json.loads(fields)
        except ValueError:
            fields = None
    for key, value in (fields if isinstance(fields, dict) else {}).items():
        text = reference_json_text(value)
        if isinstance(key, str) and key and all(c in REF_KEY_CHARACTERS for c in key) and text is not None:
            terms.append(f"{key}:{text}")
    return terms


@st.composite
def tokens_for(draw: st.DrawFn, row: dict[str, Any], friendly: bool = False) -> str:
    """One token of any kind; mostly taken from ``row`` so that matches come up as often as misses
    (``friendly``: only tokens taken from the row, as a search that should match would be)."""
    kinds = ["term", "word"] if friendly else ["term", "term", "word", "word", "core", "fields", "junk"]
    kind = draw(st.sampled_from(kinds))
    terms = _matching_terms(row)
    in_fields = [t for t in terms if t.partition(":")[0] not in REF_CORE]
    if draw(st.booleans()) and in_fields:  # rows have six core fields; give `fields` an equal chance
        terms = in_fields
    if kind == "term" and terms:
        key, _, value = draw(st.sampled_from(terms)).partition(":")
        if key not in REF_CORE:  # the same key spelled with characters that are dropped
            key = draw(st.sampled_from([key, key, key + "!", "-" + key, key[:1] + "." + key[1:], key + "é", "Ü" + key]))
        elif draw(st.integers(0, 4)) == 0:  # a core key in another case is a `fields` key
            key = _flip_case(draw, key)
        if draw(st.integers(0, 4)) == 0:  # a near miss
            value = draw(st.sampled_from([_flip_case(draw, value), value + ".0", "0" + value, value + " "]))
        return f"{key}:{value}"
    if kind == "word":
        sources = [row[n] for n in REF_TEXT_FIELDS if isinstance(row.get(n), str) and row[n]]
        if sources and (friendly or _likely(draw)):
            source = draw(st.sampled_from(sources))
            begin = draw(st.integers(0, len(source) - 1))
            stop = draw(st.integers(begin + 1, len(source)))
            return _flip_case(draw, source[begin:stop])
        return draw(texts)
    if kind == "core":
        return draw(st.sampled_from(CORE_KEYS)) + ":" + draw(texts)
    if kind == "fields":
        value = draw(st.one_of(texts, scalars.map(lambda v: reference_json_text(v) or "")))
        return draw(st.sampled_from(KEYS + ODD_KEYS)) + ":" + value
    return draw(st.text(max_size=6))


@st.composite
def searches_for(draw: st.DrawFn, row: dict[str, Any]) -> str:
    """A search text: tokens quoted every way (or not), some quotes left open, odd separators; half of
    them made only of tokens taken from the row, quoted the shell's way, so that they mostly match."""
    friendly = draw(st.booleans())
    parts = []
    for token in draw(st.lists(tokens_for(row, friendly), min_size=int(friendly), max_size=4)):
        styles = ["shlex"] if friendly else ["raw", "raw", "raw", "shlex", "shlex", "double", "single", "open"]
        style = draw(st.sampled_from(styles))
        if style == "shlex":
            token = shlex.quote(token)
        elif style == "double":
            token = '"' + token + '"'
        elif style == "single":
            token = "'" + token + "'"
        elif style == "open":
            where = draw(st.integers(0, len(token)))
            token = token[:where] + draw(st.sampled_from(['"', "'", "\\"])) + token[where:]
        parts.append(token)
    separators = st.sampled_from([" "] if friendly else [" "] * 6 + ["  ", "\t", "\n", "\u00a0", " \u2003 "])
    return "".join(part + draw(separators) for part in parts)


@st.composite
def bounds_for(draw: st.DrawFn, row: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """Optional start and end, often just around the row's own timestamp (or exactly on it)."""
    when = reference_time(row.get("timestamp"))
    shifts = st.sampled_from([timedelta(0), timedelta(microseconds=1), -timedelta(microseconds=1)]) | st.timedeltas(
        min_value=timedelta(hours=-2), max_value=timedelta(hours=2)
    )
    near = st.none() if when is None else shifts.map(lambda shift: when + shift)
    one = st.one_of(st.none(), aware_moments, near, near)
    start, end = draw(one), draw(one)
    if start is not None and when is not None and start > when and _likely(draw):
        start = when - (start - when)
    if end is not None and when is not None and end < when and _likely(draw):
        end = when + (when - end)
    return start, end


bounds = st.one_of(st.none(), aware_moments)


def _parse(text: str, start: datetime | None = None, end: datetime | None = None) -> LogFilter | None:
    """The filter, or None when the text is over a bound (the caller then skips the example)."""
    try:
        return parse_search(text, start=start, end=end)
    except SearchError:
        return None


# --------------------------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abAB", max_size=200),
    word=st.text(alphabet="abAB", min_size=1, max_size=40),
    at=st.integers(min_value=0, max_value=200),
)
def test_a_long_word_is_found_exactly_where_a_substring_is(text: str, word: str, at: int) -> None:
    # Words over SHORT_WORD characters are found by another algorithm than ``in``: the same answer on
    # periodic text (where the two differ most), with the word planted or not.
    for row_text in (text, text[:at] + word + text[at:]):
        compiled = parse_search(shlex.quote(word))
        assert compiled.matches({"raw_line": row_text}) is (word.casefold() in row_text.casefold())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), row=st.one_of(rows, full_rows))
def test_matches_agrees_with_the_reference(data: st.DataObject, row: dict[str, Any]) -> None:
    text = data.draw(searches_for(row), label="search")
    start, end = data.draw(bounds_for(row), label="bounds")
    compiled = parse_search(text, start=start, end=end)  # a few short tokens: never over a bound
    expected = reference_matches(text, row, start, end)
    assert compiled.matches(row) is expected
    assert compiled.matches(LogRow(row)) is expected


@settings(max_examples=200, deadline=None)
@given(data=st.data(), row=rows)
def test_a_row_prepared_once_serves_every_filter(data: st.DataObject, row: dict[str, Any]) -> None:
    filters = [f for f in (_parse(data.draw(searches_for(row))) for _ in range(4)) if f is not None]
    prepared = LogRow(row)
    assert [f.matches(prepared) for f in filters] == [f.matches(row) for f in filters]


anything = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), st.binary(max_size=4),
        st.datetimes(), aware_moments, st.dates(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12,
)  # fmt: skip
row_names = st.sampled_from(["_id", "timestamp", "decky", "service", "event_type", "attacker_ip", "raw_line", "fields"])
any_rows = st.one_of(
    st.dictionaries(st.one_of(row_names, st.text(max_size=3)), anything, max_size=8),
    st.dictionaries(row_names, st.one_of(anything, anything.map(lambda v: json.dumps(v, default=str))), max_size=8),
    anything,
)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), row=any_rows, start=bounds, end=bounds)
def test_matches_never_raises_on_any_row_shape(data: st.DataObject, row: Any, start: Any, end: Any) -> None:
    shape = row if isinstance(row, dict) else {}
    compiled = _parse(data.draw(searches_for(shape)), start, end)
    if compiled is not None:
        assert compiled.matches(row) in (True, False)
        assert compiled.matches(LogRow(row)) in (True, False)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), row=rows)
def test_the_same_terms_any_order_and_case_give_one_key(data: st.DataObject, row: dict[str, Any]) -> None:
    terms = data.draw(st.lists(tokens_for(row), max_size=6))
    again = list(terms) + data.draw(st.lists(st.sampled_from(terms), max_size=3)) if terms else []
    random.Random(data.draw(st.integers())).shuffle(again)
    again = [t if ":" in t or t.swapcase().casefold() != t.casefold() else t.swapcase() for t in again]
    first = _parse(" ".join(shlex.quote(t) for t in terms), T0)
    second = _parse(" ".join(shlex.quote(t) for t in again), T0.astimezone(timezone(timedelta(hours=5))))
    if first is None or second is None:
        return
    assert first.key == second.key and first == second and hash(first) == hash(second)
    assert first.to_mongo() == second.to_mongo()
    assert first.matches(row) == second.matches(row)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), row=rows, start=bounds, end=bounds)
def test_to_mongo_is_always_a_valid_bson_query(data: st.DataObject, row: Any, start: Any, end: Any) -> None:
    compiled = _parse(data.draw(searches_for(row)), start, end)
    if compiled is not None:
        bson.encode(compiled.to_mongo())  # raises on what PyMongo could not send (a NUL in a pattern, a huge int)


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    stored=st.dictionaries(st.sampled_from(KEYS), scalars, min_size=1, max_size=5),
    form=st.sampled_from(["object", "json", "compact"]),
)
def test_fields_terms_agree_with_the_reference(data: st.DataObject, stored: dict[str, Any], form: str) -> None:
    """``fields`` alone, as an object or as text (NaN included: strict JSON refuses the whole text)."""
    fields: Any = stored
    if form != "object":
        fields = json.dumps(stored, ensure_ascii=form == "json", separators=(",", ":") if form == "compact" else None)
    row = {"fields": fields}
    terms = []
    for key, value in stored.items():
        text = reference_json_text(value) if not (isinstance(value, float) and math.isnan(value)) else "NaN"
        if text is None:
            text = json.dumps(value)  # Infinity
        near = data.draw(st.sampled_from([text, text, text, text + ".0", "0" + text, text.upper(), text + " "]))
        terms.append(f"{key}:{near}")
    chosen = data.draw(st.lists(st.sampled_from(terms), min_size=1, max_size=3))
    search = " ".join(shlex.quote(t) for t in chosen)
    assert parse_search(search).matches(row) is reference_matches(search, row)


words_without_quotes = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\"'\\:"), min_size=1, max_size=6
).filter(lambda w: w.split() == [w])


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(words_without_quotes, min_size=1, max_size=5),
    spaces=st.lists(st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "\u3000", " \x0b"]), min_size=5, max_size=5),
    quote=st.sampled_from(['"', "'", "\\"]),
    at=st.integers(0, 40),
)
def test_unbalanced_quotes_split_on_any_whitespace(words: list[str], spaces: list[str], quote: str, at: int) -> None:
    """An unbalanced search is split by ``str.split()``: every Unicode space separates, quotes stay."""
    text = "".join(w + s for w, s in zip(words, spaces[: len(words)], strict=True))
    if quote == "\\":  # a backslash is a ValueError only as the last character (nothing to escape)
        at = len(text)
    text = text[:at] + quote + text[at:]
    compiled = parse_search(text)
    assert compiled.matches({"raw_line": " ".join(text.split())})  # each piece is there, quote and all
    for raw in (text, " ".join(words), text.replace(quote, ""), "\n".join(reversed(text.split()))):
        assert compiled.matches({"raw_line": raw}) is reference_matches(text, {"raw_line": raw}), raw


tricky_case = st.text(alphabet="aAsSßẞkKKıIİiσςΣﬁFfΩΩωǅǄǆ ", max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    stored=tricky_case,
    change=st.sampled_from([str.upper, str.lower, str.swapcase, str.casefold, str.title]),
)
def test_words_match_whatever_the_case(data: st.DataObject, stored: str, change: Any) -> None:
    """Case-insensitive means ``casefold``: ß is ss, ﬁ is fi, the Kelvin sign is k, final sigma is sigma."""
    begin = data.draw(st.integers(0, len(stored)))
    word = change(stored[begin : data.draw(st.integers(begin, len(stored)))]).strip()
    other = data.draw(tricky_case)
    for search in (shlex.quote(word), shlex.quote(other)):
        row = {"raw_line": stored, "decky": None}
        assert parse_search(search).matches(row) is reference_matches(search, row), search


# --------------------------------------------------------------------------------------------- the rules

ROW: dict[str, Any] = {
    "_id": 7,
    "timestamp": T0,
    "decky": "web-1",
    "service": "SSH",
    "event_type": "login_attempt",
    "attacker_ip": "10.0.0.5",
    "raw_line": "Failed password for Root from 10.0.0.5 port 50022 ssh2: 100% (a_b)",
    "fields": {"port": 22, "user": "root", "ok": False, "note": None, "ratio": 22.5, "Mixed": "Case",
               "nested": {"port": 22}, "list": ["22"], "weird-key": "x", "banner": "x y"},
}  # fmt: skip


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        # empty, blank
        ("", True),
        ("  \t\n ", True),
        # core keys and their fields; equality is exact
        ("decky:web-1", True),
        ("decky:web", False),
        ("decky:WEB-1", False),
        ("service:SSH", True),
        ("service:ssh", False),
        ("event:login_attempt", True),
        ("event_type:login_attempt", False),  # not a core key: fields.event_type, absent
        ("attacker:10.0.0.5", True),
        ("attacker-ip:10.0.0.5", True),
        ("attacker_ip:10.0.0.5", True),
        ("attacker_ip:10.0.0", False),
        ("Decky:web-1", False),  # keys are case-sensitive: fields.Decky, absent
        ("decky:", False),  # the empty string, not "any"
        # fields
        ("port:22", True),
        ("port:022", False),
        ("port:22.0", False),
        ("user:root", True),
        ("user:Root", False),
        ("ok:false", True),
        ("ok:False", False),
        ("note:null", True),
        ("absent:null", False),
        ("ratio:22.5", True),
        ("Mixed:Case", True),
        ("mixed:Case", False),
        ("nested:22", False),  # no paths; an object is never equal to a value
        ("list:22", False),
        ("weird-key:x", False),  # the key is kept to [A-Za-z0-9_]: fields.weirdkey, absent
        ("weirdkey:x", False),
        ("pΩort:22", True),  # ASCII only: the Ω is dropped, the key is port
        ("Ä:nothing", True),  # nothing left of the key: the token is dropped
        ("banner:x y", False),  # split by the shell rules: banner:x and the word y
        ('banner:"x y"', True),
        ('"banner:x y"', True),
        ("user:root:x", False),  # split on the first ':' only: value "root:x"
        # a key left empty drops the token
        (":nothing", True),
        ("-.!:nothing", True),
        ("::", True),
        # bare words: case-insensitive substrings of raw_line, decky, service, attacker_ip
        ("password", True),
        ("PASSWORD", True),
        ("root", True),
        ("WEB", True),
        ("ssh", True),
        ("10.0.0", True),
        ("login_attempt", False),  # event_type is not searched by words
        ("22", True),
        ("100%", True),
        ("a_b", True),
        ("a%b", False),  # % and _ are literal, not LIKE wildcards
        ('"for root"', True),
        ("'port 50022'", True),
        ('""', True),  # an empty word is dropped
        ("nomatch", False),
        # every term must match
        ("decky:web-1 port:22 password", True),
        ("decky:web-1 port:23 password", False),
        ("decky:web-1 decky:web-2", False),
        # unbalanced quotes: plain whitespace split, quotes kept
        ('"password for', False),  # the word '"password' is not there
        ('password "for', False),
        ("decky:web-1 'root", False),
        ("root 'ssh2:", False),  # ssh2: is a token with a ':' → fields.ssh2
    ],
)
def test_rule(search: str, expected: bool) -> None:
    assert parse_search(search).matches(ROW) is expected
    assert reference_matches(search, ROW) is expected


def test_unbalanced_quotes_fall_back_to_whitespace() -> None:
    row = dict(ROW, raw_line='said "password for x')
    assert parse_search('"password for').matches(row)
    assert parse_search("x\\").matches(row) is False  # a trailing backslash is a ValueError too: word 'x\'
    assert parse_search("for x\\").matches(dict(row, raw_line="for x\\"))


def test_shell_whitespace_is_ascii_only_but_the_fallback_splits_on_any() -> None:
    row = dict(ROW, raw_line='alpha beta "')
    assert parse_search("alpha\u00a0beta").matches(row) is False  # one shlex word, with a NBSP in it
    assert parse_search('alpha\u00a0beta "').matches(row)  # unbalanced: str.split() splits on the NBSP


def test_unicode_words_fold_case_fully() -> None:
    row = dict(ROW, raw_line="Straße ΣΊΣΥΦΟΣ ﬁle")
    for word in ("STRASSE", "strasse", "straße", "σίσυφοσ", "FILE", "ﬁle"):
        assert parse_search(word).matches(row), word


@pytest.mark.parametrize(
    ("stored", "search", "expected"),
    [
        ({"port": "22"}, "port:22", True),
        ({"port": 22}, "port:22", True),
        ({"port": -5}, "port:-5", True),
        ({"port": 0}, "port:-0", False),
        ({"port": 2**70}, f"port:{2**70}", True),
        ({"port": 22.0}, "port:22.0", True),
        ({"port": 22.0}, "port:22", False),
        ({"port": 1e20}, "port:1e+20", True),
        ({"port": 1e20}, "port:100000000000000000000", False),
        ({"port": -0.0}, "port:-0.0", True),
        ({"port": float("nan")}, "port:NaN", False),
        ({"port": float("inf")}, "port:Infinity", False),
        ({"ok": True}, "ok:true", True),
        ({"ok": True}, "ok:1", False),
        ({"ok": 1}, "ok:true", False),
        ({"n": None}, "n:null", True),
        ({"n": None}, "n:", False),
        ({}, "n:null", False),
        ({"s": ""}, "s:", True),
        ({"a": [1]}, "a:[1]", False),
        ({"a": {"b": 1}}, 'a:{"b":1}', False),
        ({"d": date(2024, 5, 1)}, "d:2024-05-01", False),
        ({"b": b"x"}, "b:x", False),
    ],
)
def test_fields_values_match_their_json_text(stored: dict[str, Any], search: str, expected: bool) -> None:
    compiled = parse_search(search)
    assert compiled.matches({"fields": stored}) is expected
    if all(isinstance(v, (str, int, float, bool, type(None), list, dict)) for v in stored.values()):
        as_text = json.dumps(stored)
        if "NaN" not in as_text and "Infinity" not in as_text:
            assert compiled.matches({"fields": as_text}) is expected, as_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"port": 22}', True),
        ('{"port":22,"user":"root"}', True),
        ('{"port": 22.50}', False),  # parsed: the float 22.5, whose text is "22.5"
        ('{"port": "22"}', True),
        ('{"port": 22, "port": 23}', False),  # the last duplicate wins
        ('{"port": 23, "port": 22}', True),
        ('{"port": 22, "x": NaN}', False),  # NaN is not JSON: the whole text is unparseable
        ('{"port": 22, "x": 1e999}', True),  # a number too big for a float is still JSON (infinite)
        ('{"port": 22', False),
        ("[22]", False),
        ('"{\\"port\\": 22}"', False),  # a JSON string, not an object
        ("", False),
        ("port:22", False),
        ('{"port": 22, "big": ' + "9" * 4300 + "}", True),
        ('{"port": 22, "big": -' + "9" * 4300 + "}", True),
        ('{"port": 22, "big": ' + "9" * 4301 + "}", False),  # over Python's digit bound: unparseable
        ('{"port": 22, "deep": ' + "[" * 100_000 + "]" * 100_000 + "}", False),  # over 64 Ki: not parsed
        ('{"port": 22, "deep": ' + "[" * 10_000 + "]" * 10_000 + "}", False),  # too deep to parse
    ],
)
def test_fields_as_json_text(text: str, expected: bool) -> None:
    assert parse_search("port:22").matches({"fields": text}) is expected


def test_fields_text_is_parsed_only_up_to_the_bound() -> None:
    padding = MAX_FIELDS_TEXT - len('{"port": 22, "pad": ""}')
    at_bound = '{"port": 22, "pad": "' + "x" * padding + '"}'
    assert len(at_bound) == MAX_FIELDS_TEXT
    assert parse_search("port:22").matches({"fields": at_bound})
    over = at_bound[:-2] + 'x"}'
    assert parse_search("port:22").matches({"fields": over}) is False
    assert parse_search("password").matches({"fields": over, "raw_line": "password"})  # other terms still work


def test_fields_text_is_parsed_once_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = logsearch._load_fields

    def counting(value: Any) -> Any:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(logsearch, "_load_fields", counting)
    row = {"fields": '{"port": 22, "user": "root", "ok": true}', "raw_line": "x"}
    assert parse_search("port:22 user:root ok:true x").matches(row)
    assert len(calls) == 1
    calls.clear()
    prepared = LogRow(row)
    filters = [parse_search(s) for s in ("port:22", "user:root", "ok:true port:22", "x", "port:23")]
    assert [f.matches(prepared) for f in filters] == [True, True, True, True, False]
    assert len(calls) == 1
    calls.clear()
    assert parse_search("decky:x port:22").matches(row) is False  # decided before fields are needed
    assert parse_search("x").matches(row) and calls == []


def test_fields_of_other_shapes_match_no_fields_term() -> None:
    compiled = parse_search("port:22")
    for fields in (None, 22, "22", ["port", 22], b'{"port": 22}', {"port": [22]}, {"Port": 22}):
        assert compiled.matches({"fields": fields}) is False, fields
    assert compiled.matches({}) is False
    assert parse_search(":22 -:x").matches({}) is True  # dropped keys need no fields at all


def test_core_fields_must_be_strings() -> None:
    assert parse_search("decky:1").matches({"decky": 1}) is False
    assert parse_search("decky:None").matches({"decky": None}) is False
    assert parse_search("decky:").matches({}) is False
    assert parse_search("decky:").matches({"decky": ""}) is True
    assert parse_search("a").matches({"raw_line": ["a"], "decky": {"a": 1}, "service": 1}) is False


# --------------------------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T12:00:00z", T0),
        ("2024-05-01T12:00:00+00:00", T0),
        ("2024-05-01T14:00:00+02:00", T0),
        ("2024-05-01T12:00:00", T0),
        ("2024-05-01 12:00:00", T0),
        ("2024-05-01T12:00:00.000Z", T0),
        (" 2024-05-01T12:00Z ", T0),
        ("20240501T120000Z", T0),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    ["", " ", "now", "yesterday", "1714564800", "2024-13-01", "2024-05-01T25:00:00", "２０２４-05-01",
     "2024-05-01T12:00:00+99:00", "0001-01-01T00:00:00+01:00", "2024-05-01T12:00:00Z" + " " * 60 + "x",
     "2024-05-01T12:00:00ZZ", "x" * 10_000],
)  # fmt: skip
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(SearchError) as caught:
        parse_time(text)
    assert "ISO-8601" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (T0, True),
        (T0 - timedelta(microseconds=1), False),
        (T0 + timedelta(hours=1), True),
        (T0 + timedelta(hours=1, microseconds=1), False),
        (T0.astimezone(timezone(timedelta(hours=-7))), True),
        (T0.replace(tzinfo=None), True),  # naive: UTC
        (T0.replace(tzinfo=None) + timedelta(hours=2), False),
        ("2024-05-01T12:30:00Z", True),
        ("2024-05-01T14:30:00+02:00", True),
        ("2024-05-01T12:30:00", True),
        ("2024-05-01T11:30:00", False),
        ("not a time", False),
        ("", False),
        (1714564800, False),  # an epoch number is not a timestamp we read
        (date(2024, 5, 1), False),
        (None, False),
        (datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))), False),
        (datetime.min.replace(tzinfo=timezone(timedelta(hours=1))), False),
    ],
)
def test_time_bounds_are_inclusive(stamp: Any, expected: bool) -> None:
    compiled = parse_search("", start=T0, end=T0 + timedelta(hours=1))
    assert compiled.matches({"timestamp": stamp}) is expected
    assert compiled.matches({"timestamp": stamp, "raw_line": "x"}) is expected


def test_a_naive_timestamp_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "EST+5")  # a POSIX zone: no tz database needed
    time.tzset()
    try:
        compiled = parse_search("", start=T0, end=T0)
        assert compiled.matches({"timestamp": T0.replace(tzinfo=None)})
        assert compiled.matches({"timestamp": "2024-05-01T12:00:00"})
        assert parse_time("2024-05-01T12:00:00") == T0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_time_bounds_alone_and_without_a_timestamp() -> None:
    assert parse_search("", start=T0).matches({"timestamp": T0 + timedelta(days=400)})
    assert parse_search("", end=T0).matches({"timestamp": T0 - timedelta(days=400)})
    assert parse_search("", start=T0).matches({}) is False
    assert parse_search("").matches({"timestamp": "garbage"})  # no bound: the timestamp is not looked at
    assert parse_search("", start=T0 + timedelta(1), end=T0).matches({"timestamp": T0}) is False


def test_naive_bounds_are_utc() -> None:
    naive = parse_search("", start=T0.replace(tzinfo=None))
    assert naive.start == T0 and naive.key == parse_search("", start=T0).key
    with pytest.raises(SearchError):
        parse_search("", start=datetime.min.replace(tzinfo=timezone(timedelta(hours=1))))


# --------------------------------------------------------------------------------------------- limits, key


def test_search_length_is_bounded() -> None:
    assert parse_search("a" * MAX_SEARCH_LENGTH).matches({"raw_line": "a" * MAX_SEARCH_LENGTH})
    with pytest.raises(SearchError, match="longer than 1024 characters"):
        parse_search("a" * (MAX_SEARCH_LENGTH + 1))
    assert parse_search("a" * 2000, max_length=2000).matches({"raw_line": "a" * 2000})
    with pytest.raises(SearchError, match="longer than 10 characters"):
        parse_search("a" * 11, max_length=10)


def test_terms_are_bounded_after_dropping_repeats() -> None:
    distinct = [f"w{i:02d}" for i in range(MAX_SEARCH_TERMS)]
    assert parse_search(" ".join(distinct)).matches({"raw_line": "".join(distinct)})
    assert parse_search(" ".join(distinct * 3 + [w.upper() for w in distinct] + ['""', ":x"] * 5))
    with pytest.raises(SearchError, match="more than 32 terms"):
        parse_search(" ".join(distinct + ["port:1"]))
    with pytest.raises(SearchError, match="more than 2 terms"):
        parse_search("a b c", max_terms=2)


def test_text_that_is_not_unicode_is_refused() -> None:
    with pytest.raises(SearchError, match="not valid text"):
        parse_search("a \ud800")


def test_key_is_canonical() -> None:
    one = parse_search("decky:web-1 port:22 SSH attacker:1.2.3.4", start=T0)
    two = parse_search("'attacker-ip:1.2.3.4'  ssh port:22 decky:web-1 sshd:x ssh", start=T0)
    assert one != two  # sshd:x is a fields term
    three = parse_search("ssh port:22 decky:web-1 attacker_ip:1.2.3.4 Ssh", start=T0.astimezone(timezone.utc))
    assert one == three and one.key == three.key and {one: 1}[three] == 1
    assert parse_search("ssh sshd SSHD").key == parse_search("sshd").key  # a word implied by another is dropped
    assert parse_search("ssh sshd").matches({"raw_line": "sshd"})
    assert parse_search("ssh", start=T0).key != parse_search("ssh", end=T0).key
    assert parse_search("port:22").key != parse_search("port:'22 '").key
    assert parse_search("").matches_everything and parse_search(' "" :x ').matches_everything
    assert not parse_search("", end=T0).matches_everything
    assert "LogFilter(" in repr(one)


# --------------------------------------------------------------------------------------------- cost

ROW_SIZE = 64 * 1024


def _matching(compiled: LogFilter, row_of: Callable[[int], dict[str, Any]]) -> Callable[[int], Callable[[], object]]:
    """``compiled.matches`` on the row ``row_of(n)``, a fresh dict each call (nothing prepared is reused)."""

    def at_size(size: int) -> Callable[[], object]:
        row = row_of(size)
        return lambda: compiled.matches(dict(row))

    return at_size


def test_a_search_at_the_bounds_on_a_64k_row_is_linear() -> None:
    # 32 distinct 31-character words, none inside another, each found only after a whole run of the
    # character it is made of: every word scans the whole row, the worst a substring test does.
    words = ["a" * 28 + "b" + f"{i:02d}" for i in range(MAX_SEARCH_TERMS)]
    search = " ".join(words)
    assert len(search) <= MAX_SEARCH_LENGTH
    tail = "".join(words)
    rows: dict[str, Callable[[int], dict[str, Any]]] = {
        "at the end": lambda n: {"raw_line": "A" * (n - len(tail)) + tail.upper(), "decky": "a" * 1000, "service": "a"},
        "in the last field": lambda n: {"raw_line": "a" * n, "decky": "a" * 1000, "service": "a", "attacker_ip": tail},
    }
    compiled = parse_search(search)
    for what, row_of in rows.items():
        assert compiled.matches(row_of(ROW_SIZE)) and compiled.matches(row_of(ROW_SIZE // SCALE)), what
        assert_linear(_matching(compiled, row_of), ROW_SIZE, what)


def test_a_row_just_under_30k_costs_no_more_than_a_longer_one() -> None:
    # CPython's ``in`` switches to a linear algorithm only for texts of 30,000 characters or more (or words
    # of 100 or more): below, a word ``aaa…b…a`` against ``aaaa…`` compares the word's length at every
    # position. Ten such words of 99 characters, each found only at the end, so each scans the whole row:
    # with a linear test the 29,999-character row costs about half the 64 KiB one; with ``in``, 4× more.
    words = ["a" * (97 - k) + "b" + "a" * (k + 1) for k in range(10)]
    search = " ".join(words)
    assert len(search) <= MAX_SEARCH_LENGTH and len(set(words)) == len(words)
    tail = " " + " ".join(words)
    compiled = parse_search(search)
    short_row, long_row = ({"raw_line": "a" * (size - len(tail)) + tail} for size in (29_999, ROW_SIZE))
    assert compiled.matches(short_row) and compiled.matches(long_row)
    short, long = best_costs(lambda: compiled.matches(dict(short_row)), lambda: compiled.matches(dict(long_row)), 7)
    assert short < 1.5 * long, (short, long)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.lists(st.sampled_from(POOL), min_size=1, max_size=6).map("".join), seed=st.integers())
def test_any_row_shape_at_64k_is_linear(unit: str, seed: int) -> None:
    rng = random.Random(seed)
    base = unit.replace(" ", "").replace(":", "") or "a"
    words = {base * rng.randint(1, 8) + str(i) for i in range(MAX_SEARCH_TERMS)}
    search = " ".join(shlex.quote(w) for w in words)[:MAX_SEARCH_LENGTH]
    compiled = _parse(search)
    if compiled is not None:

        def row_of(size: int) -> dict[str, Any]:
            raw = (unit * (size // len(unit) + 1))[:size]
            return {"raw_line": raw, "decky": raw[:100], "attacker_ip": raw[:40]}

        assert_linear(_matching(compiled, row_of), ROW_SIZE, repr(unit))


def test_hostile_fields_cost_little() -> None:
    """Fields text up to the bound costs linear work; past it, no more than at the bound (it is not read)."""
    compiled = parse_search("port:22 user:root")
    for unit in ("{", "9", "[", '{"a": "x'):
        row_of: Callable[[int], dict[str, Any]] = lambda n, unit=unit: {"fields": (unit * n)[:n]}  # noqa: E731
        assert not compiled.matches(row_of(MAX_FIELDS_TEXT)), unit
        assert_linear(_matching(compiled, row_of), MAX_FIELDS_TEXT, f"{unit!r} fields")
    for fields in ("[" * 1_000_000, '{"a": "' + "x" * 10_000_000 + '"}'):
        at_the_bound = fields[:MAX_FIELDS_TEXT]
        at, past = best_costs(
            lambda at_the_bound=at_the_bound: compiled.matches({"fields": at_the_bound}),
            lambda fields=fields: compiled.matches({"fields": fields}),
        )
        assert not compiled.matches({"fields": fields})
        assert past < LINEAR_AT_MOST * at + FLOOR_SECONDS, (fields[:10], at, past)


def test_parsing_a_search_at_the_bound_is_cheap() -> None:
    for unit in ('"', "\\", "a:", "é "):
        assert_linear(lambda n, unit=unit: lambda: _parse((unit * n)[:n]), MAX_SEARCH_LENGTH, unit)


# --------------------------------------------------------------------------------------------- to_mongo


def test_to_mongo_shapes() -> None:
    assert parse_search("").to_mongo() == {}
    assert parse_search("decky:web-1").to_mongo() == {"decky": {"$eq": "web-1"}}
    assert parse_search("", start=T0, end=T0).to_mongo() == {"timestamp": {"$gte": T0, "$lte": T0}}
    assert parse_search("", end=T0).to_mongo() == {"timestamp": {"$lte": T0}}
    word = parse_search("a.b*").to_mongo()
    assert word == {"$or": [{n: {"$regex": r"a\.b\*", "$options": "i"}} for n in REF_TEXT_FIELDS]}
    port = parse_search("port:22").to_mongo()
    assert port["$or"][0] == {"fields.port": {"$in": ["22", 22]}}
    assert parse_search("ok:true").to_mongo()["$or"][0] == {"fields.ok": {"$in": ["true", True]}}
    assert parse_search("n:null").to_mongo()["$or"][0] == {"fields.n": {"$in": ["null", None], "$exists": True}}
    assert parse_search("u:root").to_mongo()["$or"][0] == {"fields.u": {"$eq": "root"}}
    assert parse_search(f"p:{2**70}").to_mongo()["$or"][0] == {"fields.p": {"$eq": str(2**70)}}
    nul = parse_search('"a\x00b"').to_mongo()["$or"][0]["raw_line"]["$regex"]
    assert nul == "a\\x00b"  # MongoDB refuses a pattern holding a NUL byte
    one = parse_search("a decky:x")
    assert one.to_mongo() is not one.to_mongo()  # a fresh document: a caller may change it


def _log(n: int, minutes: int, decky: str, service: str, event: str, ip: str, raw: str, **more: Any) -> dict[str, Any]:
    return {"_id": n, "timestamp": T0 + timedelta(minutes=minutes), "decky": decky, "service": service,
            "event_type": event, "attacker_ip": ip, "raw_line": raw, **more}  # fmt: skip


CORPUS: list[dict[str, Any]] = [
    _log(1, 0, "web-1", "ssh", "login", "10.0.0.5", "Failed password for root (a.b*c)",
         fields={"port": 22, "user": "root"}),
    _log(2, 10, "web-2", "http", "request", "10.0.0.6", "GET /admin HTTP/1.1",
         fields='{"port": 80, "user": "admin", "ok": true}'),
    _log(3, 20, "db-1", "mysql", "login", "10.0.0.5", "Access denied for user 'Root'",
         fields='{"port":"3306","user":"root"}'),
    _log(4, 30, "web-1", "SSH", "command", "192.168.1.9", "uname -a; cat /etc/passwd",
         fields={"port": "22", "cmd": "uname -a"}),
    _log(5, 120, "mail", "smtp", "auth", "10.0.0.7", "AUTH LOGIN",
         fields='{"port": 25, "n": null, "note": "x y", "u": "\\u00e9"}'),
    _log(6, 180, "web-1", "ssh", "login", "10.0.0.5", "no fields here"),
    _log(7, 240, "web-1", "ssh", "login", "10.0.0.8", "garbage fields", fields="not json at all"),
    _log(8, 300, "web-3", "ftp", "login", "10.0.0.9", "USER anonymous",
         fields={"port": 21, "user": "anonymous", "ok": False, "u": "é"}),
    _log(9, 360, "web-3", "ftp", "login", "10.0.0.9", "a key inside a string is not a key",
         fields='{"note": "x\\"port\\": 22,y", "port": 23}'),
    _log(10, 420, "web-3", "ftp", "login", "10.0.0.9", "not JSON, though it looks like some",
         fields='log line "port": 22}'),
]  # fmt: skip
CORPUS_SEARCHES = [
    "", "ssh", "SSH", "root", "ROOT", "a.b*c", "10.0.0.5", "decky:web-1", "decky:WEB-1", "service:ssh",
    "event:login", "attacker:10.0.0.5", "attacker-ip:10.0.0.5", "port:22", "port:2", "port:80", "port:3306",
    "user:root", "user:Root", "ok:true", "ok:false", "n:null", "note:'x y'", "u:é", "cmd:'uname -a'",
    "port:22 ssh", "decky:web-1 root", "web password", "passwd uname", "login:x", "'for root'", ":x",
    "user:admin port:80", "event:login decky:web-1 attacker:10.0.0.5",
]  # fmt: skip


@pytest.mark.parametrize("bounded", [False, True])
def test_to_mongo_selects_what_matches_selects(mongo: Any, bounded: bool) -> None:
    """The corpus keeps to what the MongoDB form says exactly (see the module docstring's limits)."""
    mongo.logs.insert_many([dict(row) for row in CORPUS])
    start, end = (T0 + timedelta(minutes=5), T0 + timedelta(hours=3)) if bounded else (None, None)
    for search in CORPUS_SEARCHES:
        compiled = parse_search(search, start=start, end=end)
        in_memory = {row["_id"] for row in CORPUS if compiled.matches(row)}
        assert in_memory == {row["_id"] for row in CORPUS if reference_matches(search, row, start, end)}
        in_mongo = {doc["_id"] for doc in mongo.logs.find(compiled.to_mongo(), {"_id": 1})}
        assert in_mongo == in_memory, (search, compiled.to_mongo())
        stored = {doc["_id"] for doc in mongo.logs.find({}) if compiled.matches(LogRow(doc))}
        assert stored == in_memory, search  # the rows as PyMongo gives them back (tz-aware dates)
