"""The README's JavaScript, run in headless Chromium exactly as written.

Every ```js block of README.md is read from the file and put into a page of the server (same origin, as a
dashboard would be) as a ``<script>``; the tests then call the functions the blocks define against real server
processes with real NATS/JetStream and MongoDB-wire, through a restart, a revocation and a sign-out. A block
added to the README without a test here fails ``test_every_readme_js_block_is_tested``.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from datetime import datetime, timezone
from typing import Any

import jwt
from browser import needs_chromium, publish_stored, wait
from harness import ATTACKER_A, ATTACKER_B, SECRET, TOPOLOGY_1, VIEWER

from lurestream.config import config_from
from lurestream.eventids import sequence_of
from lurestream.tokens import mint_token

pytestmark = needs_chromium

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```js\n(.*?)```", README, re.S)
TESTED = {"signIn", "watchAttacker", "signOut", "readEvents", "follow"}
A = ATTACKER_A["_id"]
T = TOPOLOGY_1["_id"]
FAST = dict(drain_seconds=0, retry_ms=400, auth_sweep_seconds=0.5, auth_cache_seconds=0)

LOAD = """
window.loadErrors = [];
window.addEventListener('error', (e) => window.loadErrors.push(String(e.message)));
for (const code of arguments[0]) {
  const script = document.createElement('script');
  script.textContent = code;
  document.head.appendChild(script);
}
window.got = [];
window.record = (name, data, id) => window.got.push({name, data, id: id ?? null});
return window.loadErrors;
"""
CALL = """
const done = arguments[arguments.length - 1];
Promise.resolve().then(() => %s).then(() => done('ok'), (e) => done(`failed: ${e}`));
"""


def _declared(block: str) -> set[str]:
    return set(re.findall(r"^(?:async )?function (\w+)", block, re.M))


def test_every_readme_js_block_is_tested():
    declared = [_declared(b) for b in BLOCKS]
    assert declared and all(declared), "each README js block defines a function the tests call"
    assert set().union(*declared) == TESTED, "a README js function without a test here (or a tested one gone)"


def _load_readme(browser: Any, port: int) -> None:
    """A same-origin page of the server with every README block in it, as written."""
    browser.get(f"http://127.0.0.1:{port}/healthz")
    assert browser.execute_script(LOAD, BLOCKS) == [], "the README's JS loads without an error"


def _call(browser: Any, expression: str) -> None:
    assert browser.execute_async_script(CALL % expression) == "ok", expression


def _got(browser: Any) -> list[dict[str, Any]]:
    return list(browser.execute_script("return window.got"))


def _names(browser: Any, start: int = 0) -> list[str]:
    return [g["name"] for g in _got(browser)[start:]]


def _state(browser: Any) -> str:
    return json.dumps(browser.execute_script("return {got: window.got.slice(-15), errors: window.loadErrors}"))


def _stream_requests(log: str) -> list[tuple[str, str]]:
    return re.findall(r"tornado\.access: (\d{3}) GET (/api/v1/\w+/[^/\s]+/events\S*)", log)


def _observations(numbers: range, attacker: str = A) -> list[tuple[str, dict[str, Any]]]:
    return [("attacker.observation.ja3", {"attacker_uuid": attacker, "primitive": "ja3", "n": n}) for n in numbers]


def _payload_numbers(items: list[dict[str, Any]]) -> list[int]:
    return [g["data"]["payload"]["n"] for g in items if g["name"] == "observation"]


def _revoke(mongo: Any, token: str) -> None:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    mongo.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc)})


def _token() -> str:
    return mint_token(config_from({"jwt_secret": SECRET}), VIEWER)


def _restart_with_events_meanwhile(start_server, server, nats_url: str, js_stream: str, events):
    """Stop the server, publish while it is down (through JetStream: their ids), start it again."""
    assert server.stop() == 0
    time.sleep(1)  # on purpose: down a while, the client's reconnects fail meanwhile
    ids = publish_stored(nats_url, events)
    publish_stored(nats_url, _observations(range(900, 902), attacker=ATTACKER_B["_id"]))  # another stream's
    return ids, start_server(port=server.port, jetstream=js_stream, **FAST)


def test_readme_session_and_native_eventsource(start_server, browser, nats_service, mongo, js_stream):
    server = start_server(jetstream=js_stream, **FAST)
    _load_readme(browser, server.port)
    token = _token()
    _call(browser, f"signIn({json.dumps(token)})")
    browser.execute_script(f"window.es = watchAttacker({json.dumps(A)}, window.record)")
    wait(browser, lambda d: _names(d) == ["snapshot"], "the snapshot", state=_state)
    live = publish_stored(nats_service.url, _observations(range(0, 2)))
    wait(browser, lambda d: len(_names(d)) == 3, "2 live events", state=_state)

    mark = len(_got(browser))
    down, server = _restart_with_events_meanwhile(
        start_server, server, nats_service.url, js_stream, _observations(range(2, 6))
    )
    wait(browser, lambda d: len(_names(d, mark)) == 5, "resumed and the 4 missed events", 45, _state)
    after = _got(browser)[mark:]
    assert after[0]["name"] == "resumed" and after[0]["data"]["replayed"] == 4
    assert sequence_of(after[0]["data"]["last_event_id"]) == live[-1]
    assert [sequence_of(g["id"]) for g in after[1:]] == down, (
        "exactly the missed events, by the browser's own reconnect"
    )
    assert _payload_numbers(_got(browser)) == list(range(6))
    assert _stream_requests(server.log()) == [("200", f"/api/v1/attackers/{A}/events")], "no credential in the URL"

    # signOut: the stream closes, the session is gone on the server and in the browser
    _call(browser, "signOut(window.es)")
    assert browser.execute_script("return window.es.readyState") == 2
    assert mongo.sse_sessions.count_documents({}) == 0
    cookies = browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
    assert [c for c in cookies if c["name"] == "lurestream_session"] == []

    # a new session, then its JWT revoked: `end`, closed by the listener, never a reconnect
    token = _token()
    _call(browser, f"signIn({json.dumps(token)})")
    browser.execute_script(f"window.got = []; window.es = watchAttacker({json.dumps(A)}, window.record)")
    wait(browser, lambda d: _names(d) == ["snapshot"], "the snapshot of the second session", state=_state)
    _revoke(mongo, token)
    wait(browser, lambda d: "end" in _names(d), "the end", state=_state)
    assert _got(browser)[-1] == {"name": "end", "data": {"reason": "revoked"}, "id": None}
    assert browser.execute_script("return window.es.readyState") == 2
    # (a closed EventSource never reconnects; without the listener's close() it would, 3 s later, to a 401)

    # a session ended elsewhere: the browser's reconnect (after a restart) is refused and it reports `closed`
    token = _token()
    _call(browser, f"signIn({json.dumps(token)})")
    browser.execute_script(f"window.got = []; window.es = watchAttacker({json.dumps(A)}, window.record)")
    wait(browser, lambda d: _names(d) == ["snapshot"], "the snapshot of the third session", state=_state)
    mongo.sse_sessions.delete_many({})
    _, server = _restart_with_events_meanwhile(start_server, server, nats_service.url, js_stream, [])
    wait(browser, lambda d: _names(d)[-1:] == ["closed"], "closed after a refused reconnect", 30, _state)
    deadline = time.monotonic() + 10  # the refusal's access line is written just after the reply went out
    while not _stream_requests(server.log()):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)
    assert _stream_requests(server.log()) == [("401", f"/api/v1/attackers/{A}/events")]


def test_readme_fetch_reader_gets_open_ended_topology_names(start_server, browser, nats_service, mongo, js_stream):
    server = start_server(jetstream=js_stream, **FAST)
    _load_readme(browser, server.port)
    token = _token()
    _call(browser, f"signIn({json.dumps(token)})")
    browser.execute_script(f"window.stop = readEvents('/api/v1/topologies/{T}/events', window.record)")
    wait(browser, lambda d: _names(d) == ["snapshot"], "the snapshot", state=_state)
    named = [
        (f"topology.{T}.mutation.applied", {"mutation_id": "m-1"}),
        ("decky.web-01.service_added", {"topology_id": T, "service": "smb"}),
        (f"topology.{T}.a.brand.new.kind", {"x": 1}),
    ]
    live = publish_stored(nats_service.url, named)
    wait(browser, lambda d: len(_names(d)) == 4, "3 events with open-ended names", state=_state)
    assert _names(browser) == ["snapshot", "mutation.applied", "decky.service_added", "a.brand.new.kind"]
    assert [sequence_of(g["id"]) for g in _got(browser)[1:]] == live

    mark = len(_got(browser))
    down, server = _restart_with_events_meanwhile(
        start_server, server, nats_service.url, js_stream, [(f"topology.{T}.status", {"status": s}) for s in "abc"]
    )
    wait(browser, lambda d: len(_names(d, mark)) == 4, "resumed and the 3 missed events", 45, _state)
    after = _got(browser)[mark:]
    assert after[0]["name"] == "resumed" and after[0]["data"]["replayed"] == 3
    assert sequence_of(after[0]["data"]["last_event_id"]) == live[-1]
    assert [(g["name"], sequence_of(g["id"])) for g in after[1:]] == [("status", i) for i in down]
    assert [g["data"]["payload"]["status"] for g in after[1:]] == ["a", "b", "c"]
    assert _stream_requests(server.log()) == [("200", f"/api/v1/topologies/{T}/events")], "no credential in the URL"

    _revoke(mongo, token)
    wait(browser, lambda d: _names(d)[-1:] == ["stopped"], "stopped after the end", state=_state)
    assert _got(browser)[-1]["data"] == "signed out: revoked"
    requests = _stream_requests(server.log())
    time.sleep(1.5)  # on purpose: several retry hints long, time for a reconnect to show
    assert _stream_requests(server.log()) == requests, "no reconnect after an end"


def test_readme_follow_with_tickets_keeps_trying_while_the_server_is_down(
    start_server, browser, nats_service, mongo, js_stream
):
    server = start_server(jetstream=js_stream, **FAST)
    _load_readme(browser, server.port)
    browser.execute_script(
        """
        window.statuses = [];
        window.render = {
          rebuild: (snapshot) => window.record('snapshot', snapshot),
          status: (text) => window.statuses.push(text),
          event: (name, data) => window.record(name, data),
        };"""
    )
    token = _token()
    browser.execute_script(f"window.stop = follow({json.dumps(token)}, {json.dumps(A)}, window.render)")
    wait(browser, lambda d: _names(d) == ["snapshot"], "the snapshot", state=_state)
    publish_stored(nats_service.url, _observations(range(0, 2)))
    wait(browser, lambda d: len(_names(d)) == 3, "2 live events", state=_state)

    # down long enough for a ticket request to be rejected; follow() keeps trying
    assert server.stop() == 0
    wait(
        browser,
        lambda d: any("reconnecting" in s for s in d.execute_script("return window.statuses")),
        "a ticket request rejected (the server is down)",
        state=_state,
    )
    down = publish_stored(nats_service.url, _observations(range(2, 5)))
    server = start_server(port=server.port, jetstream=js_stream, **FAST)
    wait(browser, lambda d: len(_names(d)) == 6, "the 3 missed events", 45, _state)
    statuses = browser.execute_script("return window.statuses")
    assert "resumed, 3 replayed" in statuses, statuses
    assert _payload_numbers(_got(browser)) == list(range(5))
    (request,) = _stream_requests(server.log())
    assert request[0] == "200" and "ticket=***" in request[1] and "last_event_id=" in request[1], request
    assert len(down) == 3

    _revoke(mongo, token)
    wait(
        browser,
        lambda d: d.execute_script("return window.statuses").count("signed out: revoked") == 1,
        "the end",
        state=_state,
    )
    tickets = server.log().count("POST /api/v1/auth/sse-ticket")
    time.sleep(2.5)  # on purpose: longer than follow()'s retry, time for a new ticket request to show
    assert server.log().count("POST /api/v1/auth/sse-ticket") == tickets, "no new ticket after an end"
