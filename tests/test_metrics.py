"""/metrics: Prometheus text that prometheus-client's own parser reads, counters that move with traffic,
and one scrape covering every worker when ``LURESTREAM_PROCESSES > 1``."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from harness import ATTACKER_A, SECRET, VIEWER
from prometheus_client.parser import text_string_to_metric_families
from sse_client import SSEClient

from lurestream.config import config_from
from lurestream.metrics import auth_reason_label
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(ls) -> dict:
    response = await ls.fetch("GET", "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(response.body.decode())


@pytest.mark.gen_test(timeout=60)
async def test_metrics_parse_and_move_with_traffic(ls):
    before = await scrape(ls)
    assert value(before, "lurestream_bus_connected") == 1
    client = await ls.attacker(A)
    bad = await ls.open(f"/api/v1/attackers/{A}/events", token="not-a-jwt")
    assert bad.status == 401
    for n in range(3):
        await ls.publish("attacker.scored", {"attacker_uuid": A, "n": n})
        await client.next_event()
    await ls.publish("attacker.scored", raw=b"{not json")
    await ls.publish("topology.nobody-watches.status", {"status": "x"})
    await ls.wait_for(
        lambda: (
            ls.hub.metrics.value("lurestream_events_unrouted_total") >= 1
            and ls.hub.metrics.value("lurestream_bus_malformed_total") >= 1
        )
    )

    during = await scrape(ls)
    assert value(during, "lurestream_streams_open", kind="attacker") == 1
    assert value(during, "lurestream_stream_connects_total", kind="attacker") == 1
    assert value(during, "lurestream_auth_failures_total", reason="invalid_token") == 1
    assert value(during, "lurestream_bus_messages_total", family="attacker") >= 4
    assert value(during, "lurestream_bus_messages_total", family="topology") >= 1
    assert value(during, "lurestream_bus_malformed_total") == 1
    assert value(during, "lurestream_events_forwarded_total") == 3
    assert value(during, "lurestream_events_unrouted_total") >= 1
    assert value(during, "lurestream_snapshot_seconds_count", kind="attacker") == 1
    assert value(during, "lurestream_delivery_latency_seconds_count") >= 1
    assert value(during, "lurestream_delivery_latency_seconds_bucket", le="+Inf") >= 1

    client.close()
    await ls.wait_for(lambda: ls.hub.subscription_count == 0)
    after = await scrape(ls)
    assert value(after, "lurestream_streams_open", kind="attacker") == 0
    assert value(after, "lurestream_stream_disconnects_total", kind="attacker", reason="client_closed") == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(jetstream=True)
async def test_resume_outcomes_are_counted(ls):
    seq = await ls.publish_stored("attacker.scored", {"attacker_uuid": A})
    resumed = await ls.open(
        f"/api/v1/attackers/{A}/events", token=ls.token(), headers={"Last-Event-ID": ls.event_id(seq)}
    )
    assert (await resumed.next_event()).event == "resumed"
    rebuilt = await ls.open(f"/api/v1/attackers/{A}/events", token=ls.token(), headers={"Last-Event-ID": "x"})
    assert (await rebuilt.next_event()).event == "snapshot"
    found = await scrape(ls)
    assert value(found, "lurestream_resumes_total", outcome="memory") == 1
    assert value(found, "lurestream_resumes_total", outcome="invalid_id") == 1


def test_auth_reason_labels_are_bounded():
    assert auth_reason_label(401, "invalid token: DecodeError") == "invalid_token"
    assert auth_reason_label(401, "claim uuid is not a string") == "bad_claim"
    assert auth_reason_label(403, "role 'intern' may not stream") == "role_not_allowed"
    assert auth_reason_label(403, "Password change required") == "password_change_required"
    assert auth_reason_label(401, "unknown or reused ticket") == "unknown_or_reused_ticket"


@pytest.mark.gen_test(timeout=90)
async def test_one_scrape_covers_every_worker(start_server):
    server = start_server(processes=2, sse_max_per_user=50, drain_seconds=1)
    clients = []
    try:
        token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
        for _ in range(8):  # the kernel spreads the connections over both workers
            client = await SSEClient.open(server.port, f"/api/v1/attackers/{A}/events?token={token}")
            await client.start_stream()
            clients.append(client)

        def scrape_total() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
                found = samples(r.read().decode())
            return value(found, "lurestream_streams_open", kind="attacker")

        loop = asyncio.get_running_loop()
        totals = {await loop.run_in_executor(None, scrape_total) for _ in range(6)}  # lands on either worker
        assert totals == {8.0}, f"every scrape shows all 8 streams, whichever worker answers: {totals}"
    finally:
        for client in clients:
            client.close()
        code = await asyncio.get_running_loop().run_in_executor(None, server.stop)
        assert code == 0, server.log()[-3000:]
