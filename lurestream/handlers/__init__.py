"""HTTP handlers; each module ends with ``handlers(services)``, its route list (jupyter_server style)."""

from __future__ import annotations

from typing import Any

from lurestream.handlers import dashboard, directory, logfeed, openapi, ops, sessions, stream, tickets
from lurestream.services import Services

MODULES = (stream, logfeed, directory, tickets, sessions, ops, openapi, dashboard)


def all_handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    routes: list[tuple[str, type, dict[str, Any]]] = []
    for module in MODULES:
        routes.extend(module.handlers(services))
    return routes
