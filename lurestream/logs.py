"""Logging set-up: text or one JSON object a line, credentials redacted on every handler.

The access log line is built here (Tornado's ``log_function`` setting) from the redacted URI, so a
``token=`` or ``ticket=`` never reaches it; a refused request is one line (status and reason), not two.
Floods are bounded (protocol §11: bad input costs nothing): lines of the same kind beyond ``FloodFilter``'s
budget are counted and summarised, not written — a flood of refused tickets wrote 60,000 lines in 15 s.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from lurestream.redact import RedactingFilter, redact, redact_url

access_log = logging.getLogger("tornado.access")

_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class FloodFilter(logging.Filter):
    """At most ``rate`` records a second (bursts of ``burst``) per kind; the rest are counted, and the
    next record of that kind that passes says how many were suppressed. Errors always pass.

    A kind is the logger, level and message template — plus the status for access lines, so a flood
    of 401s does not hide a 404.
    """

    def __init__(self, rate: float = 20.0, burst: float = 40.0) -> None:
        super().__init__()
        self.rate = rate
        self.burst = burst
        self._buckets: dict[tuple[Any, ...], list[float]] = {}  # kind -> [tokens, at, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        kind: tuple[Any, ...] = (record.name, record.levelno, record.msg)
        if record.name == access_log.name and isinstance(record.args, tuple) and record.args:
            kind += (record.args[0],)
        now = time.monotonic()
        bucket = self._buckets.get(kind)
        if bucket is None:
            if len(self._buckets) > 10_000:  # kinds are few; never let them grow without bound
                self._buckets.clear()
            bucket = self._buckets[kind] = [self.burst, now, 0.0]
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if bucket[0] < 1.0:
            bucket[2] += 1
            return False
        bucket[0] -= 1.0
        if bucket[2]:
            record.msg = f"{record.getMessage()} ({int(bucket[2])} similar lines suppressed)"
            record.args = None
            bucket[2] = 0
        return True


class Throttled:
    """One source's warnings, at most one line per ``interval`` seconds; the next line that is written
    says how many were held back.

    For a source that knows its own repeat rate — a bus that stays down is worth a line a minute
    (protocol §11), a stream of malformed messages a line every ten seconds. ``FloodFilter`` is the
    safety net behind it for everything else.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar lines suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        self.logger.warning(msg, *args)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` request fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_"))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream: Any = None) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(FloodFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("nats").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("pymongo").setLevel(max(root.level, logging.WARNING))


def access_log_function(handler: Any) -> None:
    """Tornado's per-request log line, with the URI redacted and request fields for JSON logs."""
    status = handler.get_status()
    if status < 400:
        log_method = access_log.info
    elif status < 500 or status == 503:  # a 503 is an answer (not ready, store unreachable), not a fault:
        log_method = access_log.warning  # warnings are flood-limited, errors always pass
    else:
        log_method = access_log.error
    request = handler.request
    duration_ms = 1000.0 * request.request_time()
    path = redact_url(request.uri or "")
    identity = getattr(handler, "identity", None)
    extra = {
        "method": request.method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 2),
        "remote_ip": request.remote_ip,
    }
    if identity is not None:
        extra["user_uuid"] = identity.uuid
    refusal = getattr(handler, "refusal", None)
    if refusal:
        extra["reason"] = refusal
        log_method(
            "%d %s %s (%s) %.2fms: %s",
            status,
            request.method,
            path,
            request.remote_ip,
            duration_ms,
            redact(refusal),
            extra=extra,
        )
        return
    log_method("%d %s %s (%s) %.2fms", status, request.method, path, request.remote_ip, duration_ms, extra=extra)
