"""The OpenAPI document (lurestream/openapi.py) against the code it is generated from and a running server.

The document is generated from the route table, the handlers' methods and credential flags, and SETTINGS;
only bodies and event data are written by hand. So the tests check it from the other side, without the
generator's helpers:
- structure: it is valid OpenAPI 3.1; every route of the app is documented with exactly the methods its
  handler overrides (HEAD and OPTIONS included), and every documented operation exists — no exemption; the
  security of each operation is what the handler's flags say; every bound is its setting's default, and a
  document built from other defaults keeps none of the old numbers;
- behaviour: the running server answers exactly the documented methods (405 with the documented ``Allow``
  otherwise) and asks for credentials exactly where the document says; its *waiting* answer (protocol §16)
  conforms; and schemathesis fuzzes a real ``lurestream serve`` process (real nats-server and MongoDB-wire
  server) with the document: no 5xx, only documented statuses, response headers, media types and bodies,
  405 with ``Allow`` for every undocumented method. Every secured operation is fuzzed three times: as the
  viewer (a valid Bearer JWT), as the auditor (a valid JWT whose role may not stream: 403), and anonymously
  (no credentials, or whatever garbage the generator puts in ``Authorization``, ``?token=``, ``?ticket=`` or
  the session cookie: 401) — and the last two must never get 2xx, nor a 404 that would tell whether an id
  exists.

Streams never end on their own, so the fuzzer must not wait for the end of a 200. Schemathesis reads a
``text/event-stream`` response incrementally and stops after ``max-stream-events`` complete events or
``request-timeout`` seconds in all, then closes the connection (and the server releases the slot). With
``max-stream-events = 1`` a 200 is read up to its first event — which the server sends at once — so the
200 path is exercised and checked (status, headers, media type, the event's schema) instead of being
excluded, and the timeout only bounds a stream that fails to send its first event. The documented example
ids are seeded, so streams opened with them get a 200.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import schemathesis
import tornado.web
from harness import ADMIN, AUDITOR, SECRET, USERS, VIEWER
from hypothesis import strategies as st
from processes import ServerProcess
from pymongo import MongoClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from lurestream.config import SETTINGS, Setting, config_from
from lurestream.handlers.base import BaseHandler
from lurestream.handlers.directory import MAX_LIMIT, MAX_QUERY_LENGTH
from lurestream.handlers.stream import LiveHandler, StreamHandler
from lurestream.kinds import SNAPSHOT_SIZE
from lurestream.openapi import Undocumented, openapi_document, routes_of
from lurestream.routing import RESERVED_NAMES
from lurestream.server import Services, make_app
from lurestream.tokens import mint_token

ROUTES = routes_of(make_app(Services.build(config_from({"jwt_secret": SECRET, "nats_url": ""}))))
DOCUMENT = openapi_document(ROUTES)
HTTP_METHODS = tuple(m.lower() for m in tornado.web.RequestHandler.SUPPORTED_METHODS)
DEFAULTS = {s.name: s.parse(s.default) for s in SETTINGS}
MAX_URL_BYTES = DEFAULTS["max_url_bytes"]  # a longer path + query is 414

# What the HTTP edge may answer on any path, before a handler runs (protocol §11).
EDGE_STATUSES = {"400", "405", "408", "411", "413", "414", "429", "431"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
]


# -- the route table, read without the generator --------------------------------------------------------
def _implemented(handler: type) -> set[str]:
    """The methods a handler class overrides (RequestHandler's own answer 405)."""
    return {m for m in HTTP_METHODS if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


def _sample(template: str) -> str:
    """A concrete path for an OpenAPI path template (``{name}`` → a plain segment)."""
    return re.sub(r"\{[^}]+\}", "sample", template)


def _route_for(template: str) -> tuple[str, type, dict[str, Any]]:
    matches = [route for route in ROUTES if re.fullmatch(route[0], _sample(template))]
    assert len(matches) == 1, f"{template} is matched by {len(matches)} routes: {matches}"
    return matches[0]


def _documented_methods(template: str) -> set[str]:
    return {method for method in DOCUMENT["paths"][template] if method in HTTP_METHODS}


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def _resolve(item: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in item:
        kind, name = item["$ref"].split("/")[-2:]
        item = DOCUMENT["components"][kind][name]
    return item


def _requires_credentials(operation: dict[str, Any]) -> bool:
    return bool(operation.get("security")) and {} not in operation["security"]


# -- structure ------------------------------------------------------------------------------------------
def test_document_is_valid_openapi_31() -> None:
    schema = schemathesis.openapi.from_dict(openapi_document(ROUTES))
    schema.validate()  # the OpenAPI 3.1 meta-schema
    assert DOCUMENT["openapi"].startswith("3.1.")
    for name, component in DOCUMENT["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(component), f"components.schemas.{name} is not a JSON Schema"
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(list(_operations()))


def test_every_route_is_documented_with_exactly_the_methods_it_implements() -> None:
    """HEAD and OPTIONS included: a route whose handler answers them has them in the document."""
    samples = {path: _sample(path) for path in DOCUMENT["paths"]}
    for pattern, handler, _ in ROUTES:
        paths = [path for path, sample in samples.items() if re.fullmatch(pattern, sample)]
        assert len(paths) == 1, f"route {pattern} is documented as {paths}"
        assert _documented_methods(paths[0]) == _implemented(handler), paths[0]


def test_every_documented_operation_exists() -> None:
    for method, path, _ in _operations():
        _, handler, _ = _route_for(path)
        assert method in _implemented(handler), f"{method} {path} is documented but not implemented"


def test_security_follows_the_credential_flags() -> None:
    """Bearer whenever credentials are needed (``auth_required``, or ``auth_methods`` for a handler that
    decides per method), then the ticket, the session cookie and ``?token=`` as the flags allow; a CORS
    preflight and a public operation need none. The 401/403 and the credential parameters go with them."""
    for method, path, operation in _operations():
        _, handler, _ = _route_for(path)
        per_method = getattr(handler, "auth_methods", None)
        needed = method != "options" and (
            method.upper() in per_method if per_method is not None else getattr(handler, "auth_required", False)
        )
        expected = []
        if needed:
            expected = ["bearer"] + [
                scheme
                for scheme, flag in (
                    ("ticket", "accept_ticket"),
                    ("session", "accept_session"),
                    ("queryToken", "accept_query_token"),
                )
                if getattr(handler, flag)
            ]
        assert operation["security"] == [{scheme: []} for scheme in expected], f"{method} {path}"
        statuses = set(operation["responses"])
        assert ({"401", "403"} <= statuses) == needed, f"{method} {path}: 401/403"
        parameters = {_resolve(p)["name"] for p in operation.get("parameters", [])}
        assert ("ticket" in parameters) == ("ticket" in expected), f"{method} {path}: ?ticket="
        assert ("token" in parameters) == ("queryToken" in expected), f"{method} {path}: ?token="
    # what protocol §5 and §12 say, spelled out (so the rule above cannot drift with the generator)
    paths = DOCUMENT["paths"]
    streams = [path for path, item in paths.items() if issubclass(_route_for(path)[1], LiveHandler)]
    assert len(streams) >= 5
    for path in streams:
        assert paths[path]["get"]["security"] == [{"bearer": []}, {"ticket": []}, {"session": []}, {"queryToken": []}]
    for path in ("/api/v1/attackers", "/api/v1/topologies"):
        assert paths[path]["get"]["security"] == [{"bearer": []}, {"session": []}, {"queryToken": []}]
    for path in ("/api/v1/auth/sse-ticket", "/api/v1/auth/sse-session"):
        assert paths[path]["post"]["security"] == [{"bearer": []}], f"a mint takes a Bearer header only: {path}"
    assert paths["/api/v1/auth/sse-session"]["delete"]["security"] == []
    for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/", "/static/{file}"):
        assert all(operation["security"] == [] for operation in paths[path].values()), path
    assert all(item["options"]["security"] == [] for item in paths.values() if "options" in item)


def test_every_operation_documents_its_errors() -> None:
    """protocol §1 and §11: errors are ``{"detail"}`` JSON with ``nosniff``; the edge's answers can come from
    any path; 401 says ``WWW-Authenticate``, 405 ``Allow``, a mint's 429 and every 503 ``Retry-After``."""
    for method, path, operation in _operations():
        responses = {status: _resolve(response) for status, response in operation["responses"].items()}
        assert EDGE_STATUSES <= set(responses), f"{method} {path}: the HTTP edge's answers (protocol §11)"
        for status, response in responses.items():
            if int(status) < 400 or method == "head":
                continue
            body = response["content"]["application/json"]["schema"]
            expected = "NotReady" if (path, status) == ("/readyz", "503") else "Error"
            assert body == {"$ref": f"#/components/schemas/{expected}"}, f"{method} {path} {status}"
            assert "X-Content-Type-Options" in response["headers"], f"{method} {path} {status}: nosniff"
        for status, header in (("401", "WWW-Authenticate"), ("405", "Allow")):
            if status in responses:
                assert _resolve(responses[status]["headers"][header])["required"], f"{method} {path} {status}"
        if "503" in responses and path != "/readyz":
            assert _resolve(responses["503"]["headers"]["Retry-After"])["required"], f"{method} {path}: 503"
        if path.startswith("/api/v1/auth/") and method == "post":
            assert _resolve(responses["429"]["headers"]["Retry-After"])["required"], f"{method} {path}: 429"


def test_streams_document_the_waiting_answer_and_their_own_frames() -> None:
    """protocol §2 and §16: a stream's 200 is ``text/event-stream``, and it may be the waiting answer — an
    ``unavailable`` event with ``{"status", "detail", "retry_ms"}``; ``end``, ``error`` and ``unavailable``
    are every stream's own; a bus stream's live events never take a reserved name."""
    for path in DOCUMENT["paths"]:
        pattern, handler, kwargs = _route_for(path)
        if not issubclass(handler, LiveHandler):
            continue
        operation = DOCUMENT["paths"][path]["get"]
        assert "Waiting instead of an error" in operation["description"], path
        assert "Last-Event-ID" in {_resolve(p)["name"] for p in operation["parameters"]}, path
        assert handler.resume_query in {_resolve(p)["name"] for p in operation["parameters"]}, path
        content = operation["responses"]["200"]["content"]
        assert set(content) == {"text/event-stream"}, path
        events = _resolve(content["text/event-stream"]["schema"])["oneOf"]
        names = {
            e["properties"]["event"].get("const"): _resolve(e["properties"]["data"]["contentSchema"]) for e in events
        }
        assert {"end", "error", "unavailable"} <= set(names), path
        unavailable = names["unavailable"]
        assert set(unavailable["required"]) == {"status", "detail", "retry_ms"}, path
        if issubclass(handler, StreamHandler):
            assert {"snapshot", "resumed"} <= set(names), path
            live = [e["properties"]["event"] for e in events if "const" not in e["properties"]["event"]]
            assert len(live) == 1 and live[0]["not"] == {"enum": sorted(RESERVED_NAMES)}, path
            assert live[0].get("examples", []) == list(kwargs["kind"].events), path


def test_a_route_without_an_entry_stops_the_generator() -> None:
    """The document can never silently lack a route: one with nothing written for it is an error."""

    class Unknown(BaseHandler):
        def get(self) -> None:
            self.write_json({})

    with pytest.raises(Undocumented, match="/api/v1/unknown"):
        openapi_document([*ROUTES, (r"/api/v1/unknown", Unknown, {})])


# -- bounds: SETTINGS' defaults, and nothing else ---------------------------------------------------------
MENTION = re.compile(r"`LURESTREAM_([A-Z0-9_]+)`(?: \(default ([^)]*)\))?")
BOUND_KEYWORDS = ("maxLength", "maxItems", "maximum")


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _texts(child)
    elif isinstance(value, list):
        for child in value:
            yield from _texts(child)


def _bounded(value: Any, description: str = "") -> Iterator[tuple[str, int, str]]:
    """Every bound keyword in the document, with the description that explains it (its own, a parameter's
    or an enclosing schema's)."""
    if isinstance(value, dict):
        description = value.get("description", description)
        for keyword in BOUND_KEYWORDS:
            if isinstance(value.get(keyword), int):
                yield keyword, value[keyword], description
        for child in value.values():
            yield from _bounded(child, description)
    elif isinstance(value, list):
        for child in value:
            yield from _bounded(child, description)


def _perturbed(setting: Setting) -> Setting:
    """The setting with every number in its default moved by one (``16KiB`` → ``17KiB``), when it still
    parses; else as it is."""
    raw = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), setting.default)
    try:
        changed = setting.parse(raw) != setting.parse(setting.default)
    except ValueError:
        changed = False
    return dataclasses.replace(setting, default=raw) if changed else setting


OTHER_SETTINGS = tuple(_perturbed(s) for s in SETTINGS)


@pytest.mark.parametrize("settings", [SETTINGS, OTHER_SETTINGS], ids=["defaults", "other-defaults"])
def test_bounds_are_the_settings_defaults(settings: tuple[Setting, ...]) -> None:
    """Every ```LURESTREAM_X`` (default D)`` names a setting with its default, and every bound keyword is
    the parsed default of a setting its description names — or one of the code's own constants."""
    document = openapi_document(ROUTES, settings)
    by_env = {s.env: s for s in settings}
    mentioned = set()
    for text in _texts(document):
        for name, default in MENTION.findall(text):
            setting = by_env.get("LURESTREAM_" + name)
            assert setting is not None, f"LURESTREAM_{name} is not a setting: {text!r}"
            if default:
                assert default == (setting.default or "empty"), f"LURESTREAM_{name}: {text!r}"
                mentioned.add(setting.name)
    assert {"max_id_length", "max_body_bytes", "max_url_bytes", "max_header_bytes"} <= mentioned
    constants = {
        ("maximum", MAX_LIMIT),
        ("maxItems", MAX_LIMIT),
        ("maxItems", SNAPSHOT_SIZE),
        ("maxLength", MAX_QUERY_LENGTH),
    }
    for keyword, bound, description in _bounded(document):
        named = [by_env["LURESTREAM_" + name] for name, default in MENTION.findall(description) if default]
        values = {s.parse(s.default) for s in named}
        assert bound in values or (keyword, bound) in constants, f"{keyword} {bound} ({description!r})"


def test_no_bound_outlives_its_setting() -> None:
    """Built from other defaults, the document keeps none of the old numbers of the settings it quotes: a
    bound written by hand (``(128)``, ``4 KiB``, ``"maxLength": 128``) would stay behind."""
    document = json.dumps(openapi_document(ROUTES, OTHER_SETTINGS), ensure_ascii=False)
    quoted = set(MENTION.findall(json.dumps(DOCUMENT)))
    checked = []
    for setting in SETTINGS:
        value = DEFAULTS[setting.name]
        if (setting.env.removeprefix("LURESTREAM_"), setting.default) not in quoted:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 100:
            continue  # small numbers (5, 15, 60) are everywhere in prose; the test above holds them
        match = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", setting.default)
        assert match, setting
        renderings = [rf"(?<![\d.]){value}(?!\d)"]
        if match.group(2):
            renderings.append(rf"(?<![\d.]){match.group(1)}\s?{match.group(2)}\b")
        for rendering in renderings:
            stale = re.search(rendering, document)
            assert stale is None, (
                f"{setting.env}'s old default survives: ...{document[stale.start() - 80 : stale.end() + 20]}"
            )
        checked.append(setting.name)
    assert {"max_id_length", "max_body_bytes", "max_url_bytes", "max_header_bytes"} <= set(checked)


def test_the_log_feed_is_documented_from_its_route() -> None:
    """protocol §15: ``GET /api/v1/stream`` appears with its route (and only then), its ``search`` bounded by
    ``LURESTREAM_LOG_SEARCH_MAX_LENGTH`` and its resume parameter named as its handler reads it."""
    routes = [route for route in ROUTES if route[0].rstrip("$") == "/api/v1/stream"]
    if not routes:
        pytest.skip("no live log feed in the route table yet")
    assert "/api/v1/stream" not in openapi_document([r for r in ROUTES if r not in routes])["paths"]
    operation = DOCUMENT["paths"]["/api/v1/stream"]["get"]
    parameters = {_resolve(p)["name"]: _resolve(p) for p in operation["parameters"]}
    assert parameters["search"]["schema"]["maxLength"] == DEFAULTS["log_search_max_length"]
    assert {"start_time", "end_time", "lastEventId", "Last-Event-ID"} <= set(parameters)
    assert "404" not in operation["responses"] and "400" in operation["responses"]


# -- the running server ---------------------------------------------------------------------------------
def _example(parameter: str) -> str:
    return str(DOCUMENT["components"]["parameters"][parameter]["example"])


@dataclass
class Server:
    url: str
    tokens: dict[str, str]

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
        connection.request(method, path, headers=headers or {})
        return connection.getresponse()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, nats_service: Any, mongo_service: Any) -> Iterator[Server]:
    """One ``lurestream serve`` for the whole module (a process per operation would cost more than the
    fuzzing), on a database of its own holding the users and the documented example ids."""
    db_name = "openapi" + uuid.uuid4().hex[:12]
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_service.url, serverSelectionTimeoutMS=5000)
    db = client[db_name]
    db.users.insert_many([dict(u) for u in USERS.values()])
    db.attackers.insert_one({"_id": _example("AttackerUuid"), "ip": "203.0.113.7", "identity_id": "identity-7"})
    db.observations.insert_one(
        {
            "attacker_uuid": _example("AttackerUuid"),
            "primitive": "ja3",
            "value": "e7d705a3286e19ea42f587b344ee6865",
            "confidence": 0.9,
            "ts": 1795799509.5,
            "source": "sniffer",
        }
    )
    db.topologies.insert_one({"_id": _example("TopologyId"), "status": "active"})
    proc = ServerProcess(
        str(tmp_path_factory.mktemp("openapi") / "server.log"),
        nats_url=nats_service.url,
        mongo_uri=mongo_service.url,
        mongo_db=db_name,
        jwt_secret=SECRET,
    )
    proc.start()
    try:
        proc.wait_ready()
        config = config_from({"jwt_secret": SECRET})
        tokens = {
            name: mint_token(config, user)
            for name, user in (("viewer", VIEWER), ("auditor", AUDITOR), ("admin", ADMIN))
        }
        yield Server(f"http://127.0.0.1:{proc.port}", tokens)
    finally:
        proc.stop()
        client.drop_database(db_name)
        client.close()


def test_the_served_document(server: Server) -> None:
    response = server.request("GET", "/api/v1/openapi.json")
    assert response.status == 200 and response.headers.get_content_type() == "application/json"
    loaded = schemathesis.openapi.from_url(server.url + "/api/v1/openapi.json")
    loaded.validate()
    assert loaded.raw_schema == DOCUMENT


def test_the_server_answers_the_documented_methods_and_credentials(server: Server) -> None:
    """Without credentials, every method on every documented path: an undocumented one is 405 whose
    ``Allow`` is the documented methods; a documented one is not 405, and is 401 exactly when the document
    says it needs credentials (HEAD and OPTIONS as the server really answers them)."""
    for path, item in DOCUMENT["paths"].items():
        documented = _documented_methods(path)
        for method in HTTP_METHODS:
            response = server.request(method.upper(), _sample(path))
            response.read()
            if method not in documented:
                assert response.status == 405, f"{method} {path}: {response.status}"
                allowed = {m.strip().lower() for m in response.headers["Allow"].split(",")}
                assert allowed == documented, f"{method} {path}: Allow {allowed}"
                continue
            assert response.status != 405, f"{method} {path} is documented but 405"
            secured = _requires_credentials(item[method])
            assert (response.status == 401) == secured, f"{method} {path}: {response.status} (secured: {secured})"


def test_the_waiting_answer_conforms(server: Server) -> None:
    """protocol §16: a reconnect (``Last-Event-ID``) refused at the cap is, to an SSE client, the waiting
    answer — and what the document describes; a client that does not ask for SSE gets the 429 with
    ``Retry-After``, also as documented."""
    operation = schemathesis.openapi.from_dict(openapi_document(ROUTES))["/api/v1/attackers/{attacker_uuid}/events"]
    path = "/api/v1/attackers/" + _example("AttackerUuid") + "/events"
    auth = {"Authorization": "Bearer " + server.tokens["admin"]}
    held = [
        server.request("GET", path, {**auth, "Accept": "text/event-stream"})
        for _ in range(DEFAULTS["sse_max_per_user"])
    ]
    try:
        assert [response.status for response in held] == [200] * len(held)
        reconnect = {"Last-Event-ID": "aaaaaaaa-1", "Accept": "text/event-stream"}
        case = operation["GET"].Case(path_parameters={"attacker_uuid": _example("AttackerUuid")}, headers=reconnect)
        response = case.call(base_url=server.url, headers=auth)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
        text = response.content.decode()
        assert text.startswith("retry: ") and "event: unavailable\n" in text, text
        data = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
        assert data["status"] == 429 and data["retry_ms"] > 0, data
        case = operation["GET"].Case(
            path_parameters={"attacker_uuid": _example("AttackerUuid")}, headers={"Last-Event-ID": "x"}
        )
        response = case.call(base_url=server.url, headers=auth)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 429 and "retry-after" in response.headers
    finally:
        for stream in held:
            stream.close()


# Values protocol §11 says must do no harm, mixed into the generated ones (schemathesis's fuzz dictionaries):
HOSTILE = [
    *("²", "١٢", "𝟗", "9" * 4301, "-1", "+5", " 5", "1e2", "NaN", "0x10"),  # odd numbers; ² passes isdigit(), not int()
    *("a" * 129, "a" * 9000, "99999999999999999999"),  # ids over MAX_ID_LENGTH, URLs over MAX_URL_BYTES, event ids
    *("..", "../setup.py", "dashboard.css", "index.html", "x\x00y", "%00", "%2e%2e", "\u2028"),  # file names
]
FUZZ_CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "max-examples": 25,
            "mode": "all",
            "dictionaries": {"string": {"dictionary": "hostile", "probability": 0.2}},
        },
        "dictionaries": {"hostile": {"values": HOSTILE}},
        "request-timeout": 5,  # in all, for a stream: see the module docstring
        "max-stream-events": 1,
    }
)
FUZZED = schemathesis.openapi.from_dict(openapi_document(ROUTES), config=FUZZ_CONFIG)


@FUZZED.hook
def flatmap_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """One case in four puts a hostile string in one declared query parameter, whatever its type: a
    dictionary only gives an integer parameter (``limit``) values that parse as integers, but the wire
    carries text, and that is what the server must cope with."""
    names = [parameter.name for parameter in context.operation.query] if context.operation else []
    if not names:
        return st.just(query)
    hostile = st.tuples(st.sampled_from(names), st.sampled_from(HOSTILE)).map(
        lambda nv: {**(query or {}), nv[0]: nv[1]}
    )
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else st.just(query))


@FUZZED.parametrize()
@pytest.mark.parametrize("credentials", ["viewer", "auditor", "anonymous"])
def test_server_conforms_to_the_document(case: schemathesis.Case, credentials: str, server: Server) -> None:
    secured = _requires_credentials(case.operation.definition.raw)
    if credentials != "viewer" and not secured:
        pytest.skip("a public operation: fuzzed once, in the viewer run")
    headers = {}
    if credentials in ("viewer", "auditor"):
        headers["Authorization"] = f"Bearer {server.tokens[credentials]}"
    response = case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS)
    sent = urlsplit(response.request.url)
    if len(sent.path) + len(sent.query) + bool(sent.query) > MAX_URL_BYTES:  # protocol §11, whatever the operation
        assert response.status_code in (414, 431), f"{response.status_code} for a URL over {MAX_URL_BYTES} bytes"
    if credentials != "viewer" and secured:
        refused = 403 if credentials == "auditor" else 401
        assert not 200 <= response.status_code < 300, f"{credentials}: {response.status_code} for {case.path}"
        if all(str(v) for v in (case.path_parameters or {}).values()):
            # protocol §2: a 404 only ever goes to an authorised caller, so ids cannot be probed without credentials
            assert response.status_code != 404, f"{credentials}: 404 (expected {refused}) for {case.formatted_path}"
