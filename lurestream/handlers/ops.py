"""/healthz (the process serves), /readyz (protocol §1, §16: the store, the bus, the JetStream stream and its
consumer, the cap's mode — 503 naming whatever is down) and /metrics (Prometheus text; unauthenticated like
the probes — expose it to your scraper only)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from lurestream.handlers.base import BaseHandler
from lurestream.services import Services


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})

    head = get  # probes may ask with HEAD (Tornado sends the headers without the body)


class ReadyHandler(BaseHandler):
    def get(self) -> None:
        hub, limiter = self.services.hub, self.services.limiter
        store_state = "ok" if self.services.store_up else "down"
        bus_state = hub.state
        down = ["store"] if store_state != "ok" else []
        down += hub.problems()  # the bus, the JetStream stream and its consumer (protocol §16)
        if self.settings.get("draining"):
            down.append("draining")
        # protocol §13: "cluster" when the per-user cap counts every process, "local" when it has fallen back
        body: dict[str, Any] = {
            "store": store_state,
            "bus": bus_state,
            "events": hub.events_state,
            "cap": limiter.mode,
        }
        if down:
            body["detail"] = "not ready: " + ", ".join(down) + " unavailable"
            self.write_json(body, 503)
        else:
            body["status"] = "ready"
            self.write_json(body)

    head = get


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.metrics.exposition())

    head = get


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (r"/healthz", HealthHandler, {"services": services}),
        (r"/readyz", ReadyHandler, {"services": services}),
        (r"/metrics", MetricsHandler, {"services": services}),
    ]
