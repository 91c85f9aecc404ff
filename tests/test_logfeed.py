"""The live log feed, GET /api/v1/stream (protocol §15): one tail of ``logs`` per process shared by every
viewer, DECNET's search language in memory, stats and histograms without a query per viewer, resume by log
id with a ``gap`` past LOG_REPLAY_MAX. A real MongoDB-wire server; rows inserted by the test."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from harness import VIEWER

PATH = "/api/v1/stream"
FAST = pytest.mark.lurestream(log_poll_seconds=0.1)
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def row(n: int, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": n,
        "timestamp": T0 + timedelta(minutes=n),
        "decky": "web-01",
        "service": "http",
        "event_type": "request",
        "attacker_ip": "203.0.113.10",
        "raw_line": f"GET /line/{n}",
        "fields": {"port": 80},
    }
    doc.update(extra)
    return doc


async def open_feed(ls: Any, query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Any:
    """A log feed stream, its opening keepalive, stats and histogram read; ``client.stats``/``.histogram``."""
    params = dict(query or {})
    params["token"] = ls.token()
    client = await ls.open(f"{PATH}?{urllib.parse.urlencode(params)}", headers=headers)
    assert client.status == 200, (client.status, await client.body())
    assert (await client.next_frame()).is_keepalive
    stats, histogram = await client.next_event(), await client.next_event()
    assert stats.event == histogram.event == "message"
    assert stats.json()["type"] == "stats" and histogram.json()["type"] == "histogram"
    client.stats, client.histogram = stats.json()["data"], histogram.json()  # type: ignore[attr-defined]
    return client


async def rows_of(client: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` rows the stream sends (frames of type ``logs``; stats and histograms skipped)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        frame = await client.next_event(timeout)
        body = frame.json()
        if body["type"] == "logs":
            assert frame.id == str(body["data"][-1]["id"]), "a logs frame's id is its greatest row id"
            got.extend(body["data"])
    return got


async def wait_started(ls: Any) -> None:
    await ls.wait_for(lambda: ls.services.logs.started, what="the tail to know its position")


@pytest.mark.gen_test(timeout=30)
@FAST
async def test_rows_inserted_after_the_stream_opens_arrive_within_a_poll(ls):
    ls.db.logs.insert_many([row(n) for n in range(1, 4)])  # read by the tail before the stream opens: not sent
    ls.db.deckies.insert_many([{"_id": "d1", "state": "running"}, {"_id": "d2", "state": "stopped"}])
    await ls.wait_for(lambda: ls.services.logs.position == 3, what="the tail to pass the rows")
    client = await open_feed(ls)
    assert client.stats == {"total_logs": 3, "unique_attackers": 1, "active_deckies": 1, "deployed_deckies": 2}
    assert client.histogram["data"] == [{"time": "2026-12-05T12:00:00+00:00", "count": 3}]
    inserted = time.monotonic()
    ls.db.logs.insert_one(row(4, fields='{"port": 22}'))
    tails = ls.metric("lurestream_log_queries_total", query="tail")
    await ls.wait_for(lambda: ls.services.logs.position == 4, what="the tail to read the row")
    # counted, not timed: the poll under way may have missed the row, the next one reads it
    polls = ls.metric("lurestream_log_queries_total", query="tail") - tails
    assert polls <= 2, f"read {polls:.0f} tail polls after the insert: within a LOG_POLL_SECONDS period or two"
    (got,) = await rows_of(client, 1)
    assert time.monotonic() - inserted < 5, "within seconds, on any machine"
    assert got["id"] == 4 and got["timestamp"] == "2026-12-05T12:04:00+00:00" and got["fields"] == '{"port": 22}'
    assert "_id" not in got


@pytest.mark.gen_test(timeout=30)
@FAST
async def test_a_burst_arrives_whole_in_frames_of_at_most_log_batch_rows(ls):
    """DECNET sent at most 50 rows a second: a burst of 5,000 lines took 100 s to reach the screens."""
    await wait_started(ls)
    client = await open_feed(ls)
    ls.db.logs.insert_many([row(n) for n in range(1, 2001)])
    started = time.monotonic()
    frames = []
    while sum(len(f) for f in frames) < 2000:
        body = (await client.next_event(5)).json()
        if body["type"] == "logs":
            frames.append(body["data"])
    assert time.monotonic() - started < 10, "no 50-rows-a-second ceiling (that would take 40 s)"
    assert max(len(f) for f in frames) == 50
    assert [r["id"] for f in frames for r in f] == list(range(1, 2001)), "every row once, in id order"


@pytest.mark.gen_test(timeout=30)
@FAST
async def test_each_stream_gets_only_the_rows_its_search_matches(ls):
    await wait_started(ls)
    ssh = await open_feed(ls, {"search": "service:ssh"})
    word = await open_feed(ls, {"search": 'LOGIN "root"'})
    port = await open_feed(ls, {"search": "port:22"})
    ls.db.logs.insert_many(
        [
            row(1, service="ssh", raw_line="Failed password for root", fields={"port": 22}),
            row(2, service="http", raw_line="GET / login root"),
            row(3, service="ssh", raw_line="banner", fields='{"port": 2222}'),
        ]
    )
    assert [r["id"] for r in await rows_of(ssh, 2)] == [1, 3]
    assert [r["id"] for r in await rows_of(word, 1)] == [2]
    assert [r["id"] for r in await rows_of(port, 1)] == [1]
    for client in (ssh, word, port):
        await client.expect_silence(0.3)


@pytest.mark.gen_test(timeout=30)
@FAST
async def test_time_bounds_are_inclusive(ls):
    await wait_started(ls)
    start, end = (T0 + timedelta(minutes=2)).isoformat(), (T0 + timedelta(minutes=3)).isoformat()
    client = await open_feed(ls, {"start_time": start, "end_time": end})
    ls.db.logs.insert_many([row(n) for n in range(1, 6)])
    assert [r["id"] for r in await rows_of(client, 2)] == [2, 3]
    await client.expect_silence(0.3)


@pytest.mark.gen_test(timeout=30)
@FAST
@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_resume_replays_the_matching_rows_after_the_last_id_then_live(ls, how):
    await wait_started(ls)
    ls.db.logs.insert_many([row(n, service="ssh" if n % 2 else "http") for n in range(1, 11)])
    await ls.wait_for(lambda: ls.services.logs.position == 10, what="the tail to pass the rows")
    query = {"search": "service:ssh"}
    headers = None
    if how == "header":
        headers, query["lastEventId"] = {"Last-Event-ID": "4"}, "999"  # the header wins
    else:
        query["lastEventId"] = "4"
    client = await open_feed(ls, query, headers)
    assert [r["id"] for r in await rows_of(client, 3)] == [5, 7, 9], "the matching rows after id 4"
    ls.db.logs.insert_many([row(11, service="ssh"), row(12, service="http")])
    assert [r["id"] for r in await rows_of(client, 1)] == [11], "then live, nothing twice"
    await client.expect_silence(0.3)


@pytest.mark.gen_test(timeout=30)
@FAST
@pytest.mark.lurestream(log_replay_max=5)
async def test_a_gap_longer_than_log_replay_max_is_announced_not_replayed(ls):
    await wait_started(ls)
    ls.db.logs.insert_many([row(n) for n in range(1, 21)])
    await ls.wait_for(lambda: ls.services.logs.position == 20, what="the tail to pass the rows")
    client = await open_feed(ls, {"lastEventId": "3"})
    gap = await client.next_event()
    assert gap.json() == {"type": "gap", "data": {"after": 3, "resumed_at": 20}} and gap.id == "20"
    ls.db.logs.insert_one(row(21))
    assert [r["id"] for r in await rows_of(client, 1)] == [21]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "query, detail",
    [
        ({"search": "x" * 1025}, "search is longer than 1024 characters"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"end_time": "2026-13-45"}, "end_time"),
        ({"lastEventId": "abc"}, "lastEventId must be a log id (digits)"),
        ({"lastEventId": "9" * 20}, "lastEventId must be a log id (digits)"),
    ],
)
async def test_a_bad_parameter_is_a_400_before_any_stream(ls, query, detail):
    response = await ls.fetch("GET", f"{PATH}?{urllib.parse.urlencode({**query, 'token': ls.token()})}")
    assert response.code == 400, response.body
    assert detail in json.loads(response.body)["detail"]
    assert ls.services.limiter.held() == 0


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(log_poll_seconds=0.2, log_stats_seconds=0.5, sse_max_per_user=50)
async def test_viewers_cost_what_one_does_and_stats_and_histograms_refresh_while_rows_arrive(ls):
    """The scale rule: one tail query a poll, stats once an interval, one histogram build per distinct filter
    — whatever the number of viewers (DECNET: a query per viewer a second, three more every 10 s)."""
    await wait_started(ls)
    queries = ls.services.metrics.by_label
    clients = [await open_feed(ls, {"search": f"decky:d{i % 3}"}) for i in range(30)]
    opened = queries("lurestream_log_queries_total", "query")
    assert opened.get("histogram") == 3, "one histogram build per distinct filter"
    assert opened.get("stats", 0) <= 2, "stats read once per interval, shared by every opening stream"
    before = dict(opened)
    polls_started = time.monotonic()
    for n in range(1, 31):
        ls.db.logs.insert_one(row(n, decky=f"d{n % 3}"))
        await asyncio.sleep(0.05)  # on purpose: rows arrive over several polls and stats intervals
    for i, client in enumerate(clients):
        rows = await rows_of(client, 10)
        assert {r["decky"] for r in rows} == {f"d{i % 3}"}
    refreshed = [await client.next_event(3) for client in clients[:3]]
    kinds = {frame.json()["type"] for frame in refreshed}
    assert kinds <= {"stats", "histogram", "logs"} and "stats" in kinds or "histogram" in kinds
    elapsed = time.monotonic() - polls_started
    after = queries("lurestream_log_queries_total", "query")
    tail = after.get("tail", 0) - before.get("tail", 0)
    assert tail <= elapsed / 0.2 + 3, f"{tail} tail queries in {elapsed:.1f}s: one a poll, not one per viewer"
    assert after.get("histogram", 0) == 3, "histograms are counted forward from the tail, no query per interval"
    assert after.get("stats", 0) - before.get("stats", 0) <= elapsed / 0.5 + 1


@pytest.mark.gen_test(timeout=30)
@FAST
@pytest.mark.lurestream(log_histogram_filters=1)
async def test_past_log_histogram_filters_a_new_filter_gets_an_empty_truncated_histogram(ls):
    await wait_started(ls)
    ls.db.logs.insert_many([row(1, decky="a"), row(2, decky="b")])
    first = await open_feed(ls, {"search": "decky:a"})
    second = await open_feed(ls, {"search": "decky:b"})
    assert first.histogram == {"type": "histogram", "data": [{"time": "2026-12-05T12:00:00+00:00", "count": 1}]}
    assert second.histogram == {"type": "histogram", "data": [], "truncated": True}


@pytest.mark.gen_test(timeout=30)
@FAST
@pytest.mark.lurestream(sse_max_per_user=2)
async def test_the_log_feed_counts_against_the_same_cap_as_every_stream(ls):
    await wait_started(ls)
    await open_feed(ls)
    await ls.attacker()
    refused = await ls.fetch("GET", f"{PATH}?token={ls.token(VIEWER)}")
    assert refused.code == 429


@pytest.mark.gen_test(timeout=30)
@FAST
async def test_a_log_stream_ends_when_its_credential_expires(ls):
    await wait_started(ls)
    client = await ls.open(f"{PATH}?token={ls.expiring_token()[0]}")
    assert (await client.next_frame()).is_keepalive
    while (frame := await client.next_event(5)).event != "end":
        pass
    assert frame.json() == {"reason": "expired"}


@pytest.mark.gen_test(timeout=30)
@FAST
async def test_closing_ends_the_tail_even_when_its_cancellation_is_lost(ls):
    """A query that turns the cancellation into a store error (as a driver may; Python ≤ 3.11's wait_for can
    lose one too): the tail's loop still ends, and shutdown does not wait for ever."""
    from lurestream.store import StoreUnavailable

    feed = ls.services.logs
    await wait_started(ls)
    store, entered = feed.store, asyncio.Event()
    real = store.logs_after

    async def loses_the_cancellation(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()  # a query that answers only when cancelled
        except asyncio.CancelledError:
            raise StoreUnavailable("cancelled mid-query") from None
        return await real(*args, **kwargs)

    store.logs_after = loses_the_cancellation
    try:
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.wait_for(feed.close(), 10)
    finally:
        store.logs_after = real
