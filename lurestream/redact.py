"""Keep credentials out of logs, in time linear in the text's length (protocol §11).

Masked: the values of credential-named parameters (``token=``, ``ticket=``, ``access_token=``, anything
naming a secret, password, session or key — in a query string, a cookie or free text), the value of every
parameter whose name is percent-encoded (``?%74oken=`` is ``token`` to Tornado: we cannot tell it
apart cheaply, so we never guess), ``Bearer``/``Basic`` credentials, JWT-shaped strings and passwords in
service URLs (``nats://user:***@host``).

Used for the access log and request summaries, and as a logging filter on every handler, so a
credential cannot reach a log line through any path (including third-party loggers).

Why no single clever regex: a backtracking engine tries a pattern at every start position, so a pattern
that can run over a long stretch before failing (``scheme://`` scanning a run of letters, ``eyJ…``
scanning to the end of a run) costs O(n²) — a 40 KB URL froze the process for 32 s. Every pattern
here either starts only right after a separator (so each character is scanned from one start) or starts
with a literal its match cannot run past the next occurrence of; and the number of template
replacements per line is bounded (see ``FINE_MATCHES``). ``tests/test_redact.py`` checks 64 KB of any
shape in < 10 ms.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
LOGGED_URL_MAX = 1024  # logged URLs are cut to this many characters (protocol §11)

# Words that make a parameter a credential; matched case-insensitively anywhere in its name.
_SECRET_WORDS = r"token|ticket|secret|passw|session|auth|credential|jwt|api_?key|api-key"
_NAME = r"[^=&;,\s?\"'{}()<>]"
_VALUE = r"[^&;,\s\"'<>]*"
# A parameter begins right after a separator (the text gets one in front). The lookahead decides from
# the name alone and is never re-entered, so a name is scanned a bounded number of times. A name that
# is percent- or '+'-encoded is masked too: Tornado decodes ``%74oken`` to ``token``.
_PARAM = re.compile(rf"(?i)([?&;,\s\"'{{(])(?={_NAME}*?(?=[tspacjk%+])(?:{_SECRET_WORDS}|%|\+))({_NAME}*=){_VALUE}")
_SCHEME_CREDENTIAL = re.compile(r"([Bb][Ee][Aa][Rr][Ee][Rr]|[Bb][Aa][Ss][Ii][Cc])(\s+)[A-Za-z0-9._~+/=-]+")
# A run of JWT-alphabet characters holding "eyJ" and two dots, tried only from a run's start.
_JWT = re.compile(r"(?<![A-Za-z0-9_.-])(?=[A-Za-z0-9_.-]*?eyJ)(?=(?:[A-Za-z0-9_-]*\.){2})[A-Za-z0-9_.-]+")
# user:password@ after "://"; the password cannot cross a '/', so it never reaches the next "://".
_USERINFO = re.compile(r"(://[^/\s:@]*:)[^/\s]+@")

# Fine-grained masking keeps the parameter name (``token=***``), but expanding a replacement template
# costs ~1 µs a match. A line with more credential-looking matches than this is hostile or broken:
# its remaining matches are masked wholesale with a constant, which costs nothing per match.
FINE_MATCHES = 64
_ANY_VALUE = re.compile(r"(?<==)[^&;,\s\"'<>]+")
_ANY_SCHEME_CREDENTIAL = re.compile(r"(?:(?<=[Bb][Ee][Aa][Rr][Ee][Rr])|(?<=[Bb][Aa][Ss][Ii][Cc]))\s+\S+")
_ANY_USERINFO = re.compile(r"(?<=://)[^/\s]+@")


def redact(text: str) -> str:
    """The text with every credential-looking value replaced by ``***``; linear in ``len(text)``."""
    text = "\n" + text  # a separator in front: every pattern may start at the text's first character
    if "=" in text:
        text = _bounded(_PARAM, r"\1\2" + MASK, _ANY_VALUE, MASK, text)
    text = _bounded(_SCHEME_CREDENTIAL, r"\1\2" + MASK, _ANY_SCHEME_CREDENTIAL, " " + MASK, text)
    if "://" in text:
        text = _bounded(_USERINFO, r"\1" + MASK + "@", _ANY_USERINFO, MASK + "@", text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    return text[1:]


def _bounded(fine: re.Pattern[str], template: str, coarse: re.Pattern[str], constant: str, text: str) -> str:
    text, count = fine.subn(template, text, count=FINE_MATCHES)
    if count == FINE_MATCHES:
        text = coarse.sub(constant, text)
    return text


def redact_url(uri: str) -> str:
    """A request URI fit for a log line: cut to ``LOGGED_URL_MAX`` characters, then redacted.

    Cut first, so the work is bounded by the cut and not by what the client sent; a credential cut
    in half is still masked (its parameter name or its ``eyJ`` prefix survives the cut).
    """
    if len(uri) > LOGGED_URL_MAX:
        uri = uri[:LOGGED_URL_MAX] + f"…[{len(uri) - LOGGED_URL_MAX} more characters]"
    return redact(uri)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
