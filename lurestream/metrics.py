"""Prometheus metrics, one ``Metrics`` object per process (owned by ``Services``, never global).

One process: the metrics live in the object's own ``CollectorRegistry``. Several processes
(``LURESTREAM_PROCESSES > 1``): the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
imports prometheus-client, every worker writes its values there, and any worker's ``/metrics``
aggregates all of them (prometheus-client's multiprocess mode), so one scrape sees the whole server.
"""

from __future__ import annotations

import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from lurestream.routing import SUBJECT_FAMILIES

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FAMILIES = tuple(f.split(".", 1)[0] for f in SUBJECT_FAMILIES)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """Every metric lurestream exports; hot paths hold pre-bound children, not label look-ups."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_enabled()
        registry = None if self.multiprocess else CollectorRegistry()  # None: values go to the shared dir
        self.registry = registry
        self.streams_open = Gauge(
            "lurestream_streams_open", "Open SSE streams", ["kind"], multiprocess_mode="livesum", registry=registry
        )
        self.connects = Counter(
            "lurestream_stream_connects_total", "Streams opened (after auth, 404, 429)", ["kind"], registry=registry
        )
        self.disconnects = Counter(
            "lurestream_stream_disconnects_total", "Streams ended, by reason", ["kind", "reason"], registry=registry
        )
        self.auth_failures = Counter(
            "lurestream_auth_failures_total", "Refused credentials, by reason", ["reason"], registry=registry
        )
        self.bus_messages = Counter(
            "lurestream_bus_messages_total",
            "Messages received from NATS, by subject family",
            ["family"],
            registry=registry,
        )
        self.bus_malformed = Counter(
            "lurestream_bus_malformed_total", "Malformed bus messages skipped", registry=registry
        )
        self.events_forwarded = Counter(
            "lurestream_events_forwarded_total",
            "Event deliveries queued to streams (one per stream)",
            registry=registry,
        )
        self.events_unrouted = Counter(
            "lurestream_events_unrouted_total", "Bus messages no open stream wanted (not forwarded)", registry=registry
        )
        self.lagging = Counter(
            "lurestream_lagging_closes_total", "Streams closed because their queue overflowed", registry=registry
        )
        self.send_timeouts = Counter(
            "lurestream_send_timeouts_total",
            "Streams closed because a write did not complete in time",
            registry=registry,
        )
        self.resumes = Counter(
            "lurestream_resumes_total",
            "Reconnects with a last event id, by outcome (memory, jetstream, or why a snapshot was sent)",
            ["outcome"],
            registry=registry,
        )
        self.log_queries = Counter(
            "lurestream_log_queries_total",
            "Queries the live log feed sent (tail, stats, histogram, resume): per process, never per viewer",
            ["query"],
            registry=registry,
        )
        self.resumed_events = Counter(
            "lurestream_resumed_events_total", "Events replayed to streams that resumed", registry=registry
        )
        self.bus_reconnects = Counter(
            "lurestream_bus_reconnects_total", "Times the NATS connection came back after a loss", registry=registry
        )
        self.snapshot_seconds = Histogram(
            "lurestream_snapshot_seconds", "Snapshot read time", ["kind"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.snapshot_queries = Counter(
            "lurestream_snapshot_queries_total",
            "Snapshot store queries made (shared reads count once; one query may serve several attackers)",
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "lurestream_delivery_latency_seconds",
            "Envelope ts to the write of the frame, for live events (oldest frame of each write)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bus_connected = Gauge(
            "lurestream_bus_connected",
            "1 while the NATS connection is up",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.http_refused = Counter(
            "lurestream_http_refused_total",
            "Requests or connections refused or closed at the HTTP edge, by reason (protocol §11)",
            ["reason"],
            registry=registry,
        )
        self._family = {f: self.bus_messages.labels(f) for f in FAMILIES}
        self._other_family = self.bus_messages.labels("other")

    def auth_failure(self, status: int, reason: str) -> None:
        self.auth_failures.labels(auth_reason_label(status, reason)).inc()

    def bus_message(self, subject: str) -> None:
        self._family.get(subject.split(".", 1)[0], self._other_family).inc()

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (``lurestream_bus_malformed_total``, labels as keywords), 0 when
        it has none yet: for tests, benches and log lines, read through prometheus-client itself."""
        registry = self.registry
        if registry is None:  # multiprocess: every worker's values, aggregated
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else float(found)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample value}`` of one metric's non-zero samples (e.g. resumes by outcome)."""
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        found: dict[str, float] = {}
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name and sample.value and label in sample.labels:
                    found[sample.labels[label]] = sample.value
        return found

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's registry, or every worker's values aggregated."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)


def auth_reason_label(status: int, reason: str) -> str:
    """A bounded label for an auth refusal (reasons can carry claim or role names)."""
    if status == 403:
        return "role_not_allowed" if reason.startswith("role ") else "password_change_required"
    for prefix, label in (("invalid token", "invalid_token"), ("claim ", "bad_claim")):
        if reason.startswith(prefix):
            return label
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")[:40] or "unknown"
