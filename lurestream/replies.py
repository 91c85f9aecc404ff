"""What every reply carries, in one place for both writers of replies.

Two code paths answer HTTP requests: Tornado handlers (``handlers.base``) and the accept edge
(``edge``), which refuses floods and oversized heads before Tornado sees a byte. A dashboard must not
be able to tell them apart (protocol §1, §11): the same ``{"detail": ...}`` body, the same
``nosniff``, the same CORS answer. Both build those from here.
"""

from __future__ import annotations

import json

COMMON_HEADERS: dict[str, str] = {"X-Content-Type-Options": "nosniff"}


def error_body(detail: str) -> bytes:
    """The JSON body of every error (protocol §1)."""
    return json.dumps({"detail": detail}, separators=(",", ":")).encode()


def cors_headers(allowed: tuple[str, ...], origin: str | None) -> dict[str, str]:
    """The CORS headers for a request from ``origin`` when ``allowed`` (``LURESTREAM_CORS_ORIGINS``) is set.

    ``Vary: Origin`` goes on every response once CORS is on: the answer depends on the origin, so a
    cache must key on it (protocol §11). ``*`` allows any origin, echoed rather than sent as ``*`` so
    credentialed requests work.
    """
    if not allowed:
        return {}
    headers = {"Vary": "Origin"}
    if origin and ("*" in allowed or origin in allowed):
        headers["Access-Control-Allow-Origin"] = origin
    return headers
