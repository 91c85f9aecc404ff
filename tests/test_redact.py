"""Redaction (protocol §11): every credential form is masked, and the work is linear in the text's length.

Linearity is a property: Hypothesis builds inputs of any shape by repeating short units made of the
characters and words the patterns look for (``eyJ``, ``://``, ``token=``, ``%``, ``@``…) — the shapes that
made the old patterns quadratic (a 40 KB URL stalled the process for 32 s). Each shape's cost at 64 KB is
compared with its cost at 16 KB in the same run (tests/costs.py), not with a number of seconds.
"""

from __future__ import annotations

import string
import urllib.parse
from collections.abc import Callable

from costs import assert_linear
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lurestream.redact import LOGGED_URL_MAX, redact, redact_url

SIZE = 64 * 1024

_PIECES = st.sampled_from(
    [
        "a", "Z", "0", ".", "-", "_", "/", ":", "@", "=", "&", ";", "?", "%", "+", " ", "\n", "'", '"',
        "eyJ", "://", "http", "token", "ticket", "bearer", "Bearer ", "%74", "=x", "a.b", "aaaa",
    ]
)  # fmt: skip


def _redacting(unit: str) -> Callable[[int], Callable[[], object]]:
    """The redaction of ``unit`` repeated to a given length."""

    def at_size(size: int) -> Callable[[], object]:
        text = (unit * (size // len(unit) + 1))[:size]
        return lambda: redact(text)

    return at_size


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.lists(_PIECES, min_size=1, max_size=12).map("".join))
def test_redaction_is_linear_for_any_shape(unit: str) -> None:
    assert_linear(_redacting(unit), SIZE, repr(unit))


@settings(max_examples=50, deadline=None)
@given(seed=st.text(min_size=256, max_size=2048, alphabet=st.characters(codec="utf-8")))
def test_redaction_is_linear_for_random_text(seed: str) -> None:
    assert_linear(_redacting(seed), SIZE, repr(seed[:20]))


def test_the_shapes_that_were_quadratic() -> None:
    for unit in ("a", "eyJ", "a://", "token=", "x:"):
        assert_linear(_redacting(unit), SIZE, unit)


_SECRET = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=12, max_size=60).map(
    lambda s: "S3CR" + s
)
_FILLER = st.text(alphabet=string.ascii_letters + string.digits + " /.,:", max_size=40)


def _percent_encode_some(name: str, mask: list[bool]) -> str:
    return "".join(f"%{ord(c):02X}" if flag else c for c, flag in zip(name, mask + [False] * len(name), strict=False))


@settings(max_examples=300, deadline=None)
@given(
    secret=_SECRET,
    name=st.sampled_from(["token", "ticket", "access_token", "Token", "TICKET", "lurestream_session", "api_key"]),
    encode=st.lists(st.booleans(), max_size=16),
    before=_FILLER,
    after=_FILLER,
    sep=st.sampled_from(["?", "&", ";", " "]),
    tail=st.sampled_from(["", "&last_event_id=5", "; Path=/", " (127.0.0.1)"]),
)
def test_every_query_or_cookie_credential_is_masked(
    secret: str, name: str, encode: list[bool], before: str, after: str, sep: str, tail: str
) -> None:
    line = f"{before} GET /api/v1/x/events{sep}{_percent_encode_some(name, encode)}={secret}{tail} {after}"
    assert secret not in redact(line)


@settings(max_examples=200, deadline=None)
@given(secret=_SECRET, before=_FILLER, after=_FILLER, scheme=st.sampled_from(["Bearer", "bearer", "BASIC"]))
def test_authorization_credentials_are_masked(secret: str, before: str, after: str, scheme: str) -> None:
    assert secret not in redact(f"{before} Authorization: {scheme} {secret} {after}")


@settings(max_examples=200, deadline=None)
@given(
    password=_SECRET,
    user=st.text(alphabet=string.ascii_lowercase, max_size=10),
    scheme=st.sampled_from(["nats", "mongodb", "mongodb+srv", "tls", "redis"]),
    before=_FILLER,
)
def test_service_url_passwords_are_masked(password: str, user: str, scheme: str, before: str) -> None:
    line = f"{before} {scheme}://{user}:{password}@host:4222/db,{scheme}://other:{password}x@h2"
    assert password not in redact(line)


@settings(max_examples=200, deadline=None)
@given(
    header=st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=4, max_size=40),
    body=st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=4, max_size=200),
    sig=st.text(alphabet=string.ascii_letters + string.digits + "_-", max_size=90),
    before=st.text(alphabet=string.ascii_letters + " /", max_size=20),
)
def test_jwts_anywhere_are_masked(header: str, body: str, sig: str, before: str) -> None:
    jwt = f"eyJ{header}.{body}.{sig}"
    cleaned = redact(f"{before}{jwt} rest")
    assert jwt not in cleaned and f"{header}.{body}" not in cleaned


def test_examples() -> None:
    line = "GET /x?token=eyJhbGciOiJIUzI1NiJ9.eyJ1In0.sig&ticket=abc123&keep=1 Authorization: Bearer abc.def"
    cleaned = redact(line)
    assert "abc123" not in cleaned and "eyJ" not in cleaned and "abc.def" not in cleaned
    assert "token=***" in cleaned and "ticket=***" in cleaned and "keep=1" in cleaned
    assert (
        redact("nats://svc:hunter2@nats:4222,mongodb://u:p%40ss@db/x")
        == "nats://svc:***@nats:4222,mongodb://u:***@db/x"
    )
    assert redact("mongodb://db:27017/x") == "mongodb://db:27017/x"
    assert redact("/e?%74icket=abc&last_event_id=7") == "/e?%74icket=***&last_event_id=7"
    assert redact("/e?last_event_id=7&limit=5") == "/e?last_event_id=7&limit=5", "nothing else is touched"


def test_logged_urls_are_cut() -> None:
    uri = "/healthz?" + "a" * 40_000 + "&token=" + "S3CRsecret"
    logged = redact_url(uri)
    assert len(logged) < LOGGED_URL_MAX + 64 and "S3CRsecret" not in logged
    assert "more characters" in logged
    cut_in_half = redact_url("/x?" + "b" * (LOGGED_URL_MAX - 12) + "&token=S3CRsecretvalue")
    assert "S3CR" not in cut_in_half, "a credential cut by the bound is still masked"


def test_decoding_names_would_find_the_same_credentials() -> None:
    """What Tornado honours as a credential parameter is masked (it decodes names with parse_qs)."""
    for raw in ("%74oken=S3CRx", "t%6Fken=S3CRx", "%74%69%63%6b%65%74=S3CRx", "tick%65t=S3CRx"):
        assert urllib.parse.parse_qs(raw).keys() & {"token", "ticket"}
        assert "S3CRx" not in redact("/e?" + raw)
