"""Helpers for the browser tests: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through
Selenium, explicit waits that print the page's state and console when they give up, and publishing to
NATS/JetStream from a synchronous test.

The ``browser`` fixture itself is in ``conftest.py``; tests that use it carry ``needs_chromium``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import nats
import pytest

from lurestream.envelope import encode_envelope

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium here: install Debian's chromium and chromium-driver (.ci/run does) to run the browser tests",
)


def new_driver(*extra: str) -> Any:
    """A headless Chromium with its console log kept (``driver.get_log('browser')``); ``extra``: more
    command-line switches (the proxy tests add ``--ignore-certificate-errors`` for their own certificate)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000", *extra):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def console(driver: Any) -> str:
    """The page's console lines since the last call (Chromium hands each line out once)."""
    try:
        return "\n".join(f"  {e.get('level')} {e.get('message')}" for e in driver.get_log("browser")) or "  (empty)"
    except Exception as exc:  # the session may be gone
        return f"  unavailable: {exc!r}"


def wait(
    driver: Any,
    predicate: Callable[[Any], Any],
    what: str,
    timeout: float = 30,
    state: Callable[[Any], str] | None = None,
) -> Any:
    """Poll ``predicate(driver)`` until truthy; on timeout fail naming ``what``, with the page's state
    (``state(driver)``) and its console."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    waiter = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return waiter.until(lambda d: predicate(d))
    except Exception as exc:
        try:
            shown = state(driver) if state else ""
        except Exception as state_exc:
            shown = f"unavailable: {state_exc!r}"
        raise AssertionError(
            f"waiting for {what} ({timeout} s): {exc!r}\npage state: {shown}\nbrowser console:\n{console(driver)}"
        ) from None


def _run(coro: Any) -> Any:
    """Run a coroutine on a loop of its own (never touching the test's current loop)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def envelope(subject: str, payload: dict[str, Any]) -> bytes:
    return encode_envelope(subject, payload, "t")


def publish(nats_url: str, messages: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Publish ``(subject, payload)`` envelopes on core NATS, flushed before returning."""

    async def send() -> None:
        nc = await nats.connect(nats_url)
        try:
            for subject, payload in messages:
                await nc.publish(subject, envelope(subject, payload))
            await nc.flush()
        finally:
            await nc.close()

    _run(send())


def publish_stored(nats_url: str, messages: Iterable[tuple[str, dict[str, Any]]]) -> list[int]:
    """Publish through JetStream and wait for each store acknowledgement: the stream sequences, which
    are the SSE ids the events will carry."""

    async def send() -> list[int]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            return [(await js.publish(subject, envelope(subject, payload))).seq for subject, payload in messages]
        finally:
            await nc.close()

    return list(_run(send()))
