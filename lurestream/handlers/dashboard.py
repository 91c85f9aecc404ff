"""The live dashboard page at ``/`` and its static files (in the package: no build step, no CDN)."""

from __future__ import annotations

import os
from typing import Any

import tornado.web

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")

# The page only talks to this origin; nothing it shows can load scripts, frames or images elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class DashboardHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


def handlers(services: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    static = {"path": STATIC_DIR, "default_filename": "index.html"}
    return [
        (r"/()", DashboardHandler, static),
        (r"/static/(.*)", DashboardHandler, static),
    ]
