"""The live log feed's source (protocol §15): one tail of ``logs`` per process, shared by every viewer.

DECNET polls its database once a second per viewer, plus three aggregates every 10 s per viewer, and sends
at most 50 rows a second. Here one process reads each new row once and filters it in memory for every
open stream:

- **The tail.** Every ``LOG_POLL_SECONDS`` one query reads the rows after the process's high-water mark,
  in id order, page after page until none is left (no ceiling on rows a second). Each row is prepared
  once (``logsearch.LogRow``) and tested once per *distinct* filter; the matching rows of a filter are
  encoded once into frames of at most ``LOG_BATCH`` rows (``id:`` the greatest row id in the frame) and
  the same bytes go to every stream of that filter.
- **Stats** (four counts, not filtered) are read once per ``LOG_STATS_SECONDS`` per process and sent to
  every stream when rows arrived in the interval (and at once to a stream that opens).
- **Histograms** are kept per distinct filter, in memory: built once by one query when the filter first
  appears (concurrent first viewers share it), then counted forward from the tail's rows — no query per
  interval at all; rebuilt every ``HISTOGRAM_REBUILD_SECONDS`` so deleted rows drop out. At most
  ``LOG_HISTOGRAM_FILTERS`` filters have one; a stream with a filter past that bound gets an empty
  histogram marked ``"truncated": true`` (the bound keeps what a flood of distinct searches can cost).
- **Resume.** A stream with a last id *L* registers at the tail's position *P* and is sent the matching
  rows in (*L*, *P*] read back by id (at most ``LOG_REPLAY_MAX`` rows scanned, its frames within the
  stream's byte bound), then live rows after *P*; past either bound it gets a ``gap`` frame instead:
  nothing falls between, nothing is sent twice.

``lurestream_log_queries_total{query}`` counts every query the feed sends: ``tail``, ``stats``,
``histogram``, ``resume``. A stream's filter is ``logsearch.LogFilter``; its source is a
:class:`LogView`, registered with the live writer like the hub is for bus streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from lurestream import sse
from lurestream.logsearch import FilterKey, LogFilter, LogRow
from lurestream.metrics import Metrics
from lurestream.replay import Item
from lurestream.store import Store, StoreUnavailable
from lurestream.writer import LiveStream

log = logging.getLogger("lurestream.logfeed")

PAGE_ROWS = 1000  # rows a tail query reads at most (it reads pages until none is left)
HISTOGRAM_REBUILD_SECONDS = 600.0
HISTOGRAM_SCAN_ROWS = 1_000_000  # rows a histogram build reads at most (logged when a build is cut)
EVENT = "message"  # DECNET's stream sends unnamed JSON under the default event name


@dataclass(frozen=True)
class LogFeedSettings:
    batch: int = 50  # LOG_BATCH: rows a frame carries at most
    poll_seconds: float = 1.0  # LOG_POLL_SECONDS
    stats_seconds: float = 10.0  # LOG_STATS_SECONDS
    histogram_minutes: int = 15  # LOG_HISTOGRAM_MINUTES
    replay_max: int = 10_000  # LOG_REPLAY_MAX: rows a resume scans at most
    histogram_filters: int = 256  # LOG_HISTOGRAM_FILTERS: distinct filters with a histogram, at most
    max_frame_bytes: int = 2**20  # STREAM_BUFFER_BYTES: a resume's frames fit one stream's buffer


def message(kind: str, data: Any, event_id: int | None = None) -> bytes:
    """A frame of the feed: ``event: message``, data ``{"type": kind, "data": data}``."""
    return sse.encode_frame(EVENT, sse.dumps({"type": kind, "data": data}), None if event_id is None else str(event_id))


def row_item(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the feed sends it: ``_id`` renamed ``id`` (dates become ISO-8601 when encoded)."""
    item: dict[str, Any] = {"id": doc.get("_id")}
    item.update((k, v) for k, v in doc.items() if k != "_id")
    return item


class Histogram:
    """Counts of one filter's rows per bucket of ``minutes`` (bucket start → count)."""

    def __init__(self, minutes: int) -> None:
        self.width = timedelta(minutes=minutes)
        self.counts: dict[datetime, int] = {}
        self.truncated = False  # not kept: the filter came past LOG_HISTOGRAM_FILTERS
        self.changed = False

    def add(self, when: datetime | None) -> None:
        if when is None:
            return
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        start = epoch + ((when - epoch) // self.width) * self.width
        self.counts[start] = self.counts.get(start, 0) + 1
        self.changed = True

    def data(self) -> list[dict[str, Any]]:
        return [{"time": start.isoformat(), "count": n} for start, n in sorted(self.counts.items())]

    def frame(self) -> bytes:
        if self.truncated:
            return sse.encode_frame(EVENT, sse.dumps({"type": "histogram", "data": [], "truncated": True}))
        return message("histogram", self.data())


@dataclass(eq=False)
class FilterGroup:
    """The streams that share one filter: tested once per row, framed once, one histogram."""

    filter: LogFilter
    streams: set[LiveStream] = field(default_factory=set)
    histogram: Histogram | None = None
    building: asyncio.Future[Histogram] | None = None
    built_at: float = 0.0


class LogView:
    """One stream's source (``writer.Source``): registers it under its filter with the feed."""

    def __init__(self, feed: LogFeed, log_filter: LogFilter) -> None:
        self.feed = feed
        self.filter = log_filter
        self.group: FilterGroup | None = None

    def register(self, stream: LiveStream) -> None:
        self.group = self.feed.join(self.filter, stream)
        stream.position = self.feed.position

    def unregister(self, stream: LiveStream) -> None:
        if self.group is not None:
            self.feed.leave(self.group, stream)
            self.group = None

    def keepalive_id(self, stream: LiveStream) -> str | None:
        """The tail's position: every row up to it has been considered for this stream."""
        return str(max(self.feed.position, stream.floor))


class LogFeed:
    """The process's tail of ``logs`` and everything computed from it (see the module docstring)."""

    def __init__(self, store: Store, metrics: Metrics, settings: LogFeedSettings) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.position = 0  # the greatest log id read (the high-water mark)
        self.started = False  # the first position is known
        self.groups: dict[FilterKey, FilterGroup] = {}
        self._stats: dict[str, int] | None = None
        self._stats_at = float("-inf")
        self._stats_reading: asyncio.Future[dict[str, int]] | None = None
        self._rows_since_stats = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False  # set by close(): the poll loop ends at its next turn, cancelled or not

    # -- streams -----------------------------------------------------------------------------------------
    def view(self, log_filter: LogFilter) -> LogView:
        return LogView(self, log_filter)

    def join(self, log_filter: LogFilter, stream: LiveStream) -> FilterGroup:
        group = self.groups.get(log_filter.key)
        if group is None:
            group = self.groups[log_filter.key] = FilterGroup(log_filter)
        group.streams.add(stream)
        return group

    def leave(self, group: FilterGroup, stream: LiveStream) -> None:
        group.streams.discard(stream)
        if not group.streams and self.groups.get(group.filter.key) is group:
            del self.groups[group.filter.key]  # its histogram goes with it

    @property
    def stream_count(self) -> int:
        return sum(len(g.streams) for g in self.groups.values())

    # -- life ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """End the poll loop. The flag, not only the cancellation: a cancellation can be lost on its way (a
        driver that turns it into a store error, or Python ≤ 3.11's ``asyncio.wait_for``, gh-86296), and the
        loop then ran on for ever — a loaded suite run waited 20 s in ``Services.close`` here."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        """Poll every ``poll_seconds``; refresh stats and send stats and histograms every ``stats_seconds``
        while rows arrive. A store that does not answer is tried again at the next poll."""
        next_stats = time.monotonic() + self.settings.stats_seconds
        while not self._closing:
            try:
                if not self.started:
                    self.position = await self._query("tail", self.store.last_log_id())
                    self.started = True
                else:
                    await self.poll()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + self.settings.stats_seconds
                    await self._interval()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("live log feed: %s; trying again", exc)
            except Exception:
                log.exception("live log feed poll failed")
            await asyncio.sleep(self.settings.poll_seconds)

    async def _query(self, name: str, call: Awaitable[Any]) -> Any:
        self.metrics.log_queries.labels(name).inc()
        return await call

    # -- the tail --------------------------------------------------------------------------------------------
    async def poll(self) -> int:
        """Read and deliver every row after the position; returns how many were read."""
        read = 0
        while True:
            rows = await self._query("tail", self.store.logs_after(self.position, PAGE_ROWS))
            if not rows:
                return read
            self.deliver(rows)
            read += len(rows)
            if len(rows) < PAGE_ROWS:
                return read

    def deliver(self, rows: list[dict[str, Any]]) -> None:
        """Each row tested once per distinct filter, each filter's rows framed once, shared."""
        prepared = [LogRow(doc) for doc in rows]
        last = rows[-1].get("_id")
        now = time.time()
        for group in list(self.groups.values()):
            log_filter, histogram = group.filter, group.histogram
            pairs = [(doc, row) for doc, row in zip(rows, prepared, strict=True) if log_filter.matches(row)]
            if not pairs:
                continue
            if histogram is not None and not histogram.truncated:
                for _doc, row in pairs:
                    histogram.add(row.timestamp())
            for item in self.frames([doc for doc, _row in pairs], now):
                for stream in tuple(group.streams):  # a lagging stream leaves while we deliver
                    stream.put_nowait(item)
        if isinstance(last, int):
            self.position = max(self.position, last)
        self._rows_since_stats += len(rows)

    def frames(self, rows: list[dict[str, Any]], now: float) -> list[Item]:
        """``rows`` as ``logs`` frames of at most ``batch`` rows, each with the id of its last row."""
        batch = self.settings.batch
        items = []
        for at in range(0, len(rows), batch):
            chunk = rows[at : at + batch]
            last = chunk[-1].get("_id")
            seq = last if isinstance(last, int) else 0
            items.append(Item(seq, message("logs", [row_item(doc) for doc in chunk], seq or None), now))
        return items

    # -- stats and histograms ------------------------------------------------------------------------------
    async def _interval(self) -> None:
        """Every ``stats_seconds`` while rows arrive: fresh stats, and each changed histogram, to the streams."""
        if not self._rows_since_stats or not self.groups:
            return
        self._rows_since_stats = 0
        stats = await self.stats(max_age=0.0)
        frame = message("stats", stats)
        for group in list(self.groups.values()):
            extra = []
            histogram = group.histogram
            if histogram is not None and histogram.changed:
                histogram.changed = False
                extra.append(histogram.frame())
            if time.monotonic() - group.built_at > HISTOGRAM_REBUILD_SECONDS and histogram is not None:
                group.histogram = None  # rebuilt at the next interval, or by the next stream to open
                asyncio.ensure_future(self.histogram(group))
            for stream in tuple(group.streams):
                for item in (frame, *extra):
                    stream.put_nowait(Item(0, item, time.time()))

    async def stats(self, max_age: float | None = None) -> dict[str, int]:
        """The four counts, at most ``max_age`` (default ``stats_seconds``) old; concurrent callers share a read."""
        max_age = self.settings.stats_seconds if max_age is None else max_age
        if self._stats is not None and time.monotonic() - self._stats_at <= max_age:
            return self._stats
        if self._stats_reading is None:
            self._stats_reading = asyncio.ensure_future(self._read_stats())
        reading = self._stats_reading
        return await asyncio.shield(reading)

    async def _read_stats(self) -> dict[str, int]:
        try:
            stats: dict[str, int] = await self._query("stats", self.store.log_stats())
            self._stats, self._stats_at = stats, time.monotonic()
            return stats
        finally:
            self._stats_reading = None

    async def histogram(self, group: FilterGroup) -> Histogram:
        """The group's histogram: kept, or built now (once for concurrent callers; bounded in filters)."""
        if group.histogram is not None:
            return group.histogram
        kept = sum(1 for g in self.groups.values() if g.histogram is not None and not g.histogram.truncated)
        if group.building is None and kept >= self.settings.histogram_filters:
            truncated = Histogram(self.settings.histogram_minutes)
            truncated.truncated = True
            group.histogram = truncated
            return truncated
        if group.building is None:
            group.building = asyncio.ensure_future(self._build(group))
        return await asyncio.shield(group.building)

    async def _build(self, group: FilterGroup) -> Histogram:
        """One query: the matching rows' timestamps (and what the exact match needs), counted in memory."""
        log_filter = group.filter
        try:
            position = self.position  # rows after it are counted by the tail
            rows = await self._query(
                "histogram",
                self.store.log_timestamps(
                    {**log_filter.to_mongo(), "_id": {"$lte": position}} if position else log_filter.to_mongo(),
                    list(log_filter.columns),
                    HISTOGRAM_SCAN_ROWS,
                ),
            )
            histogram = Histogram(self.settings.histogram_minutes)
            for doc in rows:
                row = LogRow(doc)
                if log_filter.matches(row):
                    histogram.add(row.timestamp())
            if len(rows) >= HISTOGRAM_SCAN_ROWS:
                log.warning("histogram of %r cut at %d rows", log_filter, HISTOGRAM_SCAN_ROWS)
            histogram.changed = False
            if self.groups.get(log_filter.key) is group:
                group.histogram, group.built_at = histogram, time.monotonic()
            return histogram
        finally:
            group.building = None

    # -- resume ----------------------------------------------------------------------------------------------
    async def replay(self, log_filter: LogFilter, after: int, until: int) -> list[bytes] | int:
        """The frames of the rows of ``log_filter`` in (``after``, ``until``], or — past ``replay_max`` rows
        scanned or the stream's byte bound — the id live rows resume after (the caller sends ``gap``)."""
        if until <= after:
            return []
        rows = await self._query("resume", self.store.logs_after(after, self.settings.replay_max + 1, until=until))
        if len(rows) > self.settings.replay_max:
            return until
        matched = [doc for doc in rows if log_filter.matches(doc)]
        frames = [item.frame for item in self.frames(matched, time.time())]
        if sum(len(frame) for frame in frames) > self.settings.max_frame_bytes:
            return until
        return frames
