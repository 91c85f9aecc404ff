"""HTTP handlers; each module ends with ``handlers(services)``, its route list (jupyter_server style)."""

from __future__ import annotations

from typing import Any

from lurestream.handlers import attackers, dashboard, directory, openapi, ops, sessions, tickets, topologies

MODULES = (attackers, topologies, directory, tickets, sessions, ops, openapi, dashboard)


def all_handlers(services: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    routes: list[tuple[str, type, dict[str, Any]]] = []
    for module in MODULES:
        routes.extend(module.handlers(services))
    return routes
