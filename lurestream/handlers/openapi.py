"""GET /api/v1/openapi.json: the API's OpenAPI 3.1 document (lurestream/openapi.py), without credentials.

Unauthenticated like /healthz: it describes the API, it reveals no data. The body is encoded once per
process (the document is constant).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from lurestream.handlers.base import BaseHandler
from lurestream.openapi import openapi_document
from lurestream.services import Services


@functools.lru_cache(maxsize=1)
def _body() -> bytes:
    return json.dumps(openapi_document(), separators=(",", ":")).encode("utf-8")


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.finish(_body())


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/openapi\.json", OpenApiHandler, {"services": services})]
