"""A browser's own ``EventSource`` on a session cookie (protocol §12), in headless Chromium against real server
processes with real NATS/JetStream and MongoDB-wire.

The page is a plain same-origin page of the server (``/healthz``); the test's script mints the session
with ``fetch`` and opens ``new EventSource(url)`` with nothing in the URL but the path. Everything after
that is the browser's doing: the reconnects, the ``Last-Event-ID`` header, giving up on a 401.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Any

import jwt
from browser import needs_chromium, publish, publish_stored, wait
from harness import ATTACKER_A, ATTACKER_B, SECRET, VIEWER

from lurestream.config import config_from
from lurestream.eventids import sequence_of
from lurestream.tokens import mint_token

pytestmark = needs_chromium

A = ATTACKER_A["_id"]
B = ATTACKER_B["_id"]
STREAM = f"/api/v1/attackers/{A}/events"
# quick reconnects (the hint the server sends before it closes a stream), a quick revocation sweep
SETTINGS = dict(drain_seconds=0, retry_ms=400, auth_sweep_seconds=0.5, auth_cache_seconds=0)

MINT_SESSION = """
const [token, done] = [arguments[0], arguments[arguments.length - 1]];
fetch('/api/v1/auth/sse-session', {method: 'POST', headers: {Authorization: `Bearer ${token}`}})
  .then((r) => done(r.status), (e) => done(String(e)));
"""
END_SESSION = """
const done = arguments[arguments.length - 1];
fetch('/api/v1/auth/sse-session', {method: 'DELETE'}).then((r) => done(r.status), (e) => done(String(e)));
"""
# Records what the EventSource delivers; never closes it, never builds another: reconnects are its own.
OPEN_EVENTSOURCE = """
window.seen = []; window.opens = 0; window.errors = [];
const es = new EventSource(arguments[0]);
window.es = es;
const keep = (e) => window.seen.push({type: e.type, id: e.lastEventId, data: e.data});
for (const name of ['snapshot', 'resumed', 'end', 'observation']) es.addEventListener(name, keep);
es.addEventListener('open', () => { window.opens += 1; });
es.addEventListener('error', () => window.errors.push(es.readyState));
"""
PAGE_STATE = (
    "return {readyState: window.es && window.es.readyState, opens: window.opens, errors: window.errors, "
    "seen: window.seen}"
)


def _state(driver: Any) -> str:
    state = driver.execute_script(PAGE_STATE)
    state["seen"] = state["seen"][-12:] if state.get("seen") else state.get("seen")
    return json.dumps(state)


def _seen(driver: Any) -> list[dict[str, Any]]:
    return list(driver.execute_script("return window.seen"))


def _observations(seen: list[dict[str, Any]], after: int = 0) -> list[dict[str, Any]]:
    return [s for s in seen[after:] if s["type"] == "observation"]


def _session_cookies(driver: Any) -> list[dict[str, Any]]:
    """Every cookie the browser holds (CDP: the HttpOnly one too, whatever its path)."""
    cookies = driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
    return [c for c in cookies if c["name"] == "lurestream_session"]


def _signed_in_page(browser: Any, port: int, token: str) -> None:
    browser.get(f"http://127.0.0.1:{port}/healthz")
    assert browser.execute_async_script(MINT_SESSION, token) == 204
    (cookie,) = _session_cookies(browser)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/api/v1/"
    assert cookie["secure"], "Chromium keeps a Secure cookie from http://127.0.0.1 (a secure context)"
    assert "lurestream_session" not in browser.execute_script("return document.cookie"), "HttpOnly"


def _events(numbers: range, attacker: str = A) -> list[tuple[str, dict[str, Any]]]:
    return [("attacker.observation.ja3", {"attacker_uuid": attacker, "primitive": "ja3", "n": n}) for n in numbers]


def _stream_requests(log: str) -> list[tuple[str, str]]:
    """(status, URL as logged) of every request of the stream's path in a server's access log."""
    return re.findall(r"tornado\.access: (\d{3}) GET (" + re.escape(STREAM) + r"\S*)", log)


def _logged(server: Any, requests: int, timeout: float = 10) -> None:
    """Wait until ``server``'s access log holds ``requests`` stream requests: the line of a refusal is written
    just after the reply went out, so the browser may act on the reply first."""
    deadline = time.monotonic() + timeout
    while len(_stream_requests(server.log())) < requests:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)


def _wait_closed(browser: Any, what: str) -> None:
    wait(browser, lambda d: d.execute_script("return window.es.readyState") == 2, what, timeout=30, state=_state)


def test_native_eventsource_on_a_session_resumes_by_itself_across_a_restart_and_stops_once_signed_out(
    start_server, browser, nats_service, mongo, js_stream
):
    server = start_server(jetstream=js_stream, **SETTINGS)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    _signed_in_page(browser, server.port, token)
    browser.execute_script(OPEN_EVENTSOURCE, STREAM)
    wait(browser, lambda d: any(s["type"] == "snapshot" for s in _seen(d)), "the snapshot", state=_state)
    (snapshot,) = _seen(browser)
    assert sequence_of(snapshot["id"]) is not None, "JetStream is on: the snapshot carries the stream position"

    before = publish_stored(nats_service.url, _events(range(0, 3)))
    wait(browser, lambda d: len(_observations(_seen(d))) == 3, "3 live events", state=_state)

    # the server goes away (SIGTERM: a retry hint, then the stream closes) and events go on meanwhile
    assert server.stop() == 0
    wait(browser, lambda d: d.execute_script("return window.es.readyState") == 0, "the EventSource to reconnect")
    mark = len(_seen(browser))
    errors = len(browser.execute_script("return window.errors"))
    down = publish_stored(nats_service.url, _events(range(3, 13)))
    publish_stored(nats_service.url, _events(range(100, 103), attacker=B))  # not this stream's
    wait(  # a couple of the browser's own reconnects fail while nothing listens
        browser, lambda d: len(d.execute_script("return window.errors")) >= errors + 2, "failed reconnects", 30, _state
    )
    restarted = start_server(port=server.port, jetstream=js_stream, **SETTINGS)

    wait(browser, lambda d: len(_observations(_seen(d), mark)) >= 10, "the 10 missed events", 45, _state)
    seen = _seen(browser)
    assert [s["type"] for s in seen[mark:]][:1] == ["resumed"], seen[mark:]
    resumed = json.loads(seen[mark]["data"])
    assert resumed["replayed"] == 10 and sequence_of(resumed["last_event_id"]) == before[-1], resumed
    replayed = _observations(seen, mark)
    assert [sequence_of(s["id"]) for s in replayed] == down, "exactly the events published while it was down"
    after = publish_stored(nats_service.url, _events(range(13, 16)))
    wait(browser, lambda d: len(_observations(_seen(d))) == 16, "3 more live events", state=_state)

    observations = _observations(_seen(browser))
    ids = [sequence_of(s["id"]) for s in observations]
    assert ids == before + down + after and ids == sorted(set(ids)), "ids increase, no duplicate, no gap"
    assert [json.loads(s["data"])["payload"]["n"] for s in observations] == list(range(16))
    assert browser.execute_script("return window.opens") == 2, "one EventSource, one reconnect that succeeded"
    assert _stream_requests(restarted.log()) == [("200", STREAM)], "no token, ticket or last_event_id in the URL"

    # signed out: the cookie is gone from the browser and the session from MongoDB; the next reconnect is refused
    assert browser.execute_async_script(END_SESSION) == 204
    assert _session_cookies(browser) == [] and mongo.sse_sessions.count_documents({}) == 0
    assert restarted.stop() == 0
    third = start_server(port=server.port, jetstream=js_stream, **SETTINGS)
    _wait_closed(browser, "the EventSource to give up on a 401 after the sign-out")
    _logged(third, 1)
    assert _stream_requests(third.log()) == [("401", STREAM)], third.log()
    assert len(_observations(_seen(browser))) == 16


def test_native_eventsource_stops_when_its_sessions_token_is_revoked(start_server, browser, nats_service, mongo):
    server = start_server(**SETTINGS)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    _signed_in_page(browser, server.port, token)
    browser.execute_script(OPEN_EVENTSOURCE, STREAM)
    wait(browser, lambda d: any(s["type"] == "snapshot" for s in _seen(d)), "the snapshot", state=_state)
    publish(nats_service.url, _events(range(0, 2)))
    wait(browser, lambda d: len(_observations(_seen(d))) == 2, "2 live events", state=_state)

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    mongo.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc)})
    wait(browser, lambda d: any(s["type"] == "end" for s in _seen(d)), "the end frame", state=_state)
    end = next(s for s in _seen(browser) if s["type"] == "end")
    assert json.loads(end["data"]) == {"reason": "revoked"}
    # a native EventSource does not know what `end` means: it reconnects, is refused, and stops for good
    _wait_closed(browser, "the EventSource to give up on a 401 after the revocation")
    _logged(server, 2)
    assert _stream_requests(server.log()) == [("200", STREAM), ("401", STREAM)], server.log()
