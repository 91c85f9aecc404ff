"""Mint access tokens the way DECNET does — for the demo and the tests, never by the server itself."""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import Any

import jwt

from lurestream.config import Config


def mint_token(config: Config, user_uuid: str, ttl: float = 3600, **overrides: Any) -> str:
    """An HS-signed access token accepted by a server with ``config``; ``overrides`` replace claims
    (a value of None removes the claim), so tests can build every kind of bad token."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "uuid": user_uuid,
        "iss": config.jwt_issuer,
        "aud": config.jwt_audience,
        "typ": config.jwt_type,
        "iat": now,
        "exp": now + int(ttl),
        "jti": uuidlib.uuid4().hex,
    }
    for key, value in overrides.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    alg = next((a for a in config.jwt_algorithms if a.startswith("HS")), "HS256")
    return jwt.encode(claims, config.jwt_secret, algorithm=alg)
