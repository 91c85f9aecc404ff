"""The dashboard page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through
Selenium) against a real server process with real NATS and MongoDB-wire: sign in, pick an attacker,
see published events appear — and attacker-controlled text shown as text, never as HTML."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import nats
import pytest
from harness import ATTACKER_A, SECRET, VIEWER

from lurestream.config import config_from
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium here: install Debian's chromium and chromium-driver (.ci/run does) to run the browser test",
)


def _publish(nats_url: str, subject: str, payload: dict[str, Any]) -> None:
    async def send() -> None:
        nc = await nats.connect(nats_url)
        body = {"v": 1, "id": "e", "topic": subject, "type": "t", "ts": time.time(), "payload": payload}
        await nc.publish(subject, json.dumps(body).encode())
        await nc.flush()
        await nc.close()

    asyncio.run(send())


@pytest.fixture
def browser(tmp_path, request):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        path = tmp_path / "dashboard-failure.png"
        driver.save_screenshot(str(path))
        print(f"screenshot of the failing page: {path}")
    driver.quit()


@pytest.fixture
def server(start_server):
    return start_server(drain_seconds=0)


def _wait(driver, predicate, what: str, timeout: float = 30):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(lambda d: predicate(d))
    except Exception as exc:
        try:
            console = driver.get_log("browser")
        except Exception:
            console = "unavailable"
        raise AssertionError(
            f"waiting for {what}: {exc!r}; state: {_text(driver, 'state')}; feed: {_text(driver, 'feed')[:500]!r}; "
            f"browser console: {console}"
        ) from None


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_dashboard_shows_live_events_as_text(server, browser, nats_service, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    browser.get(f"http://127.0.0.1:{server.port}/#token={token}")
    _wait(browser, lambda d: token not in d.current_url, "the token to leave the address bar once read")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attacker-select option")) >= 2, "attacker list")
    Select(browser.find_element(By.ID, "attacker-select")).select_by_value(A)
    browser.find_element(By.ID, "watch-attacker").click()
    _wait(browser, lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "live", "live state")

    _publish(
        nats_service.url,
        "attacker.observation.ja3",
        {"attacker_uuid": A, "primitive": "ja3", "value": "771,4865-4866,0-23", "confidence": 0.91},
    )
    # the row is replaced on update, so look it up afresh each time (no stale element)
    _wait(
        browser,
        lambda d: any(
            "771,4865-4866,0-23" in r.text
            for r in d.find_elements(By.CSS_SELECTOR, '#observations tr[data-primitive="ja3"]')
        ),
        "the new ja3 value in the ja3 row of the observation table",
    )
    _wait(browser, lambda d: "observation" in _text(d, "feed"), "the event in the feed")

    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    _publish(
        nats_service.url,
        "attacker.observation.http.user_agent",
        {"attacker_uuid": A, "primitive": "http.user_agent", "value": hostile},
    )
    _wait(browser, lambda d: "<img src=x onerror=" in _text(d, "feed"), "the hostile payload shown as text in the feed")
    _wait(browser, lambda d: hostile in _text(d, "observations"), "the hostile value shown as text in the table")
    assert browser.find_elements(By.CSS_SELECTOR, "#feed img, #observations img") == [], "no element was injected"
    assert browser.title != "pwned"
    assert not browser.find_element(By.ID, "signin").is_displayed(), "signed in: no token form"
    screenshot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
