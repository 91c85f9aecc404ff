"""GET /api/v1/stream: the live log feed (protocol §15), on the same lifecycle as every stream.

Query: ``search`` (DECNET's language, ``logsearch``), ``start_time`` / ``end_time`` (ISO-8601),
``lastEventId`` (a log id; the ``Last-Event-ID`` header wins). A bad value is a 400 before any stream.
The stream opens with ``stats`` and ``histogram``, then a resume's rows (or a ``gap``), then live rows
from the process's one tail (``logfeed.py``); frames are ``event: message`` with ``{"type", "data"}``.
"""

from __future__ import annotations

import logging
from typing import Any

from lurestream import sse
from lurestream.handlers.base import ApiError
from lurestream.handlers.stream import LiveHandler
from lurestream.logfeed import LogFeed, LogView, message
from lurestream.logsearch import LogFilter, SearchError, parse_search, parse_time
from lurestream.services import Services
from lurestream.store import StoreUnavailable
from lurestream.writer import ERROR, SNAPSHOT_FAILED, LiveStream

log = logging.getLogger("lurestream.logfeed")

MAX_LOG_ID_DIGITS = 19


class LogStreamHandler(LiveHandler):
    label = "logs"
    resume_query = "lastEventId"  # DECNET's name

    async def serve(self, *args: str) -> None:
        log_filter = self._filter()
        after = self._after()
        feed: LogFeed = self.services.logs
        life = self.admit()
        view = feed.view(log_filter)
        live = self.go_live(life, view, [], "logs")
        if live is None:
            return
        try:
            await self._open(feed, view, live, after)
        except StoreUnavailable as exc:
            log.warning("live log feed opening failed: %s", exc)
            live.end(SNAPSHOT_FAILED, sse.ERROR_FRAME)
        except Exception:
            log.exception("live log feed failed while opening")
            live.end(ERROR, sse.ERROR_FRAME)

    def _filter(self) -> LogFilter:
        """``search``, ``start_time``, ``end_time`` as one filter, or a 400 naming what is wrong."""
        config = self.config
        search = self.get_query_argument("search", "") or ""
        bounds = {}
        for name in ("start_time", "end_time"):
            value = self.get_query_argument(name, "") or ""
            try:
                if len(value) > 64:
                    raise SearchError("too long")
                bounds[name] = parse_time(value) if value.strip() else None
            except SearchError:
                raise ApiError(400, f"{name} must be an ISO-8601 time, e.g. 2026-12-05T12:00:00Z") from None
        try:
            return parse_search(
                search,
                start=bounds["start_time"],
                end=bounds["end_time"],
                max_length=config.log_search_max_length,
            )
        except SearchError as exc:
            raise ApiError(400, str(exc)) from None

    def _after(self) -> int | None:
        """The resume point: a log id (1-19 ASCII digits), from the header or ``lastEventId``; else None."""
        raw = self.last_event_id()
        if raw is None:
            return None
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_LOG_ID_DIGITS):
            raise ApiError(400, "lastEventId must be a log id (digits)")
        return int(raw)

    async def _open(self, feed: LogFeed, view: LogView, live: LiveStream, after: int | None) -> None:
        """``stats`` and ``histogram`` at once; a resume's rows (or a ``gap``); then live."""
        opening = [message("stats", await feed.stats())]
        assert view.group is not None
        opening.append((await feed.histogram(view.group)).frame())
        if after is not None:
            until = live.position or 0
            replay = await feed.replay(view.filter, after, until)
            if isinstance(replay, int):  # too long to replay: say so, and go on from the registration
                opening.append(message("gap", {"after": after, "resumed_at": replay}, replay))
            else:
                opening.extend(replay)
        live.go_live(opening, 0)


def handlers(services: Services) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/api/v1/stream", LogStreamHandler, {"services": services})]
