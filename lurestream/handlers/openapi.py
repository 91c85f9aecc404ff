"""GET /api/v1/openapi.json: the API's OpenAPI 3.1 document (lurestream/openapi.py), without credentials.

Unauthenticated like /healthz: it describes the API, it reveals no data. The document is generated from
the route table of the Application serving the request (``routes_of``), so it describes exactly the routes
this process answers; it is built and encoded once per Application (the table does not change).

``lurestream.openapi`` is imported as a module, not ``from`` it: it imports the handler modules it reads
facts from, and a ``from`` import here would fail whenever it is the first of the two to be imported.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import tornado.web

from lurestream import openapi as document
from lurestream.handlers.base import BaseHandler
from lurestream.services import Services

_bodies: weakref.WeakKeyDictionary[tornado.web.Application, bytes] = weakref.WeakKeyDictionary()


def body(app: tornado.web.Application) -> bytes:
    """The encoded document of ``app``'s routes, built on first use."""
    cached = _bodies.get(app)
    if cached is None:
        spec = document.openapi_document(document.routes_of(app))
        cached = _bodies[app] = json.dumps(spec, separators=(",", ":")).encode("utf-8")
    return cached


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.finish(body(self.application))


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/openapi\.json", OpenApiHandler, {"services": services})]
