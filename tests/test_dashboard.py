"""The ops room page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through Selenium)
against real server processes with real NATS/JetStream and MongoDB-wire.

The page signs in with a browser session (protocol §12) and reads five streams with no credential in any URL:
the live log feed (stats tiles, a histogram, rows newest first with DECNET's search, bounded), the three
firehoses, and one attacker or topology picked from a searchable list or from a log row. It shows every value
as text (never HTML), resumes every stream after a server restart without showing a row twice, resets its
back-off after each successful connect, says why it was signed out, and a sign-out clears the screen and
stops every stream."""

from __future__ import annotations

import re
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import pytest
from browser import console, needs_chromium, publish, publish_stored, wait
from harness import ATTACKER_A, ATTACKER_B, SECRET, VIEWER

from lurestream.config import config_from
from lurestream.tokens import mint_token

pytestmark = needs_chromium

A = ATTACKER_A["_id"]
# quick reconnects (the server's retry hint), a quick revocation sweep, no auth cache, a snappy log feed
FAST = dict(drain_seconds=0, retry_ms=400, auth_sweep_seconds=0.5, auth_cache_seconds=0, log_poll_seconds=0.2)
# Log ids of six digits: nx-27017 sorts an unfiltered _id as text, which would misplace the tail's start.
ID0 = 100_000
STREAMS = ("logs", "identities", "campaigns", "orchestrator")

# Keeps every text a badge shows, in order (the page's own code knows nothing of it).
RECORD_BADGES = """
window.badges = {};
for (const id of arguments[0]) {
  const el = document.getElementById(id);
  window.badges[id] = [el.textContent];
  new MutationObserver(() => window.badges[id].push(el.textContent))
    .observe(el, {childList: true, characterData: true, subtree: true});
}
"""

# The live log as data: [id, time, decky, service, event, attacker, line] per row, top to bottom.
LOG_ROWS = """
return [...document.querySelectorAll('#logs tbody tr')].map((tr) =>
  [tr.dataset.id || '', ...[...tr.cells].map((td) => td.textContent)]);
"""


def _token(**claims: Any) -> str:
    return mint_token(config_from({"jwt_secret": SECRET}), VIEWER, **claims)


def _text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id))


def _shown(driver: Any, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_element(By.ID, element_id).is_displayed())


def _badge(driver: Any, element_id: str = "state") -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).dataset.state", element_id))


def _rows(driver: Any) -> list[list[str]]:
    return list(driver.execute_script(LOG_ROWS))


def _page(driver: Any) -> str:
    """What a failing wait prints: the badges, the notice, what shows, the log's and the event list's heads."""
    badges = {b: _text(driver, b) for b in ("state", "logs-state", *(f"{s}-state" for s in STREAMS[1:]), "view-state")}
    shown = [s for s in ("signin", "room", "view") if _shown(driver, s)]
    return (
        f"url={driver.current_url!r} badges={badges} notice={_text(driver, 'notice')!r} shown={shown} "
        f"logs={_rows(driver)[:3]!r} feed={_text(driver, 'feed')[:300]!r}"
    )


def _open(driver: Any, port: int, token: str) -> None:
    """Open the page with the token in the fragment (as the demo's link does); wait for every stream."""
    driver.get(f"http://127.0.0.1:{port}/#token={token}")
    wait(driver, lambda d: token not in d.current_url, "the token to leave the address bar once read", state=_page)
    wait(driver, lambda d: _badge(d) == "live", "every overview stream live", state=_page)
    assert not _shown(driver, "signin"), "signed in: no token form"


def _watch_a(driver: Any) -> None:
    """Pick attacker A in the picker's list and wait for its stream."""
    from selenium.webdriver.common.by import By

    row = f'#attacker-results tr[data-uuid="{A}"] button'
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row), "attacker A in the picker", state=_page)
    driver.find_element(By.CSS_SELECTOR, row).click()
    wait(driver, lambda d: _badge(d, "view-state") == "live", "the attacker's stream live", state=_page)


def _rows_doc(first: int, count: int, **fields: Any) -> list[dict[str, Any]]:
    """``count`` log rows from id ``ID0 + first``, as DECNET's deckies write them."""
    now = datetime.now(timezone.utc)
    docs = []
    for n in range(first, first + count):
        doc = {
            "_id": ID0 + n,
            "timestamp": now,
            "decky": "web-01",
            "service": "http",
            "event_type": "request",
            "attacker_ip": ATTACKER_A["ip"],
            "raw_line": f"GET /line/{n}",
            "fields": {"port": 80},
        }
        doc.update(fields)
        docs.append(doc)
    return docs


def _observation(n: int) -> tuple[str, dict[str, Any]]:
    return ("attacker.observation.ja3", {"attacker_uuid": A, "primitive": "ja3", "value": f"ja3-value-{n}"})


def _event_shown(driver: Any, n: int) -> bool:
    return f"ja3-value-{n}" in _text(driver, "feed")


def _stream_urls(log: str) -> list[tuple[str, str]]:
    """(status, URL as logged) of every stream request in a server's access log."""
    paths = (
        r"/api/v1/(?:stream|identities/events|campaigns/events|orchestrator/events/stream"
        r"|(?:attackers|topologies)/[^/\s]+/events)"
    )
    return re.findall(rf"tornado\.access: (\d{{3}}) GET ({paths}\S*)", log)


def _console_until(driver: Any, predicate: Any, timeout: float = 30) -> str:
    """The page's console lines from now until ``predicate(all of them)`` holds."""
    text = ""
    deadline = time.monotonic() + timeout
    while not predicate(text):
        assert time.monotonic() < deadline, f"the console never showed what was awaited:\n{text}"
        time.sleep(0.1)
        text += "\n" + console(driver)
    return text


def _logged(server: Any, line: str, timeout: float = 10) -> None:
    """Wait until ``server``'s log holds ``line`` (an access line is written just after its reply went out)."""
    deadline = time.monotonic() + timeout
    while line not in server.log():
        assert time.monotonic() < deadline, f"{line!r} never logged:\n{server.log()[-3000:]}"
        time.sleep(0.02)


def _severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_overview_shows_stats_a_histogram_the_firehoses_and_searchable_bounded_rows_as_text(
    start_server, browser, nats_service, mongo
):
    from selenium.webdriver.common.by import By

    now = datetime.now(timezone.utc)
    mongo.deckies.insert_many([{"_id": "d1", "state": "running"}, {"_id": "d2", "state": "running"}, {"_id": "d3"}])
    mongo.logs.insert_many(
        [dict(r, timestamp=now - timedelta(minutes=40 - n)) for n, r in enumerate(_rows_doc(1, 30), start=1)]
    )
    mongo.identities.insert_one({"_id": "id-quiet-lynx", "label": "quiet-lynx", "state": "ok", "updated_at": now})
    mongo.campaigns.insert_one({"_id": "camp-low-tide", "name": "Low Tide", "state": "active", "updated_at": now})
    mongo.orchestrator_events.insert_one({"_id": "e1", "ts": now, "decky_uuid": "d1", "kind": "file", "path": "/tmp/x"})
    server = start_server(**FAST, log_stats_seconds=1)
    _open(browser, server.port, _token())

    # the four stats as tiles, the histogram as bars, each firehose's snapshot in its panel
    tiles = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#tiles .tile')]"
        ".map((t) => [t.dataset.stat, t.querySelector('.value').textContent]))"
    )
    assert tiles == {"total_logs": "30", "unique_attackers": "1", "active_deckies": "2", "deployed_deckies": "3"}
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#histogram rect.bar"), "histogram bars", state=_page)
    assert "30 lines" in _text(browser, "histogram-caption")
    assert "quiet-lynx" in _text(browser, "identities-feed") and "Low Tide" in _text(browser, "campaigns-feed")
    assert "/tmp/x" in _text(browser, "orchestrator-feed")
    publish(
        nats_service.url,
        [
            ("identity.formed", {"id": "id-pale-moth", "label": "pale-moth", "state": "tentative"}),
            ("campaign.identity.assigned", {"id": "camp-low-tide", "name": "Low Tide", "identities": ["a", "b"]}),
            ("orchestrator.traffic.d1", {"id": "e2", "decky": "web-01", "src_ip": "198.51.100.9", "dst_port": 22}),
        ],
    )
    for panel, text in (("identities", "pale-moth"), ("campaigns", "identities: 2"), ("orchestrator", "dst_port: 22")):
        wait(browser, lambda d, p=panel, t=text: t in _text(d, f"{p}-feed"), f"the live {panel} event", state=_page)
    assert browser.find_element(By.CSS_SELECTOR, "#identities-feed li .name").text == "formed", "newest first"

    # live rows: newest first, times with date and zone, hostile text shown as text
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    mongo.logs.insert_many(_rows_doc(31, 2) + _rows_doc(33, 1, raw_line=hostile, service="ssh"))
    wait(browser, lambda d: len(_rows(d)) == 3, "the three new rows (not the 30 from before)", state=_page)
    rows = _rows(browser)
    assert [r[0] for r in rows] == [str(ID0 + 33), str(ID0 + 32), str(ID0 + 31)], "newest first"
    assert rows[0][6] == hostile and rows[0][3] == "ssh"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[0][1]), "ISO-8601 in UTC"
    assert browser.find_elements(By.CSS_SELECTOR, "#logs img") == [] and browser.title != "pwned"
    wait(browser, lambda d: _text(d, "logs-count").startswith("3 shown"), "the count", state=_page)

    # a search in DECNET's language: only matching rows, recent ones looked up at once, then live ones
    search = browser.find_element(By.ID, "log-search")
    search.send_keys("service:ssh")
    browser.find_element(By.CSS_SELECTOR, "#log-search-form button").click()
    wait(browser, lambda d: [r[0] for r in _rows(d)] == [str(ID0 + 33)], "the earlier ssh row only", state=_page)
    mongo.logs.insert_many(_rows_doc(34, 3) + _rows_doc(37, 2, service="ssh", raw_line="Failed password for root"))
    wait(browser, lambda d: len(_rows(d)) == 3, "the two new ssh rows", state=_page)
    assert {r[3] for r in _rows(browser)} == {"ssh"}, "no row that does not match"

    # a burst of 600 matching rows: on screen within a few seconds, the table kept to its newest 500
    burst = _rows_doc(1001, 600, service="ssh", raw_line="Failed password for admin")
    started = time.monotonic()
    mongo.logs.insert_many(burst)
    wait(browser, lambda d: (_rows(d) or [[""]])[0][0] == str(ID0 + 1600), "the burst's newest row", 20, _page)
    assert time.monotonic() - started < 10, "a burst reaches the table within seconds (50 rows a second: 12 s)"
    ids = [int(r[0]) for r in _rows(browser)]
    assert ids == list(range(ID0 + 1600, ID0 + 1100, -1)), "the newest 500, newest first, each once"
    assert _text(browser, "logs-count").startswith("500 shown · 603 received")
    assert _severe(browser) == [], "no error in the console: no CSP violation, no failed request, no exception"


def test_the_picker_finds_attackers_by_ip_newest_activity_first_and_a_log_rows_attacker_opens_its_stream(
    start_server, browser, nats_service, mongo
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    now = datetime.now(timezone.utc)
    # replaced, not $set: the MongoDB-wire server stores a $set date as text
    mongo.attackers.replace_one({"_id": A}, dict(ATTACKER_A, last_seen=now - timedelta(hours=2), score=42.5))
    mongo.attackers.replace_one({"_id": ATTACKER_B["_id"]}, dict(ATTACKER_B, last_seen=now - timedelta(minutes=3)))
    mongo.attackers.insert_many(
        [
            {"_id": f"cccccccc-0000-4000-8000-{n:012d}", "ip": f"198.51.100.{n}", "last_seen": now - timedelta(days=n)}
            for n in range(1, 6)
        ]
        + [{"_id": "dddddddd-0000-4000-8000-000000000000", "ip": "192.0.2.1"}]  # never seen: last
    )
    server = start_server(**FAST)
    _open(browser, server.port, _token())

    def listed(d: Any) -> list[str]:
        return list(
            d.execute_script(
                "return [...document.querySelectorAll('#attacker-results tbody tr')].map((tr) => tr.dataset.uuid)"
            )
        )

    wait(browser, lambda d: len(listed(d)) == 8, "the whole list", state=_page)
    order = listed(browser)
    assert order[:2] == [ATTACKER_B["_id"], A] and order[-1].startswith("dddddddd"), "most recently active first"
    row_a = browser.find_element(By.CSS_SELECTOR, f'#attacker-results tr[data-uuid="{A}"]').text
    assert "42.5" in row_a and re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ · 2 h ago", row_a), row_a

    browser.find_element(By.ID, "attacker-search").send_keys("203.0.113.1")  # A's ip is 203.0.113.10
    wait(browser, lambda d: listed(d) == [A], "A alone, by a prefix of its ip", state=_page)
    browser.find_element(By.ID, "attacker-search").clear()
    browser.find_element(By.ID, "attacker-search").send_keys("CCCCCCCC")  # a uuid prefix, any case
    wait(browser, lambda d: len(listed(d)) == 5, "the five by their uuid", state=_page)
    browser.find_element(By.ID, "attacker-search").send_keys("*")
    wait(browser, lambda d: "letters, digits" in _text(d, "attacker-note"), "what a search may hold", state=_page)

    # a log row's attacker opens that attacker's stream
    mongo.logs.insert_many(_rows_doc(1, 1, attacker_ip=ATTACKER_A["ip"]))
    button = f'#logs button.attacker[data-ip="{ATTACKER_A["ip"]}"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, button), "the row's attacker", state=_page)
    browser.find_element(By.CSS_SELECTOR, button).click()
    wait(browser, lambda d: _badge(d, "view-state") == "live", "the attacker's stream", state=_page)
    assert A in _text(browser, "view-title") and ATTACKER_A["ip"] in _text(browser, "view-title")
    assert _badge(browser) == "live", "five streams, all live"

    # events as readable rows; a type filter; pause keeps reading and shows what arrived meanwhile
    publish(nats_service.url, [_observation(1), ("attacker.scored", {"attacker_uuid": A, "score": 77.5})])
    wait(browser, lambda d: "score 77.5" in _text(d, "feed") and _event_shown(d, 1), "both events", state=_page)
    assert "ja3 = ja3-value-1" in _text(browser, "feed")
    Select(browser.find_element(By.ID, "event-filter")).select_by_value("attacker.scored")
    visible = browser.execute_script(
        "return [...document.querySelectorAll('#feed li')].filter((li) => !li.hidden).map((li) => li.dataset.name)"
    )
    assert visible == ["attacker.scored"]
    Select(browser.find_element(By.ID, "event-filter")).select_by_value("")
    browser.find_element(By.ID, "events-pause").click()
    publish(nats_service.url, [_observation(2)])
    wait(browser, lambda d: "paused: 1 new" in _text(d, "event-count"), "the count of what arrived", state=_page)
    assert not _event_shown(browser, 2)
    browser.find_element(By.ID, "events-pause").click()
    wait(browser, lambda d: _event_shown(d, 2), "the paused event after resuming", state=_page)
    assert _severe(browser) == []


def test_every_stream_resumes_after_a_restart_without_a_row_twice_and_an_end_says_why(
    start_server, browser, nats_service, mongo, js_stream
):
    server = start_server(jetstream=js_stream, **FAST)
    token = _token()
    _open(browser, server.port, token)
    _watch_a(browser)
    browser.execute_script(RECORD_BADGES, ["view-state", "state"])
    mongo.logs.insert_many(_rows_doc(1, 3))
    publish_stored(nats_service.url, [_observation(1), ("identity.formed", {"id": "id-1", "label": "first-owl"})])
    wait(browser, lambda d: len(_rows(d)) == 3 and _event_shown(d, 1), "rows and an event", state=_page)
    wait(browser, lambda d: "first-owl" in _text(d, "identities-feed"), "the identity", state=_page)

    # a restart while rows are written and events published: every stream picks up exactly what it missed
    assert server.stop() == 0
    wait(browser, lambda d: _badge(d) == "reconnecting", "the reconnecting state", state=_page)
    mongo.logs.insert_many(_rows_doc(4, 3))
    publish_stored(
        nats_service.url, [_observation(2), _observation(3), ("identity.formed", {"id": "id-2", "label": "second-owl"})]
    )
    restarted = start_server(port=server.port, jetstream=js_stream, **FAST)
    wait(browser, lambda d: "2 missed events replayed" in _text(d, "feed"), "the resume", 45, _page)
    wait(browser, lambda d: len(_rows(d)) == 6, "the rows written meanwhile", state=_page)
    wait(browser, lambda d: "second-owl" in _text(d, "identities-feed"), "the identity sent meanwhile", state=_page)
    wait(browser, lambda d: _badge(d) == "live", "every stream live again", state=_page)
    mongo.logs.insert_many(_rows_doc(7, 1))
    publish_stored(nats_service.url, [_observation(4)])
    wait(browser, lambda d: len(_rows(d)) == 7 and _event_shown(d, 4), "live again", state=_page)
    assert [r[0] for r in _rows(browser)] == [str(ID0 + n) for n in range(7, 0, -1)], "each row once, in order"
    summaries = browser.execute_script(
        "return [...document.querySelectorAll('#feed .summary')].map((s) => s.textContent)"
    )
    assert [s for s in summaries if "ja3-value-2" in s] == ["ja3 = ja3-value-2"], "no duplicate event"
    assert _text(browser, "identities-feed").count("first-owl") == 1
    wait(browser, lambda d: _badge(d, "view-state") == "live", "the badge back to live after the resume", state=_page)
    badges = browser.execute_script("return window.badges['view-state']")
    assert badges[-2:] == ["resumed · 2 replayed", "live"], badges

    # the session's JWT is revoked: every stream ends, the page says why, stops, and keeps the last picture
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    mongo.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc)})
    wait(browser, lambda d: _text(d, "notice") == "signed out: access revoked", "the end reason", state=_page)
    assert _badge(browser) == "signed out" and _shown(browser, "signin"), "the sign-in form is offered"
    assert _event_shown(browser, 4) and len(_rows(browser)) == 7, "what was on screen stays (greyed out)"
    requests = len(_stream_urls(restarted.log()))
    time.sleep(2)  # five times the retry hint: no reconnect after an end
    assert len(_stream_urls(restarted.log())) == requests, restarted.log()

    # no stream request carried a credential in its URL: the servers' access logs, the browser's own record
    streams = _stream_urls(server.log()) + _stream_urls(restarted.log())
    expected = {
        "/api/v1/stream",
        "/api/v1/identities/events",
        "/api/v1/campaigns/events",
        "/api/v1/orchestrator/events/stream",
        f"/api/v1/attackers/{A}/events",
    }
    assert {status for status, _ in streams} == {"200"} and {url for _, url in streams} == expected, streams
    assert all("token" not in url and "ticket" not in url for _, url in streams), streams
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert [u for u in fetched if "/events" in u] and not [u for u in fetched if "token=" in u or "ticket=" in u]
    assert "sse-ticket" not in server.log() + restarted.log(), "no ticket was minted"
    stored = browser.execute_script("return JSON.stringify([sessionStorage, localStorage, document.cookie])")
    assert token not in stored and "lurestream_session" not in stored, "the page keeps neither the JWT nor the cookie"


def test_reconnect_back_off_starts_over_after_each_successful_connect(start_server, browser, js_stream):
    settings = dict(FAST, retry_ms=300)
    server = start_server(jetstream=js_stream, **settings)
    _open(browser, server.port, _token())
    _watch_a(browser)
    console(browser)  # drop what the start-up logged
    lines: list[str] = []
    for cycle in range(2):
        assert server.stop() == 0
        text = _console_until(  # a reconnect of every stream has failed
            browser, lambda t: all(f"(attempt 2) [{label}]" in t for label in (*STREAMS, "attacker"))
        )
        server = start_server(port=server.port, jetstream=js_stream, **settings)
        ready = time.monotonic()
        wait(browser, lambda d: _badge(d) == "live", f"connected after restart {cycle + 1}", 60, _page)
        back = time.monotonic() - ready
        text += console(browser)
        # the delay grows with the failures while the server starts (more of them on a loaded machine); the
        # page must come back when the longest wait it announced ends, not later
        longest = max(int(ms) for ms in re.findall(r"reconnecting in (\d+) ms", text)) / 1000
        assert back < longest + 5, f"back {back:.1f} s after the restart; the longest wait announced {longest} s"
        lines.append(text)
    for cycle, text in enumerate(lines):
        for label in (*STREAMS, "attacker"):
            found = re.findall(rf"reconnecting in (\d+) ms \(attempt (\d+)\) \[{label}\]", text)
            attempts = [(int(ms), int(n)) for ms, n in found]
            assert attempts and attempts[0][1] == 1, f"{label}, restart {cycle + 1}: from attempt 1 again: {text}"
            assert [n for _, n in attempts] == list(range(1, len(attempts) + 1)), text
            assert attempts[0][0] <= 450 * 1.25, f"{label}: the first delay is the server's hint ± 25%: {text}"


def test_sign_out_clears_the_screen_and_stops_every_stream_and_the_session_outlives_a_reload(
    start_server, browser, nats_service, mongo
):
    from selenium.webdriver.common.by import By

    mongo.identities.insert_one({"_id": "id-x", "label": "ember-owl", "updated_at": datetime.now(timezone.utc)})
    server = start_server(**FAST)
    _open(browser, server.port, _token())
    browser.get(f"http://127.0.0.1:{server.port}/")  # no token this time: the cookie signs the page in
    wait(browser, lambda d: _badge(d) == "live", "signed in by the cookie alone", state=_page)
    _watch_a(browser)
    mongo.logs.insert_many(_rows_doc(1, 2))
    publish(nats_service.url, [_observation(1)])
    wait(browser, lambda d: len(_rows(d)) == 2 and _event_shown(d, 1), "rows and an event on screen", state=_page)
    assert mongo.sse_sessions.count_documents({}) == 1

    browser.find_element(By.ID, "signout").click()
    wait(browser, lambda d: _shown(d, "signin"), "the sign-in form", state=_page)
    wait(browser, lambda d: mongo.sse_sessions.count_documents({}) == 0, "the session deleted", state=_page)
    _logged(server, "204 DELETE /api/v1/auth/sse-session")
    assert _text(browser, "state") == "idle · signed out"
    cleared = browser.execute_script(
        """return {
          rows: document.querySelectorAll('#logs tbody tr').length,
          panels: document.querySelectorAll('#firehoses li').length,
          events: document.querySelectorAll('#feed li, #observations tbody tr').length,
          picker: document.querySelectorAll('#attacker-results tbody tr').length,
          bars: document.querySelectorAll('#histogram rect').length,
          tiles: [...document.querySelectorAll('#tiles .value')].map((v) => v.textContent).join(''),
          room: document.getElementById('room').hidden}"""
    )
    assert cleared == {"rows": 0, "panels": 0, "events": 0, "picker": 0, "bars": 0, "tiles": "––––", "room": True}
    assert "ember-owl" not in browser.execute_script("return document.body.textContent"), "not even hidden"
    requests = len(_stream_urls(server.log()))
    mongo.logs.insert_many(_rows_doc(3, 1))
    publish(nats_service.url, [_observation(9)])
    time.sleep(1)  # on purpose: time for a stream still open to show them
    assert not _event_shown(browser, 9) and not _rows(browser), "every stream was closed at sign-out"
    assert len(_stream_urls(server.log())) == requests, "and none reopened"

    browser.get(f"http://127.0.0.1:{server.port}/")
    wait(browser, lambda d: _shown(d, "signin"), "the sign-in form after a reload", state=_page)
    assert not _shown(browser, "room")
    browser.find_element(By.ID, "token-input").send_keys(_token())  # signing in again by pasting a token
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait(browser, lambda d: _badge(d) == "live", "the room again", state=_page)


@pytest.mark.parametrize("reason", ["expired", "forbidden"])
def test_the_page_says_why_its_streams_ended(reason, start_server, browser, mongo):
    server = start_server(**FAST)
    _open(browser, server.port, _token(ttl=4) if reason == "expired" else _token())
    if reason == "forbidden":
        mongo.users.update_one({"_id": VIEWER}, {"$set": {"role": "guest"}})
    words = {"expired": "signed out: token expired", "forbidden": "signed out: no longer allowed"}[reason]
    wait(browser, lambda d: _text(d, "notice") == words, f"the notice {words!r}", 15, _page)
    assert _badge(browser) == "signed out"
    requests = len(_stream_urls(server.log()))
    time.sleep(1.5)  # on purpose: several retry hints long, time for a reconnect to show
    assert len(_stream_urls(server.log())) == requests, "no reconnect after an end"


def test_a_hidden_tab_lets_its_streams_go_so_another_tab_gets_them_at_the_cap(start_server, browser, js_stream):
    """Four streams a tab and a cap of five. A second tab is refused (429) and waits until the first, hidden,
    lets its streams go. The first, shown again, reconnects from where it was: the server tells it to wait
    (`unavailable`, not a final 429: a reconnect's slot may be about to free), and it gets in once the second
    tab, hidden in turn, lets go."""
    server = start_server(jetstream=js_stream, **FAST, sse_max_per_user=5)
    _open(browser, server.port, _token())
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"http://127.0.0.1:{server.port}/")
    wait(browser, lambda d: _badge(d) == "waiting", "the second tab told to wait", 10, _page)
    wait(browser, lambda d: _badge(d) == "live", "the second tab's streams, once the first let go", 25, _page)
    assert "429 GET /api/v1/" in server.log(), "the second tab was refused at first"
    browser.switch_to.window(first)
    console(browser)  # what the first tab logged before
    browser.execute_script(RECORD_BADGES, ["identities-state"])
    wait(browser, lambda d: _badge(d) == "live", "the first tab live again", 25, _page)
    badges = browser.execute_script("return window.badges['identities-state']")
    assert any(b.startswith("waiting · SSE connection limit (5) reached · retry in") for b in badges), badges
    assert "(the server asks to wait: SSE connection limit (5) reached)" in console(browser)


def _lan_address() -> str | None:
    """This machine's address on its default route, if it has one that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("cookie_secure", [True, False])
def test_dashboard_over_plain_http_beyond_loopback_needs_cookie_secure_false(cookie_secure, start_server, browser):
    """Chromium keeps a ``Secure`` cookie from http://127.0.0.1 and http://localhost (secure contexts) but
    drops it, silently, from plain HTTP at any other address: the page says what to do."""
    address = _lan_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address here")
    server = start_server(host="0.0.0.0", cookie_secure=cookie_secure)
    browser.get(f"http://{address}:{server.port}/#token={_token()}")
    if cookie_secure:
        wait(browser, lambda d: "refused the session cookie" in _text(d, "notice"), "the explanation", state=_page)
        assert "LURESTREAM_COOKIE_SECURE=false" in _text(browser, "notice")
        _logged(server, "204 POST /api/v1/auth/sse-session")  # the server did set it
        assert browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"] == []
    else:
        wait(browser, lambda d: _shown(d, "room"), "the room", state=_page)
        (cookie,) = browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
        assert cookie["name"] == "lurestream_session" and not cookie["secure"]
