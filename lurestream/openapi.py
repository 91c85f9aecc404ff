"""The OpenAPI 3.1 description of lurestream's HTTP API (served at ``GET /api/v1/openapi.json``), generated
from what the code knows (issue #17: one place for each fact).

Tornado keeps no schema of its routes, so a hand-written document drifted from the code: a route added,
a method or credential changed, a bound moved in ``config.py``, and the document kept saying the old
thing. Here every fact the code holds is read from the code, and only what it cannot say is written by hand:

- **paths** — the route table the server runs (``make_app``'s router, via :func:`routes_of`): each route's
  regex reversed into a path template (``PathMatches.reverse``), its groups named by the hand-written entry
  whose template has the same shape (or, for a stream kind, by its ``KIND_DOCS`` entry);
- **methods** — ``allowed_methods()`` (the methods a handler overrides, what a 405's ``Allow`` says): a HEAD
  twin of the GET without bodies, and ``OPTIONS`` (BaseHandler's CORS preflight) where the handler answers it;
- **security** — the handler's credential flags (``auth_required`` or ``auth_methods``, ``accept_ticket``,
  ``accept_session``, ``accept_query_token``, ``fresh_credentials``): the schemes, the ``?ticket=``/``?token=``
  parameters, the 401/403 (and the 503 of a store that did not answer the credential look-up);
- **streams** — ``LiveHandler``: the SSE 200, the cap's 429, the store's 503, the *waiting* answer (protocol
  §16), the resume parameters (``Last-Event-ID`` and the query parameter ``resume_query`` names) and the
  frames every stream sends itself (``end`` with ``writer``'s reasons, ``error`` as ``sse``
  encodes it, ``unavailable``); a bus stream's kind (``kinds.py``): its 404, its scope parameters, its fixed
  event names, the reserved names (``routing.RESERVED_NAMES``) no live event may take, its id format
  (``eventids``);
- **bounds** — ``SETTINGS``' defaults, through :class:`Bounds`, so no number is written twice (the document
  names the setting and its default; ``tests/test_openapi.py`` rebuilds it with other defaults and finds no
  stale number).

Written by hand, because no code says it: operation names and summaries, the JSON bodies of answers and the
data of stream events (``SCHEMAS``, ``KIND_DOCS``, ``OPERATIONS``, keyed by kind or by path template). An
entry whose route does not exist is not emitted (so a path can be written before its handler lands); a route
without an entry stops the generator with :class:`Undocumented`, so the document can never silently lack one.

Conventions: every error is ``{"detail": <string>}`` as ``application/json`` (protocol §1) with
``X-Content-Type-Options: nosniff``; the HTTP edge's answers (protocol §11: 400, 405, 408, 411, 413, 414,
429, 431) can come from any path, so every operation lists them; a stream's body is described per event
(OpenAPI 3.1 ``text/event-stream``: each event an object with ``event``, ``data``, ``id``, ``retry``), the
JSON in ``data`` by ``contentSchema``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.routing import PathMatches

from lurestream import __version__, eventids, sse
from lurestream.config import SETTINGS, Setting
from lurestream.handlers.base import SESSION_COOKIE, BaseHandler, allowed_methods
from lurestream.handlers.directory import DEFAULT_LIMIT, MAX_LIMIT, MAX_QUERY_LENGTH, QUERY_PUNCTUATION
from lurestream.handlers.stream import LiveHandler, StreamHandler
from lurestream.kinds import SNAPSHOT_SIZE, StreamKind
from lurestream.routing import RESERVED_NAMES
from lurestream.writer import EXPIRED, FORBIDDEN, REVOKED

JSON = "application/json"
SSE = "text/event-stream"

Schema = dict[str, Any]
Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]  # as ``all_handlers`` returns them


class Undocumented(LookupError):
    """A route, method or setting the document needs a hand-written entry (or a setting) for."""


# -- the settings the document quotes --------------------------------------------------------------------
class Bounds:
    """``SETTINGS`` as the document quotes them: every bound is the setting's default, parsed by the
    setting's own parser, and every mention names the setting with that default. A test builds the
    document from other defaults and checks that no old number stays behind."""

    def __init__(self, settings: Iterable[Setting]) -> None:
        self._settings = {s.name: s for s in settings}

    def setting(self, name: str) -> Setting:
        try:
            return self._settings[name]
        except KeyError:
            raise Undocumented(f"the OpenAPI document quotes LURESTREAM_{name.upper()}, which SETTINGS lacks") from None

    def value(self, name: str) -> Any:
        """The setting's default, as the server would read it (``4KiB`` → 4096)."""
        setting = self.setting(name)
        return setting.parse(setting.default)

    def mention(self, name: str) -> str:
        """```LURESTREAM_X`` (default D)``: how the document's prose names a setting."""
        setting = self.setting(name)
        return f"`{setting.env}` (default {setting.default or 'empty'})"


# -- small builders ----------------------------------------------------------------------------------------
def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(description: str, schema: Schema, **headers: Schema) -> Schema:
    """A JSON response: ``X-Content-Type-Options: nosniff`` (protocol §11) plus ``headers``."""
    return {
        "description": description,
        "headers": {"X-Content-Type-Options": _ref("headers", "NoSniff"), **headers},
        "content": {JSON: {"schema": schema}},
    }


def _error(description: str, **headers: Schema) -> Schema:
    return _json(description, _ref("schemas", "Error"), **headers)


NO_STORE = {"Cache-Control": {"required": True, "schema": {"const": "no-store"}}}


def _frame_data(frame: bytes) -> Any:
    """The JSON of a frame's ``data:`` line (for the frames ``sse`` encodes as constants)."""
    for line in frame.decode("utf-8").splitlines():
        if line.startswith("data: "):
            return json.loads(line[len("data: ") :])
    raise ValueError(f"no data in {frame!r}")


def _event(name: Schema, data: Schema, event_id: str) -> Schema:
    """One SSE event as a client parses it: ``event`` (``message`` when the frame names none), ``data``
    (one line of JSON), the last ``id`` seen (EventSource carries it to later events), a ``retry`` hint."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "additionalProperties": False,
        "properties": {
            "event": name,
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
            "id": _ref("schemas", event_id),
            "retry": {"type": "integer", "minimum": 0, "description": "Milliseconds to wait before reconnecting."},
        },
    }


def _own_events(event_id: str) -> list[Schema]:
    """The frames every stream sends itself, whatever its source (``LiveHandler`` and the live writer)."""
    return [
        _event({"const": "end"}, _ref("schemas", "StreamEnd"), event_id),
        _event({"const": "error"}, _ref("schemas", "StreamError"), event_id),
        _event({"const": "unavailable"}, _ref("schemas", "Unavailable"), event_id),
    ]


def _capitalized(name: str) -> str:
    return name[:1].upper() + name[1:]


# -- what no code says: bodies and event data ---------------------------------------------------------------
RESUMED_FALSE = {"const": False, "description": "Present when a resume was not possible: rebuild from this."}


def _newest(data_key: str) -> Schema:
    """A firehose's snapshot (protocol §14): the newest documents of its collection."""
    return {
        "type": "object",
        "required": [data_key],
        "additionalProperties": False,
        "properties": {
            data_key: {
                "type": "array",
                "maxItems": SNAPSHOT_SIZE,
                "description": "The newest documents, newest first; `_id` renamed `id`, dates ISO-8601.",
                "items": {"type": "object", "required": ["id"]},
            },
            "resumed": RESUMED_FALSE,
        },
    }


SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["detail"],
        "additionalProperties": False,
        "properties": {"detail": {"type": "string"}},
    },
    "Ticket": {
        "type": "object",
        "required": ["ticket", "expires_in"],
        "additionalProperties": False,
        "properties": {
            "ticket": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$", "description": "32 random bytes."},
            "expires_in": {"type": "integer", "minimum": 1, "description": "Seconds."},
        },
    },
    "AttackerItem": {
        "type": "object",
        "required": ["uuid", "ip", "identity_id", "score", "last_seen"],
        "properties": {
            "uuid": {"type": "string"},
            "ip": {"type": ["string", "null"]},
            "identity_id": {"type": ["string", "null"]},
            "score": {"type": ["number", "null"], "description": "As stored; null when it is not a finite number."},
            "last_seen": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When the attacker was last active (ISO-8601 with its offset); null when never.",
            },
        },
    },
    "TopologyItem": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": {"type": ["string", "null"]}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"const": "ok"}},
    },
    "Ready": {
        "type": "object",
        "required": ["status", "store", "bus", "events", "cap"],
        "properties": {
            "status": {"const": "ready"},
            "store": {"const": "ok"},
            "bus": {"enum": ["connected", "disabled"]},
            "events": {"type": "string", "description": "`ok`, or `off` without JetStream (no event ids)."},
            "cap": {"enum": ["cluster", "local"], "description": "the per-user cap counts every process, or this one"},
        },
    },
    "NotReady": {
        "type": "object",
        "required": ["detail", "store", "bus", "events", "cap"],
        "properties": {
            "detail": {"type": "string", "pattern": "^not ready: "},
            "store": {"enum": ["ok", "down"]},
            "bus": {"enum": ["connected", "disconnected", "disabled"]},
            "events": {"type": "string"},
            "cap": {"enum": ["cluster", "local"]},
        },
    },
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
    },
    # the frames of every stream
    "EventId": {
        "type": "string",
        "pattern": f"^[a-z2-7]{{{eventids.EPOCH_LENGTH}}}-[0-9]{{1,{eventids.MAX_SEQUENCE_DIGITS}}}$",
        "description": "`<epoch>-<JetStream sequence>` (only with `LURESTREAM_JETSTREAM`): opaque to clients.",
    },
    "Resumed": {
        "type": "object",
        "required": ["last_event_id", "replayed"],
        "additionalProperties": False,
        "properties": {"last_event_id": _ref("schemas", "EventId"), "replayed": {"type": "integer", "minimum": 0}},
    },
    "StreamError": {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {"message": {"const": _frame_data(sse.ERROR_FRAME)["message"]}},
    },
    "StreamEnd": {
        "type": "object",
        "required": ["reason"],
        "additionalProperties": False,
        "description": "The credential no longer holds (protocol §12): the client is signed out, no reconnect.",
        "properties": {"reason": {"enum": [EXPIRED, REVOKED, FORBIDDEN]}},
    },
    "Unavailable": {
        "type": "object",
        "required": ["status", "detail", "retry_ms"],
        "additionalProperties": False,
        "description": "The waiting answer (protocol §16): the refusal a non-SSE client would get, and the wait.",
        "properties": {
            "status": {"enum": [429, 503], "description": "The status the refusal would have had."},
            "detail": {"type": "string", "description": "Its `detail`: `Store unavailable`, `Server busy`, …"},
            "retry_ms": {"type": "integer", "minimum": 0, "description": "The wait; the `retry:` hint says it too."},
        },
    },
    "LiveEvent": {
        "type": "object",
        "required": ["topic", "type", "ts", "payload"],
        "additionalProperties": False,
        "properties": {
            "topic": {"type": "string", "description": "The full NATS subject."},
            "type": {"type": "string"},
            "ts": {"type": "number"},
            "payload": {"type": "object"},
        },
    },
    # the bus streams' snapshots (protocol §3, §4, §14)
    "AttackerSnapshot": {
        "type": "object",
        "required": ["attacker_uuid", "observations"],
        "properties": {
            "attacker_uuid": {"type": "string"},
            "observations": {
                "type": "array",
                "description": "Per primitive the observation with the greatest `ts`, by primitive; values as stored.",
                "items": {"type": "object", "required": ["primitive", "value", "confidence", "ts", "source"]},
            },
            "resumed": RESUMED_FALSE,
        },
    },
    "TopologySnapshot": {
        "type": "object",
        "required": ["topology_id", "status", "in_flight"],
        "properties": {
            "topology_id": {"type": "string"},
            "status": {"description": "The topology's status, as stored."},
            "in_flight": {
                "type": "array",
                "description": "`pending` mutations newest first, then `applying` newest first; `_id` renamed `id`.",
                "items": {"type": "object", "required": ["id"]},
            },
            "resumed": RESUMED_FALSE,
        },
    },
    "IdentitiesSnapshot": _newest("identities"),
    "CampaignsSnapshot": _newest("campaigns"),
    "OrchestratorSnapshot": _newest("events"),
}


@dataclass(frozen=True)
class KindDoc:
    """What ``kinds.py`` cannot say about a stream kind: how its path's id is named and described, and its
    snapshot's data (``#/components/schemas/<snapshot>``)."""

    snapshot: str
    parameter: str | None = None  # ``#/components/parameters/<parameter>``, for a kind with an id


KIND_DOCS: dict[str, KindDoc] = {
    "attacker": KindDoc("AttackerSnapshot", "AttackerUuid"),
    "topology": KindDoc("TopologySnapshot", "TopologyId"),
    "identities": KindDoc("IdentitiesSnapshot"),
    "campaigns": KindDoc("CampaignsSnapshot"),
    "orchestrator": KindDoc("OrchestratorSnapshot"),
}


@dataclass(frozen=True)
class Operation:
    """What the code cannot say about one operation. The generator adds what it can: the path's
    parameters, the credential parameters and schemes, the auth, stream and edge answers, a HEAD twin and
    the CORS preflight."""

    id: str
    summary: str
    responses: Mapping[str, Schema] = field(default_factory=dict)  # the handler's own answers
    description: str = ""
    parameters: tuple[Schema, ...] = ()
    tag: str = "operations"
    events: str | None = None  # a stream: ``#/components/schemas/<events>`` describes one of its events
    resume: Schema | None = None  # a stream: its resume point's description and schema (the name is the code's)
    schemas: Mapping[str, Schema] = field(default_factory=dict)  # components it brings (built with the bounds)


def _static_file_responses(media_types: Sequence[str]) -> dict[str, Schema]:
    return {
        "200": {
            "description": "The file.",
            "headers": {"X-Content-Type-Options": _ref("headers", "NoSniff")},
            "content": {media_type: {"schema": {"type": "string"}} for media_type in media_types},
        },
        "304": {"description": "Not modified since the copy the client holds."},
    }


def _list_operation(
    kind: str, item: str, order: str = "by id", parameters: tuple[Schema, ...] = (), refused: str = ""
) -> Callable[[Bounds], dict[str, Operation]]:
    def operations(b: Bounds) -> dict[str, Operation]:
        body = {
            "type": "object",
            "required": ["items"],
            "additionalProperties": False,
            "properties": {"items": {"type": "array", "maxItems": MAX_LIMIT, "items": _ref("schemas", item)}},
        }
        return {
            "get": Operation(
                id=f"list{_capitalized(kind)}",
                summary=f"A short list of {kind} for the dashboard's picker, {order}",
                tag="directory",
                parameters=(_ref("parameters", "Limit"), *parameters),
                responses={
                    "200": _json(f"Up to `limit` {kind}, {order}.", body, **NO_STORE),
                    "400": _error(
                        f"`limit` is not a whole number from 1 to {MAX_LIMIT}{refused}, or the request is malformed."
                    ),
                },
            )
        }

    return operations


def _ticket(b: Bounds) -> dict[str, Operation]:
    return {
        "post": Operation(
            id="mintTicket",
            summary="Trade a Bearer JWT for a single-use stream ticket (protocol §5.3)",
            description=f"The ticket opens one stream within `expires_in` seconds ({b.mention('ticket_ttl_seconds')}).",
            tag="auth",
            responses={
                "200": _json("A fresh ticket.", _ref("schemas", "Ticket"), **NO_STORE),
                "429": _ref("responses", "TooManyMints"),
            },
        )
    }


def _session(b: Bounds) -> dict[str, Operation]:
    cookie = {"Set-Cookie": _ref("headers", "SessionCookie"), **NO_STORE}
    return {
        "post": Operation(
            id="openSession",
            summary="Trade a Bearer JWT for a browser session cookie (protocol §12)",
            description=(
                f"Sets `{SESSION_COOKIE}` (HttpOnly, SameSite=Strict, Path=/api/v1/, Max-Age up to the JWT's expiry, "
                f"at most {b.mention('session_max_seconds')} seconds); a native EventSource then reconnects with "
                "`Last-Event-ID` by itself. A JWT that expires within the second is a 401."
            ),
            tag="auth",
            responses={
                "204": {"description": "The session cookie is set.", "headers": cookie},
                "429": _ref("responses", "TooManyMints"),
            },
        ),
        "delete": Operation(
            id="closeSession",
            summary="End the browser session: remove it and clear the cookie (protocol §12)",
            description="Needs no credentials: the cookie it ends, if any. The cookie is cleared either way.",
            tag="auth",
            parameters=(_ref("parameters", "SessionCookie"),),
            responses={
                "204": {"description": "The session is gone, the cookie cleared.", "headers": cookie},
                "503": _ref("responses", "StoreUnavailable"),
            },
        ),
    }


def _log_feed_schemas(b: Bounds) -> dict[str, Schema]:
    """The frames of the live log feed (protocol §15): ``message`` events whose data is ``{"type", "data"}``."""

    def message(type_: str, data: Schema, **extra: Schema) -> Schema:
        return {
            "type": "object",
            "required": ["type", "data"],
            "additionalProperties": False,
            "properties": {"type": {"const": type_}, "data": data, **extra},
        }

    log_id = {"type": "integer", "minimum": 0, "description": "A log id (`logs._id`)."}
    return {
        "LogEventId": {"type": "string", "pattern": "^[0-9]+$", "description": "A log id: the greatest row id sent."},
        "LogStats": {
            "type": "object",
            "required": ["total_logs", "unique_attackers", "active_deckies", "deployed_deckies"],
            "description": "Counts over every log and decky (not filtered).",
            "properties": {
                "total_logs": {"type": "integer", "minimum": 0},
                "unique_attackers": {"type": "integer", "minimum": 0},
                "active_deckies": {"type": "integer", "minimum": 0},
                "deployed_deckies": {"type": "integer", "minimum": 0},
            },
        },
        "LogBucket": {
            "type": "object",
            "required": ["time", "count"],
            "properties": {
                "time": {"type": "string", "description": "The bucket's start, ISO-8601 UTC."},
                "count": {"type": "integer", "minimum": 1},
            },
        },
        "LogRow": {
            "type": "object",
            "required": ["id"],
            "description": "A stored `logs` document, `_id` renamed `id`, dates ISO-8601, other fields as stored.",
            "properties": {
                "id": log_id,
                "timestamp": {"type": "string"},
                "fields": {"type": ["object", "string"], "description": "An object, or JSON text, as stored."},
            },
        },
        "LogMessage": {
            "description": 'The data of a `message` frame: `{"type", "data"}` (DECNET\'s shape).',
            "oneOf": [
                message("stats", _ref("schemas", "LogStats")),
                message(
                    "histogram",
                    {
                        "type": "array",
                        "items": _ref("schemas", "LogBucket"),
                        "description": (
                            f"The matching rows per {b.mention('log_histogram_minutes')} minutes, ascending, "
                            "empty buckets left out."
                        ),
                    },
                    truncated={
                        "const": True,
                        "description": (
                            f"The process keeps histograms for {b.mention('log_histogram_filters')} distinct "
                            "filters: this one came past them, and its histogram is empty."
                        ),
                    },
                ),
                message(
                    "logs",
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": b.value("log_batch"),
                        "items": _ref("schemas", "LogRow"),
                        "description": f"New rows, ascending id; at most {b.mention('log_batch')} a frame.",
                    },
                ),
                message(
                    "gap",
                    {
                        "type": "object",
                        "required": ["after", "resumed_at"],
                        "additionalProperties": False,
                        "description": (
                            f"More than {b.mention('log_replay_max')} rows were missed: they are not replayed; "
                            "the rows after `resumed_at` follow."
                        ),
                        "properties": {"after": log_id, "resumed_at": log_id},
                    },
                ),
            ],
        },
        "LogStreamEvent": {
            "description": "One event of the live log feed: a `message`, or a frame of the stream's own.",
            "oneOf": [
                _event({"const": "message"}, _ref("schemas", "LogMessage"), "LogEventId"),
                *_own_events("LogEventId"),
            ],
        },
    }


def _log_feed(b: Bounds) -> dict[str, Operation]:
    """``GET /api/v1/stream`` (protocol §15)."""
    time_bound = "ISO-8601 (`T` or a space; `Z`, an offset, or none meaning UTC; a date alone its midnight UTC)"
    return {
        "get": Operation(
            id="logStream",
            summary="SSE stream of every decky's interaction log, with summary counts and a histogram (protocol §15)",
            description=(
                'Frames are `message` events whose data is `{"type", "data"}`: `stats` and `histogram` at once, '
                f"and again every {b.mention('log_stats_seconds')} s while rows arrive; `logs`, the new matching "
                "rows (`id:` the greatest of them); `gap` when a resume would replay too many rows. Idle "
                "keepalives carry `id:` too. An empty parameter is absent."
            ),
            tag="streams",
            events="LogStreamEvent",
            schemas=_log_feed_schemas(b),
            resume={
                "description": "Resume after this log id (DECNET's parameter); the `Last-Event-ID` header wins.",
                "schema": {"type": "string", "pattern": "^[0-9]*$"},
            },
            parameters=(
                {
                    "name": "search",
                    "in": "query",
                    "description": (
                        "DECNET's search language: `key:value` terms and bare words, every one must match; at "
                        f"most {b.mention('log_search_max_length')} characters."
                    ),
                    "schema": {"type": "string", "maxLength": b.value("log_search_max_length")},
                },
                {
                    "name": "start_time",
                    "in": "query",
                    "description": f"Only rows at or after this instant: {time_bound}.",
                    "schema": {"type": "string"},
                },
                {
                    "name": "end_time",
                    "in": "query",
                    "description": f"Only rows at or before this instant: {time_bound}.",
                    "schema": {"type": "string"},
                },
            ),
            responses={
                "400": _error(
                    "A bad `search`, `start_time` or `end_time`, a resume point (the query's or `Last-Event-ID`) "
                    "that is not a log id, or a malformed request."
                )
            },
        )
    }


# Keyed by path template as protocol §1 writes it; ``{name}`` names the route's groups in order.
OPERATIONS: dict[str, Callable[[Bounds], dict[str, Operation]]] = {
    "/api/v1/stream": _log_feed,
    "/api/v1/auth/sse-ticket": _ticket,
    "/api/v1/auth/sse-session": _session,
    "/api/v1/attackers": _list_operation(
        "attackers",
        "AttackerItem",
        "most recently active first (`last_seen` descending, never seen last, ties by uuid)",
        (_ref("parameters", "AttackerQuery"),),
        ", `q` is not an ip or attacker id fragment",
    ),
    "/api/v1/topologies": _list_operation("topologies", "TopologyItem"),
    "/api/v1/openapi.json": lambda b: {
        "get": Operation(
            "openapi", "This document", {"200": _json("The OpenAPI 3.1 document.", _ref("schemas", "OpenApiDocument"))}
        )
    },
    "/healthz": lambda b: {
        "get": Operation(
            "health",
            "Liveness: 200 while the process serves",
            {"200": _json("The process serves.", _ref("schemas", "Health"))},
        )
    },
    "/readyz": lambda b: {
        "get": Operation(
            "ready",
            "Readiness: MongoDB answers, the bus is connected (or disabled), the event stream stores, not draining",
            {
                "200": _json("Ready.", _ref("schemas", "Ready")),
                "503": _json("Not ready: `detail` names what is down (or `draining`).", _ref("schemas", "NotReady")),
            },
        )
    },
    "/metrics": lambda b: {
        "get": Operation(
            "metrics",
            "Prometheus metrics, text exposition format (unauthenticated like the probes: expose it to the scraper)",
            {
                "200": {
                    "description": "The exposition.",
                    "headers": {"X-Content-Type-Options": _ref("headers", "NoSniff")},
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    },
    "/": lambda b: {
        "get": Operation("dashboard", "The live dashboard page", _static_file_responses(["text/html"]), tag="dashboard")
    },
    "/static/{file}": lambda b: {
        "get": Operation(
            "staticFile",
            "The dashboard's static files",
            {
                **_static_file_responses(["text/html", "text/css", "text/javascript", "application/javascript"]),
                "404": _error("No such file: unknown or malformed name."),
            },
            tag="dashboard",
        )
    },
}

PATH_PARAMETERS: dict[str, str] = {  # a path template's ``{name}`` → ``#/components/parameters/<...>``
    "file": "StaticFile",
}

TAGS = {
    "streams": "Server-Sent Events streams (protocol §2–§4, §7, §14–§16)",
    "auth": "Stream tickets and browser sessions (protocol §5.3, §12)",
    "directory": "Short lists for the dashboard's pickers",
    "operations": "Probes, metrics and this document",
    "dashboard": "The live dashboard page and its files",
}


# -- components that quote settings ------------------------------------------------------------------------
def _parameters(b: Bounds) -> dict[str, Schema]:
    return {
        "AttackerUuid": {
            "name": "attacker_uuid",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "example": "3f6c2a9e-8b1d-4e7a-9c5f-2d4b6a8e0c1f",
            "description": "The attacker's `_id` in MongoDB `attackers`.",
        },
        "TopologyId": {
            "name": "topology_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "example": "edge-lab",
            "description": "The topology's `_id` in MongoDB `topologies`.",
        },
        "StaticFile": {
            "name": "file",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "example": "dashboard.css",
            "description": "A file of the dashboard (flat names only).",
        },
        "Ticket": {
            "name": "ticket",
            "in": "query",
            "schema": {"type": "string"},
            "description": "A stream ticket; any attempt uses it up.",
        },
        "Token": {
            "name": "token",
            "in": "query",
            "schema": {"type": "string"},
            "description": (
                "A JWT (DECNET's original form; refused when `LURESTREAM_ALLOW_QUERY_TOKEN` is false); a ticket "
                "or a session keeps long-lived JWTs out of URLs and logs."
            ),
        },
        "SessionCookie": {
            "name": SESSION_COOKIE,
            "in": "cookie",
            "schema": {"type": "string"},
            "description": "The browser session to end.",
        },
        "LastEventIdHeader": {
            "name": "Last-Event-ID",
            "in": "header",
            "schema": {"type": "string"},
            "description": "Resume after this event id (what EventSource sends when it reconnects).",
        },
        "Limit": {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "description": "How many items at most.",
        },
        "AttackerQuery": {
            "name": "q",
            "in": "query",
            "schema": {
                "type": "string",
                "maxLength": MAX_QUERY_LENGTH,
                "pattern": f"^[A-Za-z0-9{re.escape(QUERY_PUNCTUATION)}]*$",
            },
            "description": "Only attackers whose ip or uuid contains this text (case-insensitive, a literal).",
        },
    }


def _headers(b: Bounds) -> dict[str, Schema]:
    return {
        "NoSniff": {"required": True, "schema": {"const": "nosniff"}},
        "WwwAuthenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}},
        "Allow": {"required": True, "description": "The methods the path has.", "schema": {"type": "string"}},
        "RetryAfter": {
            "required": True,
            "description": "Seconds to wait.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "SessionCookie": {"required": True, "schema": {"type": "string", "pattern": f"^{SESSION_COOKIE}="}},
    }


def _responses(b: Bounds) -> dict[str, Schema]:
    retry_after = {"Retry-After": _ref("headers", "RetryAfter")}
    preflight_header = {"required": True, "schema": {"type": "string"}}
    return {
        # the HTTP edge (protocol §11), on any path
        "BadRequest": _error("A malformed request line or headers, an invalid `Content-Length`, or text not UTF-8."),
        "MethodNotAllowed": _error("The path has no such method.", Allow=_ref("headers", "Allow")),
        "RequestTimeout": _error(f"Headers (and body) not received within {b.mention('header_timeout_seconds')} s."),
        "LengthRequired": _error("A request body without `Content-Length` (`Transfer-Encoding`)."),
        "PayloadTooLarge": _error(f"A body over {b.mention('max_body_bytes')} bytes, refused before it is read."),
        "UriTooLong": _error(f"Path and query over {b.mention('max_url_bytes')} bytes: `URI too long`."),
        "TooManyConnections": _error(
            f"The client address holds {b.mention('max_connections_per_ip')} connections (`0`: no bound).",
            **retry_after,
        ),
        "HeaderFieldsTooLarge": _error(
            f"Request line and headers over {b.mention('max_header_bytes')} bytes: `Request header fields too large`."
        ),
        # credentials (protocol §5)
        "Unauthorized": _error(
            "No, or bad, credentials: `Not authenticated`, `Could not validate credentials`, `Invalid or expired "
            "ticket`, `Invalid or expired session`.",
            **{"WWW-Authenticate": _ref("headers", "WwwAuthenticate")},
        ),
        "Forbidden": _error(
            f"`Insufficient permissions` (a role outside {b.mention('stream_roles')}) or "
            "`Password change required before accessing this resource`."
        ),
        "StoreUnavailable": _error(
            f"MongoDB did not answer within {b.mention('mongo_timeout_ms')} ms: `Store unavailable`.", **retry_after
        ),
        "TooManyMints": _error(
            f"`Too many ticket requests`: over {b.mention('mint_rate')} ticket and session mints for the user on "
            "this process (or too many connections from the client address).",
            **retry_after,
        ),
        "Preflight": {
            "description": "A CORS preflight, answered without credentials (the request itself still needs them).",
            "headers": {
                "X-Content-Type-Options": _ref("headers", "NoSniff"),
                "Access-Control-Allow-Methods": preflight_header,
                "Access-Control-Allow-Headers": preflight_header,
                "Access-Control-Max-Age": {"required": True, "schema": {"type": "integer", "minimum": 0}},
            },
        },
    }


def _security_schemes(b: Bounds) -> dict[str, Schema]:
    return {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "ticket": {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A single-use stream ticket from `POST /api/v1/auth/sse-ticket` (streams only).",
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": SESSION_COOKIE,
            "description": "The browser session of `POST /api/v1/auth/sse-session`.",
        },
        "queryToken": {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": f"The JWT in the URL; refused when {b.mention('allow_query_token')} is false.",
        },
    }


EDGE_STATUSES = {
    "400": "BadRequest",
    "405": "MethodNotAllowed",
    "408": "RequestTimeout",
    "411": "LengthRequired",
    "413": "PayloadTooLarge",
    "414": "UriTooLong",
    "429": "TooManyConnections",
    "431": "HeaderFieldsTooLarge",
}


def _with_edge(responses: Mapping[str, Schema]) -> dict[str, Schema]:
    """An operation's own responses plus what the HTTP edge may answer instead (protocol §11), by status."""
    merged = {**{status: _ref("responses", name) for status, name in EDGE_STATUSES.items()}, **responses}
    return {status: merged[status] for status in sorted(merged)}


# -- facts from the handlers ----------------------------------------------------------------------------------
def routes_of(app: tornado.web.Application) -> list[Route]:
    """The route table an Application serves (what ``make_app`` built from ``all_handlers``), in order."""
    routes: list[Route] = []
    for rule in app.wildcard_router.rules:
        handler = rule.target
        if not (isinstance(rule.matcher, PathMatches) and isinstance(handler, type)):
            raise Undocumented(f"cannot document the route {rule!r}: not a path and a handler class")
        routes.append((rule.matcher.regex.pattern, handler, dict(rule.target_kwargs)))
    return routes


def methods_of(handler: type[tornado.web.RequestHandler]) -> list[str]:
    """``allowed_methods`` of a handler class (it reads only the class: an instance without a request)."""
    return allowed_methods(handler.__new__(handler))


def needs_credentials(handler: type[tornado.web.RequestHandler], method: str) -> bool:
    """Whether ``method`` needs credentials: ``auth_methods`` when a handler decides per method, else
    ``auth_required``; never a CORS preflight (``BaseHandler.prepare``)."""
    if method == "OPTIONS":
        return False
    per_method: Iterable[str] | None = getattr(handler, "auth_methods", None)
    if per_method is not None:
        return method in per_method
    return bool(getattr(handler, "auth_required", False))


def security_schemes(handler: type[tornado.web.RequestHandler], method: str) -> list[str]:
    """The credentials ``method`` accepts, in the order ``BaseHandler._authenticate`` tries them."""
    if not needs_credentials(handler, method):
        return []
    flags = (
        ("ticket", "accept_ticket"),
        ("session", "accept_session"),
        ("queryToken", "accept_query_token"),
    )
    return ["bearer", *(scheme for scheme, flag in flags if getattr(handler, flag, False))]


def _credentials_text(schemes: Sequence[str], fresh: bool, b: Bounds) -> str:
    if not schemes:
        return ""
    if schemes == ["bearer"]:
        text = (
            "Credentials: an `Authorization: Bearer <JWT>` header only — not a ticket, a session cookie or `?token=`."
        )
    else:
        names = {
            "bearer": "`Authorization: Bearer <JWT>`",
            "ticket": "`?ticket=` (a stream ticket)",
            "session": f"the `{SESSION_COOKIE}` cookie",
            "queryToken": f"`?token=<JWT>` (unless {b.mention('allow_query_token')} is false)",
        }
        text = "Credentials, the first one present decides: " + ", ".join(names[s] for s in schemes) + "."
    if fresh:
        text += (
            " The user and the JWT's revocation are read fresh from MongoDB, not the auth cache: a JWT revoked a "
            "moment ago mints nothing (protocol §16)."
        )
    return text


def _stream_description(has_id: bool, b: Bounds) -> str:
    """What every ``LiveHandler`` stream shares (protocol §2, §16), for its operation's description."""
    exists = " → the resource exists (404)" if has_id else ""
    reserved = ", ".join(f"`{name}`" for name in sorted(RESERVED_NAMES))
    return (
        f"Checks, all before any byte of the 200: credentials (401/403){exists} → the per-user slot (429: "
        f"{b.mention('sse_max_per_user')} streams across every stream endpoint). The body never ends on its own: "
        f"`: keepalive` at once, the opening events, live events, and `: keepalive` after "
        f"{b.mention('keepalive_seconds')} s without a frame. A stream that ends says why in its last frame: `end` "
        "when its credential no longer holds (do not reconnect), `error` when it failed, a `retry:` hint when it "
        f"fell behind or the process drains. The frame names {reserved} are the stream's own.\n\n"
        "*Waiting instead of an error* (protocol §16): a refusal that clears on its own — the store not answering "
        f"within {b.mention('mongo_timeout_ms')} ms, the cap held only by a process that has likely died or by "
        "a reconnect's own old stream, the process out of descriptors — is answered, to a client whose `Accept` "
        "includes `text/event-stream`, with a 200 `text/event-stream` holding `retry: <ms>` and one `unavailable` "
        'event whose data is `{"status", "detail", "retry_ms"}`, then the end of the response: a native '
        "EventSource reconnects after the wait instead of giving up. Other clients get the 429 or 503 with "
        "`Retry-After`."
    )


def _stream_responses(events: str) -> dict[str, Schema]:
    """The answers of every ``LiveHandler``: the stream (or the waiting answer), the cap, the store."""
    return {
        "200": {
            "description": (
                "The stream, which never ends on its own; or the waiting answer (`retry:`, one `unavailable` "
                "event, the end)."
            ),
            "headers": {
                "Cache-Control": {"required": True, "schema": {"const": "no-cache"}},
                "X-Accel-Buffering": {"required": True, "schema": {"const": "no"}},
            },
            "content": {SSE: {"schema": _ref("schemas", events)}},
        },
        "429": _error(
            "`SSE connection limit (N) reached`: the user holds its streams' cap (with `Retry-After` when the refusal "
            "clears on its own), or the client address its connections.",
            **{"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
        ),
        "503": _error(
            "`Store unavailable` (MongoDB did not answer) or `Server busy` (out of file descriptors).",
            **{"Retry-After": _ref("headers", "RetryAfter")},
        ),
    }


def _bus_stream_event(kind: StreamKind, snapshot: str) -> Schema:
    """One event of a bus stream (protocol §2, §7): its snapshot or resume, the frames of its own, or a live
    event — whose name is never one of the stream's own (``routing.RESERVED_NAMES``)."""
    live_name: Schema = {
        "type": "string",
        "not": {"enum": sorted(RESERVED_NAMES)},
        "description": (
            "Named by its subject (protocol §3, §4, §14); a subject that would derive one of the stream's own frame "
            "names is sent under its family's prefix (`topology.end`)."
        ),
    }
    if kind.events:
        live_name["examples"] = list(kind.events)
    return {
        "description": f"One event of the `{kind.name}` stream: `event` is its name, `data` its JSON.",
        "oneOf": [
            _event({"const": "snapshot"}, _ref("schemas", snapshot), "EventId"),
            _event({"const": "resumed"}, _ref("schemas", "Resumed"), "EventId"),
            *_own_events("EventId"),
            _event(live_name, _ref("schemas", "LiveEvent"), "EventId"),
        ],
    }


def _kind_operation(kind: StreamKind, b: Bounds) -> Operation:
    """A bus stream's operation, from its kind's declaration (``kinds.py``)."""
    parameters: list[Schema] = []
    responses: dict[str, Schema] = {}
    if kind.has_id:
        responses["404"] = _error(
            f"`{kind.not_found}`, only ever to an authorised caller; an id longer than "
            f"{b.mention('max_id_length')} characters is unknown without a store query."
        )
        summary = f"SSE stream of one {kind.name}'s events"
    else:
        summary = f"SSE stream of every `{kind.name}` event (a firehose: no id, no 404)"
    for name in kind.scope:
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"Only this {name}'s events and snapshot; 1 to {b.mention('max_id_length')} characters.",
                "schema": {"type": "string", "minLength": 1, "maxLength": b.value("max_id_length")},
            }
        )
    if kind.scope:
        names = ", ".join(f"`{name}`" for name in kind.scope)
        responses["400"] = _error(f"{names} empty or over {b.mention('max_id_length')} characters, or a bad request.")
    return Operation(
        id=f"{kind.name}Events" if kind.has_id else f"{kind.name}Firehose",
        summary=summary,
        tag="streams",
        events=f"{_capitalized(kind.name)}StreamEvent",
        parameters=tuple(parameters),
        responses=responses,
        resume={
            "description": (
                "Resume after this event id (for a rebuilt EventSource); the `Last-Event-ID` header wins. An id "
                'that cannot be resumed gets the snapshot with `"resumed": false`.'
            ),
            "schema": {"type": "string"},
        },
    )


# -- the generator -----------------------------------------------------------------------------------------
_METHOD_ORDER = ["get", "head", "post", "put", "patch", "delete", "options"]


@dataclass(frozen=True)
class _Path:
    """A route as the document sees it: its template, path parameters, hand-written operations and kind."""

    template: str
    parameters: list[Schema]
    docs: dict[str, Operation]
    kind: StreamKind | None = None


def _fill(shape: str, names: Sequence[str]) -> str:
    """``/a/{}/b`` with ``{}`` replaced by ``{name}``, in order."""
    for name in names:
        shape = shape.replace("{}", "{" + name + "}", 1)
    return shape


class _Generator:
    """One document's build: the schemas and parameters it has gathered, over routes taken one at a time."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.schemas: dict[str, Schema] = dict(SCHEMAS)
        self.parameters = _parameters(bounds)

    def path(self, pattern: str, handler: type[tornado.web.RequestHandler], kwargs: dict[str, Any]) -> _Path:
        """The route's path template, its path parameters and the hand-written operations of its methods."""
        matcher = PathMatches(pattern)
        sentinels = [f"zzgroup{i}zz" for i in range(matcher.regex.groups)]
        reversed_path = matcher.reverse(*sentinels)
        if reversed_path is None:  # only when the regex is too complex for Tornado to reverse
            raise Undocumented(f"cannot reverse the route {pattern}")
        shape = reversed_path
        for sentinel in sentinels:  # a group that only ever matches "" (the page's ``/()``) is no parameter
            empty_only = matcher.regex.fullmatch(reversed_path.replace(sentinel, "")) and not matcher.regex.fullmatch(
                reversed_path.replace(sentinel, "x")
            )
            shape = shape.replace(sentinel, "" if empty_only else "{}")
        kind = kwargs.get("kind") if issubclass(handler, StreamHandler) else None
        if isinstance(kind, StreamKind):
            doc = KIND_DOCS.get(kind.name)
            if doc is None:
                raise Undocumented(f"the stream kind {kind.name!r} has no entry in lurestream/openapi.py KIND_DOCS")
            self.schemas[f"{_capitalized(kind.name)}StreamEvent"] = _bus_stream_event(kind, doc.snapshot)
            names = [self.parameters[doc.parameter]["name"]] if doc.parameter else []
            parameters = [_ref("parameters", doc.parameter)] if doc.parameter else []
            return _Path(_fill(shape, names), parameters, {"get": _kind_operation(kind, self.bounds)}, kind)
        for template, operations in OPERATIONS.items():
            if re.sub(r"\{[^}]*\}", "{}", template) == shape:
                names = re.findall(r"\{([^}]*)\}", template)
                missing = [name for name in names if name not in PATH_PARAMETERS]
                if missing:
                    raise Undocumented(f"{template}: no PATH_PARAMETERS entry for {missing}")
                parameters = [_ref("parameters", PATH_PARAMETERS[name]) for name in names]
                return _Path(template, parameters, operations(self.bounds))
        raise Undocumented(f"the route {pattern} ({handler.__name__}) has no entry in lurestream/openapi.py OPERATIONS")

    def operation(self, method: str, handler: type[tornado.web.RequestHandler], doc: Operation, path: _Path) -> Schema:
        """One operation: the hand-written ``doc`` plus what the handler's class (and its kind) says."""
        b = self.bounds
        schemes = security_schemes(handler, method)
        parameters = [*path.parameters, *doc.parameters]
        if "ticket" in schemes:
            parameters.append(_ref("parameters", "Ticket"))
        if "queryToken" in schemes:
            parameters.append(_ref("parameters", "Token"))
        responses: dict[str, Schema] = {}
        description = [doc.description]
        if issubclass(handler, LiveHandler):
            if doc.events is None or doc.resume is None:
                raise Undocumented(f"{handler.__name__} streams: its entry needs `events` and `resume`")
            # ``LiveHandler.last_event_id``: the header, else the query parameter ``resume_query`` names
            resume_query = getattr(handler, "resume_query", None)
            if resume_query is not None:
                parameters.append({"name": resume_query, "in": "query", **doc.resume})
            parameters.append(_ref("parameters", "LastEventIdHeader"))
            responses.update(_stream_responses(doc.events))
            description.insert(0, _stream_description(path.kind is not None and path.kind.has_id, b))
        if schemes:
            responses.update({"401": _ref("responses", "Unauthorized"), "403": _ref("responses", "Forbidden")})
            responses.setdefault("503", _ref("responses", "StoreUnavailable"))  # the credential look-up
        responses.update(doc.responses)
        for name, schema in doc.schemas.items():
            if self.schemas.setdefault(name, schema) is not schema:
                raise Undocumented(f"{doc.id} brings the schema {name}, which another already defines")
        description.append(_credentials_text(schemes, bool(getattr(handler, "fresh_credentials", False)), b))
        operation: Schema = {"tags": [doc.tag], "operationId": doc.id, "summary": doc.summary}
        text = "\n\n".join(part for part in description if part)
        if text:
            operation["description"] = text
        if parameters:
            operation["parameters"] = parameters
        operation["security"] = [{scheme: []} for scheme in schemes]
        operation["responses"] = _with_edge(responses)
        return operation

    def document(self, routes: Iterable[Route]) -> dict[str, Any]:
        """Every route's path item, in route order, and the components they reach (and only those)."""
        paths: dict[str, dict[str, Schema]] = {}
        for pattern, handler, kwargs in routes:
            path = self.path(pattern, handler, kwargs)
            template, docs = path.template, path.docs
            if template in paths:
                raise Undocumented(f"two routes document {template}")
            item: dict[str, Schema] = {}
            methods = methods_of(handler)
            for method in methods:
                if method in ("HEAD", "OPTIONS"):
                    continue
                doc = docs.get(method.lower())
                if doc is None:
                    raise Undocumented(f"{method} {template} ({handler.__name__}) has no entry in OPERATIONS")
                item[method.lower()] = self.operation(method, handler, doc, path)
            if "HEAD" in methods:
                if "get" not in item:
                    raise Undocumented(f"HEAD {template} without a GET to describe it")
                item["head"] = _head(item["get"])
            if "OPTIONS" in methods:
                if getattr(handler, "options", None) is not BaseHandler.options:
                    raise Undocumented(f"OPTIONS {template}: not BaseHandler's CORS preflight")
                item["options"] = _preflight(item, path.parameters)
            paths[template] = {method: item[method] for method in sorted(item, key=_METHOD_ORDER.index)}
        components: dict[str, dict[str, Schema]] = {
            "securitySchemes": _security_schemes(self.bounds),
            "parameters": self.parameters,
            "headers": _headers(self.bounds),
            "responses": _responses(self.bounds),
            "schemas": self.schemas,
        }
        used_tags = {tag for item in paths.values() for operation in item.values() for tag in operation["tags"]}
        document: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {
                "title": "lurestream",
                "version": __version__,
                "summary": "Live events of a deception network over Server-Sent Events",
                "description": (
                    'Errors are JSON, `{"detail": "..."}`, with `X-Content-Type-Options: nosniff`; 401s carry '
                    "`WWW-Authenticate: Bearer`; a refusal that clears on its own carries `Retry-After` (on a "
                    "stream, an SSE client gets the waiting answer instead). Credentials, in this order: "
                    "`Authorization: Bearer <JWT>`, `?ticket=` (streams only), the "
                    f"`{SESSION_COOKIE}` cookie (streams and lists only), `?token=<JWT>`. `OPTIONS` answers CORS "
                    "preflights without credentials. Generated from the code (lurestream/openapi.py)."
                ),
            },
            "tags": [{"name": name, "description": text} for name, text in TAGS.items() if name in used_tags],
            "paths": paths,
            "components": _used(components, paths),
        }
        return document


def _head(get: Schema) -> Schema:
    """The HEAD twin of a GET (protocol §11): the same statuses and headers, no body."""
    responses = {
        status: response if "$ref" in response else {k: v for k, v in response.items() if k != "content"}
        for status, response in get["responses"].items()
    }
    return {
        **get,
        "operationId": get["operationId"] + "Head",
        "summary": "HEAD: " + get["summary"],
        "responses": responses,
    }


def _preflight(item: Mapping[str, Schema], path_parameters: list[Schema]) -> Schema:
    """``BaseHandler.options``: a CORS preflight, without credentials, on any path it serves."""
    main = next((item[m] for m in _METHOD_ORDER if m in item), None)
    operation_id = (main["operationId"] if main else "path") + "Preflight"
    operation: Schema = {
        "tags": main["tags"] if main else ["operations"],
        "operationId": operation_id,
        "summary": "CORS preflight (no credentials needed)",
    }
    if path_parameters:
        operation["parameters"] = list(path_parameters)
    operation["security"] = []
    operation["responses"] = _with_edge({"204": _ref("responses", "Preflight")})
    return operation


def _refs(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            kind, name = ref.split("/")[2:4]
            yield kind, name
        for child in value.values():
            yield from _refs(child)
    elif isinstance(value, list):
        for child in value:
            yield from _refs(child)


def _used(components: dict[str, dict[str, Schema]], paths: dict[str, Any]) -> dict[str, dict[str, Schema]]:
    """Only the components the paths reach (a stream's schemas appear with its route, not before)."""
    used: dict[str, dict[str, Schema]] = {kind: {} for kind in components}
    schemes = {scheme for item in paths.values() for op in item.values() for req in op["security"] for scheme in req}
    used["securitySchemes"] = {name: s for name, s in components["securitySchemes"].items() if name in schemes}
    pending = list(_refs(paths))
    while pending:
        kind, name = pending.pop()
        if name in used[kind]:
            continue
        component = components[kind][name]
        used[kind][name] = component
        pending.extend(_refs(component))
    return {kind: dict(sorted(found.items())) for kind, found in used.items() if found}


def openapi_document(routes: Iterable[Route], settings: Iterable[Setting] = SETTINGS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (``routes_of(app)``, or ``all_handlers(services)``), its bounds
    the defaults of ``settings``. A fresh copy: callers may change it."""
    return copy.deepcopy(_Generator(Bounds(settings)).document(routes))
