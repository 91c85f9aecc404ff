"""Keep credentials out of logs: mask ``token=`` / ``ticket=`` query values, Bearer tokens, JWTs and
passwords in service URLs (``nats://user:***@host``).

Used for the access log and request summaries, and as a logging filter on every handler, so a
credential cannot reach a log line through any path (including third-party loggers).
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;\s])(?:token|ticket|access_token)=)[^&;\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@", re.IGNORECASE)


def redact(text: str) -> str:
    """The text with every credential-looking value replaced by ``***``."""
    text = _QUERY_SECRET.sub(r"\1" + MASK, text)
    text = _BEARER.sub(r"\1" + MASK, text)
    text = _URL_PASSWORD.sub(r"\1" + MASK + "@", text)
    return _JWT.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
