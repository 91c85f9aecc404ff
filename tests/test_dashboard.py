"""The dashboard page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through
Selenium) against real server processes with real NATS/JetStream and MongoDB-wire: it signs in with a
browser session (protocol §12) and reads streams with no credential in any URL, shows live events as text
(never HTML), resumes after a server restart and says so only briefly, resets its reconnect back-off after a
successful connect, says why it was signed out, and signs out."""

from __future__ import annotations

import re
import socket
import time
from datetime import datetime, timezone
from typing import Any

import jwt
import pytest
from browser import console, needs_chromium, publish, publish_stored, wait
from harness import ATTACKER_A, SECRET, VIEWER

from lurestream.config import config_from
from lurestream.tokens import mint_token

pytestmark = needs_chromium

A = ATTACKER_A["_id"]
# quick reconnects (the server's retry hint), a quick revocation sweep, no auth cache
FAST = dict(drain_seconds=0, retry_ms=400, auth_sweep_seconds=0.5, auth_cache_seconds=0)

# Keeps every text the state badge shows, in order (the page's own code knows nothing of it).
RECORD_BADGE = """
window.badges = [document.getElementById('state').textContent];
new MutationObserver(() => window.badges.push(document.getElementById('state').textContent))
  .observe(document.getElementById('state'), {childList: true, characterData: true, subtree: true});
"""


def _token(**claims: Any) -> str:
    return mint_token(config_from({"jwt_secret": SECRET}), VIEWER, **claims)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def _page(driver: Any) -> str:
    """What a failing wait prints: the badge, the notice, which panels show, the feed's head."""
    from selenium.webdriver.common.by import By

    shown = [s for s in ("signin", "picker", "view") if driver.find_element(By.ID, s).is_displayed()]
    return (
        f"url={driver.current_url!r} badge={_text(driver, 'state')!r} notice={_text(driver, 'notice')!r} "
        f"shown={shown} feed={_text(driver, 'feed')[:400]!r}"
    )


def _badge(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "state").get_attribute("data-state"))


def _open_dashboard(driver: Any, port: int, token: str) -> None:
    """Open the page with the token in the fragment (as the demo's link does) and watch attacker A."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"http://127.0.0.1:{port}/#token={token}")
    wait(driver, lambda d: token not in d.current_url, "the token to leave the address bar once read", state=_page)
    _watch_attacker(driver)
    assert not driver.find_element(By.ID, "signin").is_displayed(), "signed in: no token form"
    Select(driver.find_element(By.ID, "attacker-select"))  # the picker is there


def _watch_attacker(driver: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attacker-select option")) >= 2,
        "the attacker list",
        state=_page,
    )
    Select(driver.find_element(By.ID, "attacker-select")).select_by_value(A)
    driver.find_element(By.ID, "watch-attacker").click()
    wait(driver, lambda d: _badge(d) == "live", "the live state", state=_page)


def _observation(n: int) -> tuple[str, dict[str, Any]]:
    return ("attacker.observation.ja3", {"attacker_uuid": A, "primitive": "ja3", "value": f"ja3-value-{n}"})


def _event_shown(driver: Any, n: int) -> bool:
    return f"ja3-value-{n}" in _text(driver, "feed")


def _stream_urls(log: str) -> list[tuple[str, str]]:
    """(status, URL as logged) of every stream request in a server's access log."""
    return re.findall(r"tornado\.access: (\d{3}) GET (/api/v1/(?:attackers|topologies)/[^/\s]+/events\S*)", log)


def _revoke(mongo: Any, token: str) -> None:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    mongo.revoked_tokens.insert_one({"_id": jti, "expires_at": datetime.now(timezone.utc)})


def test_dashboard_shows_live_events_as_text(start_server, browser, nats_service, tmp_path):
    from selenium.webdriver.common.by import By

    server = start_server(drain_seconds=0)
    _open_dashboard(browser, server.port, _token())
    publish(
        nats_service.url,
        [
            (
                "attacker.observation.ja3",
                {"attacker_uuid": A, "primitive": "ja3", "value": "771,4865-4866,0-23", "confidence": 0.91},
            )
        ],
    )
    # the row is replaced on update, so look it up afresh each time (no stale element)
    wait(
        browser,
        lambda d: any(
            "771,4865-4866,0-23" in r.text
            for r in d.find_elements(By.CSS_SELECTOR, '#observations tr[data-primitive="ja3"]')
        ),
        "the new ja3 value in the ja3 row of the observation table",
        state=_page,
    )
    wait(browser, lambda d: "observation" in _text(d, "feed"), "the event in the feed", state=_page)

    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    publish(
        nats_service.url,
        [
            (
                "attacker.observation.http.user_agent",
                {"attacker_uuid": A, "primitive": "http.user_agent", "value": hostile},
            )
        ],
    )
    wait(
        browser,
        lambda d: "<img src=x onerror=" in _text(d, "feed"),
        "the hostile payload as text in the feed",
        state=_page,
    )
    wait(browser, lambda d: hostile in _text(d, "observations"), "the hostile value as text in the table", state=_page)
    assert browser.find_elements(By.CSS_SELECTOR, "#feed img, #observations img") == [], "no element was injected"
    assert browser.title != "pwned"
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], "no error in the console: no CSP violation, no failed request, no exception"
    screenshot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0


def test_dashboard_signs_in_with_a_session_resumes_after_a_restart_and_says_why_it_was_signed_out(
    start_server, browser, nats_service, mongo, js_stream
):
    server = start_server(jetstream=js_stream, **FAST)
    token = _token()
    _open_dashboard(browser, server.port, token)
    browser.execute_script(RECORD_BADGE)
    publish_stored(nats_service.url, [_observation(1)])
    wait(browser, lambda d: _event_shown(d, 1), "a published event in the feed", state=_page)

    # a restart while events are published: resumed with exactly the missed ones, then back to `live`
    assert server.stop() == 0
    wait(browser, lambda d: _badge(d) == "reconnecting", "the reconnecting state", state=_page)
    publish_stored(nats_service.url, [_observation(2), _observation(3)])
    restarted = start_server(port=server.port, jetstream=js_stream, **FAST)
    wait(browser, lambda d: "2 missed events replayed" in _text(d, "feed"), "the resume", 45, _page)
    wait(browser, lambda d: _event_shown(d, 2) and _event_shown(d, 3), "the missed events", state=_page)
    wait(browser, lambda d: _badge(d) == "live", "the badge back to live after the resume", state=_page)
    badges = browser.execute_script("return window.badges")
    assert badges[-2:] == ["resumed · 2 replayed", "live"], badges
    publish_stored(nats_service.url, [_observation(4)])
    wait(browser, lambda d: _event_shown(d, 4), "a live event after the resume", state=_page)
    assert _text(browser, "feed").count("ja3-value-2") == 1, "no duplicate"

    # the session's JWT is revoked: the stream ends, the page says why and stops
    _revoke(mongo, token)
    wait(browser, lambda d: _text(d, "notice") == "signed out: access revoked", "the end reason", state=_page)
    assert _badge(browser) == "signed out"
    assert browser.find_element("id", "signin").is_displayed(), "the sign-in form is offered"
    assert _event_shown(browser, 4), "what was on screen stays"
    requests = len(_stream_urls(restarted.log()))
    time.sleep(2)  # five times the retry hint: no reconnect after an end
    assert len(_stream_urls(restarted.log())) == requests, restarted.log()

    # no stream request carried a credential in its URL: the servers' access logs, the browser's own record
    streams = _stream_urls(server.log()) + _stream_urls(restarted.log())
    assert [status for status, _ in streams] == ["200", "200"], streams
    assert all(url == f"/api/v1/attackers/{A}/events" for _, url in streams), streams
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert [u for u in fetched if "/events" in u] and not [u for u in fetched if "token=" in u or "ticket=" in u]
    assert "sse-ticket" not in server.log() + restarted.log(), "no ticket was minted"
    stored = browser.execute_script("return JSON.stringify([sessionStorage, localStorage, document.cookie])")
    assert token not in stored and "lurestream_session" not in stored, "the page keeps neither the JWT nor the cookie"


def test_dashboard_reconnect_back_off_starts_over_after_each_successful_connect(
    start_server, browser, nats_service, js_stream
):
    settings = dict(FAST, retry_ms=300)
    server = start_server(jetstream=js_stream, **settings)
    _open_dashboard(browser, server.port, _token())
    console(browser)  # drop what the start-up logged
    lines: list[str] = []
    for cycle in range(3):
        assert server.stop() == 0
        time.sleep(1)  # long enough for a reconnect or two to fail
        started = time.monotonic()
        server = start_server(port=server.port, jetstream=js_stream, **settings)
        wait(browser, lambda d: _badge(d) in ("resumed", "live"), f"connected after restart {cycle + 1}", 30, _page)
        assert time.monotonic() - started < 8, "back within the grown delay of a few failures, never 20 s+"
        lines.append(console(browser))
    for cycle, text in enumerate(lines):
        attempts = [(int(ms), int(n)) for ms, n in re.findall(r"reconnecting in (\d+) ms \(attempt (\d+)\)", text)]
        assert attempts and attempts[0][1] == 1, f"restart {cycle + 1} starts again from attempt 1: {text}"
        assert [n for _, n in attempts] == list(range(1, len(attempts) + 1)), text
        first_delay = attempts[0][0]
        assert first_delay <= 450 * 1.25, f"the first delay is the server's hint (≤ 0.45 s) ± 25%: {text}"


def test_dashboard_session_outlives_a_reload_and_sign_out_ends_it(start_server, browser, nats_service, mongo):
    from selenium.webdriver.common.by import By

    server = start_server(**FAST)
    _open_dashboard(browser, server.port, _token())
    browser.get(f"http://127.0.0.1:{server.port}/")  # no token this time: the cookie signs the page in
    _watch_attacker(browser)
    assert mongo.sse_sessions.count_documents({}) == 1
    browser.find_element(By.ID, "signout").click()
    wait(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "the sign-in form", state=_page)
    wait(browser, lambda d: mongo.sse_sessions.count_documents({}) == 0, "the session deleted", state=_page)
    assert "204 DELETE /api/v1/auth/sse-session" in server.log()
    assert _text(browser, "state") == "idle · signed out"
    requests = len(_stream_urls(server.log()))
    publish(nats_service.url, [_observation(9)])
    time.sleep(1)
    assert not _event_shown(browser, 9), "the stream was closed at sign-out"
    assert len(_stream_urls(server.log())) == requests, "and not reopened"
    browser.get(f"http://127.0.0.1:{server.port}/")
    wait(
        browser,
        lambda d: d.find_element(By.ID, "signin").is_displayed(),
        "the sign-in form after a reload",
        state=_page,
    )
    assert not browser.find_element(By.ID, "picker").is_displayed()

    # signing in again by pasting a token
    browser.find_element(By.ID, "token-input").send_keys(_token())
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    _watch_attacker(browser)


@pytest.mark.parametrize("reason", ["expired", "forbidden"])
def test_dashboard_says_why_a_stream_ended(reason, start_server, browser, mongo):
    server = start_server(**FAST)
    _open_dashboard(browser, server.port, _token(ttl=6) if reason == "expired" else _token())
    if reason == "forbidden":
        mongo.users.update_one({"_id": VIEWER}, {"$set": {"role": "guest"}})
    words = {"expired": "signed out: token expired", "forbidden": "signed out: no longer allowed"}[reason]
    wait(browser, lambda d: _text(d, "notice") == words, f"the notice {words!r}", 15, _page)
    assert _badge(browser) == "signed out"
    requests = len(_stream_urls(server.log()))
    time.sleep(1.5)
    assert len(_stream_urls(server.log())) == requests, "no reconnect after an end"


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
    from selenium.webdriver.common.by import By

    address = _lan_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address here")
    server = start_server(host="0.0.0.0", cookie_secure=cookie_secure)
    browser.get(f"http://{address}:{server.port}/#token={_token()}")
    if cookie_secure:
        wait(browser, lambda d: "refused the session cookie" in _text(d, "notice"), "the explanation", state=_page)
        assert "LURESTREAM_COOKIE_SECURE=false" in _text(browser, "notice")
        assert "204 POST /api/v1/auth/sse-session" in server.log(), "the server did set it"
        assert browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"] == []
    else:
        wait(browser, lambda d: d.find_element(By.ID, "picker").is_displayed(), "the picker", state=_page)
        (cookie,) = browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
        assert cookie["name"] == "lurestream_session" and not cookie["secure"]
