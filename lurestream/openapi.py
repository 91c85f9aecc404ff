"""The OpenAPI 3.1 description of lurestream's HTTP API (served at ``GET /api/v1/openapi.json``).

Why a hand-written document: Tornado keeps no schema of its routes, and the contract lives in docs/protocol.md
(§1 API, §2 streams, §5 auth, §11 hostile-input bounds, §12 sessions), not in the code. Written down as
plain data it gives dashboards and gateways a machine-readable contract, and the test suite something to
fuzz the running server against (tests/test_openapi.py: every route must appear here, and every response
— status, headers, media type, body — must be one this document describes).

Conventions:
- every error is ``{"detail": <string>}`` as ``application/json`` (protocol §1); 401s carry
  ``WWW-Authenticate: Bearer``; every JSON response carries ``X-Content-Type-Options: nosniff`` (§11);
- the HTTP edge's answers (§11: 400 malformed request, 405 with ``Allow``, 408, 411, 413, 414, 429 per
  client address, 431) can come from any path, so every operation lists them (``_with_edge``);
- a stream's body is described per event (OpenAPI 3.1 ``text/event-stream``: each event an object with
  ``event``, ``data``, ``id``), the JSON in ``data`` by ``contentSchema``.
The browser-session operations of protocol §12 are documented before they are built; the test fuzzes only
operations whose route exists.
"""

from __future__ import annotations

import copy
from typing import Any

from lurestream import __version__

JSON = "application/json"
SSE = "text/event-stream"

Schema = dict[str, Any]


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


def _with_edge(responses: dict[str, Schema]) -> dict[str, Schema]:
    """An operation's own responses plus what the HTTP edge may answer instead (protocol §11), by status."""
    edge = {
        "400": _ref("responses", "BadRequest"),
        "405": _ref("responses", "MethodNotAllowed"),
        "408": _ref("responses", "RequestTimeout"),
        "411": _ref("responses", "LengthRequired"),
        "413": _ref("responses", "PayloadTooLarge"),
        "414": _ref("responses", "UriTooLong"),
        "429": _ref("responses", "TooManyConnections"),
        "431": _ref("responses", "HeaderFieldsTooLarge"),
    }
    merged = {**edge, **responses}
    return {status: merged[status] for status in sorted(merged)}


AUTH_ERRORS = {"401": _ref("responses", "Unauthorized"), "403": _ref("responses", "Forbidden")}
STORE_UNAVAILABLE = {"503": _ref("responses", "StoreUnavailable")}


def _sse_data(schema: Schema) -> Schema:
    """An SSE ``data`` field: one line of JSON described by ``schema``."""
    return {"type": "string", "contentMediaType": JSON, "contentSchema": schema}


def _event(name: Schema, data: str, with_id: bool = False) -> Schema:
    properties = {"event": name, "data": _sse_data(_ref("schemas", data))}
    if with_id:
        properties["id"] = _ref("schemas", "EventId")
    return {"type": "object", "required": ["event", "data"], "properties": properties}


def _stream_event(snapshot: str) -> Schema:
    """One event of a stream whose ``snapshot`` data is ``#/components/schemas/<snapshot>``."""
    return {
        "description": "One SSE event (protocol §2, §7, §12): `event` is its name, `data` its JSON.",
        "oneOf": [
            _event({"const": "snapshot"}, snapshot, with_id=True),
            _event({"const": "resumed"}, "Resumed"),
            _event({"const": "error"}, "StreamError"),
            _event({"const": "end"}, "StreamEnd"),
            _event({"type": "string", "not": {"enum": ["snapshot", "resumed", "error", "end"]}}, "LiveEvent", True),
        ],
    }


def _stream(kind: str, parameter: str, not_found: str) -> Schema:
    return {
        "tags": ["streams"],
        "operationId": f"{kind}Events",
        "summary": f"SSE stream of one {kind}'s events",
        "description": (
            "Checks, all before any byte of the 200: credentials (401/403) → the resource exists (404) → "
            "the per-user connection slot (429). The body never ends on its own: `: keepalive` at once, "
            "a `snapshot` event (or `resumed` and the missed events), then live events, `: keepalive` "
            "comments when idle. An id longer than `LURESTREAM_MAX_ID_LENGTH` (128) is unknown (404)."
        ),
        "parameters": [
            _ref("parameters", parameter),
            _ref("parameters", "Ticket"),
            _ref("parameters", "Token"),
            _ref("parameters", "LastEventIdQuery"),
            _ref("parameters", "LastEventIdHeader"),
        ],
        "security": [{"bearer": []}, {"ticket": []}, {"session": []}, {"queryToken": []}],
        "responses": _with_edge(
            {
                "200": {
                    "description": "The stream; it never ends on its own.",
                    "headers": {
                        "Cache-Control": {"required": True, "schema": {"const": "no-cache"}},
                        "X-Accel-Buffering": {"required": True, "schema": {"const": "no"}},
                    },
                    "content": {SSE: {"schema": _ref("schemas", f"{kind.capitalize()}StreamEvent")}},
                },
                **AUTH_ERRORS,
                "404": _error(f"No such {kind}: `{not_found}`."),
                "429": _error(
                    "`SSE connection limit (N) reached`: the user holds `LURESTREAM_SSE_MAX_PER_USER` streams "
                    "(or the client address `LURESTREAM_MAX_CONNECTIONS_PER_IP` connections).",
                    **{"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
                ),
                **STORE_UNAVAILABLE,
            }
        ),
    }


def _firehose(kind: str, data_key: str, decky: bool = False) -> Schema:
    """A firehose (protocol §14): no id in the path (no 404); a snapshot of the 50 newest documents."""
    operation = _stream(kind, "", "")
    operation["operationId"] = f"{kind}Firehose"
    operation["summary"] = f"SSE stream of every {kind} event"
    operation["parameters"] = operation["parameters"][1:]
    if decky:
        operation["parameters"].insert(
            0,
            {
                "name": "decky",
                "in": "query",
                "required": False,
                "description": "Only the events of this decky (`orchestrator.*.<decky>`).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            },
        )
    operation["responses"].pop("404")
    if decky:
        operation["responses"]["400"] = _error("`decky` longer than `LURESTREAM_MAX_ID_LENGTH` or empty.")
    operation["responses"]["200"]["content"][SSE]["schema"] = _ref("schemas", "FirehoseStreamEvent")
    return operation


def _directory(kind: str, item: str) -> Schema:
    return {
        "tags": ["directory"],
        "operationId": f"list{kind.capitalize()}",
        "summary": f"A short list of {kind} for the dashboard's picker",
        "parameters": [_ref("parameters", "Limit"), _ref("parameters", "Token")],
        "security": [{"bearer": []}, {"session": []}, {"queryToken": []}],
        "responses": _with_edge(
            {
                "200": _json(
                    f"Up to `limit` {kind}, by id.",
                    {
                        "type": "object",
                        "required": ["items"],
                        "additionalProperties": False,
                        "properties": {"items": {"type": "array", "items": _ref("schemas", item)}},
                    },
                    **{"Cache-Control": {"schema": {"const": "no-store"}}},
                ),
                "400": _error("`limit` is not a whole number from 1 to 200, or the request is malformed."),
                **AUTH_ERRORS,
                **STORE_UNAVAILABLE,
            }
        ),
    }


def _public(operation_id: str, summary: str, responses: dict[str, Schema], tag: str = "operations") -> Schema:
    return {"tags": [tag], "operationId": operation_id, "summary": summary, "responses": _with_edge(responses)}


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


def _file(media_types: list[str]) -> dict[str, Schema]:
    return {
        "200": {
            "description": "The file.",
            "content": {media_type: {"schema": {"type": "string"}} for media_type in media_types},
        },
        "304": {"description": "Not modified since the copy the client holds."},
    }


def _mint(operation_id: str, summary: str, description: str, success: dict[str, Schema]) -> Schema:
    return {
        "tags": ["auth"],
        "operationId": operation_id,
        "summary": summary,
        "description": description + " Bearer header only: not `?token=`, not a ticket, not a session cookie.",
        "security": [{"bearer": []}],
        "responses": _with_edge(
            {**success, **AUTH_ERRORS, "429": _ref("responses", "TooManyMints"), **STORE_UNAVAILABLE}
        ),
    }


def _paths() -> dict[str, Any]:
    health = _public(
        "health",
        "Liveness: 200 while the process serves",
        {"200": _json("The process serves.", _ref("schemas", "Health"))},
    )
    ready = _public(
        "ready",
        "Readiness: MongoDB answers, the bus is connected (or disabled), the process is not draining",
        {
            "200": _json("Ready.", _ref("schemas", "Ready")),
            "503": _json("Not ready: `detail` names what is down (or `draining`).", _ref("schemas", "NotReady")),
        },
    )
    metrics = _public(
        "metrics",
        "Prometheus metrics, text exposition format (unauthenticated like the probes)",
        {"200": {"description": "The exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    dashboard = _public("dashboard", "The live dashboard page", _file(["text/html"]), tag="dashboard")
    static = _public(
        "staticFile",
        "The dashboard's static files",
        {
            **_file(["text/html", "text/css", "text/javascript", "application/javascript"]),
            "404": _error("No such file: unknown or malformed name."),
        },
        tag="dashboard",
    )
    static["parameters"] = [_ref("parameters", "StaticFile")]
    session_cookie = {"Set-Cookie": _ref("headers", "SessionCookie")}
    return {
        "/api/v1/attackers/{attacker_uuid}/events": {
            "get": _stream("attacker", "AttackerUuid", "Attacker not found"),
        },
        "/api/v1/topologies/{topology_id}/events": {
            "get": _stream("topology", "TopologyId", "Topology not found"),
        },
        "/api/v1/identities/events": {"get": _firehose("identities", "identities")},
        "/api/v1/campaigns/events": {"get": _firehose("campaigns", "campaigns")},
        "/api/v1/orchestrator/events/stream": {"get": _firehose("orchestrator", "events", decky=True)},
        "/api/v1/auth/sse-ticket": {
            "post": _mint(
                "mintTicket",
                "Trade a Bearer JWT for a single-use stream ticket",
                "The ticket opens one stream within `expires_in` seconds (`LURESTREAM_TICKET_TTL_SECONDS`).",
                {
                    "200": _json(
                        "A fresh ticket.",
                        _ref("schemas", "Ticket"),
                        **{"Cache-Control": {"schema": {"const": "no-store"}}},
                    )
                },
            ),
        },
        "/api/v1/auth/sse-session": {
            "post": _mint(
                "openSession",
                "Trade a Bearer JWT for a browser session cookie (protocol §12)",
                "Sets `lurestream_session` (HttpOnly, SameSite=Strict, Path=/api/v1/, Max-Age up to the JWT's "
                "expiry, at most `LURESTREAM_SESSION_MAX_SECONDS`); a native EventSource then reconnects with "
                "`Last-Event-ID` by itself.",
                {"204": {"description": "The session cookie is set.", "headers": session_cookie}},
            ),
            "delete": {
                "tags": ["auth"],
                "operationId": "closeSession",
                "summary": "End the browser session: remove it and clear the cookie (protocol §12)",
                "security": [{"session": []}, {}],
                "responses": _with_edge(
                    {
                        "204": {"description": "The session is gone, the cookie cleared.", "headers": session_cookie},
                        **STORE_UNAVAILABLE,
                    }
                ),
            },
        },
        "/api/v1/attackers": {"get": _directory("attackers", "AttackerItem")},
        "/api/v1/topologies": {"get": _directory("topologies", "TopologyItem")},
        "/api/v1/openapi.json": {
            "get": _public(
                "openapi",
                "This document",
                {"200": _json("The OpenAPI 3.1 document.", _ref("schemas", "OpenApiDocument"))},
            ),
        },
        "/healthz": {"get": health, "head": _head(health)},
        "/readyz": {"get": ready, "head": _head(ready)},
        "/metrics": {"get": metrics, "head": _head(metrics)},
        "/": {"get": dashboard, "head": _head(dashboard)},
        "/static/{file}": {"get": static, "head": _head(static)},
    }


SECURITY_SCHEMES: dict[str, Schema] = {
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
        "name": "lurestream_session",
        "description": "The browser session of `POST /api/v1/auth/sse-session` (streams and lists only).",
    },
    "queryToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The JWT in the URL; refused when `LURESTREAM_ALLOW_QUERY_TOKEN=false`.",
    },
}

PARAMETERS: dict[str, Schema] = {
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
        "description": "A JWT (DECNET's original form); a ticket keeps long-lived JWTs out of URLs and logs.",
    },
    "LastEventIdQuery": {
        "name": "last_event_id",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Resume after this event id (for a rebuilt EventSource); the header wins.",
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
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        "description": "How many items at most.",
    },
}

HEADERS: dict[str, Schema] = {
    "NoSniff": {"required": True, "schema": {"const": "nosniff"}},
    "WwwAuthenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}},
    "Allow": {
        "required": True,
        "description": "The methods the path has.",
        "schema": {"type": "string", "minLength": 1},
    },
    "RetryAfter": {"required": True, "description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 0}},
    "SessionCookie": {"required": True, "schema": {"type": "string", "pattern": "^lurestream_session="}},
}

RESPONSES: dict[str, Schema] = {
    "BadRequest": _error("A malformed request line or headers, or an invalid `Content-Length`."),
    "Unauthorized": _error(
        "No, or bad, credentials: `Not authenticated`, `Could not validate credentials`, `Invalid or expired ticket`.",
        **{"WWW-Authenticate": _ref("headers", "WwwAuthenticate")},
    ),
    "Forbidden": _error(
        "`Insufficient permissions` (a role outside `LURESTREAM_STREAM_ROLES`) or "
        "`Password change required before accessing this resource`."
    ),
    "MethodNotAllowed": _error("The path has no such method.", **{"Allow": _ref("headers", "Allow")}),
    "RequestTimeout": _error("Headers (and body) not received within `LURESTREAM_HEADER_TIMEOUT_SECONDS`."),
    "LengthRequired": _error("A request body without `Content-Length` (`Transfer-Encoding`)."),
    "PayloadTooLarge": _error("A body over `LURESTREAM_MAX_BODY_BYTES` (4 KiB), refused before it is read."),
    "UriTooLong": _error("Path and query over `LURESTREAM_MAX_URL_BYTES` (8 KiB): `URI too long`."),
    "TooManyConnections": _error(
        "The client address holds `LURESTREAM_MAX_CONNECTIONS_PER_IP` connections.",
        **{"Retry-After": _ref("headers", "RetryAfter")},
    ),
    "TooManyMints": _error(
        "`Too many ticket requests`: over `LURESTREAM_MINT_RATE` mints for the user "
        "(or too many connections from the client address).",
        **{"Retry-After": _ref("headers", "RetryAfter")},
    ),
    "HeaderFieldsTooLarge": _error(
        "Request line and headers over `LURESTREAM_MAX_HEADER_BYTES` (16 KiB): `Request header fields too large`."
    ),
    "StoreUnavailable": _error("MongoDB did not answer in time: `Store unavailable`."),
}

RESUMED_FALSE = {"const": False, "description": "Present when a resume was not possible: rebuild from this."}

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
        "required": ["uuid", "ip", "identity_id"],
        "properties": {
            "uuid": {"type": "string"},
            "ip": {"type": ["string", "null"]},
            "identity_id": {"type": ["string", "null"]},
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
        "required": ["status", "store", "bus"],
        "properties": {
            "status": {"const": "ready"},
            "store": {"const": "ok"},
            "bus": {"enum": ["connected", "disabled"]},
            "cap": {"enum": ["cluster", "local"], "description": "the per-user cap counts every process, or this one"},
        },
    },
    "NotReady": {
        "type": "object",
        "required": ["detail", "store", "bus"],
        "properties": {
            "detail": {"type": "string", "pattern": "^not ready: "},
            "store": {"enum": ["ok", "down"]},
            "bus": {"enum": ["connected", "disconnected", "disabled"]},
            "cap": {"enum": ["cluster", "local"]},
        },
    },
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
    },
    "EventId": {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "The JetStream stream sequence (only with `LURESTREAM_JETSTREAM`).",
    },
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
    "Resumed": {
        "type": "object",
        "required": ["last_event_id", "replayed"],
        "properties": {
            "last_event_id": {"type": "string", "pattern": "^[0-9]+$"},
            "replayed": {"type": "integer", "minimum": 0},
        },
    },
    "StreamError": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"const": "Stream interrupted"}},
    },
    "StreamEnd": {
        "type": "object",
        "required": ["reason"],
        "properties": {"reason": {"enum": ["expired", "revoked", "forbidden"]}},
    },
    "LiveEvent": {
        "type": "object",
        "required": ["topic", "type", "ts", "payload"],
        "properties": {
            "topic": {"type": "string", "description": "The full NATS subject."},
            "type": {"type": "string"},
            "ts": {"type": "number"},
            "payload": {"type": "object"},
        },
    },
    "AttackerStreamEvent": _stream_event("AttackerSnapshot"),
    "TopologyStreamEvent": _stream_event("TopologySnapshot"),
    "FirehoseStreamEvent": _stream_event("FirehoseSnapshot"),
    "FirehoseSnapshot": {
        "type": "object",
        "description": "The 50 newest documents (protocol §14), `_id` renamed `id`, dates ISO-8601.",
        "additionalProperties": {"type": "array", "items": {"type": "object"}},
        "properties": {"resumed": RESUMED_FALSE},
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP endpoint lurestream serves (a fresh copy: callers may change it)."""
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "lurestream",
            "version": __version__,
            "summary": "Live attacker and topology events of a deception network over Server-Sent Events",
            "description": (
                'Errors are JSON, `{"detail": "..."}`; 401s carry `WWW-Authenticate: Bearer`. Credentials, in '
                "this order: `Authorization: Bearer <JWT>`, `?ticket=` (streams only), the `lurestream_session` "
                "cookie (streams and lists only), `?token=<JWT>` (unless `LURESTREAM_ALLOW_QUERY_TOKEN=false`). "
                "`OPTIONS` answers CORS preflights (204, no credentials needed) on every API path."
            ),
        },
        "tags": [
            {"name": "streams", "description": "Server-Sent Events streams (protocol §2–§4, §7)"},
            {"name": "auth", "description": "Stream tickets and browser sessions (protocol §5.3, §12)"},
            {"name": "directory", "description": "Short lists for the dashboard's pickers"},
            {"name": "operations", "description": "Probes, metrics and this document"},
            {"name": "dashboard", "description": "The live dashboard page and its files"},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "responses": RESPONSES,
            "schemas": SCHEMAS,
        },
    }
    return copy.deepcopy(document)
