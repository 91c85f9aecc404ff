"""Fixtures of the cluster tests: a whole cluster per test (3 NATS nodes with JetStream R3, one
MongoDB-wire server, 3 lurestream hosts on 127.0.0.2-4; see clusterkit.py), a steady publisher and N
SSE clients that follow their streams across hosts.

Settings of the hosts come from ``HOST_DEFAULTS`` and ``@pytest.mark.cluster(**settings)`` (short
keepalive, drain, retry and lease, so each failure plays out in seconds). On a failure the tail of
every host's log is printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from clusterkit import Cluster, Followers, Publisher  # noqa: E402

HOST_DEFAULTS: dict[str, Any] = dict(
    keepalive_seconds=1,  # the clients call a connection dead after 3 s of silence
    drain_seconds=3,
    retry_ms=500,  # the retry: hint, jittered ±50 %
    cap_lease_seconds=3,
    send_timeout_seconds=2,
    sse_max_per_user=5,
    log_level="info",
)
USERS = 20
ATTACKERS = 20


def _settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    merged = dict(HOST_DEFAULTS)
    for marker in reversed(list(request.node.iter_markers("cluster"))):
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def cluster(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    kit = Cluster(str(tmp_path), hosts=3, **_settings(request))
    kit.start(users=USERS, attackers=ATTACKERS)
    yield kit
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for host in kit.hosts:
            print(f"\n---- {host.name} ({host.address}) log tail ----\n{host.tail(40)}")
    kit.close()


@pytest.fixture
def followers(cluster: Cluster, io_loop: Any) -> Iterator[Callable[..., Followers]]:
    """``followers(n)`` inside the test's loop: n followers started (stopped at the end)."""
    groups: list[Followers] = []

    def start(count: int, **kwargs: Any) -> Followers:
        kwargs.setdefault("keepalive_seconds", float(cluster.settings.get("keepalive_seconds", 15)))
        group = Followers(cluster, count, **kwargs)
        group.start()
        groups.append(group)
        return group

    yield start

    async def stop() -> None:
        for group in groups:
            await group.stop()

    io_loop.run_sync(stop, timeout=30)


@pytest.fixture
def publisher(cluster: Cluster, io_loop: Any) -> Iterator[Callable[..., Awaitable[Publisher]]]:
    """``await publisher(rate)``: a connected publisher, publishing (closed at the end)."""
    started: list[Publisher] = []

    async def start(rate: float = 40, attackers: list[str] | None = None) -> Publisher:
        pub = Publisher(cluster.nats.urls, attackers or cluster.seed_data.attackers, rate)
        await pub.connect()
        started.append(pub)
        pub.start()
        return pub

    yield start

    async def close() -> None:
        for pub in started:
            await pub.close()

    io_loop.run_sync(close, timeout=30)
