"""The live dashboard page at ``/`` and its static files (in the package: no build step, no CDN)."""

from __future__ import annotations

import os
import re
from typing import Any

import tornado.web

from lurestream.handlers.base import write_json_error
from lurestream.services import Services

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")

# The page only talks to this origin; nothing it shows can load scripts, frames or images elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# The page's files are flat and plainly named; anything else (a NUL, a dot-dot, a sub-path) is unknown.
_FILE_NAME = re.compile(r"[A-Za-z0-9_-]+\.[a-z0-9]{1,5}")


class DashboardHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def prepare(self) -> None:
        # The page's files are a few KB: byte ranges buy nothing, and Tornado answered an unsatisfiable one
        # with a text/plain 416, not the JSON error every answer is (protocol §1). Whole files only.
        if "Range" in self.request.headers:
            del self.request.headers["Range"]

    def parse_url_path(self, url_path: str) -> str:
        # Checked on the requested name before the filesystem sees it: a NUL in a path made os.stat
        # raise (a 500); unknown, outside and malformed names are all one JSON 404.
        if url_path and not _FILE_NAME.fullmatch(url_path):
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.clear_header("Content-Security-Policy")
        write_json_error(self, status_code)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    static = {"path": STATIC_DIR, "default_filename": "index.html"}
    return [
        (r"/()", DashboardHandler, static),
        (r"/static/(.*)", DashboardHandler, static),
    ]
